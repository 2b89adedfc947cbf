"""Executors: how the runs of a grid are carried out, behind one small interface (:class:`Executor`).

``inline``  in this process, one after the other (debugging) -- :mod:`jobs.executors.local`.
``local``   a pool of subprocess slots on this machine, GPUs pinned per slot -- :mod:`jobs.executors.local`.
``slurm``   submitit job arrays, submit-and-exit -- :mod:`jobs.slurm`.

:data:`EXECUTORS` maps each name to its class, imported when used (importing this package imports neither torch nor
submitit). Every executor executes a run through :func:`execute_run`, which takes the run's lock, re-checks that the
run is not done, and writes the record; so a relaunch reruns only what is missing or failed, and two launchers never
execute the same run. Adding an executor is one class with ``name``, ``Options`` and ``submit``, plus one line here.
"""

from __future__ import annotations

import dataclasses
from typing import Any

from frozen_clip.registry import Registry
from jobs.executors.base import Executor, Outcome
from jobs.executors.local import (LOCK_GRACE_S, LocalConfig, execute_run, run_inline, run_local,
                                  slot_environments)

EXECUTORS = Registry("executor", {
    "inline": "jobs.executors.local:InlineExecutor",
    "local": "jobs.executors.local:LocalExecutor",
    "slurm": "jobs.slurm:SlurmExecutor",
})


def get_executor(kind: str, where: str = "executor") -> Executor:
    """The executor registered as ``kind`` (ConfigError with a suggestion if unknown)."""
    EXECUTORS.check(kind, where)
    return EXECUTORS.get(kind)()


def executor_fields(kind: str) -> set[str]:
    """The keys an ``executor:`` block of ``kind`` may have."""
    return {f.name for f in dataclasses.fields(get_executor(kind).Options)}


def parse_executor(block: dict[str, Any], where: str) -> Any:
    """Validate an ``executor:`` block into its kind's options dataclass."""
    from frozen_clip.configtools import build
    kind = block.get("kind", "local")
    if not isinstance(kind, str) or kind not in EXECUTORS:
        return build(LocalConfig, block, where, prefix="executor.")  # names the valid kinds
    return build(get_executor(kind).Options, block, where, prefix="executor.")


__all__ = ["EXECUTORS", "Executor", "Outcome", "get_executor", "executor_fields", "parse_executor", "execute_run",
           "run_inline", "run_local", "LocalConfig", "slot_environments", "LOCK_GRACE_S"]
