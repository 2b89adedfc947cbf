"""HeBA: equivalence with the official code (golden fixtures ``tests/fixtures/heba.*``), ablation axes, end to end.

The fixtures were produced by the official ``trainers/heba.py`` on the golden tiny CLIP (2 blocks per tower), CPU fp32.
"""

from __future__ import annotations

import dataclasses
import json

import pytest
import torch
from safetensors.torch import load_file
from torch import nn
from torch.nn import functional as F

from adapters.bottleneck import INIT_SCHEMES, BottleneckBlock, bottleneck_params, init_bottleneck_
from adapters.heba import HeBA, HeBAConfig, OFFICIAL_BUFFERS, effective_settings
from frozen_clip.errors import ConfigError
from frozen_clip.method import MethodContext, normalize
from tests.conftest import FIXTURES, base_run, execute_resolved, golden_grad_tol

GOLDEN = load_file(str(FIXTURES / "heba.safetensors"))
META = json.loads((FIXTURES / "heba.json").read_text())
PARAMS = {k.removeprefix("param."): v for k, v in GOLDEN.items() if k.startswith("param.")}
CONTEXT = MethodContext("oxford_pets", "a photo of a {}, a type of pet.", "base2novel", 16, 1, 30)
TOL = {"atol": 1e-5, "rtol": 1e-5}
# (case, train run) pairs of the fixture; gradients are stored for cases A and B only
TRAIN_RUNS = [("caseA", "train_noboost"), ("caseA", "train_boost"), ("caseB", "train_default"),
              ("caseC", "train_noboost")]


def ours(official: str) -> str:
    """Our parameter name for an official one (the mapping under test in ``load_official_state_dict``)."""
    tower, index, point, rest = official.split(".", 3)
    point = {"att_conv": "attn_in", "mlp_conv": "mlp_hidden"}[point]
    return f"{tower.replace('_adapter', '_adapters')}.{int(index) - 1}.{point}.{rest}"


@pytest.fixture(scope="module")
def cupl_file(tmp_path_factory: pytest.TempPathFactory) -> str:
    """Case C's CuPL-style descriptions as a ``cupl_file``."""
    path = tmp_path_factory.mktemp("cupl") / "descriptions.json"
    path.write_text(json.dumps(META["caseC_templates_returned_by_load_CuPL_templates"]))
    return str(path)


def golden_method(clip, case: str, cupl: str | None = None, **options) -> HeBA:
    """HeBA on a fixture case with the fixture's (perturbed) official parameters."""
    if case == "caseC":
        options = {"prompts": "cupl", "cupl_file": cupl, **options}
    method = HeBA(clip, META["cases"][case]["classnames"], HeBAConfig(**options), CONTEXT)
    method.load_official_state_dict(PARAMS)
    return method


def tiny(clip, n_classes: int = 6, protocol: str = "base2novel", **options) -> HeBA:
    """HeBA on the tiny CLIP with seeded (official-order) initialisation."""
    torch.manual_seed(0)
    names = META["cases"]["caseB"]["classnames"][:n_classes]
    return HeBA(clip, names, HeBAConfig(**options), dataclasses.replace(CONTEXT, protocol=protocol))


def train_logits(method: HeBA, seed: int = 5, n: int = 4) -> tuple[torch.Tensor, torch.Tensor]:
    """(logits, loss) of one seeded training step on the case-A images."""
    method.train()
    torch.manual_seed(seed)
    out = method.training_step(GOLDEN["caseA.images"][:n], GOLDEN["caseA.labels"][:n])
    return out.logits, out.loss


def eval_logits(method: HeBA) -> torch.Tensor:
    method.eval()
    with torch.no_grad():
        return method(GOLDEN["caseA.images"])


# -- equivalence with the official code ------------------------------------------------------------------------------
def test_init_is_bitwise_official(tiny_clip):
    """Built after the fixture's seed, every parameter equals the official initialisation bitwise."""
    torch.manual_seed(META["adapter_init"]["torch_manual_seed_before_CustomCLIP"])
    method = HeBA(tiny_clip, META["cases"]["caseA"]["classnames"], HeBAConfig(), CONTEXT)
    state = method.state_dict()
    init = {k.removeprefix("init."): v for k, v in GOLDEN.items() if k.startswith("init.")}
    assert {ours(k) for k in init} == set(state)
    for name, value in init.items():
        assert torch.equal(state[ours(name)], value), name
    assert method.num_trainable() == META["n_trainable_params"] == 90400


