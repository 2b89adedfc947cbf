"""The tables researchers publish, built from the record frame (``records.load_records(...).done``).

Each builder returns :class:`analysis.latex.Table` objects (none when the frame has no record of its protocol):

- :func:`base2novel_tables`: CoCoOp's / MaPLe's Table 1: the compact HM table (datasets + Average, ``table*``),
  then the Average and per-dataset Base / Novel / HM sub-tables (HM of the averaged base and novel).
- :func:`ablation_tables`: one table per factor of each method's ablation, inferred from the runs
  (:mod:`analysis.ablation`), and its per-dataset variant; :func:`ablation_table`: any config columns as rows (and
  optionally columns), saying in its caption what a cell pools.
- :func:`kshot_tables`: accuracy per shots for each method, averaged and per dataset.
- :func:`transfer_table`: cross-dataset or domain generalisation (source, targets, average over targets).
- :func:`cost_table`: trainable parameters, train time, images/s, peak memory per method.

The comparisons (reproduction gap against the papers, paired significance tests) are in :mod:`analysis.compare`.

Runs are named as ``jobs.config.run_label`` names them (:func:`run_labels`): the method's display name plus the
options its runs vary that the run sets off the method's defaults (``HeBA [bottleneck ratio=2, init=zero up]``);
the method tables keep each method's default configuration (:func:`main_variants`).
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import pandas as pd

from analysis import ablation, methods
from analysis import reference as ref
from analysis.aggregate import MAIN_METRIC, STAT_COLUMNS, dataset_average, per_run_values, seed_cells
from analysis.latex import (MISSING, Table, best_mask, fmt_count, fmt_mean_std, fmt_number, second_mask,
                            signed as _signed)
from analysis.records import TRANSFER_PROTOCOLS, variant_axes
from analysis.stats import STD_DDOF, holm, paired_comparison

METRIC_NAMES = {"base": "Base", "novel": "Novel", "hm": "HM", "accuracy": "Accuracy", "source": "Source",
                "average": "Average"}
PROTOCOL_NAMES = {"base2novel": "base-to-novel", "fewshot": "few-shot", "cross_dataset": "cross-dataset",
                  "domain_generalization": "domain generalisation"}
STD_NOTE = f"± is the population std over seeds (ddof = {STD_DDOF}, as np.std in Dassl's parse_test_res.py)."
HM_NOTE = ("HM = 2·B·N/(B+N) of the mean base and mean novel accuracies (its ± is the std of per-seed HMs); the "
           "Average row takes the mean base and mean novel over the datasets and their HM, as the papers compute "
           "it, not the mean of per-dataset HMs.")

# ---------------------------------------------------------------------------------------------------- helpers

def _sort_value(value: Any) -> tuple:
    if isinstance(value, (bool, np.bool_)):
        return (0, float(value), "")
    if isinstance(value, (int, float, np.integer, np.floating)) and not pd.isna(value):
        return (0, float(value), "")
    return (1, 0.0, str(value))


def labelled(frame: pd.DataFrame, protocol: str | Sequence[str] | None = None) -> pd.DataFrame:
    """Rows of ``protocol`` with ``label`` (:func:`run_labels`) and ``label_rank`` (table order) columns."""
    sub = frame if protocol is None else frame[frame["protocol"].isin(
        [protocol] if isinstance(protocol, str) else list(protocol))]
    sub = sub.copy()
    if sub.empty:
        return sub.assign(label=pd.Series(dtype=object), label_rank=pd.Series(dtype=int))
    sub["label"], ranks = run_labels(sub)
    order = sorted(ranks, key=lambda label: ranks[label])
    sub["label_rank"] = sub["label"].map({label: i for i, label in enumerate(order)})
    return sub


def run_labels(sub: pd.DataFrame) -> tuple[pd.Series, dict[str, tuple]]:
    """Per run the name tables give it, as ``jobs.config.run_label`` names runs: the method's display name (or the
    name of a variant it names itself, Tip-Adapter-F) plus the options its runs vary that this run sets off their
    defaults, by their display names (``HeBA [bottleneck ratio=2, init=Kaiming (all)]``); and per label its sort
    key (method order, then the option values)."""
    labels = pd.Series("", index=sub.index, dtype=object)
    ranks: dict[str, tuple] = {}
    for method, runs in sub.groupby("method.name", sort=False):
        axes, _, _, differing = ablation.off_defaults(runs, str(method))
        names = _AxisNames(runs)
        paper_names = (methods.card_of(str(method)) or {}).get("paper_names") or {}
        for (index, row), changed in zip(runs.iterrows(), differing):
            display = ref.run_display(row)
            named = {f"method.{k}" for k in paper_names.get(display, {})}  # Tip-Adapter-F says finetune itself
            parts = [f"{names(c)}={names.value(c, ablation.plain(row[c]))}" for c in axes
                     if c in changed and c not in named]
            label = display + (f" [{', '.join(parts)}]" if parts else "")
            labels[index] = label
            ranks.setdefault(label, (ref.method_rank(str(method)), bool(parts),
                                     tuple(_sort_value(row.get(a)) for a in axes)))
    return labels, ranks


def main_only(sub: pd.DataFrame) -> pd.DataFrame:
    """The runs of each method's main configuration (:func:`main_variants`): the method tables compare methods,
    an ablation's other configurations have their own tables."""
    return sub[sub["label"].isin(set(main_variants(sub).values()))] if len(sub) else sub


