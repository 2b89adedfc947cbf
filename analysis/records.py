"""Run records -> one pandas frame, schema-checked, with every problem reported.

A run writes ``<results_dir>/<grid name or 'runs'>/<run_id>/record.json`` (schema in ``DESIGN.md``, "One run").
:func:`load_records` reads every ``record.json`` under one or more result folders and returns :class:`Records`:

- ``done``: one row per finished run. Config keys are flattened with dots and kept verbatim (``method.name``,
  ``method.bottleneck_ratio``, ``optim.lr``, ``dataset``, ``seed``, ...); list values become tuples. Metrics become
  ``acc.<split>`` and ``n_images.<split>``, headline numbers ``summary.<key>``, costs ``cost.<key>``, auxiliary
  losses ``aux.<key>``, the environment ``env.<key>``; where the record came from is ``record.path``,
  ``record.root``, ``record.schema_version``, ``record.started_at``, ``record.finished_at``.
- ``failed``: the same columns for ``status: failed`` records, plus ``failure.reason``.
- ``problems``: files that could not be read or do not follow the schema (never silently dropped).
- ``duplicates``: run ids found more than once (the most recently finished copy is kept).

:func:`missing_runs` compares a grid's expansion with what is on disk.
"""

from __future__ import annotations

import json
import math
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterable, Mapping, Sequence

import pandas as pd

from analysis.methods import remember

SUPPORTED_SCHEMA_VERSIONS: tuple[int, ...] = (1,)
PROTOCOLS: tuple[str, ...] = ("base2novel", "fewshot", "cross_dataset", "domain_generalization")
TRANSFER_PROTOCOLS: tuple[str, ...] = ("cross_dataset", "domain_generalization")
UNHASHED_KEYS: tuple[str, ...] = ("name", "data_root", "results_dir", "device", "num_workers")
"""Config keys that cannot change a result (``jobs/config.py``): never an ablation axis, never part of a label."""
RESERVED_PREFIXES: tuple[str, ...] = ("acc", "n_images", "summary", "cost", "aux", "env", "record", "failure")
_RUN_ID = re.compile(r"^[0-9a-f]{16}$")


@dataclass(frozen=True)
class Problem:
    """A ``record.json`` that could not be used, and why."""

    path: str
    message: str

    def __str__(self) -> str:
        return f"{self.path}: {self.message}"


@dataclass
class Records:
    """Everything found under the result folders (see the module docstring for the columns)."""

    done: pd.DataFrame
    failed: pd.DataFrame
    problems: list[Problem] = field(default_factory=list)
    duplicates: list[str] = field(default_factory=list)
    roots: tuple[str, ...] = ()
    per_class: pd.DataFrame = field(default_factory=pd.DataFrame)

    def report(self) -> list[str]:
        """Human-readable lines: counts, then every failed run, problem and duplicate."""
        lines = [f"{len(self.done)} done, {len(self.failed)} failed, {len(self.problems)} unreadable or invalid, "
                 f"{len(self.duplicates)} duplicate record(s) under {', '.join(self.roots)}"]
        for _, row in self.failed.iterrows():
            lines.append(f"FAILED {row['run_id']} ({describe_run(row)}): {row.get('failure.reason', '?')}")
        lines += [f"INVALID {problem}" for problem in self.problems]
        lines += [f"DUPLICATE {text}" for text in self.duplicates]
        return lines


def describe_run(row: Mapping[str, Any]) -> str:
    """A short description of a run: method, protocol, dataset, shots, seed."""
    parts = [str(row.get("method.name", "?")), str(row.get("protocol", "?")), str(row.get("dataset", "?"))]
    parts.append(f"{row.get('shots', '?')} shots")
    parts.append(f"seed {row.get('seed', '?')}")
    return ", ".join(parts)


class SchemaError(ValueError):
    """A record that does not follow the record schema."""


# --------------------------------------------------------------------------------------------------- flattening

