"""The ``inline`` and ``local`` executors, and :func:`execute_run`, through which every executor executes a run.

``inline``  in this process, one after the other (debugging).
``local``   a pool of worker slots; each slot runs one run at a time as a subprocess (``python -m jobs.run``), taking
            the next run from a queue as soon as it is free (no barrier). With GPUs, slot i is pinned to GPU
            ``i // runs_per_gpu`` through ``CUDA_VISIBLE_DEVICES``; without GPUs, ``workers`` CPU slots.
:func:`execute_run` takes the run's lock, re-checks that the run is not done, and writes the record; so a relaunch
reruns only what is missing or failed, and two launchers never execute the same run. Importing this module imports
no torch (the run's code is imported when a run executes).
"""

from __future__ import annotations

import os
import queue
import subprocess
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Callable, Iterable, Literal

from filelock import Timeout

from frozen_clip.errors import SuiteError
from jobs.executors.base import Outcome
from jobs.runfolder import read_record, run_dir, write_config
from jobs.state import run_lock

if TYPE_CHECKING:  # pragma: no cover - typing only
    from jobs.grid import Grid, RunSpec

REPO_ROOT = Path(__file__).resolve().parent.parent


@dataclass(frozen=True)
class LocalConfig:
    """The ``executor:`` block for ``local`` (and ``inline``, which ignores the pool settings)."""

    kind: Literal["inline", "local", "slurm"] = "local"
    workers: int | None = None  # CPU slots when there is no GPU (default: 1)
    runs_per_gpu: int = 1  # several runs per GPU in the local pool
    gpus: tuple[int, ...] | None = None  # GPU indices to use (default: all visible; [] = CPU workers only)
    threads_per_run: int | None = None  # torch threads per run (default: cores / slots)

    def validate(self) -> None:
        if self.workers is not None and self.workers < 1:
            raise ValueError("workers must be >= 1")
        if self.runs_per_gpu < 1:
            raise ValueError("runs_per_gpu must be >= 1")


# How long execute_run waits for a run's lock before concluding that another process runs it. Not 0: a
# ``--status`` probe holds the lock for an instant, and a job starting in that instant must not skip its run.
LOCK_GRACE_S = 2.0


def execute_run(spec: RunSpec, log: Callable[[str], None] | None = None) -> Outcome:
    """Execute one run under its lock (in this process)."""
    folder = run_dir(spec.resolved)
    lock = run_lock(folder)
    start = time.perf_counter()
    try:
        lock.acquire(timeout=LOCK_GRACE_S)
    except Timeout:
        return Outcome(spec.run_id, "skipped", "running in another process")
    try:
        record = read_record(folder)
        if record is not None and record.get("status") == "done":
            return Outcome(spec.run_id, "skipped", "already done")
        from jobs.execute import RunExecution  # the run's code: torch, the backbone, the method
        try:
            RunExecution(spec.resolved, log=log).run()
        except SuiteError as err:
            return Outcome(spec.run_id, "failed", str(err), time.perf_counter() - start, user_error=True)
        except Exception as err:  # the record holds the traceback
            return Outcome(spec.run_id, "failed", f"{type(err).__name__}: {err}", time.perf_counter() - start)
        return Outcome(spec.run_id, "done", "", time.perf_counter() - start)
    finally:
        lock.release()


def run_inline(specs: Iterable[RunSpec], report: Callable[[RunSpec, Outcome], None],
               log: Callable[[str], None] | None = None) -> list[Outcome]:
    """Execute runs one after the other in this process."""
    outcomes = []
    for spec in specs:
        outcome = execute_run(spec, log)
        report(spec, outcome)
        outcomes.append(outcome)
    return outcomes


def visible_gpus() -> list[int]:
    """Indices of the GPUs this process may use."""
    try:
        import torch
        return list(range(torch.cuda.device_count()))
    except Exception:  # noqa: BLE001 - no usable CUDA
        return []


def slot_environments(cfg: LocalConfig) -> list[dict[str, str]]:
    """One environment per worker slot: GPU slots pinned by ``CUDA_VISIBLE_DEVICES``, else CPU slots."""
    gpus = list(cfg.gpus) if cfg.gpus is not None else visible_gpus()
    if gpus:
        slots = [{"CUDA_VISIBLE_DEVICES": str(gpu)} for gpu in gpus for _ in range(cfg.runs_per_gpu)]
    else:
        slots = [{"CUDA_VISIBLE_DEVICES": ""} for _ in range(cfg.workers or 1)]
    threads = cfg.threads_per_run or max(1, (os.cpu_count() or 1) // len(slots))
    for env in slots:
        env["OMP_NUM_THREADS"] = str(threads)
        env["FCS_TORCH_THREADS"] = str(threads)
    return slots


def run_local(specs: list[RunSpec], cfg: LocalConfig, report: Callable[[RunSpec, Outcome], None]) -> list[Outcome]:
    """Execute runs in a pool of subprocess slots fed from a queue."""
    slots: "queue.Queue[dict[str, str]]" = queue.Queue()
    for env in slot_environments(cfg):
        slots.put(env)
    lock = threading.Lock()

    def work(spec: RunSpec) -> Outcome:
        env = slots.get()
        try:
            outcome = _run_subprocess(spec, env)
        finally:
            slots.put(env)
        with lock:
            report(spec, outcome)
        return outcome

    with ThreadPoolExecutor(max_workers=slots.qsize()) as pool:
        return list(pool.map(work, specs))


def _run_subprocess(spec: RunSpec, slot_env: dict[str, str]) -> Outcome:
    folder = run_dir(spec.resolved)
    folder.mkdir(parents=True, exist_ok=True)
    config_file = folder / "config.yaml"
    write_config(folder, spec.config)
    env = {**os.environ, **slot_env, "PYTHONPATH": os.pathsep.join([str(REPO_ROOT), os.environ.get("PYTHONPATH", "")])}
    start = time.perf_counter()
    with open(folder / "stdout.txt", "a") as out:
        pinned = " ".join(f"{k}={v!r}" for k, v in sorted(slot_env.items()))
        out.write(f"[{time.strftime('%H:%M:%S')}] local pool slot: {pinned}\n")
        out.flush()
        proc = subprocess.run([sys.executable, "-m", "jobs.run", "--config", str(config_file)], env=env,
                              stdout=out, stderr=subprocess.STDOUT, cwd=os.getcwd())
    seconds = time.perf_counter() - start
    record = read_record(folder) or {}
    if proc.returncode == 0:
        return Outcome(spec.run_id, "done" if record.get("status") == "done" else "skipped", "", seconds)
    failure = record.get("failure") or {}
    detail = failure.get("reason") or f"exit code {proc.returncode} (see {folder / 'stdout.txt'})"
    return Outcome(spec.run_id, "failed", detail, seconds, user_error=proc.returncode == 2)


class InlineExecutor:
    """Every run in this process, one after the other."""

    name = "inline"
    Options = LocalConfig

    def submit(self, grid: "Grid", specs: list["RunSpec"], options: LocalConfig,
               report: Callable[["RunSpec", Outcome], None], wait: bool = True) -> list[Outcome]:
        return run_inline(specs, report)


class LocalExecutor:
    """A pool of subprocess slots on this machine (GPUs pinned per slot)."""

    name = "local"
    Options = LocalConfig

    def submit(self, grid: "Grid", specs: list["RunSpec"], options: LocalConfig,
               report: Callable[["RunSpec", Outcome], None], wait: bool = True) -> list[Outcome]:
        return run_local(specs, options, report)
