"""Loader batches finished on the run's device: ``fast.device_normalize`` (exact, on by default) and
``fast.device_augment`` (training augmentation, not exact, off by default).

**Normalisation on the device** (``device_normalize``). The loader runs the PIL part of a transform
(:meth:`~frozen_clip.transforms.TransformSpec.head`) and hands over the uint8 image (:class:`ToPixels`, a
:class:`Pixels` row); :func:`collate` stacks a batch (:class:`PixelBatch`) and :func:`to_device` applies ``ToTensor``'s
conversion and ``Normalize`` to the batch on the device: ``float()``, ``/ 255``, ``- mean``, ``/ std``, the same
operations on the same values as torchvision's per-image code, so the same tensors (``torch.equal``, tested). The
loader does less per image, a batch crosses to a GPU as uint8 (a quarter of the bytes), and on CPU the batched
arithmetic is cheaper than per image (``bench``). The divisor 255 is a tensor on the device: CUDA divides by a
Python number as a multiplication by its reciprocal, which can be one bit off the division (not measured: no GPU
in CI; the exactness tests run on CPU).

**Augmentation on the device** (``device_augment``). The protocol's training transform
(:mod:`frozen_clip.transforms`) runs in the loader as PIL operations: ``RandomResizedCrop`` (crop box, then an
antialiased bicubic resize), ``RandomHorizontalFlip``, ``ToTensor``, ``Normalize``. With this switch the loader only
draws the random parts and cuts the crop:

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


def _rgb_array(image: Image.Image | np.ndarray) -> np.ndarray:
    """``image`` as an ``[H, W, 3]`` uint8 array (no copy where possible); anything else is an error."""
    array = np.asarray(image)
    if array.ndim != 3 or array.shape[2] != 3 or array.dtype != np.uint8:
        raise ValueError(f"expected an RGB uint8 image [H, W, 3], got {array.dtype} {array.shape}")
    return array


def _normalized(pixels: torch.Tensor, spec: TransformSpec) -> torch.Tensor:
    """``ToTensor``'s conversion, then ``Normalize``, on a uint8 batch ``[B, 3, H, W]`` where it lies: float32 in
    ``[0, 1]``, then ``(x - mean) / std`` per channel, as torchvision computes them per image."""
    device = pixels.device
    mean = torch.tensor(spec.mean, device=device).view(1, 3, 1, 1)
    std = torch.tensor(spec.std, device=device).view(1, 3, 1, 1)
    scale = torch.tensor(255.0, device=device)  # a tensor: CUDA would multiply by 1/255 for a Python number
    return pixels.float().div_(scale).sub_(mean).div_(std)


@dataclass(frozen=True)
class Pixels:
    """One image after the PIL part of its transform: uint8 ``[H, W, 3]`` (as decoded), what ``ToTensor`` would
    convert."""

    pixels: torch.Tensor
    spec: TransformSpec


class ToPixels:
    """The loader's last step when ``ToTensor`` + ``Normalize`` run on the device: image -> :class:`Pixels`.

    Takes a PIL image or an ``[H, W, 3]`` uint8 array (the image cache's evaluation crops: no PIL copy)."""

    takes_arrays = True

    def __init__(self, spec: TransformSpec) -> None:
        self.spec = spec

    def __call__(self, image: Image.Image | np.ndarray) -> Pixels:
        return Pixels(torch.from_numpy(np.array(_rgb_array(image))), self.spec)  # a copy: writable (cache maps are not)


@dataclass(frozen=True)
class PixelBatch:
    """A batch of :class:`Pixels`: uint8 ``[B, H, W, 3]``, made channels-first and normalised on the device by
    :meth:`finish`."""

    pixels: torch.Tensor
    spec: TransformSpec

    def __len__(self) -> int:
        return int(self.pixels.shape[0])

    def pin_memory(self) -> "PixelBatch":
        """A pinned copy, for the loader's ``pin_memory`` (it calls this method on objects it does not know)."""
        return PixelBatch(self.pixels.pin_memory(), self.spec)

    def finish(self, device: torch.device) -> torch.Tensor:
        """The batch ``[B, 3, H, W]`` float32 on ``device``, equal to the torchvision transform's."""
        chw = self.pixels.to(device, non_blocking=True).permute(0, 3, 1, 2).contiguous()  # as ToTensor lays it out
        return _normalized(chw, self.spec)


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
        array = _rgb_array(image)
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
        return _normalized(out, self.spec)


def collate(batch: Sequence[Any]) -> Any:
    """The loaders' collation: rows of :class:`Pixels` become a :class:`PixelBatch`, rows of
    :class:`AugmentedCrop` a :class:`CropBatch` (labels and indices collated as usual); anything else goes to
    ``default_collate``."""
    first = batch[0][0] if batch and isinstance(batch[0], (tuple, list)) else None
    if not isinstance(first, (Pixels, AugmentedCrop)):
        return default_collate(batch)
    rest = default_collate([tuple(row[1:]) for row in batch])
    if isinstance(first, Pixels):
        return (PixelBatch(torch.stack([row[0].pixels for row in batch]), first.spec), *rest)
    return (CropBatch([row[0].pixels for row in batch], [row[0].flip for row in batch], first.spec), *rest)


def to_device(inputs: torch.Tensor | PixelBatch | CropBatch, device: torch.device) -> torch.Tensor:
    """A loader batch's images on ``device``: tensors moved, pixel and crop batches finished there."""
    if isinstance(inputs, (PixelBatch, CropBatch)):
        return inputs.finish(device)
    return inputs.to(device)


def loader_transform(spec: TransformSpec, normalize_on_device: bool = False, augment_on_device: bool = False) -> Any:
    """What the loader applies to each image under ``spec``: the whole torchvision pipeline; or, with
    ``normalize_on_device``, its PIL part ending in :class:`ToPixels` (exact); or, with ``augment_on_device`` (a
    training spec), only the crop box and flip (:class:`CropAndFlip`, not exact; normalised on the device too)."""
    if augment_on_device:
        return CropAndFlip(spec)
    if normalize_on_device:
        return T.Compose([*spec.head(), ToPixels(spec)])
    return spec.build()
