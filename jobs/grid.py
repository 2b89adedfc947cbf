"""Grid files: loading, validation and expansion into resolved runs.

A grid file is YAML with these top-level keys::

    name: heba-ablations          # results go to <results_dir>/<name>/<run_id>/
    base: {...}                   # a partial run config shared by every run (nested or dotted keys)
    grid: {dotted.key: [values]}  # axes: the cartesian product of their values
    variants:                     # optional: a list of partial configs (values may be lists = more axes);
      - {method: coop, method.ctx_init: "a photo of a"}    # the grid is crossed with their union
    executor: {kind: local, ...}  # how to run it (overridable with --executor)

Command-line overrides (``key=value``) replace base values and pin axes. :func:`expand_grid` expands a file into raw
run configs (:class:`GridPlan`; YAML and dicts only, no torch). :func:`load_grid` also resolves (and thereby
validates) every run: an unknown key, a wrong type, an unknown method/dataset/backbone or an impossible combination
raises one :class:`ConfigError` naming the file and the key, before anything runs. Resolution imports the methods
(torch); :mod:`jobs.index` remembers its run ids so that ``--status`` need not resolve again.
"""

from __future__ import annotations

import itertools
from dataclasses import dataclass, field
from pathlib import Path
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

from frozen_clip.configtools import suggest
from frozen_clip.errors import ConfigError
from jobs.rawconfig import folder_name_problem, merge, read_yaml_mapping, set_dotted

if TYPE_CHECKING:  # pragma: no cover - typing only
    from jobs.config import ResolvedRun

GRID_KEYS = ("name", "description", "base", "grid", "variants", "executor")


@dataclass(frozen=True)
class RunSpec:
    """One run of a grid: its id, the resolved config, and the typed resolution."""

    run_id: str
    config: dict[str, Any]
    resolved: "ResolvedRun" = field(repr=False)


@dataclass(frozen=True)
class Grid:
    """A loaded grid: its file's expansion, the resolved runs (deduplicated by id, in expansion order), and the run
    id of each run of the expansion (duplicates included; :mod:`jobs.index`)."""

    plan: "GridPlan"
    runs: list[RunSpec]
    raw_ids: tuple[str, ...] = ()

    @property
    def name(self) -> str:
        return self.plan.name

    @property
    def path(self) -> Path:
        return self.plan.path

    @property
    def executor(self) -> dict[str, Any]:
        """The grid file's ``executor:`` block."""
        return self.plan.executor

    @property
    def axes(self) -> dict[str, list[Any]]:
        return self.plan.axes

    @property
    def results_dir(self) -> Path:
        """``<results_dir>/<name>`` of the grid's runs."""
        if not self.runs:
            return Path("results") / self.name
        run = self.runs[0].resolved.run
        return Path(run.results_dir) / run.name


def _read_yaml(path: Path) -> dict[str, Any]:
    data = read_yaml_mapping(path, "grid file", f" with keys {list(GRID_KEYS)}")
    for key in data:
        if key not in GRID_KEYS:
            raise ConfigError(f"{path}: unknown top-level key {key!r}{suggest(str(key), GRID_KEYS)}; "
                              f"expected {list(GRID_KEYS)}")
    return data


def _nested(flat: Any, where: str) -> dict[str, Any]:
    if not isinstance(flat, Mapping):
        raise ConfigError(f"{where}: expected a mapping of run settings, got {type(flat).__name__} {flat!r}")
    out: dict[str, Any] = {}
    for key, value in flat.items():
        if not isinstance(key, str):
            raise ConfigError(f"{where}: keys must be strings, got {key!r}")
        if isinstance(value, Mapping) and key in ("optim", "method") or "." not in key:
            out = merge(out, {key: value})
        else:
            set_dotted(out, key, value, where)
    return out


def _axes(block: Any, where: str) -> dict[str, list[Any]]:
    if block is None:
        return {}
    if not isinstance(block, Mapping):
        raise ConfigError(f"{where}: must be a mapping of dotted keys to lists of values")
    axes = {}
    for key, values in block.items():
        values = values if isinstance(values, list) else [values]
        if not values:
            raise ConfigError(f"{where}: axis {key!r} has no values")
        axes[str(key)] = values
    return axes


def _product(axes: Mapping[str, list[Any]]) -> list[dict[str, Any]]:
    keys = list(axes)
    return [dict(zip(keys, combo)) for combo in itertools.product(*(axes[k] for k in keys))]


@dataclass(frozen=True)
class RawRun:
    """One run of a grid's expansion before resolution: its raw nested config and where it came from."""

    raw: dict[str, Any]
    where: str  # the grid file, and the axis values of the run

    @property
    def results_dir(self) -> Path:
        """``<results_dir>/<name>`` the run's folder will be in (resolution keeps both values as given)."""
        return Path(str(self.raw.get("results_dir", "results"))) / str(self.raw.get("name", "runs"))


@dataclass(frozen=True)
class GridPlan:
    """A grid file expanded into raw run configs (nothing resolved: no method imported)."""

    name: str
    path: Path
    raws: list[RawRun]
    executor: dict[str, Any]
    axes: dict[str, list[Any]]

    @property
    def results_dir(self) -> Path:
        """``<results_dir>/<name>`` of the grid's runs (as :attr:`Grid.results_dir`)."""
        return self.raws[0].results_dir if self.raws else Path("results") / self.name


