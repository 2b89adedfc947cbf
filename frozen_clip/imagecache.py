"""Decoded images kept as uint8 on disk, so JPEG decoding (and the evaluation resize) is paid once per split.

Two kinds of entry, both keyed by (dataset, the split's items, kind) and shared by every run and method:

* ``decoded``: every image of a split at full resolution, RGB uint8, exactly as
  :func:`~frozen_clip.images.open_image` returns it. Any transform applied to ``Image.fromarray`` of an entry
  gives the same tensor as applied to the file (training augmentation included), so the cache is exact for every
  transform. Used for training splits, which are read once per epoch. Splits larger than ``max_decoded_mb`` are not
  cached (full-resolution ImageNet would not fit); building such an entry stops as soon as the limit is passed.
* ``resized``: the evaluation transform's deterministic head, ``Resize(size, bicubic)`` + ``CenterCrop(size)``,
  applied once; the stored uint8 crops go through the remaining ``ToTensor`` + ``Normalize`` when read (the same
  torchvision code, or its arithmetic on the device with ``fast.device_normalize``). Exact for that transform, 150
  KB per image at 224 px, read through a memory map. Used for the test images of methods evaluated on images
  (feature-cached evaluation reads each image once and needs none).

Entries are written atomically under a file lock (two runs starting together decode once). Hits and misses are
counted for the run record.
"""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path
from typing import Any, Callable, Sequence

import numpy as np
import torch
from filelock import FileLock
from PIL import Image
from torchvision import transforms as T

from frozen_clip import atomic
from frozen_clip.device_augment import ToPixels, loader_transform
from frozen_clip.images import ImageItem, ImageListDataset, open_image
from frozen_clip.stamps import files_signature
from frozen_clip.transforms import TransformSpec

DEFAULT_MAX_DECODED_MB = 4096.0  # full-resolution entries above this size are not written (decode per epoch)


def items_hash(items: Sequence[ImageItem]) -> str:
    """16 hex chars of sha256 over the items' relative paths and labels, in order."""
    payload = json.dumps([[item.path, item.label] for item in items], separators=(",", ":"))
    return hashlib.sha256(payload.encode()).hexdigest()[:16]


def eval_head(spec: TransformSpec) -> T.Compose:
    """The deterministic geometric part of an evaluation transform (what a ``resized`` entry stores)."""
    return T.Compose(spec.head())


def eval_tail(spec: TransformSpec) -> T.Compose:
    """What follows :func:`eval_head` in the evaluation transform: ``ToTensor`` + ``Normalize``."""
    return T.Compose([T.ToTensor(), T.Normalize(spec.mean, spec.std)])


class ImageCache:
    """uint8 image entries under ``root`` (module docstring)."""

    def __init__(self, root: Path, max_decoded_mb: float = DEFAULT_MAX_DECODED_MB) -> None:
        self.root = Path(root)
        self.max_decoded_mb = max_decoded_mb
        self.hits = 0
        self.misses = 0
        # the last full-resolution entry read, kept between epochs: a run reads its training split once per epoch,
        # and unpickling the entry each time cost as much as the epoch's crops on small images
        self._decoded_memo: tuple[str, list[np.ndarray]] | None = None

    def _key(self, parts: dict[str, Any]) -> str:
        return hashlib.sha256(json.dumps(parts, sort_keys=True).encode()).hexdigest()[:24]

    def _get_or_build(self, parts: dict[str, Any], suffix: str, build: Callable[[Path], bool],
                      load: Callable[[Path], Any]) -> Any | None:
        path = self.root / f"{self._key(parts)}{suffix}"
        too_large = path.with_suffix(".too-large")  # remembered, so later runs do not decode up to the limit again
        found = atomic.load_or_quarantine(path, "image cache entry", load)
        if found is not None:
            self.hits += 1
            return found
        if too_large.is_file():
            return None
        self.root.mkdir(parents=True, exist_ok=True)
        with FileLock(str(path) + ".lock"):
            found = atomic.load_or_quarantine(path, "image cache entry", load)
            if found is not None:
                self.hits += 1
                return found
            self.misses += 1
            if not build(path):
                atomic.write_json(too_large, parts)
                return None
            atomic.write_json(path.with_suffix(".json"), parts)
        return load(path)

    # -- full resolution ----------------------------------------------------------------------------------------------
    def decoded(self, dataset: str, items: Sequence[ImageItem], image_root: Path) -> list[np.ndarray] | None:
        """Full-resolution RGB uint8 arrays ``[H, W, 3]`` of ``items``; None if the split is over the size limit."""
        parts = {"kind": "decoded", "dataset": dataset, "items": items_hash(items), "n": len(items),
                 "files": files_signature(image_root, items)}  # rewritten images make another entry
        key = self._key(parts)
        if self._decoded_memo is not None and self._decoded_memo[0] == key:
            self.hits += 1
            return self._decoded_memo[1]
        self._decoded_memo = None  # released before another entry is read: at most one entry held in memory

        def build(path: Path) -> bool:
            arrays, total = [], 0
            for item in items:
                arrays.append(np.array(open_image(Path(image_root) / item.path), dtype=np.uint8))
                total += arrays[-1].nbytes
                if total > self.max_decoded_mb * 2 ** 20:
                    return False
            atomic.torch_save(path, [torch.from_numpy(a) for a in arrays])
            return True

        def load(path: Path) -> list[np.ndarray]:
            return [t.numpy() for t in torch.load(path, weights_only=True)]
        arrays = self._get_or_build(parts, ".pt", build, load)
        if arrays is not None:
            self._decoded_memo = (key, arrays)
        return arrays

    # -- evaluation crops -----------------------------------------------------------------------------------------
    def resized(self, dataset: str, items: Sequence[ImageItem], image_root: Path, spec: TransformSpec) -> np.ndarray:
        """``[N, size, size, 3]`` uint8 crops of ``items`` after :func:`eval_head` (memory-mapped)."""
        parts = {"kind": "resized", "dataset": dataset, "items": items_hash(items), "n": len(items),
                 "transform": spec.signature(), "files": files_signature(image_root, items)}
        head = eval_head(spec)

        def build(path: Path) -> bool:
            out = np.zeros((len(items), spec.size, spec.size, 3), dtype=np.uint8)
            for i, item in enumerate(items):
                out[i] = np.asarray(head(open_image(Path(image_root) / item.path)), dtype=np.uint8)
            tmp = path.with_name(path.name + f".tmp{os.getpid()}.npy")
            np.save(tmp, out)
            os.replace(tmp, path)
            return True
        return self._get_or_build(parts, ".npy", build, lambda path: np.load(path, mmap_mode="r"))


