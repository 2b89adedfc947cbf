"""Frozen image features: how an entry is named (:class:`FeatureKey`), where it is stored (:class:`FeatureCache`,
:class:`RowStore`), and how a run reads the features of its splits through them (:class:`FeatureAccess`).

Where a method's path through the backbone is frozen (zero-shot, linear probe, CLIP-Adapter, Tip-Adapter, CoOp's
image side), image features are a pure function of (backbone, pretrained weights, transform, the images, the
augmented view). A :class:`FeatureKey` names exactly those, in one typed, frozen record; an entry is stored under
the hash of its key (:meth:`FeatureKey.digest`), with the key's fields next to it as JSON for inspection. Writes are
atomic and guarded by a file lock, so concurrent runs compute a feature set once.

Three kinds of entry, by what identifies the images:

* per split: the split manifest's content hash and the split's name (augmented views of a split, whose seeds are the
  manifest's: :class:`~frozen_clip.fastpaths.SeededViews`);
* per list of items (``fast.shared_eval_features``): the hash of the items' paths and labels, so every run
  evaluating the same test split, whatever its shots or seed, shares one entry;
* per image (``fast.shared_views``): one :class:`RowStore` entry per (transform, view, ...) holding a row per image,
  shared by every split that holds the image.

An entry is keyed by what its images' files are (size and modification time of each, :mod:`frozen_clip.stamps`), not
only by their paths: a dataset whose images were rewritten in place gets new features, never the old images'.
Entries written under earlier layouts (the dict-keyed one, keys without file stamps) are not found under the new
names: they are computed again, to the same values.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Iterator, Protocol, Sequence

import torch
from filelock import FileLock

from frozen_clip import atomic
from frozen_clip.backbone import FrozenCLIP
from frozen_clip.device_augment import collate, to_device
from frozen_clip.fastpaths import (FastPaths, FeatureViews, SeededViews, ViewsOfImages, eval_images, image_keys,
                                   train_images, train_loader_transform)
from frozen_clip.imagecache import ImageCache, items_hash
from frozen_clip.images import ImageItem
from frozen_clip.method import FitData
from frozen_clip.optim import OptimConfig
from frozen_clip.stamps import file_stamps, stamps_signature
from frozen_clip.transforms import TransformSpec, test_spec, train_spec

VIEW_MEMO_MB = 512.0  # cached training views a run keeps in memory (a 16-shot ImageNet view at 1024-d: 66 MiB)


@dataclass(frozen=True)
class FeatureKey:
    """What a feature entry is a function of. Fields left at None do not apply to the entry.

    Attributes:
        backbone, pretrained: the frozen model (architecture and weights).
        transform: the transform's :meth:`~frozen_clip.transforms.TransformSpec.signature`.
        dataset: the dataset key.
        manifest, split: the split manifest's content hash and the split's name (per-split entries).
        items: the hash of the items' paths and labels (:func:`~frozen_clip.imagecache.items_hash`; entries shared by
            every split with these items).
        view: the augmented view (None: the plain transform).
        augment: how views are seeded: ``per-item-seed`` (by the manifest, view and item) or ``per-image-seed``
            (by the image and view, ``fast.shared_views``).
        resize: ``device`` when views are resized on the run's device (``fast.device_augment``: other pixels).
        row_batch: the encoding batch size of a :class:`RowStore` entry (a row is bitwise the same at a fixed batch
            size, whatever the batch's other images).
        images: the size and modification time of every image file of the entry
            (:func:`~frozen_clip.stamps.files_signature`): images rewritten in place make another key. Row-store
            entries leave it out; their rows are keyed per image with the image's own stamp.
        weights: the stamp of the backbone's weights file where it is a local file
            (:attr:`~frozen_clip.backbone.FrozenCLIP.weights_stamp`).
        dtype: the backbone's dtype when it is not fp32 (``float16``: a pure-fp16 run's features); left out of the
            digest when None, so fp32 entries keep their names.
    """

    backbone: str
    pretrained: str | None
    transform: str
    dataset: str
    manifest: str | None = None
    split: str | None = None
    items: str | None = None
    view: int | None = None
    augment: str | None = None
    resize: str | None = None
    row_batch: int | None = None
    images: str | None = None
    weights: str | None = None
    dtype: str | None = None

    def parts(self) -> dict[str, Any]:
        """The fields as a dict (stored next to the entry; ``dtype`` only when set)."""
        parts = dataclasses.asdict(self)
        if parts["dtype"] is None:
            del parts["dtype"]
        return parts

    def digest(self) -> str:
        """sha256 of the canonical JSON of :meth:`parts` (24 hex chars): the entry's file name."""
        return hashlib.sha256(json.dumps(self.parts(), sort_keys=True).encode()).hexdigest()[:24]

    def replace(self, **changes: Any) -> "FeatureKey":
        """This key with ``changes``."""
        return dataclasses.replace(self, **changes)


