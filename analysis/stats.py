"""Statistics used by the tables: harmonic mean, seed dispersion, and paired comparisons between methods.

Conventions:

- Dispersion over seeds is the **population** standard deviation (``ddof = 0``), what Dassl's
  ``parse_test_res.py`` prints (``np.std``), so a suite ``±`` reads like a paper's ``±``. Captions say so.
- The HM of a table row is the HM of the mean base and mean novel accuracies (papers' convention), not the mean of
  per-run HMs; the Average row's HM is the HM of the averaged base and novel.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

import numpy as np

STD_DDOF = 0
"""``ddof`` of every ``±`` in the tables: 0, as ``np.std`` in Dassl's ``parse_test_res.py``."""


def harmonic_mean(base: float, novel: float) -> float:
    """HM = 2·B·N / (B + N) (0 when both are 0; NaN when either is NaN)."""
    if np.isnan(base) or np.isnan(novel):
        return float("nan")
    total = base + novel
    return 0.0 if total == 0 else 2.0 * base * novel / total


@dataclass(frozen=True)
class SeedStats:
    """Mean, dispersion and range of one cell's per-seed values."""

    mean: float
    std: float
    n: int
    min: float
    max: float


def seed_stats(values: Sequence[float]) -> SeedStats:
    """Mean, population std (``STD_DDOF``), count, min and max of the finite values."""
    arr = np.asarray([v for v in values if v is not None], dtype=float)
    arr = arr[np.isfinite(arr)]
    if arr.size == 0:
        nan = float("nan")
        return SeedStats(nan, nan, 0, nan, nan)
    return SeedStats(float(arr.mean()), float(arr.std(ddof=STD_DDOF)), int(arr.size), float(arr.min()),
                     float(arr.max()))


@dataclass(frozen=True)
class PairedComparison:
    """Method A minus method B over paired runs (same dataset, seed, shots)."""

    n: int
    mean_diff: float
    ci_low: float
    ci_high: float
    p_value: float
    wins: int
    ties: int
    losses: int


def bootstrap_ci(diffs: Sequence[float], n_boot: int = 10_000, level: float = 0.95,
                 seed: int = 0) -> tuple[float, float]:
    """Percentile bootstrap CI of the mean of ``diffs`` (pairs resampled with replacement; seeded, deterministic)."""
    arr = np.asarray(diffs, dtype=float)
    if arr.size == 0:
        return float("nan"), float("nan")
    rng = np.random.default_rng(seed)
    means = arr[rng.integers(0, arr.size, size=(n_boot, arr.size))].mean(axis=1)
    tail = (1.0 - level) / 2.0
    return float(np.quantile(means, tail)), float(np.quantile(means, 1.0 - tail))


def sign_flip_pvalue(diffs: Sequence[float], n_perm: int = 10_000, seed: int = 0) -> float:
    """Two-sided paired permutation test of mean 0 (random sign flips; exact enumeration up to 2^12 pairs)."""
    arr = np.asarray(diffs, dtype=float)
    if arr.size == 0:
        return float("nan")
    observed = abs(arr.mean())
    if arr.size <= 12:
        signs = 1 - 2 * ((np.arange(2 ** arr.size)[:, None] >> np.arange(arr.size)) & 1)
    else:
        signs = np.random.default_rng(seed).choice([-1.0, 1.0], size=(n_perm, arr.size))
    null = np.abs((signs * arr).mean(axis=1))
    return float(np.mean(null >= observed - 1e-12))


def paired_comparison(a: Sequence[float], b: Sequence[float], n_boot: int = 10_000, level: float = 0.95,
                      seed: int = 0, tie_tolerance: float = 1e-9) -> PairedComparison:
    """Compare paired values ``a[i]`` vs ``b[i]``: mean difference, bootstrap CI, sign-flip p, wins/ties/losses."""
    diffs = np.asarray(a, dtype=float) - np.asarray(b, dtype=float)
    low, high = bootstrap_ci(diffs, n_boot, level, seed)
    return PairedComparison(n=int(diffs.size), mean_diff=float(diffs.mean()) if diffs.size else float("nan"),
                            ci_low=low, ci_high=high, p_value=sign_flip_pvalue(diffs, seed=seed),
                            wins=int((diffs > tie_tolerance).sum()), ties=int((abs(diffs) <= tie_tolerance).sum()),
                            losses=int((diffs < -tie_tolerance).sum()))


def holm(p_values: Sequence[float]) -> list[float]:
    """Holm-Bonferroni adjusted p-values (step-down, monotone, capped at 1): reject where adjusted p < alpha keeps
    the family-wise error rate of the whole family of comparisons at alpha. NaN p-values stay NaN and do not count
    as comparisons."""
    values = np.asarray(p_values, dtype=float)
    finite = np.flatnonzero(np.isfinite(values))
    adjusted = np.full(values.shape, np.nan)
    running = 0.0
    for rank, index in enumerate(finite[np.argsort(values[finite], kind="stable")]):
        running = max(running, min(1.0, (finite.size - rank) * values[index]))
        adjusted[index] = running
    return [float(v) for v in adjusted]


__all__ = ["STD_DDOF", "harmonic_mean", "SeedStats", "seed_stats", "PairedComparison", "bootstrap_ci",
           "sign_flip_pvalue", "paired_comparison", "holm"]
