"""What a finished run was computed from, and whether that changed since: ``inputs.json`` in its run folder.

A run writes, before its record, the stamps (:mod:`frozen_clip.stamps`: size and modification time) of every image of
its split manifests, as one signature per manifest, and of its local weights files. ``--status`` compares them with
the files as they are now (:func:`changed_inputs`: one ``stat`` per image, each manifest and weights file checked
once however many runs share it) and marks a finished run whose images were rewritten or whose weights were replaced;
``--rerun-changed`` moves such records aside and runs them again. A run folder without ``inputs.json`` (written by
an older suite) is not checked. The caches need none of this: their entries are keyed by the same stamps.

Standard library only (``--status`` runs without torch).
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Iterable, Mapping, Sequence

from frozen_clip import atomic
from frozen_clip.stamps import file_stamp, files_signature
from jobs.runfolder import RECORD_NAME

INPUTS_NAME = "inputs.json"
INPUTS_VERSION = 1


@dataclass(frozen=True)
class _Item:
    path: str


def manifest_signature(path: str | Path) -> str | None:
    """The stamps signature of every image (train, val, test) of the split manifest at ``path`` (its JSON file, as
    ``protocols.splits`` writes it); None if the manifest cannot be read."""
    try:
        data = json.loads(Path(path).read_text())
        items = [_Item(entry[0]) for split in ("train", "val", "test") for entry in data.get(split, [])]
        return files_signature(data["image_root"], items)
    except (OSError, ValueError, KeyError, TypeError, IndexError):
        return None


def write_inputs(folder: Path, manifests: Mapping[str, tuple[str, Path]], weights: Sequence[Path]) -> None:
    """Record what the run in ``folder`` is computed from: ``manifests`` maps an evaluation or fit split name to
    (dataset, manifest file); ``weights`` are its local weights files."""
    payload = {"version": INPUTS_VERSION,
               "manifests": {name: {"dataset": dataset, "path": str(path), "images": manifest_signature(path)}
                             for name, (dataset, path) in manifests.items()},
               "weights": {str(path): file_stamp(path) for path in weights}}
    atomic.write_json(Path(folder) / INPUTS_NAME, payload)


def changed_inputs(folders: Iterable[Path]) -> dict[Path, str]:
    """For each run folder whose recorded inputs differ from the files now, what changed (e.g. ``images of test
    (oxford_pets)``, ``weights /x/w.safetensors``)."""
    signatures: dict[str, str | None] = {}
    stamps: dict[str, str] = {}
    out: dict[Path, str] = {}
    for folder in folders:
        try:
            data = json.loads((Path(folder) / INPUTS_NAME).read_text())
        except (OSError, ValueError):
            continue
        if not isinstance(data, dict) or data.get("version") != INPUTS_VERSION:
            continue
        changes = []
        for name, entry in (data.get("manifests") or {}).items():
            path = str(entry.get("path"))
            if path not in signatures:
                signatures[path] = manifest_signature(path)
            if signatures[path] is not None and signatures[path] != entry.get("images"):
                changes.append(f"images of {name} ({entry.get('dataset', '?')})")
        for path, stamp in (data.get("weights") or {}).items():
            if path not in stamps:
                stamps[path] = file_stamp(path)
            if stamps[path] != stamp:
                changes.append(f"weights {path}")
        if changes:
            out[Path(folder)] = "inputs changed since the run: " + ", ".join(changes)
    return out


def set_aside(folder: Path) -> Path:
    """Move a finished run's record (and its inputs) aside as ``record.json.inputs-changed-<time>``, so that a
    launch runs it again; the old record stays to compare with."""
    stamp = atomic.utc_stamp()
    target = atomic.move_aside(Path(folder) / RECORD_NAME, "inputs-changed", stamp)
    if (Path(folder) / INPUTS_NAME).exists():
        atomic.move_aside(Path(folder) / INPUTS_NAME, "inputs-changed", stamp)
    return target


__all__ = ["INPUTS_NAME", "manifest_signature", "write_inputs", "changed_inputs", "set_aside"]
