"""Variants visible at the end of a launch and in ``--dry-run``: the end table groups runs by variant (never
averaging ablation configurations together), and the dry run sums each method's grid up."""

from __future__ import annotations

import json
from pathlib import Path

from jobs import cli
from jobs.grid import expand_grid, resolve_plan
from jobs.runfolder import run_dir

ROOT = Path(__file__).resolve().parents[1]


def test_dry_run_summary_counts_configurations_datasets_and_seeds():
    grid = resolve_plan(expand_grid(ROOT / "grids" / "ablations.yaml"))
    lines = cli.grid_summary(grid.runs)
    assert lines == ["HeBA: 26 configurations x 11 datasets x 3 seeds = 858 runs",
                     "RMAdapter: 12 configurations x 11 datasets x 3 seeds = 396 runs"]
    one_seed = resolve_plan(expand_grid(ROOT / "grids" / "ablations.yaml", {"seed": 1}))
    assert cli.grid_summary(one_seed.runs)[0] == "HeBA: 26 configurations x 11 datasets x 1 seed = 286 runs"


def _world_grid(tmp_path: Path, variants: str, datasets: str = "[world_hues]"):
    """A resolved base-to-novel grid on ``datasets``, seeds 1 and 2, with the given ``variants:`` block."""
    grid_file = tmp_path / "g.yaml"
    grid_file.write_text(f"name: g\nbase:\n  results_dir: {tmp_path / 'results'}\n  backbone: tiny-world\n"
                         "  pretrained: world\n  data_root: builtin\n  protocol: base2novel\n  shots: 16\n"
                         f"grid:\n  dataset: {datasets}\n  seed: [1, 2]\nvariants:\n" + variants)
    return resolve_plan(expand_grid(grid_file))


def test_end_table_keeps_variants_apart(tmp_path):
    """Two HeBA variants with records: two rows, each over its own seeds, named by the options it changes."""
    grid = _world_grid(tmp_path, "  - method: heba\n    method.bottleneck_ratio: [4, 8]\n")
    hm: dict[int, list[float]] = {}
    for index, spec in enumerate(grid.runs):  # records as a run writes them, numbers made up per run
        hm.setdefault(spec.config["method"]["bottleneck_ratio"], []).append(50.0 + index)
        folder = run_dir(spec.resolved)
        folder.mkdir(parents=True)
        (folder / "record.json").write_text(json.dumps({"status": "done", "config": spec.config,
                                                        "summary": {"hm": 50.0 + index}}))
    table = cli.results_table(grid)
    rows = {"ratio=8" in line: line.split()[-4:] for line in table.splitlines() if "HeBA" in line}
    # mean ± population std over the two seeds, then the seed count
    assert rows == {ratio == 8: [f"{sum(v) / 2:.2f}", "±", f"{abs(v[0] - v[1]) / 2:.2f}", "2"]
                    for ratio, v in hm.items()}


def test_next_steps_after_a_launch_point_to_the_tables_and_to_real_data():
    """After the quickstart (the built-in world) the launcher says how to read the tables and how to go on to real
    data; after a grid on real data only the first part."""
    quickstart = resolve_plan(expand_grid(ROOT / "grids" / "quickstart.yaml"))
    text = cli.next_steps(quickstart, "results/quickstart/analysis/index.md")
    assert "open results/quickstart/analysis/index.md" in text
    assert "cd results/quickstart/analysis && pdflatex tables_preview.tex" in text
    assert "python -m protocols.verify_data" in text and "data_root=/data/coop" in text
    real = resolve_plan(expand_grid(ROOT / "grids" / "quickstart.yaml", {"data_root": str(ROOT)}))
    assert "verify_data" not in cli.next_steps(real, "x/analysis/index.md")


def test_end_table_keeps_variants_that_differ_in_optimiser_settings_apart(tmp_path):
    """Variants that differ only in ``optim.*`` (a learning-rate sweep) get a row each, named by the setting."""
    grid = _world_grid(tmp_path, "  - method: mma\n    method.layers: [[2, 3]]\n    optim.lr: [0.0015, 0.015]\n")
    for index, spec in enumerate(grid.runs):
        folder = run_dir(spec.resolved)
        folder.mkdir(parents=True)
        (folder / "record.json").write_text(json.dumps({"status": "done", "config": spec.config,
                                                        "summary": {"base": 50.0 + index}}))
    table = cli.results_table(grid)
    assert table.count("(lr=0.0015)") == 1 and table.count("(lr=0.015)") == 1 and " 2\n" in table + "\n"


