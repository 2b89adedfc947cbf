"""Head-only grid benchmark: many head-only runs from one feature pass, against runs that recompute features.

A grid of head-only methods (linear probe, CLIP-Adapter, Tip-Adapter, Tip-Adapter-F) x shots x seeds runs twice
through the real runner (:func:`jobs.executors.execute_run`) on a generated CoOp-layout dataset of JPEG files (by
default 400x300 px with pixel noise, ~60 KB each: a typical photo of the 11 datasets is 300-500 px, and decoding it is
part of what a run that reads its images from files pays per augmented view):

* **reference** (what the official code does): every run encodes every image it needs itself, from the JPEG files:
  CLIP-Adapter through the image tower at every step, Tip-Adapter its augmented passes, every run the test set
  (``fast: {feature_training: false, shared_eval_features: false, image_cache: false, device_normalize: false}``:
  ``ToTensor`` + ``Normalize`` per image in the loader; the methods' own exact
  switches off: the linear probe's ``reuse_fits``, Tip-Adapter's ``batched_search``; a fresh cache folder per run,
  so nothing is shared);
* **suite**: the default fast paths with one shared cache folder: decoded images kept as uint8, each (manifest,
  transform, view) encoded once and reused by every run that needs it, test features shared by every run on the
  same test split, heads trained on cached features.

Both grids produce the same accuracies (checked and reported: the fast paths are exact). Optionally a third path,
**suite + views**, adds the inexact switch ``fast.augment_views: V``: a run reads at most V augmented views of each
image (Tip-Adapter's own cache uses 10 passes), so CLIP-Adapter's 200 epochs need V feature passes instead of 200
and Tip-Adapter-F's epochs reuse its cache passes' views; its accuracies differ from the reference (other training
data) and the difference is reported. ``views_device_augment`` adds the other inexact switch to that path,
``fast.device_augment`` (views resized by torch, not PIL: :mod:`frozen_clip.device_augment`). Wall time of each path
is reported per method, with the number of images each path pushed through the image encoder (counted at
:meth:`FrozenCLIP.encode_image`): on the tiny model an encoding costs less than decoding the JPEG, but on ViT-B/16
it costs ~35 GFLOPs, and the encoding ratio is the speedup the grid tends to when encoding dominates.
"""

from __future__ import annotations

import json
import random
from contextlib import contextmanager
import shutil
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterator

from bench.common import TINY_CONFIG

GRID_METHODS: dict[str, dict[str, Any]] = {
    "linear_probe": {"name": "linear_probe"},
    "clip_adapter": {"name": "clip_adapter"},
    "tip_adapter": {"name": "tip_adapter"},
    "tip_adapter_f": {"name": "tip_adapter", "finetune": True},
}
#: a hyper-parameter sweep of CLIP-Adapter on one split (residual ratio x bottleneck reduction): every run needs the
#: same 200 augmented views, which the reference encodes per run and the suite once for all (exact)
SWEEP_VARIANTS: dict[str, dict[str, Any]] = {
    f"clip_adapter ratio {ratio} reduction {reduction}": {"name": "clip_adapter", "residual_ratio": ratio,
                                                          "reduction": reduction}
    for reduction in (4, 2) for ratio in (0.2, 0.4, 0.6)}
PALETTE = [(220, 30, 30), (30, 200, 40), (40, 60, 220), (230, 200, 30), (200, 40, 200), (30, 200, 210),
           (120, 70, 20), (250, 140, 0), (90, 90, 90), (255, 255, 255)]


