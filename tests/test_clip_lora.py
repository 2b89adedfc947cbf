"""CLIP-LoRA: equal to the frozen CLIP at initialisation (fp32, 1e-6), equal to the official eval-time merge
``W += s B A`` with trained (non-zero) factors, dropout in training only, the trainable count on ViT-B/16 shapes,
the recipe, and two training steps end to end on the fake data."""

from __future__ import annotations

import copy

import pytest
import torch

from baselines.clip_lora import CLIPLoRA, CLIPLoRAConfig
from frozen_clip.errors import ConfigError
from frozen_clip.method import MethodContext, normalize
from tests.conftest import base_run, execute_resolved

CLASSNAMES = ["great_pyrenees", "Abyssinian", "american bulldog", "sphynx"]
INIT_TOL = dict(atol=1e-6, rtol=1e-6)


def context(shots: int = 4) -> MethodContext:
    return MethodContext(dataset="oxford_pets", template="a photo of a {}, a type of pet.", protocol="fewshot",
                         shots=shots, seed=1, epochs=0)


def images(n: int = 3) -> torch.Tensor:
    return torch.randn(n, 3, 32, 32, generator=torch.Generator().manual_seed(0))


def frozen_features(clip, method: CLIPLoRA, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    with torch.no_grad():
        return normalize(clip.encode_image(x)), normalize(clip.encode_text(method.tokenized_prompts))


def test_equals_frozen_clip_at_init(tiny_clip):
    method = CLIPLoRA(tiny_clip, CLASSNAMES, CLIPLoRAConfig(), context())
    x = images()
    image, text = frozen_features(tiny_clip, method, x)
    for mode in (False, True):  # B = 0: dropout on the LoRA input changes nothing either
        method.train(mode)
        with torch.no_grad():
            torch.testing.assert_close(method.image_features(x), image, **INIT_TOL)
            torch.testing.assert_close(method.text_features(), text, **INIT_TOL)
            torch.testing.assert_close(method(x), 100 * image @ text.t(), atol=1e-4, rtol=1e-6)  # 100 x cosine


def merged_copy(clip, method: CLIPLoRA):
    """The official eval mode: ``W += s B A`` merged into a copy of the frozen weights."""
    merged = copy.deepcopy(clip)
    s = method.config.scale
    for tower, layers in method.lora.items():
        blocks = merged.text.transformer.resblocks if tower == "text" else merged.visual.transformer.resblocks
        for index, lora in layers.items():
            attn = blocks[int(index)].attn
            width = attn.embed_dim
            with torch.no_grad():
                for slot, name in enumerate("qkv"):
                    if name in lora.deltas:
                        delta = lora.deltas[name]
                        attn.in_proj_weight[slot * width:(slot + 1) * width] += s * delta.lora_B @ delta.lora_A
                if "o" in lora.deltas:
                    attn.out_proj.weight += s * lora.deltas["o"].lora_B @ lora.deltas["o"].lora_A
    return merged


@pytest.mark.parametrize("options", [{}, {"params": ["q", "v", "o"], "scaling": "standard", "r": 3},
                                     {"encoder": "vision", "layers": [1]}, {"encoder": "text"}])
def test_trained_factors_equal_the_official_merge(tiny_clip, options):
    method = CLIPLoRA(tiny_clip, CLASSNAMES, CLIPLoRAConfig(**options), context())
    gen = torch.Generator().manual_seed(1)
    with torch.no_grad():
        for name, p in method.named_parameters():
            if name.endswith("lora_B"):
                p.copy_(0.3 * torch.randn(p.shape, generator=gen))
    method.eval()
    x = images()
    image, text = frozen_features(merged_copy(tiny_clip, method), method, x)
    plain_image, plain_text = frozen_features(tiny_clip, method, x)
    with torch.no_grad():
        torch.testing.assert_close(method.image_features(x), image, atol=1e-5, rtol=1e-5)
        torch.testing.assert_close(method.text_features(), text, atol=1e-5, rtol=1e-5)
    if "visual" in method.lora:  # the update is visible, so the comparison above is not vacuous
        assert (method.image_features(x) - plain_image).abs().max() > 1e-3
    if "text" in method.lora:
        assert (method.text_features() - plain_text).abs().max() > 1e-3


def test_dropout_in_training_only(tiny_clip):
    method = CLIPLoRA(tiny_clip, CLASSNAMES, CLIPLoRAConfig(), context())
    with torch.no_grad():
        for name, p in method.named_parameters():
            if name.endswith("lora_B"):
                p.fill_(0.2)
    x = images()
    method.eval()
    evaluated = method(x).detach()
    torch.testing.assert_close(method(x).detach(), evaluated, atol=0, rtol=0)
    method.train()
    assert not torch.allclose(method(x).detach(), evaluated, atol=1e-4)
    no_dropout = CLIPLoRA(tiny_clip, CLASSNAMES, CLIPLoRAConfig(dropout_rate=0.0), context())
    no_dropout.load_state_dict(method.state_dict())
    no_dropout.train()
    torch.testing.assert_close(no_dropout(x).detach(), evaluated, atol=1e-5, rtol=1e-5)


def test_trainable_count_on_vit_b16_shapes():
    from frozen_clip.backbone import load_backbone
    clip = load_backbone("ViT-B-16", None)  # random weights, no forward
    method = CLIPLoRA(clip, ["cat", "dog"], CLIPLoRAConfig(), context(16))
    counts = {tower: sum(p.numel() for p in layers.parameters()) for tower, layers in method.lora.items()}
    assert counts == {"text": 73_728, "visual": 110_592}  # 12 blocks x 3 matrices x 2 r d, d = 512 / 768
    assert method.num_trainable() == 184_320
    assert CLIPLoRA(clip, ["cat"], CLIPLoRAConfig(position="up", encoder="vision"),
                    context(16)).num_trainable() == 4 * 3 * 2 * 2 * 768


def test_official_state_dict_names(tiny_clip):
    source = CLIPLoRA(tiny_clip, CLASSNAMES, CLIPLoRAConfig(params=("q", "k", "v", "o")), context())
    official = {}
    names = {"q": "q_proj", "k": "k_proj", "v": "v_proj", "o": "proj"}
    for key, value in source.state_dict().items():
        _, tower, index, _, proj, factor = key.split(".")
        prefix = "visual." if tower == "visual" else ""
        official[f"{prefix}transformer.resblocks.{index}.attn.{names[proj]}.w_{factor}"] = value + 1
    target = CLIPLoRA(tiny_clip, CLASSNAMES, CLIPLoRAConfig(params=("q", "k", "v", "o")), context())
    target.load_official_state_dict(official)
    for key, value in source.state_dict().items():
        torch.testing.assert_close(target.state_dict()[key], value + 1)
    with pytest.raises(RuntimeError):  # strict: a missing tensor fails
        target.load_official_state_dict(dict(list(official.items())[1:]))


def test_bad_layers_name_the_key(tiny_clip):
    with pytest.raises(ConfigError, match="method.position='up'.*2 blocks"):
        CLIPLoRA(tiny_clip, CLASSNAMES, CLIPLoRAConfig(position="up"), context())


def test_recipe(data_root, tmp_path):
    from jobs.config import resolve
    cfg = base_run(data_root, tmp_path, method="clip_lora", protocol="fewshot", shots=8)
    del cfg["optim"]
    optim = resolve(cfg, "t").optim
    assert (optim.name, optim.lr, optim.weight_decay, optim.betas, optim.scheduler, optim.eta_min,
            optim.iterations, optim.batch_size) == ("adamw", 2e-4, 1e-2, (0.9, 0.999), "cosine_iter", 1e-6, 4000, 32)
    assert optim.last_batch == "keep"  # the official loader keeps the last partial batch (datasets/utils.py)


def test_two_steps_end_to_end(data_root, tmp_path):
    from jobs.config import resolve
    cfg = base_run(data_root, tmp_path / "res", method="clip_lora", optim={"iterations": 2, "batch_size": 6})
    resolved = resolve(cfg, "test")
    from jobs.runfolder import run_dir
    record = execute_resolved(resolved)
    assert record["history"][-1]["iterations"] == 2
    assert set(record["summary"]) == {"base", "novel", "hm"}
    assert record["cost"]["trainable_params"] == 2 * 3 * 2 * 2 * (32 + 64)  # 2 blocks, q/k/v, r = 2, both towers
    state = torch.load(run_dir(resolved) / "checkpoints" / "last.pt", weights_only=False)["method"]
    assert any(v.abs().max() > 0 for k, v in state.items() if k.endswith("lora_B"))  # B left zero: it trained


def test_attn_tap_replaces_attention_once_per_site(tiny_clip):
    from frozen_clip.taps import Taps
    calls = []

    def zero_attention(a, site, attn, mask):
        calls.append((site.tower, site.layer, mask is None))
        return torch.zeros_like(a)
    taps = Taps().add("attn", "visual", 1, zero_attention).add("attn", "text", 0, zero_attention)
    x = images(2)
    with torch.no_grad():
        assert not torch.allclose(tiny_clip.encode_image(x, taps), tiny_clip.encode_image(x), atol=1e-3)
        tiny_clip.encode_text(tiny_clip.tokenize(["a photo of a cat."]), taps)
    assert calls == [("visual", 1, True), ("text", 0, False)]  # the text tower passes its causal mask
    with pytest.raises(ValueError, match="at most one"):
        taps.add("attn", "visual", 1, zero_attention)


def test_template_is_the_official_one_on_every_dataset_unless_asked(tiny_clip):
    """The official code encodes "a photo of a {}." for every dataset; ``template: dataset`` takes the dataset's."""
    official = CLIPLoRA(tiny_clip, ["Abyssinian"], CLIPLoRAConfig(), context())
    expected = tiny_clip.truncate(tiny_clip.tokenize(["a photo of a Abyssinian."]))
    assert torch.equal(official.tokenized_prompts, expected)
    per_dataset = CLIPLoRA(tiny_clip, ["Abyssinian"], CLIPLoRAConfig(template="dataset"), context())
    assert torch.equal(per_dataset.tokenized_prompts,
                       tiny_clip.truncate(tiny_clip.tokenize(["a photo of a Abyssinian, a type of pet."])))
    with pytest.raises(ValueError, match="template must hold"):
        CLIPLoRAConfig(template="a photo").validate()