class CachedImageDataset(ImageListDataset):
    """An :class:`ImageListDataset` whose images come from uint8 arrays instead of files.

    ``arrays[i]`` is item ``i``'s image (``[H, W, 3]`` uint8); ``transform`` is applied to ``Image.fromarray`` of it,
    i.e. the training transform for ``decoded`` entries and :func:`eval_tail` for ``resized`` ones, or to the array
    itself if the transform says it ``takes_arrays`` (:mod:`frozen_clip.device_augment`'s ``ToPixels`` for
    ``resized`` entries and ``CropAndFlip``: no PIL copy of the image).
    """

    def __init__(self, items: Sequence[ImageItem], image_root: str | Path, transform: Callable[[Image.Image], Any],
                 arrays: Sequence[np.ndarray] | np.ndarray) -> None:
        super().__init__(items, image_root, transform)
        if len(arrays) != len(self.items):
            raise ValueError(f"{len(arrays)} cached images for {len(self.items)} items")
        self.arrays = arrays

    def __getitem__(self, index: int) -> tuple[Any, int, int]:
        array = np.asarray(self.arrays[index])
        image = array if getattr(self.transform, "takes_arrays", False) else Image.fromarray(array)  # [H, W, 3] RGB
        return self.transform(image), self.items[index].label, index


def train_dataset(cache: ImageCache | None, dataset: str, items: Sequence[ImageItem], image_root: Path,
                  spec: TransformSpec, device_normalize: bool = False, device_augment: bool = False
                  ) -> ImageListDataset:
    """The training images of ``items`` under ``spec``: from the ``decoded`` cache when possible. With
    ``device_normalize`` the batch is converted and normalised on the device (exact); with ``device_augment`` the
    loader only crops, and the device does the rest (:mod:`frozen_clip.device_augment`)."""
    transform = loader_transform(spec, device_normalize, device_augment)
    arrays = None if cache is None else cache.decoded(dataset, items, image_root)
    if arrays is None:
        return ImageListDataset(items, image_root, transform)
    return CachedImageDataset(items, image_root, transform, arrays)


def eval_dataset(cache: ImageCache | None, dataset: str, items: Sequence[ImageItem], image_root: Path,
                 spec: TransformSpec, device_normalize: bool = False) -> ImageListDataset:
    """The evaluation images of ``items`` under ``spec`` (a test transform): from the ``resized`` cache if given.
    With ``device_normalize`` the batch is converted and normalised on the device (exact)."""
    if cache is None:
        return ImageListDataset(items, image_root, loader_transform(spec, device_normalize))
    tail = ToPixels(spec) if device_normalize else eval_tail(spec)
    return CachedImageDataset(items, image_root, tail, cache.resized(dataset, items, image_root, spec))
