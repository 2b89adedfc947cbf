"""Stamps of files: what a cached product of images or weights was computed from, read without opening the files.

A file's stamp is its size and modification time in nanoseconds (:func:`file_stamp`, one ``stat``). Rewriting an
image in place changes its stamp, so every cache keyed by stamps (``frozen_clip.imagecache``,
``frozen_clip.features``) computes afresh instead of returning the old image's results, and a finished run whose
inputs' stamps changed since is reported (``jobs.inputs``). A copy of a dataset elsewhere (new times) is computed
once more, never wrongly reused. Standard library only.
"""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path
from typing import Any, Sequence


def file_stamp(path: str | Path) -> str:
    """``<size>-<mtime in ns>`` of a file, or ``absent`` when it cannot be read (see the module docstring)."""
    try:
        info = os.stat(path)
    except OSError:
        return "absent"
    return f"{info.st_size}-{info.st_mtime_ns}"


def file_stamps(image_root: str | Path, items: Sequence[Any]) -> list[str]:
    """:func:`file_stamp` of each item's image, in order."""
    root = Path(image_root)
    return [file_stamp(root / item.path) for item in items]


def stamps_signature(stamps: Sequence[str], items: Sequence[Any]) -> str:
    """16 hex chars of sha256 over the items' paths with their :func:`file_stamps`: what a cache entry of these
    images' contents is keyed by."""
    payload = json.dumps([[item.path, stamp] for item, stamp in zip(items, stamps, strict=True)],
                         separators=(",", ":"))
    return hashlib.sha256(payload.encode()).hexdigest()[:16]


def files_signature(image_root: str | Path, items: Sequence[Any]) -> str:
    """:func:`stamps_signature` of the items' current files."""
    return stamps_signature(file_stamps(image_root, items), items)


__all__ = ["file_stamp", "file_stamps", "stamps_signature", "files_signature"]
