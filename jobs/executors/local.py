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

import errno
import os
import queue
import subprocess
import sys
import threading
import time
import uuid
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Callable, Iterable, Literal

from filelock import Timeout

from frozen_clip import atomic
from frozen_clip.errors import SuiteError
from jobs.executors.base import Outcome
from jobs.runfolder import LAUNCH_ID_ENV, RECORD_NAME, read_record, run_dir, write_config
from jobs.state import run_lock

if TYPE_CHECKING:  # pragma: no cover - typing only
    from jobs.grid import Grid, RunSpec

REPO_ROOT = Path(__file__).resolve().parent.parent


@dataclass(frozen=True)
class LocalConfig:
    """The ``executor:`` block for ``local`` (and ``inline``, which reads only ``threads_per_run``)."""

    kind: Literal["inline", "local", "slurm"] = "local"
    workers: int | None = None  # CPU slots when there is no GPU (default: 1)
    runs_per_gpu: int = 1  # several runs per GPU in the local pool
    gpus: tuple[int, ...] | None = None  # GPU indices to use (default: all visible; [] = CPU workers only)
    threads_per_run: int | None = None  # torch threads per run (default: cores / slots; inline: torch's default)

    def validate(self) -> None:
        if self.workers is not None and self.workers < 1:
            raise ValueError("workers must be >= 1")
        if self.runs_per_gpu < 1:
            raise ValueError("runs_per_gpu must be >= 1")
        if self.threads_per_run is not None and self.threads_per_run < 1:
            raise ValueError(f"threads_per_run must be null (cores / slots) or >= 1, got {self.threads_per_run}")
        if self.gpus is not None and any(g < 0 for g in self.gpus):
            raise ValueError(f"gpus must be GPU indices >= 0, got {list(self.gpus)}")


# How long execute_run waits for a run's lock before concluding that another process runs it. Not 0: a
# ``--status`` probe holds the lock for an instant, and a job starting in that instant must not skip its run.
LOCK_GRACE_S = 2.0


def execute_run(spec: RunSpec, log: Callable[[str], None] | None = None) -> Outcome:
    """Execute one run under its lock (in this process)."""
    folder = run_dir(spec.resolved)
    start = time.perf_counter()
    try:
        lock = run_lock(folder)
        lock.acquire(timeout=LOCK_GRACE_S)
    except Timeout:
        return Outcome(spec.run_id, "skipped", "running in another process")
    except OSError as err:  # a lock file that cannot be created or opened (permissions, a folder in its place)
        return Outcome(spec.run_id, "failed", f"cannot open the run's lock file {folder / '.lock'} ({err.strerror}): "
                       "check the permissions of the run folder", user_error=True)
    try:
        record = read_record(folder)
        if record is not None and record.get("status") == "done":
            return Outcome(spec.run_id, "skipped", "already done")
        if record is None and (folder / RECORD_NAME).exists():  # damaged: keep it to inspect, run again
            atomic.quarantine(folder / RECORD_NAME, "run record", "not valid JSON", log)
        from jobs.execute import RunExecution  # the run's code: torch, the backbone, the method
        try:
            RunExecution(spec.resolved, log=log).run()
        except SuiteError as err:
            return Outcome(spec.run_id, "failed", str(err), time.perf_counter() - start, user_error=True)
        except OSError as err:
            if err.errno not in (errno.ENOSPC, errno.EDQUOT):
                return Outcome(spec.run_id, "failed", f"{type(err).__name__}: {err}", time.perf_counter() - start)
            return Outcome(spec.run_id, "failed", f"no space left on the device writing {err.filename or folder}: "
                           "free some and relaunch; the run resumes from its last checkpoint",
                           time.perf_counter() - start, user_error=True)
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