def _nbytes(entry: dict[str, torch.Tensor]) -> int:
    return sum(t.numel() * t.element_size() for t in entry.values())


class BoundedMemo:
    """Tensor dicts kept in memory under a byte budget: the first ones that fit are kept (not evicted), because the
    readers come back cyclically (with V entries and room for fewer, least-recently-used eviction would always drop
    the one read next, while keeping the first ones serves most reads from memory)."""

    def __init__(self, memo_mb: float) -> None:
        self.budget = int(memo_mb * 2 ** 20)
        self.used = 0
        self._entries: dict[Any, dict[str, torch.Tensor]] = {}

    def get(self, key: Any) -> dict[str, torch.Tensor] | None:
        return self._entries.get(key)

    def __iter__(self) -> Iterator[Any]:
        return iter(self._entries)

    def __len__(self) -> int:
        return len(self._entries)

    def put(self, key: Any, entry: dict[str, torch.Tensor]) -> None:
        """Keep ``entry`` (replacing what ``key`` held) if it fits."""
        if key in self._entries:
            self.used -= _nbytes(self._entries.pop(key))
        if self.used + _nbytes(entry) <= self.budget:
            self._entries[key] = entry
            self.used += _nbytes(entry)


class FeatureCache:
    """Tensors on disk under ``root``, one file per :class:`FeatureKey` (its :meth:`~FeatureKey.digest`; the key's
    fields are stored next to it as JSON).

    ``memo_mb > 0`` also keeps entries in memory, the first ones read until they fill that many MiB, for a reader
    that comes back to the same entries (the trainer cycling through ``fast.augment_views`` cached views reads each
    one every few epochs; loading it from disk cost as much as the epoch's training steps; :class:`BoundedMemo`).
    Memoised tensors are shared between calls, so this is only for readers that do not modify what they get.
    """

    def __init__(self, root: Path, memo_mb: float = 0.0) -> None:
        self.root = Path(root)
        self.hits = 0
        self.misses = 0
        self._memo = BoundedMemo(memo_mb)

    def path(self, key: FeatureKey) -> Path:
        """Where the entry for ``key`` lives."""
        return self.root / f"{key.digest()}.pt"

    def get_or_compute(self, key: FeatureKey, compute: Callable[[], dict[str, torch.Tensor]]
                       ) -> dict[str, torch.Tensor]:
        """Load the entry for ``key``, or compute, store and return it."""
        path = self.path(key)
        memoised = self._memo.get(path)
        if memoised is not None:
            self.hits += 1
            return memoised
        value = self._load_or_compute(path, key, compute)
        self._memo.put(path, value)
        return value

    def _load_or_compute(self, path: Path, key: FeatureKey, compute: Callable[[], dict[str, torch.Tensor]]
                         ) -> dict[str, torch.Tensor]:
        found = load_entry(path, "feature cache entry")
        if found is not None:
            self.hits += 1
            return found
        self.root.mkdir(parents=True, exist_ok=True)
        with FileLock(str(path) + ".lock"):
            found = load_entry(path, "feature cache entry")
            if found is not None:
                self.hits += 1
                return found
            self.misses += 1
            value = {k: v.detach().cpu() for k, v in compute().items()}
            atomic.torch_save(path, value)
            atomic.write_json(path.with_suffix(".json"), key.parts())
        return value


