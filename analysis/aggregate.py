"""Per-run values -> per-cell statistics over seeds, and averages over datasets.

Every accuracy table goes through two steps:

1. :func:`per_run_values` turns the record frame into one row per (run, metric): ``base``, ``novel`` and ``hm``
   (base-to-novel), ``accuracy`` (few-shot), ``source``, one per target and ``average`` (cross-dataset, DG).
2. :func:`seed_cells` gives mean, std, n, min and max over seeds per (keys, dataset, metric), and
   :func:`dataset_average` the ``Average`` over a set of datasets.

HM follows the papers: a row's HM is the HM of its mean base and mean novel accuracies, and the Average row's HM is
the HM of the averaged base and novel (MMA: 83.20 / 76.80 -> 79.87), never the mean of HMs. Its ``std``, ``min``
and ``max`` describe the per-seed HMs. Dispersion is the population std (``stats.STD_DDOF``).
"""

from __future__ import annotations

from typing import Any, Mapping, Sequence

import numpy as np
import pandas as pd

from analysis.latex import MISSING
from analysis.records import TRANSFER_PROTOCOLS
from analysis.stats import STD_DDOF, harmonic_mean

MAIN_METRIC = {"base2novel": "hm", "fewshot": "accuracy", "cross_dataset": "average",
               "domain_generalization": "average"}
"""The headline metric of each protocol (ablations, significance, plots)."""
STAT_COLUMNS = ["mean", "std", "n", "min", "max"]


def per_run_values(frame: pd.DataFrame, keys: Sequence[str]) -> pd.DataFrame:
    """Long frame: ``keys`` + ``run_id, protocol, dataset, seed, metric, value`` (one row per run and metric)."""
    rows = []
    # plain dicts of the columns used: a pandas row per run costs more than the values
    needed = [c for c in frame.columns if c in (*keys, "run_id", "protocol", "dataset", "seed", "targets")
              or str(c).startswith("acc.")]
    for run in frame[needed].to_dict("records"):
        base = {k: _key(run[k]) for k in keys}
        base.update(run_id=run["run_id"], protocol=run["protocol"], dataset=run["dataset"], seed=run["seed"])
        for metric, value in _run_metrics(run).items():
            rows.append({**base, "metric": metric, "value": value})
    columns = [*keys, "run_id", "protocol", "dataset", "seed", "metric", "value"]
    return pd.DataFrame(rows, columns=list(dict.fromkeys(columns)))


def _key(value: object) -> object:
    """Group keys never NaN (pandas drops NaN groups): an unset option becomes the missing mark."""
    return MISSING if value is None or (isinstance(value, float) and np.isnan(value)) else value


def _run_metrics(run: Mapping[str, Any]) -> dict[str, float]:
    protocol = run["protocol"]
    if protocol == "base2novel":
        base, novel = float(run["acc.base"]), float(run["acc.novel"])
        return {"base": base, "novel": novel, "hm": harmonic_mean(base, novel)}
    if protocol == "fewshot":
        return {"accuracy": float(run["acc.test"])}
    if protocol in TRANSFER_PROTOCOLS:
        targets = list(run["targets"])
        values = {t: float(run[f"acc.{t}"]) for t in targets}
        return {"source": float(run["acc.source"]), **values, "average": float(np.mean(list(values.values())))}
    raise ValueError(f"unknown protocol {protocol!r}")


def _stats(values: pd.core.groupby.SeriesGroupBy) -> pd.DataFrame:
    return values.agg(mean="mean", std=lambda v: float(np.std(v, ddof=STD_DDOF)), n="count", min="min",
                      max="max")


def seed_cells(long: pd.DataFrame, keys: Sequence[str]) -> pd.DataFrame:
    """Mean, std, n, min, max over seeds per ``keys`` + dataset + metric; ``hm`` rows get the HM of the means."""
    group = [*keys, "dataset", "metric"]
    cells = _stats(long.groupby(group, dropna=False, sort=False)["value"]).reset_index()
    return _hm_of_means(cells, [*keys, "dataset"])


