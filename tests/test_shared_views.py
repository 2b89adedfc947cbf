"""``fast.shared_views``: augmented views drawn per image, and frozen features stored per image (the row store).

Pinned here: a view of an image is the same in every split that holds it (and differs from the per-split views);
the row store merges, keeps and finds rows per image; a row does not depend on which other images it was encoded
with (so a stored row is what any run would have computed); a run under the switch trains on cached rows of exactly
the images the image path sees (losses within 1e-5), reuses every row an earlier run stored and encodes only the
images no run had; plain train features from the store equal the per-split pass; the switch is part of the run id.
"""

from __future__ import annotations

import dataclasses

import pytest
import torch

from frozen_clip import transforms
from frozen_clip.errors import ConfigError
from frozen_clip.fastpaths import FastPaths, SeededViews, ViewsOfImages, image_key, image_keys
from frozen_clip.features import FeatureAccess, FeatureKey, RowStore
from frozen_clip.images import ImageListDataset
from frozen_clip.optim import OptimConfig
from jobs.config import resolve
from protocols.splits import build_manifest
from tests.conftest import base_run, execute_resolved

TOL = 1e-5
SPEC = transforms.train_spec(32, (0.5,) * 3, (0.25,) * 3)


def _manifest(data_root, shots: int, seed: int):
    return build_manifest("oxford_pets", data_root, shots, seed, "all", "dassl", data_root.parent / "cache")


def _views(manifest, shared: bool) -> SeededViews:
    images = ImageListDataset(manifest.train, manifest.image_root, SPEC.build())
    keys = image_keys(manifest.dataset, manifest.train) if shared else None
    return SeededViews(images, manifest.content_hash, keys)


def test_a_shared_view_of_an_image_is_the_same_in_every_split(data_root):
    small, large = _manifest(data_root, 2, 1), _manifest(data_root, 4, 2)
    common = sorted({i.path for i in small.train} & {i.path for i in large.train})
    assert common and small.content_hash != large.content_hash
    at = {name: {item.path: k for k, item in enumerate(m.train)} for name, m in (("s", small), ("l", large))}
    for shared in (True, False):
        a, b = _views(small, shared), _views(large, shared)
        for view in (0, 3):
            a.set_view(view), b.set_view(view)
            same = [torch.equal(a[at["s"][p]][0], b[at["l"][p]][0]) for p in common]
            assert all(same) if shared else not any(same)  # per split (the default), views differ
    # ViewsOfImages (what the row store is filled from) draws the same views, image-major, decoding each once
    items = small.train[:3]
    keys = [image_key("oxford_pets", item.path) for item in items]
    filler = ViewsOfImages(items, small.image_root, SPEC.build(), keys, [0, 3])
    views = _views(small, True)
    assert len(filler) == 6
    for k in range(6):
        item, which = divmod(k, 2)
        views.set_view([0, 3][which])
        image, label, index = filler[k]
        assert torch.equal(image, views[item][0]) and label == items[item].label and index == k


def test_row_store_merges_keeps_and_finds_rows_per_image(tmp_path):
    parts = FeatureKey("b", None, "t", "d", view=0)
    store = RowStore(tmp_path, memo_mb=1.0)
    assert store.missing(parts, ["a", "b"]) == [0, 1]
    store.add(parts, ["a", "b", "a"], torch.tensor([[1.0], [2.0], [9.0]]))  # an image listed twice: stored once
    assert store.missing(parts, ["b", "c", "a"]) == [1]
    store.add(parts, ["c", "a"], torch.tensor([[3.0], [7.0]]))  # "a" is stored already: its row stays
    assert store.rows(parts, ["c", "a", "b"]).flatten().tolist() == [3.0, 1.0, 2.0]
    assert store.computed == 3
    other = RowStore(tmp_path)  # another process: reads the entry from disk, no memo
    assert other.rows(parts, ["b", "c"]).flatten().tolist() == [2.0, 3.0]
    assert other.missing(parts.replace(view=1), ["a"]) == [0]  # other parts, other entry
    with pytest.raises(KeyError, match="'d'"):
        other.rows(parts, ["a", "d"])
    # a writer that read the entry before another one added rows merges with what is on disk
    stale, fresh = RowStore(tmp_path, memo_mb=1.0), RowStore(tmp_path, memo_mb=1.0)
    assert stale.missing(parts, ["d"]) == [0] and fresh.missing(parts, ["e"]) == [0]
    fresh.add(parts, ["e"], torch.tensor([[5.0]]))
    stale.add(parts, ["d"], torch.tensor([[4.0]]))
    assert RowStore(tmp_path).rows(parts, ["a", "b", "c", "d", "e"]).flatten().tolist() == [1.0, 2.0, 3.0, 4.0, 5.0]


