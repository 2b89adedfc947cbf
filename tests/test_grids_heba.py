"""HeBA's grids: ``grids/ablations.yaml`` (HeBA part) and ``grids/base2novel.yaml`` load, list every run, and a
reduced HeBA ablation grid runs end to end on the tiny CLIP and fake data."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import pytest
import yaml

from analysis.tables import analyse, write_outputs
from jobs.cli import launch_main
from jobs.config import parse_overrides
from jobs.runfolder import read_record, run_dir
from jobs.executors import run_inline
from jobs.grid import load_grid
from protocols.datasets import COOP_DATASETS
from tests.conftest import GOLDEN_BACKBONE

GRIDS = Path(__file__).resolve().parent.parent / "grids"
ABLATIONS = GRIDS / "ablations.yaml"
N_HEBA_CONFIGS = 4 * 3 * 2 + 2  # ratio x init x visual block, plus the two text-side variants


def heba_runs(grid):
    return [spec for spec in grid.runs if spec.config["method"]["name"] == "heba"]


@pytest.mark.parametrize("name", ["ablations.yaml", "base2novel.yaml"])
def test_grid_starts_with_its_launch_command(name):
    first = (GRIDS / name).read_text().splitlines()[0]
    assert first.startswith(f"# python jobs/launch.py --grid grids/{name} ")


def test_ablation_grid_lists_every_heba_run(capsys):
    """``jobs/launch.py --grid grids/ablations.yaml --dry-run`` lists every run; the HeBA part is the full product."""
    grid = load_grid(ABLATIONS)
    runs = heba_runs(grid)
    assert len(runs) == N_HEBA_CONFIGS * len(COOP_DATASETS) * 3
    methods = {(r.config["method"]["bottleneck_ratio"], r.config["method"]["init"],
                r.config["method"]["visual_adapter"], r.config["method"]["text_adapter"]) for r in runs}
    assert len(methods) == N_HEBA_CONFIGS
    assert {r.config["dataset"] for r in runs} == set(COOP_DATASETS)
    assert {r.config["seed"] for r in runs} == {1, 2, 3}
    first = runs[0].config
    assert (first["backbone"], first["pretrained"], first["protocol"]) == ("ViT-B-16-quickgelu", "openai", "base2novel")
    assert (first["optim"]["lr"], first["optim"]["epochs"], first["optim"]["batch_size"]) == (0.0075, 30, 16)

    assert launch_main(["--grid", str(ABLATIONS), "--dry-run", "--no-analysis"]) == 0
    listed = [line.split()[1] for line in capsys.readouterr().out.splitlines() if line.startswith("  ")]
    assert listed == [spec.run_id for spec in grid.runs]


def test_base2novel_grid_has_heba_with_its_recipe():
    runs = heba_runs(load_grid(GRIDS / "base2novel.yaml"))
    assert len(runs) == len(COOP_DATASETS) * 3
    assert all(r.config["optim"]["lr"] == 0.0075 and r.config["method"]["scale"] == 0.025 for r in runs)


def test_reduced_heba_ablation_grid_runs_end_to_end(data_root, tmp_path):
    """2 ratios x 2 inits of the HeBA ablation block, tiny CLIP, fake data, 1 epoch, inline."""
    data = yaml.safe_load(ABLATIONS.read_text())
    block = dict(data["variants"][0])
    assert block["method"] == "heba"
    block["method.bottleneck_ratio"] = block["method.bottleneck_ratio"][:2]
    block["method.init"] = block["method.init"][:2]
    reduced = {**data, "variants": [block]}
    path = tmp_path / "reduced.yaml"
    path.write_text(yaml.safe_dump(reduced))
    overrides = parse_overrides([
        f"backbone={GOLDEN_BACKBONE}", "pretrained=golden", f"data_root={data_root}",
        f"results_dir={tmp_path / 'results'}", "dataset=oxford_pets", "seed=1", "shots=2",
        "method.visual_adapter=conv", "optim.epochs=1", "optim.batch_size=4", "optim.eval_batch_size=16"])
    grid = load_grid(path, overrides, executor_kind="inline")
    assert len(grid.runs) == 4
    outcomes = run_inline(grid.runs, lambda spec, outcome: None)
    assert [o.status for o in outcomes] == ["done"] * 4, [o.detail for o in outcomes]
    records = [read_record(run_dir(spec.resolved)) for spec in grid.runs]
    assert all(r["status"] == "done" and len(r["history"]) == 1 and set(r["metrics"]) == {"base", "novel"}
               for r in records)
    params = {r["config"]["method"]["bottleneck_ratio"]: r["cost"]["trainable_params"] for r in records}
    assert params[2] > params[4] > 0

    # the analysis of these real runs: one table per factor around the defaults, the cross as a cross, and a
    # preview that fits the two-column page
    out = tmp_path / "analysis"
    write_outputs(analyse([tmp_path / "results"]), out, plots=False, log=lambda _: None)
    names = {p.stem for p in out.glob("ablation_*.tex")}
    assert names == {"ablation_heba_base2novel_bottleneck-ratio", "ablation_heba_base2novel_init",
                     "ablation_heba_base2novel_cross-bottleneck-ratio-init"}
    assert str(tmp_path) not in (out / "ablation_heba_base2novel_init.tex").read_text()  # a local backbone by name
    engine = shutil.which("pdflatex")
    if engine is not None:
        proc = subprocess.run([engine, "-interaction=nonstopmode", "-halt-on-error", "tables_preview.tex"], cwd=out,
                              capture_output=True, text=True, timeout=300)
        assert proc.returncode == 0 and "Overfull \\hbox" not in proc.stdout, proc.stdout[-3000:]
