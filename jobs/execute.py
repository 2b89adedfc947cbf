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

This module orchestrates; the steps live elsewhere: data roots and manifests in :mod:`jobs.data`, the device and
environment in :mod:`jobs.environment`, feature access and caching in :mod:`frozen_clip.features`, the gradient loop
in :mod:`frozen_clip.trainer`, evaluation and the headline numbers in :mod:`jobs.evaluation`.

Fast paths (the run's ``fast`` section, :mod:`frozen_clip.fastpaths`; all exact): training images are augmented per
item under a seed of (manifest, view, item), so a head-only method trains on cached features of each epoch's view
(``feature_training``); evaluation features are keyed by the evaluated items rather than by the manifest, so runs
with other shots or seeds on the same test split reuse them (``shared_eval_features``); decoded images are kept as
uint8 (``image_cache``, :mod:`frozen_clip.imagecache`). The record's ``cost`` carries images/s, peak memory, the
model FLOPs per image of the first step and the MFU against the device's dense peak (None on CPU).
"""

from __future__ import annotations

import datetime as dt
import socket
import time
import traceback
from collections import Counter
from pathlib import Path
from typing import Any, Callable

import torch

from frozen_clip.backbone import FrozenCLIP, load_backbone
from frozen_clip.contract import card
from frozen_clip.errors import ConfigError, SuiteError
from frozen_clip.fastpaths import FastPaths, SeededViews, eval_images, image_keys, train_images
from frozen_clip.features import FeatureAccess
from frozen_clip.flops import mfu, peak_flops
from frozen_clip.imagecache import ImageCache
from frozen_clip.method import Method, MethodContext
from frozen_clip.seeding import derive_seed, seed_everything
from frozen_clip.trainer import FitResult, Trainer, peak_memory_mb
from frozen_clip.transforms import test_spec, train_spec
from jobs.config import ResolvedRun, method_class, run_label
from jobs.data import Manifests, cache_dir, resolve_data_root
from jobs.environment import environment, make_deterministic, pick_device, run_precision
from jobs.evaluation import evaluate, summarize
from jobs.inputs import write_inputs
from jobs.runfolder import SCHEMA_VERSION, code_version, git_sha, run_dir, write_config, write_record
from protocols.datasets import get_spec
from protocols.splits import SplitManifest, manifest_path


def build_method(resolved: ResolvedRun, cls: type, clip: FrozenCLIP, fit: SplitManifest) -> Method:
    """The run's method (class ``cls``) on the frozen ``clip`` for the fit split's classes, on ``clip``'s device.

    Its initial weights are drawn from the global RNG: a run seeds it with ``derive_seed("build", seed)`` before
    loading the backbone, and :mod:`jobs.adaptation_report` does the same to rebuild a run's initial weights."""
    run = resolved.run
    context = MethodContext(dataset=run.dataset, template=get_spec(run.dataset).template, protocol=run.protocol,
                            shots=run.shots, seed=run.seed, epochs=resolved.optim.epochs)
    return cls(clip, fit.classnames, resolved.method_config, context).to(clip.device)


def shots_per_class(items: Any, n_classes: int, requested: int) -> dict[str, int]:
    """Training images per class of a fit split against the requested ``shots``: ``min``, ``max``, and how many
    classes have fewer than requested (``short_classes``). Such a class trains on all it has (Dassl's
    ``generate_fewshot_dataset`` with ``repeat=False``), so the record states what the classes actually had;
    ``shots: 0`` means every training image (no class is short)."""
    counts = Counter(item.label for item in items)
    per_class = [counts.get(label, 0) for label in range(n_classes)] or [0]
    short = sum(c < requested for c in per_class) if requested else 0
    return {"requested": requested, "min": min(per_class), "max": max(per_class), "short_classes": short}


class RunExecution:
    """Executes one resolved run in its folder."""

    def __init__(self, resolved: ResolvedRun, log: Callable[[str], None] | None = None) -> None:
        self.resolved = resolved
        self.folder = run_dir(resolved)
        self.timings: dict[str, float] = {}
        self._log_sink = log
        self.fast: FastPaths = resolved.fast
        self.images = ImageCache(cache_dir(resolved) / "images") if self.fast.image_cache else None
        self.code = code_version()  # which code runs (git commit or package version): in the log and the record

    def log(self, message: str) -> None:
        line = f"[{dt.datetime.now().strftime('%H:%M:%S')}] {message}"
        with open(self.folder / "log.txt", "a") as handle:
            handle.write(line + "\n")
        if self._log_sink is not None:
            self._log_sink(f"{self.resolved.run_id}: {message}")

    def _log_header(self) -> None:
        """What the log is of, at the top of each attempt (a resumed run appends a new attempt)."""
        with open(self.folder / "log.txt", "a") as handle:
            handle.write(f"=== run {self.resolved.run_id}: {run_label(self.resolved.config)}\n"
                         f"=== config: {self.folder / 'config.yaml'}; code: {self.code}; host: "
                         f"{socket.gethostname()}; started {dt.datetime.now().isoformat(timespec='seconds')}\n")

    def write_config(self) -> None:
        write_config(self.folder, self.resolved.config)

    def run(self) -> dict[str, Any]:
        """Run to completion and write the record; on failure write a failed record and re-raise."""
        self.write_config()
        self._log_header()
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

    def _write_inputs(self, manifests: Manifests, clip: FrozenCLIP) -> None:
        """``inputs.json``: the stamps of the run's images and weights (:mod:`jobs.inputs`), before the record."""
        cache = cache_dir(self.resolved)
        splits = {"fit": manifests.fit, **manifests.evals}
        write_inputs(self.folder, {name: (m.dataset, manifest_path(m, cache)) for name, m in splits.items()},
                     clip.weights_files())

    def _write(self, record: dict[str, Any]) -> None:
        record["finished_at"] = dt.datetime.now(dt.timezone.utc).isoformat()
        write_record(self.folder, record)

    def _execute(self) -> dict[str, Any]:
        run = self.resolved.run
        t0 = time.perf_counter()
        device = pick_device(run.device)
        cls = method_class(self.resolved.method_name, "run")
        official = cls.info.precision
        precision = run_precision(self.resolved.config, official, device)
        if run.deterministic:
            make_deterministic()
        else:  # the official code's setting (CoOp train.py:135-136): cuDNN autotunes its kernels
            torch.backends.cudnn.benchmark = True
        manifests = Manifests(self.resolved, resolve_data_root(run.data_root))
        if cls.reads_full_val(self.resolved.method_config):
            manifests.request_full_val()
        manifests.preflight()
        self.log(f"fit split {manifests.fit.dataset}/{manifests.fit.subsample}: {len(manifests.fit.train)} train, "
                 f"{len(manifests.fit.val)} val, {len(manifests.fit.classnames)} classes")
        shots = shots_per_class(manifests.fit.train, len(manifests.fit.classnames), run.shots)
        if shots["short_classes"]:
            self.log(f"note: {shots['short_classes']} classes have fewer than {run.shots} training images (as few as "
                     f"{shots['min']}); as in Dassl (repeat=False) they train on all they have; the record states "
                     "the shots per class (shots_per_class)")
        seed_everything(derive_seed("build", run.seed))
        clip = load_backbone(run.backbone, run.pretrained, device)
        if precision.half_model:  # pure fp16 (Dassl's PREC "fp16"): the frozen model and what is built in its dtype
            clip = clip.half()
        method = build_method(self.resolved, cls, clip, manifests.fit)
        trainer = Trainer(method, self.resolved.optim, seed=run.seed, device=device, precision=precision.train,
                          eval_precision=precision.eval,
                          checkpoint_dir=self.folder / "checkpoints", num_workers=run.num_workers, log=self.log,
                          fast=self.fast)
        features = FeatureAccess(clip, cache_dir(self.resolved) / "features", device, self.resolved.optim,
                                 self.fast, self.images)
        selects_on_test = type(method).selects_on_test(method.config)
        method.prepare_fit(features.fit_data(manifests.fit, test_allowed=selects_on_test, full_val=manifests.full_val))
        checkpoint = self._load_checkpoint(method)
        t1 = time.perf_counter()
        feature_views = features.training_views(manifests.fit) if self.fast.feature_training_for(method) else None
        # the training images are decoded only for a fit that reads them (not one on cached features, nor no fit)
        reads_images = feature_views is None and trainer.will_train(len(manifests.fit.train))
        fit = trainer.fit(self._train_set(manifests.fit, clip, decode=reads_images), feature_views)
        t2 = time.perf_counter()
        evaluation = evaluate(method, trainer, features, manifests.evals,
                              lambda manifest: self._test_images(manifest, clip), self.log)
        t3 = time.perf_counter()
        self._write_inputs(manifests, clip)
        train_time = fit.train_seconds if fit.resumed_from_epoch else t2 - t1
        return {"metrics": evaluation, "summary": summarize(run.protocol, evaluation, run.targets),
                "aux_losses": fit.history[-1]["aux"] if fit.history else {}, "history": fit.history,
                "cost": {"trainable_params": method.num_trainable(), "time_setup_s": round(t1 - t0, 3),
                         "time_train_s": round(train_time, 3), "time_eval_s": round(t3 - t2, 3),
                         "images_per_s": round(fit.images_seen / train_time, 2) if fit.images_seen else None,
                         "peak_memory_mb": round(peak_memory_mb(device), 1),
                         **self._flop_cost(fit, train_time, device, precision.train),
                         "resumed_from_epoch": fit.resumed_from_epoch,
                         "trained_on_cached_features": fit.trained_on_features,
                         **features.counters(),
                         "image_cache": None if self.images is None else {"hits": self.images.hits,
                                                                          "misses": self.images.misses}},
                "method_report": method.report(),
                "selected_on_test": selects_on_test,
                "checkpoint": checkpoint,
                "method_card": card(type(method)),
                "splits": {name: {"dataset": m.dataset, "subsample": m.subsample, "manifest": m.content_hash}
                           for name, m in {"fit": manifests.fit, **manifests.evals}.items()},
                "shots_per_class": shots,
                "env": environment(device, precision, git_sha(), self.code, official)}

    def _load_checkpoint(self, method: Method) -> dict[str, Any] | None:
        """Load ``method.checkpoint`` (an official checkpoint) into the method; what the record says about it."""
        path = self.resolved.config["method"].get("checkpoint")
        if not path:
            return None
        from frozen_clip.checkpoints import checkpoint_digest, load_checkpoint, tensors_digest
        digest = checkpoint_digest(path)
        if digest != self.resolved.config["method"]["checkpoint_sha256"]:
            raise ConfigError(f"method.checkpoint: {path} changed since the run was configured "
                              f"({digest} != {self.resolved.config['method']['checkpoint_sha256']}); relaunch")
        state = load_checkpoint(path)
        try:
            method.load_official_state_dict(state)
        except (RuntimeError, KeyError, ValueError, ConfigError) as err:
            raise ConfigError(f"method.checkpoint: {path} does not fit {self.resolved.method_name} with these "
                              f"options and backbone: {err}") from None
        method.invalidate()
        self.log(f"loaded {len(state)} tensors from checkpoint {path}")
        # which weights the method holds now (its trainable parameters), comparable with any run's or file's
        loaded = tensors_digest({k: p.data for k, p in method.trainable_parameters().items()})
        return {"path": path, "sha256": digest, "tensors": len(state), "trainable_sha256": loaded}

    def _test_images(self, manifest: SplitManifest, clip: FrozenCLIP) -> torch.utils.data.Dataset:
        """The test images of ``manifest`` under the test transform (through the image cache when on)."""
        spec = test_spec(clip.image_size, clip.mean, clip.std)
        return eval_images(self.fast, self.images, manifest.dataset, manifest.test, Path(manifest.image_root), spec)

    def _train_set(self, manifest: SplitManifest, clip: FrozenCLIP, decode: bool = True) -> SeededViews:
        """Training images with per-item seeded augmentation (view ``epoch - 1`` in each epoch); ``decode``: through
        the decoded-image cache (otherwise read from the files if ever read)."""
        spec = train_spec(clip.image_size, clip.mean, clip.std)
        images = train_images(self.fast, self.images if decode else None, manifest.dataset, manifest.train,
                                        Path(manifest.image_root), spec)
        keys = image_keys(manifest.dataset, manifest.train) if self.fast.shared_views else None
        return SeededViews(images, manifest.content_hash, keys)

    @staticmethod
    def _flop_cost(fit: FitResult, train_time: float, device: torch.device, precision: str) -> dict[str, Any]:
        """Model FLOPs per image (first step, CUDA only) and the MFU they give over the whole fit."""
        if fit.flops_per_image is None or not fit.images_seen:
            return {"flops_per_image": None, "mfu": None}
        total = fit.flops_per_image * fit.images_seen
        return {"flops_per_image": fit.flops_per_image, "mfu": mfu(total, train_time, peak_flops(device, precision))}
