"""The tables researchers publish, built from the record frame (``records.load_records(...).done``).

Each builder returns a :class:`analysis.latex.Table` (or ``None`` when the frame has no record of its protocol):

- :func:`base2novel_table`: per dataset base / novel / HM and the Average block (HM of the averaged base and novel).
- :func:`ablation_table` / :func:`ablation_tables`: any config columns as rows (and optionally columns).
- :func:`kshot_table`: accuracy per shots, per dataset and averaged.
- :func:`transfer_table`: cross-dataset or domain generalisation (source, targets, average over targets).
- :func:`cost_table`: trainable parameters, train time, images/s, peak memory per method.

The comparisons (reproduction gap against the papers, paired significance tests) are in :mod:`analysis.compare`.

Methods are told apart by a label: the method's display name plus every config value that varies between its runs
of the same dataset, protocol and shots (``HeBA (bottleneck_ratio=2, init=zero)``).
"""

from __future__ import annotations

from typing import Any, Sequence

import numpy as np
import pandas as pd

from analysis import methods
from analysis import reference as ref
from analysis.aggregate import MAIN_METRIC, STAT_COLUMNS, dataset_average, per_run_values, seed_cells
from analysis.latex import MISSING, Table, best_mask, fmt_count, fmt_mean_std
from analysis.records import TRANSFER_PROTOCOLS, variant_axes, variant_labels
from analysis.stats import STD_DDOF

METRIC_NAMES = {"base": "Base", "novel": "Novel", "hm": "HM", "accuracy": "Accuracy", "source": "Source",
                "average": "Average"}
PROTOCOL_NAMES = {"base2novel": "base-to-novel", "fewshot": "few-shot", "cross_dataset": "cross-dataset",
                  "domain_generalization": "domain generalisation"}
STD_NOTE = f"± is the population std over seeds (ddof = {STD_DDOF}, as np.std in Dassl's parse_test_res.py)"
HM_NOTE = ("HM = 2·B·N/(B+N) of the mean base and mean novel accuracies (its ± is the std of per-seed HMs); the "
           "Average row takes the mean base and mean novel over the datasets and their HM, as the papers compute "
           "it, not the mean of per-dataset HMs")

# ---------------------------------------------------------------------------------------------------- helpers

def _sort_value(value: Any) -> tuple:
    if isinstance(value, (bool, np.bool_)):
        return (0, float(value), "")
    if isinstance(value, (int, float, np.integer, np.floating)) and not pd.isna(value):
        return (0, float(value), "")
    return (1, 0.0, str(value))


def labelled(frame: pd.DataFrame, protocol: str | Sequence[str] | None = None) -> pd.DataFrame:
    """Rows of ``protocol`` with ``label`` (method + varying options) and ``label_rank`` (table order) columns."""
    sub = frame if protocol is None else frame[frame["protocol"].isin(
        [protocol] if isinstance(protocol, str) else list(protocol))]
    sub = sub.copy()
    if sub.empty:
        return sub.assign(label=pd.Series(dtype=object), label_rank=pd.Series(dtype=int))
    axes = variant_axes(sub)
    sub["label"] = variant_labels(sub, axes, ref.run_display)
    keys = {label: (ref.method_rank(row["method.name"]), tuple(_sort_value(row.get(a)) for a in axes))
            for label, row in sub.drop_duplicates("label").set_index("label", drop=False).iterrows()}
    order = sorted(keys, key=lambda label: keys[label])
    sub["label_rank"] = sub["label"].map({label: i for i, label in enumerate(order)})
    return sub


def _label_order(sub: pd.DataFrame) -> list[str]:
    return list(sub.drop_duplicates("label").sort_values("label_rank")["label"])


def _n_text(n: pd.Series, what: str = "seeds") -> str:
    """``n = 3 seeds``, or ``n = 1–3 seeds. † marks ...`` when cells differ in their number of seeds."""
    n = n[n > 0]
    if n.empty:
        return f"n = 0 {what}"
    low, high = int(n.min()), int(n.max())
    if low == high:
        return f"n = {high} {what}"
    return f"n = {low}–{high} {what} († marks cells with fewer than {high}: failed, missing or not run)"


