"""MMA: equivalence with the official code (golden fixtures ``tests/fixtures/mma.*``), ablation axes, end to end.

The fixtures were produced by the official ``trainers/mmadapter.py`` on the golden tiny CLIP (2 blocks per tower,
``ADAPTER_DIM`` 8), CPU fp32: case A adapts blocks 1-2, case B block 2 only.
"""

from __future__ import annotations

import dataclasses
import json

import pytest
import torch
from safetensors.torch import load_file
from torch import nn

from adapters.mma import MMA, MMAConfig, adapted_layers
from frozen_clip.errors import ConfigError
from frozen_clip.method import MethodContext
from tests.conftest import FIXTURES, base_run, execute_resolved, golden_grad_tol

GOLDEN = load_file(str(FIXTURES / "mma.safetensors"))
META = json.loads((FIXTURES / "mma.json").read_text())
CLASSNAMES = META["classnames"]
CONTEXT = MethodContext("oxford_pets", "a photo of a {}, a type of pet.", "base2novel", 16, 1, 5)
CASES = {"caseA": (1, 2), "caseB": (2,)}  # ADAPTER_START..END of each case
TOL = {"atol": 1e-5, "rtol": 1e-5}


def ours(official: str) -> str:
    """Our parameter name for an official one (the mapping under test in ``load_official_state_dict``)."""
    kind, index, rest = official.split(".", 2)
    return f"{kind}s.{int(index) - 1}.{rest}"


def stored(case: str, kind: str) -> dict[str, torch.Tensor]:
    """``<case>.<kind>.*`` tensors of the fixture under their official names."""
    prefix = f"{case}.{kind}."
    return {k.removeprefix(prefix): v for k, v in GOLDEN.items() if k.startswith(prefix)}


def grad_tol(case: str) -> dict[str, float]:
    """The golden gradient tolerance (:func:`tests.conftest.golden_grad_tol`) of the case's largest gradient: the
    official gsl trick makes every adapter gradient 1/s = 1000x its true value (case A reaches 15.3)."""
    return golden_grad_tol(META["cases"][case]["grad_max_abs"])


def golden_method(clip, case: str, **options) -> MMA:
    """MMA on a fixture case with the fixture's (perturbed) official parameters."""
    config = MMAConfig(layers=CASES[case], bottleneck_dim=8, **options)
    method = MMA(clip, CLASSNAMES, config, CONTEXT)
    method.load_official_state_dict(stored(case, "param"))
    return method


def tiny(clip, **options) -> MMA:
    """MMA on the tiny CLIP (both blocks adapted, r = 8) with seeded initialisation."""
    torch.manual_seed(0)
    options = {"layers": (1, 2), "bottleneck_dim": 8, **options}
    return MMA(clip, CLASSNAMES, MMAConfig(**options), CONTEXT)


def train_step(method: MMA):
    """One training step on the fixture images; returns (logits, loss, {name: grad})."""
    method.train()
    method.zero_grad(set_to_none=True)
    out = method.training_step(GOLDEN["images"], GOLDEN["labels"])
    out.loss.backward()
    return out.logits, out.loss, {n: p.grad.clone() for n, p in method.named_parameters()}


# -- equivalence with the official code ------------------------------------------------------------------------------
@pytest.mark.parametrize("case", CASES)
def test_init_is_bitwise_official(tiny_clip, case):
    """Built after the fixture's seed (official construction order), every parameter equals ``init.*`` bitwise."""
    torch.manual_seed(META["cases"][case]["adapter_init"]["torch_manual_seed_before_CustomCLIP"])
    method = MMA(tiny_clip, CLASSNAMES, MMAConfig(layers=CASES[case], bottleneck_dim=8), CONTEXT)
    state = method.state_dict()
    init = stored(case, "init")
    assert {ours(k) for k in init} == set(state)
    for name, value in init.items():
        assert torch.equal(state[ours(name)], value), name
    assert method.num_trainable() == META["cases"][case]["n_trainable_params"]
    assert torch.equal(method.text_ids, GOLDEN[f"{case}.tokenized_prompts"])  # "a photo of a {name}."


