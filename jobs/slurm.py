"""The ``slurm`` executor: a whole grid as one submitit job array, submit-and-exit, preemption-safe.

What happens on ``python jobs/launch.py --grid FILE --executor slurm``:

1. the code is snapshotted (:func:`snapshot_code`: the suite's packages copied into
   ``<results_dir>/.snapshots/<content hash>``), so jobs that wait in the queue run the code as submitted, not
   whatever the checkout holds when they start;
2. each pending run's resolved config is written to ``<run folder>/config.yaml``;
3. one ``sbatch`` submits every pending run as one job array (``executor.batch()``), at most
   ``array_parallelism`` tasks at a time; each task runs :class:`SlurmRun`, which executes the run through the same
   :func:`jobs.executors.execute_run` as every other executor (run lock, done re-check, atomic record);
4. ``submitted.json`` (job id, array index, time) is written in each run folder, so ``--status`` shows ``queued``;
5. the launcher prints the job ids and exits (``--wait`` blocks until every job has ended).

Timeouts and preemption: Slurm signals the job (``USR2``, ``signal_delay_s`` before the time limit, or on
preemption); submitit then calls :meth:`SlurmRun.checkpoint`, which returns a *fresh* :class:`SlurmRun` holding only
the run's config path (no pickled training state), and requeues the job. The new job resumes from the run folder's
``checkpoints/last.pt`` (written every epoch); the trainer re-seeds per epoch, so the resumed run's metrics equal an
uninterrupted run's. A job requeued by Slurm itself (``scontrol requeue``, node failure) resumes the same way.
Requeues are bounded by ``max_requeues`` (submitit's ``max_num_timeout`` for timeouts, ``SLURM_RESTART_COUNT`` for
every kind) and recorded in ``<run folder>/requeues.json``.

Status comes from disk (:mod:`jobs.state`); :func:`scheduler_states` adds what only the scheduler knows (``sacct``):
a job cancelled or killed before it could write a record is reported as failed, with the reason.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import json
import os
import shlex
import shutil
import socket
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable, Iterable, Literal

import submitit

from frozen_clip import atomic
from frozen_clip.errors import ConfigError

from jobs.runfolder import REPO_ROOT, read_record, run_dir, write_config, write_record

if TYPE_CHECKING:  # pragma: no cover - typing only
    from jobs.executors.base import Outcome
    from jobs.grid import Grid, RunSpec

# the suite's importable packages ([tool.setuptools] packages in pyproject.toml): what a job needs to run
SNAPSHOT_PACKAGES = ("frozen_clip", "adapters", "baselines", "protocols", "world", "jobs", "analysis")
REQUEUES_NAME = "requeues.json"
SNAPSHOT_INFO = "SNAPSHOT.json"



@dataclass(frozen=True)
class SlurmConfig:
    """The grid's ``executor:`` block for ``kind: slurm`` (every key also settable with ``--executor-opt k=v``).

    Named keys cover what most clusters need; ``submitit`` passes any other submitit parameter (AutoExecutor
    spelling, e.g. ``slurm_exclude``, ``slurm_signal_delay_s``, ``nodes``) and ``additional_parameters`` any raw
    ``#SBATCH`` flag (e.g. ``{mail-type: END}``). Defaults are submitit 1.5.4's unless stated otherwise.
    """

    kind: Literal["slurm"] = "slurm"
    partition: str | None = None  # --partition (default: the cluster's default partition)
    account: str | None = None  # --account (default: the user's default account)
    qos: str | None = None  # --qos (default: the cluster's)
    timeout_min: int = 120  # --time per job, minutes (suite default, DESIGN.md; submitit's is 5); requeues extend it
    gpus_per_node: int = 0  # --gpus-per-node; 0 requests none (a CPU job); one run uses one GPU: set 1 on GPU nodes
    cpus_per_task: int = 4  # --cpus-per-task (suite default: loader workers of one run); also torch's thread count
    mem_gb: float | None = None  # --mem in GB (default: the cluster's DefMemPerCPU x cpus)
    constraint: str | None = None  # --constraint, e.g. "a100|h100"
    array_parallelism: int = 256  # at most this many array tasks run at once (--array=0-N%K)
    setup: tuple[str, ...] = ()  # shell lines run before the job starts, e.g. "module load cuda", "source venv/..."
    additional_parameters: dict[str, Any] = field(default_factory=dict)  # raw #SBATCH flags (submitit passes them)
    submitit: dict[str, Any] = field(default_factory=dict)  # other AutoExecutor parameters, e.g. slurm_exclude
    max_requeues: int = 3  # requeues per run after timeout/preemption (submitit's max_num_timeout default)
    folder: str | None = None  # submitit's logs and pickles (default: <results_dir>/<grid name>/.submitit/%j)
    snapshot: bool = True  # run the code as submitted from <results_dir>/.snapshots/<hash> (False: the checkout)
    python: str | None = None  # the job's interpreter (default: the launcher's sys.executable)

    def validate(self) -> None:
        for name in ("timeout_min", "cpus_per_task", "array_parallelism"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be >= 1, got {getattr(self, name)}")
        if self.gpus_per_node < 0:
            raise ValueError(f"gpus_per_node must be >= 0, got {self.gpus_per_node}")
        if self.max_requeues < 0:
            raise ValueError(f"max_requeues must be >= 0, got {self.max_requeues}")
        if self.mem_gb is not None and self.mem_gb <= 0:
            raise ValueError(f"mem_gb must be > 0, got {self.mem_gb}")


def executor_parameters(cfg: SlurmConfig, name: str, setup: Iterable[str] = ()) -> dict[str, Any]:
    """The ``AutoExecutor.update_parameters`` keywords of ``cfg`` (``submitit`` entries win over named keys)."""
    params: dict[str, Any] = {"name": name, "timeout_min": cfg.timeout_min, "cpus_per_task": cfg.cpus_per_task,
                              "slurm_array_parallelism": cfg.array_parallelism,
                              "slurm_setup": [*setup, *cfg.setup]}
    if cfg.gpus_per_node:
        params["gpus_per_node"] = cfg.gpus_per_node
    if cfg.mem_gb is not None:
        params["mem_gb"] = cfg.mem_gb
    for key in ("partition", "account", "qos", "constraint"):
        if getattr(cfg, key) is not None:
            params[f"slurm_{key}"] = getattr(cfg, key)
    if cfg.additional_parameters:
        params["slurm_additional_parameters"] = dict(cfg.additional_parameters)
    params.update(cfg.submitit)
    return params


def make_executor(cfg: SlurmConfig, folder: Path, name: str, setup: Iterable[str] = ()) -> submitit.AutoExecutor:
    """A submitit Slurm executor for ``cfg``; a parameter submitit rejects raises :class:`ConfigError`."""
    kwargs: dict[str, Any] = {"slurm_max_num_timeout": cfg.max_requeues}
    if cfg.python is not None:
        kwargs["slurm_python"] = cfg.python
    executor = submitit.AutoExecutor(folder=str(folder), cluster="slurm", **kwargs)
    try:
        executor.update_parameters(**executor_parameters(cfg, name, setup))
    except (ValueError, NameError, TypeError) as err:  # submitit's messages list the valid parameters
        raise ConfigError(f"executor (slurm): {err}") from None
    return executor


# -- the job ---------------------------------------------------------------------------------------------------------
class SlurmRun(submitit.helpers.Checkpointable):
    """One run as a Slurm job: holds only the run's config path, the launch directory and the requeue bound.

    Calling it executes the run through :func:`jobs.executors.execute_run` (resuming from the run folder's last
    checkpoint when there is one). :meth:`checkpoint` returns a fresh instance, never pickled training state.
    """

    def __init__(self, config_path: str, workdir: str, max_requeues: int) -> None:
        self.config_path = config_path
        self.workdir = workdir
        self.max_requeues = max_requeues

    def __call__(self) -> str:
        os.chdir(self.workdir)  # relative paths in the config mean what they meant at submission
        threads = os.environ.get("SLURM_CPUS_PER_TASK")
        if threads:
            import torch
            torch.set_num_threads(int(threads))
        from jobs.executors import execute_run
        spec = self.spec()
        restarts = int(os.environ.get("SLURM_RESTART_COUNT", "0") or 0)
        append_requeue_event(Path(self.config_path).parent, "start", restart_count=restarts, code=str(REPO_ROOT))
        print(f"fcs job {job_id_from_env()}: run {spec.run_id}, restart {restarts}, code from {REPO_ROOT}", flush=True)
        if restarts > self.max_requeues:
            return fail_run(spec, f"requeued {restarts} times, more than executor.max_requeues={self.max_requeues}")
        outcome = execute_run(spec, log=lambda line: print(line, flush=True))
        if outcome.status == "failed":  # the record holds the reason; a failed job makes sacct say so too
            raise RuntimeError(f"run {spec.run_id} failed: {outcome.detail}")
        return f"{outcome.status}: {spec.run_id} {outcome.detail}".strip()

    def spec(self) -> "RunSpec":
        """The run, resolved again from its config file (resolving a resolved config is idempotent)."""
        from jobs.config import resolve
        from jobs.grid import RunSpec
        from jobs.runfolder import read_run_config
        resolved = resolve(read_run_config(self.config_path), self.config_path)
        return RunSpec(resolved.run_id, resolved.config, resolved)

    def checkpoint(self, *args: Any, **kwargs: Any) -> submitit.helpers.DelayedSubmission:
        """Called by submitit on timeout/preemption: requeue a fresh instance (it resumes from the run folder)."""
        append_requeue_event(Path(self.config_path).parent, "checkpoint")
        fresh = SlurmRun(self.config_path, self.workdir, self.max_requeues)
        return submitit.helpers.DelayedSubmission(fresh)


def job_id_from_env() -> str:
    """``<array job id>_<task id>`` (or the plain job id) of the current Slurm job, '' outside one."""
    array_id, task = os.environ.get("SLURM_ARRAY_JOB_ID"), os.environ.get("SLURM_ARRAY_TASK_ID")
    return f"{array_id}_{task}" if array_id and task else os.environ.get("SLURM_JOB_ID", "")


def append_requeue_event(folder: Path, event: str, **fields: Any) -> None:
    """Append one event (job start or checkpoint-for-requeue) to the run folder's ``requeues.json``."""
    path = Path(folder) / REQUEUES_NAME
    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError):
        data = {"requeues": 0, "events": []}
    entry = {"event": event, "job_id": job_id_from_env(), "at": now_iso(), "host": socket.gethostname(), **fields}
    data["events"].append(entry)
    data["requeues"] = max([e.get("restart_count", 0) for e in data["events"]] + [0])
    atomic.write_json(path, data)