def _context(sub: pd.DataFrame) -> str:
    """Backbone(s) and shots of a subset, for captions."""
    backbones = ", ".join(sorted(map(str, sub["backbone"].unique())))
    shots = sorted(sub["shots"].unique())
    shot_text = f"{shots[0]} shots" if len(shots) == 1 else f"shots {', '.join(map(str, shots))}"
    return f"{backbones}, {shot_text}"


def _notes(sub: pd.DataFrame) -> list[str]:
    """The caption notes the methods of ``sub`` declare (``MethodInfo.caption_note``, and per option value the
    ``value_notes`` of :func:`frozen_clip.contract.option`) for the methods and values present."""
    notes = []
    for method in sorted(sub["method.name"].dropna().unique(), key=methods.method_rank):
        found = methods.card_of(method) or {}
        if found.get("caption_note"):
            notes.append(found["caption_note"])
        rows = sub[sub["method.name"] == method]
        for option, entry in found.get("options", {}).items():
            column = f"method.{option}"
            for value, text in (entry.get("value_notes") or {}).items():
                if column in rows and (rows[column].astype(str) == value).any():
                    notes.append(text)
    return notes


def _stat(tidy: pd.DataFrame, index: Sequence[str]) -> dict[tuple, pd.Series]:
    """``{(index values...): row}`` for quick lookup."""
    return {tuple(row[c] for c in index): row for _, row in tidy.iterrows()}


def _caption(*parts: str) -> str:
    return " ".join(p.strip() for p in parts if p and p.strip())


def _display_dataset(key: str) -> str:
    return "Average" if key == "Average" else ref.dataset_display(key)


# ---------------------------------------------------------------------------------------------- base-to-novel

def base2novel_table(frame: pd.DataFrame) -> Table | None:
    """Per dataset base / novel / HM and the Average block (HM of the averaged base and novel)."""
    sub = labelled(frame, "base2novel")
    if sub.empty:
        return None
    long = per_run_values(sub, ["label"])
    datasets = ref.dataset_order(sub["dataset"].unique())
    average, average_seeds = dataset_average(long, ["label"], datasets)
    tidy = pd.concat([average, seed_cells(long, ["label"])], ignore_index=True)
    lookup = _stat(tidy, ["dataset", "label", "metric"])
    n_max = int(tidy["n"].max())
    rows, means = [], []
    for dataset in ["Average", *datasets]:
        for label in _label_order(sub):
            if dataset != "Average" and (dataset, label, "base") not in lookup:
                continue
            stats = [lookup[(dataset, label, m)] for m in ("base", "novel", "hm")]
            rows.append([_display_dataset(dataset), label,
                         *[fmt_mean_std(s["mean"], s["std"], s["n"], n_max) for s in stats]])
            means.append([s["mean"] for s in stats])
    cells = pd.DataFrame(rows, columns=["Dataset", "Method", "Base", "Novel", "HM"])
    values = pd.DataFrame(means, columns=["Base", "Novel", "HM"])
    bold = pd.concat([pd.DataFrame(False, index=cells.index, columns=["Dataset", "Method"]),
                      best_mask(values, groups=cells["Dataset"])], axis=1)
    names = ", ".join(ref.dataset_display(d) for d in datasets)
    caption = _caption(
        f"Base-to-novel generalisation ({_context(sub)}): accuracy (%) on the base classes, on the novel classes and "
        f"their harmonic mean. Mean ± std over {_n_text(tidy['n'])}; {STD_NOTE}.", HM_NOTE + ".",
        f"Average over the {len(datasets)} datasets ({names}); methods without all of them show –.",
        "Best per dataset in bold (ties at two decimals all bold).", *_notes(sub))
    numbers = tidy.rename(columns={"label": "method"})[["dataset", "method", "metric", *STAT_COLUMNS]]
    per_seed = pd.concat([long, average_seeds], ignore_index=True).rename(columns={"label": "method"})
    return Table("base2novel", "Base-to-novel generalisation", caption, cells, bold, numbers, per_seed,
                 n_label_cols=2, group_col="Dataset", notes=_notes(sub))