@pytest.mark.parametrize("case", CASES)
def test_golden_eval(tiny_clip, case):
    """Eval logits, the cached (un-normalised) text features and the image features; truncated text context."""
    method = golden_method(tiny_clip, case)
    method.eval()
    with torch.no_grad():
        logits = method(GOLDEN["images"])
        image_features = method.encode_image(GOLDEN["images"])
    torch.testing.assert_close(logits, GOLDEN[f"{case}.eval.logits"], **TOL)
    torch.testing.assert_close(method.text_features(), GOLDEN[f"{case}.eval.text_features"], **TOL)
    torch.testing.assert_close(image_features, GOLDEN[f"{case}.eval.image_features"], **TOL)
    plain = tiny_clip.model.logit_scale.exp() * torch.nn.functional.normalize(
        tiny_clip.encode_image(GOLDEN["images"]), dim=-1) @ torch.nn.functional.normalize(
        tiny_clip.encode_text(method.text_ids), dim=-1).t()
    assert (logits - plain).abs().max() > 1e-3  # the adapters matter far beyond the tolerance


@pytest.mark.parametrize("case", CASES)
def test_golden_train_step(tiny_clip, case):
    """Train logits, loss, and the gradient of every adapter parameter (shared ones: sum of both towers)."""
    logits, loss, grads = train_step(golden_method(tiny_clip, case))
    torch.testing.assert_close(logits, GOLDEN[f"{case}.train.logits"], **TOL)
    torch.testing.assert_close(loss.reshape(1), GOLDEN[f"{case}.train.loss"], **TOL)
    expected = stored(case, "train.grad")
    assert {ours(k) for k in expected} == set(grads)
    for name, value in expected.items():
        torch.testing.assert_close(grads[ours(name)], value, **grad_tol(case), msg=name)


@pytest.mark.parametrize("case", CASES)
def test_golden_full_context(tiny_clip, case):
    """Without truncation (all 77 positions, as the official code) the outputs agree to reduction-order noise:
    measured bitwise equal with 2 CPU threads, <= 5e-7 with 1 (the intra-op split changes the summation order)."""
    tight = {"atol": 1e-6, "rtol": 0.0}
    method = golden_method(tiny_clip, case, truncate_text=False)
    method.eval()
    with torch.no_grad():
        torch.testing.assert_close(method(GOLDEN["images"]), GOLDEN[f"{case}.eval.logits"], **tight)
    torch.testing.assert_close(method.text_features(), GOLDEN[f"{case}.eval.text_features"], **tight)
    logits, loss, grads = train_step(method)
    torch.testing.assert_close(logits, GOLDEN[f"{case}.train.logits"], **tight)
    torch.testing.assert_close(loss.reshape(1), GOLDEN[f"{case}.train.loss"], **tight)
    for name, value in stored(case, "train.grad").items():
        torch.testing.assert_close(grads[ours(name)], value, **grad_tol(case), msg=name)


def test_load_official_state_dict_drops_buffers_by_name_and_is_strict(tiny_clip):
    params = stored("caseA", "param")
    with_buffers = {f"adapter_learner.{k}": v for k, v in params.items()}
    with_buffers["adapter_learner.token_embedding"] = torch.zeros(6, 77, 32)
    with_buffers["tokenized_prompts"] = torch.zeros(6, 77, dtype=torch.long)
    method = tiny(tiny_clip)
    method.load_official_state_dict(with_buffers)
    assert torch.equal(method.shared_adapters["0"][0].weight, params["shared_adapter.1.0.weight"])
    with pytest.raises(ConfigError, match="unexpected key"):
        method.load_official_state_dict({**params, "prompt_learner.ctx": torch.zeros(1)})
    missing = dict(params)
    missing.pop("shared_adapter.2.0.bias")
    with pytest.raises(RuntimeError, match="Missing key"):
        method.load_official_state_dict(missing)
    with pytest.raises(RuntimeError, match="Unexpected key"):  # block 2 only cannot take block 1's adapters
        tiny(tiny_clip, layers=(2,)).load_official_state_dict(params)


