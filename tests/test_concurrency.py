"""Two launchers on one grid never run a run twice nor corrupt a record (run folder file locks), and a lock held
only for an instant (a ``--status`` probe) does not make a starting run skip itself."""

from __future__ import annotations

import json
import subprocess
import sys
import threading
import time
from pathlib import Path

import yaml

from jobs.config import resolve
from jobs.runfolder import run_dir
from jobs.executors import LOCK_GRACE_S, execute_run
from jobs.grid import RunSpec
from jobs.state import run_lock, state_of
from tests.conftest import base_run, write_dataset

REPO = Path(__file__).resolve().parent.parent


def test_two_concurrent_launchers_execute_every_run_exactly_once(tmp_path):
    """Both launchers start every run of a 2-run grid at once (2 workers each): each run executes once."""
    data = write_dataset(tmp_path / "data", "oxford_pets", 6)
    grid = tmp_path / "both.yaml"
    grid.write_text(yaml.safe_dump({
        "name": "both", "base": base_run(data, tmp_path / "results", method="zeroshot"),
        "grid": {"seed": [1, 2]}, "executor": {"kind": "local", "workers": 2, "gpus": []}}))
    command = [sys.executable, str(REPO / "jobs/launch.py"), "--grid", str(grid), "--no-analysis"]
    launchers = [subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
                 for _ in range(2)]
    outputs = [proc.communicate(timeout=300)[0] for proc in launchers]
    assert [proc.returncode for proc in launchers] == [0, 0], outputs
    folders = sorted(p for p in (tmp_path / "results" / "both").iterdir() if p.is_dir())
    assert len(folders) == 2
    skipped = 0
    for folder in folders:
        record = json.loads((folder / "record.json").read_text())  # complete JSON, not interleaved writes
        assert record["status"] == "done" and not list(folder.glob(".record.json.*.tmp"))
        assert (folder / "log.txt").read_text().count("fit split") == 1, folder  # executed exactly once
        stdout = (folder / "stdout.txt").read_text()
        assert stdout.count("done: ") == 1
        skipped += stdout.count("skipped: ")
    assert skipped >= 1, "the launchers never met on a run; the test exercised nothing"
    # each launcher reports as done only the runs it executed; the other's are "skipped", saying by whom
    for folder in folders:
        assert sum(f"] done    {folder.name}" in output for output in outputs) == 1, outputs
    assert sum(output.count("] skipped") for output in outputs) == 2, outputs
    assert any("done by another launch (host" in output or "running in another process" in output
               for output in outputs)


def zeroshot_spec(tmp_path: Path) -> RunSpec:
    data = write_dataset(tmp_path / "data", "oxford_pets", 6)
    resolved = resolve(base_run(data, tmp_path / "results", method="zeroshot"), "test")
    return RunSpec(resolved.run_id, resolved.config, resolved)


def hold_lock(folder: Path, seconds: float, acquired: threading.Event) -> threading.Thread:
    def hold() -> None:
        lock = run_lock(folder)
        lock.acquire()
        acquired.set()
        time.sleep(seconds)
        lock.release()
    thread = threading.Thread(target=hold)
    thread.start()
    return thread


def test_a_briefly_held_lock_delays_a_run_and_a_held_one_skips_it(tmp_path):
    spec = zeroshot_spec(tmp_path)
    folder = run_dir(spec.resolved)
    acquired = threading.Event()
    holder = hold_lock(folder, LOCK_GRACE_S + 1.0, acquired)  # another process runs it: skip, do not wait
    acquired.wait()
    assert state_of(folder).status == "running"
    outcome = execute_run(spec)
    holder.join()
    assert (outcome.status, outcome.detail) == ("skipped", "running in another process")
    acquired.clear()
    holder = hold_lock(folder, 0.3, acquired)  # a status probe's instant: wait for it, then run
    acquired.wait()
    outcome = execute_run(spec)
    holder.join()
    assert outcome.status == "done" and state_of(folder).status == "done"
