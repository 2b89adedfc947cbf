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
from typing import Any, Callable

import torch
from filelock import FileLock

from frozen_clip import atomic


def cache_key(parts: dict[str, Any]) -> str:
    """sha256 of the canonical JSON of ``parts`` (24 hex chars)."""
    return hashlib.sha256(json.dumps(parts, sort_keys=True, default=str).encode()).hexdigest()[:24]


def _nbytes(entry: dict[str, torch.Tensor]) -> int:
    return sum(t.numel() * t.element_size() for t in entry.values())


class FeatureCache:
    """Tensors on disk under ``root``, keyed by :func:`cache_key`.

    ``memo_mb > 0`` also keeps entries in memory, the first ones read until they fill that many MiB, for a reader
    that comes back to the same entries (the trainer cycling through ``fast.augment_views`` cached views reads each
    one every few epochs; loading it from disk cost as much as the epoch's training steps). Entries are kept rather
    than evicted because the reads are cyclic: with V views and room for fewer, least-recently-used eviction would
    always drop the one read next, while keeping the first ones serves most reads from memory. Memoised tensors are
    shared between calls, so this is only for readers that do not modify what they get.
    """

    def __init__(self, root: Path, memo_mb: float = 0.0) -> None:
        self.root = Path(root)
        self.hits = 0
        self.misses = 0
        self.memo_bytes = int(memo_mb * 2 ** 20)
        self._memo: dict[Path, dict[str, torch.Tensor]] = {}
        self._memo_used = 0

    def path(self, parts: dict[str, Any]) -> Path:
        """Where the entry for ``parts`` lives."""
        return self.root / f"{cache_key(parts)}.pt"

    def get_or_compute(self, parts: dict[str, Any], compute: Callable[[], dict[str, torch.Tensor]]
                       ) -> dict[str, torch.Tensor]:
        """Load the entry for ``parts``, or compute, store and return it."""
        path = self.path(parts)
        if path in self._memo:
            self.hits += 1
            return self._memo[path]
        value = self._load_or_compute(path, parts, compute)
        self._remember(path, value)
        return value

    def _remember(self, path: Path, value: dict[str, torch.Tensor]) -> None:
        size = _nbytes(value)
        if self._memo_used + size <= self.memo_bytes:
            self._memo[path] = value
            self._memo_used += size

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
