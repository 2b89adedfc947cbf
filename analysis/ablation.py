"""Ablations as the papers show them: one table per factor around the method's defaults, crosses said as crosses.

A grid's ``variants`` blocks are not needed: the studies are inferred from the runs themselves. For each method
and protocol, every run is compared with the method's defaults (from the method's card, so without importing the
method) on the config columns that vary between its runs (:func:`analysis.records.variant_axes`):

- a run at every default is the **default row**, shared by every study of that method;
- a run that differs in one option, or only in options of one named factor group (HeBA's ``heterogeneity`` =
  visual x text adapter kinds), is a **level of that factor**: one table per factor, its rows the levels and the
  default row, every other option at its default, so no cell pools configurations;
- runs that differ in several options that no factor group covers are a **cross**: options whose multi-option runs
  overlap form one cross, and its table lists every configuration of it (default and one-factor runs of those
  options included) with each crossed option in its own column.

A configuration option without a documented default (a non-method key such as ``optim.lr``) takes as its default
the value most runs have; the notes file says so. Each level is compared with the default row, paired over dataset x
seed on the protocol's headline metric per run (:func:`comparisons`), with Holm's correction across all the
comparisons of one method's ablation (the family its significance table shows).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Sequence

import numpy as np
import pandas as pd

from analysis import methods
from analysis import reference as ref
from analysis.aggregate import MAIN_METRIC, dataset_average, per_run_values
from analysis.records import variant_axes
from analysis.stats import holm, paired_comparison

LEVEL = "level"
"""Column naming a run's configuration within a study (the JSON text of its values of the study's options)."""
ALPHA = 0.05
"""Significance level of the marks in the ablation tables (after Holm's correction)."""


@dataclass(eq=False)
class Study:
    """One ablation table's worth of runs.

    ``kind`` is ``"factor"`` (one option or one factor group varied around the defaults) or ``"cross"``;
    ``options`` are the config columns it varies (``method.bottleneck_ratio``), ``defaults`` their defaults,
    ``default_source`` per option where the default comes from (``official``, ``paper``, ``suite``, or
    ``most runs`` for a column no card documents); ``runs`` hold a :data:`LEVEL` column.
    """

    method: str
    protocol: str
    name: str
    kind: str
    options: tuple[str, ...]
    defaults: dict[str, Any]
    default_source: dict[str, str]
    runs: pd.DataFrame = field(repr=False)

    @property
    def default_level(self) -> str:
        """The :data:`LEVEL` of the default configuration."""
        return level_key([self.defaults[o] for o in self.options])

    @property
    def slug(self) -> str:
        """File-name part naming the study (``bottleneck-ratio``, ``cross-init-bottleneck-ratio``)."""
        words = self.name if self.kind == "factor" else "cross " + " ".join(sorted(_bare(o) for o in self.options))
        return "".join(c if c.isalnum() else "-" for c in words.replace("_", " ")).strip("-").lower()

    def option_display(self, column: str) -> str:
        """How the table names a varied column (the option's display name)."""
        return methods.option_display(self.method, _bare(column)) if column.startswith("method.") else column

    def value_display(self, column: str, value: Any) -> str:
        """How the table names a value of a varied column."""
        return methods.value_display(self.method, _bare(column), value)

    def title(self) -> str:
        """``bottleneck ratio``, ``heterogeneity`` (a factor group's name); a cross names its options."""
        names = [self.option_display(o) for o in self.options]
        if self.kind == "cross":
            return " × ".join(names)
        return names[0] if len(names) == 1 and _bare(self.options[0]) == self.name else self.name.replace("_", " ")

    def long_title(self) -> str:
        """:meth:`title`, a factor group followed by its options: ``heterogeneity (visual adapter, text adapter)``."""
        if self.kind == "factor" and not (len(self.options) == 1 and _bare(self.options[0]) == self.name):
            return f"{self.title()} ({', '.join(self.option_display(o) for o in self.options)})"
        return self.title()

    def default_mark(self) -> str:
        """What the default row is called: ``paper`` where every varied default is the official or paper setting,
        ``default`` where the suite chose one, ``reference`` where one is only the most common value."""
        sources = {self.default_source[o] for o in self.options}
        if sources <= {"official", "paper"}:
            return "paper"
        return "reference" if "most runs" in sources else "default"


def level_key(values: Sequence[Any]) -> str:
    """The :data:`LEVEL` text of a configuration (values as JSON, so lists and numbers compare as in the card)."""
    return "|".join(methods.json_key(plain(v)) for v in values)


def plain(value: Any) -> Any:
    """A frame value as plain Python (NaN -> None, numpy scalars -> Python), to compare with a card's default."""
    if value is None or (isinstance(value, float) and np.isnan(value)):
        return None
    if isinstance(value, np.generic):
        return value.item()
    return value


def _bare(column: str) -> str:
    return column[len("method."):] if column.startswith("method.") else column


# -------------------------------------------------------------------------------------------------- inference

def studies(frame: pd.DataFrame) -> list[Study]:
    """Every study of every (protocol, method) whose runs vary, in table order (method, then factors, crosses)."""
    found: list[Study] = []
    for (protocol, method), sub in frame.groupby(["protocol", "method.name"], sort=False):
        found += _method_studies(sub, str(protocol), str(method))
    return sorted(found, key=lambda s: (list(ref.AVERAGE_NAMES).index(s.protocol) if s.protocol in ref.AVERAGE_NAMES
                                        else 99, methods.method_rank(s.method), s.kind != "factor"))


def off_defaults(sub: pd.DataFrame, method: str) -> tuple[list[str], dict[str, Any], dict[str, str],
                                                           list[frozenset[str]]]:
    """For the runs of one method (and protocol): the varied columns, their defaults, where each default comes
    from, and per run the set of columns it sets off their defaults (empty: the default configuration)."""
    key = (method, tuple(sub["run_id"]))
    if key not in _OFF_DEFAULTS:  # every table asks again for the same runs: the answer is computed once
        axes = variant_axes(sub)
        defaults, sources = {}, {}
        for column in axes:
            defaults[column], sources[column] = _default_of(sub, method, column)
        texts = {c: methods.json_key(defaults[c]) for c in axes}
        differing = [frozenset(c for c, v in row.items() if methods.json_key(plain(v)) != texts[c])
                     for row in sub[axes].to_dict("records")]
        if len(_OFF_DEFAULTS) > 512:
            _OFF_DEFAULTS.clear()
        _OFF_DEFAULTS[key] = (axes, defaults, sources, differing)
    return _OFF_DEFAULTS[key]


_OFF_DEFAULTS: dict[tuple, tuple[list[str], dict[str, Any], dict[str, str], list[frozenset[str]]]] = {}
""":func:`off_defaults` per (method, run ids in order); run ids name their configs, so an entry never goes stale."""


def _method_studies(sub: pd.DataFrame, protocol: str, method: str) -> list[Study]:
    axes, defaults, sources, differing = off_defaults(sub, method)
    if not axes:
        return []
    groups = {name: frozenset(f"method.{o}" for o in options)
              for name, options in methods.factor_groups(method).items()}
    factors: dict[str, frozenset[str]] = {}
    multi: list[frozenset[str]] = []
    for changed in set(differing):
        if not changed:
            continue
        group = next((name for name, members in groups.items() if changed <= members), None)
        if group is not None:
            factors[group] = frozenset(c for c in groups[group] if c in axes)
        elif len(changed) == 1:
            factors[_bare(next(iter(changed)))] = changed
        else:
            multi.append(changed)
    # options that name a variant the method publishes as a method of its own (Tip-Adapter-F's finetune) tell
    # methods apart in the method tables, they are no ablation
    named = {f"method.{k}" for options in ((methods.card_of(method) or {}).get("paper_names") or {}).values()
             for k in options}
    factors = {name: options for name, options in factors.items() if not options <= named}
    out = []
    for name, options in factors.items():
        ordered = tuple(c for c in axes if c in options)
        keep = [not d or d <= options for d in differing]
        out.append(_study(sub[keep], protocol, method, name, "factor", ordered, defaults, sources))
    for options in _components(multi):
        ordered = tuple(c for c in axes if c in options)
        keep = [d <= options for d in differing]
        out.append(_study(sub[keep], protocol, method, "cross", "cross", ordered, defaults, sources))
    return out


def _study(runs: pd.DataFrame, protocol: str, method: str, name: str, kind: str, options: tuple[str, ...],
           defaults: dict[str, Any], sources: dict[str, str]) -> Study:
    runs = runs.copy()
    runs[LEVEL] = [level_key([row[o] for o in options]) for _, row in runs[list(options)].iterrows()]
    return Study(method, protocol, name, kind, options, {o: defaults[o] for o in options},
                 {o: sources[o] for o in options}, runs)


def _default_of(sub: pd.DataFrame, method: str, column: str) -> tuple[Any, str]:
    """The default of a varied column and where it comes from."""
    if column.startswith("method."):
        default = methods.option_default(method, _bare(column))
        if default is not methods.NO_DEFAULT:
            return default, methods.default_kind(method, _bare(column)) or "official"
    counts = sub[column].map(lambda v: methods.json_key(plain(v))).value_counts()
    top = sorted(counts[counts == counts.max()].index)[0]
    value = next(plain(v) for v in sub[column] if methods.json_key(plain(v)) == top)
    return value, "most runs"


def _components(sets: list[frozenset[str]]) -> list[frozenset[str]]:
    """Merge option sets that share an option (the crosses), in a stable order."""
    merged: list[set[str]] = []
    for options in sorted(sets, key=lambda s: sorted(s)):
        touching = [m for m in merged if m & options]
        union = set(options).union(*touching)
        merged = [m for m in merged if not (m & options)] + [union]
    return [frozenset(m) for m in merged]


# ------------------------------------------------------------------------------------------------ statistics

def common_datasets(long: pd.DataFrame, keys: list[str]) -> tuple[list[str], list[str]]:
    """Datasets every configuration has (averaged), and the others (left out); all of them if none is common."""
    every = ref.dataset_order(long["dataset"].unique())
    per_config = long.groupby(keys, dropna=False)["dataset"].agg(lambda d: set(d))
    common = set.intersection(*per_config) if len(per_config) else set()
    if not common:
        return every, []
    return [d for d in every if d in common], [d for d in every if d not in common]


def averages(study: Study) -> tuple[pd.DataFrame, pd.DataFrame, list[str], list[str]]:
    """Per level and metric the Average over the datasets every level has (``dataset_average``), the per-run
    values behind it, the datasets averaged and those left out."""
    long = per_run_values(study.runs, [LEVEL])
    datasets, excluded = common_datasets(long, [LEVEL])
    tidy, _ = dataset_average(long, [LEVEL], datasets)
    return tidy, long, datasets, excluded


def comparisons(family: Sequence[Study], n_boot: int = 10_000, seed: int = 0) -> pd.DataFrame:
    """Every level of the studies against their default row: paired over (dataset, seed) on the headline metric
    per run, mean difference with a 95% bootstrap CI, sign-flip p, and Holm's adjusted p across the family's
    distinct configurations (a configuration in a factor table and in a cross is one comparison, not two).

    Columns: ``study, level, config, n_pairs, mean_diff, ci_low, ci_high, p, p_holm, significant`` (no row for a
    study without a default row)."""
    rows, tested = [], {}
    for study in family:
        metric = MAIN_METRIC[study.protocol]
        long = per_run_values(study.runs, [LEVEL])
        datasets, _ = common_datasets(long, [LEVEL])
        long = long[(long["metric"] == metric) & long["dataset"].isin(datasets)]
        values = long.pivot_table(index=["dataset", "seed"], columns=LEVEL, values="value")
        base = study.default_level
        if base not in values:
            continue
        for level in values.columns:
            both = values[[level, base]].dropna()
            if level == base or both.empty:
                continue
            config = _config_of(study, level)
            if config not in tested:
                tested[config] = paired_comparison(both[level], both[base], n_boot=n_boot, seed=seed)
            result = tested[config]
            rows.append({"study": study.slug, "method": study.method, "protocol": study.protocol, "level": level,
                         "config": config, "metric": metric, "n_pairs": result.n, "mean_diff": result.mean_diff,
                         "ci_low": result.ci_low, "ci_high": result.ci_high, "p": result.p_value,
                         "wins": result.wins, "ties": result.ties, "losses": result.losses})
    out = pd.DataFrame(rows, columns=["study", "method", "protocol", "level", "config", "metric", "n_pairs",
                                      "mean_diff", "ci_low", "ci_high", "p", "wins", "ties", "losses"])
    configs = list(tested)
    adjusted = dict(zip(configs, holm([tested[c].p_value for c in configs])))
    out["p_holm"] = out["config"].map(adjusted).astype(float)
    out["significant"] = out["p_holm"] < ALPHA
    return out


def _config_of(study: Study, level: str) -> str:
    """A level as the options it sets off their defaults (``bottleneck_ratio=2``), the same text in every study."""
    values = dict(zip(study.options, level.split("|")))
    return ", ".join(f"{_bare(o)}={v}" for o, v in sorted(values.items())
                     if v != methods.json_key(study.defaults[o]))


__all__ = ["Study", "LEVEL", "ALPHA", "studies", "off_defaults", "plain", "level_key", "common_datasets", "averages",
           "comparisons"]
