"""Evaluation of a fitted method: once, after fit, on the last-epoch model, on each evaluation split of the run, and
the record's headline numbers.

Methods with a frozen image path are evaluated on cached test features (:mod:`frozen_clip.features`); the others on
the test images. For novel classes or other datasets the method rebuilds its class-dependent state first
(``Method.evaluate_on``); a cross-dataset or DG target is prompted with its own dataset's template.
"""

from __future__ import annotations

from typing import Any, Callable

from torch.utils.data import Dataset

from frozen_clip.features import FeatureAccess
from frozen_clip.method import Method
from frozen_clip.trainer import Trainer
from protocols import metrics
from protocols.datasets import get_spec
from protocols.splits import SplitManifest


def evaluate(method: Method, trainer: Trainer, features: FeatureAccess, evals: dict[str, SplitManifest],
             test_images: Callable[[SplitManifest], Dataset], log: Callable[[str], None]) -> dict[str, Any]:
    """Accuracy, per-class accuracy and sizes of each evaluation split (``test_images(manifest)``: the test images
    of a split, for a method evaluated on images)."""
    out = {}
    for name, manifest in evals.items():
        method.evaluate_on(manifest.dataset, get_spec(manifest.dataset).template, manifest.classnames)
        if method.frozen_image_path:
            feats, labels = features.split_features(manifest, "test")
            preds, labels = trainer.predict_from_features(feats, labels)
        else:
            preds, labels = trainer.predict(test_images(manifest))
        out[name] = {"accuracy": metrics.accuracy(preds, labels), "n_images": int(labels.numel()),
                     "n_classes": len(manifest.classnames), "dataset": manifest.dataset,
                     "per_class_accuracy": metrics.per_class_accuracy(preds, labels, manifest.classnames)}
        templates = method.prompt_templates()
        if templates is not None:  # provenance: the prompts this split was scored with
            out[name]["templates"] = list(templates)
        log(f"eval {name} ({get_spec(manifest.dataset).key}): {out[name]['accuracy']:.2f}%")
    return out


def summarize(protocol: str, evaluation: dict[str, Any], targets: tuple[str, ...]) -> dict[str, float]:
    """Headline numbers of a record (see the record schema in DESIGN.md)."""
    acc = {name: entry["accuracy"] for name, entry in evaluation.items()}
    if protocol == "base2novel":
        return {"base": acc["base"], "novel": acc["novel"], "hm": metrics.harmonic_mean(acc["base"], acc["novel"])}
    if protocol == "fewshot":
        return {"accuracy": acc["test"]}
    summary = dict(acc)
    summary["average"] = sum(acc[t] for t in targets) / len(targets) if targets else float("nan")
    return summary
