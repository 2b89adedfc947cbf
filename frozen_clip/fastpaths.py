"""The run's exact speed switches, and the deterministic augmentation that makes feature caching exact.

**Switches** (:class:`FastPaths`, the run config's ``fast:`` section). Each one is exact: it changes where and how
often work is done, never what is computed (up to fp32 reduction order; every one is pinned by a test comparing it
with the slow path to 1e-5). Hence the section is not part of the run id (like ``num_workers``), and every switch is
on by default except ``compile``, which is off because graph compilation reorders floating-point operations and
costs minutes of compile time on short runs. Three exceptions, off by default, change the training data and are part
of the run id when set (:func:`inexact_fast_settings`): ``augment_views`` (epochs cycle through a fixed number of
augmented views instead of drawing a fresh one each epoch, as Tip-Adapter's cache does; Tip-Adapter-F's epochs then
cycle through its cache's views), ``device_augment`` (views resized on the device by torch instead of PIL,
:mod:`frozen_clip.device_augment`) and ``shared_views`` (views drawn per image instead of per split, below).

Method-side fast paths are fields of each method's config, because whether they are exact depends on the method:
``truncate_text`` (text cut to the longest prompt: HeBA, MMA, CoOp, CoCoOp, MaPLe; CLIP-LoRA always truncates),
HeBA's and MMA's ``text_buckets`` (prompts grouped by length, each group cut to its own longest) and
``share_text_prefix`` (the positions all prompts share run once), and CoOp's ``shared_prefix``
(:mod:`frozen_clip.shared_prefix`).

**Augmentation seeded per item** (:class:`SeededViews`). The ``v``-th augmented view of training item ``i`` is drawn
with the CPU generator seeded to ``derive_seed("view", key, v, i)``, with ``key`` the split manifest's content hash
(which includes the split seed), inside a forked RNG. A view is therefore a pure function of (manifest, view, item):
independent of the batch order, the batch size, the number of loader workers and of what else consumed random
numbers. The trainer draws view ``epoch - 1`` in epoch ``epoch``, so the features of a head-only method's epoch can
be computed once, cached, and reused by every run on the same manifest, transform and backbone
(:class:`FeatureViews`), and a run that trains on those cached features sees exactly the images the slow path sees.
Official Dassl loaders draw crops from a process-global stream instead; the distribution of crops is the same.

**Views shared across splits** (``fast.shared_views``, not exact). The seed of view ``v`` of an item is
:func:`image_view_seed` of (:func:`image_key` of its image, ``v``) instead: a view is a function of the image, the
same in every split that holds it, so one feature pass serves every run of a grid (shots, seeds, methods,
hyper-parameters) and a run encodes only the images no earlier run encoded (:class:`frozen_clip.features.RowStore`,
filled from :class:`ViewsOfImages`). Each run still sees a random crop distribution independent of its labels; what
changes is that runs which share an image share its crops: seed replicates of a small pool are more alike than
under the official code (which draws every run's crops afresh), and comparisons across shots, methods or
hyper-parameters see common crops (common random numbers). How much it saves depends on how much the splits
overlap: splits of a small training pool share most of their images, 16-shot splits of ImageNet almost none.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Sequence

import numpy as np
import torch
from torch.utils.data import Dataset

# the switches themselves live in a torch-free module; re-exported here, where their machinery is
from frozen_clip.fastconfig import (INEXACT_FAST_FIELDS, FastPaths, inexact_fast_defaults, inexact_fast_settings,
                                    supports_feature_training)
from frozen_clip.device_augment import loader_transform
from frozen_clip.imagecache import eval_dataset, train_dataset
from frozen_clip.images import open_image
from frozen_clip.seeding import drawn_under, image_view_seed, view_seed


# -- what the switches mean for the images a loader reads (the runner's questions that need torchvision) -----------

def train_loader_transform(fast: FastPaths, spec: Any) -> Callable[[Any], Any]:
    """The loader's part of the training transform ``spec`` (the rest runs on the device: ``fast.device_normalize``,
    ``fast.device_augment``; :func:`frozen_clip.device_augment.loader_transform`)."""
    return loader_transform(spec, fast.device_normalize, fast.device_augment)


def train_images(fast: FastPaths, cache: Any, dataset: str, items: Sequence[Any], image_root: Path,
                 spec: Any) -> Dataset:
    """Training images of ``items`` under ``spec`` as the loader reads them (through the decoded-image ``cache``
    if given; :func:`frozen_clip.imagecache.train_dataset`)."""
    return train_dataset(cache, dataset, items, image_root, spec, fast.device_normalize, fast.device_augment)


def eval_images(fast: FastPaths, cache: Any, dataset: str, items: Sequence[Any], image_root: Path,
                spec: Any) -> Dataset:
    """Evaluation images of ``items`` under the test transform ``spec`` as the loader reads them (through the
    resized-image ``cache`` if given; :func:`frozen_clip.imagecache.eval_dataset`)."""
    return eval_dataset(cache, dataset, items, image_root, spec, fast.device_normalize)


def image_key(dataset: str, path: str) -> str:
    """What identifies an image across splits (``fast.shared_views``): its dataset and its path in the dataset."""
    return f"{dataset}:{path}"


def image_keys(dataset: str, items: Sequence[Any]) -> list[str]:
    """The :func:`image_key` of each item (anything with a ``path``; ``fast.shared_views``)."""
    return [image_key(dataset, item.path) for item in items]


class SeededViews(Dataset):
    """``dataset[i]`` drawn under a seed of (key, view, i): deterministic augmented views (module docstring).

    Args:
        dataset: returns ``(image, label, index)`` and draws its augmentation from the torch CPU generator.
        key: identifies the split (the manifest's content hash).
        images: with ``fast.shared_views``, the :func:`image_key` of each item: view ``v`` of item ``i`` is then
            drawn under :func:`image_view_seed` of (``images[i]``, ``v``), whatever split holds the image.
    """

    def __init__(self, dataset: Dataset, key: str, images: Sequence[str] | None = None) -> None:
        if images is not None and len(images) != len(dataset):  # type: ignore[arg-type]
            raise ValueError(f"{len(images)} image keys for {len(dataset)} items")  # type: ignore[arg-type]
        self.dataset = dataset
        self.key = key
        self.images = images
        self.view = 0

    def set_view(self, view: int) -> None:
        """Select the augmented view that ``__getitem__`` returns (the trainer uses ``epoch - 1``)."""
        self.view = int(view)

    def __len__(self) -> int:
        return len(self.dataset)  # type: ignore[arg-type]

    def __getitem__(self, index: int) -> Any:
        return drawn_under(self.seed(index), lambda: self.dataset[index])

    def seed(self, index: int) -> int:
        """The seed item ``index`` of the current view is drawn under."""
        if self.images is not None:
            return image_view_seed(self.images[index], self.view)
        return view_seed(self.key, self.view, index)


class ViewsOfImages(Dataset):
    """Views ``views`` of each item, image-major: entry ``k`` is view ``views[k % V]`` of item ``k // V`` (``V`` the
    number of views), drawn under :func:`image_view_seed` of the item's image key, as :class:`SeededViews` with
    ``images`` draws it. Consecutive entries share the item, so each image is decoded once for all its views (read
    in order, as the runner's sequential encoding does); what ``fast.shared_views`` fills its row store with.

    Args:
        items: the images (``path`` relative to ``image_root``, ``label``).
        transform: the loader's training transform (``frozen_clip.device_augment.loader_transform``).
        images: the :func:`image_key` of each item.
        views: the view indices to draw for every item.
    """

    def __init__(self, items: Sequence[Any], image_root: Path, transform: Callable[[Any], Any],
                 images: Sequence[str], views: Sequence[int]) -> None:
        if len(images) != len(items):
            raise ValueError(f"{len(images)} image keys for {len(items)} items")
        self.items, self.image_root, self.transform = list(items), Path(image_root), transform
        self.images, self.views = list(images), list(views)
        self._decoded: tuple[int, Any] | None = None  # (item, its decoded image): the last one read

    def __len__(self) -> int:
        return len(self.items) * len(self.views)

    def __getitem__(self, index: int) -> tuple[Any, int, int]:
        item, which = divmod(index, len(self.views))
        image = self._image(item)
        view = drawn_under(image_view_seed(self.images[item], self.views[which]), lambda: self.transform(image))
        return view, self.items[item].label, index

    def _image(self, item: int) -> Any:
        if self._decoded is None or self._decoded[0] != item:
            image = open_image(self.image_root / self.items[item].path)
            if getattr(self.transform, "takes_arrays", False):  # device_augment's crop reads the array (no copy)
                image = np.asarray(image)
            self._decoded = (item, image)
        return self._decoded[1]


class FeatureRows(Dataset):
    """Rows of cached features as ``(feature, label, index)``: the shape of an image dataset, without images."""

    def __init__(self, features: torch.Tensor, labels: torch.Tensor) -> None:
        if features.shape[0] != labels.shape[0]:
            raise ValueError(f"{features.shape[0]} feature rows but {labels.shape[0]} labels")
        self.features = features
        self.labels = labels

    def __len__(self) -> int:
        return int(self.features.shape[0])

    def __getitem__(self, index: int | list[int]) -> tuple[torch.Tensor, Any, Any]:
        """Row ``index``, or a whole batch for a list of indices (what the default collation would stack from the
        rows one by one: features ``[B, E]``, int64 labels and indices), read with one indexing operation."""
        if isinstance(index, list):
            rows = torch.tensor(index, dtype=torch.long)
            return self.features[rows], self.labels[rows].long(), rows
        return self.features[index], int(self.labels[index]), index


@dataclass(frozen=True)
class FeatureViews:
    """Where a head-only method's training features come from: ``view(v) -> (features [N, E], labels [N])``.

    ``view(v)`` must return the image features of exactly the images :class:`SeededViews` yields for view ``v``
    (the runner's :meth:`frozen_clip.features.FeatureAccess.augmented_features` with the training transform).
    ``prefetch(views)``, if given, is told once before training which views the fit will read, so that they can be
    encoded together (:meth:`frozen_clip.features.FeatureAccess.prefetch_views`).
    """

    view: Callable[[int], tuple[torch.Tensor, torch.Tensor]]
    prefetch: Callable[[list[int]], None] | None = None


__all__ = ["FastPaths", "INEXACT_FAST_FIELDS", "inexact_fast_defaults", "inexact_fast_settings",
           "supports_feature_training", "train_loader_transform", "train_images", "eval_images",
           "image_key", "image_keys", "SeededViews", "ViewsOfImages", "FeatureRows", "FeatureViews"]