def flatten(mapping: Mapping[str, Any], prefix: str = "") -> dict[str, Any]:
    """Nested mappings -> one level with dotted keys; lists become tuples (hashable, groupable)."""
    out: dict[str, Any] = {}
    for key, value in mapping.items():
        name = f"{prefix}{key}"
        if isinstance(value, Mapping):
            nested = flatten(value, f"{name}.")
            out.update(nested if nested else {name: None})
        elif isinstance(value, list):
            out[name] = tuple(_hashable(v) for v in value)
        else:
            out[name] = value
    return out


def _hashable(value: Any) -> Any:
    if isinstance(value, list):
        return tuple(_hashable(v) for v in value)
    if isinstance(value, Mapping):
        return tuple(sorted((k, _hashable(v)) for k, v in value.items()))
    return value


# ------------------------------------------------------------------------------------------------------- schema

def _require(condition: bool, message: str) -> None:
    if not condition:
        raise SchemaError(message)


def _is_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


def expected_splits(config: Mapping[str, Any]) -> list[str]:
    """The metric splits a finished run of this config must have."""
    protocol = config.get("protocol")
    if protocol == "base2novel":
        return ["base", "novel"]
    if protocol == "fewshot":
        return ["test"]
    return ["source", *list(config.get("targets") or [])]


def check_record(record: Any) -> None:
    """Raise :class:`SchemaError` naming the first violation of the record schema (version 1)."""
    _require(isinstance(record, Mapping), f"a record must be a JSON object, got {type(record).__name__}")
    version = record.get("schema_version")
    _require(version in SUPPORTED_SCHEMA_VERSIONS,
             f"unknown schema_version {version!r} (this analysis reads {list(SUPPORTED_SCHEMA_VERSIONS)})")
    _require(isinstance(record.get("run_id"), str) and bool(_RUN_ID.match(record["run_id"])),
             f"run_id must be 16 lowercase hex characters, got {record.get('run_id')!r}")
    status = record.get("status")
    _require(status in ("done", "failed"), f"status must be 'done' or 'failed', got {status!r}")
    config = record.get("config")
    _require(isinstance(config, Mapping), "config must be an object")
    _check_config(config)
    if status == "failed":
        failure = record.get("failure")
        _require(isinstance(failure, Mapping) and isinstance(failure.get("reason"), str),
                 "a failed record needs failure.reason")
        return
    for key in ("metrics", "summary", "cost"):
        _require(isinstance(record.get(key), Mapping), f"a done record needs the object {key!r}")
    _require(isinstance(record.get("history"), list), "a done record needs the list 'history'")
    for split in expected_splits(config):
        entry = record["metrics"].get(split)
        _require(isinstance(entry, Mapping), f"metrics[{split!r}] is missing (protocol {config['protocol']})")
        acc = entry.get("accuracy")
        _require(_is_number(acc) and 0.0 <= acc <= 100.0,
                 f"metrics[{split!r}].accuracy must be a percentage in [0, 100], got {acc!r}")
    _require("trainable_params" in record["cost"], "cost.trainable_params is missing")


def _check_config(config: Mapping[str, Any]) -> None:
    method = config.get("method")
    _require(isinstance(method, Mapping) and isinstance(method.get("name"), str),
             "config.method must be an object with a string 'name'")
    _require(isinstance(config.get("dataset"), str), "config.dataset must be a string")
    _require(config.get("protocol") in PROTOCOLS,
             f"config.protocol must be one of {list(PROTOCOLS)}, got {config.get('protocol')!r}")
    for key in ("seed", "shots"):
        value = config.get(key)
        _require(isinstance(value, int) and not isinstance(value, bool), f"config.{key} must be an integer")
    if config["protocol"] in TRANSFER_PROTOCOLS:
        _require(isinstance(config.get("targets"), list) and len(config["targets"]) > 0,
                 f"config.targets must be a non-empty list for protocol {config['protocol']}")
    clash = [key for key in config if key in RESERVED_PREFIXES]
    _require(not clash, f"config keys {clash} clash with column prefixes of the analysis frame")


# ------------------------------------------------------------------------------------------------------ loading

