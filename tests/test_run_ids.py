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