def write_dataset(root: Path, n_classes: int, counts: tuple[int, int, int], size: int, seed: int = 0,
                  grain: float = 0.0) -> Path:
    """A CoOp-layout ``caltech101`` (``caltech-101/101_ObjectCategories`` + split JSON) of JPEG files.

    Images are ``size`` x ``3/4 size``: a dark background with a class-coloured rectangle. ``grain`` adds Gaussian
    pixel noise of that standard deviation, so the files compress and decode like photographs (at 400 px and grain 20
    a file is ~60 KB and takes ~0.6 ms to decode; a flat one is 3 KB); decoding is part of what a run that reads its
    images from files pays per view.
    """
    import numpy as np
    from PIL import Image
    rng = random.Random(seed)
    noise = np.random.default_rng(seed)
    base = root / "caltech-101"
    lists: dict[str, list] = {"train": [], "val": [], "test": []}
    for label in range(n_classes):
        name = f"class_{label:03d}"
        for split, count in zip(("train", "val", "test"), counts):
            for i in range(count):
                rel = f"{name}/{split}_{i:04d}.jpg"
                path = base / "101_ObjectCategories" / rel
                path.parent.mkdir(parents=True, exist_ok=True)
                image = Image.new("RGB", (size, size * 3 // 4), tuple(rng.randrange(80) for _ in range(3)))
                x, y = rng.randrange(size // 3), rng.randrange(size // 4)
                image.paste(PALETTE[label % len(PALETTE)], (x, y, x + size // 2, y + size // 3))
                if grain:
                    pixels = np.asarray(image, dtype=np.float32) + noise.normal(0.0, grain, (size * 3 // 4, size, 3))
                    image = Image.fromarray(pixels.clip(0, 255).astype(np.uint8))
                image.save(path, quality=90)
                lists[split].append([rel, label, name])
    (base / "split_zhou_Caltech101.json").write_text(json.dumps(lists))
    return root


@dataclass
class GridResult:
    """Wall time of the grid on both paths, and whether their accuracies agree."""

    runs: int
    seconds_suite: float
    seconds_reference: float
    accuracy_max_delta: float
    methods: tuple[str, ...]
    shots: tuple[int, ...]
    seeds: tuple[int, ...]
    classes: int
    image_px: int
    epoch_overrides: dict[str, int]
    per_method_s: dict[str, dict[str, float]] = field(default_factory=dict)
    images_encoded: dict[str, dict[str, int]] = field(default_factory=dict)  # method -> path -> images
    views: int | None = None  # fast.augment_views of the third path (None: not run)
    seconds_views: float | None = None
    accuracy_views_max_delta: float | None = None  # vs the reference: not exact, other training views
    grain: float = 0.0  # pixel noise of the generated JPEGs (write_dataset)
    run_accuracy: list[dict[str, Any]] = field(default_factory=list)  # per run: label, shots, seed, path -> accuracy
    views_device_augment: bool = False  # the views path also resized its views on the device (fast.device_augment)
    # a fourth path: the views path's switches + fast.shared_views (views drawn per image, one feature pass shared by
    # every split that holds an image); None: not run
    seconds_shared: float | None = None
    accuracy_shared_max_delta: float | None = None  # vs the reference
    train_per_class: int | None = None  # the generated dataset's training pool per class (the splits draw from it)

    @property
    def speedup(self) -> float:
        return self.seconds_reference / self.seconds_suite

    @property
    def speedup_views(self) -> float | None:
        return None if not self.seconds_views else self.seconds_reference / self.seconds_views

    @property
    def speedup_shared(self) -> float | None:
        return None if not self.seconds_shared else self.seconds_reference / self.seconds_shared

    def as_dict(self) -> dict[str, Any]:
        from dataclasses import asdict
        return {**asdict(self), "speedup": self.speedup, "speedup_views": self.speedup_views,
                "speedup_shared": self.speedup_shared}


def _configs(data_root: Path, backbone: str, methods: tuple[str, ...], shots: tuple[int, ...],
             seeds: tuple[int, ...], epochs: dict[str, int], catalogue: dict[str, dict[str, Any]]
             ) -> list[dict[str, Any]]:
    runs = []
    for shot in shots:
        for seed in seeds:
            for label in methods:
                method = dict(catalogue[label])
                if method.get("finetune") and "tip_adapter_f" in epochs:
                    method["train_epoch"] = epochs["tip_adapter_f"]
                cfg = {"method": method, "dataset": "caltech101", "data_root": str(data_root),
                       "backbone": backbone, "pretrained": None, "protocol": "fewshot", "shots": shot,
                       "seed": seed, "device": "cpu", "name": label}
                if method["name"] == "clip_adapter" and "clip_adapter" in epochs:
                    cfg["optim"] = {"epochs": epochs["clip_adapter"]}
                runs.append(cfg)
    return runs


def _execute(cfg: dict[str, Any]) -> dict[str, Any]:
    from jobs.config import resolve
    from jobs.runfolder import read_record, run_dir
    from jobs.executors import execute_run
    from jobs.grid import RunSpec
    resolved = resolve(cfg, "bench grid")
    outcome = execute_run(RunSpec(resolved.run_id, resolved.config, resolved))
    if outcome.status != "done":
        raise RuntimeError(f"bench grid run failed: {outcome.detail}")
    return read_record(run_dir(resolved))


@contextmanager
def counting_encodings(counts: dict[str, int], key: list[str]) -> Iterator[None]:
    """Count the images passed through ``FrozenCLIP.encode_image`` into ``counts[key[0]]`` (instrumentation only:
    the original method runs unchanged)."""
    from frozen_clip.backbone import FrozenCLIP
    original = FrozenCLIP.encode_image

    def counted(self: FrozenCLIP, images: Any, taps: Any = None) -> Any:
        counts[key[0]] = counts.get(key[0], 0) + int(images.shape[0])
        return original(self, images, taps)
    FrozenCLIP.encode_image = counted  # type: ignore[method-assign]
    try:
        yield
    finally:
        FrozenCLIP.encode_image = original  # type: ignore[method-assign]


REFERENCE_FAST = {"feature_training": False, "shared_eval_features": False, "image_cache": False,
                  "device_normalize": False}
# method-side exact switches, off as in the official code
REFERENCE_METHOD = {"linear_probe": {"reuse_fits": False}, "tip_adapter": {"batched_search": False}}


def _verified_ledger(data: Path, ledger: Path) -> Path:
    """A preflight ledger listing every image of the dataset as decodable (see :func:`_copy_ledger`)."""
    from protocols.imagefolder import check_images_with_ledger
    problems = check_images_with_ledger(sorted(data.rglob("*.jpg")), ledger)
    if problems:
        raise RuntimeError(f"the generated bench dataset has unreadable images: {problems[:3]}")
    return ledger


def _copy_ledger(ledger: Path, results: Path) -> None:
    """Both paths start with every image verified, so neither pays the suite's preflight decode (the official code
    has none; a grid's runs after the first pay only a ``stat`` per image)."""
    from jobs.data import LEDGER_NAME
    target = results / "cache" / LEDGER_NAME
    if not target.exists():
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(ledger, target)


def run_grid(methods: tuple[str, ...] = tuple(GRID_METHODS), shots: tuple[int, ...] = (1, 2, 4, 8, 16),
             seeds: tuple[int, ...] = (1, 2, 3), n_classes: int = 10, image_px: int = 400,
             epochs: dict[str, int] | None = None, workdir: Path | None = None,
             log=print, views: int | None = None, catalogue: dict[str, dict[str, Any]] | None = None,
             grain: float = 20.0, views_device_augment: bool = False, shared_views: bool = False,
             train_per_class: int | None = None) -> GridResult:
    """Run the grid on both paths (and the ``views`` path if given, with ``fast.device_augment`` if
    ``views_device_augment``; and the ``shared`` path, the views path + ``fast.shared_views``, if ``shared_views``),
    alternating, and compare time and accuracy.

    ``methods`` are labels of ``catalogue`` (default :data:`GRID_METHODS`; :data:`SWEEP_VARIANTS` for a sweep).
    ``train_per_class``: training images per class the splits are drawn from (default: the most shots + 4); what
    ``fast.shared_views`` saves depends on it, since splits of a small pool share more images."""
    epochs = dict(epochs or {})
    work = Path(workdir or tempfile.mkdtemp(prefix="bench-grid-"))
    pool = train_per_class or max(shots) + 4
    data = write_dataset(work / "data", n_classes, (pool, 4, 20), image_px, grain=grain)
    backbone = work / "bench-tiny.json"
    backbone.write_text(json.dumps(TINY_CONFIG))
    configs = _configs(data, str(backbone), methods, shots, seeds, epochs, catalogue or GRID_METHODS)
    ledger = _verified_ledger(data, work / "ledger.json")
    inexact = {"augment_views": views, **({"device_augment": True} if views_device_augment else {})}
    paths = {"reference": REFERENCE_FAST, "suite": {}, **({"views": inexact} if views else {}),
             **({"shared": {**inexact, "shared_views": True}} if views and shared_views else {})}
    times: dict[str, dict[str, float]] = {path: {"total": 0.0} for path in paths}
    accuracy: dict[str, list[float]] = {path: [] for path in paths}
    _execute({**configs[0], "results_dir": str(work / "warmup"), "seed": 999})  # imports, tokenizer, first call
    encoded: dict[str, int] = {}
    current = [""]
    with counting_encodings(encoded, current):
        for i, cfg in enumerate(configs):  # run by run, alternating paths, so machine load hits both alike
            for path in (list(paths) if i % 2 == 0 else list(paths)[::-1]):
                results = work / path / (f"run{i}" if path == "reference" else "shared")
                run_cfg = {**cfg, "results_dir": str(results), "fast": paths[path]}
                _copy_ledger(ledger, results)
                if path == "reference":
                    run_cfg["method"] = {**cfg["method"], **REFERENCE_METHOD.get(cfg["method"]["name"], {})}
                label = cfg["name"]
                current[0] = f"{label}/{path}"
                start = time.perf_counter()
                record = _execute(run_cfg)
                elapsed = time.perf_counter() - start
                times[path][label] = times[path].get(label, 0.0) + elapsed
                times[path]["total"] += elapsed
                accuracy[path].append(record["summary"]["accuracy"])
    log(f"grid: {len(configs)} runs, " + ", ".join(f"{p} {times[p]['total']:.1f}s" for p in paths))
    shutil.rmtree(work, ignore_errors=True) if workdir is None else None
    def max_delta(path: str) -> float:
        return max(abs(a - b) for a, b in zip(accuracy["reference"], accuracy[path]))
    per_run = [{"run": cfg["name"], "shots": cfg["shots"], "seed": cfg["seed"],
                "accuracy": {path: accuracy[path][i] for path in paths}} for i, cfg in enumerate(configs)]
    return GridResult(len(configs), times["suite"]["total"], times["reference"]["total"], max_delta("suite"),
                      tuple(methods), tuple(shots), tuple(seeds), n_classes, image_px, epochs,
                      {m: {p: round(times[p][m], 2) for p in times} for m in methods},
                      {m: {p: encoded.get(f"{m}/{p}", 0) for p in paths} for m in methods}, views,
                      times["views"]["total"] if views else None, max_delta("views") if views else None, grain,
                      per_run, bool(views and views_device_augment),
                      times["shared"]["total"] if "shared" in paths else None,
                      max_delta("shared") if "shared" in paths else None, pool)
