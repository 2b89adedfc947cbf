"""Atomic file writes: a temp file in the destination folder, flushed and fsynced, then ``os.replace``.

A reader sees either the old file or the complete new one, never a partial write, even if the writer is killed.
The file gets the permissions the process's umask gives a new file (``tempfile.mkstemp`` alone makes it readable by
its owner only, and a lab shares result folders).
The JSON and text writers need no torch (run records are read and written where torch is not installed); torch is
imported by :func:`torch_save` only.
"""

from __future__ import annotations

import contextlib
import contextvars
import functools
import json
import os
import pickle
import tempfile
import zipfile
from pathlib import Path
from typing import Any, Callable, IO, Iterator


@functools.lru_cache(maxsize=1)
def _umask() -> int:
    """The process's umask: read from ``/proc`` where it can be (setting it to read it races with other threads)."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("Umask:"):
                return int(line.split()[1], 8)
    except (OSError, ValueError, IndexError):
        pass
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


# set within one_sync(): atomic writes leave durability to the block's single os.sync()
_DEFER_SYNC: contextvars.ContextVar[bool] = contextvars.ContextVar("fcs_atomic_defer_sync", default=False)


@contextlib.contextmanager
def one_sync() -> Iterator[None]:
    """Within the block, atomic writes skip their own fsync; one ``os.sync()`` when it ends makes them all durable.

    For many small files written together (a grid submission writes a config and a submission marker per run: 2,000
    fsyncs took 7 s on a shared disk). Readers still see the old or the whole new file; only a machine crash before
    the block ends may lose what it wrote, as it may lose a file being written."""
    token = _DEFER_SYNC.set(True)
    try:
        yield
    finally:
        _DEFER_SYNC.reset(token)
        os.sync()


def _atomic(path: Path, write: Callable[[IO[bytes]], None]) -> None:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        os.fchmod(fd, 0o666 & ~_umask())  # as open() would create it (mkstemp makes it 0600)
        with os.fdopen(fd, "wb") as handle:
            write(handle)
            handle.flush()
            if not _DEFER_SYNC.get():
                os.fsync(handle.fileno())
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise


#: what loading a truncated or otherwise damaged file raises (torch.load: a zip archive cut short, a pickle cut short)
DAMAGED_FILE_ERRORS: tuple[type[BaseException], ...] = (RuntimeError, EOFError, ValueError, OSError, KeyError,
                                                        pickle.UnpicklingError, zipfile.BadZipFile)


def move_aside(path: Path, tag: str, stamp: str | None = None) -> Path:
    """Rename ``path`` to ``<name>.<tag>-<UTC time>`` next to it (kept to inspect, out of the readers' way); ``stamp``
    names the time when several files move aside together. Returns the new path; raises ``FileNotFoundError`` if
    ``path`` is gone."""
    path = Path(path)
    stamp = stamp or utc_stamp()
    target = path.with_name(f"{path.name}.{tag}-{stamp}")
    os.replace(path, target)
    return target


def utc_stamp() -> str:
    """The current UTC time as ``YYYYmmddTHHMMSSffffffZ`` (for names of files moved aside)."""
    import datetime as dt
    return dt.datetime.now(dt.timezone.utc).strftime("%Y%m%dT%H%M%S%fZ")


def quarantine(path: Path, what: str, error: BaseException | str,
               log: Callable[[str], None] | None = None) -> Path:
    """Move a damaged file aside (``<name>.damaged-<UTC time>``, next to it) so that it is computed again, and say
    so: through ``log`` when given, else as a warning on stderr. Returns where the file went.

    Files written by this module are complete or absent, so a damaged one was truncated or changed by something else
    (a full disk, a copy cut short, a hand edit); keeping it aside instead of deleting it leaves it to inspect."""
    import warnings
    path = Path(path)
    try:
        target = move_aside(path, "damaged")
    except FileNotFoundError:  # another process moved it aside first
        return path
    reason = error if isinstance(error, str) else f"{type(error).__name__}: {str(error).split('. ')[0][:200]}"
    message = f"{what} {path} could not be read ({reason}); moved aside to {target.name} and computed again"
    if log is not None:
        log(message)
    else:
        warnings.warn(message, stacklevel=2)
    return target


def load_or_quarantine(path: Path, what: str, load: Callable[[Path], Any],
                       log: Callable[[str], None] | None = None) -> Any | None:
    """``load(path)``; None when there is no file, or when loading it fails as a damaged file does
    (:data:`DAMAGED_FILE_ERRORS`): then it is moved aside with a message (:func:`quarantine`), to be computed
    again."""
    path = Path(path)
    if not path.is_file():
        return None
    try:
        return load(path)
    except FileNotFoundError:
        return None
    except DAMAGED_FILE_ERRORS as err:
        quarantine(path, what, err, log)
        return None


def write_json(path: Path, data: Any) -> None:
    """Write ``data`` as indented JSON atomically."""
    payload = (json.dumps(data, indent=1, sort_keys=False, default=str) + "\n").encode()
    _atomic(path, lambda handle: handle.write(payload))


def write_text(path: Path, text: str) -> None:
    """Write a text file atomically."""
    _atomic(path, lambda handle: handle.write(text.encode()))


def torch_save(path: Path, obj: Any) -> None:
    """``torch.save`` atomically."""
    import torch
    _atomic(path, lambda handle: torch.save(obj, handle))