def test_eval_text_features_cached_until_invalidate(tiny_clip):
    method = tiny(tiny_clip)
    method.eval()
    with torch.no_grad():
        first = method(GOLDEN["images"])
        cached = method.text_features()
        method.text_adapters["1"].up.bias.add_(1.0)
        assert torch.equal(method.text_features(), cached)  # stale by design until invalidate()
        method.invalidate()
        assert not torch.equal(method.text_features(), cached)
        assert not torch.equal(method(GOLDEN["images"]), first)
    method.train()  # a mode switch invalidates too; training recomputes with gradients
    assert method._text_cache is None and method.text_features().requires_grad


# -- trainable parameters on the real ViT-B/16 architecture ----------------------------------------------------------
@pytest.fixture(scope="module")
def vit_b16():
    """ViT-B/16 with random weights (the architecture is what counts; no forward is run)."""
    from frozen_clip.backbone import load_backbone
    return load_backbone("ViT-B-16", None)


def mma_params(r: int, shared: bool, n_layers: int = 8) -> int:
    """Per layer: text down+up, image down+up, and the shared Linear(r, r)."""
    per_layer = sum(2 * d * r + d + r for d in (512, 768)) + (r * r + r if shared else 0)
    return n_layers * per_layer


@pytest.mark.parametrize("options,expected", [
    ({}, 674_560),
    ({"shared_layer": False}, 666_112),
    ({"bottleneck_dim": 16}, mma_params(16, True)),
    ({"layers": (9, 10, 11, 12)}, 337_280),
])
def test_trainable_parameters_vit_b16(vit_b16, options, expected):
    """674,560 measured on the official module; the rest from the per-layer formula."""
    method = MMA(vit_b16, ["dog", "cat"], MMAConfig(**options), CONTEXT)
    assert method.num_trainable() == expected
    assert mma_params(options.get("bottleneck_dim", 32), options.get("shared_layer", True),
                      len(options.get("layers", range(8)))) == expected
    assert sorted(int(k) for k in method.text_adapters) == sorted(l - 1 for l in options.get("layers", range(5, 13)))


# -- ablation axes ---------------------------------------------------------------------------------------------------
def test_grad_scale_trick_changes_only_parameter_gradients(tiny_clip):
    """Off: identical logits; every adapter gradient s = 0.001 times the official one; the gradient flowing into
    the backbone stream (here: to the input pixels) is the same."""
    results = []
    for trick in (True, False):
        method = tiny(tiny_clip, grad_scale_trick=trick)
        method.train()
        images = GOLDEN["images"].clone().requires_grad_(True)
        out = method.training_step(images, GOLDEN["labels"])
        out.loss.backward()
        results.append((out.logits, images.grad, {n: p.grad for n, p in method.named_parameters()}))
    (logits_on, pixels_on, grads_on), (logits_off, pixels_off, grads_off) = results
    assert torch.equal(logits_on, logits_off)
    torch.testing.assert_close(pixels_on, pixels_off, atol=1e-9, rtol=1e-4)
    for name, grad in grads_on.items():
        torch.testing.assert_close(grads_off[name] * 1000.0, grad, atol=1e-5, rtol=1e-4, msg=name)


