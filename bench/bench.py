"""``python -m bench.bench`` (or ``python bench/bench.py``): the suite's fast paths against official-style paths.

Four benchmarks, written to ``bench/RESULTS.md`` (and ``--json``) with the machine description:

1. **Training steps** (:mod:`bench.steps`) of HeBA, MMA, CoOp and CLIP-LoRA on ViT-B/16 shapes (random weights, no
   download) and on the tiny model: steps/s and images/s of the suite's path against the reference path (full
   77-token text every step, no caches, same batch and class count), measured side by side in one process and
   reported as ratios; model FLOPs per step (torch's flop counter, open_clip's profiler convention) and MFU against
   the device's dense peak (none on CPU).
2. **Head-only grid** (:mod:`bench.grid`): linear probe, CLIP-Adapter, Tip-Adapter and Tip-Adapter-F x shots x
   seeds through the real runner, sharing one feature pass, against runs that recompute every feature.
3. **Hyper-parameter sweep**: CLIP-Adapter variants on one split, the same comparison where every run needs the
   same views (``--no-sweep`` skips it).
4. **Training views** (:mod:`bench.augment`): the PIL training transform in the loader against
   ``fast.device_normalize`` (exact: ``ToTensor`` + ``Normalize`` on the device) and ``fast.device_augment`` (crop in
   the loader, resize and normalisation on the device), images/s side by side and the pixel difference
   (``--no-augment`` skips it).

``--quick``: the tiny model only, few repeats, a small grid (seconds; what the test runs). Timings on a shared
machine vary: the load average at the start and end is recorded next to the numbers. The raw results behind
``RESULTS.md`` are kept in ``bench/raw/`` (``--json``); ``--from-json`` re-renders the report from them, in the
order given, a later measurement of the same step row replacing an earlier one. The current report::

    python -m bench.bench --out bench/RESULTS.md --from-json bench/raw/2026-11-24-vit_b16.json,\
        bench/raw/2026-11-24b-vit_b16.json,bench/raw/2026-11-24c-tiny.json,bench/raw/2026-11-24d-grid.json,\
        bench/raw/2026-11-24e-tiny-heba.json,bench/raw/2026-11-24f-tiny-tuned.json,\
        bench/raw/2026-11-24g-vit_b16-heba.json,bench/raw/2026-11-24h-vit_b16-tuned.json,\
        bench/raw/2026-11-24i-tiny-heba.json,bench/raw/2026-11-24j-tiny-heba-tuned.json,\
        bench/raw/2026-11-24k-vit_b16-heba-tuned.json,bench/raw/2026-11-24l-vit_b16-heba.json,\
        bench/raw/2026-11-24m-tiny-mma.json,bench/raw/2026-11-24n-tiny-mma-tuned.json,\
        bench/raw/2026-11-24o-vit_b16-mma.json,bench/raw/2026-11-24p-vit_b16-mma-tuned.json,\
        bench/raw/2026-11-24q-tiny-heba-60.json,bench/raw/2026-11-24r-tiny-heba-tuned-60.json,\
        bench/raw/2026-11-25a-grid.json,bench/raw/2026-11-25b-sweep.json,bench/raw/2026-11-25c-grid.json,\
        bench/raw/2026-11-25d-grid.json,bench/raw/2026-11-25e-grid-device.json,bench/raw/2026-11-25f-views.json,\
        bench/raw/2026-11-25g-grid.json,bench/raw/2026-12-02a-grid-pool40.json,bench/raw/2026-12-02b-grid.json

A grid measured on another training pool (``--grid-pool``) than the last one is shown after it.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import math
import os
import sys
from pathlib import Path
from typing import Any

if __package__ in (None, ""):  # ``python bench/bench.py``: make the repository importable
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import torch

from bench.augment import bench_augment
from bench.common import TINY_CONFIG, TUNED_MALLOC, allocator, backbone, machine
from bench.grid import GRID_METHODS, SWEEP_VARIANTS, run_grid
from bench.steps import STEP_METHODS, bench_method

RESULTS = Path(__file__).resolve().parent / "RESULTS.md"


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m bench.bench", description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="tiny model only, few repeats, small grid")
    parser.add_argument("--methods", default=",".join(STEP_METHODS), help="step-benchmark methods")
    parser.add_argument("--backbones", default=None, help="tiny,vit_b16 (default; --quick: tiny)")
    parser.add_argument("--classes", default="100",
                        help="class counts of the step benchmark, comma-separated (1000: ImageNet-sized)")
    parser.add_argument("--repeats", type=int, default=None, help="timed steps per path (default 20 tiny, 2 B/16)")
    parser.add_argument("--device", default="auto", help="auto | cpu | cuda")
    parser.add_argument("--precision", default="fp32", choices=["fp32", "amp_bf16"],
                        help="autocast on CUDA for the step benchmark (CPU: always fp32)")
    parser.add_argument("--no-grid", action="store_true", help="skip the head-only grid")
    parser.add_argument("--no-sweep", action="store_true",
                        help="skip the hyper-parameter sweep (CLIP-Adapter variants on one split)")
    parser.add_argument("--no-steps", action="store_true", help="skip the step benchmark")
    parser.add_argument("--grid-methods", default=",".join(GRID_METHODS), help="head-only grid methods")
    parser.add_argument("--grid-shots", default=None, help="default 1,2,4,8,16 (--quick: 1,2)")
    parser.add_argument("--grid-seeds", default=None, help="default 1,2,3 (--quick: 1)")
    parser.add_argument("--grid-epochs", default=None,
                        help="epoch overrides, e.g. clip_adapter=20,tip_adapter_f=20 (default: the recipes')")
    parser.add_argument("--grid-views", type=int, default=10,
                        help="also run the grid with fast.augment_views=N (inexact, opt-in switch); 0 = skip")
    parser.add_argument("--grid-device-augment", action="store_true",
                        help="the views path also sets fast.device_augment (views resized by torch, not PIL)")
    parser.add_argument("--grid-shared-views", action="store_true",
                        help="also run the views path + fast.shared_views (views drawn per image, shared by splits)")
    parser.add_argument("--grid-pool", type=int, default=None,
                        help="training images per class the grid's splits draw from (default: most shots + 4)")
    parser.add_argument("--no-augment", action="store_true",
                        help="skip the training-view benchmark (PIL transform vs resize on the device)")
    parser.add_argument("--augment-images", type=int, default=None,
                        help="images per pass of the training-view benchmark (default 256; --quick: 32)")
    parser.add_argument("--grid-px", type=int, default=None,
                        help="width of the grid's and the sweep's generated JPEGs (height 3/4 of it); default 400, "
                             "a typical photo of the 11 datasets (--quick: 64)")
    parser.add_argument("--grid-grain", type=float, default=20.0,
                        help="pixel noise of the generated JPEGs, so they compress and decode like photographs "
                             "(0 = flat colour)")
    parser.add_argument("--out", default=str(RESULTS), help="Markdown results file ('' = none)")
    parser.add_argument("--json", default=None, help="also write the raw results as JSON")
    parser.add_argument("--from-json", default=None,
                        help="only re-render --out from saved --json files (comma-separated: merged in order; "
                             "bench/raw/ holds the files behind RESULTS.md)")
    parser.add_argument("--allocator", default="default", choices=["default", "tuned"],
                        help="tuned: re-run this command under glibc settings that keep freed memory in the process "
                             "(bench.common.TUNED_MALLOC); the step rows record which one they ran under")
    parser.add_argument("--tiny-threads", type=int, default=1,
                        help="torch threads for the tiny model (its ops are too small to parallelise; on a shared "
                             "machine two spinning threads make timings erratic); 0 = leave as is")
    return parser.parse_args(argv)


def _ints(text: str) -> tuple[int, ...]:
    return tuple(int(x) for x in text.split(",") if x)


def _epochs(text: str | None) -> dict[str, int]:
    if not text:
        return {}
    pairs = (item.split("=") for item in text.split(",") if item)
    return {key: int(value) for key, value in pairs}


def run(args: argparse.Namespace, log=print) -> dict[str, Any]:
    """Run the selected benchmarks; returns the raw results (also written to ``--out``/``--json``)."""
    device = torch.device("cuda" if args.device == "auto" and torch.cuda.is_available() else
                          ("cpu" if args.device == "auto" else args.device))
    results: dict[str, Any] = {"started": dt.datetime.now().isoformat(timespec="seconds"),
                               "machine": machine(), "device": str(device), "quick": bool(args.quick),
                               "steps": [], "grid": None, "sweep": None, "augment": [], "threads": {}}
    default_threads = torch.get_num_threads()
    try:
        if not args.no_steps:
            results["steps"] = _step_rows(args, device, default_threads, results, log)
        if not args.no_grid:
            _threads("tiny", args.tiny_threads, default_threads, results)  # the grid runs the tiny model
            results["grid"] = _grid(args, log)
        if not args.no_sweep:
            _threads("tiny", args.tiny_threads, default_threads, results)
            results["sweep"] = _sweep(args, log)
        if not args.no_augment:
            torch.set_num_threads(1)  # a loader worker's share of the machine (workers run one thread each)
            results["threads"]["augment"] = 1
            results["augment"] = _augment(args, device, log)
    finally:
        torch.set_num_threads(default_threads)
    results["finished"] = dt.datetime.now().isoformat(timespec="seconds")
    results["load_average_end"] = machine()["load_average"]
    if args.out:
        Path(args.out).write_text(report(results))
    if args.json:
        Path(args.json).write_text(json.dumps(results, indent=1, default=str))
    return results


def _step_rows(args: argparse.Namespace, device: torch.device, default_threads: int, results: dict[str, Any],
               log) -> list[dict[str, Any]]:
    rows = []
    for name in (args.backbones or ("tiny" if args.quick else "tiny,vit_b16")).split(","):
        _threads(name, args.tiny_threads, default_threads, results)
        clip = backbone(name, device)
        repeats = args.repeats or (3 if args.quick else (20 if name == "tiny" else 2))
        for classes in _ints(args.classes):
            for method, cached in _variants(args.methods.split(",")):
                log(f"step benchmark: {method}{' (cached views)' if cached else ''} on {name} "
                    f"({classes} classes, {repeats} repeats)")
                with _autocast(device, args.precision):
                    row = bench_method(method, name, clip, classes, repeats, precision=args.precision,
                                       cached_features=cached)
                log(f"  suite {row.seconds_fast:.4f}s  reference {row.seconds_reference:.4f}s  x{row.speedup:.2f}")
                rows.append({**row.as_dict(), "allocator": results["machine"]["allocator"]})  # for merges
    return rows


def _dataset(args: argparse.Namespace) -> dict[str, Any]:
    """The generated dataset of the grid and the sweep: classes, image width and grain."""
    return {"n_classes": 4 if args.quick else 10, "image_px": args.grid_px or (64 if args.quick else 400),
            "grain": args.grid_grain}


def _grid(args: argparse.Namespace, log) -> dict[str, Any]:
    shots = _ints(args.grid_shots or ("1,2" if args.quick else "1,2,4,8,16"))
    seeds = _ints(args.grid_seeds or ("1" if args.quick else "1,2,3"))
    epochs = _epochs(args.grid_epochs) or ({"clip_adapter": 3, "tip_adapter_f": 2} if args.quick else {})
    methods = tuple(args.grid_methods.split(","))
    log(f"head-only grid: {list(methods)} x shots {shots} x seeds {seeds}")
    grid = run_grid(methods, shots, seeds, **_dataset(args), epochs=epochs, log=log, views=args.grid_views or None,
                    views_device_augment=args.grid_device_augment, shared_views=args.grid_shared_views,
                    train_per_class=args.grid_pool)
    return grid.as_dict()


def _sweep(args: argparse.Namespace, log) -> dict[str, Any]:
    """CLIP-Adapter's hyper-parameter variants on one split (16 shots, seed 1; --quick: 2 variants, 3 epochs)."""
    variants = tuple(SWEEP_VARIANTS)[:2] if args.quick else tuple(SWEEP_VARIANTS)
    epochs = {"clip_adapter": 3} if args.quick else {}
    log(f"hyper-parameter sweep: {len(variants)} CLIP-Adapter variants on one split")
    sweep = run_grid(variants, (2 if args.quick else 16,), (1,), **_dataset(args), epochs=epochs, log=log,
                     catalogue=SWEEP_VARIANTS)
    return sweep.as_dict()


