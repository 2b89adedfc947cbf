"""What every executor is: a name, the dataclass of its ``executor:`` block, and ``submit``.

An executor receives the grid's pending runs (already resolved, their data checked) and carries them out. It returns
one :class:`Outcome` per run once they have ended, or None when it handed them to a scheduler and returned before
they ended (``slurm`` without ``--wait``; ``--status`` follows them from the run folders).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Callable, Protocol

if TYPE_CHECKING:  # pragma: no cover - typing only
    from jobs.grid import Grid, RunSpec


@dataclass(frozen=True)
class Outcome:
    """What happened to one run."""

    run_id: str
    status: str  # done | failed | skipped | interrupted (stopped with the launch; resumable)
    detail: str = ""
    seconds: float = 0.0
    user_error: bool = False


class Executor(Protocol):
    """How the runs of a grid are carried out (registered by name in :data:`jobs.executors.EXECUTORS`)."""

    name: str
    Options: type  # the frozen dataclass of the grid's ``executor:`` block for this kind

    def describe(self, grid: "Grid", specs: list["RunSpec"], options: Any) -> list[str]:
        """Lines ``--dry-run`` prints about how ``specs`` would be carried out (resources, warnings), [] for none."""
        ...

    def submit(self, grid: "Grid", specs: list["RunSpec"], options: Any,
               report: Callable[["RunSpec", Outcome], None], wait: bool = True) -> list[Outcome] | None:
        """Carry out ``specs``; ``report`` is called once per run that ended while ``submit`` ran. ``wait``: block
        until every run has ended (an executor that always does ignores it)."""
        ...