def expand_grid(path: str | Path, overrides: Mapping[str, Any] | None = None,
                executor_kind: str | None = None) -> GridPlan:
    """Read and expand a grid file into raw run configs. ``overrides`` is a nested dict from ``parse_overrides``."""
    path = Path(path)
    where = str(path)
    data = _read_yaml(path)
    name = data.get("name") or path.stem
    problem = folder_name_problem(name)
    if problem:
        raise ConfigError(f"{where}: name {problem}")
    base = _nested(data.get("base") or {}, f"{where}: base")
    axes = _axes(data.get("grid"), f"{where}: grid")
    variants_raw = data.get("variants") or [{}]
    if not isinstance(variants_raw, list):
        raise ConfigError(f"{where}: variants must be a list of mappings")
    overrides = dict(overrides or {})
    flat_overrides = _flatten(overrides)
    for key in flat_overrides:
        axes.pop(key, None)  # a command-line value pins an axis
    raws: list[RawRun] = []
    for v_index, variant in enumerate(variants_raw):
        variant_axes = _axes(variant, f"{where}: variants[{v_index}]")
        for key in flat_overrides:
            variant_axes.pop(key, None)
        for combo in _product({**axes, **variant_axes}):
            raw = merge(merge(merge(base, {"name": name}), _nested(combo, where)), overrides)
            label = ", ".join(f"{k}={v}" for k, v in combo.items())
            raws.append(RawRun(raw, where + (f" (run {label})" if label else "")))
    executor = dict(data.get("executor") or {})
    if executor_kind is not None:
        executor["kind"] = executor_kind
    return GridPlan(name, path, raws, executor, axes)


def load_grid(path: str | Path, overrides: Mapping[str, Any] | None = None,
              executor_kind: str | None = None) -> Grid:
    """Load, validate and expand a grid file. ``overrides`` is a nested dict from ``parse_overrides``."""
    return resolve_plan(expand_grid(path, overrides, executor_kind))


def executor_compute_device(executor: Mapping[str, Any]) -> str | None:
    """What runs with ``device: auto`` compute on under the grid file's ``executor:`` block: a Slurm block requesting
    GPUs (``gpus_per_node`` > 0) gives ``cuda``, one requesting none ``cpu``; other executors run on this machine
    (None). Read from the file only, so a launch and a later ``--status`` resolve the same run ids; a run that lands
    on another device kind than its id says fails with the fix (``device: cuda``), never silently."""
    if executor.get("kind") != "slurm":
        return None
    gpus = executor.get("gpus_per_node") or 0
    return "cuda" if isinstance(gpus, int) and gpus > 0 else "cpu"


def resolve_plan(plan: GridPlan) -> Grid:
    """Resolve every run of ``plan`` (deduplicated by run id, in expansion order). Every run is checked before
    anything is raised: the problems of the whole grid come in one :class:`ConfigError`
    (:func:`_grid_problems`)."""
    from jobs.config import resolve
    runs: list[RunSpec] = []
    seen: set[str] = set()
    raw_ids = []
    problems: list[tuple[str, ConfigError]] = []
    compute_device = executor_compute_device(plan.executor)
    for raw_run in plan.raws:
        try:
            resolved = resolve(raw_run.raw, raw_run.where, compute_device)
        except ConfigError as err:
            problems.append((raw_run.where, err))
            continue
        raw_ids.append(resolved.run_id)
        if resolved.run_id not in seen:
            seen.add(resolved.run_id)
            runs.append(RunSpec(resolved.run_id, resolved.config, resolved))
    if problems:
        raise _grid_problems(plan, problems)
    return Grid(plan, runs, tuple(raw_ids))


def _grid_problems(plan: GridPlan, problems: list[tuple[str, ConfigError]], shown: int = 20) -> ConfigError:
    """One error for every problem of a grid: a single problem as it is; several grouped by what is wrong (the
    same reason in many runs is said once, with the first run and how many more)."""
    if len(problems) == 1:
        return problems[0][1]
    grouped: dict[str, list[str]] = {}
    for where, err in problems:
        text = str(err)
        reason = text[len(where) + 2:] if text.startswith(f"{where}: ") else text
        grouped.setdefault(reason, []).append(where)
    lines = [f"{plan.path}: {len(grouped)} problem(s) in {len(problems)} of {len(plan.raws)} runs; nothing ran:"]
    for reason, wheres in list(grouped.items())[:shown]:
        more = f" (and {len(wheres) - 1} more runs)" if len(wheres) > 1 else ""
        lines.append(f"  - {wheres[0]}{more}: {reason}")
    if len(grouped) > shown:
        lines.append(f"  ... and {len(grouped) - shown} more problems")
    return ConfigError("\n".join(lines))


def _flatten(nested: Mapping[str, Any], prefix: str = "") -> dict[str, Any]:
    out = {}
    for key, value in nested.items():
        dotted = f"{prefix}{key}"
        if isinstance(value, Mapping) and key in ("method", "optim") and not prefix:
            for sub, sub_value in value.items():
                out[f"{dotted}.{sub}" if sub != "name" else dotted] = sub_value
        else:
            out[dotted] = value
    return out