def main_variants(sub: pd.DataFrame) -> dict[str, str]:
    """Per method in a :func:`labelled` frame, the label of its main configuration: the runs with the fewest
    options off the method's defaults (from its card; none for a default run), the most runs among those, ties
    alphabetically. A variant the method names itself (Tip-Adapter-F) is a method of its own here, keyed by that
    name; the others are keyed by the registry name."""
    out = {}
    for method, runs in sub.groupby("method.name", sort=False):
        _, _, _, differing = ablation.off_defaults(runs, str(method))
        names = [ref.run_display(r) for _, r in runs.iterrows()]
        paper_names = (methods.card_of(str(method)) or {}).get("paper_names") or {}
        off = [len(d - {f"method.{k}" for k in paper_names.get(n, {})}) for d, n in zip(differing, names)]
        runs = runs.assign(_off=off, _name=names)
        for name, named in runs.groupby("_name", sort=False):
            pool = named[named["_off"] == named["_off"].min()]
            counts = pool.groupby("label").size().reset_index(name="runs").sort_values(["runs", "label"],
                                                                                       ascending=[False, True])
            key = str(method) if name == ref.method_display(str(method)) else str(name)
            out[key] = str(counts.iloc[0]["label"])
    return out


BASELINE = "zeroshot"
"""The method every other is compared with in the method tables and their significance table, unless named."""
TEST_COLUMNS = ["a", "b", "metric", "n_pairs", "mean_diff", "ci_low", "ci_high", "p_sign_flip", "p_holm",
                "significant", "wins", "ties", "losses", "datasets"]


def baseline_pairs(sub: pd.DataFrame, baseline: str = BASELINE) -> list[tuple[str, str]]:
    """(each method's main configuration, the baseline's) in table order, for a :func:`labelled` frame of one
    protocol; ``baseline`` names a method or a label, and where it has no run the first method is the baseline."""
    main = main_variants(sub)
    base = main.get(baseline, baseline)
    if base not in set(sub["label"]):
        base = main[sorted(main, key=ref.method_rank)[0]]
    return [(main[m], base) for m in sorted(main, key=ref.method_rank) if main[m] != base]


def paired_tests(sub: pd.DataFrame, pairs: Sequence[tuple[str, str]], n_boot: int = 10_000,
                 seed: int = 0) -> pd.DataFrame:
    """Label A against label B on the protocol's headline metric per run, paired over the runs sharing dataset,
    seed and shots (a :func:`labelled` frame of one protocol): mean difference, 95% bootstrap CI, sign-flip p and
    Holm's adjustment across these comparisons (:data:`TEST_COLUMNS`)."""
    protocol = str(sub["protocol"].iloc[0])
    metric = MAIN_METRIC[protocol]
    long = per_run_values(sub, ["label", "shots"])
    values = long[long["metric"] == metric].pivot_table(index=["dataset", "shots", "seed"], columns="label",
                                                         values="value")
    rows = []
    for a, b in pairs:
        both = values[[a, b]].dropna() if a in values and b in values else pd.DataFrame()
        if both.empty:
            continue
        result = paired_comparison(both[a], both[b], n_boot=n_boot, seed=seed)
        rows.append({"a": a, "b": b, "metric": metric, "n_pairs": result.n, "mean_diff": result.mean_diff,
                     "ci_low": result.ci_low, "ci_high": result.ci_high, "p_sign_flip": result.p_value,
                     "wins": result.wins, "ties": result.ties, "losses": result.losses,
                     "datasets": ",".join(sorted(both.index.unique("dataset")))})
    tests = pd.DataFrame(rows, columns=[c for c in TEST_COLUMNS if c not in ("p_holm", "significant")])
    tests["p_holm"] = holm(list(tests["p_sign_flip"])) if len(tests) else []
    tests["significant"] = tests["p_holm"] < ablation.ALPHA
    return tests[TEST_COLUMNS]


def _label_order(sub: pd.DataFrame) -> list[str]:
    return list(sub.drop_duplicates("label").sort_values("label_rank")["label"])


def _count(n: int, noun: str) -> str:
    """``1 dataset``, ``11 datasets``."""
    return f"{n} {noun}" if n == 1 else f"{n} {noun}s"


def _seeds(n: pd.Series) -> str:
    """``3 seeds``, ``1 seed``, or ``1–3 seeds (†: fewer)`` when cells differ in their number of seeds."""
    n = n[n > 0]
    if n.empty:
        return "0 seeds"
    low, high = int(n.min()), int(n.max())
    if low == high:
        return _count(high, "seed")
    return f"{low}–{high} seeds (†: fewer than {high})"


