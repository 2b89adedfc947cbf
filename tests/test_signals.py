"""Ctrl-C and SIGTERM stop a launch cleanly: the launcher and every run process end within seconds, the launcher
says what was interrupted and how to resume (no traceback), and the same command then finishes every run with the
metrics of an uninterrupted launch."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml

from jobs.state import is_locked
from tests.conftest import base_run

pytestmark = pytest.mark.slow
REPO = Path(__file__).resolve().parent.parent


def write_grid(path: Path, data_root: Path, results: Path, executor: dict, seeds: list[int]) -> Path:
    """HeBA (it trains on images: each epoch takes a moment) on the fake data with the tiny golden CLIP."""
    base = base_run(data_root, results, method="heba", optim={"epochs": 12, "batch_size": 2})
    path.write_text(yaml.safe_dump({"name": "sig", "base": base, "grid": {"seed": seeds}, "executor": executor}))
    return path


def launch(grid: Path, cwd: Path) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, str(REPO / "jobs/launch.py"), "--grid", str(grid), "--no-analysis"],
                            cwd=cwd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            start_new_session=True)  # a signal to the launcher alone, as `kill PID` sends it


def wait_for_training(results: Path, timeout: float = 300.0) -> Path:
    """The folder of the first run whose log shows a finished epoch."""
    deadline = time.time() + timeout
    while time.time() < deadline:
        for log in results.glob("sig/*/log.txt"):
            if "epoch 1/" in log.read_text():
                return log.parent
        time.sleep(0.05)
    raise AssertionError("no run started training")


def metrics(results: Path) -> dict[str, dict]:
    return {json.loads(p.read_text())["config"]["seed"]: json.loads(p.read_text())["metrics"]
            for p in results.glob("sig/*/record.json")}


@pytest.mark.parametrize("signum,executor", [(signal.SIGTERM, {"kind": "local", "workers": 1}),
                                             (signal.SIGINT, {"kind": "inline"})],
                         ids=["sigterm-local-pool", "sigint-inline"])
def test_an_interrupted_launch_stops_everything_and_resumes_to_the_same_metrics(data_root, tmp_path, signum,
                                                                                 executor):
    results = tmp_path / "res"
    grid = write_grid(tmp_path / "sig.yaml", data_root, results, executor, [1, 2])
    proc = launch(grid, tmp_path)
    folder = wait_for_training(results)
    os.kill(proc.pid, signum)
    start = time.time()
    _, stderr = proc.communicate(timeout=60)
    assert time.time() - start < 15, "the launcher took too long to stop"
    assert proc.returncode == 128 + signum, stderr
    name = signal.Signals(signum).name
    assert f"interrupted by {name}" in stderr and f"Resume with: python jobs/launch.py --grid {grid}" in stderr
    assert "Traceback" not in stderr
    if executor["kind"] == "local":
        assert "stopped 1 running run(s):" in stderr
    assert not is_locked(folder)  # no run process is left holding it
    assert not (folder / "record.json").exists()  # stopped, not failed

    again = subprocess.run([sys.executable, str(REPO / "jobs/launch.py"), "--grid", str(grid), "--no-analysis"],
                           cwd=tmp_path, capture_output=True, text=True, timeout=600)
    assert again.returncode == 0, again.stderr
    reference = tmp_path / "reference"
    uninterrupted = write_grid(tmp_path / "ref.yaml", data_root, reference, {"kind": "inline"}, [1, 2])
    assert subprocess.run([sys.executable, str(REPO / "jobs/launch.py"), "--grid", str(uninterrupted),
                           "--no-analysis"], cwd=tmp_path, capture_output=True, timeout=600).returncode == 0
    assert metrics(results) == metrics(reference) and len(metrics(results)) == 2