def row_id(key: str) -> int:
    """A stable 63-bit id of an image key (:class:`RowStore` rows are looked up by it)."""
    return int.from_bytes(hashlib.sha256(key.encode()).digest()[:8], "little") >> 1


class RowStore:
    """Frozen features of single images under ``root``, shared by every run whose images overlap.

    One entry per :class:`FeatureKey` (backbone, weights, transform, dataset, view, row batch, ...) holds a row for
    every image any run stored, looked up by the image's id (:func:`row_id` of its key), so runs on other shots,
    seeds or methods that train on the same image reuse its row instead of encoding it again. That is what
    ``fast.shared_views`` needs: its views are drawn per image, not per split (:mod:`frozen_clip.fastpaths`).

    A reader asks which of its images an entry lacks (:meth:`missing`), encodes those and :meth:`add` s them (merged
    into the entry under its file lock and written atomically; rows another run added meanwhile are kept), then
    reads its rows (:meth:`rows`). Two runs starting together may both encode an image; they store the same row, as
    long as a row does not depend on which other images were encoded with it. The runner makes sure of that by
    encoding rows in batches of one fixed size, the key's ``row_batch`` (:meth:`FeatureAccess.encode_rows`
    pads the last batch): at a fixed batch size a row is bitwise independent of the batch's other rows and of its
    position (CPU; tested).

    ``memo_mb``: entries kept in memory once read, the first ones that fit (a trainer cycling through a few views
    reads each again and again; see :class:`FeatureCache`). Counters: rows ``read`` (by :meth:`rows`) and rows
    ``computed`` (stored by this reader).
    """

    def __init__(self, root: Path, memo_mb: float = 0.0) -> None:
        self.root = Path(root)
        self.read = 0
        self.computed = 0
        self._memo = BoundedMemo(memo_mb)

    def path(self, key: FeatureKey) -> Path:
        """Where the entry for ``key`` lives."""
        return self.root / f"{key.digest()}.rows.pt"

    def missing(self, key: FeatureKey, keys: list[str]) -> list[int]:
        """Positions in ``keys`` (image keys) of the images the entry has no row for."""
        found = _lookup(self._entry(self.path(key)), _ids(keys))
        return (found < 0).nonzero().flatten().tolist()

    def add(self, key: FeatureKey, keys: list[str], features: torch.Tensor) -> None:
        """Store the rows ``features[i]`` of the images ``keys[i]`` (already stored ones stay as they are)."""
        if features.shape[0] != len(keys):
            raise ValueError(f"row store: {features.shape[0]} rows for {len(keys)} images")
        path = self.path(key)
        self.root.mkdir(parents=True, exist_ok=True)
        with FileLock(str(path) + ".lock"):
            entry = _read_rows(path)  # what other runs stored since this run last read it
            ids = _ids(keys)
            new = _lookup(entry, ids) < 0
            new &= _first_occurrence(ids)
            if not bool(new.any()):
                if entry is not None:
                    self._memo.put(path, entry)
                return
            ids, rows = ids[new], features.detach().cpu()[new]
            if entry is not None:
                ids, rows = torch.cat([entry["ids"], ids]), torch.cat([entry["features"], rows])
            order = torch.argsort(ids)
            entry = {"ids": ids[order].contiguous(), "features": rows[order].contiguous()}
            atomic.torch_save(path, entry)
            if not path.with_suffix(".json").exists():
                atomic.write_json(path.with_suffix(".json"), key.parts())
        self.computed += int(new.sum())
        self._memo.put(path, entry)

    def rows(self, key: FeatureKey, keys: list[str]) -> torch.Tensor:
        """Features ``[len(keys), E]`` of the images ``keys``; every one must be stored."""
        path = self.path(key)
        entry = self._entry(path)
        found = _lookup(entry, _ids(keys))
        if entry is None or bool((found < 0).any()):
            raise KeyError(f"row store {path}: no row for {keys[int((found < 0).nonzero()[0])]!r}")
        self.read += len(keys)
        return entry["features"][found]

    def _entry(self, path: Path) -> dict[str, torch.Tensor] | None:
        entry = self._memo.get(path)
        if entry is None:
            entry = _read_rows(path)
            if entry is not None:
                self._memo.put(path, entry)
        return entry