def backbone_display(name: str) -> str:
    """A backbone as papers name it: ``ViT-B-16-quickgelu`` -> ``ViT-B/16``; a local file or folder by its name,
    never its path."""
    text = str(name)
    if text.startswith(("/", ".", "~", "local-dir:")) or text.endswith((".json", ".pt", ".pth", ".bin",
                                                                            ".safetensors")):
        return Path(text.split(":", 1)[-1] if text.startswith("local-dir:") else text).stem
    return re.sub(r"^(ViT-[A-Za-z]+)-(\d+)$", r"\1/\2", ref.normalize_backbone(text))


def _context(sub: pd.DataFrame) -> str:
    """Backbone(s) and shots of a subset, for captions."""
    backbones = ", ".join(sorted({backbone_display(b) for b in sub["backbone"].unique()}))
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
        notes += _provenance_notes(rows, found.get("display") or method)
    return notes


def _provenance_notes(rows: pd.DataFrame, name: str) -> list[str]:
    """Which choices behind ``rows`` (one method's runs) differ from the official code's: the precision they
    computed in (``env.precision_note``, e.g. fp32 on a CPU where the official code runs fp16) and released
    checkpoints they evaluated (``method.checkpoint``)."""
    notes = []
    if "env.precision_note" in rows:
        for text in sorted({t for t in rows["env.precision_note"].dropna() if t}):
            notes.append(f"{name}: {text}.")
    if "method.checkpoint" in rows:
        files = sorted({Path(str(p)).name for p in rows["method.checkpoint"].dropna() if p})
        if files:
            notes.append(f"{name}: evaluated from the released checkpoint(s) {', '.join(files)}.")
    return notes


def _stat(tidy: pd.DataFrame, index: Sequence[str]) -> dict[tuple, pd.Series]:
    """``{(index values...): row}`` for quick lookup."""
    return {tuple(row[c] for c in index): row for _, row in tidy.iterrows()}


def _caption(*parts: str) -> str:
    return " ".join(p.strip() for p in parts if p and p.strip())


def _display_dataset(key: str) -> str:
    return "Average" if key == "Average" else ref.dataset_display(key)


# ---------------------------------------------------------------------------------------------- base-to-novel

def base2novel_tables(frame: pd.DataFrame, baseline: str = BASELINE) -> list[Table]:
    """Base-to-novel as CoCoOp's and MaPLe's Table 1: the compact main table (HM per dataset and the Average, one
    row per method; full text width), then the Average sub-table and one sub-table per dataset (Base, Novel, HM;
    column width). The Average's HM is the HM of the averaged base and novel, as the papers compute it. A ``*`` on
    a method's Average HM: its per-run HM differs from the ``baseline``'s significantly after Holm's correction
    (:func:`paired_tests`, as the significance table reports it)."""
    sub = main_only(labelled(frame, "base2novel"))
    if sub.empty:
        return []
    tests = paired_tests(sub, baseline_pairs(sub, baseline))
    starred = set(tests.loc[tests["significant"], "a"])
    long = per_run_values(sub, ["label"])
    datasets = ref.dataset_order(sub["dataset"].unique())
    average, average_seeds = dataset_average(long, ["label"], datasets)
    tidy = pd.concat([average, seed_cells(long, ["label"])], ignore_index=True)
    lookup = _stat(tidy, ["dataset", "label", "metric"])
    labels = _label_order(sub)
    numbers = tidy.rename(columns={"label": "method"})[["dataset", "method", "metric", *STAT_COLUMNS]]
    per_seed = pd.concat([long, average_seeds], ignore_index=True).rename(columns={"label": "method"})
    notes = [HM_NOTE, STD_NOTE, "Methods without a run on every dataset show – in the Average.", *_notes(sub)]
    context = f"{_context(sub)}, {_seeds(tidy['n'])}"
    columns = [*datasets, "Average"]
    headers = [_display_dataset(d) for d in columns]
    values = [[_mean(lookup.get((d, label, "hm"))) for d in columns] for label in labels]
    texts = [[fmt_number(v) for v in row[:-1]] + [fmt_number(row[-1]) + ("*" if label in starred else "")]
             for label, row in zip(labels, values)]
    against = ref.method_display(tests["b"].iloc[0]) if len(tests) else ""
    main = _method_grid("base2novel", "Base-to-novel generalisation: HM per dataset", labels, headers, values,
                        f"Base-to-novel generalisation ({context}): harmonic mean (HM, %) of base- and novel-class "
                        f"accuracy on each of the {_count(len(datasets), 'dataset')} and on average"
                        + (f"; * differs from {against} significantly (paired over datasets and seeds, Holm)."
                           if against else "."), numbers, per_seed, notes, texts=texts, rotate=True)
    tables = [main]
    n_max = int(tidy["n"].max())
    for dataset in ["Average", *datasets]:
        present = [label for label in labels if (dataset, label, "base") in lookup]
        stats = [[lookup[(dataset, label, m)] for m in ("base", "novel", "hm")] for label in present]
        where = (f"averaged over the {_count(len(datasets), 'dataset')}" if dataset == "Average"
                 else f"on {ref.dataset_display(dataset)}")
        table = _method_grid(
            f"base2novel_{_slug(_display_dataset(dataset))}", f"Base-to-novel: {_display_dataset(dataset)}",
            present, ["Base", "Novel", "HM"], [[s["mean"] for s in row] for row in stats],
            f"Base-to-novel accuracy (%) {where} ({context}): base classes, novel classes and their HM.",
            numbers[numbers["dataset"] == dataset], None, notes,
            texts=[[fmt_mean_std(s["mean"], s["std"], s["n"], n_max) for s in row] for row in stats])
        tables.append(table)
    return tables


