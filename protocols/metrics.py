"""Metrics of the CoOp protocol: micro accuracy in percent, per-class accuracy, harmonic mean.

Predictions and labels may be torch tensors, NumPy arrays or plain sequences of class indices (anything with
``tolist()`` or iterable); this module imports no torch.
"""

from __future__ import annotations

from collections import Counter
from typing import Any, Sequence


def _as_labels(values: Any, name: str) -> list[int]:
    """A flat list of ints from a tensor, array or sequence."""
    flat = values.tolist() if hasattr(values, "tolist") else list(values)
    flat = flat if isinstance(flat, list) else [flat]  # a 0-d tensor or array
    if any(isinstance(v, list) for v in flat):
        raise ValueError(f"{name} must be one-dimensional class indices (did you pass logits? take argmax first)")
    return [int(v) for v in flat]


def _pair(pred: Any, labels: Any) -> tuple[list[int], list[int]]:
    p, y = _as_labels(pred, "pred"), _as_labels(labels, "labels")
    if len(p) != len(y):
        raise ValueError(f"pred and labels differ in length: {len(p)} vs {len(y)}")
    if not y:
        raise ValueError("accuracy of an empty set is undefined")
    return p, y


def accuracy(pred: Any, labels: Any) -> float:
    """Dassl's micro accuracy: ``100 * correct / total`` over the whole set, at full precision."""
    p, y = _pair(pred, labels)
    return 100.0 * sum(a == b for a, b in zip(p, y)) / len(y)


def per_class_accuracy(pred: Any, labels: Any, classnames: Sequence[str]) -> dict[str, float]:
    """Accuracy (percent) of each class present in ``labels``, keyed by class name in label order.

    Classes without a test sample are left out (their accuracy is undefined). A class name that occurs twice in
    ``classnames`` is keyed ``"<name> #<label>"`` so no class overwrites another.
    """
    p, y = _pair(pred, labels)
    correct = [0] * len(classnames)
    total = [0] * len(classnames)
    for a, b in zip(p, y):
        if not 0 <= b < len(classnames):
            raise ValueError(f"label {b} is outside the {len(classnames)} class names")
        total[b] += 1
        correct[b] += a == b
    counts = Counter(classnames)
    keys = [name if counts[name] == 1 else f"{name} #{label}" for label, name in enumerate(classnames)]
    return {keys[c]: 100.0 * correct[c] / total[c] for c in range(len(classnames)) if total[c]}


def harmonic_mean(base: float, novel: float) -> float:
    """``2 B N / (B + N)``, the base-to-novel HM; 0 when both are 0."""
    if base < 0 or novel < 0:
        raise ValueError(f"accuracies must be non-negative, got base={base}, novel={novel}")
    if base + novel == 0:
        return 0.0
    return 2.0 * base * novel / (base + novel)