def _ids(keys: list[str]) -> torch.Tensor:
    return torch.tensor([row_id(key) for key in keys], dtype=torch.long)


def _read_rows(path: Path) -> dict[str, torch.Tensor] | None:
    return load_entry(path, "row store entry", required=("ids", "features"))


def load_entry(path: Path, what: str, required: tuple[str, ...] = ()) -> dict[str, torch.Tensor] | None:
    """The tensor dict stored at ``path``, or None when there is none. A file that cannot be loaded, or that is not
    a dict of tensors holding ``required``, is damaged: it is moved aside with a warning naming it
    (:func:`frozen_clip.atomic.quarantine`) and None is returned, so that the entry is computed again."""
    entry = atomic.load_or_quarantine(path, what, lambda p: torch.load(p, map_location="cpu", weights_only=True))
    if entry is None:
        return None
    if not (isinstance(entry, dict) and all(isinstance(v, torch.Tensor) for v in entry.values())
            and all(k in entry for k in required)):
        atomic.quarantine(path, what, "not a dict of tensors" + (f" with {list(required)}" if required else ""))
        return None
    return entry


def _lookup(entry: dict[str, torch.Tensor] | None, ids: torch.Tensor) -> torch.Tensor:
    """The row of each id in ``entry`` (whose ids are sorted), -1 where it has none."""
    if entry is None or entry["ids"].numel() == 0:
        return torch.full_like(ids, -1)
    stored = entry["ids"]
    at = torch.searchsorted(stored, ids).clamp(max=stored.numel() - 1)
    return torch.where(stored[at].eq(ids), at, torch.full_like(at, -1))


def _first_occurrence(ids: torch.Tensor) -> torch.Tensor:
    """True at the first position of each distinct id (an image listed twice is stored once)."""
    seen: set[int] = set()
    first = []
    for value in ids.tolist():
        first.append(value not in seen)
        seen.add(value)
    return torch.tensor(first, dtype=torch.bool)


class Split(Protocol):
    """A split manifest as feature access reads it (:class:`protocols.splits.SplitManifest`): the dataset, the
    content hash, the image root, the class names and the items of ``train``, ``val`` and ``test``."""

    dataset: str
    image_root: str
    classnames: tuple[str, ...]
    train: Sequence[ImageItem]
    val: Sequence[ImageItem]
    test: Sequence[ImageItem]

    @property
    def content_hash(self) -> str: ...


