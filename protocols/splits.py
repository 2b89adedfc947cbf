"""Split manifests: the exact train/val/test lists of one (dataset, shots, seed, subsample, sampling), as JSON.

A manifest is built once from the data root (:func:`build_manifest`), written under the cache folder, never inside
the data root, and shared by every method. Its :attr:`SplitManifest.content_hash` covers everything but the
absolute image root, so the same split on another machine has the same hash.
"""

from __future__ import annotations

import hashlib
import json
import os
import tempfile
from dataclasses import dataclass
from functools import cached_property
from pathlib import Path
from typing import Any

from frozen_clip.errors import ConfigError, DataError
from protocols.datasets import DatasetSpec, Item, items_from_entries, load_splits, resolve_spec
from protocols.fewshot import base_new_classnames, sample_fewshot, subsample_classes

MANIFEST_VERSION = 1
SPLIT_NAMES = ("train", "val", "test")
_HASH_CHARS = 16


@dataclass(frozen=True)
class SplitManifest:
    """The lists of one split, relabelled for its subsample; paths relative to ``image_root``.

    ``shots == 0`` means no few-shot draw (full train/val); ``test`` is always the full test split restricted to
    the chosen classes; ``classnames[label]`` names the (relabelled) classes.
    """

    dataset: str
    shots: int
    seed: int
    sampling: str
    subsample: str
    classnames: tuple[str, ...]
    train: tuple[Item, ...]
    val: tuple[Item, ...]
    test: tuple[Item, ...]
    image_root: str
    split_file_sha256: str | None

    @cached_property
    def content_hash(self) -> str:
        """First 16 hex digits of SHA-256 over the canonical JSON of every field except ``image_root``."""
        payload = {k: v for k, v in self.to_json_dict().items() if k not in ("image_root", "content_hash")}
        canonical = json.dumps(payload, sort_keys=True, separators=(",", ":"), ensure_ascii=False)
        return hashlib.sha256(canonical.encode("utf-8")).hexdigest()[:_HASH_CHARS]

    @property
    def n_classes(self) -> int:
        """Number of classes after subsampling."""
        return len(self.classnames)

    @property
    def file_name(self) -> str:
        """``<subsample>-<shots>shot-seed<seed>-<sampling>-<hash>.json`` (``full`` instead of ``0shot``)."""
        shots = f"{self.shots}shot" if self.shots else "full"
        return f"{self.subsample}-{shots}-seed{self.seed}-{self.sampling}-{self.content_hash}.json"

    def items(self, split: str) -> tuple[Item, ...]:
        """The items of ``split`` (``train``, ``val`` or ``test``)."""
        if split not in SPLIT_NAMES:
            raise ConfigError(f"split {split!r} is not one of {list(SPLIT_NAMES)}")
        return getattr(self, split)

    def absolute_paths(self, splits: tuple[str, ...] = SPLIT_NAMES) -> list[Path]:
        """Absolute image paths of ``splits``, each path once, in order (for image checks before compute)."""
        root = Path(self.image_root)
        paths = dict.fromkeys(root / item.path for split in splits for item in self.items(split))
        return list(paths)

    def to_json_dict(self) -> dict[str, Any]:
        """The manifest as written to disk (items as ``[path, label, classname]``)."""
        head = {"version": MANIFEST_VERSION, "dataset": self.dataset, "shots": self.shots, "seed": self.seed,
                "sampling": self.sampling, "subsample": self.subsample,
                "split_file_sha256": self.split_file_sha256, "image_root": self.image_root,
                "classnames": list(self.classnames)}
        lists = {name: [[it.path, it.label, it.classname] for it in self.items(name)] for name in SPLIT_NAMES}
        return {**head, **lists}