def _mean(stats: pd.Series | None) -> float:
    return np.nan if stats is None else float(stats["mean"])


def _method_grid(name: str, title: str, labels: list[str], headers: list[str], values: list[list[float]],
                 caption: str, numbers: pd.DataFrame, per_seed: pd.DataFrame | None, notes: list[str],
                 texts: list[list[str]] | None = None, rotate: bool = False,
                 higher_is_better: bool | Sequence[bool] = True) -> Table:
    """A methods x columns table as the papers print them: one row per method, the best of each column in bold and
    the second best underlined; ``texts`` default to the means at two decimals."""
    value_frame = pd.DataFrame(values, columns=headers, dtype=float)
    shown = texts or [[fmt_number(v) for v in row] for row in values]
    cells = pd.DataFrame([[label, *row] for label, row in zip(labels, shown)], columns=["Method", *headers])
    unmarked = pd.DataFrame(False, index=cells.index, columns=["Method"])
    bold = pd.concat([unmarked, best_mask(value_frame, higher_is_better)], axis=1)
    second = pd.concat([unmarked, second_mask(value_frame, higher_is_better)], axis=1)
    return Table(name, title, caption, cells, bold, numbers, per_seed, n_label_cols=1, notes=[n for n in notes if n],
                 second=second, rotate_headers=rotate, environment="table*" if rotate else "table")


def base2novel_table(frame: pd.DataFrame) -> Table | None:
    """The compact main base-to-novel table (:func:`base2novel_tables`), or None without base-to-novel runs."""
    tables = base2novel_tables(frame)
    return tables[0] if tables else None


# ------------------------------------------------------------------------------------------------- ablations

def ablation_tables(frame: pd.DataFrame) -> list[Table]:
    """The papers' ablation tables, inferred from the runs (:mod:`analysis.ablation`): per method and protocol one
    table per factor (levels around the defaults, the default row marked), one per cross, and for each of them the
    per-dataset variant when it spans several datasets."""
    found = ablation.studies(frame)
    tables = []
    for key in dict.fromkeys((s.protocol, s.method) for s in found):
        family = [s for s in found if (s.protocol, s.method) == key]
        tests = ablation.comparisons(family)
        for study in family:
            tables.append(study_table(study, tests))
            wide = study_datasets_table(study)
            if wide is not None:
                tables.append(wide)
    return tables


def study_name(study: ablation.Study) -> str:
    """File and label name of a study's table (``ablation_heba_base2novel_bottleneck-ratio``)."""
    return f"ablation_{study.method}_{study.protocol}_{study.slug}"


def _level_rows(study: ablation.Study) -> list[tuple[str, list[str]]]:
    """``(level, label cells)`` in the order of the option values, the default row's last label marked."""
    firsts = study.runs.drop_duplicates(ablation.LEVEL)
    rows = []
    for _, run in firsts.iterrows():
        labels = [study.value_display(o, run[o]) for o in study.options]
        if run[ablation.LEVEL] == study.default_level:
            labels[-1] += f" ({study.default_mark()})"
        rows.append((run[ablation.LEVEL], labels, tuple(_sort_value(run[o]) for o in study.options)))
    return [(level, labels) for level, labels, _ in sorted(rows, key=lambda r: r[2])]