# ------------------------------------------------------------------------------------------------- ablations

def ablation_table(frame: pd.DataFrame, rows: Sequence[str], cols: Sequence[str] | None = None,
                   metric: str | None = None, method: str | None = None, protocol: str | None = None,
                   name: str | None = None) -> Table:
    """An ablation over any config columns: ``rows`` (and optionally ``cols``) are the axes.

    Every cell is averaged over the datasets of the subset (HM of the averaged base and novel for base-to-novel)
    and over seeds. Without ``cols`` the columns are the protocol's metrics; with ``cols`` the cells hold
    ``metric`` (default: the protocol's headline metric) for each combination of the ``cols`` values.
    """
    sub = frame if method is None else frame[frame["method.name"] == method]
    sub = sub if protocol is None else sub[sub["protocol"] == protocol]
    protocols = sub["protocol"].unique()
    if len(protocols) != 1:
        raise ValueError(f"an ablation table needs runs of exactly one protocol, got {list(protocols)}")
    protocol = protocols[0]
    rows, cols = list(rows), list(cols or [])
    for column in [*rows, *cols]:
        if column not in sub.columns:
            raise KeyError(f"ablation axis {column!r} is not a column of the records")
    if protocol == "fewshot" and sub["shots"].nunique() > 1 and "shots" not in rows + cols:
        rows = ["shots", *rows]
    keys = rows + cols
    long = per_run_values(sub, keys)
    datasets, excluded = _common_datasets(long, keys)
    tidy, per_seed = dataset_average(long, keys, datasets)
    metrics = _protocol_metrics(protocol)
    shown_metric = metric or MAIN_METRIC[protocol]
    if cols:
        cells, values = _ablation_pivot(tidy, rows, cols, shown_metric)
    else:
        cells, values = _ablation_flat(tidy, rows, metrics)
    bold = pd.concat([pd.DataFrame(False, index=cells.index, columns=cells.columns[:len(rows)]),
                      best_mask(values)], axis=1)
    methods = ", ".join(ref.method_display(m) for m in sorted(sub["method.name"].unique(), key=ref.method_rank))
    what = (f"{METRIC_NAMES.get(shown_metric, shown_metric)} for each {' × '.join(_short(c) for c in cols)}"
            if cols else "each metric")
    names = ", ".join(ref.dataset_display(d) for d in datasets)
    left_out = (f"Runs on {', '.join(ref.dataset_display(d) for d in excluded)} are left out: not every "
                "configuration has them." if excluded else "")
    caption = _caption(
        f"Ablation of {methods} ({PROTOCOL_NAMES[protocol]}, {_context(sub)}) over "
        f"{' × '.join(_short(c) for c in keys)}: {what}, accuracy (%) averaged over the {len(datasets)} "
        f"dataset(s) {names}.", left_out, HM_NOTE + "." if protocol == "base2novel" else "",
        f"Mean ± std over {_n_text(tidy['n'])}; the ± is over per-seed dataset averages; {STD_NOTE}.",
        "Best per column in bold.", *_notes(sub))
    name = name or "ablation_" + "_".join(
        [str(m) for m in sorted(sub["method.name"].unique())] + [_short(c) for c in keys])
    return Table(_slug(name), f"Ablation: {methods} over {', '.join(_short(c) for c in keys)}", caption, cells,
                 bold, tidy.rename(columns=_short),
                 pd.concat([long, per_seed], ignore_index=True).rename(columns=_short), n_label_cols=len(rows),
                 group_col=_short(rows[0]) if len(rows) > 1 else None, notes=_notes(sub))


def _common_datasets(long: pd.DataFrame, keys: list[str]) -> tuple[list[str], list[str]]:
    """Datasets every configuration has (averaged), and the others (left out); all of them if none is common."""
    every = ref.dataset_order(long["dataset"].unique())
    per_config = long.groupby(keys, dropna=False)["dataset"].agg(lambda d: set(d))
    common = set.intersection(*per_config) if len(per_config) else set()
    if not common:
        return every, []
    return [d for d in every if d in common], [d for d in every if d not in common]