def test_a_row_does_not_depend_on_the_images_encoded_with_it(tiny_clip, tmp_path):
    """Rows are encoded in padded batches of one size, so each row is bitwise what any other composition gives
    (without the padding, a lone image's row differs from the same image's in a batch of 64 in its last bits on this
    kind of CPU: batches of 1 to 3 take other kernels)."""
    gen = torch.Generator().manual_seed(0)
    images = torch.randn(40, 3, 32, 32, generator=gen)

    class Images(torch.utils.data.Dataset):
        def __init__(self, rows: list[int]) -> None:
            self.rows = rows

        def __len__(self) -> int:
            return len(self.rows)

        def __getitem__(self, i: int):
            return images[self.rows[i]], 0, i
    access = FeatureAccess(tiny_clip, tmp_path, torch.device("cpu"), OptimConfig(eval_batch_size=16))
    assert access.batch_size == 64
    whole = access.encode_rows(Images(list(range(40))))
    for rows in ([7], [39, 3, 21], list(range(0, 40, 3))):
        assert torch.equal(access.encode_rows(Images(rows)), whole[rows])


def _run(data_root, results, **overrides) -> dict:
    common = dict(method="clip_adapter", protocol="fewshot", optim={"epochs": 4, "batch_size": 4})
    return execute_resolved(resolve(base_run(data_root, results, **{**common, **overrides}), "test"))


def test_shared_views_runs_reuse_rows_and_train_on_the_image_paths_views(data_root, tmp_path):
    shared = {"shared_views": True, "augment_views": 2}
    first = _run(data_root, tmp_path / "fast", shots=2, seed=1, fast=shared)
    assert first["cost"]["trained_on_cached_features"] and first["cost"]["view_cache"] == {"hits": 0, "misses": 0}
    n_first = len(_manifest(data_root, 2, 1).train)
    assert first["cost"]["row_store"]["computed"] == 2 * n_first  # both views of every image, in one pass
    # the image path of the same run: the views it draws are the cached rows' views
    slow = _run(data_root, tmp_path / "slow", shots=2, seed=1, fast={**shared, "feature_training": False})
    assert slow["run_id"] == first["run_id"] and not slow["cost"]["trained_on_cached_features"]
    for a, b in zip(slow["history"], first["history"], strict=True):
        assert abs(a["loss"] - b["loss"]) < TOL
    # another seed and shot count: only the images the first run did not train on are encoded
    second = _run(data_root, tmp_path / "fast", shots=4, seed=2, fast=shared)
    seen = {item.path for item in _manifest(data_root, 2, 1).train}
    new = [item for item in _manifest(data_root, 4, 2).train if item.path not in seen]
    assert 0 < len(new) < len(_manifest(data_root, 4, 2).train)
    assert second["cost"]["row_store"]["computed"] == 2 * len(new)
    again = _run(data_root, tmp_path / "fast", shots=4, seed=2, fast=shared, method={"name": "clip_adapter",
                                                                                      "residual_ratio": 0.5})
    assert again["cost"]["row_store"]["computed"] == 0  # a hyper-parameter variant: every row is stored