def study_table(study: ablation.Study, tests: pd.DataFrame | None = None) -> Table:
    """One factor (or cross) of an ablation: a row per level, the protocol's metrics averaged over the datasets,
    the difference of the headline metric to the default row (``*``: significant after Holm's correction across the
    method's ablation, ``tests`` from :func:`analysis.ablation.comparisons`) and the number of seeds."""
    tidy, long, datasets, excluded = ablation.averages(study)
    metrics, main = _protocol_metrics(study.protocol), MAIN_METRIC[study.protocol]
    lookup = _stat(tidy, [ablation.LEVEL, "metric"])
    n_max = int(tidy["n"].max()) if len(tidy) else 0
    tests = tests if tests is not None else ablation.comparisons([study])
    significant = {row["level"] for _, row in tests[(tests["study"] == study.slug) & tests["significant"]].iterrows()}
    default = lookup.get((study.default_level, main))
    headers = [study.option_display(o) for o in study.options]
    names = [METRIC_NAMES.get(m, m) for m in metrics]
    delta_name = f"Δ {METRIC_NAMES.get(main, main)}"
    rows, values = [], []
    for level, labels in _level_rows(study):
        stats = [lookup.get((level, m)) for m in metrics]
        head = lookup.get((level, main))
        if level == study.default_level or default is None or head is None:
            delta = MISSING
        else:
            delta = _signed(head["mean"] - default["mean"]) + ("*" if level in significant else "")
        seeds = MISSING if head is None else str(int(head["n"]))
        rows.append([*labels, *[_cell(s, n_max) for s in stats], delta, seeds])
        values.append([np.nan if s is None else s["mean"] for s in stats])
    cells = pd.DataFrame(rows, columns=[*headers, *names, delta_name, "Seeds"])
    value_frame = pd.DataFrame(values, columns=names)
    unmarked = pd.DataFrame(False, index=cells.index, columns=headers)
    tail = pd.DataFrame(False, index=cells.index, columns=[delta_name, "Seeds"])
    bold = pd.concat([unmarked, best_mask(value_frame), tail], axis=1)
    second = pd.concat([unmarked, second_mask(value_frame), tail], axis=1)
    method = ref.method_display(study.method)
    what = (f"every configuration of {study.title()}" if study.kind == "cross" else study.long_title())
    left_out = (f" ({', '.join(ref.dataset_display(d) for d in excluded)} left out: not every configuration has "
                "them)" if excluded else "")
    caption = _caption(
        f"{method} ablation of {what} ({PROTOCOL_NAMES[study.protocol]}, {_context(study.runs)}): "
        f"{_metric_text(study.protocol)} averaged over {_count(len(datasets), 'dataset')}{left_out} and "
        f"{_seeds(tidy['n'])}; all other options at their defaults.",
        f"{delta_name}: difference to the {study.default_mark()} row; * significant after Holm's correction "
        f"(p < {ablation.ALPHA}, paired over datasets and seeds).")
    notes = [_default_note(study), HM_NOTE if study.protocol == "base2novel" else "",
             "Cells are means; their std over seeds is in the CSV.", STD_NOTE,
             *_notes(study.runs)]
    shown = {level: " / ".join(labels) for level, labels in _level_rows(study)}
    numbers = tidy.assign(**{_bare(o): tidy[ablation.LEVEL].map(_level_values(study, o)) for o in study.options},
                          level_display=tidy[ablation.LEVEL].map(shown))
    return Table(study_name(study), f"Ablation: {method}, {study.title()}", caption, cells, bold,
                 numbers.drop(columns=ablation.LEVEL), long.drop(columns=ablation.LEVEL).assign(
                     **{_bare(o): long[ablation.LEVEL].map(_level_values(study, o)) for o in study.options}),
                 n_label_cols=len(headers), notes=[n for n in notes if n], second=second,
                 std="none")  # means, as ablation tables print them: the ± are in the CSV, Δ carries the test


def study_datasets_table(study: ablation.Study) -> Table | None:
    """The wide variant of a study's table: the headline metric per dataset and the Average, one row per level
    (None with a single dataset)."""
    _, long, datasets, _ = ablation.averages(study)
    if len(datasets) < 2:
        return None
    main = MAIN_METRIC[study.protocol]
    average, _ = dataset_average(long, [ablation.LEVEL], datasets)
    tidy = pd.concat([seed_cells(long[long["dataset"].isin(datasets)], [ablation.LEVEL]), average],
                     ignore_index=True)
    lookup = _stat(tidy[tidy["metric"] == main], [ablation.LEVEL, "dataset"])
    headers = [study.option_display(o) for o in study.options]
    columns = [*(ref.dataset_display(d) for d in datasets), "Average"]
    rows, values = [], []
    for level, labels in _level_rows(study):
        stats = [lookup.get((level, d)) for d in [*datasets, "Average"]]
        rows.append([*labels, *[fmt_number(np.nan if s is None else s["mean"]) for s in stats]])
        values.append([np.nan if s is None else s["mean"] for s in stats])
    cells = pd.DataFrame(rows, columns=[*headers, *columns])
    value_frame = pd.DataFrame(values, columns=columns)
    unmarked = pd.DataFrame(False, index=cells.index, columns=headers)
    method = ref.method_display(study.method)
    metric = METRIC_NAMES.get(main, main)
    caption = _caption(f"{method} ablation of {study.title()} per dataset ({PROTOCOL_NAMES[study.protocol]}, "
                       f"{_context(study.runs)}): {metric} (%) per dataset and their Average, mean over "
                       f"{_seeds(tidy['n'])}; all other options at their defaults.")
    return Table(study_name(study) + "_datasets", f"Ablation per dataset: {method}, {study.title()}", caption,
                 cells, pd.concat([unmarked, best_mask(value_frame)], axis=1), tidy.drop(columns=ablation.LEVEL)
                 .assign(**{_bare(o): tidy[ablation.LEVEL].map(_level_values(study, o)) for o in study.options}),
                 None, n_label_cols=len(headers), second=pd.concat([unmarked, second_mask(value_frame)], axis=1),
                 notes=[HM_NOTE] if study.protocol == "base2novel" else [], rotate_headers=len(datasets) > 3,
                 environment="table*" if len(datasets) > 3 else "table")


