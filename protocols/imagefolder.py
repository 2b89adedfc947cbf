"""Image checks that run before any compute is spent: every image a run will read exists and decodes.

Decoding is the runner's own (:mod:`frozen_clip.images`: PIL, converted to RGB, as Dassl), so an
image that passes here is one the runner can read.
"""

from __future__ import annotations

import json
import os
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Iterable

from frozen_clip import atomic
from frozen_clip.images import DECODE_ERRORS, load_rgb


def image_problem(path: str | Path, decode: bool = True) -> str | None:
    """None if the image is fine, else ``"missing"`` or ``"unreadable (<reason>)"``.

    ``decode=False`` only checks that the file exists; ``decode=True`` decodes it exactly as training does.
    """
    if not decode:
        return None if os.path.isfile(path) else "missing"
    try:
        load_rgb(path)
    except FileNotFoundError:
        return "missing"
    except DECODE_ERRORS as err:
        return f"unreadable ({type(err).__name__}: {err})"
    return None


def check_images(paths: Iterable[str | Path], decode: bool = True, workers: int = 1) -> list[tuple[str, str]]:
    """``(path, problem)`` for every image of ``paths`` that is missing or (with ``decode``) cannot be decoded.

    ``workers > 1`` checks in threads (PIL decodes without the GIL). Results keep the order of ``paths``.
    """
    paths = [str(p) for p in paths]
    if workers > 1:
        with ThreadPoolExecutor(max_workers=workers) as pool:
            problems = list(pool.map(lambda p: image_problem(p, decode), paths, chunksize=64))
    else:
        problems = [image_problem(p, decode) for p in paths]
    return [(p, problem) for p, problem in zip(paths, problems) if problem is not None]


def _stamp(path: str) -> list[int] | None:
    try:
        stat = os.stat(path)
    except OSError:
        return None
    return [stat.st_size, stat.st_mtime_ns]


def _read_ledger(ledger: Path) -> dict[str, list[int]]:
    try:
        entries = json.loads(ledger.read_text())
    except (OSError, ValueError):
        return {}  # absent, or unreadable: every image is checked again
    return entries if isinstance(entries, dict) else {}


def check_images_with_ledger(paths: Iterable[str | Path], ledger: Path, workers: int = 1) -> list[tuple[str, str]]:
    """:func:`check_images` (decoding), skipping the images ``ledger`` records as decoded before with the size and
    modification time they still have; the images that decode now are added to it (written atomically).

    A grid's runs share their test images and most of their training images: with the ledger, every run after the
    first pays a ``stat`` per image instead of decoding it (50,000 ImageNet test images: minutes per run). A file
    rewritten in place with the same size and modification time would not be decoded again (the assumption of
    ``make`` and ``rsync``). Runs writing the ledger at once may drop each other's entries, which only costs a
    re-check later.
    """
    paths = [str(p) for p in paths]
    known = _read_ledger(ledger)
    stamps = {p: _stamp(p) for p in paths}
    todo = [p for p in paths if stamps[p] is None or known.get(p) != stamps[p]]
    problems = dict(check_images(todo, workers=workers))
    fresh = {p: stamps[p] for p in todo if p not in problems and stamps[p] is not None}
    if fresh:
        atomic.write_json(ledger, {**_read_ledger(ledger), **fresh})  # read again: another run may have added some
    return [(p, problems[p]) for p in paths if p in problems]