@pytest.mark.parametrize("case", ["caseA", "caseB", "caseC"])
def test_golden_eval(tiny_clip, case, cupl_file):
    """Eval logits, cached (template-averaged) text features and image features; prompts token-identical."""
    method = golden_method(tiny_clip, case, cupl_file)
    assert torch.equal(method.tk_prompts, GOLDEN[f"{case}.tk_prompts"])
    images = GOLDEN[f"{case}.images"]
    method.eval()
    with torch.no_grad():
        logits = method(images)
        image_features = method.encode_image(images)
    torch.testing.assert_close(logits, GOLDEN[f"{case}.eval.logits"], **TOL)
    torch.testing.assert_close(method.text_features(), GOLDEN[f"{case}.eval.text_features"], **TOL)
    torch.testing.assert_close(image_features, GOLDEN[f"{case}.eval.image_features"], **TOL)


def replay_official_rng(calls: list[dict]) -> torch.Tensor:
    """Replay the recorded official RNG calls on the global generator; returns the generator state afterwards."""
    for call in calls:
        fn, args = call["fn"], call["args"]
        if fn == "torch.randperm":
            value = torch.randperm(args[0])
        elif fn == "torch.randint":
            value = torch.randint(args[0], args[1], tuple(args[2]))
        else:
            value = torch.rand(*args)
        assert value.tolist() == call["value"]
    return torch.get_rng_state()


@pytest.mark.parametrize("case,run", TRAIN_RUNS)
def test_golden_train_step(tiny_clip, case, run, cupl_file):
    """Train logits (with and without boost), loss, remapped labels, class set, template ids, per-layer scales and
    every adapter gradient; the generator is consumed exactly as by the official step."""
    meta = META["cases"][case]["train"][run]
    method = golden_method(tiny_clip, case, cupl_file, slow_fast_ratio=meta["SLOW_FAST_RATIO"])
    method.train()
    torch.manual_seed(meta["torch_manual_seed_before_forward"])
    out = method.training_step(GOLDEN[f"{case}.images"], GOLDEN[f"{case}.labels"])
    after_ours = torch.get_rng_state()
    torch.manual_seed(meta["torch_manual_seed_before_forward"])
    assert torch.equal(after_ours, replay_official_rng(meta["rng_calls_in_order"]))

    prefix = f"{case}.{run}."
    step = method.last_step
    assert step.class_ids.tolist() == GOLDEN[prefix + "class_ids"].tolist() == meta["class_ids_in_step"]
    assert step.template_ids.tolist() == GOLDEN[prefix + "template_ids"].flatten().tolist()
    assert step.targets.tolist() == GOLDEN[prefix + "labels_out"].tolist() == meta["labels_out"]
    assert step.scales == meta["per_layer_scale_used"]
    torch.testing.assert_close(out.logits, GOLDEN[prefix + "logits"], **TOL)
    torch.testing.assert_close(out.loss, GOLDEN[prefix + "loss"].reshape(()), **TOL)

    out.loss.backward()
    grads = {k.removeprefix(prefix + "grad."): v for k, v in GOLDEN.items() if k.startswith(prefix + "grad.")}
    if case == "caseC":
        assert not grads  # the fixture stores no gradients for case C
        return
    assert len(grads) == len(PARAMS)
    # gsl makes every gradient (1/s) x the true one (up to 1.24 in case B): the golden tolerance scales with it
    tol = golden_grad_tol(meta["grad_max_abs"])
    parameters = dict(method.named_parameters())
    for name, expected in grads.items():
        torch.testing.assert_close(parameters[ours(name)].grad, expected, **tol, msg=name)


def draws_state(seed: int, n: int) -> torch.Tensor:
    """The generator state after ``n`` calls of ``torch.rand(1)`` from ``seed``."""
    torch.manual_seed(seed)
    for _ in range(n):
        torch.rand(1)
    return torch.get_rng_state()


