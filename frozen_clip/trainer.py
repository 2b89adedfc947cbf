"""The one training loop and evaluation every method runs through.

Fit: per epoch, the global RNGs are re-seeded from (seed, epoch), the learning rate is set from the explicit
schedule, the shuffled loader (Dassl: ``RandomSampler``, ``drop_last = len(train) >= batch_size``; ``optim.last_batch:
keep`` keeps the partial batch, as CLIP-LoRA's loader does) is drawn from a
generator seeded the same way, and a checkpoint is written atomically at the end of the epoch (of the first and the
last epoch always, of the others once the training since the last write took ``CHECKPOINT_SPACING`` times as long as
that write). A run killed at any point resumes from the last checkpoint and produces exactly the metrics of an
uninterrupted run (CPU; tested). This per-epoch re-seeding is the one deliberate difference from Dassl, which seeds
once per process.

Evaluation happens once, after fit, on the last-epoch model (CoOp protocol); the trainer never sees test data
before ``fit`` returns.

Batch sources (:class:`BatchSource`, chosen once when ``fit`` starts): the training images
(:class:`ImageBatches`; a set wrapped in :class:`~frozen_clip.fastpaths.SeededViews` yields augmented view
``epoch - 1`` in each epoch, cycled over ``fast.augment_views`` views when set), or, given
:class:`~frozen_clip.fastpaths.FeatureViews` for a method whose step needs the images only through the frozen encoder
(``fast.feature_training_for``), the cached features of that same view, in the same batch order
(:class:`FeatureBatches`; exact: pinned by a test against the image path). Batches are finished on the device (:mod:`frozen_clip.device_augment`):
with ``fast.device_normalize`` the loader yields uint8 images and the batch is converted and normalised there; with
``fast.device_augment`` the loader yields the views' uint8 crops at their own size, resized there too.
On CUDA the first step's FLOPs are counted (open_clip's profiler convention, :mod:`frozen_clip.flops`) for the
record's MFU; ``compile`` wraps the step in ``torch.compile``.
"""

from __future__ import annotations

import math
import resource
import sys
import time
from contextlib import nullcontext
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Iterator

import torch
from torch.utils.data import BatchSampler, DataLoader, Dataset, RandomSampler

from frozen_clip import atomic
from frozen_clip.device_augment import collate, to_device
from frozen_clip.fastpaths import FastPaths, FeatureRows, FeatureViews
from frozen_clip.method import Method
from frozen_clip.optim import OptimConfig, build_optimizer, lr_at, set_lr
from frozen_clip.precision import on_device
from frozen_clip.seeding import derive_seed, seed_everything

CHECKPOINT_NAME = "last.pt"
#: a checkpoint is written after an epoch once the time since the last one is this many times the last write's cost
#: (and always after the first and the last epoch): at most ~5 % of a fit goes to checkpoints, so millisecond epochs
#: (head-only methods on cached features) are not dominated by writes, and epochs longer than 20 writes are all saved
CHECKPOINT_SPACING = 20.0


def peak_memory_mb(device: torch.device) -> float:
    """Peak accelerator memory (CUDA) or peak resident set size of the process (CPU), in MiB."""
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device) / 2 ** 20
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def autocast_context(device: torch.device, precision: str):
    """``torch.autocast`` for ``amp_fp16``/``amp_bf16`` on CUDA; none on CPU, for ``fp32``, and for pure ``fp16``
    (the model itself is half)."""
    if device.type != "cuda" or precision in ("fp32", "fp16"):
        return nullcontext()
    dtype = torch.float16 if precision == "amp_fp16" else torch.bfloat16
    return torch.autocast(device_type="cuda", dtype=dtype)


@dataclass
class FitResult:
    """What fit produced: per-epoch history, counters for the cost section of the record."""

    history: list[dict] = field(default_factory=list)
    images_seen: int = 0
    train_seconds: float = 0.0
    resumed_from_epoch: int = 0
    trained_on_features: bool = False  # the head-only fast path ran (features of cached views, no image encoding)
    flops_per_image: float | None = None  # model FLOPs of the first step / its batch (CUDA only, see flops.py)