def _augment(args: argparse.Namespace, device: torch.device, log) -> list[dict[str, Any]]:
    """Training views at the ViT-B/16 and the tiny model's input sizes: PIL in the loader vs resize on the device."""
    rows = []
    data = _dataset(args)
    for size in (224, TINY_CONFIG["vision_cfg"]["image_size"]):
        row = bench_augment(size, device, n_images=args.augment_images or (32 if args.quick else 256),
                            image_px=data["image_px"], grain=data["grain"], repeats=2 if args.quick else 8)
        log(f"training views at {size} px: PIL {row.seconds_pil:.3f}s, device normalise {row.seconds_normalize:.3f}s "
            f"(equal: {row.normalize_equal}), device augment {row.seconds_device:.3f}s x{row.speedup:.2f}, "
            f"|diff| mean {row.mean_levels:.3f} max {row.max_levels:.0f} levels")
        rows.append(row.as_dict())
    return rows


def _threads(backbone_name: str, tiny_threads: int, default: int, results: dict[str, Any]) -> None:
    """Set (and record) the torch thread count for a backbone's benchmark."""
    threads = tiny_threads if backbone_name == "tiny" and tiny_threads > 0 else default
    torch.set_num_threads(threads)
    results["threads"][backbone_name] = threads


def _variants(methods: list[str]) -> list[tuple[str, bool]]:
    """Each method once; CoOp also with its batch's features from the per-view cache (bench.steps docstring)."""
    out = []
    for method in methods:
        out.append((method, False))
        if method == "coop":
            out.append((method, True))
    return out