def test_eval_draws_per_layer_and_caches_text(tiny_clip, cupl_file):
    """Eval draws rand(1) per block (text per template on the first call, then image); text is cached until
    invalidate(); no boost in eval even with a ratio that always boosts in training."""
    method = golden_method(tiny_clip, "caseC", cupl_file, slow_fast_ratio=-1.0)
    images, n_temp, n_blocks = GOLDEN["caseC.images"], 3, 2
    method.eval()
    torch.manual_seed(3)
    with torch.no_grad():
        first = method(images)
    assert torch.equal(torch.get_rng_state(), draws_state(3, n_blocks * n_temp + n_blocks))
    torch.testing.assert_close(first, GOLDEN["caseC.eval.logits"], **TOL)
    cached = method._text_cache
    torch.manual_seed(4)
    with torch.no_grad():
        method(images)
    assert method._text_cache is cached
    assert torch.equal(torch.get_rng_state(), draws_state(4, n_blocks))  # image only: text came from the cache
    method.train()
    assert method._text_cache is None


# -- checkpoints -----------------------------------------------------------------------------------------------------
def test_load_official_state_dict_drops_buffers_by_name_and_is_strict(tiny_clip):
    method = tiny(tiny_clip)
    official = {f"adapter_learner.{k}": v for k, v in PARAMS.items()}
    official.update({"adapter_learner.tk_prompts": torch.zeros(6, 1, 77, dtype=torch.long),
                     "adapter_learner.token_embedding.weight": torch.zeros(10, 32),
                     "adapter_learner.tokenized_prompts": torch.zeros(6, 77, dtype=torch.long),
                     "adapter_learner.text_features_for_inference": torch.zeros(6, 32)})
    assert {k.split(".")[1] for k in official if not k.split(".")[1].endswith("_adapter")} == set(OFFICIAL_BUFFERS)
    method.load_official_state_dict(official)
    for name, value in PARAMS.items():
        assert torch.equal(method.state_dict()[ours(name)], value)
    with pytest.raises(ConfigError, match="unexpected key 'adapter_learner.prompt_learner.ctx'"):
        method.load_official_state_dict({**official, "adapter_learner.prompt_learner.ctx": torch.zeros(1)})
    missing = {k: v for k, v in PARAMS.items() if k != "visual_adapter.2.att_conv.mid.weight"}
    with pytest.raises(RuntimeError, match="Missing key"):
        method.load_official_state_dict(missing)
    with pytest.raises(RuntimeError, match="Unexpected key"):  # adapters on block 1 only cannot take block 2's
        tiny(tiny_clip, text_layers=(1,)).load_official_state_dict(PARAMS)


# -- trainable parameters on the real ViT-B/16 architecture ----------------------------------------------------------
@pytest.fixture(scope="module")
def vit_b16():
    """ViT-B/16 with random weights (the architecture is what counts)."""
    from frozen_clip.backbone import load_backbone
    return load_backbone("ViT-B-16", None)


@pytest.mark.parametrize("options,expected", [
    ({}, 87_158_016),
    ({"bottleneck_ratio": 2}, 174_162_432),
    ({"bottleneck_ratio": 8}, 43_655_808),
    ({"bottleneck_ratio": 16}, 21_904_704),
    ({"visual_adapter": "linear"}, 87_054_336),
])
def test_trainable_parameters_vit_b16(vit_b16, options, expected):
    """Spec §2.7 / §10 (measured official 87,158,016; the other ratios computed from the per-adapter formula)."""
    method = HeBA(vit_b16, ["dog", "cat"], HeBAConfig(**options), CONTEXT)
    assert method.num_trainable() == expected
    ratio, visual = options.get("bottleneck_ratio", 4), options.get("visual_adapter", "conv")
    formula = 12 * sum(bottleneck_params(d, ratio, "linear") for d in (512, 2048)) + 12 * sum(
        bottleneck_params(d, ratio, "conv2d" if visual == "conv" else "linear") for d in (768, 3072))
    assert formula == expected


# -- init schemes (adapters/bottleneck.py) ---------------------------------------------------------------------------
def _std(w: torch.Tensor) -> float:
    return w.float().std().item()