class BatchSource:
    """Where a fit's batches come from, chosen once before the loop (:meth:`Trainer.fit`): the epoch's data set and
    the step that consumes its batches."""

    #: the step reads cached features, not images (``FitResult.trained_on_features``)
    on_features: bool = False

    def prefetch(self, views: list[int]) -> None:
        """Told once before the loop which augmented views the remaining epochs read."""

    def epoch_data(self, view: int) -> Dataset:
        """The data of an epoch that trains on augmented view ``view``."""
        raise NotImplementedError

    def step(self, method: Method, compiled: Callable | None) -> Callable:
        """The training step for this source's batches (``compiled``: the compiled image step, if any)."""
        raise NotImplementedError


class ImageBatches(BatchSource):
    """The training images: a set with per-item seeded views (:class:`~frozen_clip.fastpaths.SeededViews`) is set to
    the epoch's view; any other set yields the same images every epoch. The method's ``training_step`` runs on them."""

    def __init__(self, train_set: Dataset) -> None:
        self.train_set = train_set

    def epoch_data(self, view: int) -> Dataset:
        if hasattr(self.train_set, "set_view"):
            self.train_set.set_view(view)
        return self.train_set

    def step(self, method: Method, compiled: Callable | None) -> Callable:
        return compiled or method.training_step


class FeatureBatches(BatchSource):
    """Cached features of the epoch's augmented view (:class:`~frozen_clip.fastpaths.FeatureViews`), read in the
    batch order of the image path; the method's ``feature_training_step`` runs on them."""

    on_features = True

    def __init__(self, views: FeatureViews) -> None:
        self.views = views

    def prefetch(self, views: list[int]) -> None:
        if self.views.prefetch is not None:
            self.views.prefetch(views)

    def epoch_data(self, view: int) -> Dataset:
        return FeatureRows(*self.views.view(view))

    def step(self, method: Method, compiled: Callable | None) -> Callable:
        return method.feature_training_step


class TrainingDiverged(RuntimeError):
    """The loss became NaN or infinite: the run fails (a record of chance-level metrics would pass for a result)."""


