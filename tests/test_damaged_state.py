"""Damaged state heals itself: a truncated checkpoint, feature-cache entry, image-cache entry or record is moved aside
with a message naming it and computed again, to the metrics an undamaged run gives; nothing has to be deleted by
hand."""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image

from jobs.config import resolve
from jobs.runfolder import run_dir
from jobs.state import state_of
from tests.conftest import base_run, execute_resolved


def truncate(path: Path) -> None:
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])


def damaged(folder: Path) -> list[Path]:
    return sorted(folder.rglob("*.damaged-*"))


def test_a_truncated_checkpoint_is_moved_aside_and_the_run_starts_again(data_root, tmp_path):
    resolved = resolve(base_run(data_root, tmp_path / "res", method="coop"), "t")
    reference = execute_resolved(resolved)
    folder = run_dir(resolved)
    (folder / "record.json").unlink()  # as if killed after the last checkpoint
    checkpoint = folder / "checkpoints" / "last.pt"
    assert checkpoint.is_file()
    truncate(checkpoint)
    again = execute_resolved(resolved)
    assert again["metrics"] == reference["metrics"]
    assert again["cost"]["resumed_from_epoch"] == 0  # started again from scratch, not failed
    assert [p.parent.name for p in damaged(folder)] == ["checkpoints"]
    assert "checkpoint" in (folder / "log.txt").read_text() and "moved aside" in (folder / "log.txt").read_text()


def test_truncated_feature_cache_entries_are_recomputed(data_root, tmp_path):
    results = tmp_path / "res"
    first = execute_resolved(resolve(base_run(data_root, results, method="zeroshot", name="a"), "a"))
    entries = sorted((results / "cache" / "features").glob("*.pt"))
    assert entries
    for entry in entries:
        truncate(entry)
    second = execute_resolved(resolve(base_run(data_root, results, method="zeroshot", name="b"), "b"))
    assert second["metrics"] == first["metrics"]
    assert len(damaged(results / "cache" / "features")) == len(entries)
    assert second["cost"]["feature_cache"]["misses"] >= len(entries)


def test_a_damaged_record_is_reported_moved_aside_and_the_run_done_again(data_root, tmp_path):
    resolved = resolve(base_run(data_root, tmp_path / "res", method="zeroshot"), "t")
    reference = execute_resolved(resolved)
    folder = run_dir(resolved)
    (folder / "record.json").write_text('{"schema_version": 1, "run_id": "cut sh')
    state = state_of(folder)
    assert state.status == "failed" and "record.json is damaged" in state.reason
    again = execute_resolved(resolved)
    assert again["metrics"] == reference["metrics"]
    assert [p.name.split(".damaged-")[0] for p in damaged(folder)] == ["record.json"]
    assert state_of(folder).status == "done"


@dataclass(frozen=True)
class Item:
    path: str
    label: int


def test_a_truncated_image_cache_entry_is_rebuilt(tmp_path):
    from frozen_clip.imagecache import ImageCache
    from frozen_clip.transforms import test_spec
    root = tmp_path / "images"
    root.mkdir()
    items = []
    for i in range(3):
        Image.new("RGB", (40, 30), (40 * i, 10, 200)).save(root / f"{i}.png")
        items.append(Item(f"{i}.png", i))
    spec = test_spec(16, (0.5, 0.5, 0.5), (0.5, 0.5, 0.5))
    cache = ImageCache(tmp_path / "cache")
    first = np.array(cache.resized("d", items, root, spec))
    decoded = cache.decoded("d", items, root)
    for entry in sorted((tmp_path / "cache").glob("*.np*")) + sorted((tmp_path / "cache").glob("*.pt")):
        truncate(entry)
    again = ImageCache(tmp_path / "cache")
    assert np.array_equal(np.array(again.resized("d", items, root, spec)), first)
    assert all(np.array_equal(a, b) for a, b in zip(again.decoded("d", items, root), decoded))
    assert len(damaged(tmp_path / "cache")) == 2 and again.misses == 2
    assert json.loads(next((tmp_path / "cache").glob("*.json")).read_text())["dataset"] == "d"