def _protocol_metrics(protocol: str) -> list[str]:
    if protocol == "base2novel":
        return ["base", "novel", "hm"]
    if protocol == "fewshot":
        return ["accuracy"]
    return ["source", "average"]


def _ablation_flat(tidy: pd.DataFrame, rows: list[str], metrics: list[str]) -> tuple[pd.DataFrame, pd.DataFrame]:
    lookup = _stat(tidy, [*rows, "metric"])
    combos = sorted({tuple(r[c] for c in rows) for _, r in tidy.iterrows()},
                    key=lambda t: tuple(_sort_value(v) for v in t))
    n_max = int(tidy["n"].max())
    out, values = [], []
    for combo in combos:
        stats = [lookup.get((*combo, m)) for m in metrics]
        out.append([_value(v) for v in combo] + [_cell(s, n_max) for s in stats])
        values.append([np.nan if s is None else s["mean"] for s in stats])
    headers = [_short(c) for c in rows]
    names = [METRIC_NAMES.get(m, m) for m in metrics]
    return pd.DataFrame(out, columns=headers + names), pd.DataFrame(values, columns=names)


def _ablation_pivot(tidy: pd.DataFrame, rows: list[str], cols: list[str],
                    metric: str) -> tuple[pd.DataFrame, pd.DataFrame]:
    sub = tidy[tidy["metric"] == metric]
    if sub.empty:
        raise ValueError(f"metric {metric!r} not available (have {sorted(tidy['metric'].unique())})")
    lookup = _stat(sub, [*rows, *cols])

    def ordered(columns: list[str]) -> list[tuple]:
        return sorted({tuple(r[c] for c in columns) for _, r in sub.iterrows()},
                      key=lambda t: tuple(_sort_value(v) for v in t))
    row_combos, col_combos = ordered(rows), ordered(cols)
    n_max = int(sub["n"].max())
    col_names = [", ".join(f"{_short(c)}={_value(v)}" for c, v in zip(cols, combo)) for combo in col_combos]
    out, values = [], []
    for rc in row_combos:
        stats = [lookup.get((*rc, *cc)) for cc in col_combos]
        out.append([_value(v) for v in rc] + [_cell(s, n_max) for s in stats])
        values.append([np.nan if s is None else s["mean"] for s in stats])
    return (pd.DataFrame(out, columns=[_short(c) for c in rows] + col_names),
            pd.DataFrame(values, columns=col_names))


def _cell(stats: pd.Series | None, n_max: int) -> str:
    return MISSING if stats is None else fmt_mean_std(stats["mean"], stats["std"], stats["n"], n_max)


def _value(value: Any) -> str:
    if isinstance(value, float) and value.is_integer():
        return str(int(value))
    return str(value)


def _short(column: str) -> str:
    return column[len("method."):] if column.startswith("method.") else column


def _slug(text: str) -> str:
    return "".join(c if c.isalnum() or c in "-_" else "_" for c in text).strip("_")


def ablation_tables(frame: pd.DataFrame) -> list[Table]:
    """One ablation table per (protocol, method) whose runs vary along some config axis."""
    tables = []
    for (protocol, method), sub in frame.groupby(["protocol", "method.name"], sort=False):
        axes = variant_axes(sub)
        if axes:
            tables.append(ablation_table(sub, rows=axes, name=f"ablation_{method}_{protocol}"))
    return sorted(tables, key=lambda t: t.name)


# ----------------------------------------------------------------------------------------------------- k-shot