def record_row(record: Mapping[str, Any], path: Path, root: Path) -> dict[str, Any]:
    """One schema-checked record -> one flat row (see the module docstring)."""
    row: dict[str, Any] = {"run_id": record["run_id"], "status": record["status"]}
    row.update(flatten(record["config"]))
    for split, entry in (record.get("metrics") or {}).items():
        row[f"acc.{split}"] = float(entry["accuracy"])
        row[f"n_images.{split}"] = entry.get("n_images")
    row.update(flatten(record.get("summary") or {}, "summary."))
    row.update(flatten(record.get("cost") or {}, "cost."))
    row.update(flatten(record.get("aux_losses") or {}, "aux."))
    env = record.get("env") or {}
    row.update(flatten(env, "env."))
    if record.get("failure"):
        row["failure.reason"] = record["failure"].get("reason")
    row.update({"record.path": str(path), "record.root": str(root),
                "record.schema_version": record["schema_version"],
                "record.started_at": record.get("started_at"), "record.finished_at": record.get("finished_at"),
                "record.epochs_run": len(record.get("history") or [])})
    return row


def _per_class_rows(record: Mapping[str, Any]) -> list[dict[str, Any]]:
    rows = []
    for split, entry in (record.get("metrics") or {}).items():
        for classname, acc in (entry.get("per_class_accuracy") or {}).items():
            rows.append({"run_id": record["run_id"], "split": split, "class": classname, "accuracy": acc})
    return rows


def find_record_files(roots: Iterable[Path | str]) -> list[tuple[Path, Path]]:
    """``(root, path)`` of every ``record.json`` under ``roots`` (sorted; temp files of atomic writes ignored)."""
    found = []
    for root in roots:
        root = Path(root)
        if not root.exists():
            raise FileNotFoundError(f"results folder {root} does not exist")
        paths = [root] if root.is_file() else sorted(root.rglob("record.json"))
        found += [(root, path) for path in paths]
    return found


def load_records(roots: Sequence[Path | str] | Path | str) -> Records:
    """Read every ``record.json`` under ``roots`` (one folder or several) into :class:`Records`."""
    if isinstance(roots, (str, Path)):
        roots = [roots]
    rows: dict[str, dict[str, Any]] = {}
    per_class: dict[str, list[dict[str, Any]]] = {}
    problems: list[Problem] = []
    duplicates: list[str] = []
    for root, path in find_record_files(roots):
        try:
            record = json.loads(path.read_text())
            check_record(record)
        except (OSError, json.JSONDecodeError, SchemaError) as err:
            problems.append(Problem(str(path), f"{type(err).__name__}: {err}"))
            continue
        remember(record.get("method_card"))
        row = record_row(record, path, root)
        run_id = row["run_id"]
        if run_id in rows:
            kept, other = _newer(rows[run_id], row)
            duplicates.append(f"run {run_id}: kept {kept['record.path']} ({kept['status']}), "
                              f"ignored {other['record.path']} ({other['status']})")
            if kept is rows[run_id]:
                continue
        rows[run_id] = row
        per_class[run_id] = _per_class_rows(record)
    frame = _frame(list(rows.values()))
    done = frame[frame["status"] == "done"].reset_index(drop=True)
    failed = frame[frame["status"] == "failed"].dropna(axis=1, how="all").reset_index(drop=True)
    class_rows = [r for run_id in done["run_id"] for r in per_class.get(run_id, [])]
    return Records(done=done, failed=failed, problems=problems, duplicates=duplicates,
                   roots=tuple(str(r) for r in roots), per_class=pd.DataFrame(class_rows))


def _frame(rows: list[dict[str, Any]]) -> pd.DataFrame:
    """Rows -> frame; config columns keep their Python values (``object`` dtype: a bottleneck ratio stays ``4``,
    not ``4.0``, and an option another method lacks is ``None``)."""
    if not rows:
        return pd.DataFrame(columns=["run_id", "status"])
    frame = pd.DataFrame(rows)
    for column in config_columns(frame):
        frame[column] = pd.Series([row.get(column) for row in rows], index=frame.index, dtype=object)
    return frame