class _autocast:
    """bf16 autocast on CUDA when asked; nothing on CPU (bf16 is slower than fp32 there)."""

    def __init__(self, device: torch.device, precision: str) -> None:
        self.ctx = (torch.autocast("cuda", dtype=torch.bfloat16)
                    if device.type == "cuda" and precision == "amp_bf16" else None)

    def __enter__(self) -> None:
        if self.ctx is not None:
            self.ctx.__enter__()

    def __exit__(self, *exc: Any) -> None:
        if self.ctx is not None:
            self.ctx.__exit__(*exc)


# -- report -----------------------------------------------------------------------------------------------------------
def _fmt(value: Any, digits: int = 3) -> str:
    if value is None:
        return "n/a"
    if isinstance(value, float):
        return f"{value:.{digits}g}" if abs(value) < 1000 else f"{value:,.0f}"
    return str(value)


def _tokens(row: dict[str, Any]) -> str:
    """The suite's text length: the longest prompt, and the mean positions per prompt when length-bucketed."""
    mean = row.get("text_positions_fast")
    return f"{row['text_tokens_fast']}" + ("" if mean is None else f" ({mean:.1f} avg)")


def step_table(rows: list[dict[str, Any]]) -> str:
    """The step benchmark as a Markdown table."""
    head = ("| backbone | method | classes | batch | malloc | text tokens (suite / ref) | suite s/step | ref s/step | "
            "**speedup** | suite img/s | ref img/s | GFLOP/step (suite / ref) | FLOP ratio | MFU suite / ref | "
            "peak MiB (suite / ref) | |Δ loss| |\n|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|")
    lines = [head]
    for r in rows:
        lines.append(
            f"| {r['backbone']} | {r['method']}{' (cached views)' if r.get('cached_features') else ''} | "
            f"{r['classes']} | {r['batch']} | {r.get('allocator', 'default')} | {_tokens(r)} / "
            f"{r['text_tokens_reference']} | {_fmt(r['seconds_fast'])} | {_fmt(r['seconds_reference'])} | "
            f"**{r['speedup']:.2f}x** | {_fmt(r['images_per_s_fast'])} | {_fmt(r['images_per_s_reference'])} | "
            f"{r['flops_fast'] / 1e9:.1f} / {r['flops_reference'] / 1e9:.1f} | "
            f"{r['flops_reference'] / r['flops_fast']:.2f} | {_fmt(r['mfu_fast'])} / "
            f"{_fmt(r['mfu_reference'])} | {_fmt(r['peak_mb_fast'])} / {_fmt(r['peak_mb_reference'])} | "
            f"{r['loss_delta']:.1e} |")
    return "\n".join(lines)