def _level_values(study: ablation.Study, option: str) -> dict[str, Any]:
    """``{level: value of option}`` for the CSV columns."""
    return dict(zip(study.runs[ablation.LEVEL], study.runs[option].map(ablation.plain)))


def _default_note(study: ablation.Study) -> str:
    sources = {"official": "the official code's setting", "paper": "the paper's setting",
               "suite": "the suite's choice (no official value)", "most runs": "the value most runs have (no "
               "documented default)"}
    parts = [f"{study.option_display(o)} = {study.value_display(o, study.defaults[o])}: "
             f"{sources.get(study.default_source[o], study.default_source[o])}" for o in study.options]
    return f"Default row of {ref.method_display(study.method)} ({'; '.join(parts)})."


def _bare(column: str) -> str:
    return column[len("method."):] if column.startswith("method.") else column


def ablation_table(frame: pd.DataFrame, rows: Sequence[str], cols: Sequence[str] | None = None,
                   metric: str | None = None, method: str | None = None, protocol: str | None = None,
                   name: str | None = None) -> Table:
    """An ablation over any config columns: ``rows`` (and optionally ``cols``) are the axes.

    Every cell is averaged over the datasets of the subset (HM of the averaged base and novel for base-to-novel)
    and over seeds. Without ``cols`` the columns are the protocol's metrics; with ``cols`` the cells hold
    ``metric`` (default: the protocol's headline metric) for each combination of the ``cols`` values. Options that
    vary in ``frame`` but are neither rows nor columns are pooled in the cells, and the caption says which and how
    many configurations a cell pools (:func:`ablation_tables` never pools).
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
    datasets, excluded = ablation.common_datasets(long, keys)
    tidy, per_seed = dataset_average(long, keys, datasets)
    metrics = _protocol_metrics(protocol)
    shown_metric = metric or MAIN_METRIC[protocol]
    display = _AxisNames(sub)
    if cols:
        cells, values = _ablation_pivot(tidy, rows, cols, shown_metric, display)
    else:
        cells, values = _ablation_flat(tidy, rows, metrics, display)
    bold = pd.concat([pd.DataFrame(False, index=cells.index, columns=cells.columns[:len(rows)]),
                      best_mask(values)], axis=1)
    methods_text = ", ".join(ref.method_display(m) for m in sorted(sub["method.name"].unique(), key=ref.method_rank))
    what = (f"{METRIC_NAMES.get(shown_metric, shown_metric)} for each {' × '.join(display(c) for c in cols)}"
            if cols else _metric_text(protocol))
    left_out = (f" ({', '.join(ref.dataset_display(d) for d in excluded)} left out: not every configuration has "
                "them)" if excluded else "")
    caption = _caption(
        f"{methods_text} ablation over {' × '.join(display(c) for c in keys)} ({PROTOCOL_NAMES[protocol]}, "
        f"{_context(sub)}): {what} averaged over {_count(len(datasets), 'dataset')}{left_out} and "
        f"{_seeds(tidy['n'])}.", _pooled_text(sub, keys, display))
    name = name or "ablation_" + "_".join(
        [str(m) for m in sorted(sub["method.name"].unique())] + [_bare(c) for c in keys])
    notes = [HM_NOTE if protocol == "base2novel" else "", STD_NOTE, *_notes(sub)]
    return Table(_slug(name), f"Ablation: {methods_text} over {', '.join(display(c) for c in keys)}", caption, cells,
                 bold, tidy.rename(columns=_bare),
                 pd.concat([long, per_seed], ignore_index=True).rename(columns=_bare), n_label_cols=len(rows),
                 group_col=display(rows[0]) if len(rows) > 1 else None, notes=[n for n in notes if n])


class _AxisNames:
    """Display names of config columns and their values for the (first) method of a subset: the option's display
    name and value names from the method's card; other columns as they are."""

    def __init__(self, sub: pd.DataFrame) -> None:
        names = sorted(sub["method.name"].dropna().unique(), key=ref.method_rank)
        self.method = str(names[0]) if names else ""

    def __call__(self, column: str) -> str:
        if column.startswith("method.") and self.method:
            return methods.option_display(self.method, _bare(column))
        return column.rpartition(".")[2].replace("_", " ")  # optim.lr -> lr: no display name is declared

    def value(self, column: str, value: Any) -> str:
        if column.startswith("method.") and self.method:
            return methods.value_display(self.method, _bare(column), value)
        return _value(value)


def _pooled_text(sub: pd.DataFrame, keys: list[str], display: _AxisNames) -> str:
    """The caption sentence saying which varied options a cell pools, or "" when it pools none."""
    others = [a for a in variant_axes(sub) if a not in keys]
    if not others:
        return ""
    per_cell = sub.groupby(keys, dropna=False)[others].apply(
        lambda g: len(g.astype(str).drop_duplicates()))
    low, high = int(per_cell.min()), int(per_cell.max())
    span = str(high) if low == high else f"{low}–{high}"
    return (f"Each cell pools {span} configurations of {', '.join(display(o) for o in others)} "
            "(not held at their defaults).")


