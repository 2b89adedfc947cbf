"""Whole runs through the real entry points: records, relaunch, status, resume after SIGKILL, atomic records,
and clear failures (exit code 2) on bad data that leave finished runs untouched."""

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

from tests.conftest import base_run, write_dataset

REPO = Path(__file__).resolve().parent.parent


def launch(*args: str, cwd: Path) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, str(REPO / "jobs/launch.py"), *args], capture_output=True, text=True,
                          cwd=cwd, timeout=600)


def write_grid(tmp_path: Path, data_root: Path, name: str = "e2e", methods=("zeroshot", "coop")) -> Path:
    grid = {"name": name, "base": base_run(data_root, tmp_path / "results"),
            "grid": {"method": list(methods), "seed": [1, 2]}, "executor": {"kind": "inline"}}
    path = tmp_path / f"{name}.yaml"
    path.write_text(yaml.safe_dump(grid))
    return path


def records(results: Path) -> dict[str, dict]:
    return {p.parent.name: json.loads(p.read_text()) for p in results.glob("*/*/record.json")}


def test_launch_twice_runs_nothing_twice_and_status(data_root, tmp_path):
    grid = write_grid(tmp_path, data_root)
    first = launch("--grid", str(grid), "--no-analysis", cwd=tmp_path)
    assert first.returncode == 0, first.stdout + first.stderr
    assert "4 to run" in first.stdout and "base" in first.stdout  # the results table
    # not a terminal: one line per epoch of each trained run, with its loss, the run's ETA and the grid's
    epoch_lines = [line for line in first.stdout.splitlines() if "] epoch " in line]
    assert len(epoch_lines) == 2 * 2 and all("loss" in line for line in epoch_lines), first.stdout
    assert "ETA" in epoch_lines[0] and "grid ETA" in epoch_lines[0], epoch_lines
    recs = records(tmp_path / "results")
    assert len(recs) == 4 and all(r["status"] == "done" for r in recs.values())
    rec = next(r for r in recs.values() if r["config"]["method"]["name"] == "coop")
    assert set(rec["metrics"]) == {"base", "novel"} and set(rec["summary"]) == {"base", "novel", "hm"}
    # base-to-novel: CoOp's official 4 context tokens from "a photo of a" (vit_b16_ctxv1), each as wide as the text
    assert rec["cost"]["trainable_params"] == 4 * 32 and rec["history"][-1]["epoch"] == 2
    assert rec["env"]["versions"]["open_clip"].startswith("3.3") and rec["metrics"]["base"]["per_class_accuracy"]
    mtimes = {p: p.stat().st_mtime_ns for p in (tmp_path / "results").glob("*/*/record.json")}
    second = launch("--grid", str(grid), "--no-analysis", cwd=tmp_path)
    assert second.returncode == 0 and "Nothing to run" in second.stdout
    assert mtimes == {p: p.stat().st_mtime_ns for p in (tmp_path / "results").glob("*/*/record.json")}
    status = launch("--grid", str(grid), "--status", cwd=tmp_path)
    assert status.returncode == 0 and "4 runs: 4 done" in status.stdout


def test_failed_run_is_rerun(data_root, tmp_path):
    grid = write_grid(tmp_path, data_root, methods=("zeroshot",))
    assert launch("--grid", str(grid), "--no-analysis", cwd=tmp_path).returncode == 0
    path = next((tmp_path / "results").glob("*/*/record.json"))
    rec = json.loads(path.read_text())
    rec["status"], rec["failure"] = "failed", {"reason": "RuntimeError: simulated", "traceback": ""}
    path.write_text(json.dumps(rec))
    status = launch("--grid", str(grid), "--status", cwd=tmp_path)
    assert "failed" in status.stdout and "simulated" in status.stdout
    again = launch("--grid", str(grid), "--no-analysis", cwd=tmp_path)
    assert "1 to run" in again.stdout
    assert json.loads(path.read_text())["status"] == "done"


def run_cmd(cfg: dict, tmp_path: Path) -> list[str]:
    path = tmp_path / f"run-{time.monotonic_ns()}.yaml"
    path.write_text(yaml.safe_dump(cfg))
    return [sys.executable, str(REPO / "jobs/run.py"), "--config", str(path)]