def _grid_paths(grid: dict[str, Any]) -> list[tuple[str, str]]:
    """``(path, column title)`` of the paths besides the reference that a grid result has."""
    device = " + device resize" if grid.get("views_device_augment") else ""
    paths = [("suite", "suite s")]
    if grid.get("views"):
        paths.append(("views", f"suite + {grid['views']} views{device} s"))
    if grid.get("seconds_shared"):
        paths.append(("shared", f"suite + {grid['views']} views{device} + shared views s"))
    return paths


def grid_table(grid: dict[str, Any]) -> str:
    """The head-only grid as a Markdown table: time and speedup of each path, images each encoded."""
    paths = _grid_paths(grid)
    names = ["reference", *(path for path, _ in paths)]
    encoded = grid.get("images_encoded") or {}
    lines = ["| method | runs | reference s |" + "".join(f" {title} | speedup |" for _, title in paths)
             + " images encoded (" + " / ".join(_ENCODED_NAMES.get(n, n) for n in names) + ") |",
             "|---|---|---|" + "---|---|" * len(paths) + "---|"]
    per_method_runs = grid["runs"] // max(len(grid["methods"]), 1)

    def ratio(reference: float, other: float) -> str:
        return f"{reference / other:.2f}x" if other else "n/a"
    for method, t in grid["per_method_s"].items():
        row = f"| {method} | {per_method_runs} | {t['reference']:.1f} |"
        row += "".join(f" {t[path]:.1f} | {ratio(t['reference'], t[path])} |" for path, _ in paths)
        counts = encoded.get(method, {})
        lines.append(row + " " + " / ".join(f"{counts.get(n, 0):,}" for n in names) + " |")
    seconds = {"suite": grid["seconds_suite"], "views": grid.get("seconds_views"),
               "shared": grid.get("seconds_shared")}
    total = f"| **all** | {grid['runs']} | {grid['seconds_reference']:.1f} |" + "".join(
        f" {seconds[path]:.1f} | **{grid['seconds_reference'] / seconds[path]:.2f}x** |" for path, _ in paths)
    sums = {n: sum(c.get(n, 0) for c in encoded.values()) for n in names}
    total += " " + " / ".join(f"{sums[n]:,}" for n in names)
    if encoded and all(sums[path] for path, _ in paths):
        total += " (ratio " + " / ".join(f"{sums['reference'] / sums[path]:.1f}x" for path, _ in paths) + ")"
    lines.append(total + " |")
    return "\n".join(lines)


_ENCODED_NAMES = {"reference": "ref"}


