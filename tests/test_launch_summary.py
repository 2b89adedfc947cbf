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


def _world_grid(tmp_path: Path, variants: str):
    """A resolved base-to-novel grid on world_hues, seeds 1 and 2, with the given ``variants:`` block."""
    grid_file = tmp_path / "g.yaml"
    grid_file.write_text(f"name: g\nbase:\n  results_dir: {tmp_path / 'results'}\n  backbone: tiny-world\n"
                         "  pretrained: world\n  data_root: builtin\n  protocol: base2novel\n  shots: 16\n"
                         "grid:\n  dataset: [world_hues]\n  seed: [1, 2]\nvariants:\n" + variants)
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
    rows = {"ratio=8" in line: line.split()[-2:] for line in table.splitlines() if "HeBA" in line}
    assert rows == {False: [f"{sum(hm[4]) / 2:.1f}", "2"], True: [f"{sum(hm[8]) / 2:.1f}", "2"]}


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