def fail_run(spec: "RunSpec", reason: str) -> str:
    """Write a failed record for a run that will not be executed (e.g. requeued too often), under its lock."""
    from filelock import Timeout

    from jobs.runfolder import SCHEMA_VERSION
    from jobs.state import run_lock
    folder = run_dir(spec.resolved)
    lock = run_lock(folder)
    try:
        lock.acquire(timeout=5)
    except Timeout:
        return f"skipped: {spec.run_id} running in another process"
    try:
        record = read_record(folder)
        if record is not None and record.get("status") == "done":
            return f"skipped: {spec.run_id} already done"
        write_record(folder, {
            "schema_version": SCHEMA_VERSION, "run_id": spec.run_id, "config": spec.config, "status": "failed",
            "failure": {"reason": reason, "traceback": "", "user_error": False}, "finished_at": now_iso()})
    finally:
        lock.release()
    print(f"fcs job {job_id_from_env()}: {reason}", flush=True)
    return f"failed: {spec.run_id} {reason}"


def now_iso() -> str:
    return dt.datetime.now(dt.timezone.utc).isoformat()


# -- code snapshot ---------------------------------------------------------------------------------------------------
def code_files(source: Path = REPO_ROOT, packages: Iterable[str] = SNAPSHOT_PACKAGES) -> list[Path]:
    """The files of the suite's packages under ``source`` (relative, sorted), without caches."""
    files = []
    for package in packages:
        for path in (source / package).rglob("*"):
            if path.is_file() and "__pycache__" not in path.parts and path.suffix != ".pyc":
                files.append(path.relative_to(source))
    return sorted(files)


