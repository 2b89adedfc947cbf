"""The run-id policy (DESIGN.md, "Run ids"): ids hash the options that differ from their defaults plus the
method's recipe version, and ``python -m jobs.migrate_ids`` renames run folders of the older layout (every option
hashed) so that a relaunch resumes them."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

from jobs.config import legacy_run_id, resolve, run_id_of

REPO = Path(__file__).resolve().parent.parent
RECORDS = Path(__file__).resolve().parent / "fixtures" / "records"


def test_ids_change_with_a_non_default_option_and_with_the_recipe_version(monkeypatch):
    raw = {"method": "heba", "dataset": "caltech101", "backbone": "tiny-world", "pretrained": "world"}
    default = resolve(raw, "test")
    other = resolve({**raw, "method": {"name": "heba", "bottleneck_ratio": 8}}, "test")
    named_default = resolve({**raw, "method": {"name": "heba", "bottleneck_ratio": 4}}, "test")
    assert other.run_id != default.run_id and named_default.run_id == default.run_id
    from dataclasses import replace

    from jobs.registry import METHODS
    cls = METHODS.get("heba")
    monkeypatch.setattr(cls, "info", replace(cls.info, recipe_version=cls.info.recipe_version + 1))
    assert run_id_of(default.config) != default.run_id  # a bumped recipe: no finished run is reused


def test_run_labels_name_options_off_their_defaults_by_their_display_names():
    from jobs.config import run_label
    raw = {"method": {"name": "heba", "bottleneck_ratio": 2, "init": "kaiming_all"},
           "dataset": "caltech101", "backbone": "tiny-world", "pretrained": "world", "seed": 3}
    label = run_label(resolve(raw, "test").config)
    assert label == "HeBA [bottleneck ratio=2, init=Kaiming (all)] caltech101 base2novel shots=16 seed=3"
    exact = resolve({**raw, "method": {"name": "heba", "text_buckets": 1}}, "test")  # a speed switch: not a variant
    assert run_label(exact.config) == "HeBA caltech101 base2novel shots=16 seed=3"


def test_migrate_ids_renames_older_layout_folders(tmp_path):
    sources = sorted(RECORDS.glob("heba-ablations/*/record.json"))[:3]
    grid = tmp_path / "results" / "heba-ablations"
    expected = {}
    for source in sources:
        record = json.loads(source.read_text())
        old = legacy_run_id(record["config"])
        record["run_id"] = old
        (grid / old).mkdir(parents=True)
        (grid / old / "record.json").write_text(json.dumps(record))
        expected[old] = run_id_of(record["config"])
    assert all(old != new for old, new in expected.items())
    dry = subprocess.run([sys.executable, "-m", "jobs.migrate_ids", str(grid), "--dry-run"], cwd=REPO,
                         capture_output=True, text=True)
    assert dry.returncode == 0 and dry.stdout.count("would rename") == len(sources)
    assert sorted(p.name for p in grid.iterdir()) == sorted(expected)
    done = subprocess.run([sys.executable, "-m", "jobs.migrate_ids", str(grid)], cwd=REPO, capture_output=True,
                          text=True)
    assert done.returncode == 0, done.stderr
    assert sorted(p.name for p in grid.iterdir()) == sorted(expected.values())
    for new in expected.values():
        assert json.loads((grid / new / "record.json").read_text())["run_id"] == new
    again = subprocess.run([sys.executable, "-m", "jobs.migrate_ids", str(grid)], cwd=REPO, capture_output=True,
                           text=True)
    assert again.returncode == 0 and again.stdout == ""  # current folders are left alone
    shutil.rmtree(grid)
    missing = subprocess.run([sys.executable, "-m", "jobs.migrate_ids", str(grid)], cwd=REPO, capture_output=True,
                             text=True)
    assert missing.returncode == 2 and str(grid) in missing.stderr


def test_status_counts_finished_runs_made_under_an_older_recipe(tmp_path, monkeypatch, capsys):
    """A bumped recipe version changes every id of the method: ``--status`` shows the grid's runs as missing and says
    how many finished runs in the folder were made under the older recipe (and which have older-layout records)."""
    from dataclasses import replace

    from frozen_clip.contract import card
    from jobs import cli
    from jobs.grid import expand_grid, resolve_plan
    from jobs.registry import METHODS
    from jobs.runfolder import write_record
    grid_file = tmp_path / "g.yaml"
    grid_file.write_text(f"name: g\nbase:\n  method: heba\n  dataset: caltech101\n  backbone: tiny-world\n"
                         f"  pretrained: world\n  results_dir: {tmp_path / 'results'}\ngrid:\n  seed: [1, 2]\n")
    cls = METHODS.get("heba")
    old_card = card(cls)
    plan = expand_grid(grid_file)
    for spec in resolve_plan(plan).runs:
        write_record(plan.results_dir / spec.run_id, {"run_id": spec.run_id, "config": spec.config,
                                                      "status": "done", "method_card": old_card})
    legacy = resolve_plan(expand_grid(grid_file, {"seed": 3})).runs[0]
    write_record(plan.results_dir / legacy_run_id(legacy.config), {"config": legacy.config, "status": "done"})

    assert cli.print_status(plan) == 0
    before = capsys.readouterr().out
    assert "g: 2 runs: 2 done" in before and "older recipe" not in before
    assert "1 finished runs have records of the older layout" in before and "jobs.migrate_ids" in before

    monkeypatch.setattr(cls, "info", replace(cls.info, recipe_version=cls.info.recipe_version + 1))
    # a bump is an edit of the method's file, which changes the fingerprint the run-id index is valid under
    from jobs import index
    fingerprint = index.code_fingerprint()
    monkeypatch.setattr(index, "code_fingerprint", lambda *args: fingerprint + "-bumped")
    assert cli.print_status(plan) == 0
    after = capsys.readouterr().out
    assert "g: 2 runs: 2 missing" in after
    assert (f"2 finished runs of heba were made under an older recipe (version {old_card['recipe_version']}; "
            f"now {old_card['recipe_version'] + 1})") in after