def test_sigkill_mid_training_resumes_to_identical_metrics(tmp_path):
    data = write_dataset(tmp_path / "data", "oxford_pets", 6, counts=(16, 4, 6))
    optim = {"epochs": 6, "batch_size": 2}
    cfg_a = base_run(data, tmp_path / "a", method="clip_adapter", shots=16, optim=optim)
    cfg_b = base_run(data, tmp_path / "b", method="clip_adapter", shots=16, optim=optim)
    reference = subprocess.run(run_cmd(cfg_a, tmp_path), capture_output=True, text=True, timeout=600)
    assert reference.returncode == 0, reference.stderr
    proc = subprocess.Popen(run_cmd(cfg_b, tmp_path), stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    checkpoint = next_path = None
    deadline = time.time() + 300
    while time.time() < deadline:
        found = list((tmp_path / "b").glob("runs/*/checkpoints/last.pt"))
        if found:
            checkpoint = found[0]
            break
        time.sleep(0.01)
    assert checkpoint is not None and proc.poll() is None, "the run finished before it could be killed"
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    folder = checkpoint.parent.parent
    assert not (folder / "record.json").exists()
    resumed = subprocess.run(run_cmd(cfg_b, tmp_path), capture_output=True, text=True, timeout=600)
    assert resumed.returncode == 0, resumed.stderr
    assert "resumed from" in (folder / "log.txt").read_text()
    rec_a, rec_b = list(records(tmp_path / "a").values())[0], json.loads((folder / "record.json").read_text())
    assert rec_b["cost"]["resumed_from_epoch"] >= 1
    assert rec_a["metrics"] == rec_b["metrics"]
    strip = lambda h: [{k: v for k, v in e.items() if k != "time_s"} for e in h]  # noqa: E731
    assert strip(rec_a["history"]) == strip(rec_b["history"])
    del next_path


WRITER = """
import sys
sys.path.insert(0, {repo!r})
from frozen_clip import atomic
payload = {{"status": "done", "blob": ["x" * 1000] * 4000}}
i = 0
while True:
    payload["i"] = i
    atomic.write_json({path!r}, payload)
    if i == 0:
        print("ready", flush=True)
    i += 1
"""


def test_record_never_half_written_when_killed(tmp_path):
    """Kill a writer at random moments; the record is always complete, and some kills landed mid-write.

    Kills go on (at least 6, at most 40) until two landed while a temporary file existed: how often a random kill
    lands mid-write depends on the machine's disk and load, so a fixed number of kills can miss every write."""
    import random
    target = tmp_path / "record.json"
    killed_mid_write = 0
    rng = random.Random(0)
    for attempt in range(40):
        if attempt >= 6 and killed_mid_write >= 2:
            break
        proc = subprocess.Popen([sys.executable, "-c", WRITER.format(repo=str(REPO), path=str(target))],
                                stdout=subprocess.PIPE, text=True)
        assert proc.stdout.readline().strip() == "ready"
        time.sleep(rng.uniform(0.05, 0.4))
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait()
        leftovers = list(tmp_path.glob(".record.json.*.tmp"))
        killed_mid_write += bool(leftovers)
        for leftover in leftovers:
            leftover.unlink()
        data = json.loads(target.read_text())  # always the complete previous or new version
        assert data["status"] == "done" and len(data["blob"]) == 4000
    assert killed_mid_write >= 1, "no kill landed during a write; the test did not exercise anything"


def bad_data_case(kind: str, root: Path) -> str:
    pets = root / "oxford_pets"
    split = json.loads((pets / "split_zhou_OxfordPets.json").read_text())
    victim = pets / "images" / split["test"][0][0]
    if kind == "missing split file":
        (pets / "split_zhou_OxfordPets.json").unlink()
        return "split_zhou_OxfordPets.json"
    if kind == "missing image":
        victim.unlink()
        return str(victim)
    if kind == "corrupt image":
        victim.write_bytes(b"this is not a png")
        return str(victim)
    raise AssertionError(kind)


@pytest.mark.parametrize("kind", ["missing split file", "missing image", "corrupt image", "missing root"])
def test_bad_data_exit_2_and_finished_runs_untouched(tmp_path, kind):
    root = write_dataset(tmp_path / "data", "oxford_pets", 6)
    write_dataset(root, "caltech101", 4)
    grid = write_grid(tmp_path, root, methods=("zeroshot",))
    assert launch("--grid", str(grid), "--no-analysis", cwd=tmp_path).returncode == 0
    finished = {p: p.read_bytes() for p in (tmp_path / "results").rglob("*") if p.is_file()
                and "cache" not in p.parts}
    if kind == "missing root":
        expected = str(tmp_path / "nowhere")
        overrides = [f"data_root={expected}", "method=coop"]
    else:
        expected = bad_data_case(kind, root)
        overrides = ["method=coop"]
    proc = launch("--grid", str(grid), "--no-analysis", *overrides, cwd=tmp_path)
    assert proc.returncode == 2, proc.stdout + proc.stderr
    assert expected in proc.stderr and proc.stderr.count("error:") == 1
    assert {p: p.read_bytes() for p in finished} == finished
    assert not [p for p in (tmp_path / "results").glob("e2e/*") if p not in {q.parents[0] for q in finished}
                and (p / "record.json").exists()]


def test_diverged_training_fails_the_run_with_the_reason(data_root, tmp_path):
    """A loss that becomes NaN/inf fails the run (a 'done' record with chance-level metrics would pass for a result)."""
    from jobs.config import resolve
    from jobs.runfolder import read_record, run_dir
    from jobs.executors import execute_run
    from jobs.grid import RunSpec
    resolved = resolve(base_run(data_root, tmp_path, optim={"lr": 1e30, "epochs": 3}), "t")
    outcome = execute_run(RunSpec(resolved.run_id, resolved.config, resolved))
    record = read_record(run_dir(resolved))
    assert outcome.status == "failed" and record["status"] == "failed"
    assert record["failure"]["reason"].startswith("TrainingDiverged: the training loss became")
    assert "metrics" not in record or not record.get("metrics")