class RunProcesses:
    """The run subprocesses of a local pool, so that an interrupted launch stops every one of them (a SIGTERM to
    the launcher reaches only the launcher) and starts no more."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._running: dict[subprocess.Popen, str] = {}
        self.stopping = threading.Event()
        self.launch_id = uuid.uuid4().hex  # recorded by the runs this pool executes (``LAUNCH_ID_ENV``)

    def start(self, label: str, args: list[str], **kwargs: object) -> subprocess.Popen | None:
        """Start a run's process, or nothing (None) once the pool is stopping."""
        with self._lock:
            if self.stopping.is_set():
                return None
            proc = subprocess.Popen(args, **kwargs)  # type: ignore[call-overload]
            self._running[proc] = label
            return proc

    def finished(self, proc: subprocess.Popen) -> None:
        with self._lock:
            self._running.pop(proc, None)

    def stop(self, grace_s: float = 5.0) -> list[str]:
        """Start nothing more; SIGTERM every running run (SIGKILL after ``grace_s``); the labels of those stopped.
        A stopped run keeps its last checkpoint and its lock is released with its process: a relaunch resumes it."""
        self.stopping.set()
        with self._lock:
            running = dict(self._running)
        for proc in running:
            if proc.poll() is None:
                proc.terminate()
        deadline = time.monotonic() + grace_s
        for proc in running:
            try:
                proc.wait(timeout=max(0.0, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
        return list(running.values())


def run_local(specs: list[RunSpec], cfg: LocalConfig, report: Callable[[RunSpec, Outcome], None]) -> list[Outcome]:
    """Execute runs in a pool of subprocess slots fed from a queue. Interrupted (Ctrl-C, or SIGTERM turned into an
    exception by the launcher), it stops every running run within seconds, says which, and re-raises."""
    slots: "queue.Queue[dict[str, str]]" = queue.Queue()
    for env in slot_environments(cfg):
        slots.put(env)
    lock = threading.Lock()
    processes = RunProcesses()

    def work(spec: RunSpec) -> Outcome:
        env = slots.get()
        try:
            outcome = _run_subprocess(spec, env, processes)
        finally:
            slots.put(env)
        if processes.stopping.is_set():  # stopped with the launch: not a failure of the run
            return Outcome(spec.run_id, "interrupted", outcome.detail, outcome.seconds)
        with lock:
            report(spec, outcome)
        return outcome

    with ThreadPoolExecutor(max_workers=slots.qsize()) as pool:
        futures = [pool.submit(work, spec) for spec in specs]
        try:
            return [future.result() for future in futures]
        except BaseException:
            for future in futures:
                future.cancel()
            stopped = processes.stop()
            if stopped:
                print(f"stopped {len(stopped)} running run(s): " + "; ".join(stopped), file=sys.stderr, flush=True)
            raise


def _run_subprocess(spec: RunSpec, slot_env: dict[str, str], processes: RunProcesses) -> Outcome:
    from jobs.config import run_label
    folder = run_dir(spec.resolved)
    folder.mkdir(parents=True, exist_ok=True)
    config_file = folder / "config.yaml"
    write_config(folder, spec.config)
    env = {**os.environ, **slot_env, "PYTHONPATH": os.pathsep.join([str(REPO_ROOT), os.environ.get("PYTHONPATH", "")]),
           LAUNCH_ID_ENV: processes.launch_id}
    start = time.perf_counter()
    with open(folder / "stdout.txt", "a") as out:
        pinned = " ".join(f"{k}={v!r}" for k, v in sorted(slot_env.items()))
        out.write(f"[{time.strftime('%H:%M:%S')}] local pool slot: {pinned}\n")
        out.flush()
        proc = processes.start(f"{spec.run_id} {run_label(spec.config)}", [sys.executable, "-m", "jobs.run", "--config", str(config_file)],
                               env=env, stdout=out, stderr=subprocess.STDOUT, cwd=os.getcwd())
        if proc is None:  # the launch was interrupted before this run started
            return Outcome(spec.run_id, "interrupted", "not started", 0.0)
        try:
            proc.wait()
        finally:
            processes.finished(proc)
    seconds = time.perf_counter() - start
    record = read_record(folder) or {}
    if proc.returncode == 0:
        env = record.get("env") or {}
        if record.get("status") == "done" and env.get("launch_id") == processes.launch_id:
            return Outcome(spec.run_id, "done", "", seconds)
        if record.get("status") == "done":  # finished by another launcher of the grid (or before this launch)
            return Outcome(spec.run_id, "skipped", f"done by another launch (host {env.get('hostname', '?')}, "
                                                   f"pid {env.get('pid', '?')})", seconds)
        return Outcome(spec.run_id, "skipped", "running in another process", seconds)
    failure = record.get("failure") or {}
    detail = failure.get("reason") or f"exit code {proc.returncode} (see {folder / 'stdout.txt'})"
    return Outcome(spec.run_id, "failed", detail, seconds, user_error=proc.returncode == 2)


class InlineExecutor:
    """Every run in this process, one after the other."""

    name = "inline"
    Options = LocalConfig

    def describe(self, grid: "Grid", specs: list["RunSpec"], options: LocalConfig) -> list[str]:
        return []

    def submit(self, grid: "Grid", specs: list["RunSpec"], options: LocalConfig,
               report: Callable[["RunSpec", Outcome], None], wait: bool = True) -> list[Outcome]:
        # a report that also takes log lines (the launcher's progress) gets each run's epoch lines as they come
        log = getattr(report, "log", None)
        if options.threads_per_run is None:  # torch's own default: one thread per core
            return run_inline(specs, report, log)
        import torch
        previous = torch.get_num_threads()
        torch.set_num_threads(options.threads_per_run)
        try:
            return run_inline(specs, report, log)
        finally:
            torch.set_num_threads(previous)


class LocalExecutor:
    """A pool of subprocess slots on this machine (GPUs pinned per slot)."""

    name = "local"
    Options = LocalConfig

    def describe(self, grid: "Grid", specs: list["RunSpec"], options: LocalConfig) -> list[str]:
        return []

    def submit(self, grid: "Grid", specs: list["RunSpec"], options: LocalConfig,
               report: Callable[["RunSpec", Outcome], None], wait: bool = True) -> list[Outcome]:
        return run_local(specs, options, report)
