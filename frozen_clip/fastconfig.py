"""The run's speed switches (:class:`FastPaths`, the run config's ``fast:`` section) and the questions the runner
asks of them; imports no torch, so resolving a config (``jobs.config``) costs no torch import.

What each switch means, and why the exact ones are left out of the run id, is in :mod:`frozen_clip.fastpaths`, which
holds the machinery behind them (seeded views, cached feature rows) and re-exports these names.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any


@dataclass(frozen=True)
class FastPaths:
    """Speed switches of a run (config section ``fast``): the exact ones are not hashed into the run id."""

    feature_training: bool = True  # head-only methods (frozen image path) train on cached per-view features
    shared_eval_features: bool = True  # eval features keyed by the split's items, shared by every manifest/run
    image_cache: bool = True  # decoded images kept as uint8 (train: full resolution; eval: resized + cropped)
    compile: bool = False  # torch.compile the training step on CUDA (ignored on CPU); reorders fp operations
    # the loader hands over uint8 images; ToTensor's conversion and Normalize run on the batch on the run's device
    # (frozen_clip/device_augment.py: the same float operations, the same tensors; a quarter of the bytes to a GPU)
    device_normalize: bool = True
    # NOT exact, off by default (hashed when set): augmented view v is read as view v mod augment_views, so a run sees
    # at most that many augmented views of each image: epoch e trains on view (e - 1) mod augment_views, and
    # Tip-Adapter-F's epochs cycle through the views of its cache passes. A head-only method then needs only that
    # many feature passes however many epochs it runs (official: a fresh view per epoch). The image path and the
    # cached-feature path still see the same images.
    augment_views: int | None = None
    # NOT exact, off by default (hashed when set): training views are resized on the run's device by torch's kernel
    # instead of PIL's in the loader (frozen_clip/device_augment.py: same crop boxes and flips, pixels 0.05-0.2 of
    # 255 levels off on average). Frees the loader's cores on a GPU; on CPU torch's resize is also the faster one.
    device_augment: bool = False
    # NOT exact, off by default (hashed when set): augmented view v of an image is drawn under a seed of (dataset,
    # image, v) instead of (split, v, item), so it is the same view in every run whose split holds that image, and
    # frozen features of training images (views and plain) are stored per image (frozen_clip.features.RowStore): runs on
    # other shots, seeds or methods encode only the images no earlier run encoded. The price: runs that share an
    # image share its crops (seed replicates too), where the official code draws independent ones per run.
    shared_views: bool = False

    def validate(self) -> None:
        if self.augment_views is not None and self.augment_views < 1:
            raise ValueError(f"augment_views must be null or >= 1, got {self.augment_views}")

    # -- the questions the runner asks (each answer combines the switches in one place) ---------------------------
    def feature_training_for(self, method: Any) -> bool:
        """Whether ``method`` trains on cached features of its training views instead of encoding the images:
        ``feature_training`` is on and the method's step reads the images only through the frozen encoder."""
        return self.feature_training and supports_feature_training(method)

    def compiles_step_on(self, device: Any) -> bool:
        """Whether the training step is wrapped in ``torch.compile`` on ``device`` (CUDA only)."""
        return self.compile and device.type == "cuda"

    def view_of_epoch(self, epoch: int) -> int:
        """The augmented view trained on in ``epoch`` (1-based)."""
        return self.cycled_view(epoch - 1)

    def cycled_view(self, view: int) -> int:
        """The augmented view actually drawn when view ``view`` is asked for (cycled over ``augment_views``)."""
        return view if self.augment_views is None else view % self.augment_views

    def bounded_views(self) -> list[int]:
        """Every view a run may draw when ``augment_views`` bounds them (``[0, V)``); empty when unbounded."""
        return list(range(self.augment_views or 0))

    def rows_per_image(self, split: str) -> bool:
        """Whether plain (test-transform) features of ``split`` are stored per image and shared by every split that
        holds the image (``shared_views``; training splits only, evaluation splits are keyed by their items)."""
        return self.shared_views and split in ("train", "val")

    def encodes_views_together(self) -> bool:
        """Whether the training views a fit announces are encoded in one pass before it (per-image views, bounded
        by ``augment_views``)."""
        return self.shared_views and bool(self.augment_views)



#: switches that change results; :func:`inexact_fast_settings` puts them into the run id when set
INEXACT_FAST_FIELDS = ("augment_views", "device_augment", "shared_views")


def inexact_fast_defaults() -> dict[str, Any]:
    """The result-changing switches with their defaults: what a config (or an older record) that leaves one out ran
    at."""
    defaults = FastPaths()
    return {name: getattr(defaults, name) for name in INEXACT_FAST_FIELDS}


def inexact_fast_settings(fast: dict[str, Any]) -> dict[str, Any]:
    """The result-changing switches of a ``fast`` config section that are set (given and not at their default), so
    that a config naming one at its default has the id of a config that leaves it out."""
    return {k: fast[k] for k, default in inexact_fast_defaults().items() if k in fast and fast[k] != default}


def supports_feature_training(method: Any) -> bool:
    """Whether ``method``'s training step depends on the images only through the frozen image encoder, so that it can
    run on cached features of the batch (``feature_training_step(features, labels)``): what the method declares in
    ``info.capabilities.trains_on`` (``"features"``: zero-shot's and the linear probe's heads aside, CLIP-Adapter,
    Tip-Adapter, CoOp; CoCoOp inherits CoOp's step but declares ``"images"``, its meta-net reads the images)."""
    info = getattr(type(method), "info", None)
    return info is not None and info.capabilities.feature_training


__all__ = ["FastPaths", "INEXACT_FAST_FIELDS", "inexact_fast_defaults", "inexact_fast_settings",
           "supports_feature_training"]
