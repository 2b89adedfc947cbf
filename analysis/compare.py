"""Comparisons: our numbers against the papers' (reproduction gap), and methods against each other (paired tests).

- :func:`gap_table`: our mean ± std next to the published number, its source and trust tag, the difference, and
  whether the published value lies within the range of our per-seed values.
- :func:`significance_tables`: each method's default configuration against the baseline (zero-shot CLIP unless
  named) and each ablation level against the method's default configuration, the mean paired difference over runs
  that share dataset, seed and shots, with a bootstrap CI and a sign-flip p-value, Holm-corrected within one table's
  family of comparisons.
"""

from __future__ import annotations

from typing import Iterable, Sequence

import pandas as pd

from analysis import ablation
from analysis import reference as ref
from analysis.aggregate import MAIN_METRIC, dataset_average, per_run_values, seed_cells
from analysis.build import (BASELINE, METRIC_NAMES, PROTOCOL_NAMES, STD_NOTE, _caption, baseline_pairs, labelled,
                            main_variants, paired_tests)
from analysis.latex import Table, fmt_mean_std, fmt_number, signed as _signed
from analysis.methods import json_key


# -------------------------------------------------------------------------------------------- reproduction gap

def our_reference_cells(frame: pd.DataFrame) -> pd.DataFrame:
    """Our numbers in the reference CSV's coordinates: ``method.name, label, backbone_key, protocol, shots,
    suite_dataset, suite_metric`` + mean, std, n, min, max (per-seed values for the range check)."""
    parts = []
    for protocol in PROTOCOL_NAMES:
        sub = labelled(frame, protocol)
        if sub.empty:
            continue
        sub["backbone_key"] = sub["backbone"].map(ref.normalize_backbone)
        sub["targets_key"] = sub["targets"].map(lambda t: tuple(sorted(t)))
        sub["paper_method"] = [ref.paper_method(row["method.name"], {k[len("method."):]: v for k, v in row.items()
                                                                     if k.startswith("method.")})
                               for _, row in sub.iterrows()]
        sub = sub[sub["paper_method"].notna()]
        if sub.empty:
            continue
        keys = ["label", "method.name", "paper_method", "backbone_key", "shots", "targets_key"]
        long = per_run_values(sub, keys)
        cells = seed_cells(long, keys)
        datasets = ref.AVERAGE_NAMES[protocol][1]
        if protocol in ("base2novel", "fewshot"):
            average, _ = dataset_average(long, keys, datasets)
            cells = pd.concat([cells, average.dropna(subset=["mean"])], ignore_index=True)
            cells["suite_dataset"] = cells["dataset"]
            cells["suite_metric"] = cells["metric"]
        else:
            cells = cells[cells["dataset"] == "imagenet"]  # the papers' source
            complete = cells["targets_key"].map(lambda t: set(t) == set(datasets))
            cells = cells[(cells["metric"] != "average") | complete].copy()
            cells["suite_dataset"] = cells["metric"].replace({"average": "Average"})
            cells["suite_metric"] = "accuracy"
        parts.append(cells.assign(protocol=protocol))
    if not parts:
        return pd.DataFrame()
    return pd.concat(parts, ignore_index=True)


