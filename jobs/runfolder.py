"""Run folders and their records, without torch: where a run lives, how its record is written and read.

``<results_dir>/<name>/<run_id>/`` holds ``config.yaml``, ``record.json`` (written atomically, once, when the run
ends), ``log.txt``, ``checkpoints/`` and, for submitted runs, ``submitted.json`` (:mod:`jobs.state`).

Everything here imports only the standard library and :mod:`frozen_clip.atomic` (whose JSON and text writers need
no torch), so ``--status`` and the analysis read results on a machine without torch.

Reading a status is cheap: a record is written with one-space indentation and its ``status`` is one of its last
top-level keys, so :func:`read_status` finds ``"status"`` in the file's tail; a file that does not look like that
(another writer's formatting, a failed record with a long traceback after its status) is parsed whole.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
from pathlib import Path
from typing import Any

from frozen_clip import atomic

SCHEMA_VERSION = 1
#: set by a local-pool launcher in its runs' environment and stored in their records (``env.launch_id``), so that the
#: launcher tells the runs it executed from those another launcher of the same grid executed meanwhile
LAUNCH_ID_ENV = "FCS_LAUNCH_ID"
RECORD_NAME = "record.json"
REPO_ROOT = Path(__file__).resolve().parent.parent
_TAIL_BYTES = 1024  # after a done record's status come only ``failure: null`` and ``finished_at``
_STATUS_LINE = re.compile(rb'\n "status": "([a-z]+)",?\n')  # a top-level key of a one-space-indented record


def run_dir(resolved: Any) -> Path:
    """``<results_dir>/<name>/<run_id>`` of a :class:`jobs.config.ResolvedRun`."""
    return folder_of(resolved.run.results_dir, resolved.run.name, resolved.run_id)


def folder_of(results_dir: str | Path, name: str, run_id: str) -> Path:
    """``<results_dir>/<name>/<run_id>``: a run's folder from the parts of its config that place it."""
    return Path(results_dir) / name / run_id


def check_writable_folder(path: str | Path, what: str) -> None:
    """``path`` is a folder this process can write into, or one it can create (its nearest existing ancestor is a
    writable folder); :class:`ConfigError` naming ``what`` and the path otherwise. Checked before any run starts, so
    a results folder on a read-only mount or a file in the way is one clear line, not a traceback per run."""
    from frozen_clip.errors import ConfigError
    path = Path(path).expanduser()
    existing = path
    while not existing.exists() and existing != existing.parent:
        existing = existing.parent
    if not existing.is_dir():
        raise ConfigError(f"{what} {path}: {existing} is not a folder")
    if not os.access(existing, os.W_OK | os.X_OK):
        raise ConfigError(f"{what} {path}: {existing} is not writable by this user")


def read_record(folder: Path) -> dict[str, Any] | None:
    """The record of a run folder, or None if absent or unreadable."""
    try:
        return json.loads((Path(folder) / RECORD_NAME).read_text())
    except (OSError, ValueError):
        return None


def read_status(folder: Path) -> str | None:
    """The ``status`` of a run folder's record (``done`` or ``failed``), or None if there is no readable record.

    Reads the file's tail only when the status is there (see the module docstring); otherwise parses the record."""
    path = Path(folder) / RECORD_NAME
    try:
        with open(path, "rb") as handle:
            size = handle.seek(0, os.SEEK_END)
            handle.seek(max(0, size - _TAIL_BYTES))
            tail = handle.read()
    except OSError:
        return None
    if tail.rstrip().endswith(b"}"):
        found = list(_STATUS_LINE.finditer(tail))
        if found:
            return found[-1].group(1).decode()
    record = read_record(folder)
    return record.get("status") if isinstance(record, dict) else None


def write_record(folder: Path, record: dict[str, Any]) -> None:
    """Write ``record.json`` atomically (a reader sees the old record or the new one, never a partial one)."""
    atomic.write_json(Path(folder) / RECORD_NAME, record)


def write_config(folder: Path, config: dict[str, Any]) -> Path:
    """Write a run's resolved config to ``<folder>/config.yaml`` atomically (what a worker or a job resolves again
    with :func:`read_run_config`)."""
    import yaml
    path = Path(folder) / "config.yaml"
    # libyaml's dumper where PyYAML has it (the same YAML, ~10x faster: a large grid writes thousands of these)
    dumper = getattr(yaml, "CSafeDumper", yaml.SafeDumper)
    atomic.write_text(path, yaml.dump(config, Dumper=dumper, sort_keys=False))
    return path


def read_run_config(path: str | Path) -> dict[str, Any]:
    """A run config YAML file (e.g. a run folder's ``config.yaml``) as a mapping; :class:`ConfigError` if not."""
    from jobs.rawconfig import read_yaml_mapping
    return read_yaml_mapping(Path(path), "run config")


def code_version() -> str:
    """Which code made a run: ``git <commit>`` (``+ local changes`` when the checkout differs from it) from a git
    checkout, else the installed distribution's version (``frozen-clip-suite <version>``)."""
    sha = git_sha()
    if sha:
        try:
            dirty = subprocess.run(["git", "-C", str(REPO_ROOT), "status", "--porcelain", "--untracked-files=no"],
                                   capture_output=True, text=True, timeout=10).stdout.strip()
        except (OSError, subprocess.SubprocessError):
            dirty = ""
        return f"git {sha}" + (" + local changes" if dirty else "")
    from importlib import metadata
    try:
        return f"frozen-clip-suite {metadata.version('frozen-clip-suite')} (not a git checkout)"
    except metadata.PackageNotFoundError:
        return "unknown (not a git checkout, not installed)"


def git_sha() -> str | None:
    """The suite's git commit, if it runs from a git checkout."""
    try:
        out = subprocess.run(["git", "-C", str(REPO_ROOT), "rev-parse", "HEAD"], capture_output=True, text=True,
                             timeout=5)
        return out.stdout.strip() or None
    except (OSError, subprocess.SubprocessError):
        return None