def snapshot_code(dest_root: Path, source: Path = REPO_ROOT,
                  packages: Iterable[str] = SNAPSHOT_PACKAGES) -> Path:
    """Copy the suite's packages to ``dest_root/<content hash>`` (reused when the code is unchanged).

    A plain copy in Python rather than ``submitit.helpers.RsyncSnapshot``: no rsync or git needed, and files not yet
    committed are included (the code that runs is the code the launcher saw).
    """
    files = code_files(source, packages)
    digest = hashlib.sha256()
    for rel in files:
        digest.update(str(rel).encode() + b"\0" + (source / rel).read_bytes() + b"\0")
    target = Path(dest_root) / digest.hexdigest()[:16]
    if target.is_dir():
        return target
    tmp = Path(dest_root) / f".tmp-{target.name}-{os.getpid()}"
    for rel in files:
        (tmp / rel).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(source / rel, tmp / rel)
    from jobs.runfolder import git_sha
    atomic.write_json(tmp / SNAPSHOT_INFO, {"source": str(source), "git_sha": git_sha(), "created_at": now_iso(),
                                            "files": len(files)})
    try:
        tmp.rename(target)
    except OSError:  # another launcher made the same snapshot meanwhile
        shutil.rmtree(tmp, ignore_errors=True)
    return target