class FeatureAccess:
    """Frozen image features of a run's split manifests, through the feature cache and the row store under ``root``.

    Args:
        clip: the frozen backbone that encodes the images.
        root: the results folder's feature cache.
        device: where images are encoded.
        optim: the run's optimisation settings (images are encoded ``max(eval_batch_size, 64)`` at a time).
        fast: the run's fast paths (which entries are shared, how views are drawn).
        images: the decoded-image cache, if on.
    """

    def __init__(self, clip: FrozenCLIP, root: Path, device: torch.device, optim: OptimConfig,
                 fast: FastPaths | None = None, images: ImageCache | None = None) -> None:
        self.clip = clip
        self.cache = FeatureCache(root)
        # same store, own counters for the trainer's fast path; memoised, since cycled views are read again and again
        self.view_cache = FeatureCache(root, memo_mb=VIEW_MEMO_MB)
        self.rows = RowStore(root / "rows", memo_mb=VIEW_MEMO_MB)  # per-image features (fast.shared_views)
        self._shared_memo = BoundedMemo(VIEW_MEMO_MB)  # the views this run read from ``rows``
        self._prefetched: set[FeatureKey] = set()  # splits whose views the trainer announced (``prefetch_views``)
        self.device = device
        self.batch_size = max(optim.eval_batch_size, 64)
        self.fast = fast or FastPaths()
        self.images = images
        # file stamps of each split's images, read once per run (a run's epochs ask for their views again and again)
        self._stamps: dict[tuple[str, str], list[str]] = {}
        self._weights = clip.weights_stamp  # likewise the weights file's

    def counters(self) -> dict[str, Any]:
        """Hits and misses of the feature cache, the trainer's view cache and (``fast.shared_views``) the row
        store, for the run record's cost section."""
        return {"feature_cache": {"hits": self.cache.hits, "misses": self.cache.misses},
                "view_cache": {"hits": self.view_cache.hits, "misses": self.view_cache.misses},
                "row_store": ({"read": self.rows.read, "computed": self.rows.computed}
                              if self.fast.shared_views else None)}

    @property
    def _dtype(self) -> str | None:
        """The model's dtype for :attr:`FeatureKey.dtype`: None for fp32, e.g. ``float16`` for a pure-fp16 run."""
        return None if self.clip.dtype == torch.float32 else str(self.clip.dtype).removeprefix("torch.")

    def _key(self, manifest: Split, split: str, spec: TransformSpec) -> FeatureKey:
        return FeatureKey(self.clip.name, self.clip.pretrained, spec.signature(), manifest.dataset,
                          manifest=manifest.content_hash, split=split,
                          images=stamps_signature(self._split_stamps(manifest, split), getattr(manifest, split)),
                          weights=self._weights,
                          dtype=self._dtype)

    def _split_stamps(self, manifest: Split, split: str) -> list[str]:
        """:func:`~frozen_clip.stamps.file_stamps` of ``split``'s images (read once per run)."""
        key = (manifest.content_hash, split)
        if key not in self._stamps:
            self._stamps[key] = file_stamps(manifest.image_root, getattr(manifest, split))
        return self._stamps[key]

    def _row_keys(self, manifest: Split, split: str) -> list[str]:
        """The row store's key of each item of ``split``: its :func:`~frozen_clip.fastpaths.image_key` with the file's
        stamp (a rewritten image is another row; its views are still seeded by the image key alone)."""
        items = getattr(manifest, split)
        stamps = self._split_stamps(manifest, split)
        return [f"{key}@{stamp}" for key, stamp in zip(image_keys(manifest.dataset, items), stamps)]

    def split_features(self, manifest: Split, split: str) -> tuple[torch.Tensor, torch.Tensor]:
        """Test-transform features and labels of ``split`` of ``manifest``.

        With ``fast.shared_eval_features`` the entry is keyed by the items themselves (paths and labels), not by
        the manifest: every run evaluating the same test split, whatever its shots or seed, shares one entry.
        """
        spec = test_spec(self.clip.image_size, self.clip.mean, self.clip.std)
        items = getattr(manifest, split)
        key = self._key(manifest, split, spec)
        if self.fast.rows_per_image(split):  # rows per image, shared by overlapping splits
            shared = key.replace(manifest=None, split=None, images=None)  # rows carry their images' stamps
            return self._shared_rows(manifest, split, shared, lambda subset: (
                eval_images(self.fast, None, manifest.dataset, subset, Path(manifest.image_root), spec)))
        if self.fast.shared_eval_features:
            key = key.replace(manifest=None, split=None, items=items_hash(items))

        def compute() -> dict[str, torch.Tensor]:  # one pass; the features are cached, so the images are not
            return self._encode(eval_images(self.fast, None, manifest.dataset, items, Path(manifest.image_root), spec))
        entry = self.cache.get_or_compute(key, compute)
        return entry["features"], entry["labels"]

    def augmented_features(self, manifest: Split, split: str, view: int, rrc_scale: tuple[float, float],
                           for_trainer: bool = False) -> tuple[torch.Tensor, torch.Tensor]:
        """Features of augmented view ``view`` of ``split``: item ``i`` augmented under the seed of
        (manifest, view, i) (:class:`~frozen_clip.fastpaths.SeededViews`), the images the trainer sees in epoch
        ``view + 1``. ``for_trainer``: counted as the trainer's fast path (``view_cache`` in the record)."""
        spec = train_spec(self.clip.image_size, self.clip.mean, self.clip.std, rrc_scale)
        items = getattr(manifest, split)
        key = self._view_key(manifest, split, spec, view)
        if self.fast.shared_views:  # view v of an image is the same in every split: rows per image
            return self._shared_view(manifest, split, view, spec, key)

        def compute() -> dict[str, torch.Tensor]:
            seeds = manifest.content_hash if split == "train" else f"{manifest.content_hash}-{split}"
            images = train_images(self.fast, self.images, manifest.dataset, items, Path(manifest.image_root), spec)
            dataset = SeededViews(images, seeds)
            dataset.set_view(view)
            return self._encode(dataset)
        entry = (self.view_cache if for_trainer else self.cache).get_or_compute(key, compute)
        return entry["features"], entry["labels"]

    def training_views(self, manifest: Split) -> FeatureViews:
        """Cached features of the training views of ``manifest``'s train split under the run's training transform,
        for the trainer of a head-only method (``fast.feature_training``)."""
        scale = train_spec(self.clip.image_size, self.clip.mean, self.clip.std).rrc_scale
        return FeatureViews(lambda view: self.augmented_features(manifest, "train", view, scale, True),
                            lambda views: self.prefetch_views(manifest, "train", views, scale))

    def _shared_rows(self, manifest: Split, split: str, key: FeatureKey,
                     dataset_of: Callable[[list[ImageItem]], torch.utils.data.Dataset]
                     ) -> tuple[torch.Tensor, torch.Tensor]:
        """Features of the items of ``split`` from the per-image row store, encoding only the images no run has stored
        under ``key`` (``dataset_of(subset)`` yields their images); labels from the items themselves."""
        items = getattr(manifest, split)
        if not items:
            return torch.zeros(0, self.clip.embed_dim), _labels(items)
        keys = self._row_keys(manifest, split)
        key = key.replace(row_batch=self.batch_size)
        missing = self.rows.missing(key, keys)
        if missing:
            self.rows.add(key, [keys[i] for i in missing], self.encode_rows(dataset_of([items[i] for i in missing])))
        return self.rows.rows(key, keys), _labels(items)

    def _shared_view(self, manifest: Split, split: str, view: int, spec: TransformSpec,
                     key: FeatureKey) -> tuple[torch.Tensor, torch.Tensor]:
        """View ``view`` of ``split`` under ``fast.shared_views``, from the per-image row store (memoised: the trainer
        asks for each of its cycled views again every few epochs). Rows the store lacks are encoded first: with
        ``fast.augment_views: V`` those of all V views at once (a run reads them over and over; the trainer says
        beforehand which ones it reads, :meth:`prefetch_views`), else of this view."""
        items = getattr(manifest, split)
        if not items:
            return torch.zeros(0, self.clip.embed_dim), _labels(items)
        found = self._shared_memo.get(key)  # this run's view of this split
        if found is None:
            every = self.fast.bounded_views()
            views = every if view in every and key.replace(view=None) not in self._prefetched else [view]
            store_keys = self._fill_views(manifest, split, views, spec, key)
            found = {"features": self.rows.rows(store_keys[view], self._row_keys(manifest, split)),
                     "labels": _labels(items)}
            self._shared_memo.put(key, found)
        return found["features"], found["labels"]

    def prefetch_views(self, manifest: Split, split: str, views: list[int], rrc_scale: tuple[float, float]) -> None:
        """Encode the rows the store lacks of the augmented ``views`` of ``split`` in one pass, each image decoded
        once (``fast.shared_views`` with ``fast.augment_views``; nothing otherwise: per-split views are encoded a
        view at a time, and without a bound on the views one pass could hold hundreds of views' rows)."""
        if self.fast.encodes_views_together():
            spec = train_spec(self.clip.image_size, self.clip.mean, self.clip.std, rrc_scale)
            key = self._view_key(manifest, split, spec, None)
            self._fill_views(manifest, split, views, spec, key)
            self._prefetched.add(key)  # later requests of this split's views fill only themselves

    def _view_key(self, manifest: Split, split: str, spec: TransformSpec, view: int | None) -> FeatureKey:
        """The key of augmented view ``view`` of ``split`` (per split: the manifest's seeds)."""
        return self._key(manifest, split, spec).replace(view=view, augment="per-item-seed",
                                                        resize="device" if self.fast.device_augment else None)

    def _fill_views(self, manifest: Split, split: str, views: list[int], spec: TransformSpec,
                    key: FeatureKey) -> dict[int, FeatureKey]:
        """Store the rows of ``views`` of ``split``'s images that the row store lacks, encoding every view of such an
        image in one pass (:class:`~frozen_clip.fastpaths.ViewsOfImages`); returns each view's store key."""
        items = getattr(manifest, split)
        seeds, keys = image_keys(manifest.dataset, items), self._row_keys(manifest, split)
        shared = key.replace(manifest=None, split=None, augment="per-image-seed", row_batch=self.batch_size,
                             images=None)
        store_keys = {v: shared.replace(view=v) for v in views}
        todo = sorted(set().union(*(self.rows.missing(store_keys[v], keys) for v in views)))
        if todo:
            subset = [items[i] for i in todo]
            transform = train_loader_transform(self.fast, spec)
            rows = self.encode_rows(ViewsOfImages(subset, Path(manifest.image_root), transform,
                                                  [seeds[i] for i in todo], views))
            rows = rows.view(len(todo), len(views), -1)
            for j, v in enumerate(views):
                self.rows.add(store_keys[v], [keys[i] for i in todo], rows[:, j])
        return store_keys

    def encode_rows(self, dataset: torch.utils.data.Dataset) -> torch.Tensor:
        """Image features of ``dataset`` in batches of exactly ``batch_size`` (the last one padded with zeros, its
        padding rows dropped): at a fixed batch size a row does not depend on the batch's other rows, so a row is
        the same whichever run, with whichever other images, encoded it (what :class:`RowStore` needs)."""
        return self._encode(dataset, pad=True)["features"]

    @torch.no_grad()
    def _encode(self, dataset: torch.utils.data.Dataset, pad: bool = False) -> dict[str, torch.Tensor]:
        """Features and labels of ``dataset`` in order, in batches of ``batch_size`` (``pad``: the last one too)."""
        loader = torch.utils.data.DataLoader(dataset, batch_size=self.batch_size, shuffle=False, collate_fn=collate)
        feats, labels = [], []
        for images, target, _index in loader:
            batch = to_device(images, self.device)
            rows = batch.shape[0]
            if pad and rows < self.batch_size:
                batch = torch.cat([batch, batch.new_zeros((self.batch_size - rows, *batch.shape[1:]))])
            feats.append(self.clip.encode_image(batch)[:rows].float().cpu())
            labels.append(target)
        if not feats:
            return {"features": torch.zeros(0, self.clip.embed_dim), "labels": torch.zeros(0, dtype=torch.long)}
        return {"features": torch.cat(feats), "labels": torch.cat(labels)}

    def fit_data(self, manifest: Split, test_allowed: bool = False, full_val: Split | None = None) -> FitData:
        """The :class:`FitData` handed to ``prepare_fit``: train and val, test only when ``test_allowed`` (a method
        option that selects on test, ``Method.selects_on_test``), and ``val_full`` (``full_val``'s val split: the
        dataset's whole val split) when given."""
        readable = ("train", "val", *(("test",) if test_allowed else ()), *(("val_full",) if full_val else ()))

        def features(split: str) -> tuple[torch.Tensor, torch.Tensor]:
            if split not in readable:
                raise ValueError(f"prepare_fit may only read {'/'.join(readable)}, not {split!r}")
            if split == "val_full":
                return self.split_features(full_val, "val")
            return self.split_features(manifest, split)

        def augmented(split: str, view: int, rrc_scale: tuple[float, float]) -> tuple[torch.Tensor, torch.Tensor]:
            if split not in ("train", "val"):
                raise ValueError(f"prepare_fit may only read train/val, not {split!r}")
            return self.augmented_features(manifest, split, self.fast.cycled_view(view), rrc_scale)
        return FitData(manifest.classnames, len(manifest.train), len(manifest.val), features, augmented)


def _labels(items: Sequence[ImageItem]) -> torch.Tensor:
    return torch.tensor([item.label for item in items], dtype=torch.long)
