"""Figures (matplotlib + seaborn), each saved as PDF and PNG, from the numbers behind the tables.

- :func:`plot_kshot`: accuracy vs shots per dataset and on average, mean line with a ±std band per method.
- :func:`plot_ablation`: bars of the headline metric per configuration (±std), and a heatmap over two axes.
- :func:`plot_tradeoff`: headline accuracy vs trainable parameters and vs train time.
- :func:`plot_base_novel`: base vs novel accuracy per dataset and method, with iso-HM curves.
"""

from __future__ import annotations

from pathlib import Path
from typing import Sequence

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402
import seaborn as sns  # noqa: E402

from analysis import reference as ref  # noqa: E402
from analysis.latex import Table  # noqa: E402

DPI = 150


def save(fig: plt.Figure, out_dir: Path, stem: str) -> list[Path]:
    """Write ``stem.pdf`` and ``stem.png`` under ``out_dir``; close the figure; return both paths."""
    out_dir.mkdir(parents=True, exist_ok=True)
    paths = [out_dir / f"{stem}.pdf", out_dir / f"{stem}.png"]
    fig.savefig(paths[0], bbox_inches="tight")
    fig.savefig(paths[1], bbox_inches="tight", dpi=DPI)
    plt.close(fig)
    return paths


MARKERS = "osD^vP<>Xhp*"
"""One marker per method (with its colour), so that no two methods look alike in print or in grey."""


def _palette(labels: Sequence[str]) -> dict[str, tuple]:
    colors = sns.color_palette("tab10" if len(labels) <= 10 else "tab20", n_colors=max(len(labels), 1))
    return dict(zip(labels, colors))


def _markers(labels: Sequence[str]) -> dict[str, str]:
    """A marker per label, distinct for up to 12 labels (then repeating with other colours)."""
    return {label: MARKERS[i % len(MARKERS)] for i, label in enumerate(labels)}


def _method_order(table: Table) -> list[str]:
    """Methods in the table's row order."""
    source = table.cells["Method"] if "Method" in table.cells else table.numbers["method"]
    return list(dict.fromkeys(source))