@pytest.mark.parametrize("scheme", INIT_SCHEMES)
def test_init_schemes(scheme):
    """Each scheme's distribution on an image-attention-sized block (D 512, b 128): down [128,512,1,1],
    mid [128,1,3,3] (fan_in 9, fan_out 1152), up [512,128,1,1]."""
    torch.manual_seed(0)
    block = init_bottleneck_(BottleneckBlock(512, 4, "conv2d"), scheme)
    down, mid, up = block.down.weight, block.mid.weight, block.up.weight
    uniform = {"down": 1 / 512 ** 0.5, "mid": 1 / 3, "up": 1 / 128 ** 0.5}  # PyTorch default U(+-1/sqrt(fan_in))
    kaiming = {"down": (2 / 128) ** 0.5, "mid": (2 / 1152) ** 0.5, "up": (2 / 512) ** 0.5}  # sqrt(2 / fan_out)
    xavier = {"down": (6 / 640) ** 0.5, "mid": (6 / 1161) ** 0.5, "up": (6 / 640) ** 0.5}  # U(+-sqrt(6/(in+out)))
    weights = {"down": down, "mid": mid, "up": up}

    def is_uniform(name, bound):
        return weights[name].abs().max() <= bound and weights[name].abs().max() > 0.95 * bound

    def is_kaiming(name):
        return abs(_std(weights[name]) / kaiming[name] - 1) < 0.1 and weights[name].abs().max() > 2.5 * kaiming[name]

    expected = {
        "official": [is_uniform("down", uniform["down"]), is_uniform("mid", uniform["mid"]), is_kaiming("up")],
        "zero": [is_uniform("down", uniform["down"]), is_uniform("mid", uniform["mid"]), not up.any()],
        "kaiming_all": [is_kaiming("down"), is_kaiming("mid"), is_kaiming("up")],
        "xavier": [is_uniform(n, xavier[n]) for n in ("down", "mid", "up")],
        "torch_default": [is_uniform(n, uniform[n]) for n in ("down", "mid", "up")],
    }[scheme]
    assert all(expected), expected
    assert torch.equal(block.norm.weight, torch.ones(512)) and not block.norm.bias.any()


# -- ablation axes ---------------------------------------------------------------------------------------------------
def frozen_clip_logits(clip, method: HeBA, images: torch.Tensor, taps_text=None, taps_visual=None) -> torch.Tensor:
    """Logits of plain CLIP (or CLIP with hand-written taps) on the method's prompts (one template)."""
    with torch.no_grad():
        text = normalize(clip.encode_text(method.tk_prompts[:, 0], taps_text))
        image = normalize(clip.encode_image(images, taps_visual))
    return clip.logit_scale() * image @ text.t()


def test_init_zero_is_scaled_layernorm_not_identity(tiny_clip):
    """init zero: up = 0, so each adapter is A(x) = x + s·LN(x) (CLS untouched) -- and not frozen CLIP."""
    from frozen_clip.taps import Taps
    method = tiny(tiny_clip, init="zero")
    blocks = [b for tower in (method.text_adapters, method.visual_adapters) for d in tower.values() for b in d.values()]
    assert len(blocks) == 8 and all(not b.up.weight.any() for b in blocks)
    x = torch.randn(2, 16, 64)
    torch.testing.assert_close(method.visual_adapters["0"]["attn_in"](x, grid_size=(4, 4)),
                               F.layer_norm(x, (64,)), atol=1e-6, rtol=0)

    s = 0.025

    def text_tap(h, site):
        return h + s * F.layer_norm(h, h.shape[-1:])

    def visual_tap(h, site):
        return torch.cat([h[:, :1], text_tap(h[:, 1:], site)], dim=1)

    taps_text, taps_visual = Taps(), Taps()
    for point in ("attn_in", "mlp_hidden"):
        taps_text.add(point, "text", [0, 1], text_tap)
        taps_visual.add(point, "visual", [0, 1], visual_tap)
    images = GOLDEN["caseA.images"]
    logits = eval_logits(method)
    torch.testing.assert_close(logits, frozen_clip_logits(tiny_clip, method, images, taps_text, taps_visual), **TOL)
    assert (logits - frozen_clip_logits(tiny_clip, method, images)).abs().max() > 1e-2


def test_visual_adapter_linear_has_no_convolution(tiny_clip):
    conv, linear = tiny(tiny_clip), tiny(tiny_clip, visual_adapter="linear")
    assert any(isinstance(m, nn.Conv2d) for m in conv.modules())
    assert not any(isinstance(m, (nn.Conv1d, nn.Conv2d)) for m in linear.modules())
    # 9·b depthwise weights fewer per image adapter: b = 16 (attention) and 64 (MLP) on 2 blocks
    assert conv.num_trainable() - linear.num_trainable() == 2 * 9 * (16 + 64)
    assert (eval_logits(conv) - eval_logits(linear)).abs().max() > 1e-3


