"""Run state from disk only: records, locks and submission markers, never the scheduler.

``done``     record.json with status done
``failed``   record.json with status failed (its reason is shown)
``running``  the run folder's lock is held by a live process
``queued``   submitted to a scheduler (``submitted.json``) and not started
``missing``  none of the above
Executing a run takes the run folder's lock, so two launchers never execute one run at the same time.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from filelock import FileLock, Timeout

from jobs.execute import read_record

LOCK_NAME = ".lock"
SUBMITTED_NAME = "submitted.json"


@dataclass(frozen=True)
class RunState:
    """The state of one run folder."""

    status: str  # done | failed | running | queued | missing
    reason: str = ""
    record: dict[str, Any] | None = None


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


def state_of(folder: Path) -> RunState:
    """Classify a run folder (see module docstring)."""
    folder = Path(folder)
    record = read_record(folder)
    if record is not None and record.get("status") == "done":
        return RunState("done", record=record)
    if is_locked(folder):
        return RunState("running")
    if record is not None and record.get("status") == "failed":
        failure = record.get("failure") or {}
        return RunState("failed", failure.get("reason", "unknown"), record)
    if (folder / SUBMITTED_NAME).exists():
        try:
            info = json.loads((folder / SUBMITTED_NAME).read_text())
        except ValueError:
            info = {}
        return RunState("queued", info.get("job_id", ""))
    return RunState("missing")