def _legend_below(fig: plt.Figure, handles: list, labels: list[str]) -> None:
    fig.legend(handles, labels, loc="lower center", ncol=min(len(labels), 3), frameon=False,
               bbox_to_anchor=(0.5, -0.02 - 0.035 * ((len(labels) - 1) // 3)))


# ------------------------------------------------------------------------------------------------------ k-shot

def plot_kshot(table: Table, out_dir: Path) -> list[Path]:
    """Accuracy vs shots (log2 axis), one panel per dataset plus the average; ±std bands; 0-shot as a dashed line."""
    numbers = table.numbers
    datasets = ["Average", *[d for d in dict.fromkeys(numbers["dataset"]) if d != "Average"]]
    datasets = [d for d in datasets if numbers.loc[numbers["dataset"] == d, "mean"].notna().any()]
    methods = _method_order(table)
    colors, markers = _palette(methods), _markers(methods)
    ncols = min(len(datasets), 3)
    nrows = int(np.ceil(len(datasets) / ncols))
    fig, axes = plt.subplots(nrows, ncols, figsize=(4.2 * ncols, 3.4 * nrows), squeeze=False)
    shots_all = sorted(k for k in numbers["shots"].unique() if k > 0)
    handles: dict[str, object] = {}
    for ax, dataset in zip(axes.flat, datasets):
        sub = numbers[numbers["dataset"] == dataset]
        for method in methods:
            rows = sub[sub["method"] == method].dropna(subset=["mean"]).sort_values("shots")
            trained = rows[rows["shots"] > 0]
            if len(trained):
                line, = ax.plot(trained["shots"], trained["mean"], marker=markers[method], ms=4, color=colors[method])
                ax.fill_between(trained["shots"], trained["mean"] - trained["std"], trained["mean"] + trained["std"],
                                color=colors[method], alpha=0.2, linewidth=0)
                handles.setdefault(method, line)
            zero = rows[rows["shots"] == 0]
            if len(zero):
                line = ax.axhline(float(zero["mean"].iloc[0]), color=colors[method], linestyle="--", linewidth=1.2)
                handles.setdefault(method + " (0-shot)", line)
        ax.set_xscale("log", base=2)
        ax.set_xticks(shots_all or [1])
        ax.set_xticklabels([str(k) for k in (shots_all or [1])])
        ax.set_title(_display(dataset))
        ax.set_xlabel("Labelled images per class (shots)")
        ax.set_ylabel("Top-1 accuracy (%)")
        ax.grid(True, alpha=0.3)
    for ax in axes.flat[len(datasets):]:
        ax.set_visible(False)
    fig.suptitle("Few-shot accuracy vs shots (mean ± std over seeds)")
    fig.tight_layout(rect=(0, 0.08, 1, 1))
    _legend_below(fig, list(handles.values()), list(handles))
    return save(fig, out_dir, "kshot_accuracy")


def _display(dataset: str) -> str:
    return "Average" if dataset == "Average" else ref.dataset_display(dataset)


# ---------------------------------------------------------------------------------------------------- ablation

def plot_ablation(table: Table, out_dir: Path) -> list[Path]:
    """One factor of an ablation (a ``study_table``): its levels against the headline metric averaged over the
    datasets, with a 95% t-interval across seeds, the default level as a filled marker; one column wide (3.25 in)
    so it is read at paper size. Tables without levels (per-dataset variants) draw nothing."""
    numbers = table.numbers
    if "level_display" not in numbers.columns:
        return []
    metric = "hm" if "hm" in set(numbers["metric"]) else ("average" if "average" in set(numbers["metric"])
                                                          else numbers["metric"].iloc[0])
    order = list(dict.fromkeys(table.cells.iloc[:, : table.n_label_cols].astype(str).agg(" / ".join, axis=1)))
    sub = numbers[numbers["metric"] == metric].set_index("level_display").reindex(order)
    half = [_t_half_width(std, n) for std, n in zip(sub["std"], sub["n"])]
    fig, ax = plt.subplots(figsize=(3.25, 2.3))
    x = np.arange(len(sub))
    ax.errorbar(x, sub["mean"], yerr=half, fmt="-", color="0.55", ecolor="0.3", capsize=3, linewidth=1)
    default = np.array(["(" in label and label.endswith(")") for label in sub.index])
    ax.plot(x[~default], sub["mean"][~default], "o", color="C0", markerfacecolor="white", label="level")
    ax.plot(x[default], sub["mean"][default], "o", color="C0", label="default")
    ax.set_xticks(x)
    ax.set_xticklabels(list(sub.index), fontsize=7, rotation=20 if max(map(len, sub.index)) > 8 else 0,
                       ha="right" if max(map(len, sub.index)) > 8 else "center")
    ax.set_xlabel(" / ".join(table.cells.columns[: table.n_label_cols]), fontsize=8)
    ax.set_ylabel(f"{_metric_label(metric)} (%)", fontsize=8)
    ax.tick_params(axis="y", labelsize=7)
    ax.grid(True, axis="y", alpha=0.3)
    ax.legend(fontsize=7, frameon=False)
    fig.tight_layout()
    return save(fig, out_dir, table.name)


def _t_half_width(std: float, n: float) -> float:
    """Half width of the 95% t-interval of a mean over ``n`` seeds from their population std (0 for one seed)."""
    if not n or n < 2 or not np.isfinite(std):
        return 0.0
    sample_std = std * np.sqrt(n / (n - 1))
    return float(t_quantile_975(int(n) - 1) * sample_std / np.sqrt(n))


def t_quantile_975(df: int) -> float:
    """The 0.975 quantile of Student's t with ``df`` degrees of freedom: tabulated up to 10, beyond that the
    Cornish-Fisher expansion around the normal quantile (within 0.005 there)."""
    exact = {1: 12.706, 2: 4.303, 3: 3.182, 4: 2.776, 5: 2.571, 6: 2.447, 7: 2.365, 8: 2.306, 9: 2.262, 10: 2.228}
    if df in exact:
        return exact[df]
    z = 1.959964
    return z + (z ** 3 + z) / (4 * df) + (5 * z ** 5 + 16 * z ** 3 + 3 * z) / (96 * df ** 2)


def _numeric_first(value: object) -> tuple:
    try:
        return (0, float(value), "")
    except (TypeError, ValueError):
        return (1, 0.0, str(value))


def _metric_label(metric: str) -> str:
    return {"hm": "HM of base and novel accuracy", "base": "Base accuracy", "novel": "Novel accuracy",
            "accuracy": "Top-1 accuracy", "average": "Average target accuracy", "source": "Source accuracy"}.get(
        metric, metric)


# ------------------------------------------------------------------------------------------------- trade-off

def headline_by_method(tables: dict[str, Table]) -> tuple[pd.DataFrame, str, str] | None:
    """Per method, the headline accuracy of the first protocol available (b2n Average HM, few-shot average at the
    largest shots, transfer average), with the protocol's cost rows' name."""
    if "base2novel" in tables:
        n = tables["base2novel"].numbers
        sel = n[(n["dataset"] == "Average") & (n["metric"] == "hm")]
        return sel[["method", "mean", "std"]], "base-to-novel", "Average HM (%)"
    if "kshot" in tables:
        n = tables["kshot"].numbers
        k = n.loc[n["shots"] > 0, "shots"].max()
        sel = n[(n["dataset"] == "Average") & (n["shots"] == k)]
        return sel[["method", "mean", "std"]], "few-shot", f"Average {k}-shot accuracy (%)"
    for name, protocol in (("cross_dataset", "cross-dataset"), ("dg", "domain generalisation")):
        if name in tables:
            n = tables[name].numbers
            sel = n[n["metric"] == "average"]
            return sel[["method", "mean", "std"]], protocol, "Average target accuracy (%)"
    return None


def plot_tradeoff(tables: dict[str, Table], out_dir: Path) -> list[Path]:
    """Headline accuracy vs trainable parameters (log axis) and vs train time, one point per method."""
    found = headline_by_method(tables)
    if found is None or "cost" not in tables:
        return []
    acc, protocol, ylabel = found
    cost = tables["cost"].numbers
    cost = cost[cost["protocol"] == {"base-to-novel": "base2novel", "few-shot": "fewshot",
                                     "cross-dataset": "cross_dataset",
                                     "domain generalisation": "domain_generalization"}[protocol]]
    data = acc.merge(cost, on="method").dropna(subset=["mean"])
    if data.empty:
        return []
    order = {m: i for i, m in enumerate(cost["method"])}
    data = data.sort_values("method", key=lambda s: s.map(order))
    colors, markers = _palette(list(data["method"])), _markers(list(data["method"]))
    fig, axes = plt.subplots(1, 2, figsize=(11, 4.4))
    for ax, column, xlabel in ((axes[0], "cost.trainable_params.mean", "Trainable parameters (log scale)"),
                               (axes[1], "cost.time_train_s.mean", "Train time per run (s, log scale)")):
        for _, row in data.iterrows():
            x = max(float(row[column]), 1.0) if pd.notna(row[column]) else np.nan
            ax.errorbar(x, row["mean"], yerr=row["std"], fmt=markers[row["method"]], ms=7, capsize=3,
                        color=colors[row["method"]],
                        label=row["method"])
        ax.set_xscale("log")
        ax.set_xlabel(xlabel + "; 0 drawn at 1")
        ax.set_ylabel(ylabel)
        ax.grid(True, alpha=0.3, which="both")
    axes[0].set_title(f"Accuracy vs trainable parameters ({protocol})")
    axes[1].set_title(f"Accuracy vs train time ({protocol})")
    handles, labels = axes[0].get_legend_handles_labels()
    fig.tight_layout(rect=(0, 0.1, 1, 1))
    _legend_below(fig, handles, labels)
    return save(fig, out_dir, "accuracy_vs_cost")


# ----------------------------------------------------------------------------------------------- base vs novel

def plot_base_novel(table: Table, out_dir: Path) -> list[Path]:
    """Base vs novel accuracy: one marker per dataset, one colour per method; large markers for the Average."""
    n = table.numbers
    wide = n.pivot_table(index=["dataset", "method"], columns="metric", values="mean").reset_index()
    wide = wide.dropna(subset=["base", "novel"])
    methods = _method_order(table)
    colors = _palette(methods)
    datasets = [d for d in dict.fromkeys(wide["dataset"]) if d != "Average"]
    markers = dict(zip(datasets, "osD^vP<>hX*p"))
    fig, ax = plt.subplots(figsize=(9.6, 6.0))
    low = float(min(wide["base"].min(), wide["novel"].min())) - 3
    grid = np.linspace(max(low, 1.0), 100, 200)
    for hm in range(10, 100, 10):
        novel = hm * grid / (2 * grid - hm)
        ok = (novel > 0) & (novel <= 100) & (2 * grid > hm)
        ax.plot(grid[ok], novel[ok], color="grey", linewidth=0.6, alpha=0.35)
        inside = ok & (novel >= max(low, 0) + 1) & (grid <= 99)
        if inside.any():
            ax.annotate(f"HM {hm}", (grid[inside][-1], novel[inside][-1]), fontsize=6, color="grey", ha="right",
                        va="bottom")
    ax.plot([0, 100], [0, 100], color="black", linewidth=0.8, linestyle=":")
    for _, row in wide.iterrows():
        average = row["dataset"] == "Average"
        ax.scatter(row["base"], row["novel"], color=colors[row["method"]], s=110 if average else 30,
                   marker="*" if average else markers.get(row["dataset"], "o"),
                   edgecolor="black" if average else "none", linewidth=0.6, zorder=3)
    ax.set_xlim(max(low, 0), 100)
    ax.set_ylim(max(low, 0), 100)
    ax.set_xlabel("Base-class accuracy (%)")
    ax.set_ylabel("Novel-class accuracy (%)")
    ax.set_title("Base vs novel accuracy (mean over seeds; ★ = average over datasets)")
    method_handles = [plt.Line2D([], [], color=colors[m], marker="o", linestyle="", label=m) for m in methods]
    dataset_handles = [plt.Line2D([], [], color="grey", marker=markers[d], linestyle="",
                                  label=ref.dataset_display(d)) for d in datasets]
    first = ax.legend(handles=method_handles, loc="upper left", bbox_to_anchor=(1.02, 1.0), fontsize=7,
                      title="Method", title_fontsize=7)
    ax.add_artist(first)
    ax.legend(handles=dataset_handles, loc="lower left", bbox_to_anchor=(1.02, 0.0), fontsize=7, title="Dataset",
              title_fontsize=7)
    ax.grid(True, alpha=0.3)
    fig.tight_layout()
    return save(fig, out_dir, "base_vs_novel")


__all__ = ["save", "plot_kshot", "plot_ablation", "plot_tradeoff", "plot_base_novel", "headline_by_method"]