def test_bottleneck_ratio_sets_width(tiny_clip):
    r4, r8 = tiny(tiny_clip), tiny(tiny_clip, bottleneck_ratio=8)
    for tower in ("text_adapters", "visual_adapters"):
        for layer, blocks in getattr(r4, tower).items():
            for point, block in blocks.items():
                other = getattr(r8, tower)[layer][point]
                assert other.down.weight.shape[0] * 2 == block.down.weight.shape[0] == block.up.weight.shape[1]
    with pytest.raises(ConfigError, match="bottleneck_ratio: 3 must be a positive divisor"):
        tiny(tiny_clip, bottleneck_ratio=3)


def test_points_attn_in_only(tiny_clip):
    method = tiny(tiny_clip, points=("attn_in",))
    for tower in (method.text_adapters, method.visual_adapters):
        assert all(list(blocks) == ["attn_in"] for blocks in tower.values())
    assert not any(b.norm.normalized_shape[0] in (128, 256) for b in method.modules()
                   if isinstance(b, BottleneckBlock))  # no 4D-wide (MLP-hidden) adapter
    assert (eval_logits(method) - eval_logits(tiny(tiny_clip))).abs().max() > 1e-3


def test_restricted_layers_keep_rng_draws(tiny_clip):
    """Adapters only on the chosen blocks; every block index still draws its rand(1)."""
    full, part = tiny(tiny_clip), tiny(tiny_clip, text_layers=(2,), visual_layers=(1,))
    assert list(part.text_adapters) == ["1"] and list(part.visual_adapters) == ["0"]
    full_logits, _ = train_logits(full, seed=11)
    state_full = torch.get_rng_state()
    part_logits, _ = train_logits(part, seed=11)
    assert torch.equal(torch.get_rng_state(), state_full)
    assert len(part.last_step.scales["text"]) == len(part.last_step.scales["visual"]) == 2
    assert (full_logits - part_logits).abs().max() > 1e-3
    with pytest.raises(ConfigError, match="text_layers"):
        tiny(tiny_clip, text_layers=(3,))


def text_lengths(clip, method: HeBA, fn) -> list[int]:
    """Token lengths reaching the first text block while ``fn`` runs (a forward hook on its ln_1)."""
    seen: list[int] = []
    handle = clip.text.transformer.resblocks[0].ln_1.register_forward_hook(lambda m, i, o: seen.append(i[0].shape[1]))
    try:
        fn()
    finally:
        handle.remove()
    return seen


def test_text_conv1d_mixes_tokens_and_disables_truncation(tiny_clip):
    linear, conv = tiny(tiny_clip), tiny(tiny_clip, text_adapter="conv1d")
    causal = tiny(tiny_clip, text_adapter="conv1d_causal")
    assert any(isinstance(m, nn.Conv1d) for m in conv.modules())
    assert text_lengths(tiny_clip, conv, lambda: eval_logits(conv)) == [77]
    assert text_lengths(tiny_clip, causal, lambda: eval_logits(causal))[0] < 77
    assert text_lengths(tiny_clip, linear, lambda: eval_logits(linear))[0] < 77
    assert (eval_logits(conv) - eval_logits(linear)).abs().max() > 1e-3
    ids = conv.tk_prompts[:, 0]
    with torch.no_grad():  # why truncation must be off: the symmetric kernel lets EOT see the padding after it
        for method, exact in ((conv, False), (causal, True)):
            taps = method.taps("text", [0.025, 0.025])
            full = tiny_clip.encode_text(ids, taps, truncate=False)
            cut = tiny_clip.encode_text(ids, taps, truncate=True)
            assert torch.allclose(full, cut, atol=1e-5) is exact


def test_truncate_text_off_is_exact(tiny_clip):
    on, off = tiny(tiny_clip), tiny(tiny_clip, truncate_text=False)
    assert text_lengths(tiny_clip, off, lambda: eval_logits(off)) == [77]
    torch.testing.assert_close(eval_logits(on), eval_logits(off), **TOL)


