"""Atomic file writes: a temp file in the destination folder, flushed and fsynced, then ``os.replace``.

A reader sees either the old file or the complete new one, never a partial write, even if the writer is killed.
The JSON and text writers need no torch (run records are read and written where torch is not installed); torch is
imported by :func:`torch_save` only.
"""

from __future__ import annotations

import json
import os
import tempfile
from pathlib import Path
from typing import Any, Callable, IO


def _atomic(path: Path, write: Callable[[IO[bytes]], None]) -> None:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as handle:
            write(handle)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise


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
