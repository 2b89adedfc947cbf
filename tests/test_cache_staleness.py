"""Caches notice changed inputs: images rewritten in place (same names, same split file) and replaced weights give
new features and the metrics of the new images, never the cached results of the old ones."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
from PIL import Image

from jobs.config import resolve
from tests.conftest import execute_resolved

pytestmark = pytest.mark.slow
PER_CLASS = (4, 2, 6)  # a small instance of the built-in world (train, val, test images per class)


@pytest.fixture()
def world_root(tmp_path) -> Path:
    """``world_hues`` of the built-in world, small, in a folder of its own (the test rewrites its images)."""
    from world.generate import generate_world
    return generate_world(tmp_path / "world", per_class=PER_CLASS, datasets=["world_hues"])


def world_run(data: Path, results: Path, name: str, method: dict, **extra) -> dict:
    """A short run on ``world_hues`` with the built-in tiny CLIP (which scores it well above chance)."""
    cfg = {"method": method, "dataset": "world_hues", "data_root": str(data), "results_dir": str(results),
           "backbone": "tiny-world", "pretrained": "world", "shots": 2, "seed": 1, "name": name,
           "optim": {"epochs": 2, "batch_size": 4, "eval_batch_size": 64}, **extra}
    return execute_resolved(resolve(cfg, name))


def rewrite_images_in_place(root: Path) -> int:
    """Every image under ``root`` replaced by a copy of the first one (same file names): every class now looks the
    same, so the truth changes drastically."""
    images = sorted(root.rglob("*.png"))
    first = Image.open(images[0]).convert("RGB").copy()
    for path in images:
        first.save(path)
    return len(images)


def metrics_of(record: dict) -> dict:
    return {split: (m["accuracy"], m["per_class_accuracy"]) for split, m in record["metrics"].items()}


@pytest.mark.parametrize("method,fast", [
    ({"name": "zeroshot"}, {}),  # evaluation features (shared by test items) and the resized-image cache
    ({"name": "clip_adapter"}, {}),  # per-split training views and the decoded-image cache
    ({"name": "clip_adapter"}, {"shared_views": True, "augment_views": 2}),  # per-image rows
], ids=["zeroshot", "clip_adapter", "clip_adapter-shared_views"])
def test_images_rewritten_in_place_change_the_next_runs_features(tmp_path, world_root, method, fast):
    results = tmp_path / "results"
    before = world_run(world_root, results, "before", method, fast=fast)
    assert rewrite_images_in_place(world_root) > 0
    after = world_run(world_root, results, "after", method, fast=fast)  # same cache folder, paths and split file
    fresh = world_run(world_root, tmp_path / "fresh-results", "fresh", method, fast=fast)  # the rewritten truth
    assert metrics_of(fresh) != metrics_of(before), "the rewrite must change what the images show"
    assert metrics_of(after) == metrics_of(fresh)
    assert after["cost"]["feature_cache"]["misses"] > 0


def test_replaced_weights_file_recomputes_features(tmp_path, world_root):
    from frozen_clip.backbone import resolve_backbone
    weights = tmp_path / "weights.safetensors"
    shutil.copy(resolve_backbone("tiny-world", "world").weights_file, weights)
    results = tmp_path / "results"
    zeroshot = {"name": "zeroshot"}
    before = world_run(world_root, results, "before", zeroshot, pretrained=str(weights))
    from safetensors.torch import load_file, save_file
    state = load_file(weights)
    save_file({k: (v.flip(-1) if k == "visual.proj" else v) for k, v in state.items()}, weights)
    after = world_run(world_root, results, "after", zeroshot, pretrained=str(weights))
    fresh = world_run(world_root, tmp_path / "fresh-results", "fresh", zeroshot, pretrained=str(weights))
    assert metrics_of(fresh) != metrics_of(before), "the new weights must score differently"
    assert metrics_of(after) == metrics_of(fresh)
    assert after["cost"]["feature_cache"]["misses"] > 0


def test_status_names_finished_runs_whose_inputs_changed_and_rerun_changed_reruns_them(tmp_path, world_root, capsys):
    import yaml

    from jobs import cli
    from jobs.grid import expand_grid
    results = tmp_path / "results"
    grid = tmp_path / "g.yaml"
    grid.write_text(yaml.safe_dump({
        "name": "g", "base": {"method": "zeroshot", "dataset": "world_hues", "data_root": str(world_root),
                              "results_dir": str(results), "backbone": "tiny-world", "pretrained": "world",
                              "shots": 2, "optim": {"eval_batch_size": 64}},
        "executor": {"kind": "inline"}}))
    assert cli.launch_main(["--grid", str(grid), "--no-analysis"]) == 0
    (folder,) = [p.parent for p in results.glob("g/*/record.json")]
    before = json.loads((folder / "record.json").read_text())
    capsys.readouterr()
    assert cli.print_status(expand_grid(grid)) == 0
    assert "changed since" not in capsys.readouterr().out

    rewrite_images_in_place(world_root)
    assert cli.print_status(expand_grid(grid)) == 0
    out = capsys.readouterr().out
    assert "inputs changed since the run: images of fit (world_hues)" in out and "images of novel (world_hues)" in out
    assert "g: 1 finished runs were made from inputs that changed since" in out and "--rerun-changed" in out
    assert cli.launch_main(["--grid", str(grid), "--no-analysis"]) == 0  # a plain relaunch keeps the result
    assert json.loads((folder / "record.json").read_text()) == before

    assert cli.launch_main(["--grid", str(grid), "--no-analysis", "--rerun-changed"]) == 0
    assert f"rerunning {folder.name}: inputs changed since the run" in capsys.readouterr().out
    after = json.loads((folder / "record.json").read_text())
    fresh = world_run(world_root, tmp_path / "fresh-results", "fresh", {"name": "zeroshot"},
                      optim={"eval_batch_size": 64})
    assert metrics_of(after) == metrics_of(fresh) != metrics_of(before)
    assert len(list(folder.glob("record.json.inputs-changed-*"))) == 1
    assert cli.print_status(expand_grid(grid)) == 0
    assert "changed since" not in capsys.readouterr().out