def _hm_of_means(cells: pd.DataFrame, by: Sequence[str]) -> pd.DataFrame:
    """Replace the ``mean`` of ``hm`` rows by the HM of the ``base`` and ``novel`` means of the same ``by`` group."""
    if not (cells["metric"] == "hm").any():
        return cells
    wide = cells.pivot_table(index=list(by), columns="metric", values="mean", dropna=False, aggfunc="first")
    hm = {key: harmonic_mean(row["base"], row["novel"]) for key, row in wide.iterrows()}
    is_hm = cells["metric"] == "hm"
    columns = [list(cells.loc[is_hm, c]) for c in by]
    keys = list(zip(*columns)) if len(by) > 1 else columns[0]
    cells.loc[is_hm, "mean"] = [hm.get(k, np.nan) for k in keys]
    return cells


def dataset_average(long: pd.DataFrame, keys: Sequence[str],
                    datasets: Sequence[str]) -> tuple[pd.DataFrame, pd.DataFrame]:
    """The ``Average`` over ``datasets`` per ``keys`` and metric, and the per-seed averages behind its spread.

    ``mean`` is the mean over datasets of the per-dataset seed means (NaN when a dataset is missing); ``std``,
    ``n``, ``min`` and ``max`` come from per-seed averages over the datasets (seeds that have every dataset).
    ``hm`` is the HM of the averaged base and novel.
    """
    datasets = list(datasets)
    keys = list(keys)
    sub = long[long["dataset"].isin(datasets) & (long["metric"] != "hm")]
    by_dataset = sub.groupby([*keys, "metric", "dataset"], dropna=False)["value"].mean().reset_index()
    grouped = by_dataset.groupby([*keys, "metric"], dropna=False)
    mean = grouped["value"].mean().where(grouped["dataset"].nunique() == len(datasets))
    per_seed = sub.groupby([*keys, "metric", "seed"], dropna=False).agg(
        value=("value", "mean"), k=("dataset", "nunique")).reset_index()
    per_seed = per_seed[per_seed["k"] == len(datasets)].drop(columns="k")
    spread = _stats(per_seed.groupby([*keys, "metric"], dropna=False)["value"])
    cells = spread.drop(columns="mean").join(mean.rename("mean"), how="outer").reset_index()
    cells["n"] = cells["n"].fillna(0).astype(int)
    if {"base", "novel"} <= set(cells["metric"]):
        cells, per_seed = _average_hm(cells, per_seed, keys)
    cells["dataset"] = "Average"
    per_seed = per_seed.assign(dataset="Average")
    return cells[[*keys, "dataset", "metric", *STAT_COLUMNS]], per_seed


def _average_hm(cells: pd.DataFrame, per_seed: pd.DataFrame,
                keys: list[str]) -> tuple[pd.DataFrame, pd.DataFrame]:
    seed_wide = per_seed.pivot_table(index=[*keys, "seed"], columns="metric", values="value", dropna=False)
    seed_hm = seed_wide.apply(lambda r: harmonic_mean(r.get("base", np.nan), r.get("novel", np.nan)), axis=1)
    seed_hm = seed_hm.dropna().rename("value").reset_index().assign(metric="hm")
    hm_cells = _stats(seed_hm.groupby(keys, dropna=False)["value"]).reset_index() if len(seed_hm) else \
        pd.DataFrame(columns=[*keys, *STAT_COLUMNS])
    means = cells.pivot_table(index=keys, columns="metric", values="mean", dropna=False, aggfunc="first")
    hm_mean = means.apply(lambda r: harmonic_mean(r.get("base", np.nan), r.get("novel", np.nan)), axis=1)
    hm_mean = hm_mean.rename("mean_hm").reset_index()
    hm_cells = hm_mean.merge(hm_cells.drop(columns="mean", errors="ignore"), on=keys, how="left")
    hm_cells = hm_cells.rename(columns={"mean_hm": "mean"}).assign(metric="hm")
    hm_cells["n"] = hm_cells["n"].fillna(0).astype(int)
    cells = pd.concat([cells, hm_cells[cells.columns]], ignore_index=True)
    return cells, pd.concat([per_seed, seed_hm[per_seed.columns]], ignore_index=True)


__all__ = ["MAIN_METRIC", "STAT_COLUMNS", "per_run_values", "seed_cells", "dataset_average"]
