"""Normalisation on the device (``fast.device_normalize``, on by default) against torchvision's per-image
``ToTensor`` + ``Normalize``: the same tensors, bit for bit (CPU), for training views and evaluation crops, from
files and from the image cache, and the same run.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from torch.utils.data import DataLoader

from frozen_clip.backbone import CLIP_MEAN, CLIP_STD
from frozen_clip.device_augment import PixelBatch, Pixels, ToPixels, collate, loader_transform, to_device
from frozen_clip.fastpaths import SeededViews
from frozen_clip.imagecache import ImageCache, eval_dataset, train_dataset
from frozen_clip import transforms
from frozen_clip.transforms import train_spec
from jobs.config import resolve
from protocols.splits import build_manifest
from tests.conftest import base_run, execute_resolved
from tests.test_device_augment import photo

MEAN, STD = CLIP_MEAN, CLIP_STD


def batches(dataset) -> torch.Tensor:
    """Every image of ``dataset`` as the runner's loaders hand it to the model (collated, finished on the CPU)."""
    loader = DataLoader(dataset, batch_size=5, shuffle=False, collate_fn=collate)
    return torch.cat([to_device(images, torch.device("cpu")) for images, _labels, _index in loader])


@pytest.mark.parametrize("kind", ["train", "test"])
@pytest.mark.parametrize("size", [224, 32])
def test_pixels_finished_on_the_device_are_the_torchvision_tensors(kind, size):
    spec = (train_spec if kind == "train" else transforms.test_spec)(size, MEAN, STD)
    reference, rows = [], []
    for seed in range(12):
        image = Image.fromarray(photo(seed))
        torch.manual_seed(seed)
        reference.append(spec.build()(image))
        state = torch.get_rng_state()
        torch.manual_seed(seed)
        rows.append((loader_transform(spec, normalize_on_device=True)(image), seed, seed))
        assert torch.equal(torch.get_rng_state(), state)  # the same random draws (the crop and flip of a view)
    assert isinstance(rows[0][0], Pixels) and rows[0][0].pixels.dtype == torch.uint8 and rows[0][0].pixels.shape[2] == 3
    batch, labels, _ = collate(rows)
    assert isinstance(batch, PixelBatch) and len(batch) == 12 and labels.tolist() == list(range(12))
    assert torch.equal(to_device(batch, torch.device("cpu")), torch.stack(reference))


def test_to_pixels_takes_arrays_and_rejects_other_images():
    spec = transforms.test_spec(32, MEAN, STD)
    array = photo(1, 32, 32)
    array.flags.writeable = False  # as the image cache's memory-mapped crops are
    assert torch.equal(ToPixels(spec)(array).pixels, ToPixels(spec)(Image.fromarray(array)).pixels)
    for bad in (Image.fromarray(array).convert("L"), array.astype(np.float32)):
        with pytest.raises(ValueError, match=r"RGB uint8 image \[H, W, 3\]"):
            ToPixels(spec)(bad)


def test_cached_and_file_images_give_the_torchvision_tensors(data_root, tmp_path):
    manifest = build_manifest("oxford_pets", data_root, 4, 1, "all", "dassl", data_root.parent / "cache")
    root, cache = Path(manifest.image_root), ImageCache(tmp_path / "images")
    test = transforms.test_spec(32, MEAN, STD)
    reference = batches(eval_dataset(None, "oxford_pets", manifest.test, root, test))
    for images in (None, cache, cache):  # files; the cache's first pass (built); its second (read back, memory-mapped)
        assert torch.equal(batches(eval_dataset(images, "oxford_pets", manifest.test, root, test, True)), reference)
    train = train_spec(32, MEAN, STD)
    plain = SeededViews(train_dataset(None, "oxford_pets", manifest.train, root, train), "k")
    for images in (None, cache):
        on_device = SeededViews(train_dataset(images, "oxford_pets", manifest.train, root, train, True), "k")
        for view in (0, 2):
            plain.set_view(view), on_device.set_view(view)
            assert torch.equal(batches(on_device), batches(plain))


def test_a_run_is_the_same_with_and_without_it(data_root, tmp_path):
    """HeBA trains and is evaluated on images (the trainer's loader and ``predict``); its record is the same either
    way (on: batches collated in a loader worker process), and the switch is not part of the run id."""
    common = dict(method="heba", optim={"epochs": 2, "iterations": 2, "batch_size": 4})
    on = resolve(base_run(data_root, tmp_path / "on", num_workers=1, **common), "test")
    off = resolve(base_run(data_root, tmp_path / "off", fast={"device_normalize": False}, **common), "test")
    assert on.run_id == off.run_id
    records = [execute_resolved(resolved) for resolved in (on, off)]
    assert [e["loss"] for e in records[0]["history"]] == [e["loss"] for e in records[1]["history"]]
    assert records[0]["metrics"] == records[1]["metrics"]
