"""Errors the suite raises for bad user input.

Every error a user can fix (a wrong key in a grid, a missing split file, an unreadable image) derives from
:class:`SuiteError`. Entry points catch it, print the message (which names the file or key and what was
expected) and exit with code 2 before any compute is spent. Anything else is a bug and keeps its traceback.
"""


class SuiteError(Exception):
    """Base class of every user-facing error; entry points exit with code 2 on it."""


class ConfigError(SuiteError):
    """A run or grid configuration is invalid (unknown key, wrong type, impossible combination)."""


class DataError(SuiteError):
    """A dataset root, split file or image is missing, unreadable or inconsistent."""


class SchedulerError(SuiteError):
    """The scheduler (Slurm) refused a submission or could not be asked. ``exit_code`` is what the command line
    exits with: 2 when the settings are at fault (a partition that does not exist, an array too large), 1 when the
    scheduler is unreachable (nothing the grid can fix; the same command works once it is back)."""

    def __init__(self, message: str, exit_code: int = 2) -> None:
        super().__init__(message)
        self.exit_code = exit_code
