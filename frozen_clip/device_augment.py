"""Training augmentation finished on the run's device (``fast.device_augment``, off by default).

The protocol's training transform (:mod:`frozen_clip.transforms`) runs in the loader as PIL operations:
``RandomResizedCrop`` (crop box, then an antialiased bicubic resize), ``RandomHorizontalFlip``, ``ToTensor``,
``Normalize``. With this switch the loader only draws the random parts and cuts the crop:

* :class:`CropAndFlip` draws the crop box and the flip coin with the very torchvision calls the PIL transform makes
  (``RandomResizedCrop.get_params`` with the transform's scale and ratio, then ``torch.rand(1) < 0.5``), so under
  :class:`~frozen_clip.fastpaths.SeededViews`' per-item seeds every view has the same box and flip as on the PIL
  path, and the generator ends in the same state. It returns the uint8 crop (:class:`AugmentedCrop`).
* :func:`collate` keeps a batch's crops as a list (:class:`CropBatch`; they differ in size);
* :func:`to_device` moves the crops to the device, resizes each one there (torchvision's tensor kernel, bicubic with
  antialias, the PIL filter's coefficients), flips it, and converts and normalises the batch as ``ToTensor`` +
  ``Normalize`` do.

The decode (or the image cache's copy) and the crop stay in the loader; the resize, the most expensive part of the
PIL transform, moves to the device, where it costs little next to the forward pass and leaves the loader's cores to
the next batch. On CPU it runs in the main process with torch's kernel, which is also faster than PIL's (``bench``).

**Not exact.** torch's resize is close to PIL's, not equal. Measured against the PIL transform on photo-like
400x300 images (smooth structure plus pixel grain), 200 random views, in levels of 255: at 224 px, uint8 kernel
(CPU) 0.05 off per pixel on average, crops just larger than the output up to 0.3, and 0.006 % of pixels more than 2
off (at most 8 here, 9 in the bench's batches); float kernel (what CUDA runs, rounded back to uint8) 0.2 on
average, at most 7. At 32 px from 400 px images: at most 1 level. Hence off by default and part of the run id when
set (:data:`frozen_clip.fastpaths.INEXACT_FAST_FIELDS`); pinned by a test: the same boxes, flips and random draws
as the PIL transform, and pixels within those bounds.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Sequence

import numpy as np
import torch
from PIL import Image
from torch.utils.data import default_collate
from torchvision import transforms as T
from torchvision.transforms.v2 import functional as F

from frozen_clip.transforms import TransformSpec


@dataclass(frozen=True)
class AugmentedCrop:
    """One view before the device's part: the uint8 crop ``[h, w, 3]`` (HWC, as decoded) and whether to flip."""

    pixels: torch.Tensor
    flip: bool
    spec: TransformSpec


class CropAndFlip:
    """The loader's part of the training transform ``spec``: image -> :class:`AugmentedCrop` (module docstring).

    Takes a PIL image (files) or a ``[H, W, 3]`` uint8 array (the decoded-image cache, no PIL copy: ``takes_arrays``).
    """

    takes_arrays = True

    def __init__(self, spec: TransformSpec) -> None:
        if spec.kind != "train":
            raise ValueError(f"device augmentation is a training transform, got a {spec.kind!r} spec")
        self.spec = spec
        # the PIL path's own transform object: its scale and ratio, and its get_params, are what is drawn
        self._crop = T.RandomResizedCrop(spec.size, scale=spec.rrc_scale, interpolation=T.InterpolationMode.BICUBIC)

    def __call__(self, image: Image.Image | np.ndarray) -> AugmentedCrop:
        array = np.asarray(image)
        if array.ndim != 3 or array.shape[2] != 3 or array.dtype != np.uint8:
            raise ValueError(f"expected an RGB uint8 image [H, W, 3], got {array.dtype} {array.shape}")
        top, left, height, width = self._crop.get_params(_shaped_like(array), self._crop.scale, self._crop.ratio)
        flip = bool(torch.rand(1) < 0.5)  # RandomHorizontalFlip(p=0.5)'s draw
        pixels = torch.from_numpy(np.array(array[top:top + height, left:left + width]))  # a copy: writable, compact
        return AugmentedCrop(pixels, flip, self.spec)


def _shaped_like(array: np.ndarray) -> torch.Tensor:
    """A tensor of ``array``'s ``[C, H, W]`` shape and no storage to speak of: ``get_params`` reads only the shape
    (and ``torch.from_numpy`` of a read-only array, what PIL gives, would warn)."""
    return torch.empty(1, 1, 1, dtype=torch.uint8).expand(array.shape[2], array.shape[0], array.shape[1])


@dataclass(frozen=True)
class CropBatch:
    """A batch of :class:`AugmentedCrop` (crops differ in size, so they stay a list until resized)."""

    pixels: list[torch.Tensor]
    flips: list[bool]
    spec: TransformSpec

    def __len__(self) -> int:
        return len(self.pixels)

    def pin_memory(self) -> "CropBatch":
        """Pinned copies, for the loader's ``pin_memory`` (it calls this method on objects it does not know)."""
        return CropBatch([p.pin_memory() for p in self.pixels], self.flips, self.spec)

    def finish(self, device: torch.device) -> torch.Tensor:
        """The batch ``[B, 3, size, size]`` float32 on ``device``: resize, flip, ``ToTensor`` and ``Normalize``."""
        size = self.spec.size
        out = torch.empty(len(self), 3, size, size, dtype=torch.uint8, device=device)
        for row, (pixels, flip) in enumerate(zip(self.pixels, self.flips)):
            chw = pixels.to(device, non_blocking=True).permute(2, 0, 1)
            resized = F.resize(chw, [size, size], interpolation=T.InterpolationMode.BICUBIC, antialias=True)
            out[row] = resized.flip(-1) if flip else resized  # the PIL path flips after resizing too
        mean = torch.tensor(self.spec.mean, device=device).view(1, 3, 1, 1)
        std = torch.tensor(self.spec.std, device=device).view(1, 3, 1, 1)
        return out.float().div_(255).sub_(mean).div_(std)  # ToTensor, then Normalize's sub_/div_


def collate(batch: Sequence[Any]) -> Any:
    """The loaders' collation: rows of :class:`AugmentedCrop` become a :class:`CropBatch` (labels and indices
    collated as usual); anything else goes to ``default_collate``."""
    if batch and isinstance(batch[0], (tuple, list)) and isinstance(batch[0][0], AugmentedCrop):
        crops = [row[0] for row in batch]
        rest = default_collate([tuple(row[1:]) for row in batch])
        return (CropBatch([c.pixels for c in crops], [c.flip for c in crops], crops[0].spec), *rest)
    return default_collate(batch)


def to_device(inputs: torch.Tensor | CropBatch, device: torch.device) -> torch.Tensor:
    """A loader batch's images on ``device``: tensors moved, crop batches finished there."""
    if isinstance(inputs, CropBatch):
        return inputs.finish(device)
    return inputs.to(device)


def training_transform(spec: TransformSpec, on_device: bool) -> Any:
    """The loader's transform for training views: the full PIL pipeline, or only its random part."""
    return CropAndFlip(spec) if on_device else spec.build()
