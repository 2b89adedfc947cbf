"""Harmonic mean, seed dispersion and the paired comparison behind the significance table."""

from __future__ import annotations

import numpy as np
import pytest

from analysis.stats import bootstrap_ci, harmonic_mean, holm, paired_comparison, seed_stats, sign_flip_pvalue


@pytest.mark.parametrize("base, novel, hm", [(83.20, 76.80, 79.87),   # MMA README average row
                                             (82.69, 63.22, 71.66),   # CoOp (MaPLe README)
                                             (69.34, 74.22, 71.70)])  # zero-shot CLIP
def test_harmonic_mean_reproduces_published_rows(base, novel, hm):
    assert round(harmonic_mean(base, novel), 2) == hm


def test_harmonic_mean_edge_cases():
    assert harmonic_mean(0.0, 0.0) == 0.0
    assert np.isnan(harmonic_mean(float("nan"), 50.0))


def test_seed_stats_uses_the_population_std():
    stats = seed_stats([80.0, 82.0, 84.0])
    assert (stats.mean, stats.n, stats.min, stats.max) == (82.0, 3, 80.0, 84.0)
    assert stats.std == pytest.approx(np.std([80.0, 82.0, 84.0]))  # ddof = 0, as Dassl's parse_test_res.py
    assert seed_stats([]).n == 0 and np.isnan(seed_stats([float("nan")]).mean)


def test_bootstrap_ci_is_deterministic_and_brackets_the_mean():
    diffs = [0.4, 1.1, -0.2, 0.9, 0.6, 0.3]
    low, high = bootstrap_ci(diffs, seed=0)
    assert (low, high) == bootstrap_ci(diffs, seed=0)
    assert low < np.mean(diffs) < high
    assert np.isnan(bootstrap_ci([], seed=0)[0])


def test_sign_flip_p_is_exact_for_few_pairs():
    assert sign_flip_pvalue([1.0, 2.0, 3.0]) == pytest.approx(2 / 8)
    assert sign_flip_pvalue([1.0, -1.0]) == pytest.approx(1.0)


def test_paired_comparison_counts_wins_ties_losses():
    result = paired_comparison([90.0, 91.0, 92.0, 93.0], [89.0, 91.0, 93.0, 90.0], n_boot=2000)
    assert (result.wins, result.ties, result.losses, result.n) == (2, 1, 1, 4)
    assert result.mean_diff == pytest.approx(0.75)
    assert result.ci_low <= result.mean_diff <= result.ci_high


def test_holm_adjusts_step_down_and_keeps_order():
    """Holm on (0.01, 0.04, 0.03, 0.20): sorted 0.01·4, 0.03·3, 0.04·2, 0.20·1, made monotone."""
    assert holm([0.01, 0.04, 0.03, 0.20]) == pytest.approx([0.04, 0.09, 0.09, 0.20])
    assert holm([0.5, 0.6]) == pytest.approx([1.0, 1.0])  # capped at 1
    adjusted = holm([0.02, float("nan")])
    assert adjusted[0] == pytest.approx(0.02) and np.isnan(adjusted[1])  # a NaN is not a comparison