def test_shared_layer_is_one_module_for_both_towers(tiny_clip):
    """One middle layer per depth; its gradient is the sum of what the text and the image tower send it."""
    method = tiny(tiny_clip)
    assert set(method.shared_adapters) == {"0", "1"}
    method.train()
    text, image = method.encode_text(), method.encode_image(GOLDEN["images"])
    weight = method.shared_adapters["1"][0].weight

    def grad(img: torch.Tensor, txt: torch.Tensor) -> torch.Tensor:
        loss = torch.nn.functional.cross_entropy(method.logits(img, txt), GOLDEN["labels"])
        return torch.autograd.grad(loss, weight, retain_graph=True)[0]

    from_text, from_image = grad(image.detach(), text), grad(image, text.detach())
    assert from_text.abs().max() > 0 and from_image.abs().max() > 0
    torch.testing.assert_close(grad(image, text), from_text + from_image, atol=1e-6, rtol=1e-5)
    off = tiny(tiny_clip, shared_layer=False)
    assert len(off.shared_adapters) == 0 and off.num_trainable() == method.num_trainable() - 2 * (8 * 8 + 8)
    assert not torch.allclose(train_step(off)[0], train_step(method)[0])


def test_activation_tap_and_bottleneck_dim(tiny_clip):
    base = tiny(tiny_clip)
    reference = train_step(base)[0]
    gelu = tiny(tiny_clip, activation="gelu")
    assert isinstance(gelu.text_adapters["0"].down[1], nn.GELU)
    assert isinstance(gelu.shared_adapters["0"][1], nn.ReLU)  # the shared middle layer keeps its ReLU
    assert not torch.allclose(train_step(gelu)[0], reference)
    # tap block_input: the branch reads the raw block input instead of ln_1 of it
    block_input = tiny(tiny_clip, tap="block_input")
    x = torch.randn(2, 5, 32)
    assert torch.equal(block_input.adapter_input("text", "0", x), x)
    assert torch.equal(base.adapter_input("text", "0", x), tiny_clip.text.transformer.resblocks[0].ln_1(x))
    assert not torch.allclose(train_step(block_input)[0], reference)
    wide = tiny(tiny_clip, bottleneck_dim=16)
    assert wide.visual_adapters["1"].down[0].weight.shape == (16, 64)
    assert wide.shared_adapters["1"][0].weight.shape == (16, 16)


def test_scale_sets_the_branch_magnitude(tiny_clip):
    x = torch.randn(2, 5, 64)
    small, large = tiny(tiny_clip), tiny(tiny_clip, scale=0.01)
    with torch.no_grad():
        torch.testing.assert_close(large.adaptation("visual", "1", x), 10 * small.adaptation("visual", "1", x),
                                   atol=1e-7, rtol=1e-5)


def test_template(tiny_clip):
    method = tiny(tiny_clip)
    assert method.prompts(method.template())[0] == "a photo of a great pyrenees."
    dataset = tiny(tiny_clip, template="dataset")
    assert dataset.template() == CONTEXT.template
    assert not torch.equal(dataset.text_ids, method.text_ids)
    other = tiny(tiny_clip, template="itap of a {}.")
    assert torch.equal(other.text_ids, tiny_clip.tokenize([f"itap of a {n.replace('_', ' ')}." for n in CLASSNAMES]))


def test_set_classnames_rebuilds_prompts(tiny_clip):
    method = tiny(tiny_clip)
    method.eval()
    with torch.no_grad():
        method(GOLDEN["images"])
        method.set_classnames(CLASSNAMES[:3])
        assert method(GOLDEN["images"]).shape == (4, 3)
    assert method.text_ids.shape[0] == 3


def test_truncate_text_is_exact(tiny_clip):
    truncated, full = tiny(tiny_clip), tiny(tiny_clip, truncate_text=False)
    assert truncated.class_ids().shape[1] < full.class_ids().shape[1] == 77
    torch.testing.assert_close(train_step(truncated)[0], train_step(full)[0], atol=1e-5, rtol=1e-5)