def test_plain_features_from_the_store_equal_the_split_pass(data_root, tmp_path, tiny_clip):
    manifest = _manifest(data_root, 4, 1)
    optim = OptimConfig(eval_batch_size=16)
    per_split = FeatureAccess(tiny_clip, tmp_path / "a", torch.device("cpu"), optim)
    per_image = FeatureAccess(tiny_clip, tmp_path / "b", torch.device("cpu"), optim, FastPaths(shared_views=True))
    for split in ("train", "val"):
        feats, labels = per_split.split_features(manifest, split)
        shared, shared_labels = per_image.split_features(manifest, split)
        assert torch.equal(labels, shared_labels) and torch.allclose(feats, shared, atol=TOL, rtol=0)
    assert per_image.rows.computed == len(manifest.train) + len(manifest.val)
    empty = dataclasses.replace(manifest, train=())  # a split without items: nothing to look up
    feats, labels = per_image.split_features(empty, "train")
    assert feats.shape == (0, tiny_clip.embed_dim) and labels.shape == (0,)
    feats, labels = per_image.augmented_features(empty, "train", 0, (0.5, 1.0))
    assert feats.shape == (0, tiny_clip.embed_dim) and labels.shape == (0,)
    # a linear probe and Tip-Adapter-F under the switch: Tip-Adapter reuses the probe's val rows and encodes its own
    # (other crop scale) three views of the train images once, for its cache passes and its epochs alike
    probe, tip = (_run(data_root, tmp_path / "runs", shots=4, seed=1, method=method, optim={"epochs": 0},
                       fast={"shared_views": True, "augment_views": 3})["cost"]["row_store"]
                  for method in ("linear_probe", {"name": "tip_adapter", "finetune": True, "train_epoch": 2}))
    n_train, n_val = len(manifest.train), len(manifest.val)
    assert probe == {"read": n_train + n_val, "computed": n_train + n_val}
    assert tip == {"read": n_val + 3 * n_train, "computed": 3 * n_train}


def test_shared_views_is_part_of_the_run_id_when_set(data_root, tmp_path):
    cfg = base_run(data_root, tmp_path, method="clip_adapter", protocol="fewshot")
    plain = resolve(cfg, "t")
    assert resolve({**cfg, "fast": {"shared_views": False}}, "t").run_id == plain.run_id
    on = resolve({**cfg, "fast": {"shared_views": True}}, "t")
    assert on.run_id != plain.run_id and on.fast.shared_views
    with pytest.raises(ConfigError, match="fast.shared_views"):
        resolve({**cfg, "fast": {"shared_views": "yes"}}, "t")


def test_runs_in_parallel_processes_fill_one_store_and_match_a_sequential_grid(tmp_path):
    """Two worker processes run three seeds at once on one row store: every stored image appears once per entry, and
    every record (metrics, loss history) equals the one of the same grid run one run at a time, whichever process
    encoded a shared image first."""
    import json
    import subprocess
    import sys
    from pathlib import Path

    import yaml

    from tests.conftest import write_dataset
    repo = Path(__file__).resolve().parent.parent
    data = write_dataset(tmp_path / "data", "oxford_pets", 6)
    records = {}
    for name, workers in (("parallel", 2), ("sequential", 1)):
        base = base_run(data, tmp_path / name, method="clip_adapter", protocol="fewshot", shots=4,
                        optim={"epochs": 3, "batch_size": 4}, fast={"shared_views": True, "augment_views": 2})
        grid = tmp_path / f"{name}.yaml"
        grid.write_text(yaml.safe_dump({"name": "g", "base": base, "grid": {"seed": [1, 2, 3]},
                                        # one thread per run on both: the thread count changes fp reductions
                                        "executor": {"kind": "local", "workers": workers, "gpus": [],
                                                     "threads_per_run": 1}}))
        done = subprocess.run([sys.executable, str(repo / "jobs/launch.py"), "--grid", str(grid), "--no-analysis"],
                              capture_output=True, text=True, timeout=600)
        assert done.returncode == 0, done.stdout + done.stderr
        records[name] = {json.loads(f.read_text())["run_id"]: json.loads(f.read_text())
                         for f in (tmp_path / name / "g").glob("*/record.json")}
        for entry in (tmp_path / name / "cache" / "features" / "rows").glob("*.rows.pt"):
            ids = torch.load(entry, weights_only=True)["ids"]
            assert ids.unique().numel() == ids.numel(), entry  # merged, not appended twice
    assert len(records["parallel"]) == 3 and records["parallel"].keys() == records["sequential"].keys()
    for run_id, record in records["parallel"].items():
        other = records["sequential"][run_id]
        assert record["status"] == other["status"] == "done"
        assert record["metrics"] == other["metrics"]
        assert [e["loss"] for e in record["history"]] == [e["loss"] for e in other["history"]]