def _thread_text(results: dict[str, Any], m: dict[str, Any]) -> str:
    threads = results.get("threads") or {}
    if not threads:
        return str(m["torch_threads"])
    return ", ".join(f"{k} {v}" for k, v in threads.items())


#: what the grid's columns say, and what a 20x grid would need
GRID_READING = (
    "Reading the grid: the last column counts the images each path passed through the image tower. For "
    "every augmented view the reference decodes a JPEG and then crops and resizes it; the suite decodes "
    "each split once and only crops and resizes. That is most of the exact path's gain on CLIP-Adapter, "
    "whose 200 epochs of fresh views dominate the count and which an exact cache cannot reuse, neither "
    "within a run (each epoch draws a new view) nor across this grid's runs (views are drawn per split "
    "manifest, and every run here has its own shots and seed; runs on one split share them, see the sweep"
    " below). A cached view even holds every training item, including those the reference's dropped last "
    "batch leaves out. The exact path also saves the linear probe's and Tip-Adapter(-F)'s feature passes "
    "(test features shared by every run, un-augmented train features by runs on the same split) and part "
    "of the methods' own work (17 L-BFGS fits of the linear probe's C search instead of the official 23; "
    "Tip-Adapter's 4000-point alpha/beta search in batches). With the views switch, what is left is work "
    "per run that the switch does not touch: the linear probe's fits, Tip-Adapter's own augmented cache "
    "passes over its split, CLIP-Adapter's views of its split and its epochs of head training, evaluation"
    " and bookkeeping. The shared-views path removes most of what is left of the feature work: a view is "
    "drawn per image, so the 15 splits' views are encoded once for the images they hold together (each "
    "image's views in one pass, each image decoded once) and the linear probe's and Tip-Adapter's plain "
    "train and val features are shared too; its encoding count includes the zero rows that pad each "
    "pass's last batch to the fixed size that makes a stored row independent of its batch. What remains "
    "is the methods' own work (the linear probe's fits, CLIP-Adapter's 200 epochs of head training, "
    "Tip-Adapter's search), evaluation and per-run bookkeeping. The price is in the data: runs that share "
    "an image share its crops, seed replicates included, so this path is an opt-in switch and part of the "
    "run id.")


