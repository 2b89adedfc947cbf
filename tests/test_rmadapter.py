"""RMAdapter: its design on top of MMA, pinned by these tests, the parameter
counts, every ablation switch, and an end-to-end run. There is no official code, hence no golden fixture: the
anchor is ``rm_as_mma``, which must equal the (golden-tested) ``mma`` method bit for bit."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import pytest
import torch
import yaml
from torch import nn
from torch.nn import functional as F

from adapters.mma import MMA, MMAConfig
from adapters.rmadapter import AUX_TERMS, PRESETS, RMAdapter, RMAdapterConfig, preset_config, reconstruction_loss
from frozen_clip.errors import ConfigError
from frozen_clip.method import MethodContext, normalize
from tests.conftest import base_run, execute_resolved
from tests.test_mma import CLASSNAMES, GOLDEN

CONTEXT = MethodContext("oxford_pets", "a photo of a {}, a type of pet.", "base2novel", 16, 1, 5)
IMAGES, LABELS = GOLDEN["images"], GOLDEN["labels"]
TINY = {"layers": (1, 2), "bottleneck_dim": 8}


def tiny(clip, config: RMAdapterConfig | None = None, **options) -> RMAdapter:
    """RMAdapter on the tiny CLIP (both blocks adapted, r = 8), seeded."""
    torch.manual_seed(0)
    config = dataclasses.replace(config or RMAdapterConfig(), **{**TINY, **options})
    return RMAdapter(clip, CLASSNAMES, config, CONTEXT)


def step(method: MMA):
    """One training step: (StepOutput, {name: grad})."""
    method.train()
    method.zero_grad(set_to_none=True)
    out = method.training_step(IMAGES, LABELS)
    out.loss.backward()
    return out, {n: p.grad for n, p in method.named_parameters() if p.grad is not None}


def eval_logits(method: MMA) -> torch.Tensor:
    method.eval()
    with torch.no_grad():
        return method(IMAGES)


# -- parameter counts (ViT-B/16 shapes, random weights, no forward) -----------------------------------------
@pytest.fixture(scope="module")
def vit_b16():
    from frozen_clip.backbone import load_backbone
    return load_backbone("ViT-B-16", None)


@pytest.mark.parametrize("options,expected", [
    ({}, 1_029_376),  # default: shared down, decoder depth 2, hidden 32
    (PRESETS["rm_as_mma"], 674_560),
    ({"reconstruction": False, "shared_layer": False}, 666_112),
    ({"decoder_depth": 1}, 1_012_480),
    ({"decoder_depth": 3}, 1_046_272),
    ({"share_down": False}, 1_357_568),
])
def test_trainable_parameters_vit_b16(vit_b16, options, expected):
    """Every row of the parameter table, computed from the layer shapes."""
    method = RMAdapter(vit_b16, ["dog", "cat"], RMAdapterConfig(**options), CONTEXT)
    if not options:
        print(f"RMAdapter default trainable parameters on ViT-B/16: {method.num_trainable():,}")
    assert method.num_trainable() == expected
    inference = sum(p.numel() for n, p in method.named_parameters() if not n.startswith(("text_rec", "visual_rec")))
    assert inference == (666_112 if options.get("shared_layer") is False else 674_560)


# -- rm_as_mma is MMA ------------------------------------------------------------------------------------------
def test_rm_as_mma_equals_mma_bitwise(tiny_clip):
    torch.manual_seed(0)
    mma = MMA(tiny_clip, CLASSNAMES, MMAConfig(**TINY), CONTEXT)
    rm = tiny(tiny_clip, preset_config("rm_as_mma"))
    assert mma.state_dict().keys() == rm.state_dict().keys()
    assert all(torch.equal(a, b) for a, b in zip(mma.state_dict().values(), rm.state_dict().values()))
    (out_mma, grads_mma), (out_rm, grads_rm) = step(mma), step(rm)
    assert torch.equal(out_mma.logits, out_rm.logits) and torch.equal(out_mma.loss, out_rm.loss)
    assert set(out_rm.aux) == {"loss_ce"} and grads_mma.keys() == grads_rm.keys()
    assert all(torch.equal(grads_mma[n], grads_rm[n]) for n in grads_mma)
    assert torch.equal(eval_logits(mma), eval_logits(rm))


# -- the decoder is not used at inference ----------------------------------------------------------------------
def test_eval_logits_do_not_depend_on_decoder(tiny_clip):
    method = tiny(tiny_clip, share_down=False)
    before = eval_logits(method)
    train_logits = step(method)[0].logits
    with torch.no_grad():
        for name, p in method.named_parameters():
            if name.startswith(("text_rec", "visual_rec")):
                p.add_(torch.randn_like(p))
    method.invalidate()
    assert torch.equal(eval_logits(method), before)
    perturbed = step(method)[0]
    assert torch.equal(perturbed.logits, train_logits)  # the CE path never reads the decoder either
    assert len(list(method.text_rec.parameters())) > 0


# -- local reconstruction --------------------------------------------------------------------------------------
def _rec_grads(method: RMAdapter, tower: str, layer: int) -> dict[str, torch.Tensor | None]:
    method.train()
    _, _, rec = method.forward_train(IMAGES)
    names, params = zip(*method.named_parameters())
    grads = torch.autograd.grad(rec[(tower, layer)], params, allow_unused=True)
    return dict(zip(names, grads))


@pytest.mark.parametrize("tower", ["text", "visual"])
def test_rec_local_gradient_stays_in_its_layer(tiny_clip, tower):
    """``rec_local``: L_rec of block 2 reaches only block 2's down-projection and decoder (exactly zero elsewhere);
    without it, it also reaches block 1's adapter through the backbone stream."""
    grads = _rec_grads(tiny(tiny_clip), tower, 1)
    own = {f"{tower}_adapters.1.down.0.weight", f"{tower}_adapters.1.down.0.bias"} | {
        n for n in grads if n.startswith(f"{tower}_rec.1.")}
    for name, grad in grads.items():
        if name in own:
            assert grad is not None and grad.abs().max() > 0, name
        else:
            assert grad is None or torch.count_nonzero(grad) == 0, name
    leaky = _rec_grads(tiny(tiny_clip, rec_local=False), tower, 1)
    assert leaky[f"{tower}_adapters.0.up.weight"].abs().max() > 0