def job_setup(code_dir: Path) -> list[str]:
    """Shell lines that make the job import the suite from ``code_dir`` (before any user setup line)."""
    quoted = shlex.quote(str(code_dir))
    # `python -m submitit.core._submit` puts the working directory first on sys.path: it must be the code folder
    return [f"cd {quoted}", f"export PYTHONPATH={quoted}${{PYTHONPATH:+:$PYTHONPATH}}"]


# -- submission ------------------------------------------------------------------------------------------------------
class SlurmExecutor:
    """The grid's pending runs as one job array; returns at once, or when they have ended with ``--wait``."""

    name = "slurm"
    Options = SlurmConfig

    def submit(self, grid: "Grid", specs: list["RunSpec"], options: SlurmConfig,
               report: Callable[["RunSpec", "Outcome"], None], wait: bool = False) -> list["Outcome"] | None:
        submit_grid(grid, specs, options)
        if not wait:
            return None
        from jobs.executors.base import Outcome
        outcomes = []
        for spec, state in zip(specs, wait_for_runs(specs)):
            outcome = Outcome(spec.run_id, state.status, state.reason)
            report(spec, outcome)
            outcomes.append(outcome)
        return outcomes


def submit_grid(grid: "Grid", pending: list["RunSpec"], cfg: SlurmConfig) -> None:
    """Submit ``pending`` as one job array, write ``submitted.json`` per run, print the ids."""
    if shutil.which("sbatch") is None or shutil.which("srun") is None:
        raise ConfigError("executor slurm: sbatch/srun not found on PATH; run on a Slurm login node, or use "
                          "--executor local")
    results_root = grid.results_dir.resolve().parent
    code_dir = snapshot_code(results_root / ".snapshots") if cfg.snapshot else REPO_ROOT
    folder = Path(cfg.folder) if cfg.folder else grid.results_dir.resolve() / ".submitit" / "%j"
    executor = make_executor(cfg, folder.resolve(), f"fcs-{grid.name}", job_setup(code_dir))
    workdir = os.getcwd()
    runs = []
    for spec in pending:
        config_path = str(write_config(run_dir(spec.resolved), spec.config).resolve())
        runs.append(SlurmRun(config_path, workdir, cfg.max_requeues))
    with executor.batch():
        jobs = [executor.submit(run) for run in runs]
    submitted_at = now_iso()
    for spec, job in zip(pending, jobs):
        array_id, _, index = job.job_id.partition("_")
        atomic.write_json(run_dir(spec.resolved) / "submitted.json", {
            "executor": "slurm", "job_id": job.job_id, "array_job_id": array_id,
            "array_index": int(index) if index else None, "submitted_at": submitted_at,
            "log_folder": str(job.paths.folder), "code": str(code_dir)})
    first, last = jobs[0].job_id, jobs[-1].job_id
    if len(jobs) == 1:
        print(f"submitted 1 run as Slurm job {first}")
    else:
        print(f"submitted {len(jobs)} runs as Slurm job array {first.partition('_')[0]} ({first} .. {last}, at most "
              f"{min(cfg.array_parallelism, len(jobs))} at a time)")
    print(f"  code: {code_dir}\n  logs: {jobs[0].paths.folder.parent}")
    print(f"  follow: python jobs/launch.py --grid {grid.path} --status")


