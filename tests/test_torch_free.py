"""``--status``, ``--help`` and ``python -m analysis.tables`` work where torch cannot be imported.

The commands run in a subprocess whose ``sitecustomize`` puts a finder first on ``sys.meta_path`` that raises
ImportError for torch, open_clip, torchvision and timm: any import of them, direct or indirect, fails the command.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from tests.conftest import base_run, write_dataset

REPO = Path(__file__).resolve().parent.parent
FIXTURE_RECORDS = REPO / "tests/fixtures/records"
BLOCKER = '''import sys
BLOCKED = ("torch", "open_clip", "torchvision", "timm")


class _NoTorch:
    def find_spec(self, name, path=None, target=None):
        if name.split(".")[0] in BLOCKED:
            raise ImportError(f"{name} is blocked in this test")
        return None


sys.meta_path.insert(0, _NoTorch())
'''


def run(args: list[str], cwd: Path, blocker: Path | None) -> subprocess.CompletedProcess:
    env = dict(os.environ)
    if blocker is not None:
        env["PYTHONPATH"] = os.pathsep.join([str(blocker), str(REPO), env.get("PYTHONPATH", "")])
    return subprocess.run([sys.executable, *args], capture_output=True, text=True, cwd=cwd, env=env, timeout=600)


@pytest.fixture()
def no_torch(tmp_path: Path) -> Path:
    """A folder whose ``sitecustomize.py`` makes torch (and open_clip, torchvision, timm) unimportable."""
    folder = tmp_path / "no_torch"
    folder.mkdir()
    (folder / "sitecustomize.py").write_text(BLOCKER)
    return folder


def test_the_blocker_blocks_torch(no_torch, tmp_path):
    proc = run(["-c", "import torch"], tmp_path, no_torch)
    assert proc.returncode != 0 and "blocked in this test" in proc.stderr
    proc = run(["-c", "import frozen_clip.fastpaths"], tmp_path, no_torch)
    assert proc.returncode != 0 and "blocked in this test" in proc.stderr


def write_grid(tmp_path: Path, data_root: Path) -> Path:
    grid = {"name": "nt", "base": base_run(data_root, tmp_path / "results", method="zeroshot"),
            "grid": {"seed": [1, 2]}, "executor": {"kind": "inline"}}
    path = tmp_path / "nt.yaml"
    path.write_text(yaml.safe_dump(grid))
    return path


def test_status_and_tables_of_real_runs_without_torch(no_torch, tmp_path):
    root = write_dataset(tmp_path / "data", "oxford_pets", 6)
    grid = write_grid(tmp_path, root)
    launch = str(REPO / "jobs/launch.py")
    assert run([launch, "--grid", str(grid), "--no-analysis"], tmp_path, None).returncode == 0  # with torch

    status = run([launch, "--grid", str(grid), "--status"], tmp_path, no_torch)
    assert status.returncode == 0, status.stderr
    assert "nt: 2 runs: 2 done" in status.stdout and "Zero-shot CLIP oxford_pets base2novel" in status.stdout

    # a failed record (the previous layout's record, as written before) reads without torch too
    folder = next((tmp_path / "results" / "nt").glob("*/record.json")).parent
    record = json.loads((folder / "record.json").read_text())
    record["status"], record["failure"] = "failed", {"reason": "RuntimeError: simulated", "traceback": ""}
    (folder / "record.json").write_text(json.dumps(record, indent=2))
    status = run([launch, "--grid", str(grid), "--status"], tmp_path, no_torch)
    assert "1 done, 1 failed" in status.stdout and "simulated" in status.stdout, status.stdout + status.stderr

    tables = run(["-m", "analysis.tables", str(tmp_path / "results"), "--no-plots"], REPO, no_torch)
    assert tables.returncode == 0, tables.stderr
    assert (tmp_path / "results" / "analysis" / "records.csv").is_file()

    helped = run([launch, "--help"], tmp_path, no_torch)
    assert helped.returncode == 0 and "--status" in helped.stdout


def test_status_without_index_or_torch(no_torch, tmp_path):
    """No run has started: every run is missing. Run folders but no index: one clear error, exit 2."""
    grid = write_grid(tmp_path, tmp_path / "data")
    launch = str(REPO / "jobs/launch.py")
    status = run([launch, "--grid", str(grid), "--status"], tmp_path, no_torch)
    assert status.returncode == 0, status.stderr
    assert "nt: 2 runs: 2 missing" in status.stdout
    (tmp_path / "results" / "nt" / "0123456789abcdef").mkdir(parents=True)
    status = run([launch, "--grid", str(grid), "--status"], tmp_path, no_torch)
    assert status.returncode == 2 and status.stderr.count("error:") == 1 and "--dry-run" in status.stderr


def test_tables_over_synthetic_records_without_torch(no_torch, tmp_path):
    shutil.copytree(FIXTURE_RECORDS, tmp_path / "records")
    out = tmp_path / "out"
    tables = run(["-m", "analysis.tables", str(tmp_path / "records"), "--out", str(out), "--no-plots"], REPO,
                 no_torch)
    assert tables.returncode == 0, tables.stderr
    assert (out / "base2novel.tex").is_file() and (out / "index.md").is_file()


def test_read_status_reads_the_tail_or_the_whole_record(tmp_path):
    from jobs.runfolder import read_status, write_record
    write_record(tmp_path, {"run_id": "x", "config": {"status": "nested"}, "status": "done", "failure": None})
    assert read_status(tmp_path) == "done"
    write_record(tmp_path, {"status": "failed", "failure": {"reason": "r", "traceback": "t" * 5000}})
    assert read_status(tmp_path) == "failed"  # the status is far from the end: the record is parsed
    (tmp_path / "record.json").write_text(json.dumps({"status": "done", "env": {"status": "x"}}))  # other format
    assert read_status(tmp_path) == "done"
    (tmp_path / "record.json").write_text('{"status": "do')
    assert read_status(tmp_path) is None
    assert read_status(tmp_path / "absent") is None


def test_speed_switches_from_the_source_match_the_imported_classes():
    import dataclasses

    from frozen_clip.fastpaths import inexact_fast_defaults
    from jobs.config import exact_method_fields
    from jobs.registry import METHODS
    from jobs.switches import inexact_fast_defaults as from_source
    from jobs.switches import method_config
    assert from_source() == inexact_fast_defaults()
    for name in METHODS.names():
        fields, exact = method_config(name)
        assert fields == {f.name for f in dataclasses.fields(METHODS.get(name).Config)}, name
        assert exact == exact_method_fields(name), name


def test_no_library_module_imports_the_cli():
    import ast
    entry_points = {"jobs/cli.py", "jobs/launch.py", "jobs/run.py"}
    for path in REPO.glob("*/**/*.py"):
        rel = path.relative_to(REPO).as_posix()
        if rel in entry_points or rel.startswith(("tests/", "bench/")):
            continue
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.ImportFrom) and node.module == "jobs.cli" or \
                    isinstance(node, ast.Import) and any(a.name == "jobs.cli" for a in node.names):
                raise AssertionError(f"{rel} imports jobs.cli")