# -- layers, presets and recipes -------------------------------------------------------------------------------------
def test_layers_and_xd_presets(tiny_clip):
    config = MMAConfig()
    assert adapted_layers(config, "base2novel", 12) == tuple(range(4, 12))  # blocks 5-12
    assert adapted_layers(config, "fewshot", 12) == tuple(range(4, 12))
    assert adapted_layers(config, "cross_dataset", 12) == (8, 9, 10, 11)  # xd_start9
    assert adapted_layers(MMAConfig(xd_preset="xd_start10"), "domain_generalization", 12) == (9, 10, 11)
    assert adapted_layers(MMAConfig(xd_preset="none"), "cross_dataset", 12) == tuple(range(4, 12))
    assert adapted_layers(MMAConfig(layers=(11, 12)), "cross_dataset", 12) == (10, 11)  # explicit layers win
    with pytest.raises(ConfigError, match="method.layers"):
        MMA(tiny_clip, CLASSNAMES, MMAConfig(), CONTEXT)  # 5-12 on a 2-block tower
    method = MMA(tiny_clip, CLASSNAMES, MMAConfig(layers=(2,)), dataclasses.replace(CONTEXT, protocol="cross_dataset"))
    assert list(method.text_adapters) == list(method.visual_adapters) == ["1"]


def test_recipes():
    config = MMAConfig()
    b2n = MMA.recipe("base2novel", "eurosat", 16, config)
    assert (b2n["name"], b2n["lr"], b2n["epochs"], b2n["batch_size"], b2n["warmup_epochs"]) == ("sgd", 0.0015, 5, 16, 0)
    assert (b2n["momentum"], b2n["weight_decay"], b2n["scheduler"]) == (0.9, 5e-4, "cosine")
    assert b2n["eval_batch_size"] == 100
    assert MMA.recipe("base2novel", "imagenet", 16, config)["batch_size"] == 128
    assert MMA.recipe("fewshot", "dtd", 4, config) == b2n
    xd = MMA.recipe("cross_dataset", "imagenet", 16, config)
    assert (xd["lr"], xd["epochs"], xd["batch_size"]) == (0.0015, 1, 128)
    assert MMA.recipe("domain_generalization", "imagenet", 16, MMAConfig(xd_preset="none"))["epochs"] == 5
    from jobs.config import resolve
    resolved = resolve({"method": {"name": "mma", "layers": [10, 11, 12]}, "dataset": "imagenet",
                        "protocol": "cross_dataset"}, "test")
    assert (resolved.optim.epochs, resolved.optim.batch_size) == (1, 128)
    assert resolved.config["method"]["xd_preset"] == "xd_start9"  # named in the run record


def test_bad_options_are_config_errors():
    from jobs.config import resolve
    for key, value, message in (("layers", [0, 1], "1-based"), ("scale", 0, "must be positive"),
                                ("activation", "tanh", "method.activation"), ("tap", "ln_2", "method.tap"),
                                ("template", "a photo", "must contain"), ("bottleneck", 8, "did you mean")):
        with pytest.raises(ConfigError, match=message):
            resolve({"method": {"name": "mma", key: value}, "dataset": "oxford_pets"}, "test")


# -- end to end ------------------------------------------------------------------------------------------------------
def test_two_training_steps_and_eval_end_to_end(data_root, tmp_path):
    from jobs.config import resolve
    raw = base_run(data_root, tmp_path / "results", method={"name": "mma", "layers": [1, 2], "bottleneck_dim": 8},
                   optim={"epochs": 1, "iterations": 2, "batch_size": 4})
    resolved = resolve(raw, "test")
    assert resolved.optim.lr == 0.0015 and resolved.config["method"]["scale"] == 0.001
    record = execute_resolved(resolved)
    assert record["status"] == "done"
    assert record["history"][-1]["iterations"] == 2
    assert set(record["metrics"]) == {"base", "novel"}
    assert record["cost"]["trainable_params"] == META["cases"]["caseA"]["n_trainable_params"]
    assert set(record["aux_losses"]) == {"loss_ce"}