def _protocol_metrics(protocol: str) -> list[str]:
    if protocol == "base2novel":
        return ["base", "novel", "hm"]
    if protocol == "fewshot":
        return ["accuracy"]
    return ["source", "average"]


def _metric_text(protocol: str) -> str:
    return {"base2novel": "base, novel and harmonic-mean (HM) accuracy (%)", "fewshot": "test accuracy (%)"}.get(
        protocol, "source and average target accuracy (%)")


def _ablation_flat(tidy: pd.DataFrame, rows: list[str], metrics: list[str],
                   display: _AxisNames) -> tuple[pd.DataFrame, pd.DataFrame]:
    lookup = _stat(tidy, [*rows, "metric"])
    combos = sorted({tuple(r[c] for c in rows) for _, r in tidy.iterrows()},
                    key=lambda t: tuple(_sort_value(v) for v in t))
    n_max = int(tidy["n"].max())
    out, values = [], []
    for combo in combos:
        stats = [lookup.get((*combo, m)) for m in metrics]
        out.append([display.value(c, v) for c, v in zip(rows, combo)] + [_cell(s, n_max) for s in stats])
        values.append([np.nan if s is None else s["mean"] for s in stats])
    headers = [display(c) for c in rows]
    names = [METRIC_NAMES.get(m, m) for m in metrics]
    return pd.DataFrame(out, columns=headers + names), pd.DataFrame(values, columns=names)


def _ablation_pivot(tidy: pd.DataFrame, rows: list[str], cols: list[str], metric: str,
                    display: _AxisNames) -> tuple[pd.DataFrame, pd.DataFrame]:
    sub = tidy[tidy["metric"] == metric]
    if sub.empty:
        raise ValueError(f"metric {metric!r} not available (have {sorted(tidy['metric'].unique())})")
    lookup = _stat(sub, [*rows, *cols])

    def ordered(columns: list[str]) -> list[tuple]:
        return sorted({tuple(r[c] for c in columns) for _, r in sub.iterrows()},
                      key=lambda t: tuple(_sort_value(v) for v in t))
    row_combos, col_combos = ordered(rows), ordered(cols)
    n_max = int(sub["n"].max())
    col_names = [", ".join(f"{display(c)} {display.value(c, v)}" for c, v in zip(cols, combo)) for combo in col_combos]
    out, values = [], []
    for rc in row_combos:
        stats = [lookup.get((*rc, *cc)) for cc in col_combos]
        out.append([display.value(c, v) for c, v in zip(rows, rc)] + [_cell(s, n_max) for s in stats])
        values.append([np.nan if s is None else s["mean"] for s in stats])
    return (pd.DataFrame(out, columns=[display(c) for c in rows] + col_names),
            pd.DataFrame(values, columns=col_names))


def _cell(stats: pd.Series | None, n_max: int) -> str:
    return MISSING if stats is None else fmt_mean_std(stats["mean"], stats["std"], stats["n"], n_max)


def _value(value: Any) -> str:
    if isinstance(value, float) and value.is_integer():
        return str(int(value))
    return str(value)


def _slug(text: str) -> str:
    return "".join(c if c.isalnum() or c in "-_" else "_" for c in text).strip("_")


# ----------------------------------------------------------------------------------------------------- k-shot

def kshot_tables(frame: pd.DataFrame) -> list[Table]:
    """Few-shot as CoOp's Figure 3 in numbers: accuracy per shots (columns) for each method, averaged over the
    datasets (``kshot``), then one such table per dataset."""
    sub = main_only(labelled(frame, "fewshot"))
    if sub.empty:
        return []
    long = per_run_values(sub, ["label", "shots"])
    datasets = ref.dataset_order(sub["dataset"].unique())
    average, average_seeds = dataset_average(long, ["label", "shots"], datasets)
    tidy = pd.concat([average, seed_cells(long, ["label", "shots"])], ignore_index=True)
    lookup = _stat(tidy, ["dataset", "label", "shots"])
    shots = sorted(sub["shots"].unique())
    n_max = int(tidy["n"].max())
    headers = [f"{k}-shot" for k in shots]
    numbers = tidy.rename(columns={"label": "method"})[["dataset", "method", "shots", "metric", *STAT_COLUMNS]]
    per_seed = pd.concat([long, average_seeds], ignore_index=True).rename(columns={"label": "method"})
    notes = [STD_NOTE, "– where a method has no run with that number of shots.", *_notes(sub)]
    tables = []
    for dataset in ["Average", *datasets]:
        labels = [label for label in _label_order(sub)
                  if any((dataset, label, k) in lookup for k in shots) or dataset == "Average"]
        stats = [[lookup.get((dataset, label, k)) for k in shots] for label in labels]
        where = (f"averaged over the {_count(len(datasets), 'dataset')}" if dataset == "Average"
                 else f"on {ref.dataset_display(dataset)}")
        name = "kshot" if dataset == "Average" else f"kshot_{_slug(ref.dataset_display(dataset))}"
        tables.append(_method_grid(
            name, f"Few-shot accuracy vs shots: {_display_dataset(dataset)}", labels, headers,
            [[_mean(s) for s in row] for row in stats],
            f"Few-shot classification ({', '.join(sorted({backbone_display(b) for b in sub['backbone'].unique()}))}, "
            f"{_seeds(tidy['n'])})"
            f": test accuracy (%) {where} with k labelled images per class.",
            numbers if dataset == "Average" else numbers[numbers["dataset"] == dataset],
            per_seed if dataset == "Average" else None, notes,
            texts=[[_cell(s, n_max) for s in row] for row in stats]))
    return tables


