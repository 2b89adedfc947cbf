"""The benchmark runs end to end in --quick mode on the tiny model and writes its report (timings are never
asserted: they depend on the machine and its load)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

from bench.bench import _largest_at, merge, other_pool_section, parse_args, report, run
from bench.bench import _pool as bench_pool

REPO = Path(__file__).resolve().parent.parent


def test_quick_bench_writes_the_report_structure(tmp_path):
    out, raw = tmp_path / "RESULTS.md", tmp_path / "results.json"
    args = parse_args(["--quick", "--methods", "heba,coop", "--classes", "100,120", "--repeats", "1",
                       "--grid-methods", "clip_adapter", "--grid-shots", "1,2", "--grid-epochs", "clip_adapter=2",
                       "--grid-shared-views",
                       "--out", str(out), "--json", str(raw)])
    results = run(args, log=lambda _msg: None)
    rows = results["steps"]
    variants = [("heba", False), ("coop", False), ("coop", True)]
    assert [(r["classes"], r["method"], r["cached_features"]) for r in rows] == [
        (n, *v) for n in (100, 120) for v in variants]
    for row in rows:
        assert row["backbone"] == "tiny"
        assert row["seconds_fast"] > 0 and row["seconds_reference"] > 0 and row["speedup"] > 0
        assert row["text_tokens_reference"] == 77 and row["text_tokens_fast"] < 77
        assert row["flops_reference"] > row["flops_fast"] > 0  # the reference runs 77-token prompts
        assert row["loss_delta"] < 1e-5  # same weights, same seed: the fast path is exact
        assert row["mfu_fast"] is None and row["peak_mb_fast"] is None  # CPU: no peak, no per-call memory
        assert row["allocator"] == "default"
    grid = results["grid"]
    assert grid["runs"] == 2 and grid["accuracy_max_delta"] < 1e-9 and grid["views"] == 10
    assert set(grid["per_method_s"]) == {"clip_adapter"} and grid["speedup_views"] > 0 and grid["speedup_shared"] > 0
    assert [(r["run"], r["shots"], r["seed"]) for r in grid["run_accuracy"]] == [("clip_adapter", 1, 1),
                                                                                 ("clip_adapter", 2, 1)]
    assert set(grid["run_accuracy"][0]["accuracy"]) == {"reference", "suite", "views", "shared"}
    counts = grid["images_encoded"]["clip_adapter"]
    assert min(counts.values()) > 0 and set(counts) == {"reference", "suite", "views", "shared"}
    # shared views: each run encodes the 2 views it reads of the images no earlier run encoded in one pass, padded to
    # one batch (the eval batch, 100); with the 80 test images, that is all it encodes
    assert grid["train_per_class"] == 6 and counts["shared"] == 2 * 100 + 4 * 20
    sweep = results["sweep"]
    assert sweep["runs"] == 2 and sweep["accuracy_max_delta"] < 1e-9 and sweep["views"] is None
    first, second = sweep["images_encoded"].values()  # the suite encodes for the first variant only
    assert first["suite"] == first["reference"] == second["reference"] > 0 and second["suite"] == 0
    views = results["augment"]
    assert [r["size"] for r in views] == [224, 32] and results["threads"]["augment"] == 1
    for row in views:  # same crops on both paths: a wrong box would be tens of levels off on average
        assert row["images"] == 32 and row["speedup"] > 0 and row["mean_levels"] < 1.0
        assert row["normalize_equal"] and row["speedup_normalize"] > 0  # device_normalize: the PIL path's tensors
    text = out.read_text()
    for heading in ("# Benchmark results", "## Training steps", "## Head-only grid", "## Hyper-parameter sweep",
                    "## Training views", "Load average", "coop (cached"):
        assert heading in text
    assert json.loads(raw.read_text())["machine"]["cpu_count"] >= 1
    assert report(results) == text


def test_script_entry_point_runs_from_a_checkout():
    done = subprocess.run([sys.executable, str(REPO / "bench" / "bench.py"), "--help"], capture_output=True,
                          text=True, cwd=REPO.parent, timeout=120)
    assert done.returncode == 0 and "--quick" in done.stdout


def test_merge_shows_a_grid_on_another_training_pool_after_the_last_grid():
    def grid(pool: int | None, shared_s: float) -> dict:
        return {"runs": 1, "methods": ["clip_adapter"], "shots": [1, 16], "seeds": [1], "classes": 2, "image_px": 64,
                "grain": 0.0, "epoch_overrides": {}, "seconds_reference": 10.0, "seconds_suite": 5.0, "speedup": 2.0,
                "accuracy_max_delta": 0.0, "views": 10, "seconds_views": 2.0, "speedup_views": 5.0,
                "accuracy_views_max_delta": 1.0, "seconds_shared": shared_s, "speedup_shared": 10.0 / shared_s,
                "accuracy_shared_max_delta": 1.0, "train_per_class": pool,
                "per_method_s": {"clip_adapter": {"reference": 10.0, "suite": 5.0, "views": 2.0, "shared": shared_s}},
                "images_encoded": {"clip_adapter": {"reference": 90, "suite": 80, "views": 40, "shared": 10 * pool}}}

    def part(started: str, g: dict) -> dict:
        return {"started": started, "finished": started, "load_average_end": [0.0], "quick": False,
                "machine": {"load_average": [0.0]}, "threads": {}, "grid": g, "steps": []}
    merged = merge([part("t1", grid(20, 1.0)), part("t2", grid(40, 1.5)), part("t3", grid(20, 1.25))])
    assert merged["grid"]["seconds_shared"] == 1.25  # the last grid is the main one
    assert [g["train_per_class"] for g in merged["other_pools"]] == [40]
    assert bench_pool({"shots": [1, 16]}) == 20  # a result from before the pool was recorded: the most shots + 4
    section = "\n".join(other_pool_section(merged["grid"], merged["other_pools"][0]))
    assert "pool of 40 images per class" in section and "encodes 2.00x the images" in section
    assert "takes 1.20x the time" in section and "| **all** | 1 | 10.0 |" in section


def test_merge_replaces_a_re_measured_step_row_in_place():
    def part(started: str, rows: list[tuple[str, str, float]], grid=None) -> dict:
        return {"started": started, "finished": started, "load_average_end": [0.0], "quick": False,
                "machine": {"load_average": [0.0]}, "threads": {}, "grid": grid,
                "steps": [{"backbone": b, "method": m, "classes": 100, "cached_features": False, "speedup": x}
                          for b, m, x in rows]}
    old = part("t1", [("tiny", "heba", 2.0), ("tiny", "coop", 4.0)], grid={"runs": 60})
    new = part("t2", [("tiny", "heba", 2.5), ("vit_b16", "heba", 2.2)])
    merged = merge([old, new])
    assert [(r["backbone"], r["method"], r["speedup"]) for r in merged["steps"]] == [
        ("tiny", "heba", 2.5), ("tiny", "coop", 4.0), ("vit_b16", "heba", 2.2)]
    assert merged["grid"] == {"runs": 60} and merged["finished"] == "t2" and len(merged["runs"]) == 2
    tuned = part("t3", [("tiny", "heba", 2.4)])
    tuned["steps"][0]["allocator"] = "tuned"  # another allocator is another row (rows without one: default)
    keys = [(r["method"], r.get("allocator", "default")) for r in merge([old, new, tuned])["steps"]]
    assert keys == [("heba", "default"), ("coop", "default"), ("heba", "default"), ("heba", "tuned")]


def test_tuned_allocator_reruns_the_command_under_the_malloc_settings():
    """``--allocator tuned`` re-executes the same command with glibc's settings in the environment."""
    code = ("import sys; from bench import bench, common; bench.run = lambda args: print('ALLOC', common.allocator()); "
            "bench.main(sys.argv[1:])")
    done = subprocess.run([sys.executable, "-c", code, "--allocator", "tuned", "--no-grid", "--no-steps"],
                          capture_output=True, text=True, cwd=REPO, timeout=120)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "ALLOC tuned"


def test_report_names_the_run_with_the_largest_accuracy_difference():
    runs = [{"run": "tip_adapter_f", "shots": 8, "seed": 3, "accuracy": {"reference": 50.0, "suite": 50.0,
                                                                        "views": 38.0}},
            {"run": "linear_probe", "shots": 1, "seed": 1, "accuracy": {"reference": 60.0, "suite": 60.0,
                                                                       "views": 61.0}}]
    assert _largest_at({"run_accuracy": runs}, "views") == ": tip_adapter_f 8-shot seed 3, 50.0 vs 38.0"
    assert _largest_at({"run_accuracy": runs}, "suite") == ""  # no difference: nothing to name
    assert _largest_at({}, "suite") == ""  # results saved before per-run accuracies were recorded