def build_manifest(dataset: str | DatasetSpec, data_root: str | Path, shots: int, seed: int, subsample: str,
                   sampling: str, cache_dir: str | Path) -> SplitManifest:
    """Load, sample, subsample; write the manifest under ``cache_dir/splits/<dataset>/`` and return it.

    ``shots == 0``: no few-shot draw (zero-shot, evaluation-only targets). Raises :class:`ConfigError` for bad
    arguments or a cache folder inside the data root, :class:`DataError` for data problems.
    """
    spec = resolve_spec(dataset)
    _check_not_inside(Path(cache_dir), Path(data_root))
    splits = load_splits(spec, data_root, "listdir" if sampling == "dassl_listdir" else "sorted")
    train, val = sample_fewshot(splits, shots, seed, sampling)
    train_s, val_s, test_s = subsample_classes(train, val, splits.test, subsample)
    manifest = SplitManifest(
        dataset=spec.key, shots=shots, seed=seed, sampling=sampling, subsample=subsample,
        classnames=base_new_classnames(splits.classnames, train, subsample),
        train=tuple(train_s), val=tuple(val_s), test=tuple(test_s), image_root=str(splits.image_root),
        split_file_sha256=splits.split_sha256)
    path = manifest_path(manifest, cache_dir)
    if not path.is_file():  # named by its content's hash and written atomically: one there is this manifest
        write_manifest(manifest, path)
    return manifest


def _check_not_inside(cache_dir: Path, data_root: Path) -> None:
    cache, data = cache_dir.expanduser().resolve(), data_root.expanduser().resolve()
    if cache == data or data in cache.parents:
        raise ConfigError(f"cache folder {cache_dir} is inside the data root {data_root}; the suite never writes "
                          f"into the data root")


def manifest_path(manifest: SplitManifest, cache_dir: str | Path) -> Path:
    """``cache_dir/splits/<dataset>/<file_name>``."""
    return Path(cache_dir) / "splits" / manifest.dataset / manifest.file_name


def _dumps(payload: dict[str, Any]) -> str:
    """JSON with one item per line (readable, diffable) for the item lists."""
    parts = []
    for key, value in payload.items():
        if key in SPLIT_NAMES and value:
            body = ",\n".join("  " + json.dumps(v, ensure_ascii=False) for v in value)
            parts.append(f" {json.dumps(key)}: [\n{body}\n ]")
        else:
            parts.append(f" {json.dumps(key)}: {json.dumps(value, ensure_ascii=False)}")
    return "{\n" + ",\n".join(parts) + "\n}\n"


def write_manifest(manifest: SplitManifest, path: str | Path) -> Path:
    """Write ``manifest`` to ``path`` atomically (temp file in the same folder, then ``os.replace``)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    text = _dumps({**manifest.to_json_dict(), "content_hash": manifest.content_hash})
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            f.write(text)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return path


def load_manifest(path: str | Path) -> SplitManifest:
    """Read a manifest written by :func:`build_manifest`; :class:`DataError` if missing, malformed or altered."""
    path = Path(path)
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError as err:
        raise DataError(f"split manifest {path} does not exist") from err
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as err:
        raise DataError(f"split manifest {path} cannot be read as JSON: {err}") from err
    manifest = _from_json_dict(data, f"split manifest {path}")
    if data.get("content_hash") != manifest.content_hash:
        raise DataError(f"split manifest {path}: stored content_hash {data.get('content_hash')!r} does not match "
                        f"its content ({manifest.content_hash}); the file was edited or truncated")
    return manifest


_FIELD_TYPES: dict[str, tuple[type, ...]] = {
    "dataset": (str,), "shots": (int,), "seed": (int,), "sampling": (str,), "subsample": (str,),
    "image_root": (str,), "split_file_sha256": (str, type(None)), "classnames": (list,)}


def _from_json_dict(data: Any, where: str) -> SplitManifest:
    if not isinstance(data, dict):
        raise DataError(f"{where}: expected a JSON object, got {type(data).__name__}")
    if data.get("version") != MANIFEST_VERSION:
        raise DataError(f"{where}: version {data.get('version')!r} is not {MANIFEST_VERSION}; rebuild the manifest")
    for key, types in _FIELD_TYPES.items():
        if key not in data or not isinstance(data[key], types) or isinstance(data[key], bool):
            raise DataError(f"{where}: key {key!r} is missing or not a {' or '.join(t.__name__ for t in types)}")
    if not all(isinstance(name, str) for name in data["classnames"]):
        raise DataError(f"{where}: 'classnames' must be a list of strings")
    lists = {name: tuple(items_from_entries(data.get(name), f"{where}: {name!r}")) for name in SPLIT_NAMES}
    fields = {key: data[key] for key in _FIELD_TYPES}
    return SplitManifest(**{**fields, "classnames": tuple(data["classnames"]), **lists})