def gap_table(frame: pd.DataFrame, reference: pd.DataFrame) -> Table | None:
    """Our numbers next to the papers' (with source and trust tag), their difference, and whether the paper's
    value lies within the range of our per-seed values."""
    ours = our_reference_cells(frame)
    if ours.empty:
        return None
    paper = reference.dropna(subset=["suite_method", "suite_dataset", "suite_metric"])
    merged = ours.merge(paper, left_on=["paper_method", "backbone_key", "protocol", "suite_dataset", "suite_metric"],
                        right_on=["method", "backbone_key", "protocol", "suite_dataset", "suite_metric"],
                        suffixes=("", "_paper"))
    shots_ok = (merged["method.name"] == "zeroshot") | (merged["shots"] == merged["shots_paper"])
    merged = merged[shots_ok].copy()
    if merged.empty:
        return None
    merged["delta"] = merged["mean"] - merged["value"]
    merged["within_seed_range"] = (merged["min"] - 0.005 <= merged["value"]) & (merged["value"] <= merged["max"]
                                                                                 + 0.005)
    order = {d: i for i, d in enumerate(["Average", "source", *ref.DATASETS])}
    metric_order = {"base": 0, "novel": 1, "hm": 2, "accuracy": 3}
    merged["_o"] = list(zip(merged["protocol"].map(list(PROTOCOL_NAMES).index),
                            merged["method.name"].map(ref.method_rank), merged["label"], merged["shots"],
                            merged["suite_dataset"].map(lambda d: order.get(d, len(order))),
                            merged["suite_metric"].map(metric_order), merged["trust"]))
    merged = merged.sort_values("_o").drop(columns="_o").reset_index(drop=True)
    rows = []
    for _, r in merged.iterrows():
        dataset = {"Average": "Average", "source": "source: ImageNet"}.get(r["suite_dataset"],
                                                                           ref.dataset_display(r["suite_dataset"]))
        metric = METRIC_NAMES.get(r["suite_metric"], r["suite_metric"])
        rows.append([PROTOCOL_NAMES[r["protocol"]], r["label"], dataset, metric, str(r["shots_paper"]),
                     fmt_mean_std(r["mean"], r["std"]), str(int(r["n"])), fmt_number(r["value"]),
                     _signed(r["delta"]), "yes" if r["within_seed_range"] else "no", r["trust"]])
    cells = pd.DataFrame(rows, columns=["Protocol", "Method", "Dataset", "Metric", "Shots", "Ours", "n", "Paper",
                                        "Δ", "In range", "Trust"])
    bold = pd.DataFrame(False, index=cells.index, columns=cells.columns)
    caption = _caption(
        "Reproduction gap: our mean ± std over n seeds next to the number the papers report, Δ = ours − paper "
        "(points), and whether the paper's value lies within the range of our per-seed values.")
    notes = ["The seed range is min–max of our per-seed values, widened by ±0.005 for the paper's rounding.",
             "Trust: the tag of the reference number (VERIFIED: read in a primary artefact; RECALLED+CHECKED: from "
             "memory of a paper table, checked against verified averages; SECONDARY: from a later paper or a "
             "summary; APPROX: read off a figure; COMPUTED: derived from other reported numbers); the source of each "
             "number is in the CSV.",
             "Average rows are compared only when our runs cover every dataset the paper averages.", STD_NOTE]
    numbers = merged[["protocol", "label", "method.name", "backbone", "shots", "shots_paper", "dataset_paper",
                      "suite_dataset", "metric_paper", "mean", "std", "n", "min", "max", "value", "delta",
                      "within_seed_range", "trust", "source"]].rename(
        columns={"label": "method", "method.name": "suite_method", "value": "paper_value",
                 "dataset_paper": "paper_dataset", "metric_paper": "paper_metric", "backbone": "paper_backbone"})
    return Table("reproduction_gap", "Reproduction gap against the papers", caption, cells, bold, numbers, None,
                 n_label_cols=4, group_col="Protocol", environment="longtable", notes=notes)


# ------------------------------------------------------------------------------------------------ significance

def significance_tables(frame: pd.DataFrame, pairs: Iterable[tuple[str, str]] | None = None,
                        baseline: str = BASELINE, n_boot: int = 10_000, seed: int = 0) -> list[Table]:
    """The method table (:func:`significance_table`) and, per method with an ablation, the ablation's table
    (:func:`ablation_significance_table`)."""
    tables = [significance_table(frame, pairs, baseline, n_boot, seed)]
    found = ablation.studies(frame)
    for key in dict.fromkeys((s.protocol, s.method) for s in found):
        tables.append(ablation_significance_table([s for s in found if (s.protocol, s.method) == key], n_boot, seed))
    return [t for t in tables if t is not None]


def significance_table(frame: pd.DataFrame, pairs: Iterable[tuple[str, str]] | None = None,
                       baseline: str = BASELINE, n_boot: int = 10_000, seed: int = 0) -> Table | None:
    """Each method's main configuration against the baseline's (default zero-shot CLIP; ``baseline`` names a
    method or a label), or the given ``pairs`` (A, B), on each protocol's headline metric, paired over the runs that
    share dataset, seed and shots: mean difference A − B with a 95% bootstrap CI, the sign-flip p and its Holm
    adjustment across every comparison of the table."""
    found = []
    for protocol in PROTOCOL_NAMES:
        sub = labelled(frame, protocol)
        if sub.empty:
            continue
        chosen = _pairs(sub, pairs) if pairs is not None else baseline_pairs(sub, baseline)
        found.append(paired_tests(sub, chosen, n_boot, seed).assign(protocol=protocol))
    tests = pd.concat(found, ignore_index=True) if found else pd.DataFrame()
    if tests.empty:
        return None
    cells, numbers = _comparison_rows(
        [(PROTOCOL_NAMES[p], f"{a} − {b}") for p, a, b in zip(tests["protocol"], tests["a"], tests["b"])], tests)
    cells.columns = ["Protocol", "Comparison (A − B)", *cells.columns[2:]]
    bold = pd.DataFrame(False, index=cells.index, columns=cells.columns)
    bold["Δ"] = list(numbers["significant"])
    against = "B as named" if pairs is not None else f"{ref.method_display(baseline)} (B)"
    caption = _caption(
        f"Each method's default configuration (A) against {against}: mean paired difference Δ = A − B of the "
        "headline metric (HM for base-to-novel; points) over datasets × seeds, with its 95% bootstrap CI and "
        "p-values Holm-corrected within each protocol; bold: significant (p < 0.05).")
    return Table("significance", "Paired significance tests", caption, cells, bold, numbers, None, n_label_cols=2,
                 group_col="Protocol", notes=[_TEST_NOTE.format(n_boot=n_boot, seed=seed)])