def test_without_grad_scale_trick_same_logits_gradients_s_times_smaller(tiny_clip):
    with_trick = tiny(tiny_clip, slow_fast_ratio=1.0)  # never boosted: s = 0.025 everywhere
    without = tiny(tiny_clip, slow_fast_ratio=1.0, grad_scale_trick=False)
    without.load_state_dict(with_trick.state_dict())
    logits_a, loss_a = train_logits(with_trick)
    logits_b, loss_b = train_logits(without)
    assert torch.equal(logits_a, logits_b)
    loss_a.backward()
    loss_b.backward()
    grads_b = dict(without.named_parameters())
    for name, p in with_trick.named_parameters():
        expected = 0.025 * p.grad  # float rounding differs per element: tolerance relative to the tensor's scale
        torch.testing.assert_close(grads_b[name].grad, expected, atol=1e-5 * expected.abs().max(), rtol=1e-5)


def test_cls_passthrough(tiny_clip):
    on = tiny(tiny_clip, visual_adapter="linear")
    off = tiny(tiny_clip, visual_adapter="linear", cls_passthrough=False)
    off.load_state_dict(on.state_dict())
    assert (eval_logits(on) - eval_logits(off)).abs().max() > 1e-4
    from jobs.config import resolve
    raw = {"method": {"name": "heba", "cls_passthrough": False}, "dataset": "oxford_pets"}
    with pytest.raises(ConfigError, match="cls_passthrough: false needs visual_adapter: linear"):
        resolve(raw, "test")


def test_novel_scale_applies_only_to_other_classes(tiny_clip):
    official, novel = tiny(tiny_clip), tiny(tiny_clip, novel_scale=0.01)
    torch.testing.assert_close(eval_logits(official), eval_logits(novel), atol=0, rtol=0)
    others = META["cases"]["caseB"]["classnames"][6:12]
    for method in (official, novel):
        method.set_classnames(others)
    assert official.current_scale() == 0.025 and novel.current_scale() == 0.01
    assert (eval_logits(official) - eval_logits(novel)).abs().max() > 1e-4
    novel.train()
    assert novel.current_scale() == 0.025  # training always uses the base scale


def test_boost_factor_and_slow_fast_ratio(tiny_clip):
    always = tiny(tiny_clip, slow_fast_ratio=-1.0, boost_factor=3.0)
    train_logits(always)
    assert always.last_step.scales == {"text": [pytest.approx(0.075)] * 2, "visual": [pytest.approx(0.075)] * 2}
    never = tiny(tiny_clip, slow_fast_ratio=1.0, scale=0.05)
    train_logits(never)
    assert never.last_step.scales == {"text": [0.05, 0.05], "visual": [0.05, 0.05]}


@pytest.mark.parametrize("ratio,expected", [(0, [2, 5, 17]), (-1, list(range(20)))])
def test_negative_sampling_ratio(tiny_clip, ratio, expected):
    method = tiny(tiny_clip, n_classes=20, neg_sampling_ratio=ratio)
    method.train()
    labels = GOLDEN["caseB.labels"]
    method.training_step(GOLDEN["caseB.images"], labels)
    assert method.last_step.class_ids.tolist() == expected
    assert method.last_step.targets.tolist() == ([1, 2, 1, 0] if ratio == 0 else labels.tolist())


def test_label_smoothing(tiny_clip):
    default, plain = tiny(tiny_clip), tiny(tiny_clip, label_smoothing=0.0)
    logits, loss = train_logits(default)
    logits_p, loss_p = train_logits(plain)
    torch.testing.assert_close(logits, logits_p)
    targets = plain.last_step.targets
    torch.testing.assert_close(loss_p, F.cross_entropy(logits_p, targets))
    torch.testing.assert_close(loss, F.cross_entropy(logits, targets, label_smoothing=0.1))
    assert abs(loss.item() - loss_p.item()) > 1e-3


def test_prompts_and_ctx_init(tiny_clip, cupl_file):
    method = tiny(tiny_clip, ctx_init="a picture of a")
    assert method.class_prompts(["great_pyrenees"]) == [
        ["a picture of a great pyrenees, a picture of a great pyrenees."]]
    cupl = tiny(tiny_clip, prompts="cupl", cupl_file=cupl_file)
    assert cupl.class_prompts(["Abyssinian", "unknown_cat"]) == [
        ["a photo of a Abyssinian, a Abyssinian has a distinctive coat.",
         "a photo of a Abyssinian, it is often seen indoors."],
        ["a photo of a unknown cat, a photo of a unknown cat.", "a photo of a unknown cat, a photo of a unknown cat."]]
    from jobs.config import resolve
    with pytest.raises(ConfigError, match="prompts: cupl needs cupl_file"):
        resolve({"method": {"name": "heba", "prompts": "cupl"}, "dataset": "oxford_pets"}, "test")
    with pytest.raises(ConfigError, match="method.cupl_file"):
        tiny(tiny_clip, prompts="cupl", cupl_file="/nonexistent.json")


