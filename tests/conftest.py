"""Shared test helpers: small CoOp-layout datasets written to tmp folders, and the golden tiny CLIP."""

from __future__ import annotations

import json
import os
import random
from pathlib import Path

import pytest
import torch
from PIL import Image

# Tiny models run fastest on one thread (and tests share a small machine); subprocesses inherit the setting.
os.environ.setdefault("OMP_NUM_THREADS", "1")
torch.set_num_threads(int(os.environ["OMP_NUM_THREADS"]))

FIXTURES = Path(__file__).resolve().parent / "fixtures"
GOLDEN_BACKBONE = str(FIXTURES / "clip_tiny")  # the golden tiny OpenAI-style CLIP (fp16 weights), 32 px

# (folder, image dir, split file) of two real dataset specs the fake data imitates
LAYOUTS = {
    "oxford_pets": ("oxford_pets", "images", "split_zhou_OxfordPets.json"),
    "caltech101": ("caltech-101", "101_ObjectCategories", "split_zhou_Caltech101.json"),
    "dtd": ("dtd", "images", "split_zhou_DescribableTextures.json"),
}
PALETTE = [(220, 30, 30), (30, 200, 40), (40, 60, 220), (230, 200, 30), (200, 40, 200), (30, 200, 210),
           (120, 70, 20), (250, 140, 0), (90, 90, 90), (255, 255, 255)]


def golden_grad_tol(expected: "torch.Tensor | float") -> dict[str, float]:
    """The gradient tolerance of every golden comparison (the golden README's): atol = rtol = 1e-5, atol scaled by
    max(1, max|g|). Gradient-scaling tricks (MMA's and HeBA's gsl multiply adapter gradients by 1/s) and truncated
    text reorder fp32 sums, so on other shapes and seeds than the golden ones an unscaled 1e-6 fails on rounding
    alone (MMA reached 1.6e-6 x max|g|)."""
    largest = float(expected.abs().max()) if isinstance(expected, torch.Tensor) else float(expected)
    return {"atol": 1e-5 * max(1.0, largest), "rtol": 1e-5}


def write_dataset(root: Path, key: str = "oxford_pets", n_classes: int = 6, counts: tuple[int, int, int] = (8, 4, 5),
                  size: int = 40, seed: int = 0) -> Path:
    """A small dataset in the CoOp layout of ``key``: class ``i`` is a square of colour i on a noisy background."""
    folder, image_dir, split_file = LAYOUTS[key]
    rng = random.Random(seed)
    base = root / folder
    lists: dict[str, list] = {"train": [], "val": [], "test": []}
    for label in range(n_classes):
        name = f"class_{chr(ord('a') + label)}"
        for split, count in zip(("train", "val", "test"), counts):
            for i in range(count):
                rel = f"{name}/{split}_{i:03d}.png"
                path = base / image_dir / rel
                path.parent.mkdir(parents=True, exist_ok=True)
                img = Image.new("RGB", (size, size), tuple(rng.randrange(60) for _ in range(3)))
                x, y = rng.randrange(size // 3), rng.randrange(size // 3)
                img.paste(PALETTE[label % len(PALETTE)], (x, y, x + size // 2, y + size // 2))
                img.save(path)
                lists[split].append([rel, label, name])
    for entries in lists.values():
        rng.shuffle(entries)
    (base / split_file).write_text(json.dumps(lists))
    return root


@pytest.fixture()
def data_root(tmp_path: Path) -> Path:
    """A data root with fake ``oxford_pets`` (6 classes) and ``caltech101`` (4 classes) datasets."""
    root = tmp_path / "data"
    write_dataset(root, "oxford_pets", 6)
    write_dataset(root, "caltech101", 4, seed=1)
    return root


@pytest.fixture(scope="session")
def tiny_clip():
    """The golden tiny CLIP as a :class:`FrozenCLIP` (fp32, CPU)."""
    from frozen_clip.backbone import load_backbone
    return load_backbone(GOLDEN_BACKBONE, "golden")


@pytest.fixture(autouse=True)
def _no_mha_fastpath():
    """Tight numerical comparisons need the sequence-first-equivalent MHA path."""
    previous = torch.backends.mha.get_fastpath_enabled()
    torch.backends.mha.set_fastpath_enabled(False)
    yield
    torch.backends.mha.set_fastpath_enabled(previous)


def base_run(data_root: Path, results: Path, **overrides) -> dict:
    """A small run config on the fake data and the golden tiny CLIP."""
    cfg = {"method": "coop", "dataset": "oxford_pets", "data_root": str(data_root), "results_dir": str(results),
           "backbone": GOLDEN_BACKBONE, "pretrained": "golden", "protocol": "base2novel", "shots": 4, "seed": 1,
           "optim": {"epochs": 2, "batch_size": 4, "eval_batch_size": 16}}
    for key, value in overrides.items():
        if key == "optim":
            cfg["optim"] = {**cfg["optim"], **value}
        else:
            cfg[key] = value
    return cfg


def execute_resolved(resolved) -> dict:
    """Execute a resolved run in this process and return its record (the run must finish as done)."""
    from jobs.runfolder import read_record, run_dir
    from jobs.executors import execute_run
    from jobs.grid import RunSpec
    outcome = execute_run(RunSpec(resolved.run_id, resolved.config, resolved))
    assert outcome.status == "done", outcome.detail
    return read_record(run_dir(resolved))