def _newer(a: dict[str, Any], b: dict[str, Any]) -> tuple[dict[str, Any], dict[str, Any]]:
    """``(kept, ignored)``: a done record beats a failed one, then the later ``finished_at`` wins."""
    key_a = (a["status"] == "done", a.get("record.finished_at") or "")
    key_b = (b["status"] == "done", b.get("record.finished_at") or "")
    return (b, a) if key_b > key_a else (a, b)


# -------------------------------------------------------------------------------------------- settings, labels

def config_columns(frame: pd.DataFrame) -> list[str]:
    """Columns that came from the run config (everything that is not a metric, cost, env or record column)."""
    fixed = {"run_id", "status"}
    return [c for c in frame.columns if c not in fixed and c.split(".")[0] not in RESERVED_PREFIXES]


def variant_axes(frame: pd.DataFrame, within: Sequence[str] = ("method.name", "protocol", "dataset", "shots"),
                 exclude: Sequence[str] = ("seed",)) -> list[str]:
    """Config columns that take more than one value inside some ``within`` group: the axes that tell variants apart.

    Grouping by dataset (and shots) keeps per-dataset optimiser recipes (ImageNet's batch size, say) from being
    mistaken for an ablation axis.
    """
    skip = set(within) | set(exclude) | set(UNHASHED_KEYS)
    candidates = [c for c in config_columns(frame) if c not in skip]
    if frame.empty or not candidates:
        return []
    keys = [c for c in within if c in frame.columns]
    # an unset option (None/NaN) counts as a value of its own: `novel_scale: null` vs `0.5` is an axis (pandas 3's
    # astype(str) keeps missing values missing, and nunique would not count them); except a result-changing fast
    # switch, which a record written before the switch existed lacks and which then ran at its default
    defaults = _inexact_fast_columns() if any(c.startswith("fast.") for c in candidates) else {}

    def text(column: pd.Series) -> pd.Series:
        unset = "<unset>" if defaults.get(column.name) is None else str(defaults[column.name])
        return column.map(lambda v: unset if _missing(v) else str(v))
    as_text = frame[candidates].apply(text)
    grouped = pd.concat([frame[keys].astype(str), as_text], axis=1).groupby(keys, dropna=False)
    counts = grouped.nunique()
    varying = [c for c in candidates if (counts[c] > 1).any()]
    methods = frame["method.name"].dropna().unique() if "method.name" in frame.columns else []
    return [c for c in varying if not speed_switch(c, methods)]


def _inexact_fast_columns() -> dict[str, Any]:
    """``{"fast.<switch>": default}`` of the result-changing fast switches."""
    from jobs.switches import inexact_fast_defaults  # read from the source: no torch
    return {f"fast.{name}": default for name, default in inexact_fast_defaults().items()}


def speed_switch(column: str, methods: Iterable[str]) -> bool:
    """Whether a config column is an exact speed switch, left out of the run id (``jobs.config.run_id_of``): a key
    of the ``fast`` section other than the result-changing ones, or a method field that every method in
    ``methods`` defining it lists in its config's ``UNHASHED_FIELDS``. Such a column never tells results apart, and
    runs recorded before a switch existed lack it, which must not split them from later ones."""
    section, _, name = column.partition(".")
    from jobs.switches import inexact_fast_defaults  # read from the source: no torch
    if section == "fast":
        return name not in inexact_fast_defaults()
    if section != "method" or not name:
        return False
    defining = [exact for exact in (_exact_option(method, name) for method in methods) if exact is not None]
    return bool(defining) and all(defining)


def _exact_option(method: str, option: str) -> bool | None:
    """Whether ``option`` is an exact speed switch of ``method``: from the method's card, or, where no card can be
    had (a record of an older layout, no torch), from the method's source (:func:`jobs.switches.method_config`)."""
    from analysis.methods import card_of, is_exact_option
    if card_of(method) is not None:
        return is_exact_option(method, option)
    from jobs.registry import METHODS
    from jobs.switches import method_config
    if method not in METHODS:
        return None
    facts = method_config(method)
    if facts is None:
        return None
    fields, exact = facts
    return (option in exact) if option in fields else None


def _short(column: str) -> str:
    return column[len("method."):] if column.startswith("method.") else column


