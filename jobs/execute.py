"""The entry point of one run: from a resolved config to ``record.json``.

Order of work (the method never sees test data before fit ends):

1. resolve the data root, build and store the split manifests (fit split and every evaluation split) and check
   that every referenced image exists and decodes (preflight) -- bad data fails here, before compute is spent;
2. load the frozen backbone and build the method with the fit split's class names;
3. ``prepare_fit`` (closed-form fits, caches), then the gradient loop, checkpointed at epoch ends (resumable);
4. evaluate the last-epoch model once on each evaluation split (for novel classes or other datasets the method
   rebuilds its class-dependent state with ``set_classnames``);
5. write ``record.json`` atomically (:func:`jobs.runfolder.write_record`): ``status: done``, or ``status: failed``
   with the reason and traceback.

Fast paths (the run's ``fast`` section, :mod:`frozen_clip.fastpaths`, which says which are exact): training images are augmented per
item under a seed of (manifest, view, item), so a head-only method trains on cached features of each epoch's view
(``feature_training``); evaluation features are keyed by the evaluated items rather than by the manifest, so runs
with other shots or seeds on the same test split reuse them (``shared_eval_features``); decoded images are kept as
uint8 (``image_cache``, :mod:`frozen_clip.imagecache`). The record's ``cost`` carries images/s, peak memory, the
model FLOPs per image of the first step and the MFU against the device's dense peak (None on CPU).
"""

from __future__ import annotations

import datetime as dt
import os
import platform
import socket
import time
import traceback
from pathlib import Path
from typing import Any, Callable

import torch

from frozen_clip.backbone import FrozenCLIP, load_backbone
from frozen_clip.cache import BoundedMemo, FeatureCache, RowStore, cache_key
from frozen_clip.device_augment import collate, loader_transform, to_device
from frozen_clip.errors import DataError, SuiteError
from frozen_clip.fastpaths import (FastPaths, FeatureViews, SeededViews, ViewsOfImages, image_key,
                                  supports_feature_training)
from frozen_clip.flops import mfu, peak_flops
from frozen_clip.imagecache import ImageCache, eval_dataset, items_hash, train_dataset
from frozen_clip.method import FitData, Method, MethodContext
from frozen_clip.trainer import FitResult, Trainer, derive_seed, peak_memory_mb, seed_everything
from frozen_clip.transforms import TransformSpec, test_spec, train_spec
from jobs.config import ResolvedRun, method_class
from jobs.runfolder import SCHEMA_VERSION, git_sha, run_dir, write_config, write_record
from protocols import metrics
from protocols.datasets import Item
from protocols.imagefolder import ImageListDataset, check_images_with_ledger
from protocols.protocols import plan as protocol_plan
from protocols.splits import SplitManifest, build_manifest

SUITE_VERSION = "0.1.0"
LEDGER_NAME = "verified-images.json"  # in a results folder's cache: images that decoded, with size and mtime
VIEW_MEMO_MB = 512.0  # cached training views a run keeps in memory (a 16-shot ImageNet view at 1024-d: 66 MiB)


def cache_dir(resolved: ResolvedRun) -> Path:
    """Shared caches (split manifests, features) of a results folder."""
    return Path(resolved.run.results_dir) / "cache"


def resolve_data_root(data_root: str) -> Path:
    """``builtin`` -> the generated world (created on first use); otherwise the expanded path, which must exist."""
    if data_root == "builtin":
        from protocols.world import ensure_world
        return ensure_world()
    root = Path(os.path.expandvars(os.path.expanduser(data_root)))
    if not root.is_dir():
        raise DataError(f"data_root {data_root!r} does not exist or is not a directory")
    return root