# -- gradient scaling of the reconstruction path ---------------------------------------------------------------
def test_rec_grad_scale_match_is_one_over_alpha(tiny_clip):
    """Decoder gradients under ``match`` are 1/α = 1000x those without any scaling; the forward is unchanged."""
    out_match, match = step(tiny(tiny_clip, consistency=False))
    out_none, none = step(tiny(tiny_clip, consistency=False, rec_grad_scale="none"))
    assert torch.equal(out_match.loss, out_none.loss)
    decoder = [n for n in match if "_rec." in n]
    assert decoder
    for name in decoder:
        torch.testing.assert_close(match[name], 1000.0 * none[name], atol=1e-6, rtol=1e-4, msg=name)
    assert tiny(tiny_clip, grad_scale_trick=False).rec_grad_factor == 1.0  # nothing to match without the trick


# -- text tokens of the reconstruction loss --------------------------------------------------------------------
def test_rec_text_tokens_valid_is_invariant_to_truncation(tiny_clip):
    def rec_text(**options) -> torch.Tensor:
        return step(tiny(tiny_clip, **options))[0].aux["loss_rec_text"]

    truncated, full = rec_text(), rec_text(truncate_text=False)
    torch.testing.assert_close(truncated, full, atol=1e-7, rtol=1e-5)
    all_tokens = tiny(tiny_clip, rec_text_tokens="all")
    assert not all_tokens.truncates_text and all_tokens.class_ids().shape[1] == 77
    assert torch.equal(rec_text(rec_text_tokens="all"), rec_text(rec_text_tokens="all", truncate_text=False))
    assert not torch.allclose(rec_text(rec_text_tokens="all"), full)  # padding positions counted