def kshot_table(frame: pd.DataFrame) -> Table | None:
    """Few-shot accuracy per shots (columns) for every dataset and the average over datasets."""
    sub = labelled(frame, "fewshot")
    if sub.empty:
        return None
    long = per_run_values(sub, ["label", "shots"])
    datasets = ref.dataset_order(sub["dataset"].unique())
    average, average_seeds = dataset_average(long, ["label", "shots"], datasets)
    tidy = pd.concat([average, seed_cells(long, ["label", "shots"])], ignore_index=True)
    lookup = _stat(tidy, ["dataset", "label", "shots"])
    shots = sorted(sub["shots"].unique())
    n_max = int(tidy["n"].max())
    rows, means = [], []
    for dataset in ["Average", *datasets]:
        for label in _label_order(sub):
            present = [lookup.get((dataset, label, k)) for k in shots]
            if dataset != "Average" and all(s is None for s in present):
                continue
            rows.append([_display_dataset(dataset), label, *[_cell(s, n_max) for s in present]])
            means.append([np.nan if s is None else s["mean"] for s in present])
    headers = [f"{k}-shot" for k in shots]
    cells = pd.DataFrame(rows, columns=["Dataset", "Method", *headers])
    bold = pd.concat([pd.DataFrame(False, index=cells.index, columns=["Dataset", "Method"]),
                      best_mask(pd.DataFrame(means, columns=headers), groups=cells["Dataset"])], axis=1)
    names = ", ".join(ref.dataset_display(d) for d in datasets)
    caption = _caption(
        f"Few-shot classification ({', '.join(sorted(map(str, sub['backbone'].unique())))}): test accuracy (%) "
        f"with k labelled images per class, all classes. Mean ± std over {_n_text(tidy['n'])}; {STD_NOTE}.",
        f"Average over the {len(datasets)} datasets ({names}); – where a method has no run.",
        "Best per dataset and shot count in bold.", *_notes(sub))
    numbers = tidy.rename(columns={"label": "method"})[["dataset", "method", "shots", "metric", *STAT_COLUMNS]]
    per_seed = pd.concat([long, average_seeds], ignore_index=True).rename(columns={"label": "method"})
    return Table("kshot", "Few-shot accuracy vs shots", caption, cells, bold, numbers, per_seed, n_label_cols=2,
                 group_col="Dataset", notes=_notes(sub))


# --------------------------------------------------------------------------------------- cross-dataset and DG

def transfer_table(frame: pd.DataFrame, protocol: str) -> Table | None:
    """Cross-dataset or domain-generalisation table: source accuracy, every target, and the average over targets."""
    if protocol not in TRANSFER_PROTOCOLS:
        raise ValueError(f"transfer_table needs one of {TRANSFER_PROTOCOLS}, got {protocol!r}")
    sub = labelled(frame, protocol)
    if sub.empty:
        return None
    long = per_run_values(sub, ["label"])
    tidy = seed_cells(long, ["label"])
    lookup = _stat(tidy, ["dataset", "label", "metric"])
    sources = ref.dataset_order(sub["dataset"].unique())
    targets = ref.dataset_order({t for ts in sub["targets"] for t in ts})
    n_max = int(tidy["n"].max())
    columns = ["source", *targets, "average"]
    single = len(sources) == 1
    source_header = f"{ref.dataset_display(sources[0])} (source)" if single else "Source"
    headers = [source_header, *[ref.dataset_display(t) for t in targets], "Average"]
    labels = ["Method"] if single else ["Source dataset", "Method"]
    rows, means = [], []
    for source in sources:
        for label in _label_order(sub):
            stats = [lookup.get((source, label, c)) for c in columns]
            if all(s is None for s in stats):
                continue
            prefix = [label] if single else [ref.dataset_display(source), label]
            rows.append([*prefix, *[_cell(s, n_max) for s in stats]])
            means.append([np.nan if s is None else s["mean"] for s in stats])
    cells = pd.DataFrame(rows, columns=[*labels, *headers])
    groups = None if single else cells["Source dataset"]
    bold = pd.concat([pd.DataFrame(False, index=cells.index, columns=labels),
                      best_mask(pd.DataFrame(means, columns=headers), groups=groups)], axis=1)
    _, paper_targets = ref.AVERAGE_NAMES[protocol]
    paper_note = ("" if set(targets) == set(paper_targets) else
                  f"The papers average {len(paper_targets)} targets; these runs have {len(targets)}.")
    kind = ("Cross-dataset transfer" if protocol == "cross_dataset" else "Domain generalisation")
    caption = _caption(
        f"{kind} ({_context(sub)}): trained on the source dataset, evaluated on its test set (Source) and on "
        f"{len(targets)} target datasets without further training; accuracy (%).",
        f"Average: mean over the targets (source excluded) per seed, then over seeds. Mean ± std over "
        f"{_n_text(tidy['n'])}; {STD_NOTE}.", paper_note, "Best per column in bold.", *_notes(sub))
    numbers = tidy.rename(columns={"label": "method", "dataset": "source_dataset"})
    per_seed = long.rename(columns={"label": "method", "dataset": "source_dataset"})
    name = "cross_dataset" if protocol == "cross_dataset" else "dg"
    return Table(name, kind, caption, cells, bold, numbers, per_seed, n_label_cols=len(labels),
                 group_col=None if single else "Source dataset", notes=_notes(sub))


