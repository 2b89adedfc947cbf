"""Training views: the PIL transform in the loader against normalising on the device (exact) and against the
crop-in-the-loader, resize-on-the-device path.

All paths read the same decoded images (the image cache's uint8 arrays of the grid's photo-like JPEGs), draw the
same views (:class:`~frozen_clip.fastpaths.SeededViews`, a new view each repeat), batch them through a
``DataLoader`` (32 per batch, no workers: the work is timed where it happens) and end with the float batch on the
device. PIL: ``RandomResizedCrop`` + flip + ``ToTensor`` + ``Normalize`` per image (the official loaders'
transform). Normalise: ``fast.device_normalize`` (the PIL crop and flip in the loader, ``ToTensor`` + ``Normalize``
on the uint8 batch on the device; the same tensors, checked). Device: ``fast.device_augment`` (the crop in the
loader, the resize and normalisation on the device; :mod:`frozen_clip.device_augment`). Timed side by side (each
repeat in turn forward and reversed), at the ViT-B/16 input size and at the tiny model's, with the pixel difference
between the PIL and the device-augmented batches in levels of 255.
"""

from __future__ import annotations

import tempfile
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch.utils.data import DataLoader

from bench.common import Interleaved
from bench.grid import write_dataset
from frozen_clip.backbone import CLIP_MEAN, CLIP_STD
from frozen_clip.device_augment import collate, loader_transform, to_device
from frozen_clip.fastpaths import SeededViews
from frozen_clip.imagecache import CachedImageDataset
from frozen_clip.images import open_image
from frozen_clip.transforms import train_spec
from protocols.datasets import Item

MEAN, STD = CLIP_MEAN, CLIP_STD
BATCH = 32


@dataclass
class AugmentResult:
    """One output size: seconds per pass over the images on each path, and their pixel difference."""

    size: int
    images: int
    image_px: int
    grain: float
    seconds_pil: float
    seconds_device: float
    mean_levels: float  # mean |PIL - device| over the first pass's pixels, in levels of 255
    max_levels: float
    device: str
    seconds_normalize: float  # fast.device_normalize (the PIL crop, ToTensor + Normalize on the device)
    normalize_equal: bool  # its batches equal the PIL path's (torch.equal over the first pass)

    @property
    def speedup(self) -> float:
        return self.seconds_pil / self.seconds_device

    def as_dict(self) -> dict[str, Any]:
        return {**asdict(self), "speedup": self.speedup, "speedup_normalize": self.seconds_pil / self.seconds_normalize,
                "images_per_s_pil": self.images / self.seconds_pil,
                "images_per_s_device": self.images / self.seconds_device,
                "images_per_s_normalize": self.images / self.seconds_normalize}


def decoded_images(n_images: int, image_px: int, grain: float, folder: Path) -> tuple[list[Item], list[np.ndarray]]:
    """``n_images`` of the grid's generated JPEGs (10 classes), decoded as the image cache holds them."""
    root = write_dataset(folder, 10, (-(-n_images // 10), 0, 0), image_px, grain=grain)
    base = root / "caltech-101" / "101_ObjectCategories"
    files = sorted(base.glob("*/*.jpg"))[:n_images]
    items = [Item(str(path.relative_to(base)), i % 10, f"class_{i % 10:03d}") for i, path in enumerate(files)]
    return items, [np.array(open_image(path), dtype=np.uint8) for path in files]


def _views(items: list[Item], arrays: list[np.ndarray], size: int, path: str) -> SeededViews:
    """The views on ``path``: ``pil``, ``normalize`` (fast.device_normalize) or ``device`` (fast.device_augment)."""
    transform = loader_transform(train_spec(size, MEAN, STD), path == "normalize", path == "device")
    return SeededViews(CachedImageDataset(items, ".", transform, arrays), "bench")


def _pass(views: SeededViews, device: torch.device, view: int) -> list[torch.Tensor]:
    """One pass over the views: every batch finished as the trainer finishes it."""
    views.set_view(view)
    loader = DataLoader(views, batch_size=BATCH, shuffle=False, collate_fn=collate)
    return [to_device(images, device) for images, _labels, _index in loader]


def bench_augment(size: int, device: torch.device, n_images: int = 256, image_px: int = 400, grain: float = 20.0,
                  repeats: int = 6) -> AugmentResult:
    """Time one pass over ``n_images`` views at output ``size`` on each path (module docstring)."""
    with tempfile.TemporaryDirectory(prefix="bench-augment-") as folder:
        items, arrays = decoded_images(n_images, image_px, grain, Path(folder))
    paths = {path: _views(items, arrays, size, path) for path in ("pil", "normalize", "device")}
    first = {path: torch.cat(_pass(views, device, 0)).cpu() for path, views in paths.items()}
    levels = (first["pil"] - first["device"]).abs() * torch.tensor(STD).view(1, 3, 1, 1) * 255
    passes = {path: 0 for path in paths}

    def timed_pass(path: str) -> None:
        passes[path] += 1
        _pass(paths[path], device, passes[path])  # every path draws the same view in its n-th pass
    clock = Interleaved()
    clock.run({path: (lambda path=path: timed_pass(path)) for path in paths}, repeats, device)
    return AugmentResult(size, len(items), image_px, grain, clock.median("pil"), clock.median("device"),
                         float(levels.mean()), float(levels.max()), str(device), clock.median("normalize"),
                         torch.equal(first["pil"], first["normalize"]))