def wait_for_runs(specs: list["RunSpec"], poll_s: float = 2.0) -> list[Any]:
    """Block until none of ``specs`` is queued or running (records + sacct); their final states (:mod:`jobs.state`)."""
    from jobs.state import run_states
    folders = [run_dir(spec.resolved) for spec in specs]
    last = ""
    while True:
        states = run_states(folders)
        counts: dict[str, int] = {}
        for state in states:
            counts[state.status] = counts.get(state.status, 0) + 1
        line = ", ".join(f"{n} {k}" for k, n in sorted(counts.items()))
        if line != last:
            print(f"[{dt.datetime.now().strftime('%H:%M:%S')}] {line}", flush=True)
            last = line
        if not counts.get("queued") and not counts.get("running"):
            return states
        time.sleep(poll_s)


# -- what the scheduler knows ----------------------------------------------------------------------------------------
def scheduler_states(job_ids: Iterable[str]) -> dict[str, str]:
    """``job id -> sacct State`` (e.g. ``"CANCELLED by 0"``) for array tasks and jobs; {} if sacct is unavailable.

    Pending array tasks appear collapsed in sacct (``12_[3-5%2]``); submitit's parser expands them.
    """
    arrays = sorted({str(j).split("_")[0] for j in job_ids if j})
    if not arrays or shutil.which("sacct") is None:
        return {}
    command = ["sacct", "-X", "-o", "JobID,State", "--parsable2", *[arg for a in arrays for arg in ("-j", a)]]
    try:
        out = subprocess.run(command, capture_output=True, text=True, timeout=30)
    except (OSError, subprocess.SubprocessError):
        return {}
    if out.returncode != 0:
        return {}
    from submitit.slurm.slurm import SlurmInfoWatcher
    info = SlurmInfoWatcher(delay_s=0).read_info(out.stdout)
    return {job: entry.get("State", "") for job, entry in info.items()}


def cancel_jobs(job_ids: list[str]) -> None:
    """``scancel`` the given jobs (array tasks by ``<id>_<index>``); jobs that already ended are reported only."""
    if not job_ids:
        return
    if shutil.which("scancel") is None:
        raise ConfigError("--cancel: scancel not found on PATH")
    out = subprocess.run(["scancel", *job_ids], capture_output=True, text=True, timeout=60)
    if out.returncode != 0:
        print(f"scancel: {out.stderr.strip()}", file=sys.stderr)