def report(results: dict[str, Any]) -> str:
    """``RESULTS.md``: machine, how to reproduce, the tables."""
    m = results["machine"]
    out = [
        "# Benchmark results", "",
        f"Generated by `python -m bench.bench{' --quick' if results['quick'] else ''}` on {results['started']} "
        f"(finished {results['finished']}).", "",
        f"Machine: {m['cpu']}, {m['cpu_count']} CPUs, torch threads {_thread_text(results, m)}, "
        f"GPU: {m['gpu'] or 'none'};"
        f" {m['platform']}; Python {m['python']}, torch {m['torch']}. Device used: {results['device']}. "
        f"Load average (1/5/15 min) at start {m['load_average']}, at end {results['load_average_end']} "
        "(the machine is shared: other processes compete for the cores).", "",
    ]
    if len(results.get("runs", [])) > 1:
        out += ["Merged from separate invocations: " + "; ".join(
            f"{r['started']} to {r['finished']} (load {r['load_start']} -> {r['load_end']}, threads {r['threads']})"
            for r in results["runs"]) + ".", ""]
    if results["steps"]:
        out += ["## Training steps: suite path vs official-style reference", "",
                "Reference: the same method and weights on a backbone that encodes every prompt at the full 77-token "
                "context every step, with the method's fast-path flags off (what the official implementations do); "
                "same batch, labels, class count and RNG seed per step. One step = `training_step` + backward + "
                "SGD step. Median over the timed repeats, the two paths interleaved in one process. GFLOP/step: "
                "torch's flop counter on one step (open_clip's profiler convention: 2 FLOPs per multiply-add, "
                "attention included); FLOP ratio = reference / suite FLOPs, the speedup to expect if time followed "
                "FLOPs; "
                "MFU = the suite path's model FLOPs / time / the device's dense peak "
                "(n/a on CPU: no meaningful peak). |Δ loss|: first-step loss of the two paths (exactness check; "
                "CLIP-LoRA's dropout masks differ in shape between the paths, so its losses differ slightly).", "",
                step_table(results["steps"]), "",
                "Reading the table: an exact fast path can only remove work the reference does for nothing "
                "(padding positions after each prompt's EOT, image encodings already done by an earlier pass). "
                "The FLOP ratio is the speedup if time followed FLOPs; where the measured speedup exceeds it, the "
                "removed work (77-token text batches) ran at fewer FLOP/s than the work that remains. HeBA samples "
                "at most 6 x batch = 96 classes per step and runs 16 images through 12 adapted blocks whose adapters "
                "at the 4D-wide MLP hidden state cost about as much as the frozen blocks, so text is a minority of "
                "its FLOPs at any class count; it groups the step's prompts by length into up to 3 batches "
                "(`text_buckets`; the token column gives the longest prompt and the mean positions per prompt, "
                "counting shared positions once), "
                "which cuts its text FLOPs by about a third (ViT-B/16 step 16.1 s -> 14.0 s against one batch in a "
                "side-by-side check) but adds a text-tower pass per bucket, so on the tiny model, whose millisecond "
                "steps are dominated by per-operation overhead, it gains only about 5 %; and it runs the positions "
                "every prompt shares (`[SOS] a photo of a`, 5 of them) once for all prompts (`share_text_prefix`: "
                "tiny step 22.3 -> 19.7 ms, ViT-B/16 17.6 -> 16.6 s in side-by-side checks). "
                "HeBA's image work (2700 GFLOP of its 3088, measured alone) caps the FLOP ratio of any exact path "
                "on ViT-B/16 shapes at 1.87x (5043 / 2700), text for free; time can beat that only where the "
                "removed work ran slower per FLOP than what remains. MMA's branches are per token too, so it "
                "encodes its all-class prompts the same way (`text_buckets`, `share_text_prefix`; `a photo of a "
                "{}.` shares 5 positions). CoOp encodes "
                "its shared `[SOS] + context` positions once for all classes (`shared_prefix`; the token column gives "
                "the full prompt length), and its image encoder is frozen: with the batch's features read from the "
                "per-view cache (the runner's `fast.feature_training`, views shared by every run on the same split) "
                "its step is text only. With 1000 classes (ImageNet-sized) the reference encodes 1000 prompts at 77 "
                "tokens every step, so the ratios of the methods that encode every class (CoOp, MMA, CLIP-LoRA) grow; "
                "HeBA's do not, because it encodes only the classes it samples for the step. On the tiny model the "
                "steps take milliseconds and Python overhead weighs more than FLOPs. The malloc column is the "
                "allocator both paths ran under: `default` is glibc as a Python process starts (what an official "
                "script gets), `tuned` keeps freed memory in the process (`--allocator tuned`). Under the defaults "
                "every tensor over the mmap threshold (at most 32 MiB) is mapped fresh and faulted in page by page; "
                "the reference's 77-token batches cross it (ViT-B/16's MLP on 96 prompts: 87 MiB; the tiny model's "
                "on 1000), the suite's shorter ones mostly do not, so part of a `default` ratio is the reference "
                "paying the kernel, and the `tuned` rows are the conservative comparison.", ""]
    if results["grid"]:
        g = results["grid"]
        out += ["## Head-only grid: one feature pass vs recomputing features", "",
                f"{', '.join(g['methods'])} x shots {list(g['shots'])} x seeds {list(g['seeds'])} "
                f"({g['runs']} runs) on a generated {g['classes']}-class dataset of {_images(g)}, tiny "
                f"model, through the real runner. Epoch overrides: {g['epoch_overrides'] or 'none (the recipes)'}. "
                "Reference: every run decodes and encodes every image it needs itself (no shared caches, `ToTensor` + "
                "`Normalize` per image in the loader, CLIP-Adapter through the image tower every step) and the "
                "methods' own exact switches are off (the linear probe "
                "refits, Tip-Adapter searches in the official double loop). Suite: the default fast paths, one "
                "shared cache. Both start with every image in the preflight ledger (the official code has no "
                "preflight, so neither path pays one). Runs "
                f"alternate between the paths. Largest accuracy difference between the paths: "
                f"{g['accuracy_max_delta']:.2g} points{_largest_at(g, 'suite')}." + (
                    f" Suite + {g['views']} views: the inexact opt-in switch `fast.augment_views: {g['views']}` "
                    "(a run reads at most that many augmented views of each image: CLIP-Adapter's 200 epochs and "
                    "Tip-Adapter-F's cycle through them; other training data, so accuracies differ from the "
                    f"reference by up to {g['accuracy_views_max_delta']:.2g} points{_largest_at(g, 'views')})"
                    + (", with `fast.device_augment` too (views resized by torch on the device)"
                       if g.get("views_device_augment") else "") + "."
                    if g.get("views") else "") + _shared_text(g), "", grid_table(g), "",
                GRID_READING]
        for other in results.get("other_pools") or []:
            out += ["", *other_pool_section(g, other)]
    if results.get("sweep"):
        out += ["", *sweep_section(results["sweep"])]
    if results.get("augment"):
        out += ["", *augment_section(results["augment"])]
    return "\n".join(out)