def pick_device(name: str) -> torch.device:
    """``auto`` -> the first CUDA device if any, else CPU."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    device = torch.device(name)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise SuiteError(f"device {name!r} requested but CUDA is not available")
    return device


def environment(device: torch.device, precision: str) -> dict[str, Any]:
    """Versions, commit, device and host of the run."""
    import open_clip
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else platform.processor() or "cpu"
    return {"versions": {"python": platform.python_version(), "torch": torch.__version__,
                         "open_clip": open_clip.__version__, "suite": SUITE_VERSION},
            "git_sha": git_sha(), "device": str(device), "device_name": name, "precision": precision,
            "threads": torch.get_num_threads(), "hostname": socket.gethostname()}


class Manifests:
    """The split manifests of one run: the fit split and one per evaluation split."""

    def __init__(self, resolved: ResolvedRun, data_root: Path) -> None:
        run = resolved.run
        self.plan = protocol_plan(run.protocol, run.dataset, run.targets)
        cache = cache_dir(resolved)
        self.ledger = cache / LEDGER_NAME
        self.fit = build_manifest(self.plan.fit_dataset, data_root, run.shots, run.seed, self.plan.fit_subsample,
                                  run.sampling, cache)
        self.evals: dict[str, SplitManifest] = {}
        for split in self.plan.evals:
            shots = run.shots if split.dataset == self.plan.fit_dataset else 0
            self.evals[split.name] = build_manifest(split.dataset, data_root, shots, run.seed, split.subsample,
                                                    run.sampling, cache)

    def all(self) -> list[SplitManifest]:
        return [self.fit, *self.evals.values()]

    def preflight(self) -> None:
        """Every image referenced exists and decodes; raises one :class:`DataError` listing the problems.

        Images the results folder's ledger saw decode, unchanged since, are not decoded again
        (:func:`~protocols.imagefolder.check_images_with_ledger`)."""
        paths = []
        for manifest in self.all():
            root = Path(manifest.image_root)
            paths += [root / item.path for item in (*manifest.train, *manifest.val, *manifest.test)]
        problems = check_images_with_ledger(sorted(set(paths)), self.ledger)
        if problems:
            listed = "\n".join(f"  {path}: {why}" for path, why in problems[:20])
            more = f"\n  ... and {len(problems) - 20} more" if len(problems) > 20 else ""
            raise DataError(f"{len(problems)} image(s) missing or unreadable:\n{listed}{more}")


class RunExecution:
    """Executes one resolved run in its folder."""

    def __init__(self, resolved: ResolvedRun, log: Callable[[str], None] | None = None) -> None:
        self.resolved = resolved
        self.folder = run_dir(resolved)
        self.timings: dict[str, float] = {}
        self._log_sink = log
        self.fast: FastPaths = resolved.fast
        self.images = ImageCache(cache_dir(resolved) / "images") if self.fast.image_cache else None

    def log(self, message: str) -> None:
        line = f"[{dt.datetime.now().strftime('%H:%M:%S')}] {message}"
        with open(self.folder / "log.txt", "a") as handle:
            handle.write(line + "\n")
        if self._log_sink is not None:
            self._log_sink(f"{self.resolved.run_id}: {message}")

    def write_config(self) -> None:
        write_config(self.folder, self.resolved.config)

    def run(self) -> dict[str, Any]:
        """Run to completion and write the record; on failure write a failed record and re-raise."""
        self.write_config()
        started = dt.datetime.now(dt.timezone.utc).isoformat()
        record: dict[str, Any] = {"schema_version": SCHEMA_VERSION, "run_id": self.resolved.run_id,
                                  "config": self.resolved.config, "started_at": started}
        try:
            record.update(self._execute())
            record["status"], record["failure"] = "done", None
        except Exception as err:
            record["status"] = "failed"
            record["failure"] = {"reason": f"{type(err).__name__}: {err}", "traceback": traceback.format_exc(),
                                 "user_error": isinstance(err, SuiteError)}
            self.log(f"FAILED: {type(err).__name__}: {err}")
            self._write(record)
            raise
        self._write(record)
        return record

    def _write(self, record: dict[str, Any]) -> None:
        record["finished_at"] = dt.datetime.now(dt.timezone.utc).isoformat()
        write_record(self.folder, record)

    def _execute(self) -> dict[str, Any]:
        run = self.resolved.run
        t0 = time.perf_counter()
        device = pick_device(run.device)
        precision = ("fp32" if device.type == "cpu" else "amp_fp16") if run.precision == "auto" else run.precision
        if run.deterministic:
            torch.backends.cudnn.benchmark = False
            torch.backends.cudnn.deterministic = True
        manifests = Manifests(self.resolved, resolve_data_root(run.data_root))
        manifests.preflight()
        self.log(f"fit split {manifests.fit.dataset}/{manifests.fit.subsample}: {len(manifests.fit.train)} train, "
                 f"{len(manifests.fit.val)} val, {len(manifests.fit.classnames)} classes")
        seed_everything(derive_seed("build", run.seed))
        clip = load_backbone(run.backbone, run.pretrained, device)
        method = self._build_method(clip, manifests.fit)
        trainer = Trainer(method, self.resolved.optim, seed=run.seed, device=device, precision=precision,
                          checkpoint_dir=self.folder / "checkpoints", num_workers=run.num_workers, log=self.log,
                          fast=self.fast)
        features = FeatureAccess(clip, cache_dir(self.resolved) / "features", device, self.resolved.optim,
                                 self.fast, self.images)
        method.prepare_fit(features.fit_data(manifests.fit))
        t1 = time.perf_counter()
        feature_views = self._feature_views(method, features, manifests.fit)
        # the training images are decoded only for a fit that reads them (not one on cached features, nor no fit)
        reads_images = feature_views is None and trainer.will_train(len(manifests.fit.train))
        fit = trainer.fit(self._train_set(manifests.fit, clip, decode=reads_images), feature_views)
        t2 = time.perf_counter()
        evaluation = self._evaluate(method, trainer, features, manifests)
        t3 = time.perf_counter()
        train_time = fit.train_seconds if fit.resumed_from_epoch else t2 - t1
        return {"metrics": evaluation, "summary": summarize(run.protocol, evaluation, run.targets),
                "aux_losses": fit.history[-1]["aux"] if fit.history else {}, "history": fit.history,
                "cost": {"trainable_params": method.num_trainable(), "time_setup_s": round(t1 - t0, 3),
                         "time_train_s": round(train_time, 3), "time_eval_s": round(t3 - t2, 3),
                         "images_per_s": round(fit.images_seen / train_time, 2) if fit.images_seen else None,
                         "peak_memory_mb": round(peak_memory_mb(device), 1),
                         **self._flop_cost(fit, train_time, device, precision),
                         "resumed_from_epoch": fit.resumed_from_epoch,
                         "trained_on_cached_features": fit.trained_on_features,
                         "feature_cache": {"hits": features.cache.hits, "misses": features.cache.misses},
                         "view_cache": {"hits": features.view_cache.hits, "misses": features.view_cache.misses},
                         "row_store": ({"read": features.rows.read, "computed": features.rows.computed}
                                       if self.fast.shared_views else None),
                         "image_cache": None if self.images is None else {"hits": self.images.hits,
                                                                          "misses": self.images.misses}},
                "method_report": method.report(),
                "splits": {name: {"dataset": m.dataset, "subsample": m.subsample, "manifest": m.content_hash}
                           for name, m in {"fit": manifests.fit, **manifests.evals}.items()},
                "env": environment(device, precision)}

    def _build_method(self, clip: FrozenCLIP, fit: SplitManifest) -> Method:
        from protocols.datasets import get_spec
        run = self.resolved.run
        cls = method_class(self.resolved.method_name, "run")
        context = MethodContext(dataset=run.dataset, template=get_spec(run.dataset).template, protocol=run.protocol,
                                shots=run.shots, seed=run.seed, epochs=self.resolved.optim.epochs)
        return cls(clip, fit.classnames, self.resolved.method_config, context).to(clip.device)

    def _dataset(self, manifest: SplitManifest, split: str, clip: FrozenCLIP) -> ImageListDataset:
        """Evaluation images of ``split`` under the test transform (through the image cache when on)."""
        spec = test_spec(clip.image_size, clip.mean, clip.std)
        return eval_dataset(self.images, manifest.dataset, getattr(manifest, split), Path(manifest.image_root), spec,
                            self.fast.device_normalize)

    def _train_set(self, manifest: SplitManifest, clip: FrozenCLIP, decode: bool = True) -> SeededViews:
        """Training images with per-item seeded augmentation (view ``epoch - 1`` in each epoch); ``decode``: through
        the decoded-image cache (otherwise read from the files if ever read)."""
        spec = train_spec(clip.image_size, clip.mean, clip.std)
        images = train_dataset(self.images if decode else None, manifest.dataset, manifest.train,
                               Path(manifest.image_root), spec, self.fast.device_normalize, self.fast.device_augment)
        keys = image_keys(manifest.dataset, manifest.train) if self.fast.shared_views else None
        return SeededViews(images, manifest.content_hash, keys)

    def _feature_views(self, method: Method, features: "FeatureAccess", manifest: SplitManifest
                       ) -> FeatureViews | None:
        """Cached features of the training views, for head-only methods when ``fast.feature_training`` is on."""
        if not (self.fast.feature_training and supports_feature_training(method)):
            return None
        scale = train_spec(method.clip.image_size, method.clip.mean, method.clip.std).rrc_scale
        return FeatureViews(lambda view: features.augmented_features(manifest, "train", view, scale, True),
                            lambda views: features.prefetch_views(manifest, "train", views, scale))

    @staticmethod
    def _flop_cost(fit: FitResult, train_time: float, device: torch.device, precision: str) -> dict[str, Any]:
        """Model FLOPs per image (first step, CUDA only) and the MFU they give over the whole fit."""
        if fit.flops_per_image is None or not fit.images_seen:
            return {"flops_per_image": None, "mfu": None}
        total = fit.flops_per_image * fit.images_seen
        return {"flops_per_image": fit.flops_per_image, "mfu": mfu(total, train_time, peak_flops(device, precision))}

    def _evaluate(self, method: Method, trainer: Trainer, features: "FeatureAccess",
                  manifests: Manifests) -> dict[str, Any]:
        out = {}
        for name, manifest in manifests.evals.items():
            from protocols.datasets import get_spec
            if manifest.classnames != method.classnames:
                method.set_classnames(manifest.classnames)
            if method.frozen_image_path:
                feats, labels = features.split_features(manifest, "test")
                preds, labels = trainer.predict_from_features(feats, labels)
            else:
                preds, labels = trainer.predict(self._dataset(manifest, "test", method.clip))
            out[name] = {"accuracy": metrics.accuracy(preds, labels), "n_images": int(labels.numel()),
                         "n_classes": len(manifest.classnames), "dataset": manifest.dataset,
                         "per_class_accuracy": metrics.per_class_accuracy(preds, labels, manifest.classnames)}
            self.log(f"eval {name} ({get_spec(manifest.dataset).key}): {out[name]['accuracy']:.2f}%")
        return out


class FeatureAccess:
    """Frozen image features of split manifests through the feature cache."""

    def __init__(self, clip: FrozenCLIP, root: Path, device: torch.device, optim: Any,
                 fast: FastPaths | None = None, images: ImageCache | None = None) -> None:
        self.clip = clip
        self.cache = FeatureCache(root)
        # same store, own counters for the trainer's fast path; memoised, since cycled views are read again and again
        self.view_cache = FeatureCache(root, memo_mb=VIEW_MEMO_MB)
        self.rows = RowStore(root / "rows", memo_mb=VIEW_MEMO_MB)  # per-image features (fast.shared_views)
        self._shared_memo = BoundedMemo(VIEW_MEMO_MB)  # the views this run read from ``rows``
        self._prefetched: set[str] = set()  # splits whose views the trainer announced (``prefetch_views``)
        self.device = device
        self.batch_size = max(optim.eval_batch_size, 64)
        self.fast = fast or FastPaths()
        self.images = images

    def _parts(self, manifest: SplitManifest, split: str, transform: str, view: int | None) -> dict[str, Any]:
        return {"backbone": self.clip.name, "pretrained": self.clip.pretrained, "transform": transform,
                "dataset": manifest.dataset, "manifest": manifest.content_hash, "split": split, "view": view}

    def split_features(self, manifest: SplitManifest, split: str) -> tuple[torch.Tensor, torch.Tensor]:
        """Test-transform features and labels of ``split`` of ``manifest``.

        With ``fast.shared_eval_features`` the entry is keyed by the items themselves (paths and labels), not by
        the manifest: every run evaluating the same test split, whatever its shots or seed, shares one entry.
        """
        spec = test_spec(self.clip.image_size, self.clip.mean, self.clip.std)
        items = getattr(manifest, split)
        parts = self._parts(manifest, split, spec.signature(), None)
        if self.fast.shared_views and split in ("train", "val"):  # rows per image, shared by overlapping splits
            parts = {**parts, "manifest": None, "split": None, "rows": "per-image"}
            return self._shared_rows(manifest, items, parts, lambda subset: eval_dataset(
                None, manifest.dataset, subset, Path(manifest.image_root), spec, self.fast.device_normalize))
        if self.fast.shared_eval_features:
            parts = {**parts, "manifest": None, "split": None, "items": items_hash(items)}

        def compute() -> dict[str, torch.Tensor]:  # one pass; the features are cached, so the images are not
            images = eval_dataset(None, manifest.dataset, items, Path(manifest.image_root), spec,
                                  self.fast.device_normalize)
            return self._encode(images)
        entry = self.cache.get_or_compute(parts, compute)
        return entry["features"], entry["labels"]

    def augmented_features(self, manifest: SplitManifest, split: str, view: int, rrc_scale: tuple[float, float],
                           for_trainer: bool = False) -> tuple[torch.Tensor, torch.Tensor]:
        """Features of augmented view ``view`` of ``split``: item ``i`` augmented under the seed of
        (manifest, view, i) (:class:`~frozen_clip.fastpaths.SeededViews`), the images the trainer sees in epoch
        ``view + 1``. ``for_trainer``: counted as the trainer's fast path (``view_cache`` in the record)."""
        spec = train_spec(self.clip.image_size, self.clip.mean, self.clip.std, rrc_scale)
        items = getattr(manifest, split)
        parts = self._view_parts(manifest, split, spec, view)
        if self.fast.shared_views:  # view v of an image is the same in every split: rows per image
            return self._shared_view(manifest, split, view, spec, parts)

        def compute() -> dict[str, torch.Tensor]:
            key = manifest.content_hash if split == "train" else f"{manifest.content_hash}-{split}"
            images = train_dataset(self.images, manifest.dataset, items, Path(manifest.image_root), spec,
                                   self.fast.device_normalize, self.fast.device_augment)
            dataset = SeededViews(images, key)
            dataset.set_view(view)
            return self._encode(dataset)
        entry = (self.view_cache if for_trainer else self.cache).get_or_compute(parts, compute)
        return entry["features"], entry["labels"]

    def _shared_rows(self, manifest: SplitManifest, items: list[Item], parts: dict[str, Any],
                     dataset_of: Callable[[list[Item]], torch.utils.data.Dataset]
                     ) -> tuple[torch.Tensor, torch.Tensor]:
        """Features of ``items`` from the per-image row store, encoding only the images no run has stored under
        ``parts`` (``dataset_of(subset)`` yields their images); labels from the items themselves."""
        if not items:
            return torch.zeros(0, self.clip.embed_dim), _labels(items)
        keys = image_keys(manifest.dataset, items)
        parts = {**parts, "row_batch": self.batch_size}
        missing = self.rows.missing(parts, keys)
        if missing:
            self.rows.add(parts, [keys[i] for i in missing], self.encode_rows(dataset_of([items[i] for i in missing])))
        return self.rows.rows(parts, keys), _labels(items)

    def _shared_view(self, manifest: SplitManifest, split: str, view: int, spec: TransformSpec,
                     parts: dict[str, Any]) -> tuple[torch.Tensor, torch.Tensor]:
        """View ``view`` of ``split`` under ``fast.shared_views``, from the per-image row store (memoised: the trainer
        asks for each of its cycled views again every few epochs). Rows the store lacks are encoded first: with
        ``fast.augment_views: V`` those of all V views at once (a run reads them over and over; the trainer says
        beforehand which ones it reads, :meth:`prefetch_views`), else of this view."""
        items = getattr(manifest, split)
        if not items:
            return torch.zeros(0, self.clip.embed_dim), _labels(items)
        request = cache_key(parts)  # this run's view of this split
        found = self._shared_memo.get(request)
        if found is None:
            every = list(range(self.fast.augment_views or 0))
            views = every if view in every and cache_key({**parts, "view": None}) not in self._prefetched else [view]
            store_parts = self._fill_views(manifest, split, views, spec, parts)
            found = {"features": self.rows.rows(store_parts[view], image_keys(manifest.dataset, items)),
                     "labels": _labels(items)}
            self._shared_memo.put(request, found)
        return found["features"], found["labels"]

    def prefetch_views(self, manifest: SplitManifest, split: str, views: list[int],
                       rrc_scale: tuple[float, float]) -> None:
        """Encode the rows the store lacks of the augmented ``views`` of ``split`` in one pass, each image decoded
        once (``fast.shared_views`` with ``fast.augment_views``; nothing otherwise: per-split views are encoded a
        view at a time, and without a bound on the views one pass could hold hundreds of views' rows)."""
        if self.fast.shared_views and self.fast.augment_views:
            spec = train_spec(self.clip.image_size, self.clip.mean, self.clip.std, rrc_scale)
            parts = self._view_parts(manifest, split, spec, None)
            self._fill_views(manifest, split, views, spec, parts)
            self._prefetched.add(cache_key(parts))  # later requests of this split's views fill only themselves

    def _view_parts(self, manifest: SplitManifest, split: str, spec: TransformSpec, view: int | None
                    ) -> dict[str, Any]:
        """The feature-cache key of augmented view ``view`` of ``split`` (per split: the manifest's seeds)."""
        parts = {**self._parts(manifest, split, spec.signature(), view), "augment": "per-item-seed"}
        if self.fast.device_augment:  # other pixels, other features (the key without it stays what it was)
            parts["resize"] = "device"
        return parts

    def _fill_views(self, manifest: SplitManifest, split: str, views: list[int], spec: TransformSpec,
                    parts: dict[str, Any]) -> dict[int, dict[str, Any]]:
        """Store the rows of ``views`` of ``split``'s images that the row store lacks, encoding every view of such an
        image in one pass (:class:`~frozen_clip.fastpaths.ViewsOfImages`); returns each view's store key."""
        items = getattr(manifest, split)
        keys = image_keys(manifest.dataset, items)
        shared = {**parts, "manifest": None, "split": None, "augment": "per-image-seed", "row_batch": self.batch_size}
        store_parts = {v: {**shared, "view": v} for v in views}
        todo = sorted(set().union(*(self.rows.missing(store_parts[v], keys) for v in views)))
        if todo:
            subset, subset_keys = [items[i] for i in todo], [keys[i] for i in todo]
            transform = loader_transform(spec, self.fast.device_normalize, self.fast.device_augment)
            rows = self.encode_rows(ViewsOfImages(subset, Path(manifest.image_root), transform, subset_keys, views))
            rows = rows.view(len(todo), len(views), -1)
            for j, v in enumerate(views):
                self.rows.add(store_parts[v], subset_keys, rows[:, j])
        return store_parts

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

    def fit_data(self, manifest: SplitManifest) -> FitData:
        """The :class:`FitData` handed to ``prepare_fit`` (train and val only)."""
        def features(split: str) -> tuple[torch.Tensor, torch.Tensor]:
            if split not in ("train", "val"):
                raise ValueError(f"prepare_fit may only read train/val, not {split!r}")
            return self.split_features(manifest, split)

        def augmented(split: str, view: int, rrc_scale: tuple[float, float]) -> tuple[torch.Tensor, torch.Tensor]:
            if split not in ("train", "val"):
                raise ValueError(f"prepare_fit may only read train/val, not {split!r}")
            return self.augmented_features(manifest, split, self.fast.cycled_view(view), rrc_scale)
        return FitData(manifest.classnames, len(manifest.train), len(manifest.val), features, augmented)


def _labels(items: list[Item]) -> torch.Tensor:
    return torch.tensor([item.label for item in items], dtype=torch.long)


def image_keys(dataset: str, items: list[Item]) -> list[str]:
    """The :func:`~frozen_clip.fastpaths.image_key` of each item (``fast.shared_views``)."""
    return [image_key(dataset, item.path) for item in items]


def summarize(protocol: str, evaluation: dict[str, Any], targets: tuple[str, ...]) -> dict[str, float]:
    """Headline numbers of a record (see the record schema in DESIGN.md)."""
    acc = {name: entry["accuracy"] for name, entry in evaluation.items()}
    if protocol == "base2novel":
        return {"base": acc["base"], "novel": acc["novel"], "hm": metrics.harmonic_mean(acc["base"], acc["novel"])}
    if protocol == "fewshot":
        return {"accuracy": acc["test"]}
    summary = dict(acc)
    summary["average"] = sum(acc[t] for t in targets) / len(targets) if targets else float("nan")
    return summary
