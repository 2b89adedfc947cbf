"""MaPLe against an independent re-statement of the official forward (``VisionTransformer_MaPLe`` and the MaPLe
block loop, written here with open_clip's own block ``forward`` and no taps), the coupling of the prompts, the
trainable count at depth 9 on ViT-B/16 shapes, the recipes per protocol, and two training steps end to end."""

from __future__ import annotations

import pytest
import torch

from baselines.maple import MaPLe, MaPLeConfig
from frozen_clip.errors import ConfigError
from frozen_clip.method import MethodContext, normalize
from tests.conftest import base_run, execute_resolved, golden_grad_tol

CLASSNAMES = ["great_pyrenees", "Abyssinian", "american bulldog", "sphynx", "yorkshire_terrier"]


def context(protocol: str = "base2novel") -> MethodContext:
    return MethodContext(dataset="oxford_pets", template="a photo of a {}, a type of pet.", protocol=protocol,
                         shots=4, seed=1, epochs=5)


def perturbed(tiny_clip, **options) -> MaPLe:
    """A MaPLe whose every parameter is moved off its init (the deep projections no longer identical)."""
    torch.manual_seed(0)
    method = MaPLe(tiny_clip, CLASSNAMES, MaPLeConfig(**options), context())
    gen = torch.Generator().manual_seed(3)
    with torch.no_grad():
        for p in method.parameters():
            p.add_(0.2 * torch.randn(p.shape, generator=gen))
    return method


def reference_image(clip, method: MaPLe, images: torch.Tensor) -> torch.Tensor:
    """``VisionTransformer_MaPLe.forward`` + the MaPLe blocks, batch-first, with open_clip's block forward."""
    visual = clip.visual
    x = visual.conv1(images).flatten(2).permute(0, 2, 1)
    x = torch.cat([visual.class_embedding.expand(x.shape[0], 1, -1), x], dim=1) + visual.positional_embedding
    x = torch.cat([x, method.proj(method.ctx).expand(x.shape[0], -1, -1)], dim=1)
    x = visual.ln_pre(x)
    deep = [layer(p) for layer, p in zip(method.compound_prompt_projections, method.compound_prompts_text)]
    for i, block in enumerate(visual.transformer.resblocks):
        if 1 <= i <= len(deep):
            x = torch.cat([x[:, :-method.n_ctx], deep[i - 1].expand(x.shape[0], -1, -1)], dim=1)
        x = block(x)
    return visual.ln_post(x[:, 0]) @ visual.proj


def reference_text(clip, method: MaPLe) -> torch.Tensor:
    """``TextEncoder.forward`` with the deep text prompts, on the full 77-token context."""
    from baselines.coop import prompt_tokens
    ids, prefix, suffix, _ = prompt_tokens(clip, method.classnames, "a photo of a", method.n_ctx, truncate=False)
    text = clip.text
    x = torch.cat([prefix, method.ctx.expand(len(ids), -1, -1), suffix], dim=1) + text.positional_embedding
    deep = list(method.compound_prompts_text)
    for i, block in enumerate(text.transformer.resblocks):
        if 1 <= i <= len(deep):
            x = torch.cat([x[:, :1], deep[i - 1].expand(x.shape[0], -1, -1), x[:, 1 + method.n_ctx:]], dim=1)
        x = block(x, attn_mask=text.attn_mask)
    x = text.ln_final(x)
    return x[torch.arange(len(ids)), ids.argmax(dim=-1)] @ text.text_projection


@pytest.mark.parametrize("depth", [1, 2])
def test_matches_the_official_forward(tiny_clip, depth):
    method = perturbed(tiny_clip, prompt_depth=depth, truncate_text=False)
    images = torch.randn(3, 3, 32, 32, generator=torch.Generator().manual_seed(4))
    labels = torch.tensor([0, 4, 2])
    out = method.training_step(images, labels)
    ref_image = normalize(reference_image(tiny_clip, method, images))
    ref_text = normalize(reference_text(tiny_clip, method))
    expected = tiny_clip.logit_scale() * ref_image @ ref_text.t()
    torch.testing.assert_close(out.logits, expected, atol=1e-5, rtol=1e-5)
    plain = tiny_clip.logit_scale() * normalize(tiny_clip.encode_image(images)) @ ref_text.t()
    assert (out.logits - plain).abs().max() > 1e-2  # the image prompts matter
    out.loss.backward()
    ref_loss = torch.nn.functional.cross_entropy(expected, labels)
    grads = torch.autograd.grad(ref_loss, list(method.parameters()))
    for (name, p), g in zip(method.named_parameters(), grads):
        assert p.grad is not None and p.grad.abs().max() > 0, name  # every prompt and projection is wired
        torch.testing.assert_close(p.grad, g, **golden_grad_tol(g), msg=lambda m: f"{name}: {m}")


def test_truncation_is_exact_and_eval_caches_text(tiny_clip):
    full = perturbed(tiny_clip, prompt_depth=2, truncate_text=False).eval()
    short = perturbed(tiny_clip, prompt_depth=2).eval()
    assert short.tokenized_prompts.shape[1] < 77
    with torch.no_grad():
        torch.testing.assert_close(short.text_features(), full.text_features(), atol=1e-6, rtol=1e-6)
        assert short.text_features() is short.text_features()  # cached in eval mode
    short.train()
    assert short._text is None