def augment_section(rows: list[dict[str, Any]]) -> list[str]:
    """Training views: the PIL transform in the loader vs ``fast.device_normalize`` and ``fast.device_augment``."""
    first = rows[0]
    lines = ["## Training views: PIL in the loader vs normalising or resizing on the device", "",
             f"One pass of augmented training views over {first['images']} decoded images, the grid's "
             f"{_images(first)}, in batches of 32 ending as the float batch on the device ({first['device']}), one "
             "torch thread (a loader worker's share). PIL: the protocol's transform per image in the loader "
             "(`RandomResizedCrop` bicubic + flip + `ToTensor` + `Normalize`), what the official loaders run. "
             "Normalise: `fast.device_normalize` (on by default; the PIL crop and flip in the loader, `ToTensor` + "
             "`Normalize` on the uint8 batch on the device; exact: its batches equal the PIL path's, checked in each "
             "run of the bench). Device: `fast.device_augment` (the same crop boxes and flips drawn in the loader, the "
             "crop resized by torch's antialiased bicubic kernel and normalised on the device). Median of "
             "interleaved passes; |diff|: the PIL and device-augmented batches of the same views compared, in levels "
             "of 255 (not exact, hence an opt-in switch that is part of the run id).", "",
             "| output px | PIL images/s | normalise images/s | speedup (equal) | device images/s | speedup "
             "| mean \\|diff\\| | max \\|diff\\| |",
             "|---|---|---|---|---|---|---|---|"]
    for r in rows:
        normalize = (f"{r['images_per_s_normalize']:.0f} | **{r['speedup_normalize']:.2f}x** "
                     f"({'yes' if r['normalize_equal'] else 'NO'})" if "speedup_normalize" in r else "- | -")
        lines.append(f"| {r['size']} | {r['images_per_s_pil']:.0f} | {normalize} | {r['images_per_s_device']:.0f} | "
                     f"**{r['speedup']:.2f}x** | {r['mean_levels']:.3f} | {r['max_levels']:.0f} |")
    if first["device"] == "cpu":
        lines += ["", "On CPU all paths use the same core. Normalising the batch at once is cheaper than per image; "
                  "the device-augmented path is faster still because torch's uint8 resize kernel (vectorised) beats "
                  "PIL's. On a GPU that work leaves the loader's cores altogether; not measured here (no GPU)."]
    return lines


def _largest_at(g: dict[str, Any], path: str) -> str:
    """``: run k-shot seed s, reference vs path`` where ``path``'s accuracy is furthest from the reference's ('' if
    none differs or the results predate per-run accuracies)."""
    runs = g.get("run_accuracy") or []
    deltas = [abs(r["accuracy"][path] - r["accuracy"]["reference"]) for r in runs]
    if not deltas or max(deltas) == 0:
        return ""
    r = runs[deltas.index(max(deltas))]
    return f": {r['run']} {r['shots']}-shot seed {r['seed']}, {r['accuracy']['reference']:.1f} vs " \
           f"{r['accuracy'][path]:.1f}"


def other_pool_section(grid: dict[str, Any], other: dict[str, Any]) -> list[str]:
    """The head-only grid measured on another training pool than ``grid``: what changes, and its table."""
    return [f"### The same grid on a training pool of {_pool(other)} images per class", "",
            f"Splits drawn from {_pool(other)} training images per class instead of {_pool(grid)} (Caltech101, "
            "Flowers102, FGVC-Aircraft, Stanford Cars and SUN397 have 33-41 per class), so they share fewer images; "
            "measured in another invocation, all paths side by side as above. Largest accuracy difference of the exact "
            f"path: {other['accuracy_max_delta']:.2g} points. " + _pool_comparison(grid, other), "",
            grid_table(other)]


def _pool_comparison(grid: dict[str, Any], other: dict[str, Any]) -> str:
    """How the shared-views path's encodings and time changed from ``grid``'s pool to ``other``'s."""
    if not (grid.get("seconds_shared") and other.get("seconds_shared")):
        return ""
    def encoded(g: dict[str, Any]) -> int:
        return sum(c.get("shared", 0) for c in (g.get("images_encoded") or {}).values())
    return (f"The shared-views path encodes {encoded(other) / encoded(grid):.2f}x the images it encodes on the pool "
            f"of {_pool(grid)} and takes {other['seconds_shared'] / grid['seconds_shared']:.2f}x the time (speedup "
            f"{other['speedup_shared']:.1f}x against {grid['speedup_shared']:.1f}x): on the tiny model an encoding "
            "costs less than the methods' own work per run; on ViT-B/16, ~35 GFLOPs per image, the encoding counts "
            "are the better guide.")


def _shared_text(g: dict[str, Any]) -> str:
    """What the grid's shared-views path is (empty if it did not run)."""
    if not g.get("seconds_shared"):
        return ""
    pool = _pool(g)
    return (" Suite + views + shared views: the views path's switches and `fast.shared_views` (view v of an image is "
            "drawn under a seed of the image instead of the split, so every split that holds an image reuses its "
            "features: one feature pass for all shots, seeds and methods; its accuracies differ from the reference"
            f" by up to {g['accuracy_shared_max_delta']:.2g} points{_largest_at(g, 'shared')})."
            + (f" The splits draw from {pool} training images per class, so they share many of them; the larger the "
               "pool, the fewer they share, and the more this path encodes." if pool else ""))


