"""The frozen backbone wrapper: loading and naming rules, taps, the token-embedding text path, exact truncation."""

from __future__ import annotations

import pytest
import torch
from open_clip.transformer import QuickGELU

from frozen_clip.backbone import load_backbone, resolve_backbone
from frozen_clip.errors import ConfigError
from frozen_clip.taps import Taps

PROMPTS = ["a photo of a cat.", "a photo of a great pyrenees, a type of pet.", "x", "itap of a keeshond."]


def test_everything_frozen_and_eval(tiny_clip):
    assert all(not p.requires_grad for p in tiny_clip.model.parameters())
    tiny_clip.train()
    assert not tiny_clip.model.training


def test_untapped_paths_equal_open_clip(tiny_clip):
    images = torch.randn(3, 3, 32, 32)
    taps = Taps().add("attn_in", "visual", [0, 1], lambda a, site: a)
    assert torch.equal(tiny_clip.encode_image(images, taps), tiny_clip.model.encode_image(images))
    ids = tiny_clip.tokenize(PROMPTS)
    emb = tiny_clip.token_embedding(ids)
    assert torch.equal(tiny_clip.encode_text_embeddings(emb, ids), tiny_clip.model.encode_text(ids))
    assert torch.equal(tiny_clip.encode_text(ids, truncate=False), tiny_clip.model.encode_text(ids))


def test_truncation_exact_with_sliced_causal_mask(tiny_clip):
    ids = tiny_clip.tokenize(PROMPTS)
    length = tiny_clip.context_needed(ids)
    assert length == int((ids == ids.max()).nonzero()[:, 1].max()) + 1 < 77
    full = tiny_clip.model.encode_text(ids)
    torch.testing.assert_close(tiny_clip.encode_text(ids), full, atol=1e-5, rtol=1e-5)
    with pytest.raises(ValueError):
        tiny_clip.truncate(ids, length - 1)


def test_taps_run_at_named_points(tiny_clip):
    images = torch.randn(2, 3, 32, 32)
    seen = []

    def record(x, site, *extra):
        seen.append((site.tower, site.layer, tuple(x.shape), site.grid_size))
        return x
    taps = Taps()
    for point in ("attn_in", "mlp_hidden", "block_out", "block_in"):
        taps.add(point, "visual", [0, 1], record)
    taps.add("tower_in", "visual", -1, record)
    tiny_clip.encode_image(images, taps)
    assert ("visual", 0, (2, 17, 256), (4, 4)) in seen  # MLP hidden is 4D wide; 16 patches + CLS
    assert ("visual", -1, (2, 17, 64), (4, 4)) in seen
    assert len(seen) == 9
    shift = Taps().add("mlp_hidden", "text", 1, lambda h, site: h + 0.5)
    ids = tiny_clip.tokenize(PROMPTS)
    assert not torch.allclose(tiny_clip.encode_text(ids, shift), tiny_clip.encode_text(ids))


def test_block_out_sees_block_input(tiny_clip):
    images = torch.randn(2, 3, 32, 32)
    taps = Taps().add("block_out", "visual", 1, lambda y, site, x: x)  # skip block 1 entirely
    skip = tiny_clip.encode_image(images, taps)
    assert not torch.allclose(skip, tiny_clip.encode_image(images))


@pytest.mark.parametrize("name,tag,expected", [
    ("ViT-B/16", "openai", "ViT-B-16-quickgelu"),
    ("ViT-B-16", "openai", "ViT-B-16-quickgelu"),
    ("ViT-B-16-quickgelu", "openai", "ViT-B-16-quickgelu"),
    ("ViT-B-16", "laion2b_s34b_b88k", "ViT-B-16"),
    ("ViT-B-32", None, "ViT-B-32"),
])
def test_backbone_names(name, tag, expected):
    assert resolve_backbone(name, tag).name == expected


@pytest.mark.parametrize("name,tag,message", [
    ("ViT-B-16-quickgelu", "laion2b_s34b_b88k", "trained with GELU"),
    ("ViT-B-61", "openai", "did you mean"),
    ("ViT-B-16", "no-such-tag", "unknown pretrained tag"),
    ("tests/fixtures/clip_tiny", "nope", "available"),
])
def test_backbone_errors(name, tag, message):
    with pytest.raises(ConfigError, match=message):
        resolve_backbone(name, tag)


def test_openai_tag_builds_quickgelu_model():
    # no weights can be downloaded: build the architecture the openai tag resolves to, with random weights
    source = resolve_backbone("ViT-B/16", "openai")
    clip = load_backbone(source.name, None)
    activations = {type(m) for m in clip.model.modules() if type(m).__name__ in ("QuickGELU", "GELU")}
    assert activations == {QuickGELU}
    assert clip.image_size == 224 and tuple(clip.visual.grid_size) == (14, 14)


def test_missing_openai_weights_fail_clearly(monkeypatch, tmp_path):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_HOME", str(tmp_path))
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path))
    with pytest.raises(ConfigError, match="could not load pretrained"):
        load_backbone("RN50", "openai")


def test_model_config_json_backbone(tmp_path):
    import json
    cfg = {"embed_dim": 16, "vision_cfg": {"image_size": 32, "layers": 1, "width": 32, "patch_size": 16,
                                           "head_width": 32},
           "text_cfg": {"context_length": 77, "vocab_size": 49408, "width": 16, "heads": 1, "layers": 1}}
    path = tmp_path / "micro.json"
    path.write_text(json.dumps(cfg))
    a, b = load_backbone(str(path), None), load_backbone(str(path), None)
    assert a.embed_dim == 16 and a.image_size == 32
    assert torch.equal(a.model.visual.conv1.weight, b.model.visual.conv1.weight)  # random init is seeded
    assert a.tokenizer is b.tokenizer  # built once per process (the BPE tables take ~70 ms), shared by every load
    assert torch.equal(a.tokenize(["a photo of a dog."]), b.tokenize(["a photo of a dog."]))
