"""Synthetic base-to-novel records for the table tests: full method configs (every option at its default unless set),
each method's card, accuracies drawn around a per-method level with per-seed noise from a generator seeded by the
run id (so the same configuration gives the same numbers in every set)."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any, Mapping, Sequence

import numpy as np

from analysis.stats import harmonic_mean
from jobs.registry import method_card

COOP_DATASETS = ("imagenet", "caltech101", "oxford_pets", "stanford_cars", "oxford_flowers", "food101",
                 "fgvc_aircraft", "sun397", "dtd", "eurosat", "ucf101")


def method_config(name: str, **options: Any) -> dict[str, Any]:
    """``{"name": name, <every option at its card default>, **options}``, as a resolved run config holds it."""
    card = method_card(name)
    config = {"name": name, **{k: entry["default"] for k, entry in card["options"].items()}}
    unknown = set(options) - set(config)
    if unknown:
        raise KeyError(f"{name} has no options {sorted(unknown)}")
    return {**config, **options}


def write_record(root: Path, method: Mapping[str, Any], dataset: str, seed: int, level: float,
                 backbone: str = "ViT-B-16-quickgelu", grid: str = "synthetic", protocol: str = "base2novel",
                 targets: Sequence[str] = ()) -> Path:
    """One finished record under ``root/grid/<run_id>/record.json``. Base-to-novel: base ≈ ``level`` + 3, novel ≈
    ``level`` − 4; a transfer protocol: the source ≈ ``level`` + 3 and each target ≈ ``level`` − 4; plus a per-dataset
    offset and noise (sd 0.5) seeded by the run id."""
    config = {"method": dict(method), "dataset": dataset, "name": grid, "backbone": backbone, "pretrained": "openai",
              "protocol": protocol, "targets": list(targets), "shots": 16, "seed": seed,
              "optim": {"name": "sgd", "lr": 0.002, "epochs": 5}}
    run_id = hashlib.sha256(json.dumps(config, sort_keys=True).encode()).hexdigest()[:16]
    rng = np.random.default_rng(int(run_id, 16) % 2**32)

    def accuracy(name: str, shift: float) -> float:
        offset = (sum(map(ord, name)) % 17) - 8.0
        return float(np.clip(level + shift + offset + rng.normal(0, 0.5), 0, 100))
    split = {"n_images": 1000, "n_classes": 50}
    if protocol == "base2novel":
        values = {"base": accuracy(dataset, 3), "novel": accuracy(dataset, -4)}
        summary = {**values, "hm": harmonic_mean(values["base"], values["novel"])}
    else:
        values = {"source": accuracy(dataset, 3), **{t: accuracy(t, -4) for t in targets}}
        summary = {"source": values["source"], "average": float(np.mean([values[t] for t in targets]))}
    record = {"schema_version": 1, "run_id": run_id, "status": "done", "failure": None, "config": config,
              "method_card": method_card(method["name"]),
              "metrics": {name: {"accuracy": value, **split} for name, value in values.items()},
              "summary": summary, "aux_losses": {},
              "history": [], "cost": {"trainable_params": 1000, "time_train_s": 60.0, "images_per_s": 500.0},
              "env": {"device": "cuda"}, "started_at": "2026-11-24T00:00:00+00:00",
              "finished_at": "2026-11-24T00:01:00+00:00"}
    folder = root / grid / run_id
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "record.json").write_text(json.dumps(record))
    return folder / "record.json"


def write_grid(root: Path, configs: Sequence[tuple[Mapping[str, Any], float]], datasets: Sequence[str],
               seeds: Sequence[int], **kwargs: Any) -> None:
    """Every (config, level) x dataset x seed."""
    for method, level in configs:
        for dataset in datasets:
            for seed in seeds:
                write_record(root, method, dataset, seed, level, **kwargs)