def test_end_table_averages_a_variant_over_its_datasets_per_seed(tmp_path):
    """A variant on two datasets gets an ``average`` row: per seed the mean base and novel over the datasets and the
    HM of those means (the papers' Average), then mean ± std over the seeds."""
    from protocols.metrics import harmonic_mean
    grid = _world_grid(tmp_path, "  - method: mma\n    method.layers: [[2, 3]]\n",
                       datasets="[world_hues, world_hues_outline]")
    per_seed: dict[int, list[tuple[float, float]]] = {}
    for index, spec in enumerate(grid.runs):
        base, novel = 60.0 + 3 * index, 40.0 + index * index
        per_seed.setdefault(spec.config["seed"], []).append((base, novel))
        folder = run_dir(spec.resolved)
        folder.mkdir(parents=True)
        (folder / "record.json").write_text(json.dumps({"status": "done", "config": spec.config, "summary": {
            "base": base, "novel": novel, "hm": harmonic_mean(base, novel)}}))
    table = cli.results_table(grid)
    line = next(line for line in table.splitlines() if "average" in line)
    hms = [harmonic_mean(sum(b for b, _ in v) / 2, sum(n for _, n in v) / 2) for v in per_seed.values()]
    expected_hm = f"{sum(hms) / 2:.2f} ± {abs(hms[0] - hms[1]) / 2:.2f}"
    assert line.split()[-4:] == [*expected_hm.split(), "2"]
    assert sum("MMA" in line for line in table.splitlines()) == 3  # two datasets and their average


def test_progress_shows_epoch_lines_with_the_grid_eta_and_nothing_else(capsys):
    """Off a terminal the launcher prints a run's epoch lines (other log lines stay in log.txt), numbered by the run
    under way, with an ETA for the grid."""
    progress = cli.Progress(["zeroshot", "heba", "heba", "mma"])
    progress.log("abc: fit split world_hues/base: 128 train, 32 val, 8 classes")
    progress.log("abc: epoch 5/10: loss 1.2 lr 0.01 (1.0s, ETA 5s)")
    out = capsys.readouterr().out.splitlines()
    assert len(out) == 1 and out[0].startswith("  [1/4] epoch 5/10: loss 1.2 lr 0.01 (1.0s, ETA 5s); grid ETA ")


def test_grid_eta_estimates_each_run_left_by_the_finished_runs_of_its_method():
    left = cli.grid_seconds_left
    # nothing finished: the run under way at its pace (half done in 10 s), and the three after it at that pace
    assert left(["heba", "heba", "mma", "coop"], 0.5, 10.0, {}) == 10.0 + 3 * 20.0
    # a finished HeBA run took 12 s and a zero-shot one 2 s: HeBA runs at 12 s, MMA (none yet) at the mean, 7 s
    seconds = {"heba": [12.0], "zeroshot": [2.0]}
    assert left(["heba", "heba", "mma"], 0.25, 3.0, seconds) == (12.0 - 3.0) + 12.0 + 7.0
    # a method with no finished run, under way: its own pace
    assert left(["mma", "heba"], 0.5, 4.0, seconds) == 4.0 + 12.0
    assert left(["mma"], 0.0, 0.0, {}) is None
    # six fast zero-shot runs done, HeBA half way after 7 s: RMAdapter (unseen) at the mean of 1 s and 14 s
    assert left(["heba", "rmadapter"], 0.5, 7.0, {"zeroshot": [1.0] * 6}) == 7.0 + 7.5


def test_world_ablation_grid_is_one_factor_at_a_time_on_the_quickstart_datasets():
    """``grids/world_ablations.yaml``: HeBA's ratio, init and heterogeneity levels and RMAdapter's five rungs on the
    quickstart's datasets, 3 seeds, at the quickstart's tiny-model settings (a column no HeBA run varies)."""
    grid = resolve_plan(expand_grid(ROOT / "grids" / "world_ablations.yaml"))
    assert cli.grid_summary(grid.runs) == ["Zero-shot CLIP: 1 configuration x 2 datasets x 3 seeds = 6 runs",
                                           "HeBA: 6 configurations x 2 datasets x 3 seeds = 36 runs",
                                           "RMAdapter: 5 configurations x 2 datasets x 3 seeds = 30 runs"]
    quickstart = resolve_plan(expand_grid(ROOT / "grids" / "quickstart.yaml"))
    assert {s.config["dataset"] for s in grid.runs} == {s.config["dataset"] for s in quickstart.runs}
    for method in ("heba", "rmadapter"):
        tiny = next(s.config for s in quickstart.runs if s.config["method"]["name"] == method)
        for spec in (s for s in grid.runs if s.config["method"]["name"] == method):
            assert spec.config["optim"] == tiny["optim"]
            assert all(spec.config["method"][k] == v for k, v in tiny["method"].items()
                       if k in ("novel_scale", "rec_grad_scale", "lambda_con_image", "lambda_con_text", "layers"))
