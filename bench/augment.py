"""Training views: the PIL transform in the loader against the crop-in-the-loader, resize-on-the-device path.

Both paths read the same decoded images (the image cache's uint8 arrays of the grid's photo-like JPEGs), draw the
same views (:class:`~frozen_clip.fastpaths.SeededViews`, a new view each repeat), batch them through a
``DataLoader`` (32 per batch, no workers: the work is timed where it happens) and end with the float batch on the
device. PIL: ``RandomResizedCrop`` + flip + ``ToTensor`` + ``Normalize`` per image (the official loaders'
transform). Device: :mod:`frozen_clip.device_augment` (``fast.device_augment``; the crop in the loader, the resize
and normalisation on the device). Timed side by side (ABBA), at the ViT-B/16 input size and at the tiny model's,
with the pixel difference between the two paths' batches in levels of 255.
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
from frozen_clip.device_augment import collate, to_device, training_transform
from frozen_clip.fastpaths import SeededViews
from frozen_clip.imagecache import CachedImageDataset
from frozen_clip.transforms import train_spec
from protocols.datasets import Item
from protocols.imagefolder import open_image

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

    @property
    def speedup(self) -> float:
        return self.seconds_pil / self.seconds_device

    def as_dict(self) -> dict[str, Any]:
        return {**asdict(self), "speedup": self.speedup,
                "images_per_s_pil": self.images / self.seconds_pil,
                "images_per_s_device": self.images / self.seconds_device}


def decoded_images(n_images: int, image_px: int, grain: float, folder: Path) -> tuple[list[Item], list[np.ndarray]]:
    """``n_images`` of the grid's generated JPEGs (10 classes), decoded as the image cache holds them."""
    root = write_dataset(folder, 10, (-(-n_images // 10), 0, 0), image_px, grain=grain)
    base = root / "caltech-101" / "101_ObjectCategories"
    files = sorted(base.glob("*/*.jpg"))[:n_images]
    items = [Item(str(path.relative_to(base)), i % 10, f"class_{i % 10:03d}") for i, path in enumerate(files)]
    return items, [np.array(open_image(path), dtype=np.uint8) for path in files]


def _views(items: list[Item], arrays: list[np.ndarray], size: int, on_device: bool) -> SeededViews:
    spec = train_spec(size, MEAN, STD)
    return SeededViews(CachedImageDataset(items, ".", training_transform(spec, on_device), arrays), "bench")


def _pass(views: SeededViews, device: torch.device, view: int) -> list[torch.Tensor]:
    """One pass over the views: every batch finished as the trainer finishes it."""
    views.set_view(view)
    loader = DataLoader(views, batch_size=BATCH, shuffle=False, collate_fn=collate)
    return [to_device(images, device) for images, _labels, _index in loader]


def bench_augment(size: int, device: torch.device, n_images: int = 256, image_px: int = 400, grain: float = 20.0,
                  repeats: int = 6) -> AugmentResult:
    """Time one pass over ``n_images`` views at output ``size`` on both paths (module docstring)."""
    with tempfile.TemporaryDirectory(prefix="bench-augment-") as folder:
        items, arrays = decoded_images(n_images, image_px, grain, Path(folder))
    pil, dev = _views(items, arrays, size, False), _views(items, arrays, size, True)
    first = [torch.cat(_pass(p, device, 0)).cpu() for p in (pil, dev)]
    levels = (first[0] - first[1]).abs() * torch.tensor(STD).view(1, 3, 1, 1) * 255
    counter = {"view": 1}

    def timed_pass(views: SeededViews) -> None:
        _pass(views, device, counter["view"] // 2)  # both paths draw the same view in a repeat (ABBA pairs)
        counter["view"] += 1
    clock = Interleaved()
    clock.run({"pil": lambda: timed_pass(pil), "device": lambda: timed_pass(dev)}, repeats, device)
    return AugmentResult(size, len(items), image_px, grain, clock.median("pil"), clock.median("device"),
                         float(levels.mean()), float(levels.max()), str(device))
