"""The papers' reported numbers, shipped as data, and the name mappings between them and the suite.

``analysis/reference_results.csv`` holds 693 published numbers:
``method, backbone, protocol, dataset, shots, metric, value, source``. The ``source`` field starts with its trust tag
(trust tags): VERIFIED, RECALLED (+CHECKED when the text says the row was checked), SECONDARY,
APPROX, COMPUTED. Method and dataset names there are the papers' (``CoOp``, ``ZS-CLIP``; Dassl-like ``OxfordPets``,
``Flowers102``); the tables below map them to the suite's registry names and dataset keys, explicitly.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Mapping

import pandas as pd

from analysis.methods import method_display, method_rank, paper_method, paper_names, run_display  # noqa: F401

DEFAULT_REFERENCE = Path(__file__).resolve().parent / "reference_results.csv"

DATASETS: dict[str, tuple[str, str]] = {
    # suite dataset key -> (display name, reference CSV name)
    "imagenet": ("ImageNet", "ImageNet"),
    "caltech101": ("Caltech101", "Caltech101"),
    "oxford_pets": ("OxfordPets", "OxfordPets"),
    "stanford_cars": ("StanfordCars", "StanfordCars"),
    "oxford_flowers": ("Flowers102", "Flowers102"),
    "food101": ("Food101", "Food101"),
    "fgvc_aircraft": ("FGVCAircraft", "FGVCAircraft"),
    "sun397": ("SUN397", "SUN397"),
    "dtd": ("DTD", "DTD"),
    "eurosat": ("EuroSAT", "EuroSAT"),
    "ucf101": ("UCF101", "UCF101"),
    "imagenetv2": ("ImageNetV2", "ImageNetV2"),
    "imagenet_sketch": ("ImageNet-Sketch", "ImageNet-Sketch"),
    "imagenet_a": ("ImageNet-A", "ImageNet-A"),
    "imagenet_r": ("ImageNet-R", "ImageNet-R"),
}
"""The published order: 11 CoOp datasets (ImageNet first), then the 4 DG targets."""

COOP_DATASETS: tuple[str, ...] = tuple(list(DATASETS)[:11])
XD_TARGETS: tuple[str, ...] = COOP_DATASETS[1:]
DG_TARGETS: tuple[str, ...] = ("imagenetv2", "imagenet_sketch", "imagenet_a", "imagenet_r")

AVERAGE_NAMES: dict[str, tuple[str, tuple[str, ...]]] = {
    # protocol -> (reference CSV name of the average row, the suite datasets it averages)
    "base2novel": ("Average", COOP_DATASETS),
    "fewshot": ("Average", COOP_DATASETS),
    "cross_dataset": ("Average(10 targets)", XD_TARGETS),
    "domain_generalization": ("Average(V2,S,A,R)", DG_TARGETS),
}
SOURCE_NAME = "ImageNet(source)"
"""Reference dataset name of the source accuracy in cross-dataset / DG tables (record split ``source``)."""

METRICS: dict[str, str] = {"base": "base", "novel": "novel", "hm": "hm", "acc": "accuracy"}
"""Reference metric -> suite metric (``accuracy`` = the fewshot ``test`` split or a transfer split)."""


WORLD_PREFIX = "world_"
"""Keys of the built-in world's datasets (``protocols.datasets.WORLD_PREFIX``)."""


def dataset_display(key: str) -> str:
    """Paper name of a suite dataset key: the CoOp datasets as the papers print them (``oxford_pets`` ->
    ``OxfordPets``), the built-in world's as their Dassl names (``world_hues_outline`` -> ``WorldHuesOutline``), any
    other key as it is."""
    if key in DATASETS:
        return DATASETS[key][0]
    if str(key).startswith(WORLD_PREFIX):
        return "World" + "".join(part.capitalize() for part in str(key)[len(WORLD_PREFIX):].split("_"))
    return str(key)


def dataset_order(keys) -> list[str]:
    """``keys`` sorted in the published order, unknown keys last (alphabetically)."""
    known = list(DATASETS)
    return sorted(set(keys), key=lambda k: (known.index(k) if k in known else len(known), str(k)))


def normalize_backbone(name: str) -> str:
    """``ViT-B/16``, ``ViT-B-16``, ``ViT-B-16-quickgelu`` -> ``ViT-B-16`` (same for RN50 etc.)."""
    name = str(name).replace("/", "-")
    return name[: -len("-quickgelu")] if name.endswith("-quickgelu") else name


def trust_tag(source: str) -> str:
    """The trust tag a ``source`` field starts with; RECALLED rows whose text says CHECKED are RECALLED+CHECKED."""
    first = str(source).split(" ", 1)[0].rstrip(";,")
    if first == "RECALLED" and "CHECKED" in str(source):
        return "RECALLED+CHECKED"
    return first


def load_reference(path: Path | str | None = None) -> pd.DataFrame:
    """The reference CSV with the suite's names added (``suite_method``, ``suite_dataset``, ``suite_metric``,
    ``backbone_key``) and the ``trust`` tag; provenance columns are kept unchanged."""
    path = Path(path) if path is not None else DEFAULT_REFERENCE
    frame = pd.read_csv(path)
    required = {"method", "backbone", "protocol", "dataset", "shots", "metric", "value", "source"}
    missing = required - set(frame.columns)
    if missing:
        raise ValueError(f"{path}: reference file lacks columns {sorted(missing)}")
    by_reference_name = {ref: key for key, (_, ref) in DATASETS.items()}
    averages = {name for name, _ in AVERAGE_NAMES.values()}

    def suite_dataset(name: str) -> str | None:
        if name in averages:
            return "Average"
        if name == SOURCE_NAME:
            return "source"
        return by_reference_name.get(name)

    names = paper_names()
    frame["suite_method"] = frame["method"].map(lambda m: names[m][0] if m in names else None)
    frame["suite_dataset"] = frame["dataset"].map(suite_dataset)
    frame["suite_metric"] = frame["metric"].map(METRICS)
    frame["backbone_key"] = frame["backbone"].map(normalize_backbone)
    frame["trust"] = frame["source"].map(trust_tag)
    return frame


__all__ = ["DEFAULT_REFERENCE", "paper_names", "paper_method", "run_display", "DATASETS", "COOP_DATASETS",
           "XD_TARGETS", "DG_TARGETS", "AVERAGE_NAMES", "SOURCE_NAME", "dataset_display", "dataset_order",
           "method_display", "method_rank", "normalize_backbone", "trust_tag", "load_reference"]