# -- the gradient-scale trick does not change the forward ------------------------------------------------------
def test_adaptation_forward_identical_with_and_without_gsl(tiny_clip):
    on, off = tiny(tiny_clip), tiny(tiny_clip, grad_scale_trick=False)
    x = torch.randn(2, 17, 64)
    with torch.no_grad():
        assert torch.equal(on.adaptation("visual", "1", x), off.adaptation("visual", "1", x))
    assert torch.equal(eval_logits(on), eval_logits(off))
    out_on, out_off = step(on)[0], step(off)[0]
    assert all(torch.equal(out_on.aux[k], out_off.aux[k]) for k in AUX_TERMS)


# -- ablation switches -----------------------------------------------------------------------------------------------
def test_reconstruction_off_has_no_decoder_and_no_rec_terms(tiny_clip):
    method = tiny(tiny_clip, reconstruction=False)
    assert len(method.text_rec) == len(method.visual_rec) == 0
    out = step(method)[0]
    assert set(out.aux) == {"loss_ce", "loss_con_image", "loss_con_text"}


def test_share_down_off_builds_a_separate_down_rec(tiny_clip):
    shared, separate = tiny(tiny_clip), tiny(tiny_clip, share_down=False)
    assert shared.visual_rec["0"].down is None
    down_rec, down = separate.visual_rec["0"].down, separate.visual_adapters["0"].down
    assert down_rec[0].weight.shape == down[0].weight.shape and isinstance(down_rec[1], nn.GELU)
    assert down_rec[0].bias.abs().max() == 0  # the adapter's init: kaiming fan_out, zero bias
    grads = _rec_grads(separate, "text", 0)
    assert grads["text_rec.0.down.0.weight"].abs().max() > 0
    assert grads["text_adapters.0.down.0.weight"] is None  # the reconstruction no longer trains the adapter's down


@pytest.mark.parametrize("depth", [1, 2, 3])
def test_decoder_depth_is_the_number_of_linears(tiny_clip, depth):
    method = tiny(tiny_clip, decoder_depth=depth, decoder_hidden=5)
    decoder = method.text_rec["1"].decoder
    linears = [m for m in decoder if isinstance(m, nn.Linear)]
    assert len(linears) == depth and len(decoder) == 2 * depth - 1
    assert linears[0].in_features == 8 and linears[-1].out_features == 32
    assert all(l.out_features == 5 for l in linears[:-1])
    assert all(isinstance(m, nn.GELU) for m in decoder if not isinstance(m, nn.Linear))


def test_consistency_off_has_no_con_terms_and_on_uses_frozen_clip(tiny_clip):
    off = step(tiny(tiny_clip, consistency=False))[0]
    assert set(off.aux) == {"loss_ce", "loss_rec_visual", "loss_rec_text"}
    method = tiny(tiny_clip)
    out = step(method)[0]
    assert set(out.aux) == set(AUX_TERMS)
    image, text, _ = method.forward_train(IMAGES)
    frozen_image = tiny_clip.encode_image(IMAGES)
    frozen_text = tiny_clip.encode_text(method.text_ids)
    torch.testing.assert_close(method.frozen_text_features(), frozen_text, atol=1e-6, rtol=1e-5)
    expected_image = (normalize(image) - normalize(frozen_image)).abs().mean()
    expected_text = (normalize(text) - normalize(frozen_text)).abs().mean()
    torch.testing.assert_close(out.aux["loss_con_image"], expected_image.detach(), atol=1e-7, rtol=1e-5)
    torch.testing.assert_close(out.aux["loss_con_text"], expected_text.detach(), atol=1e-7, rtol=1e-5)
    assert out.aux["loss_con_image"] > 0 and out.aux["loss_con_text"] > 0