class Trainer:
    """Fits a :class:`Method` with its declared trainable parameters and evaluates it."""

    def __init__(self, method: Method, optim: OptimConfig, *, seed: int, device: torch.device,
                 precision: str = "fp32", checkpoint_dir: Path | None = None, num_workers: int = 0,
                 eval_precision: str | None = None,
                 log: Callable[[str], None] = print, progress: bool | None = None,
                 fast: FastPaths | None = None, count_flops: bool | None = None) -> None:
        self.method = method
        self.optim = optim
        self.seed = seed
        self.device = device
        self.precision = on_device(device.type, precision)
        self.eval_precision = on_device(device.type, precision if eval_precision is None else eval_precision)
        self.checkpoint_dir = checkpoint_dir
        self.num_workers = num_workers
        self.log = log
        self._epochs, self._first_epoch = optim.epochs, 1  # set by fit (epochs of the fit, resumed or not)
        self.progress = sys.stderr.isatty() if progress is None else progress
        self.fast = fast or FastPaths()
        self._source: BatchSource | None = None  # chosen by fit
        self._count_next_step = False
        # FLOPs of the first step for the record's MFU: by default on CUDA only (no peak to compare with on CPU)
        self.count_flops = device.type == "cuda" if count_flops is None else count_flops
        self._step_fn = self._compiled_step() if self.fast.compiles_step_on(device) else None

    # -- fit ----------------------------------------------------------------------------------------------------------
    def _loader(self, dataset: Dataset, epoch: int) -> DataLoader:
        generator = torch.Generator().manual_seed(derive_seed("loader", self.seed, epoch))
        batch = self.optim.batch_size
        sampler = RandomSampler(dataset, generator=generator)
        common = dict(num_workers=self.num_workers, generator=generator, pin_memory=self.device.type == "cuda",
                      persistent_workers=False)
        drop_last = self._drops_last(len(dataset))
        if isinstance(dataset, FeatureRows):  # cached features: a batch is one indexing, not B rows collated
            # the same batches from the same generator draws as below (BatchSampler is what DataLoader builds)
            return DataLoader(dataset, sampler=BatchSampler(sampler, batch, drop_last=drop_last),
                              batch_size=None, **common)
        return DataLoader(dataset, batch_size=batch, sampler=sampler, drop_last=drop_last,
                          collate_fn=collate, **common)

    def _drops_last(self, n_train: int) -> bool:
        """Dassl drops the last partial batch when the set holds at least one batch (``optim.last_batch: drop``);
        CLIP-LoRA's loader keeps it (``keep``)."""
        return self.optim.last_batch == "drop" and n_train >= self.optim.batch_size

    def batches_per_epoch(self, n_train: int) -> int:
        """Optimiser steps of one epoch over ``n_train`` items (at least 1)."""
        full, rest = divmod(n_train, self.optim.batch_size)
        return max(full if self._drops_last(n_train) else full + (rest > 0), 1)

    def total_iterations(self, n_train: int) -> int:
        """Optimiser steps of the whole fit."""
        if self.optim.iterations is not None:
            return self.optim.iterations
        return self.batches_per_epoch(n_train) * self.optim.epochs

    def n_epochs(self, n_train: int) -> int:
        """Epochs of the fit (iterations mode: enough epochs to reach the step count)."""
        if self.optim.iterations is None:
            return self.optim.epochs
        return -(-self.optim.iterations // self.batches_per_epoch(n_train))

    def will_train(self, n_train: int) -> bool:
        """Whether :meth:`fit` on ``n_train`` items runs any step (trainable parameters and at least one epoch)."""
        return bool(self.method.trainable_parameters()) and self.n_epochs(n_train) > 0

    def fit(self, train_set: Dataset, feature_views: FeatureViews | None = None) -> FitResult:
        """Run the gradient loop (nothing if the method has no trainable parameters or epochs is 0).

        ``feature_views``: cached features of the training views; used (when ``fast.feature_training`` is on and the
        method trains on features alone) instead of encoding the images of ``train_set``.
        """
        result = FitResult()
        if not self.will_train(len(train_set)):
            return result
        params = self.method.trainable_parameters()
        epochs = self.n_epochs(len(train_set))
        self._source = self.batch_source(train_set, feature_views)
        result.trained_on_features = self._source.on_features
        self._count_next_step = self.count_flops and self._step_fn is None
        optimizer = build_optimizer(self.optim, params.values())
        scaler = torch.amp.GradScaler("cuda", enabled=self.precision == "amp_fp16")
        start_epoch, iteration = self._resume(optimizer, scaler, result)
        self._source.prefetch(sorted({self.fast.view_of_epoch(e) for e in range(start_epoch + 1, epochs + 1)}))
        total = self.total_iterations(len(train_set))
        self._epochs, self._first_epoch = epochs, start_epoch + 1
        saved_at, save_cost = time.perf_counter(), None
        for epoch in range(start_epoch + 1, epochs + 1):
            iteration = self._epoch(epoch, iteration, total, optimizer, scaler, result)
            last = epoch == epochs or (self.optim.iterations is not None and iteration >= self.optim.iterations)
            if last or save_cost is None or time.perf_counter() - saved_at >= CHECKPOINT_SPACING * save_cost:
                start = time.perf_counter()
                self._checkpoint(epoch, iteration, optimizer, scaler, result)
                saved_at = time.perf_counter()
                save_cost = saved_at - start
            if last:
                break
        return result

    def _eta(self, epoch: int, result: FitResult) -> str:
        """``, ETA 1m05s`` for the epochs left at the mean time of this fit's epochs so far ("" after the last)."""
        left = self._epochs - epoch
        done = [entry["time_s"] for entry in result.history if entry["epoch"] >= self._first_epoch]
        if left <= 0 or not done:
            return ""
        seconds = round(left * sum(done) / len(done))
        if seconds < 1:
            return ""
        return f", ETA {seconds // 60}m{seconds % 60:02d}s" if seconds >= 60 else f", ETA {seconds}s"

    def _epoch(self, epoch: int, iteration: int, total: int, optimizer: torch.optim.Optimizer,
               scaler: torch.amp.GradScaler, result: FitResult) -> int:
        seed_everything(derive_seed("epoch", self.seed, epoch))
        self.method.train()
        start = time.perf_counter()
        sums: dict[str, float] = {}
        n_batches = 0
        lr = lr_at(self.optim, epoch, iteration, total)
        for images, labels, _index in self._batches(self._source.epoch_data(self.fast.view_of_epoch(epoch)), epoch):
            if self.optim.iterations is not None and iteration >= self.optim.iterations:
                break
            lr = lr_at(self.optim, epoch, iteration, total)
            set_lr(optimizer, lr)
            out = self._counted_step(to_device(images, self.device), labels.to(self.device), optimizer, scaler, result)
            values = {key: float(value.detach()) for key, value in {"loss": out.loss, **out.aux}.items()}
            if not math.isfinite(values["loss"]) and not scaler.is_enabled():  # fp16: GradScaler skips such steps
                aux = {k: v for k, v in values.items() if k != "loss"}
                raise TrainingDiverged(f"the training loss became {values['loss']} at epoch {epoch}, iteration "
                                       f"{iteration + 1} (aux: {aux}); lower optim.lr, set optim.grad_clip, or check "
                                       "the method's loss weights for this backbone")
            for key, value in values.items():
                sums[key] = sums.get(key, 0.0) + value
            n_batches += 1
            iteration += 1
            result.images_seen += int(labels.shape[0])
        elapsed = time.perf_counter() - start
        result.train_seconds += elapsed
        means = {k: v / max(n_batches, 1) for k, v in sums.items()}
        entry = {"epoch": epoch, "lr": lr, "loss": means.pop("loss", float("nan")), "aux": means,
                 "iterations": iteration, "time_s": round(elapsed, 4)}
        result.history.append(entry)
        self.log(f"epoch {epoch}/{self._epochs}: loss {entry['loss']:.4f} lr {lr:.3g} ({elapsed:.1f}s"
                 f"{self._eta(epoch, result)})")
        return iteration

    def batch_source(self, train_set: Dataset, feature_views: FeatureViews | None = None) -> BatchSource:
        """Cached features of the training views when given and the method trains on features alone
        (``fast.feature_training_for``), else the images of ``train_set``."""
        if feature_views is not None and self.fast.feature_training_for(self.method):
            return FeatureBatches(feature_views)
        return ImageBatches(train_set)

    def _batches(self, train_set: Dataset, epoch: int) -> Iterator:
        loader = self._loader(train_set, epoch)
        if not self.progress:
            return iter(loader)
        from tqdm import tqdm
        return iter(tqdm(loader, desc=f"epoch {epoch}", leave=False))

    def _compiled_step(self) -> Callable:
        return torch.compile(self.method.training_step)

    def _counted_step(self, inputs: torch.Tensor, labels: torch.Tensor, optimizer: torch.optim.Optimizer,
                      scaler: torch.amp.GradScaler, result: FitResult):
        """:meth:`_step`; the first step of a CUDA fit runs under the FLOP counter (which only observes)."""
        if not self._count_next_step:
            return self._step(inputs, labels, optimizer, scaler)
        from torch.utils.flop_counter import FlopCounterMode
        self._count_next_step = False
        with FlopCounterMode(display=False) as counter:
            out = self._step(inputs, labels, optimizer, scaler)
        result.flops_per_image = counter.get_total_flops() / max(int(labels.shape[0]), 1)
        return out

    def _step(self, inputs: torch.Tensor, labels: torch.Tensor, optimizer: torch.optim.Optimizer,
              scaler: torch.amp.GradScaler):
        if self.precision == "fp16":  # pure fp16: cached features (stored fp32, computed fp16) go back to fp16
            inputs = inputs.half()
        with autocast_context(self.device, self.precision):
            out = self._source.step(self.method, self._step_fn)(inputs, labels)
        optimizer.zero_grad(set_to_none=True)
        scaler.scale(out.loss).backward()
        if self.optim.grad_clip is not None:
            scaler.unscale_(optimizer)
            torch.nn.utils.clip_grad_norm_(self.method.trainable_parameters().values(), self.optim.grad_clip)
        scaler.step(optimizer)
        scaler.update()
        return out

    # -- checkpoints ---------------------------------------------------------------------------------------------------
    def _checkpoint(self, epoch: int, iteration: int, optimizer: torch.optim.Optimizer,
                    scaler: torch.amp.GradScaler, result: FitResult) -> None:
        if self.checkpoint_dir is None:
            return
        state = {"epoch": epoch, "iteration": iteration, "method": self.method.state_dict(),
                 "optimizer": optimizer.state_dict(), "scaler": scaler.state_dict(),
                 "history": result.history, "images_seen": result.images_seen,
                 "train_seconds": result.train_seconds}
        atomic.torch_save(self.checkpoint_dir / CHECKPOINT_NAME, state)

    def _resume(self, optimizer: torch.optim.Optimizer, scaler: torch.amp.GradScaler,
                result: FitResult) -> tuple[int, int]:
        path = None if self.checkpoint_dir is None else self.checkpoint_dir / CHECKPOINT_NAME
        if path is None:
            return 0, 0

        def load(file: Path) -> dict:
            state = torch.load(file, map_location=self.device, weights_only=False)
            if not isinstance(state, dict) or not {"epoch", "iteration", "method", "optimizer"} <= set(state):
                raise ValueError("not a checkpoint of this trainer")
            return state
        # truncated or foreign: moved aside, the run starts again rather than fail until the file is deleted
        state = atomic.load_or_quarantine(path, "checkpoint", load, self.log)
        if state is None:
            return 0, 0
        self.method.load_state_dict(state["method"], strict=True)
        optimizer.load_state_dict(state["optimizer"])
        scaler.load_state_dict(state["scaler"])
        result.history = list(state["history"])
        result.images_seen = state["images_seen"]
        result.train_seconds = state["train_seconds"]
        result.resumed_from_epoch = state["epoch"]
        self.log(f"resumed from {path} (epoch {state['epoch']})")
        return state["epoch"], state["iteration"]

    # -- evaluation ---------------------------------------------------------------------------------------------------
    @torch.no_grad()
    def predict(self, dataset: Dataset) -> tuple[torch.Tensor, torch.Tensor]:
        """Predicted and true labels over ``dataset`` (sequential, ``drop_last=False``)."""
        self.method.eval()
        loader = DataLoader(dataset, batch_size=self.optim.eval_batch_size, shuffle=False, collate_fn=collate,
                            num_workers=self.num_workers, pin_memory=self.device.type == "cuda")
        preds, labels = [], []
        for images, target, _index in loader:
            with autocast_context(self.device, self.eval_precision):
                logits = self.method(to_device(images, self.device))
            preds.append(logits.argmax(dim=-1).cpu())
            labels.append(target)
        return torch.cat(preds), torch.cat(labels)

    @torch.no_grad()
    def predict_from_features(self, features: torch.Tensor, labels: torch.Tensor
                              ) -> tuple[torch.Tensor, torch.Tensor]:
        """Predictions of a :class:`~frozen_clip.method.FeatureMethod` on cached features."""
        self.method.eval()
        preds = []
        # cached features are stored in fp32; a pure-fp16 evaluation takes them back to fp16 (exact: they were
        # computed in fp16), as the official code's features never leave fp16
        dtype = torch.float16 if self.eval_precision == "fp16" else features.dtype
        for chunk in features.split(max(self.optim.eval_batch_size, 256)):
            logits = self.method.logits_from_features(chunk.to(self.device, dtype))
            preds.append(logits.argmax(dim=-1).cpu())
        return torch.cat(preds), labels
