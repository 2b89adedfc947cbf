"""Accuracy, per-class accuracy and harmonic mean."""

from __future__ import annotations

import math

import pytest
import torch

from protocols.metrics import accuracy, harmonic_mean, per_class_accuracy


def test_accuracy_on_sequences_and_tensors() -> None:
    assert accuracy([0, 1, 2, 2], [0, 1, 1, 2]) == 75.0
    assert accuracy(torch.tensor([0, 1, 2]), torch.tensor([0, 1, 1])) == pytest.approx(200 / 3)
    assert accuracy(torch.tensor([[1, 0]]).argmax(1), [0]) == 100.0
    assert accuracy(torch.tensor(1), torch.tensor(0)) == 0.0


def test_accuracy_rejects_bad_input() -> None:
    with pytest.raises(ValueError, match="differ in length"):
        accuracy([0, 1], [0])
    with pytest.raises(ValueError, match="empty"):
        accuracy([], [])
    with pytest.raises(ValueError, match="logits"):
        accuracy(torch.zeros(3, 2), [0, 1, 0])


def test_per_class_accuracy() -> None:
    got = per_class_accuracy([0, 0, 1, 2, 2], [0, 1, 1, 2, 2], ["cat", "dog", "fish", "bird"])
    assert got == {"cat": 100.0, "dog": 50.0, "fish": 100.0}  # bird has no test sample
    dup = per_class_accuracy([0, 1], [0, 1], ["crane", "crane"])
    assert dup == {"crane #0": 100.0, "crane #1": 100.0}
    with pytest.raises(ValueError, match="outside"):
        per_class_accuracy([0], [3], ["a"])


def test_harmonic_mean_matches_published_rows() -> None:
    assert round(harmonic_mean(83.20, 76.80), 2) == 79.87  # MMA average row
    assert round(harmonic_mean(82.69, 63.22), 2) == 71.66  # CoOp average row
    assert harmonic_mean(0.0, 0.0) == 0.0
    assert harmonic_mean(50.0, 0.0) == 0.0
    assert math.isclose(harmonic_mean(40.0, 40.0), 40.0)
