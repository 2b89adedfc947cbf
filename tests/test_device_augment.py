"""Device augmentation (``fast.device_augment``) against the PIL training transform it stands in for.

It is not exact (torch's resize is close to PIL's, not equal), so what is pinned is: the very same crop boxes, flips
and random-stream use as the PIL transform, pixels close to the PIL transform's (bounds below), a run id of its own,
and, within a device-augmented run, the cached-feature path equal to the image path (both finish the same crops the
same way).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from torch.utils.data import default_collate
from torchvision import transforms as T

from frozen_clip.backbone import CLIP_MEAN, CLIP_STD
from frozen_clip.device_augment import AugmentedCrop, CropAndFlip, CropBatch, collate, to_device
from frozen_clip.errors import ConfigError
from frozen_clip.fastpaths import SeededViews
from frozen_clip.imagecache import ImageCache, train_dataset
from frozen_clip import transforms
from frozen_clip.transforms import train_spec
from jobs.config import resolve
from protocols.splits import build_manifest
from tests.conftest import base_run, execute_resolved

MEAN, STD = CLIP_MEAN, CLIP_STD


def photo(seed: int, height: int = 300, width: int = 400) -> np.ndarray:
    """A photo-like RGB uint8 image: smooth structure plus pixel grain (flat images would hide resize errors)."""
    rng = np.random.default_rng(seed)
    coarse = rng.integers(0, 256, (height // 8 + 2, width // 8 + 2, 3)).astype(np.float32)
    smooth = np.asarray(Image.fromarray(coarse.astype(np.uint8)).resize((width, height), Image.BILINEAR), np.float32)
    return np.clip(smooth + rng.normal(0, 20, smooth.shape), 0, 255).astype(np.uint8)


def execute(cfg: dict) -> dict:
    return execute_resolved(resolve(cfg, "test"))


@pytest.mark.parametrize("size", [224, 32])
def test_crops_and_flips_are_the_pil_transforms_own_draws(size):
    spec = train_spec(size, MEAN, STD)
    image = photo(0)
    pil_crop = T.RandomResizedCrop(size, scale=spec.rrc_scale)
    flips = []
    for seed in range(40):
        torch.manual_seed(seed)
        spec.build()(Image.fromarray(image))  # the PIL transform, for the state it leaves the generator in
        after_pil = torch.get_rng_state()
        torch.manual_seed(seed)
        top, left, height, width = pil_crop.get_params(Image.fromarray(image), pil_crop.scale, pil_crop.ratio)
        flip = bool(torch.rand(1) < 0.5)
        torch.manual_seed(seed)
        view = CropAndFlip(spec)(Image.fromarray(image) if seed % 2 else image)  # files give PIL, the cache arrays
        assert torch.equal(torch.get_rng_state(), after_pil)  # same draws, same number of them
        assert torch.equal(view.pixels, torch.from_numpy(image[top:top + height, left:left + width].copy()))
        assert view.flip == flip
        flips.append(flip)
    assert 0 < sum(flips) < len(flips)


@pytest.mark.parametrize("size", [224, 32])
def test_finished_batch_is_close_to_the_pil_transform(size):
    spec = train_spec(size, MEAN, STD)
    rows, reference = [], []
    for seed in range(48):
        image = photo(seed % 3)
        torch.manual_seed(seed)
        reference.append(spec.build()(Image.fromarray(image)))
        torch.manual_seed(seed)
        rows.append((CropAndFlip(spec)(image), seed % 5, seed))
    crops, labels, indices = collate(rows)
    assert isinstance(crops, CropBatch) and len(crops) == 48
    assert torch.equal(labels, torch.arange(48) % 5) and torch.equal(indices, torch.arange(48))
    finished = to_device(crops, torch.device("cpu"))
    assert finished.shape == (48, 3, size, size) and finished.dtype == torch.float32
    levels = (finished - torch.stack(reference)).abs() * torch.tensor(STD).view(1, 3, 1, 1) * 255
    # measured over 200 views: at 224 px 0.05 levels off on average (0.3 at worst per image), 0.006 % of pixels more
    # than 2 off, at most 8; at 32 px at most 1. A wrong box or a missed flip would be tens of levels off.
    per_image = levels.mean(dim=(1, 2, 3))
    assert per_image.max() < 0.5 and levels.mean() < 0.15
    assert (levels > 2.001).float().mean() < 1e-3 and levels.max() <= 12
    if size == 32:
        assert levels.max() <= 1 + 1e-3


def test_collate_leaves_tensor_batches_to_default_collate():
    rows = [(torch.full((3, 4, 4), float(i)), i, i) for i in range(3)]
    ours, default = collate(rows), default_collate(rows)
    assert all(torch.equal(a, b) for a, b in zip(ours, default, strict=True))
    assert to_device(ours[0], torch.device("cpu")) is ours[0]
    with pytest.raises(ValueError, match="training transform"):
        CropAndFlip(transforms.test_spec(32, MEAN, STD))
    with pytest.raises(ValueError, match="RGB uint8"):
        CropAndFlip(train_spec(32, MEAN, STD))(np.zeros((8, 8), np.uint8))


def test_cached_and_file_images_give_the_same_crops(data_root, tmp_path):
    manifest = build_manifest("oxford_pets", data_root, 4, 1, "all", "dassl", data_root.parent / "cache")
    spec = train_spec(32, MEAN, STD)
    root = Path(manifest.image_root)
    files = SeededViews(train_dataset(None, "oxford_pets", manifest.train, root, spec, device_augment=True), "k")
    cached = SeededViews(train_dataset(ImageCache(tmp_path), "oxford_pets", manifest.train, root, spec,
                                       device_augment=True), "k")
    for view in (0, 3):
        files.set_view(view), cached.set_view(view)
        for i in range(len(files)):
            a, b = files[i][0], cached[i][0]
            assert isinstance(a, AugmentedCrop) and torch.equal(a.pixels, b.pixels) and a.flip == b.flip


def test_device_augment_is_hashed_and_its_feature_path_equals_its_image_path(data_root, tmp_path):
    common = dict(method="clip_adapter", protocol="fewshot", shots=2, optim={"epochs": 3, "batch_size": 8})
    on = {"device_augment": True}
    plain_id = resolve(base_run(data_root, tmp_path, **common), "t").run_id
    assert resolve(base_run(data_root, tmp_path, fast=on, **common), "t").run_id != plain_id  # other pixels
    assert resolve(base_run(data_root, tmp_path, fast={"device_augment": False}, **common), "t").run_id == plain_id
    with pytest.raises(ConfigError, match="fast.device_augment"):
        resolve(base_run(data_root, tmp_path, fast={"device_augment": "yes"}, **common), "t")
    plain = execute(base_run(data_root, tmp_path / "fast", **common))
    fast = execute(base_run(data_root, tmp_path / "fast", fast=on, **common))
    assert plain["cost"]["view_cache"]["misses"] == 3
    assert fast["cost"]["view_cache"] == {"hits": 0, "misses": 3}  # its views are not the PIL path's cached ones
    assert fast["cost"]["trained_on_cached_features"]
    # the image path: no feature cache, no image cache (crops from the files), a loader worker process
    slow = execute(base_run(data_root, tmp_path / "slow", fast={**on, "feature_training": False, "image_cache": False},
                            num_workers=1, **common))
    assert not slow["cost"]["trained_on_cached_features"]
    for a, b in zip(slow["history"], fast["history"], strict=True):
        assert abs(a["loss"] - b["loss"]) < 1e-5
    assert slow["summary"]["accuracy"] == fast["summary"]["accuracy"]