def _value_text(value: Any) -> str:
    if isinstance(value, float) and value.is_integer():
        return str(int(value))
    if isinstance(value, tuple):
        return "[" + ",".join(str(v) for v in value) + "]"
    return str(value)


def variant_labels(frame: pd.DataFrame, axes: Sequence[str] | None = None,
                   display: Mapping[str, str] | Callable[[Mapping[str, Any]], str] | None = None) -> pd.Series:
    """A label per row: the method's display name plus every variant axis that is set for it.

    ``HeBA (bottleneck_ratio=2, init=zero)``; a method with one configuration is just its name. ``display`` maps
    ``method.name`` to a display name, or is a function of the row's method columns and axes (a mapping of
    column -> value), called once per distinct combination of them.
    """
    axes = variant_axes(frame) if axes is None else list(axes)
    display = display or {}
    # the label depends on the method's columns and the axes only: computed once per distinct combination
    columns = list(dict.fromkeys(c for c in frame.columns if c == "method.name" or str(c).startswith("method.")
                                 or c in axes))
    labels = []
    known: dict[str, str] = {}
    for row in frame[columns].to_dict("records"):  # plain dicts: a pandas row per run costs more than the label
        key = repr(sorted((k, v) for k, v in row.items() if not _missing(v)))
        if key not in known:
            name = display(row) if callable(display) else display.get(row["method.name"], row["method.name"])
            parts = [f"{_short(a)}={_value_text(row[a])}" for a in axes if a in row and not _missing(row[a])]
            known[key] = f"{name} ({', '.join(parts)})" if parts else name
        labels.append(known[key])
    return pd.Series(labels, index=frame.index, dtype=object)


def _missing(value: Any) -> bool:
    return value is None or value is pd.NA or (isinstance(value, float) and math.isnan(value))


def apply_where(frame: pd.DataFrame, conditions: Mapping[str, Any]) -> pd.DataFrame:
    """Rows matching every ``column == value``; rows where the column is not set (another method's option) stay."""
    mask = pd.Series(True, index=frame.index)
    for column, value in conditions.items():
        if column not in frame.columns:
            raise KeyError(f"--where {column}: no such column (config columns: {config_columns(frame)})")
        col = frame[column]
        mask &= col.isna() | (col.astype(str) == _value_text(value)) | (col == value)
    return frame[mask]


# ------------------------------------------------------------------------------------------------ missing runs

def missing_from(expected: Mapping[str, Mapping[str, Any]], records: Records) -> pd.DataFrame:
    """Runs of ``expected`` (run id -> nested config) that are not done: ``state`` is ``missing`` or ``failed``."""
    done = set(records.done["run_id"]) if not records.done.empty else set()
    failed = {}
    if not records.failed.empty:
        failed = dict(zip(records.failed["run_id"], records.failed.get("failure.reason", [None] * len(records.failed))))
    rows = []
    for run_id, config in expected.items():
        if run_id in done:
            continue
        state = "failed" if run_id in failed else "missing"
        rows.append({"run_id": run_id, "state": state, "reason": failed.get(run_id), **flatten(config)})
    return pd.DataFrame(rows, columns=None if rows else ["run_id", "state", "reason"])


def missing_runs(grid_path: Path | str, results_dirs: Sequence[Path | str] | Path | str,
                 records: Records | None = None) -> pd.DataFrame:
    """Runs of the grid at ``grid_path`` that have no ``status: done`` record under ``results_dirs`` (or in
    ``records`` when they are already loaded): one row per run, ``state`` ``missing`` or ``failed``."""
    from jobs.grid import load_grid  # lazy: the grid loader resolves method configs (heavier imports)

    grid = load_grid(grid_path)
    expected = {spec.run_id: spec.config for spec in grid.runs}
    return missing_from(expected, records if records is not None else load_records(results_dirs))


__all__ = ["Records", "Problem", "SchemaError", "load_records", "check_record", "flatten", "config_columns",
           "variant_axes", "speed_switch", "variant_labels", "apply_where", "missing_from", "missing_runs",
           "describe_run"]