def _images(g: dict[str, Any]) -> str:
    """The generated images, as the report names them."""
    size = f"{g['image_px']}x{g['image_px'] * 3 // 4} px JPEGs"
    return size + (f" with pixel noise of std {g['grain']:g} (photo-like files)" if g.get("grain") else
                   " (flat colour)")


def sweep_section(sweep: dict[str, Any]) -> list[str]:
    """The hyper-parameter sweep: the exact path's case, many runs on one split."""
    return ["## Hyper-parameter sweep on one split: the exact path's case", "",
            f"{len(sweep['methods'])} CLIP-Adapter variants (residual ratio x bottleneck reduction) on one "
            f"{list(sweep['shots'])[0]}-shot split (seed {list(sweep['seeds'])[0]}) of the same generated dataset, "
            f"epoch overrides: {sweep['epoch_overrides'] or 'none (200 epochs)'}; reference and suite paths as in "
            "the grid above, exact switches only. Every variant trains on the same "
            f"{sweep['epoch_overrides'].get('clip_adapter', 200)} augmented views (a view is a "
            "function of the split, not of the run), so the suite encodes them once for all and each run trains "
            "its head on cached features, while the reference pushes every view of every run through the image "
            "tower. Largest accuracy difference between the paths: "
            f"{sweep['accuracy_max_delta']:.2g} points{_largest_at(sweep, 'suite')}.", "", grid_table(sweep), "",
            _sweep_reading(sweep)]


def _sweep_reading(sweep: dict[str, Any]) -> str:
    """What one more variant costs each path, and the sweep size at which the ratio passes 20x (projected)."""
    times = list(sweep["per_method_s"].values())
    if len(times) < 2:
        return ""
    first, rest = times[0]["suite"], [t["suite"] for t in times[1:]]
    later, reference = sum(rest) / len(rest), sum(t["reference"] for t in times) / len(times)
    text = (f"Reading the sweep: the first variant pays for the views ({first:.1f} s); each further one costs the "
            f"suite {later:.2f} s against the reference's {reference:.1f} s ({reference / later:.0f}x), so the "
            "sweep's ratio grows towards that with its size")
    if reference > 20 * later:
        needed = math.ceil(20 * (first - later) / (reference - 20 * later))
        text += f" (projected from these times: 20x from {needed} variants on one split)"
    return text + "."


def _pool(grid: dict[str, Any]) -> int | None:
    """Training images per class a grid's splits drew from (older results: the most shots + 4)."""
    return grid.get("train_per_class") or (max(grid["shots"]) + 4 if grid.get("shots") else None)


def merge(parts: list[dict[str, Any]]) -> dict[str, Any]:
    """Several saved results as one (steps concatenated, the last grid and sweep, the first machine description).

    A step row measured again in a later part (same backbone, method, class count, feature caching and allocator)
    replaces the earlier one, in the earlier one's place: re-measuring one method does not mean re-running the rest.
    """
    merged = dict(parts[0])
    rows: dict[tuple, dict[str, Any]] = {}
    for part in parts:
        for row in part["steps"]:
            rows[(row["backbone"], row["method"], row["classes"], row.get("cached_features", False),
                  row.get("allocator", "default"))] = row
    merged["steps"] = list(rows.values())
    merged["grid"] = next((p["grid"] for p in reversed(parts) if p["grid"]), None)
    # grids measured on another training pool than the last one: the latest of each pool, shown after it
    pools = {_pool(p["grid"]): p["grid"] for p in parts if p["grid"]}
    merged["other_pools"] = [g for pool, g in pools.items() if merged["grid"] and pool != _pool(merged["grid"])]
    merged["sweep"] = next((p["sweep"] for p in reversed(parts) if p.get("sweep")), None)
    merged["augment"] = next((p["augment"] for p in reversed(parts) if p.get("augment")), [])
    merged["finished"] = parts[-1]["finished"]
    merged["load_average_end"] = parts[-1]["load_average_end"]
    merged["quick"] = all(p["quick"] for p in parts)
    merged["threads"] = {k: v for p in parts for k, v in (p.get("threads") or {}).items()}
    merged["runs"] = [{"started": p["started"], "finished": p["finished"], "load_start": p["machine"]["load_average"],
                       "load_end": p["load_average_end"], "threads": p.get("threads")} for p in parts]
    return merged


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if args.from_json:
        Path(args.out).write_text(report(merge([json.loads(Path(p).read_text())
                                                for p in args.from_json.split(",")])))
        return 0
    if args.allocator == "tuned" and allocator() != "tuned":
        # glibc reads these settings at start-up only: run the same command again under them
        os.execve(sys.executable, [sys.executable, *sys.orig_argv[1:]], {**os.environ, **TUNED_MALLOC})
    run(args)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