def test_total_loss_is_ce_plus_weighted_terms(tiny_clip):
    config = RMAdapterConfig(lambda_rec_visual=0.5, lambda_rec_text=2.0, lambda_con_image=3.0, lambda_con_text=4.0)
    out = step(tiny(tiny_clip, config))[0]
    a = out.aux
    expected = (a["loss_ce"] + 0.5 * a["loss_rec_visual"] + 2.0 * a["loss_rec_text"] + 3.0 * a["loss_con_image"]
                + 4.0 * a["loss_con_text"])
    torch.testing.assert_close(out.loss.detach(), expected, atol=1e-6, rtol=1e-6)
    ce_only = tiny(tiny_clip, config, lambda_rec_visual=0.0, lambda_rec_text=0.0, lambda_con_image=0.0,
                   lambda_con_text=0.0)
    out0 = step(ce_only)[0]
    assert torch.equal(out0.loss.detach(), out0.aux["loss_ce"])


def test_reconstruction_loss_kinds_and_reductions():
    rec, target = torch.randn(2, 5, 3), torch.randn(2, 5, 3)
    mask = torch.tensor([[1, 1, 1, 0, 0], [1, 1, 1, 1, 1]], dtype=torch.bool)
    sel = mask.unsqueeze(-1).expand_as(rec)
    diff = (rec - target)[sel]
    cases = {("l2", "mean"): diff.square().mean(), ("l1", "mean"): diff.abs().mean(),
             ("l2", "sum"): diff.square().sum() / 2, ("l1", "sum"): diff.abs().sum() / 2}
    for (kind, reduction), expected in cases.items():
        torch.testing.assert_close(reconstruction_loss(rec, target, mask, kind, reduction), expected)
    cos = 1 - F.cosine_similarity(rec, target, dim=-1)
    torch.testing.assert_close(reconstruction_loss(rec, target, mask, "cosine", "mean"), cos[mask].mean())
    torch.testing.assert_close(reconstruction_loss(rec, target, None, "l2", "mean"), (rec - target).square().mean())


def test_rec_loss_target_tokens_and_decoder_input_options(tiny_clip):
    reference = step(tiny(tiny_clip))[0].aux
    for options, term in (({"rec_loss": "cosine"}, "loss_rec_text"), ({"rec_loss": "l1"}, "loss_rec_visual"),
                          ({"rec_target": "block_input"}, "loss_rec_visual"),
                          ({"rec_target": "block_output"}, "loss_rec_text"),
                          ({"rec_visual_tokens": "patches"}, "loss_rec_visual"),
                          ({"rec_reduction": "sum"}, "loss_rec_visual"),
                          ({"decoder_input": "shared"}, "loss_rec_text"), ({"decoder_init": "torch_default"},
                                                                           "loss_rec_text"),
                          ({"con_reduction": "sum"}, "loss_con_image"), ({"con_normalize": False}, "loss_con_text"),
                          ({"con_text_target": "dataset_template"}, "loss_con_text"),
                          ({"activation": "relu"}, "loss_ce")):
        changed = step(tiny(tiny_clip, **options))[0].aux
        assert not torch.allclose(changed[term], reference[term]), options


def test_rec_detach_target(tiny_clip):
    """With the target attached, L_rec also trains the earlier block's adapter through the block input."""
    detached = _rec_grads(tiny(tiny_clip), "visual", 1)
    attached = _rec_grads(tiny(tiny_clip, rec_detach_target=False), "visual", 1)
    assert detached["visual_adapters.0.up.weight"] is None
    assert attached["visual_adapters.0.up.weight"].abs().max() > 0


def test_frozen_text_features_once_per_class_set(tiny_clip):
    method = tiny(tiny_clip)
    first = method.frozen_text_features()
    method.train()
    method.eval()
    assert method.frozen_text_features() is first  # mode switches keep the frozen features
    method.set_classnames(CLASSNAMES[:3])
    assert method.frozen_text_features().shape[0] == 3


def test_bad_options_are_config_errors():
    from jobs.config import resolve
    for key, value, message in (("decoder_depth", 4, "method.decoder_depth"), ("lambda_rec_text", -1, "non-negative"),
                                ("rec_loss", "huber", "method.rec_loss"), ("rec_at_inference", True,
                                                                           "method.rec_at_inference"),
                                ("cross_modal", True, "unknown key")):
        with pytest.raises(ConfigError, match=message):
            resolve({"method": {"name": "rmadapter", key: value}, "dataset": "oxford_pets"}, "test")
    with pytest.raises(ConfigError, match="decoder_input: shared needs shared_layer"):
        resolve({"method": {"name": "rmadapter", "decoder_input": "shared", "shared_layer": False},
                 "dataset": "oxford_pets"}, "test")


