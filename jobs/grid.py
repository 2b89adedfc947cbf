"""Grid files: loading, validation and expansion into resolved runs.

A grid file is YAML with these top-level keys::

    name: heba-ablations          # results go to <results_dir>/<name>/<run_id>/
    base: {...}                   # a partial run config shared by every run (nested or dotted keys)
    grid: {dotted.key: [values]}  # axes: the cartesian product of their values
    variants:                     # optional: a list of partial configs (values may be lists = more axes);
      - {method: coop, method.ctx_init: "a photo of a"}    # the grid is crossed with their union
    executor: {kind: local, ...}  # how to run it (overridable with --executor)

Every run of the expansion is resolved (and thereby validated) when the grid is loaded: an unknown key, a wrong
type, an unknown method/dataset/backbone or an impossible combination raises one :class:`ConfigError` naming the
file and the key, before anything runs. Command-line overrides (``key=value``) replace base values and pin axes.
"""

from __future__ import annotations

import itertools
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Mapping

import yaml

from frozen_clip.configtools import suggest
from frozen_clip.errors import ConfigError
from jobs.config import ResolvedRun, merge, resolve, set_dotted

GRID_KEYS = ("name", "description", "base", "grid", "variants", "executor")


@dataclass(frozen=True)
class RunSpec:
    """One run of a grid: its id, the resolved config, and the typed resolution."""

    run_id: str
    config: dict[str, Any]
    resolved: ResolvedRun = field(repr=False)


@dataclass(frozen=True)
class Grid:
    """A loaded grid: name, expanded runs (deduplicated by id, in expansion order) and executor settings."""

    name: str
    path: Path
    runs: list[RunSpec]
    executor: dict[str, Any]
    axes: dict[str, list[Any]]

    @property
    def results_dir(self) -> Path:
        """``<results_dir>/<name>`` of the grid's runs."""
        if not self.runs:
            return Path("results") / self.name
        run = self.runs[0].resolved.run
        return Path(run.results_dir) / run.name


def _read_yaml(path: Path) -> dict[str, Any]:
    if not path.is_file():
        raise ConfigError(f"grid file {path} does not exist")
    try:
        data = yaml.safe_load(path.read_text())
    except yaml.YAMLError as err:
        raise ConfigError(f"{path}: not valid YAML: {err}") from None
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: a grid file must be a mapping with keys {list(GRID_KEYS)}")
    for key in data:
        if key not in GRID_KEYS:
            raise ConfigError(f"{path}: unknown top-level key {key!r}{suggest(str(key), GRID_KEYS)}; "
                              f"expected {list(GRID_KEYS)}")
    return data


def _nested(flat: Mapping[str, Any], where: str) -> dict[str, Any]:
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


def load_grid(path: str | Path, overrides: Mapping[str, Any] | None = None,
              executor_kind: str | None = None) -> Grid:
    """Load, validate and expand a grid file. ``overrides`` is a nested dict from ``parse_overrides``."""
    path = Path(path)
    where = str(path)
    data = _read_yaml(path)
    name = data.get("name") or path.stem
    if not isinstance(name, str):
        raise ConfigError(f"{where}: name must be a string")
    base = _nested(data.get("base") or {}, f"{where}: base")
    axes = _axes(data.get("grid"), f"{where}: grid")
    variants_raw = data.get("variants") or [{}]
    if not isinstance(variants_raw, list):
        raise ConfigError(f"{where}: variants must be a list of mappings")
    overrides = dict(overrides or {})
    flat_overrides = _flatten(overrides)
    for key in flat_overrides:
        axes.pop(key, None)  # a command-line value pins an axis
    runs: list[RunSpec] = []
    seen: set[str] = set()
    for v_index, variant in enumerate(variants_raw):
        variant_axes = _axes(variant, f"{where}: variants[{v_index}]")
        for key in flat_overrides:
            variant_axes.pop(key, None)
        for combo in _product({**axes, **variant_axes}):
            raw = merge(merge(merge(base, {"name": name}), _nested(combo, where)), overrides)
            spec = _resolve_one(raw, where, combo)
            if spec.run_id not in seen:
                seen.add(spec.run_id)
                runs.append(spec)
    executor = dict(data.get("executor") or {})
    if executor_kind is not None:
        executor["kind"] = executor_kind
    return Grid(name, path, runs, executor, axes)


def _resolve_one(raw: dict[str, Any], where: str, combo: Mapping[str, Any]) -> RunSpec:
    label = ", ".join(f"{k}={v}" for k, v in combo.items())
    resolved = resolve(raw, f"{where}" + (f" (run {label})" if label else ""))
    return RunSpec(resolved.run_id, resolved.config, resolved)


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