def kshot_table(frame: pd.DataFrame) -> Table | None:
    """The few-shot table averaged over the datasets (:func:`kshot_tables`), or None without few-shot runs."""
    tables = kshot_tables(frame)
    return tables[0] if tables else None


# --------------------------------------------------------------------------------------- cross-dataset and DG

def transfer_table(frame: pd.DataFrame, protocol: str) -> Table | None:
    """Cross-dataset or domain-generalisation table: source accuracy, every target, and the average over targets."""
    if protocol not in TRANSFER_PROTOCOLS:
        raise ValueError(f"transfer_table needs one of {TRANSFER_PROTOCOLS}, got {protocol!r}")
    sub = main_only(labelled(frame, protocol))
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
    value_frame = pd.DataFrame(means, columns=headers)
    unmarked = pd.DataFrame(False, index=cells.index, columns=labels)
    bold = pd.concat([unmarked, best_mask(value_frame, groups=groups)], axis=1)
    second = pd.concat([unmarked, second_mask(value_frame, groups=groups)], axis=1)
    _, paper_targets = ref.AVERAGE_NAMES[protocol]
    paper_note = ("" if set(targets) == set(paper_targets) else
                  f"The papers average {len(paper_targets)} targets; these runs have {len(targets)}.")
    kind = ("Cross-dataset transfer" if protocol == "cross_dataset" else "Domain generalisation")
    caption = _caption(
        f"{kind} ({_context(sub)}, {_seeds(tidy['n'])}): accuracy (%) on the source dataset the methods are "
        f"trained on and on {_count(len(targets), 'target dataset')} without further training; Average over the "
        "targets.")
    notes = ["Average: mean over the targets (source excluded) per seed, then over seeds.",
             "With more than 4 targets the cells are means; their std over seeds is in the CSV.", STD_NOTE, paper_note,
             *_notes(sub)]
    numbers = tidy.rename(columns={"label": "method", "dataset": "source_dataset"})
    per_seed = long.rename(columns={"label": "method", "dataset": "source_dataset"})
    name = "cross_dataset" if protocol == "cross_dataset" else "dg"
    return Table(name, kind, caption, cells, bold, numbers, per_seed, n_label_cols=len(labels),
                 group_col=None if single else "Source dataset", notes=[n for n in notes if n], second=second,
                 rotate_headers=len(targets) > 4, std="none" if len(targets) > 4 else None)  # as the papers: means


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
        sub = main_only(sub)
        for label in _label_order(sub):
            runs = sub[sub["label"] == label]
            entry = {"protocol": protocol, "method": label, "runs": len(runs)}
            texts, means = [], []
            for column, _, _ in COST_COLUMNS:
                series = pd.to_numeric(runs[column] if column in runs else pd.Series(dtype=float),
                                       errors="coerce").dropna()  # a cost a record lacks: not recorded
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
        f"Cost per run on {devices or 'the recorded device'}: trainable parameters, training time (s), training "
        "images per second and peak memory (MiB) of each method's default configuration, mean over its runs; best "
        "per protocol in bold.")
    notes = ["Trainable parameters: min–max where they differ (e.g. with the number of classes). Train time: wall "
             "time without setup and evaluation. Peak memory: CUDA max allocated, or the process's peak resident set "
             "size on CPU. Mean ± std over all runs of the method in that protocol (datasets × seeds × shots); – "
             "where not recorded (nothing trained).", STD_NOTE]
    return Table("cost", "Cost: parameters, time, throughput, memory", caption, cells, bold,
                 pd.DataFrame(numbers), None, n_label_cols=2, group_col="Protocol", notes=notes)


def _params_text(series: pd.Series) -> str:
    if series.empty:
        return MISSING
    low, high = series.min(), series.max()
    return fmt_count(low) if low == high else f"{fmt_count(low)}–{fmt_count(high)}"


__all__ = ["labelled", "base2novel_table", "ablation_table", "ablation_tables", "kshot_table", "transfer_table",
           "cost_table", "main_variants", "main_only", "baseline_pairs", "paired_tests", "BASELINE", "TEST_COLUMNS", "run_labels", "base2novel_tables", "kshot_tables", "study_table",
           "study_datasets_table", "METRIC_NAMES", "PROTOCOL_NAMES", "STD_NOTE", "HM_NOTE"]
