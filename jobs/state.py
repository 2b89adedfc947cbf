"""Run state from disk: records, locks and submission markers (the scheduler only adds what it alone knows, below).
Torch-free, like :mod:`jobs.runfolder`.

``done``     record.json with status done
``failed``   record.json with status failed (its reason is shown), a damaged record.json (unreadable, no status),
             or a submission cancelled with ``--cancel``
``running``  the run folder's lock is held by a live process
``queued``   submitted to a scheduler (``submitted.json``, newer than any failed record) and not started
``missing``  none of the above
Executing a run takes the run folder's lock, so two launchers never execute one run at the same time.

What only the scheduler knows -- a queued job that was cancelled or killed before it could write anything -- can be
added by passing ``scheduler`` (job id -> Slurm state, from :func:`jobs.slurm.scheduler_states`): such a run is then
``failed`` with the reason (e.g. ``cancelled``) instead of ``queued`` forever.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Mapping

from filelock import FileLock, Timeout

from jobs.runfolder import RECORD_NAME, read_record, read_status

LOCK_NAME = ".lock"
SUBMITTED_NAME = "submitted.json"
# Slurm job states (sacct) of a job that has not started, and of one that has started but not ended
QUEUED_STATES = ("PENDING", "REQUEUED", "REQUEUE_HOLD", "REQUEUE_FED", "SUSPENDED", "RESIZING")
STARTED_STATES = ("RUNNING", "CONFIGURING", "COMPLETING", "STAGE_OUT", "SIGNALING")


@dataclass(frozen=True)
class RunState:
    """The state of one run folder."""

    status: str  # done | failed | running | queued | missing
    reason: str = ""
    record: dict[str, Any] | None = None  # a failed run's record (a done run's is not read)


def run_lock(folder: Path) -> FileLock:
    """The lock guarding execution of the run in ``folder``."""
    folder.mkdir(parents=True, exist_ok=True)
    return FileLock(str(folder / LOCK_NAME), timeout=0)


def is_locked(folder: Path) -> bool:
    """Whether another process holds the run's lock."""
    if not (folder / LOCK_NAME).exists():
        return False
    lock = FileLock(str(folder / LOCK_NAME), timeout=0)
    try:
        lock.acquire()
    except Timeout:
        return True
    lock.release()
    return False


def read_submission(folder: Path) -> dict[str, Any] | None:
    """The run folder's ``submitted.json`` (job id, array index, time), or None."""
    try:
        info = json.loads((Path(folder) / SUBMITTED_NAME).read_text())
    except (OSError, ValueError):
        return None
    return info if isinstance(info, dict) else None


def _submitted_after_record(folder: Path) -> bool:
    """Whether the submission is newer than the record (a failed run resubmitted is queued, not failed). Ties count
    as newer: filesystems with coarse timestamps, and no job writes its record within a second of submission."""
    try:
        return (folder / SUBMITTED_NAME).stat().st_mtime_ns >= (folder / "record.json").stat().st_mtime_ns
    except OSError:
        return not (folder / "record.json").exists()


def from_scheduler(job_id: str, state: str | None) -> RunState:
    """The state of a submitted run that has no record and holds no lock, given the scheduler's job state."""
    if not state:
        return RunState("queued", job_id)
    word = state.split()[0]
    if word in QUEUED_STATES:
        return RunState("queued", f"{job_id} {state.lower()}")
    if word in STARTED_STATES:
        return RunState("running", f"{job_id} starting")
    if word == "CANCELLED":
        return RunState("failed", f"cancelled (slurm job {job_id}: {state})")
    return RunState("failed", f"slurm job {job_id} ended {state} without a record")


def state_of(folder: Path, scheduler: Mapping[str, str] | None = None) -> RunState:
    """Classify a run folder (see module docstring)."""
    folder = Path(folder)
    status = read_status(folder)  # the record's tail: a done run's record is not parsed
    if status == "done":
        return RunState("done")
    if is_locked(folder):
        return RunState("running")
    submission = read_submission(folder)
    if submission is not None and _submitted_after_record(folder):
        job_id = str(submission.get("job_id", ""))
        if submission.get("cancelled_at"):
            return RunState("failed", f"cancelled ({job_id} at {submission['cancelled_at']})")
        if scheduler is not None and job_id:
            return from_scheduler(job_id, scheduler.get(job_id))
        return RunState("queued", job_id)
    record = read_record(folder) if status == "failed" else None
    if record is not None and record.get("status") == "failed":
        failure = record.get("failure") or {}
        return RunState("failed", failure.get("reason", "unknown"), record)
    if status is None and (folder / RECORD_NAME).exists():
        return RunState("failed", f"{RECORD_NAME} is damaged (unreadable or without a status): a relaunch moves it "
                                  "aside and runs the run again")
    return RunState("missing")


def run_states(folders: list[Path]) -> list[RunState]:
    """The state of every run folder: records and locks on disk, and for submitted runs what the scheduler knows
    (one ``sacct`` call; a job cancelled before it wrote a record is ``failed``, reason ``cancelled``)."""
    job_ids = [str(sub.get("job_id")) for sub in map(read_submission, folders)
               if sub and sub.get("executor") == "slurm" and sub.get("job_id")]
    scheduler = None
    if job_ids:
        from jobs.slurm import scheduler_states
        scheduler = scheduler_states(job_ids)
    return [state_of(folder, scheduler) for folder in folders]
