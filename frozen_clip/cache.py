"""A content-keyed cache of frozen features.

Where a method's path through the backbone is frozen (zero-shot, linear probe, CLIP-Adapter, Tip-Adapter), image
features are a pure function of (backbone, pretrained weights, transform, dataset, split manifest, split name,
augmented view). The key is a hash of exactly those parts; the parts are stored next to the tensors for
inspection. Writes are atomic and guarded by a file lock, so concurrent runs compute a feature set once.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any, Callable, Iterator

import torch
from filelock import FileLock

from frozen_clip import atomic


def cache_key(parts: dict[str, Any]) -> str:
    """sha256 of the canonical JSON of ``parts`` (24 hex chars)."""
    return hashlib.sha256(json.dumps(parts, sort_keys=True, default=str).encode()).hexdigest()[:24]


def _nbytes(entry: dict[str, torch.Tensor]) -> int:
    return sum(t.numel() * t.element_size() for t in entry.values())


class BoundedMemo:
    """Tensor dicts kept in memory under a byte budget: the first ones that fit are kept (not evicted), because the
    readers come back cyclically (with V entries and room for fewer, least-recently-used eviction would always drop
    the one read next, while keeping the first ones serves most reads from memory)."""

    def __init__(self, memo_mb: float) -> None:
        self.budget = int(memo_mb * 2 ** 20)
        self.used = 0
        self._entries: dict[Any, dict[str, torch.Tensor]] = {}

    def get(self, key: Any) -> dict[str, torch.Tensor] | None:
        return self._entries.get(key)

    def __iter__(self) -> Iterator[Any]:
        return iter(self._entries)

    def __len__(self) -> int:
        return len(self._entries)

    def put(self, key: Any, entry: dict[str, torch.Tensor]) -> None:
        """Keep ``entry`` (replacing what ``key`` held) if it fits."""
        if key in self._entries:
            self.used -= _nbytes(self._entries.pop(key))
        if self.used + _nbytes(entry) <= self.budget:
            self._entries[key] = entry
            self.used += _nbytes(entry)


class FeatureCache:
    """Tensors on disk under ``root``, keyed by :func:`cache_key`.

    ``memo_mb > 0`` also keeps entries in memory, the first ones read until they fill that many MiB, for a reader
    that comes back to the same entries (the trainer cycling through ``fast.augment_views`` cached views reads each
    one every few epochs; loading it from disk cost as much as the epoch's training steps; :class:`BoundedMemo`).
    Memoised tensors are shared between calls, so this is only for readers that do not modify what they get.
    """

    def __init__(self, root: Path, memo_mb: float = 0.0) -> None:
        self.root = Path(root)
        self.hits = 0
        self.misses = 0
        self._memo = BoundedMemo(memo_mb)

    def path(self, parts: dict[str, Any]) -> Path:
        """Where the entry for ``parts`` lives."""
        return self.root / f"{cache_key(parts)}.pt"

    def get_or_compute(self, parts: dict[str, Any], compute: Callable[[], dict[str, torch.Tensor]]
                       ) -> dict[str, torch.Tensor]:
        """Load the entry for ``parts``, or compute, store and return it."""
        path = self.path(parts)
        memoised = self._memo.get(path)
        if memoised is not None:
            self.hits += 1
            return memoised
        value = self._load_or_compute(path, parts, compute)
        self._memo.put(path, value)
        return value

    def _load_or_compute(self, path: Path, parts: dict[str, Any], compute: Callable[[], dict[str, torch.Tensor]]
                         ) -> dict[str, torch.Tensor]:
        if path.is_file():
            self.hits += 1
            return torch.load(path, map_location="cpu", weights_only=True)
        self.root.mkdir(parents=True, exist_ok=True)
        with FileLock(str(path) + ".lock"):
            if path.is_file():
                self.hits += 1
                return torch.load(path, map_location="cpu", weights_only=True)
            self.misses += 1
            value = {k: v.detach().cpu() for k, v in compute().items()}
            atomic.torch_save(path, value)
            atomic.write_json(path.with_suffix(".json"), parts)
        return value


def row_id(key: str) -> int:
    """A stable 63-bit id of an image key (:class:`RowStore` rows are looked up by it)."""
    return int.from_bytes(hashlib.sha256(key.encode()).digest()[:8], "little") >> 1


class RowStore:
    """Frozen features of single images under ``root``, shared by every run whose images overlap.

    One entry per :func:`cache_key` of ``parts`` (backbone, weights, transform, dataset, view, ...) holds a row for
    every image any run stored, looked up by the image's id (:func:`row_id` of its key), so runs on other shots,
    seeds or methods that train on the same image reuse its row instead of encoding it again. That is what
    ``fast.shared_views`` needs: its views are drawn per image, not per split (:mod:`frozen_clip.fastpaths`).

    A reader asks which of its images an entry lacks (:meth:`missing`), encodes those and :meth:`add` s them (merged
    into the entry under its file lock and written atomically; rows another run added meanwhile are kept), then
    reads its rows (:meth:`rows`). Two runs starting together may both encode an image; they store the same row, as
    long as a row does not depend on which other images were encoded with it. The runner makes sure of that by
    encoding rows in batches of one fixed size, part of ``parts`` (:meth:`jobs.execute.FeatureAccess.encode_rows`
    pads the last batch): at a fixed batch size a row is bitwise independent of the batch's other rows and of its
    position (CPU; tested).

    ``memo_mb``: entries kept in memory once read, the first ones that fit (a trainer cycling through a few views
    reads each again and again; see :class:`FeatureCache`). Counters: rows ``read`` (by :meth:`rows`) and rows
    ``computed`` (stored by this reader).
    """

    def __init__(self, root: Path, memo_mb: float = 0.0) -> None:
        self.root = Path(root)
        self.read = 0
        self.computed = 0
        self._memo = BoundedMemo(memo_mb)

    def path(self, parts: dict[str, Any]) -> Path:
        """Where the entry for ``parts`` lives."""
        return self.root / f"{cache_key(parts)}.rows.pt"

    def missing(self, parts: dict[str, Any], keys: list[str]) -> list[int]:
        """Positions in ``keys`` of the images the entry has no row for."""
        found = _lookup(self._entry(self.path(parts)), _ids(keys))
        return (found < 0).nonzero().flatten().tolist()

    def add(self, parts: dict[str, Any], keys: list[str], features: torch.Tensor) -> None:
        """Store the rows ``features[i]`` of the images ``keys[i]`` (already stored ones stay as they are)."""
        if features.shape[0] != len(keys):
            raise ValueError(f"row store: {features.shape[0]} rows for {len(keys)} images")
        path = self.path(parts)
        self.root.mkdir(parents=True, exist_ok=True)
        with FileLock(str(path) + ".lock"):
            entry = _read_rows(path)  # what other runs stored since this run last read it
            ids = _ids(keys)
            new = _lookup(entry, ids) < 0
            new &= _first_occurrence(ids)
            if not bool(new.any()):
                if entry is not None:
                    self._memo.put(path, entry)
                return
            ids, rows = ids[new], features.detach().cpu()[new]
            if entry is not None:
                ids, rows = torch.cat([entry["ids"], ids]), torch.cat([entry["features"], rows])
            order = torch.argsort(ids)
            entry = {"ids": ids[order].contiguous(), "features": rows[order].contiguous()}
            atomic.torch_save(path, entry)
            if not path.with_suffix(".json").exists():
                atomic.write_json(path.with_suffix(".json"), parts)
        self.computed += int(new.sum())
        self._memo.put(path, entry)

    def rows(self, parts: dict[str, Any], keys: list[str]) -> torch.Tensor:
        """Features ``[len(keys), E]`` of the images ``keys``; every one must be stored."""
        path = self.path(parts)
        entry = self._entry(path)
        found = _lookup(entry, _ids(keys))
        if entry is None or bool((found < 0).any()):
            raise KeyError(f"row store {path}: no row for {keys[int((found < 0).nonzero()[0])]!r}")
        self.read += len(keys)
        return entry["features"][found]

    def _entry(self, path: Path) -> dict[str, torch.Tensor] | None:
        entry = self._memo.get(path)
        if entry is None:
            entry = _read_rows(path)
            if entry is not None:
                self._memo.put(path, entry)
        return entry


def _ids(keys: list[str]) -> torch.Tensor:
    return torch.tensor([row_id(key) for key in keys], dtype=torch.long)


def _read_rows(path: Path) -> dict[str, torch.Tensor] | None:
    if not path.is_file():
        return None
    return torch.load(path, map_location="cpu", weights_only=True)


def _lookup(entry: dict[str, torch.Tensor] | None, ids: torch.Tensor) -> torch.Tensor:
    """The row of each id in ``entry`` (whose ids are sorted), -1 where it has none."""
    if entry is None or entry["ids"].numel() == 0:
        return torch.full_like(ids, -1)
    stored = entry["ids"]
    at = torch.searchsorted(stored, ids).clamp(max=stored.numel() - 1)
    return torch.where(stored[at].eq(ids), at, torch.full_like(at, -1))


def _first_occurrence(ids: torch.Tensor) -> torch.Tensor:
    """True at the first position of each distinct id (an image listed twice is stored once)."""
    seen: set[int] = set()
    first = []
    for value in ids.tolist():
        first.append(value not in seen)
        seen.add(value)
    return torch.tensor(first, dtype=torch.bool)