def test_init_follows_the_official_layout(tiny_clip):
    method = MaPLe(tiny_clip, CLASSNAMES, MaPLeConfig(prompt_depth=2), context())
    words = tiny_clip.token_embedding(tiny_clip.tokenize(["a photo of a"]))[0, 1:3]
    torch.testing.assert_close(method.ctx.detach(), words, atol=0, rtol=0)  # "a photo"
    ids = tiny_clip.tokenize(["a photo of a great pyrenees."])[:, :method.tokenized_prompts.shape[1]]
    assert torch.equal(method.tokenized_prompts[0], ids[0])
    assert len(method.compound_prompt_projections) == 1 and len(method.compound_prompts_text) == 1
    assert abs(float(method.compound_prompts_text[0].detach().std()) - 0.02) < 0.01


def test_trainable_count_at_depth_9_on_vit_b16_shapes():
    from frozen_clip.backbone import load_backbone
    clip = load_backbone("ViT-B-16", None)  # random weights, no forward
    method = MaPLe(clip, ["cat", "dog"], MaPLeConfig(), context("base2novel"))
    assert method.depth == 9
    assert method.num_trainable() == 3_555_072  # 1,024 + 393,984 + 8 x 1,024 + 8 x 393,984
    first = method.compound_prompt_projections[0]
    assert all(torch.equal(first.weight, p.weight) and torch.equal(first.bias, p.bias)
               for p in method.compound_prompt_projections)  # deep copies of one Linear
    assert MaPLe(clip, ["cat"], MaPLeConfig(), context("cross_dataset")).depth == 3


def test_depth_beyond_the_backbone_is_rejected(tiny_clip):
    with pytest.raises(ConfigError, match="method.prompt_depth=9 exceeds the 2 blocks"):
        MaPLe(tiny_clip, CLASSNAMES, MaPLeConfig(), context("base2novel"))


def test_recipes_per_protocol(data_root, tmp_path):
    from jobs.config import resolve
    cases = {"base2novel": ({}, (0.0035, 5)), "cross_dataset": ({"targets": ["caltech101"]}, (0.0026, 2))}
    for protocol, (extra, (lr, epochs)) in cases.items():
        # the tiny CLIP has 2 blocks: the paper's depth (9, or 3 for XD) is refused there, explicitly
        with pytest.raises(ConfigError, match="prompt_depth=(9|3) exceeds the 2 blocks"):
            resolve(base_run(data_root, tmp_path, method="maple", protocol=protocol, **extra), "t")
        cfg = base_run(data_root, tmp_path, method={"name": "maple", "prompt_depth": 2}, protocol=protocol, **extra)
        del cfg["optim"]
        optim = resolve(cfg, "t").optim
        assert (optim.name, optim.lr, optim.epochs, optim.batch_size, optim.warmup_epochs) == ("sgd", lr, epochs, 4, 1)


def test_two_steps_end_to_end(data_root, tmp_path):
    from jobs.config import resolve
    cfg = base_run(data_root, tmp_path / "res", method={"name": "maple", "prompt_depth": 2},
                   optim={"epochs": 1, "batch_size": 6, "warmup_epochs": 0})
    resolved = resolve(cfg, "test")
    record = execute_resolved(resolved)
    assert record["history"][-1]["iterations"] == 2
    assert set(record["summary"]) == {"base", "novel", "hm"}
    assert record["cost"]["trainable_params"] == 2 * 32 + (32 * 64 + 64) + 2 * 32 + (32 * 64 + 64)


@pytest.mark.parametrize("name,protocol", [("b2n", "base2novel"), ("fewshot", "fewshot"), ("xd", "cross_dataset"),
                                           ("dg", "domain_generalization")])
def test_baseline_grids_validate(name, protocol):
    """Every baseline grid loads (each run resolved and checked) and runs each method with its paper recipe."""
    from pathlib import Path

    from jobs.grid import load_grid
    path = Path(__file__).resolve().parent.parent / "grids" / f"baselines_{name}.yaml"
    assert path.read_text().startswith(f"# python jobs/launch.py --grid grids/baselines_{name}.yaml")
    runs = [spec.resolved for spec in load_grid(path).runs]
    assert {r.run.protocol for r in runs} == {protocol}
    methods = {(r.method_name, getattr(r.method_config, "finetune", None)) for r in runs}
    expected = {("cocoop", None), ("clip_lora", None), ("maple", None)}
    if protocol == "fewshot":
        expected |= {("tip_adapter", False), ("tip_adapter", True)}
    assert methods == expected
    for r in runs:
        if r.method_name == "maple":
            cross = protocol in ("cross_dataset", "domain_generalization")
            assert (r.method_config.prompt_depth, r.optim.lr, r.optim.epochs) == ((3, 0.0026, 2) if cross
                                                                                 else (9, 0.0035, 5))
        if r.method_name == "cocoop":
            assert (r.optim.batch_size, r.optim.epochs) == (1, 10)
        if r.method_name == "clip_lora":
            assert r.optim.iterations == 500 * r.run.shots