def ablation_significance_table(family: Sequence[ablation.Study], n_boot: int = 10_000,
                                seed: int = 0) -> Table | None:
    """Every level of a method's ablation against its default configuration (:func:`analysis.ablation.comparisons`),
    Holm-corrected across all of them: the test behind the ``*`` of the ablation tables."""
    tests = ablation.comparisons(family, n_boot, seed).drop_duplicates("config")  # a cross repeats factor levels
    if tests.empty:
        return None
    by_slug = {s.slug: s for s in family}
    labels = []
    for _, row in tests.iterrows():
        study = by_slug[row["study"]]
        level = study.runs[study.runs[ablation.LEVEL] == row["level"]].iloc[0]
        changed = [o for o in study.options
                   if json_key(ablation.plain(level[o])) != json_key(study.defaults[o])]
        text = ", ".join(study.value_display(o, level[o]) if len(study.options) == 1 else
                         f"{study.option_display(o)} {study.value_display(o, level[o])}" for o in changed)
        labels.append((study.title(), text))
    cells, numbers = _comparison_rows(labels, tests.rename(columns={"p": "p_sign_flip"}))
    cells.columns = ["Factor", "Level", *cells.columns[2:]]
    bold = pd.DataFrame(False, index=cells.index, columns=cells.columns)
    bold["Δ"] = list(numbers["significant"])
    method = ref.method_display(family[0].method)
    caption = _caption(
        f"{method} ablation ({PROTOCOL_NAMES[family[0].protocol]}): each level against the default "
        f"configuration, mean paired difference Δ of the per-run {METRIC_NAMES[MAIN_METRIC[family[0].protocol]]} "
        f"over datasets × seeds with its 95% bootstrap CI; p Holm-corrected across the {len(cells)} "
        "comparisons; bold: significant (p < 0.05).")
    return Table(f"significance_ablation_{family[0].method}_{family[0].protocol}", f"Significance: {method} ablation",
                 caption, cells, bold, numbers, None, n_label_cols=2, group_col="Factor",
                 notes=[_TEST_NOTE.format(n_boot=n_boot, seed=seed)])


_TEST_NOTE = ("Paired tests: 95% percentile bootstrap CI of the mean difference ({n_boot:,} resamples of the pairs, "
              "seed {seed}); two-sided sign-flip permutation p (exact up to 12 pairs; the smallest attainable p with n "
              "pairs is 2/2^n); Holm's step-down correction across the comparisons of one table; pairs across "
              "datasets and seeds are treated as exchangeable.")


def _comparison_rows(labels: list[tuple[str, str]], tests: pd.DataFrame) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Cells of comparison rows (two label cells, Pairs, Δ, 95% CI, p (Holm), W/T/L) from tests carrying
    ``n_pairs, mean_diff, ci_low, ci_high, p_holm, wins, ties, losses``; the tests are the numbers."""
    rows = [[first, second, str(int(t["n_pairs"])), _signed(t["mean_diff"]),
             f"[{_signed(t['ci_low'])}, {_signed(t['ci_high'])}]", f"{t['p_holm']:.3f}",
             f"{int(t['wins'])}/{int(t['ties'])}/{int(t['losses'])}"]
            for (first, second), (_, t) in zip(labels, tests.iterrows())]
    cells = pd.DataFrame(rows, columns=["A", "B", "Pairs", "Δ", "95% CI", "p (Holm)", "W/T/L"])
    return cells, tests.reset_index(drop=True)


def _pairs(sub: pd.DataFrame, pairs: Iterable[tuple[str, str]]) -> list[tuple[str, str]]:
    """Named pairs as labels: a method name stands for its main configuration, anything else is a label."""
    main = main_variants(sub)
    return [(main.get(a, a), main.get(b, b)) for a, b in pairs]


__all__ = ["our_reference_cells", "gap_table", "main_variants", "significance_tables", "significance_table",
           "ablation_significance_table", "BASELINE"]
