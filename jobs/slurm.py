"""The ``slurm`` executor: a grid as submitit job arrays the cluster accepts, submit-and-exit, preemption-safe.

What happens on ``python jobs/launch.py --grid FILE --executor slurm``:

1. the code is snapshotted (:func:`snapshot_code`: the suite's packages copied into
   ``<results_dir>/.snapshots/<content hash>``), so jobs that wait in the queue run the code as submitted, not
   whatever the checkout holds when they start;
2. each pending run's resolved config is written to ``<run folder>/config.yaml``;
3. the cluster's limits are read (:func:`read_cluster_limits`: ``MaxArraySize``, ``MaxJobCount``, the user's
   ``MaxSubmitJobs``; an unreachable controller is one :class:`SchedulerError` line), the pending runs are packed
   ``runs_per_task`` to an array task, and the tasks split into arrays of at most ``MaxArraySize`` (:func:`plan_arrays`:
   arrays in lanes chained by ``afterany`` dependencies, so that ``array_parallelism`` bounds the tasks running at
   once over all of them);
4. one ``sbatch`` per array (``executor.batch()``); each task runs :class:`SlurmRun`, which executes its runs one
   after the other through the same :func:`jobs.executors.execute_run` as every other executor (run lock, done
   re-check, atomic record). A refusal is one :class:`SchedulerError` line with what sbatch said and what to check,
   and submitit's files for the refused array are removed;
5. ``submitted.json`` (job id, array index, time) is written in each run folder as its array is accepted, so
   ``--status`` shows ``queued``;
6. the launcher prints the job ids and exits (``--wait`` blocks until every job has ended).

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

import collections
import contextlib
import datetime as dt
import getpass
import hashlib
import io
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
from frozen_clip.errors import ConfigError, SchedulerError
from frozen_clip.weights import WEIGHTS_CACHE_ENV

from jobs.runfolder import REPO_ROOT, read_record, run_dir, write_config, write_record

if TYPE_CHECKING:  # pragma: no cover - typing only
    from jobs.executors.base import Outcome
    from jobs.grid import Grid, RunSpec

# the suite's importable packages ([tool.setuptools] packages in pyproject.toml): what a job needs to run
SNAPSHOT_PACKAGES = ("frozen_clip", "adapters", "baselines", "protocols", "world", "jobs", "analysis")
REQUEUES_NAME = "requeues.json"
SNAPSHOT_INFO = "SNAPSHOT.json"
# Seconds a job takes, at most, from its start to submitit's USR2 handler (Python and the suite imported): a job
# signalled earlier is killed instead of requeued, so a time limit must leave at least this before the signal.
JOB_START_S = 30



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
    array_parallelism: int = 256  # at most this many tasks of the grid run at once, over all its arrays (%K)
    runs_per_task: int = 1  # runs executed one after the other by one array task (pack short runs; fewer tasks)
    setup: tuple[str, ...] = ()  # shell lines run before the job starts, e.g. "module load cuda", "source venv/..."
    additional_parameters: dict[str, Any] = field(default_factory=dict)  # raw #SBATCH flags (submitit passes them)
    submitit: dict[str, Any] = field(default_factory=dict)  # other AutoExecutor parameters, e.g. slurm_exclude
    max_requeues: int = 3  # requeues per run after timeout/preemption (submitit's max_num_timeout default)
    folder: str | None = None  # submitit's logs and pickles (default: <results_dir>/<grid name>/.submitit/%j)
    snapshot: bool = True  # run the code as submitted from <results_dir>/.snapshots/<hash> (False: the checkout)
    python: str | None = None  # the job's interpreter (default: the launcher's sys.executable; setup lines do not
    # change it: give the venv's python here)
    weights_cache: str | None = None  # staged pretrained weights (python -m jobs.stage_weights; default:
    # $FCS_WEIGHTS_CACHE, else <results_dir>/.weights); jobs load from it with the Hugging Face hub offline
    check_weights: bool = True  # refuse to submit runs whose weights are not staged (false: nodes can download)

    def validate(self) -> None:
        for name in ("timeout_min", "cpus_per_task", "array_parallelism", "runs_per_task"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be >= 1, got {getattr(self, name)}")
        if self.gpus_per_node < 0:
            raise ValueError(f"gpus_per_node must be >= 0, got {self.gpus_per_node}")
        if self.max_requeues < 0:
            raise ValueError(f"max_requeues must be >= 0, got {self.max_requeues}")
        if self.mem_gb is not None and self.mem_gb <= 0:
            raise ValueError(f"mem_gb must be > 0, got {self.mem_gb}")
        lead = self.signal_delay_s
        if self.timeout_min * 60 <= lead + JOB_START_S:
            raise ValueError(
                f"timeout_min={self.timeout_min} leaves no time to run: Slurm signals the job to requeue {lead} s before "
                f"its time limit (submitit.slurm_signal_delay_s), and a job needs about {JOB_START_S} s to start and "
                f"install its signal handler; set timeout_min >= {(lead + JOB_START_S) // 60 + 1}")

    @property
    def signal_delay_s(self) -> int:
        """Seconds before the time limit at which Slurm sends USR2 (submitit's default 90)."""
        return int(self.submitit.get("slurm_signal_delay_s", 90))


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
    """One array task: one run, or several short ones executed one after the other (``runs_per_task``). Holds only
    the runs' config paths, the launch directory and the requeue bound.

    Calling it executes each run through :func:`jobs.executors.execute_run` (resuming from the run folder's last
    checkpoint when there is one; a run already done is skipped, so a requeued task picks up where it stopped).
    :meth:`checkpoint` returns a fresh instance, never pickled training state.
    """

    def __init__(self, config_paths: tuple[str, ...], workdir: str, max_requeues: int) -> None:
        self.config_paths = tuple(config_paths)
        self.workdir = workdir
        self.max_requeues = max_requeues

    def __call__(self) -> str:
        os.chdir(self.workdir)  # relative paths in the config mean what they meant at submission
        threads = os.environ.get("SLURM_CPUS_PER_TASK")
        if threads:
            import torch
            torch.set_num_threads(int(threads))
        results = [self.execute(config_path) for config_path in self.config_paths]
        failed = [line for line, raised in results if raised]
        if failed:  # every run of the task was tried; the records hold the reasons, sacct says FAILED too
            raise RuntimeError("; ".join(failed))
        return "\n".join(line for line, _ in results)

    def execute(self, config_path: str) -> tuple[str, bool]:
        """Execute one run of the task: a one-line result (``done: <run id>``, ...) and whether the run failed while
        executing (a run refused for too many requeues is recorded failed without making the job fail)."""
        from jobs.executors import execute_run
        from jobs.runfolder import read_status
        spec = run_spec(config_path)
        if read_status(Path(config_path).parent) == "done":  # finished before this task was requeued
            return f"skipped: {spec.run_id} already done", False
        restarts = int(os.environ.get("SLURM_RESTART_COUNT", "0") or 0)
        append_requeue_event(Path(config_path).parent, "start", restart_count=restarts, code=str(REPO_ROOT))
        from jobs.config import run_label
        print(f"fcs job {job_id_from_env()}: run {spec.run_id} {run_label(spec.config)}, restart {restarts}, code from "
              f"{REPO_ROOT}", flush=True)
        if restarts > self.max_requeues:
            reason = f"requeued {restarts} times, more than executor.max_requeues={self.max_requeues}"
            return fail_run(spec, reason), False
        outcome = execute_run(spec, log=lambda line: print(line, flush=True))
        return f"{outcome.status}: {spec.run_id} {outcome.detail}".strip(), outcome.status == "failed"

    def checkpoint(self, *args: Any, **kwargs: Any) -> submitit.helpers.DelayedSubmission:
        """Called by submitit on timeout/preemption: requeue a fresh instance (it resumes from the run folders)."""
        for config_path in self.config_paths:
            append_requeue_event(Path(config_path).parent, "checkpoint")
        fresh = SlurmRun(self.config_paths, self.workdir, self.max_requeues)
        return submitit.helpers.DelayedSubmission(fresh)


def run_spec(config_path: str) -> "RunSpec":
    """The run of a config file, resolved again (resolving a resolved config is idempotent)."""
    from jobs.config import resolve
    from jobs.grid import RunSpec
    from jobs.runfolder import read_run_config
    resolved = resolve(read_run_config(config_path), config_path)
    return RunSpec(resolved.run_id, resolved.config, resolved)


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
            return f"skipped: {spec.run_id} already done", False
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


def job_setup(code_dir: Path, weights: Path | None = None, offline: bool = False) -> list[str]:
    """Shell lines that make the job import the suite from ``code_dir`` and load pretrained weights from the staged
    cache ``weights`` (with the hub offline: a node without internet fails at once instead of timing out), before
    any user setup line."""
    quoted = shlex.quote(str(code_dir))
    # `python -m submitit.core._submit` puts the working directory first on sys.path: it must be the code folder
    lines = [f"cd {quoted}", f"export PYTHONPATH={quoted}${{PYTHONPATH:+:$PYTHONPATH}}"]
    if weights is not None:
        lines.append(f"export {WEIGHTS_CACHE_ENV}={shlex.quote(str(weights))}")
    if offline:
        lines.append("export HF_HUB_OFFLINE=1")
    return lines


def check_staged_weights(grid: "Grid", pending: list["RunSpec"], cfg: SlurmConfig) -> Path:
    """The weights cache the jobs read; :class:`ConfigError` naming the command that stages what is missing."""
    from frozen_clip.weights import missing_offline
    from jobs.stage_weights import grid_downloads, weights_cache
    cache = weights_cache(grid.results_dir, cfg.weights_cache)
    missing = missing_offline(grid_downloads(pending), cache) if cfg.check_weights else []
    if missing:
        raise ConfigError(
            f"executor slurm: the weights of {', '.join(d.label for d in missing)} are not staged in {cache}, and "
            f"compute nodes usually have no internet: run `python -m jobs.stage_weights --grid {grid.path}"
            + (f" --cache {cfg.weights_cache}" if cfg.weights_cache else "") + "` on this node first (with the "
            "launch's overrides), or set executor.check_weights: false where the nodes can download (nothing was "
            "submitted)")
    return cache


# -- submission ------------------------------------------------------------------------------------------------------
class SlurmExecutor:
    """The grid's pending runs as job arrays; returns at once, or when they have ended with ``--wait``."""

    name = "slurm"
    Options = SlurmConfig

    def describe(self, grid: "Grid", specs: list["RunSpec"], options: SlurmConfig) -> list[str]:
        return describe_submission(grid, specs, options)

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
    """Submit ``pending`` as job arrays the cluster accepts (:func:`plan_arrays`), ``runs_per_task`` runs per array
    task; write ``submitted.json`` per run as each array is accepted; print the ids.

    A refusal raises :class:`SchedulerError` with what Slurm said and leaves nothing of the refused array behind; the
    arrays accepted before it stay submitted (a relaunch submits only the runs that are not queued).
    """
    if shutil.which("sbatch") is None or shutil.which("srun") is None:
        raise ConfigError("executor slurm: sbatch/srun not found on PATH; run on a Slurm login node, or use "
                          "--executor local")
    weights = check_staged_weights(grid, pending, cfg)
    limits = read_cluster_limits()
    tasks = pack_tasks(pending, cfg.runs_per_task, limits)
    parts = plan_arrays(len(tasks), limits.max_array_size, cfg.array_parallelism)
    results_root = grid.results_dir.resolve().parent
    code_dir = snapshot_code(results_root / ".snapshots") if cfg.snapshot else REPO_ROOT
    folder = (Path(cfg.folder) if cfg.folder else grid.results_dir.resolve() / ".submitit" / "%j").resolve()
    workdir = os.getcwd()
    with atomic.one_sync():  # durable before any job can read them
        runs = [SlurmRun(tuple(str(write_config(run_dir(spec.resolved), spec.config).resolve()) for spec in task),
                         workdir, cfg.max_requeues) for task in tasks]
    array_ids: list[str] = []
    for number, part in enumerate(parts):
        dependency = f"afterany:{array_ids[part.after]}" if part.after is not None else None
        try:
            jobs = submit_array(cfg, folder, job_name(grid.name, [s for i in part.tasks for s in tasks[i]]),
                                job_setup(code_dir, weights, cfg.check_weights), [runs[i] for i in part.tasks],
                                part.parallelism, dependency)
        except SchedulerError as err:
            done = sum(len(tasks[i]) for p in parts[:number] for i in p.tasks)
            if number:
                err.args = (f"{err} ({done} runs in the arrays accepted before it, {' '.join(array_ids)}, stay "
                            f"submitted; a relaunch submits the other {len(pending) - done})",)
            raise
        array_ids.append(jobs[0].job_id.partition("_")[0])
        with atomic.one_sync():
            record_submissions([tasks[i] for i in part.tasks], jobs, code_dir)
        print(describe_array(jobs, part, sum(len(tasks[i]) for i in part.tasks), dependency))
    if len(parts) > 1 or len(tasks) < len(pending):
        print(f"submitted {len(pending)} runs as {len(tasks)} array tasks ({cfg.runs_per_task} runs per task) in "
              f"{len(parts)} Slurm job arrays (the cluster's MaxArraySize is {limits.max_array_size}), at most "
              f"{min(cfg.array_parallelism, len(tasks))} tasks at a time")
    print(f"  code: {code_dir}\n  job logs: {folder.parent}/<job id>/<job id>_0_log.out (.err)")
    print(f"  squeue: squeue -u $USER -o '%.16i %.{SQUEUE_NAME_WIDTH}j %.9T %.10M %R'   (job names in full)")


# squeue shows 8 characters of a job name unless told otherwise; names are at most this long
SQUEUE_NAME_WIDTH = 60


def job_name(grid_name: str, specs: list["RunSpec"]) -> str:
    """``fcs-<grid>``, then the method and the dataset where every run of the array shares them, e.g.
    ``fcs-ablations-heba-eurosat`` (Slurm has one name per array; each run's log line names its variant in full)."""
    parts = [f"fcs-{grid_name}"]
    for key in ("method", "dataset"):
        values = {spec.config[key]["name"] if key == "method" else spec.config[key] for spec in specs}
        if len(values) != 1:
            break
        parts.append(str(values.pop()))
    return "-".join(parts)[:SQUEUE_NAME_WIDTH]


def pack_tasks(pending: list["RunSpec"], runs_per_task: int, limits: "ClusterLimits") -> list[list["RunSpec"]]:
    """The runs of each array task, in order; :class:`SchedulerError` when there are more tasks than the user may
    still submit."""
    tasks = [pending[i:i + runs_per_task] for i in range(0, len(pending), runs_per_task)]
    if limits.max_tasks is not None and len(tasks) > limits.max_tasks:
        raise SchedulerError(
            f"executor slurm: {len(tasks)} array tasks ({len(pending)} runs, runs_per_task={runs_per_task}) exceed "
            f"the {limits.max_tasks} jobs this user may still submit ({limits.max_tasks_source}); set "
            f"runs_per_task: {-(-len(pending) // max(limits.max_tasks, 1))} or more (nothing was submitted)")
    return tasks


def submit_array(cfg: SlurmConfig, folder: Path, name: str, setup: list[str], runs: list[SlurmRun],
                 parallelism: int, dependency: str | None) -> list[Any]:
    """One ``sbatch`` of ``runs`` as a job array (one run alone: a plain job); its submitit jobs.

    What sbatch says on refusal becomes one :class:`SchedulerError` line, and the files submitit wrote for the refused
    array (pickles, the sbatch script) are removed: ``.submitit/`` holds only jobs that exist.
    """
    executor = make_executor(cfg, folder, name, setup)
    extra: dict[str, Any] = {"slurm_array_parallelism": parallelism}
    if dependency:  # combined with one the user set through `submitit:` (Slurm's comma means: all of them)
        extra["slurm_dependency"] = ",".join(filter(None, [cfg.submitit.get("slurm_dependency"), dependency]))
    executor.update_parameters(**extra)
    staging = submitit.core.utils.JobPaths.get_first_id_independent_folder(folder)
    before = set(staging.iterdir()) if staging.is_dir() else None
    said = io.StringIO()
    try:
        with contextlib.redirect_stderr(said), executor.batch():  # submitit echoes sbatch's stderr: kept for the error
            jobs = [executor.submit(run) for run in runs]
    except (submitit.core.utils.FailedJobError, submitit.core.utils.FailedSubmissionError, OSError) as err:
        remove_new_files(staging, before)
        raise scheduler_refusal(str(err) or said.getvalue(), len(runs)) from None
    return jobs


def remove_new_files(folder: Path, before: set[Path] | None) -> None:
    """Remove what appeared in ``folder`` since ``before`` was listed (the folder itself if it did not exist)."""
    if before is None:
        shutil.rmtree(folder, ignore_errors=True)
        return
    for path in set(folder.iterdir()) - before if folder.is_dir() else ():
        if path.is_dir() and not path.is_symlink():
            shutil.rmtree(path, ignore_errors=True)
        else:
            path.unlink(missing_ok=True)


# What to check for each refusal sbatch gives (matched in its message, lower case); the first match wins.
REFUSAL_HINTS = (
    ("unable to contact", "check that slurmctld runs (`scontrol ping`) and that this is a login node of the cluster"),
    ("array", "the array is larger than the cluster allows (`scontrol show config | grep MaxArraySize`): lower "
              "array_parallelism, or raise runs_per_task"),
    ("partition", "check executor.partition (`sinfo -s` lists the partitions)"),
    ("account", "check executor.account (`sacctmgr show assoc user=$USER` lists your accounts)"),
    ("qos", "check executor.qos (`sacctmgr show assoc user=$USER format=account,qos`)"),
    ("gres", "check gpus_per_node: the partition's nodes have no such GPUs (`sinfo -o '%P %G'`)"),
    ("memory", "check mem_gb against the nodes' memory (`sinfo -o '%P %m'`)"),
    ("time limit", "check timeout_min against the partition's limit (`sinfo -o '%P %l'`)"),
    ("node configuration", "no node of the partition has the GPUs, CPUs or memory asked for (`sinfo -o '%P %c %m %G'`)"),
    ("qosmaxsubmit", "too many jobs queued for your QOS/association: raise runs_per_task or wait"),
)


def scheduler_refusal(said: str, tasks: int) -> SchedulerError:
    """The :class:`SchedulerError` for sbatch's refusal message ``said`` (its last line carries the reason)."""
    lines = [line.strip() for line in said.strip().splitlines() if line.strip()]
    reason = lines[-1] if lines else "no message"
    reason = reason.removeprefix("sbatch: error: ").removeprefix("allocation failure: ")
    hint = next((h for key, h in REFUSAL_HINTS if key in reason.lower()), "check the executor settings")
    unreachable = "unable to contact" in reason.lower()
    return SchedulerError(f"executor slurm: sbatch refused the job array of {tasks} tasks: {reason!r}; {hint} "
                          "(nothing of it was submitted)", exit_code=1 if unreachable else 2)


def record_submissions(tasks: list[list["RunSpec"]], jobs: list[Any], code_dir: Path) -> None:
    """``submitted.json`` in each run folder: the array task that runs it (shared by the runs packed in it)."""
    submitted_at = now_iso()
    for task, job in zip(tasks, jobs):
        array_id, _, index = job.job_id.partition("_")
        for position, spec in enumerate(task):
            atomic.write_json(run_dir(spec.resolved) / "submitted.json", {
                "executor": "slurm", "job_id": job.job_id, "array_job_id": array_id,
                "array_index": int(index) if index else None, "position_in_task": position,
                "submitted_at": submitted_at, "log_folder": str(job.paths.folder), "code": str(code_dir)})


def describe_array(jobs: list[Any], part: "ArrayPart", runs: int, dependency: str | None) -> str:
    """One line for a submitted array (the wording ``--status`` users and the tests read)."""
    first, last = jobs[0].job_id, jobs[-1].job_id
    after = f", after {dependency.partition(':')[2]} has ended" if dependency else ""
    if len(jobs) == 1:
        return f"submitted {runs} run{'s' if runs > 1 else ''} as Slurm job {first}{after}"
    return (f"submitted {runs} runs as Slurm job array {first.partition('_')[0]} ({first} .. {last}, at most "
            f"{part.parallelism} at a time{after})")


# -- what the cluster allows -----------------------------------------------------------------------------------------
@dataclass(frozen=True)
class ClusterLimits:
    """What one user may submit to the cluster, read before submitting (:func:`read_cluster_limits`)."""

    max_array_size: int = 1001  # MaxArraySize: an array's task indices must be below it (Slurm's default)
    max_tasks: int | None = None  # jobs (array tasks) this user may still submit; None: no limit found
    max_tasks_source: str = ""  # which limit gives max_tasks, for messages


def read_cluster_limits() -> ClusterLimits:
    """MaxArraySize and MaxJobCount (``scontrol show config``), the user's association's MaxSubmitJobs
    (``sacctmgr``, where accounting is on), less the jobs already queued. :class:`SchedulerError` (exit code 1) when
    the controller does not answer."""
    check_reachable()
    config = slurm_config()
    queue = slurm_output(["squeue", "-h", "-r", "-o", "%u"]).split()
    user = getpass.getuser()
    candidates = []
    if config.get("MaxJobCount", "").isdigit():
        count = int(config["MaxJobCount"])
        candidates.append((count - len(queue), f"MaxJobCount={count}, {len(queue)} jobs in the queue"))
    submit = association_max_submit(user)
    if submit is not None:
        mine = sum(owner == user for owner in queue)
        candidates.append((submit - mine, f"MaxSubmitJobs={submit} of your association, {mine} of your jobs queued"))
    size = config.get("MaxArraySize", "")
    max_tasks, source = min(candidates) if candidates else (None, "")
    return ClusterLimits(int(size) if size.isdigit() else 1001, max_tasks, source)


def check_reachable() -> None:
    """Raise :class:`SchedulerError` (exit code 1) unless ``scontrol ping`` finds the controller up (it answers at
    once; ``sbatch`` and ``scontrol show config`` retry for many seconds first)."""
    try:
        out = subprocess.run(["scontrol", "ping"], capture_output=True, text=True, timeout=30)
    except (OSError, subprocess.SubprocessError) as err:
        said = str(err)
    else:
        said = " ".join((out.stdout + " " + out.stderr).split("*")[0].split())
        if out.returncode == 0 and " is UP" in out.stdout:
            return
    raise SchedulerError(f"slurm: the Slurm controller is not reachable (`scontrol ping`: {said!r}); check that "
                         "slurmctld runs and that this is a login node of the cluster (nothing was submitted or "
                         "cancelled)", exit_code=1)


def slurm_output(command: list[str]) -> str:
    """stdout of a Slurm query ('' if it fails: the limits it would give are then not applied)."""
    try:
        out = subprocess.run(command, capture_output=True, text=True, timeout=60)
    except (OSError, subprocess.SubprocessError):
        return ""
    return out.stdout if out.returncode == 0 else ""


def slurm_config() -> dict[str, str]:
    """``scontrol show config`` as ``{key: value}``."""
    entries = {}
    for line in slurm_output(["scontrol", "show", "config"]).splitlines():
        key, sep, value = line.partition("=")
        if sep:
            entries[key.strip()] = value.strip()
    return entries


def association_max_submit(user: str) -> int | None:
    """The smallest MaxSubmitJobs (or GrpSubmitJobs) of the user's associations; None when unset or unknown."""
    if shutil.which("sacctmgr") is None:
        return None
    text = slurm_output(["sacctmgr", "-n", "-P", "show", "assoc", f"where user={user}", "format=MaxSubmit,GrpSubmit"])
    values = [int(v) for line in text.splitlines() for v in line.split("|") if v.strip().isdigit()]
    return min(values) if values else None


@dataclass(frozen=True)
class ArrayPart:
    """One job array of a submission: which tasks, how many may run at once, which array it waits for."""

    tasks: range  # indices into the submission's tasks
    parallelism: int  # the array's %K
    after: int | None = None  # index of the array that must have ended first (afterany), None: none


def plan_arrays(n_tasks: int, max_array_size: int, parallelism: int) -> list[ArrayPart]:
    """Split ``n_tasks`` into arrays of at most ``max_array_size`` tasks (as equal as can be) such that at most
    ``parallelism`` tasks run at once over all of them.

    Slurm's ``%K`` holds within one array only. So the arrays are dealt into ``min(parallelism, arrays)`` lanes, the
    arrays of a lane run one after the other (each waits for the one before it: ``--dependency=afterany``), and
    ``parallelism`` is shared between the lanes in proportion to their tasks, so that the lanes end together.
    """
    count = -(-n_tasks // max_array_size)
    base, extra = divmod(n_tasks, count)
    sizes = [base + (i < extra) for i in range(count)]
    lanes = min(parallelism, count)
    shares = share(parallelism, [sum(sizes[i::lanes]) for i in range(lanes)])
    parts, start = [], 0
    for i, size in enumerate(sizes):
        parts.append(ArrayPart(range(start, start + size), min(shares[i % lanes], size),
                               i - lanes if i >= lanes else None))
        start += size
    return parts


def share(total: int, weights: list[int]) -> list[int]:
    """``total`` split in proportion to ``weights``, at least 1 each (``total >= len(weights)``), summing to
    ``total`` (largest remainders get the units left over)."""
    spare = total - len(weights)
    exact = [spare * w / sum(weights) for w in weights]
    shares = [1 + int(x) for x in exact]
    by_remainder = sorted(range(len(weights)), key=lambda i: int(exact[i]) - exact[i])
    for i in by_remainder[:total - sum(shares)]:
        shares[i] += 1
    return shares


def describe_submission(grid: "Grid", pending: list["RunSpec"], cfg: SlurmConfig) -> list[str]:
    """What ``--dry-run`` says a Slurm submission of ``pending`` would be: the arrays, what each task requests, the
    expected time per run from earlier records, and warnings about settings that cannot work."""
    if not pending:
        return []
    try:
        limits, origin = read_cluster_limits(), "this cluster's"
    except SchedulerError:
        limits, origin = ClusterLimits(), "Slurm's default: no cluster answered here"
    n_tasks = -(-len(pending) // cfg.runs_per_task)
    parts = plan_arrays(n_tasks, limits.max_array_size, cfg.array_parallelism)
    shapes = collections.Counter((len(p.tasks), p.parallelism, p.after is not None) for p in parts)
    sizes = ", ".join(f"{count} x {size} tasks (%{parallelism}{', waiting for an earlier array' if waits else ''})"
                      for (size, parallelism, waits), count in shapes.items())
    lines = [f"slurm: {len(pending)} runs as {n_tasks} array tasks ({cfg.runs_per_task} run(s) per task) in "
             f"{len(parts)} job array(s): {sizes}; MaxArraySize {limits.max_array_size} ({origin}); at most "
             f"{min(cfg.array_parallelism, n_tasks)} tasks at a time over all arrays",
             f"slurm: each task requests partition {cfg.partition or '(the default)'}, {cfg.gpus_per_node} GPU(s), "
             f"{cfg.cpus_per_task} CPU(s), memory {f'{cfg.mem_gb:g} GB' if cfg.mem_gb else '(the default per CPU)'}, "
             f"time limit {cfg.timeout_min} min (USR2 {cfg.signal_delay_s} s before it: requeue and resume, at most "
             f"{cfg.max_requeues} times)" + (f", account {cfg.account}" if cfg.account else "")
             + (f", qos {cfg.qos}" if cfg.qos else "")]
    if limits.max_tasks is not None and n_tasks > limits.max_tasks:
        lines.append(f"warning: {n_tasks} tasks exceed the {limits.max_tasks} jobs you may still submit "
                     f"({limits.max_tasks_source}): raise runs_per_task")
    lines += expected_times(grid, pending, cfg)
    lines += gpu_warning(pending, cfg)
    try:
        check_staged_weights(grid, pending, cfg)
    except ConfigError as err:
        lines.append(f"warning: {str(err).removeprefix('executor slurm: ').removesuffix(' (nothing was submitted)')}")
    return lines


def expected_times(grid: "Grid", pending: list["RunSpec"], cfg: SlurmConfig) -> list[str]:
    """Expected wall time per run, per method and dataset, from the finished records under the results folder."""
    from jobs.runfolder import read_status
    seconds: dict[tuple[str, str], list[float]] = {}
    for path in grid.results_dir.resolve().parent.glob("*/*/record.json"):
        if read_status(path.parent) != "done":
            continue
        record = read_record(path.parent) or {}
        cost, config = record.get("cost") or {}, record.get("config") or {}
        method = config.get("method")
        key = (method.get("name") if isinstance(method, dict) else method, config.get("dataset"))
        seconds.setdefault(key, []).append(sum(cost.get(k) or 0.0 for k in ("time_setup_s", "time_train_s",
                                                                             "time_eval_s")))
    wanted = collections.Counter((spec.config["method"]["name"], spec.config["dataset"]) for spec in pending)
    known = {key: sum(v) / len(v) for key, v in seconds.items() if key in wanted}
    lines = [f"slurm: expected time per run, from {len(seconds[key])} earlier record(s): {key[0]} on {key[1]} "
             f"{mean / 60:.1f} min ({wanted[key]} pending)" for key, mean in sorted(known.items())]
    unknown = sum(n for key, n in wanted.items() if key not in known)
    if unknown:
        lines.append(f"slurm: no earlier record of the same method and dataset for {unknown} pending runs")
    longest = max(known.values(), default=0.0) * cfg.runs_per_task
    if longest > cfg.timeout_min * 60 * (cfg.max_requeues + 1):
        lines.append(f"warning: a task may need {longest / 60:.0f} min, more than timeout_min={cfg.timeout_min} with "
                     f"max_requeues={cfg.max_requeues} requeues allow: raise timeout_min or lower runs_per_task")
    return lines


def gpu_warning(pending: list["RunSpec"], cfg: SlurmConfig) -> list[str]:
    """A warning when no GPU is requested for runs of published open_clip architectures (the suite's built-in tiny
    models run on CPU)."""
    gpu_keys = ("gpus_per_node", "gpus_per_task", "slurm_gres", "slurm_gpus_per_node", "slurm_gpus_per_task")
    if cfg.gpus_per_node or any(k in cfg.submitit for k in gpu_keys) or \
            any(k in cfg.additional_parameters for k in ("gres", "gpus", "gpus-per-node", "gpus-per-task")):
        return []
    from frozen_clip.openclip_catalog import known_models
    published = set(known_models())
    large = sorted({spec.config["backbone"] for spec in pending if spec.config["backbone"] in published})
    if not large:
        return []
    return [f"warning: no GPU requested (gpus_per_node: 0) for runs of {', '.join(large)}: they would run on CPU "
            "for hours or days; set gpus_per_node: 1 (--executor-opt gpus_per_node=1)"]


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
    check_reachable()  # else scancel fails after retrying, and the runs would be marked cancelled while they run
    out = subprocess.run(["scancel", *job_ids], capture_output=True, text=True, timeout=60)
    if out.returncode != 0:
        print(f"scancel: {out.stderr.strip()}", file=sys.stderr)
