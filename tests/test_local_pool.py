"""The ``local`` executor: a pool of worker slots fed from a queue, no barrier, GPU pinning by
``CUDA_VISIBLE_DEVICES`` and CPU workers on a machine without GPUs. The pool is observed through a real launch:
the records' start/end times and each run's slot line in ``stdout.txt`` (the environment its subprocess got)."""

from __future__ import annotations

import json
import re
import subprocess
import sys
from pathlib import Path

import yaml

from jobs.executors import LocalConfig, slot_environments
from tests.conftest import base_run, write_dataset

REPO = Path(__file__).resolve().parent.parent


def launch(grid: Path, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, str(REPO / "jobs/launch.py"), "--grid", str(grid), "--no-analysis", *args],
                          capture_output=True, text=True, timeout=300)


def run_folders(results: Path, name: str) -> list[Path]:
    return sorted(p for p in (results / name).iterdir() if p.is_dir())


def test_slots_pin_gpus_or_use_cpu_workers():
    gpu_slots = slot_environments(LocalConfig(gpus=(0, 1), runs_per_gpu=2, threads_per_run=3))
    assert [s["CUDA_VISIBLE_DEVICES"] for s in gpu_slots] == ["0", "0", "1", "1"]
    assert all(s["OMP_NUM_THREADS"] == s["FCS_TORCH_THREADS"] == "3" for s in gpu_slots)
    cpu_slots = slot_environments(LocalConfig(gpus=(), workers=3))  # gpus: [] forces CPU workers
    assert [s["CUDA_VISIBLE_DEVICES"] for s in cpu_slots] == ["", "", ""]


def test_two_cpu_workers_run_a_queue_at_most_two_at_a_time_without_barrier(tmp_path):
    """One long run and three short ones on 2 CPU workers: never more than 2 at once, 2 at once at some point,
    and the short runs go through the other slot one after another while the long run holds its slot (a pool
    with a barrier after each pair would start the third run only after the long one)."""
    data = write_dataset(tmp_path / "data", "oxford_pets", 6, counts=(16, 4, 5))
    grid = tmp_path / "pool.yaml"
    grid.write_text(yaml.safe_dump({
        "name": "pool", "base": base_run(data, tmp_path / "results", shots=16, optim={"batch_size": 2}),
        "variants": [{"method": "coop", "optim.epochs": 300}, {"method": "zeroshot", "seed": [1, 2, 3]}],
        "executor": {"kind": "local", "workers": 2, "gpus": []}}))
    out = launch(grid)
    assert out.returncode == 0, out.stdout + out.stderr
    assert "4 to run (executor: local)" in out.stdout and "4 of 4 runs finished" in out.stdout
    folders = run_folders(tmp_path / "results", "pool")
    records = [json.loads((f / "record.json").read_text()) for f in folders]
    assert len(records) == 4 and all(r["status"] == "done" for r in records)
    spans = [(r["started_at"], r["finished_at"], r["config"]["method"]["name"]) for r in records]
    overlap = [sum(s <= t < e for s, e, _ in spans) for t, _, _ in spans]
    assert max(overlap) == 2, spans
    long_start, long_end, _ = next(s for s in spans if s[2] == "coop")
    short = sorted(s for s in spans if s[2] == "zeroshot")
    assert short[0][1] <= short[1][0] <= short[1][1] <= short[2][0]  # one slot: one short run after another
    assert short[1][0] < long_end, spans  # ... while the long run still held the other slot
    for folder in folders:  # CPU workers: no GPU visible, torch threads split between the slots
        slot = re.search(r"local pool slot: (.*)", (folder / "stdout.txt").read_text()).group(1)
        assert "CUDA_VISIBLE_DEVICES=''" in slot and "FCS_TORCH_THREADS=" in slot



def test_inline_executor_runs_with_threads_per_run_and_records_it(tmp_path):
    """``threads_per_run`` also sets the torch threads of in-process (inline) runs; each record says how many ran."""
    data = write_dataset(tmp_path / "data", "oxford_pets", 6, counts=(4, 2, 2))
    grid = tmp_path / "inline.yaml"
    grid.write_text(yaml.safe_dump({
        "name": "inline", "base": base_run(data, tmp_path / "results", method="zeroshot"),
        "grid": {"seed": [1, 2]}, "executor": {"kind": "inline", "threads_per_run": 2}}))
    out = launch(grid)  # the tests' environment gives every subprocess OMP_NUM_THREADS=1
    assert out.returncode == 0, out.stdout + out.stderr
    records = [json.loads((f / "record.json").read_text()) for f in run_folders(tmp_path / "results", "inline")]
    assert [r["env"]["threads"] for r in records] == [2, 2]
    default = launch(grid, "--executor-opt", "threads_per_run=null", "seed=3")
    assert default.returncode == 0, default.stdout + default.stderr
    records = [json.loads((f / "record.json").read_text()) for f in run_folders(tmp_path / "results", "inline")]
    assert sorted(r["env"]["threads"] for r in records) == [1, 2, 2]