def test_recipe_is_mma_and_no_official_checkpoints(tiny_clip):
    assert RMAdapter.recipe("base2novel", "dtd", 16, RMAdapterConfig()) == MMA.recipe("base2novel", "dtd", 16,
                                                                                       MMAConfig())
    with pytest.raises(NotImplementedError, match="no official code"):
        tiny(tiny_clip).load_official_state_dict({})


GRIDS = Path(__file__).resolve().parent.parent / "grids"


def test_ablation_grid_rungs_are_the_presets():
    """``grids/ablations.yaml`` spells out the design ladder with exactly the options of :data:`PRESETS`, and its
    RMAdapter part resolves to 12 distinct configurations x 11 datasets x 3 seeds with MMA's recipe."""
    from jobs.grid import load_grid
    from protocols.datasets import COOP_DATASETS
    data = yaml.safe_load((GRIDS / "ablations.yaml").read_text())
    rungs = [{k.removeprefix("method."): v for k, v in variant.items() if k != "method"}
             for variant in data["variants"] if variant.get("method") == "rmadapter"]
    for name, options in PRESETS.items():
        assert options in rungs, name
    runs = [r for r in load_grid(GRIDS / "ablations.yaml").runs if r.config["method"]["name"] == "rmadapter"]
    configs = {json.dumps(r.config["method"], sort_keys=True) for r in runs}
    assert len(configs) == 12 and len(runs) == 12 * len(COOP_DATASETS) * 3
    assert all(r.config["optim"]["lr"] == 0.0015 and r.config["optim"]["epochs"] == 5 for r in runs)


def test_base2novel_grid_has_mma_and_rmadapter_with_their_recipe():
    from jobs.grid import load_grid
    from protocols.datasets import COOP_DATASETS
    runs = [r for r in load_grid(GRIDS / "base2novel.yaml").runs if r.config["method"]["name"] in ("mma", "rmadapter")]
    assert len(runs) == 2 * len(COOP_DATASETS) * 3
    for run in runs:
        optim = run.config["optim"]
        assert (optim["lr"], optim["epochs"]) == (0.0015, 5)
        assert optim["batch_size"] == (128 if run.config["dataset"] == "imagenet" else 16)
        assert run.config["method"]["layers"] is None  # blocks 5-12 (adapters.mma.BASE_LAYERS)


# -- end to end ------------------------------------------------------------------------------------------------------
def test_two_training_steps_and_eval_end_to_end(data_root, tmp_path):
    from jobs.config import resolve
    raw = base_run(data_root, tmp_path / "results", method={"name": "rmadapter", "layers": [1, 2],
                                                            "bottleneck_dim": 8},
                   optim={"epochs": 1, "iterations": 2, "batch_size": 4})
    resolved = resolve(raw, "test")
    assert resolved.optim.lr == 0.0015 and resolved.config["method"]["lambda_con_text"] == 25.0
    record = execute_resolved(resolved)
    assert record["status"] == "done" and record["history"][-1]["iterations"] == 2
    assert set(record["metrics"]) == {"base", "novel"}
    assert set(record["aux_losses"]) == set(AUX_TERMS)
    assert all(value > 0 for value in record["aux_losses"].values())
    assert record["cost"]["trainable_params"] == tiny_params()


def tiny_params() -> int:
    """Trainable parameters of the default RMAdapter on the tiny CLIP (r 8, 2 blocks, widths 32 / 64)."""
    mma = sum(2 * (2 * d * 8 + d + 8) for d in (32, 64)) + 2 * (8 * 8 + 8)
    decoders = sum(2 * ((8 * 8 + 8) + (8 * d + d)) for d in (32, 64))
    return mma + decoders