# ------------------------------------------------------------------------------------------------------- cost

COST_COLUMNS = [("cost.trainable_params", "Trainable params", False),
                ("cost.time_train_s", "Train time (s)", False),
                ("cost.images_per_s", "Train images/s", True),
                ("cost.peak_memory_mb", "Peak memory (MiB)", False)]


def cost_table(frame: pd.DataFrame) -> Table | None:
    """Trainable parameters, train time, throughput and peak memory per method, per protocol."""
    if frame.empty:
        return None
    rows, values, numbers = [], [], []
    for protocol in [p for p in PROTOCOL_NAMES if p in set(frame["protocol"])]:
        sub = labelled(frame, protocol)
        for label in _label_order(sub):
            runs = sub[sub["label"] == label]
            entry = {"protocol": protocol, "method": label, "runs": len(runs)}
            texts, means = [], []
            for column, _, _ in COST_COLUMNS:
                series = pd.to_numeric(runs.get(column), errors="coerce").dropna()
                mean = float(series.mean()) if len(series) else np.nan
                std = float(np.std(series, ddof=STD_DDOF)) if len(series) else np.nan
                entry.update({f"{column}.mean": mean, f"{column}.std": std, f"{column}.min": series.min(),
                              f"{column}.max": series.max(), f"{column}.n": len(series)})
                texts.append(_params_text(series) if column == "cost.trainable_params" else
                             fmt_mean_std(mean, std, decimals=1))
                means.append(mean)
            rows.append([PROTOCOL_NAMES[protocol], label, *texts, str(len(runs))])
            values.append(means)
            numbers.append(entry)
    headers = [h for _, h, _ in COST_COLUMNS]
    cells = pd.DataFrame(rows, columns=["Protocol", "Method", *headers, "Runs"])
    mask = best_mask(pd.DataFrame(values, columns=headers), [h for _, _, h in COST_COLUMNS], decimals=1,
                     groups=cells["Protocol"])
    bold = pd.concat([pd.DataFrame(False, index=cells.index, columns=["Protocol", "Method"]), mask,
                      pd.DataFrame(False, index=cells.index, columns=["Runs"])], axis=1)
    devices = ", ".join(sorted(str(d) for d in frame.get("env.device", pd.Series(dtype=object)).dropna().unique()))
    caption = _caption(
        "Cost per run: trainable parameters (min–max where they differ, e.g. with the number of classes), training "
        "wall time without setup and evaluation (s), training images per second, and peak memory (MiB; CUDA max "
        "allocated, or the process's peak resident set size on CPU) as recorded by the runner on "
        f"{devices or 'the recorded device'}. Mean ± std over all runs of the method in that "
        f"protocol (datasets × seeds × shots; {STD_NOTE.split(' (')[0]}); – where not recorded (nothing trained). "
        "Best per protocol in bold (fewest parameters, shortest time, highest throughput, least memory).")
    return Table("cost", "Cost: parameters, time, throughput, memory", caption, cells, bold,
                 pd.DataFrame(numbers), None, n_label_cols=2, group_col="Protocol")


def _params_text(series: pd.Series) -> str:
    if series.empty:
        return MISSING
    low, high = series.min(), series.max()
    return fmt_count(low) if low == high else f"{fmt_count(low)}–{fmt_count(high)}"


__all__ = ["labelled", "base2novel_table", "ablation_table", "ablation_tables", "kshot_table", "transfer_table",
           "cost_table", "METRIC_NAMES", "PROTOCOL_NAMES", "STD_NOTE", "HM_NOTE"]