def test_bad_options_are_config_errors():
    from jobs.config import resolve
    for key, value, message in (("init", "bogus", "method.init"), ("points", [], "points must be a non-empty"),
                                ("scale", 0, "must be positive"), ("visual_adapter", "mlp", "method.visual_adapter")):
        with pytest.raises(ConfigError, match=message):
            resolve({"method": {"name": "heba", key: value}, "dataset": "oxford_pets"}, "test")


# -- recipes and the cross-dataset presets ---------------------------------------------------------------------------
def test_recipes_and_xd_presets(tiny_clip):
    config = HeBAConfig()
    b2n = HeBA.recipe("base2novel", "eurosat", 16, config)
    assert (b2n["lr"], b2n["epochs"], b2n["batch_size"], b2n["warmup_epochs"]) == (0.0075, 30, 16, 0)
    assert HeBA.recipe("fewshot", "dtd", 4, config) == b2n
    xd = HeBA.recipe("cross_dataset", "imagenet", 16, config)
    assert (xd["lr"], xd["epochs"], xd["batch_size"]) == (0.0065, 10, 64)
    intended = effective_settings(config, "cross_dataset", 12, 12)
    assert (intended.text_layers, intended.visual_layers) == ((8, 9, 10, 11),) * 2
    assert (intended.scale, intended.boost_factor) == (0.05, 10.0)
    literal = effective_settings(HeBAConfig(xd_preset="xd_literal_rename"), "domain_generalization", 12, 12)
    assert (literal.scale, literal.boost_factor, literal.text_layers) == (0.025, 10.0, (8, 9, 10, 11))
    none = effective_settings(HeBAConfig(xd_preset="none"), "cross_dataset", 12, 12)
    assert (none.scale, none.boost_factor, none.text_layers) == (0.025, 2.25, tuple(range(12)))
    assert effective_settings(config, "base2novel", 12, 12) == none
    method = tiny(tiny_clip, protocol="cross_dataset")
    train_logits(method)
    assert method.last_step.scales["text"][0] in (0.05, 0.5)  # the preset's scale (x10 when boosted)
    n_text = len(tiny_clip.text.transformer.resblocks)
    report = method.report()  # the record shows what the preset replaced (the config still says 0.025 / 2.25)
    assert report["xd_preset"] == "xd_intended" and (report["scale"], report["boost_factor"]) == (0.05, 10.0)
    assert report["text_layers"] == list(range(max(n_text - 4, 0) + 1, n_text + 1))
    assert tiny(tiny_clip).report()["xd_preset"] == "none" and tiny(tiny_clip).report()["scale"] == 0.025
    from jobs.config import resolve
    raw = {"method": {"name": "heba", "scale": 0.03}, "dataset": "imagenet", "protocol": "cross_dataset"}
    with pytest.raises(ConfigError, match="set method.xd_preset: none"):
        resolve(raw, "test")
    resolved = resolve({**raw, "method": {**raw["method"], "xd_preset": "none"}}, "test")
    assert (resolved.optim.lr, resolved.optim.epochs) == (0.0075, 30)  # no preset: the base-to-novel recipe


# -- end to end ------------------------------------------------------------------------------------------------------
def test_two_training_steps_and_eval_end_to_end(data_root, tmp_path):
    from jobs.config import resolve
    raw = base_run(data_root, tmp_path / "results", method="heba",
                   optim={"epochs": 1, "iterations": 2, "batch_size": 4})
    resolved = resolve(raw, "test")
    assert resolved.optim.lr == 0.0075 and resolved.config["method"]["bottleneck_ratio"] == 4
    record = execute_resolved(resolved)
    assert record["status"] == "done"
    assert record["history"][-1]["iterations"] == 2
    assert set(record["metrics"]) == {"base", "novel"}
    assert record["cost"]["trainable_params"] == 90400
    assert "loss_ce" in record["aux_losses"]
