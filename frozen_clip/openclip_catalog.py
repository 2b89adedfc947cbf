"""open_clip's catalogue (architecture names, pretrained tags and their QuickGELU flags), read without importing
open_clip where it has been read before.

Resolving a run config checks its backbone name and pretrained tag (:func:`frozen_clip.backbone.resolve_backbone`).
Asking open_clip means importing it, and with it torch, torchvision and timm: seconds of CPU time on every
``--dry-run`` and launch, for a catalogue that is a pure function of the installed open_clip (its
``model_configs/*.json`` and ``pretrained.py``). So the catalogue is read once by importing open_clip and stored as
JSON under the suite's cache folder (``$FCS_CACHE``, default ``~/.cache/frozen-clip-suite``), in a file named by a
hash of those files and open_clip's version: another open_clip, or an edited model config, hashes differently and is
read afresh; nothing can go stale. A cache that cannot be written (read-only home) only costs the import.

Standard library only.
"""

from __future__ import annotations

import functools
import hashlib
import importlib.util
import json
import os
from pathlib import Path
from typing import Any

from frozen_clip import atomic

CACHE_ENV = "FCS_CACHE"
DEFAULT_CACHE = "~/.cache/frozen-clip-suite"
CATALOG_VERSION = 1


def cache_root() -> Path:
    """The suite's cache folder: ``$FCS_CACHE``, default ``~/.cache/frozen-clip-suite``."""
    return Path(os.path.expanduser(os.environ.get(CACHE_ENV) or DEFAULT_CACHE))


def _package_dir() -> Path | None:
    """open_clip's package folder, found without importing it (None when open_clip is not installed)."""
    spec = importlib.util.find_spec("open_clip")
    locations = list(spec.submodule_search_locations or []) if spec else []
    return Path(locations[0]) if locations else None


def _source_hash(package: Path) -> str:
    """A hash of what the catalogue is computed from: open_clip's version, ``pretrained.py`` and the model configs."""
    digest = hashlib.sha256(f"catalog {CATALOG_VERSION}\0".encode())
    for name in ("version.py", "pretrained.py"):
        path = package / name
        digest.update(name.encode() + b"\0" + (path.read_bytes() if path.is_file() else b"<absent>") + b"\0")
    for path in sorted((package / "model_configs").glob("*.json")):
        digest.update(path.name.encode() + b"\0" + path.read_bytes() + b"\0")
    return digest.hexdigest()[:16]


def _read_from_open_clip() -> dict[str, Any]:
    """The catalogue, asked of open_clip itself (imports it)."""
    import open_clip
    pretrained: dict[str, dict[str, bool]] = {}
    for arch, tag in open_clip.list_pretrained():
        cfg = open_clip.pretrained.get_pretrained_cfg(arch, tag)
        pretrained.setdefault(arch, {})[tag] = bool(cfg.get("quick_gelu", False))
    return {"version": CATALOG_VERSION, "models": list(open_clip.list_models()), "pretrained": pretrained}


@functools.lru_cache(maxsize=1)
def catalog() -> dict[str, Any]:
    """``{"models": [architecture, ...], "pretrained": {architecture: {tag: quick_gelu}}}`` of the installed
    open_clip, from the cache file when one exists for it (see the module docstring)."""
    package = _package_dir()
    if package is None:
        return _read_from_open_clip()  # raises the ImportError a user should see
    path = cache_root() / "open_clip-catalog" / f"{_source_hash(package)}.json"
    try:
        data = json.loads(path.read_text())
        if isinstance(data, dict) and data.get("version") == CATALOG_VERSION:
            return data
    except (OSError, ValueError):
        pass
    data = _read_from_open_clip()
    try:
        atomic.write_text(path, json.dumps(data, sort_keys=True) + "\n")
    except OSError:  # a read-only cache only costs the import next time
        pass
    return data


@functools.lru_cache(maxsize=None)
def model_config(arch: str) -> dict[str, Any] | None:
    """open_clip's model config of architecture ``arch`` (``model_configs/<arch>.json``), read as a file: sizes a
    method can be checked against before any model is built (read once per process; do not modify the result).
    None if there is no such file."""
    package = _package_dir()
    path = None if package is None else package / "model_configs" / f"{arch}.json"
    if path is None or not path.is_file():
        return None
    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError):
        return None
    return data if isinstance(data, dict) else None


def known_models() -> list[str]:
    """open_clip's architecture names (``open_clip.list_models()``)."""
    return list(catalog()["models"])


def pretrained_tags(arch: str) -> list[str]:
    """The pretrained tags open_clip knows for ``arch`` (``open_clip.list_pretrained_tags_by_model``)."""
    return list(catalog()["pretrained"].get(arch, {}))


def tag_quick_gelu(arch: str, tag: str) -> bool | None:
    """Whether open_clip's pretrained ``tag`` of ``arch`` was trained with QuickGELU; None if it is not a tag of
    ``arch``. Tags are normalised as open_clip normalises them (lower case, ``-`` -> ``_``)."""
    quick = catalog()["pretrained"].get(arch, {}).get(tag.lower().replace("-", "_"))
    return None if quick is None else bool(quick)


__all__ = ["cache_root", "catalog", "model_config", "known_models", "pretrained_tags", "tag_quick_gelu"]
