"""One run's configuration: validation, resolution to explicit values, and its id.

A run config arrives as a nested mapping (from a grid file or ``key=value`` overrides)::

    {"method": {"name": "heba", "bottleneck_ratio": 4}, "backbone": "ViT-B-16", "pretrained": "openai",
     "dataset": "caltech101", "protocol": "base2novel", "shots": 16, "seed": 1, "optim": {"lr": 0.0075}}

:func:`resolve` validates every key and type (naming the source and the dotted key), fills the method's defaults
and its paper recipe for the optimiser, checks impossible combinations, and returns a :class:`ResolvedRun` whose
``run_id`` is the hash of everything that can change the result. Keys that cannot (where results are written, the
data root, the device, loader workers, the grid name, the exact speed switches of ``fast`` and those a method config
lists in its ``UNHASHED_FIELDS``) are kept in the config but left out of the hash.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass, field
from typing import Any, Literal, Mapping

from frozen_clip.configtools import build, check_value, suggest, to_dict
from frozen_clip.errors import ConfigError
from frozen_clip.fastpaths import FastPaths, inexact_fast_settings
from frozen_clip.optim import OptimConfig
from jobs.rawconfig import merge, parse_overrides, set_dotted
from jobs.registry import METHODS

UNHASHED_KEYS = ("name", "data_root", "results_dir", "device", "num_workers", "fast")


@dataclass(frozen=True)
class RunConfig:
    """Top-level keys of a run (method options and optimiser settings live in their own dataclasses)."""

    dataset: str
    name: str = "runs"  # grid name: the results sub-folder (not hashed)
    backbone: str = "ViT-B-16"
    pretrained: str | None = "openai"
    data_root: str = "builtin"  # a CoOp-layout root, or "builtin" for the generated world (not hashed)
    protocol: Literal["base2novel", "fewshot", "cross_dataset", "domain_generalization"] = "base2novel"
    targets: tuple[str, ...] = ()  # cross_dataset / domain_generalization targets (default: the protocol's)
    shots: int = 16
    seed: int = 1
    sampling: Literal["dassl", "local"] = "dassl"
    precision: Literal["auto", "fp32", "amp_fp16", "amp_bf16"] = "auto"  # auto: fp32 on CPU, amp_fp16 on CUDA
    deterministic: bool = True
    results_dir: str = "results"  # not hashed
    device: str = "auto"  # "auto" | "cpu" | "cuda" | "cuda:1" (not hashed)
    num_workers: int = 0  # data-loader workers (not hashed)

    def validate(self) -> None:
        if self.shots < 0:
            raise ValueError(f"shots must be >= 0, got {self.shots}")


@dataclass(frozen=True)
class ResolvedRun:
    """A fully resolved run: typed parts, the canonical nested dict, and the id."""

    run: RunConfig
    method_name: str
    method_config: Any
    optim: OptimConfig
    config: dict[str, Any] = field(repr=False)
    run_id: str = ""
    fast: FastPaths = field(default_factory=FastPaths)  # exact speed switches (frozen_clip/fastpaths.py)

    @property
    def hashed_config(self) -> dict[str, Any]:
        """The part of the config the id is computed from."""
        return {k: v for k, v in self.config.items() if k not in UNHASHED_KEYS}


def exact_method_fields(name: str) -> tuple[str, ...]:
    """The fields of registered method ``name``'s config that are exact speed switches (its ``UNHASHED_FIELDS``):
    kept in the config, left out of the run id."""
    return tuple(getattr(METHODS.get(name).Config, "UNHASHED_FIELDS", ()))


def run_id_of(config: Mapping[str, Any]) -> str:
    """16 hex chars of sha256 over the canonical JSON of the hashed keys."""
    hashed = {k: v for k, v in config.items() if k not in UNHASHED_KEYS}
    method = hashed.get("method")
    if isinstance(method, Mapping) and method.get("name") in METHODS:
        exact = exact_method_fields(method["name"])
        hashed["method"] = {k: v for k, v in method.items() if k not in exact}
    inexact = inexact_fast_settings(config.get("fast") or {})
    if inexact:  # a speed switch that changes results (fast.augment_views, fast.device_augment) is in the id when set
        hashed["fast"] = inexact
    return hashlib.sha256(json.dumps(hashed, sort_keys=True).encode()).hexdigest()[:16]


def _split_method(raw: Mapping[str, Any], where: str) -> tuple[str, dict[str, Any]]:
    method = raw.get("method")
    if isinstance(method, str):
        return method, {}
    if isinstance(method, Mapping):
        options = dict(method)
        name = options.pop("name", None)
        if not isinstance(name, str):
            raise ConfigError(f"{where}: method.name must be a string naming a method, got {name!r}")
        return name, options
    raise ConfigError(f"{where}: 'method' is required (a name, or a mapping with 'name' and options)")


def method_class(name: str, where: str) -> type:
    """The registered class of method ``name`` (ConfigError with a suggestion if unknown)."""
    METHODS.check(name, where)
    return METHODS.get(name)


def _check_dataset(key: str, where: str, field_name: str) -> None:
    from protocols.datasets import get_spec
    try:
        get_spec(key)
    except ConfigError as err:
        raise ConfigError(f"{where}: {field_name}: {err}") from None


def _section(raw: Mapping[str, Any], key: str, what: str, where: str) -> Mapping[str, Any]:
    """The nested mapping ``raw[key]`` ({} when absent or null); ConfigError when it is not a mapping."""
    section = raw.get(key, {}) or {}
    if not isinstance(section, Mapping):
        raise ConfigError(f"{where}: {key} must be a mapping of {what}")
    return section


def resolve(raw: Mapping[str, Any], where: str) -> ResolvedRun:
    """Validate and resolve a raw nested run config; ``where`` names the source (file, command line)."""
    if not isinstance(raw, Mapping):
        raise ConfigError(f"{where}: a run config must be a mapping, got {type(raw).__name__}")
    method_name, method_options = _split_method(raw, where)
    cls = method_class(method_name, where)
    top = {k: v for k, v in raw.items() if k not in ("method", "optim", "fast")}
    if "dataset" not in top:
        raise ConfigError(f"{where}: 'dataset' is required")
    run = build(RunConfig, top, where)
    method_config = build(cls.Config, method_options, where, prefix="method.")
    optim_raw = _section(raw, "optim", "optimiser settings", where)
    recipe = dict(cls.recipe(run.protocol, run.dataset, run.shots, method_config)) if hasattr(cls, "recipe") else {}
    optim = build(OptimConfig, {**recipe, **optim_raw}, where, prefix="optim.")
    fast = build(FastPaths, _section(raw, "fast", "speed switches", where), where, prefix="fast.")
    run = _resolve_targets(run, where)
    _check_dataset(run.dataset, where, "dataset")
    from frozen_clip.backbone import resolve_backbone  # lazy: open_clip, torch, torchvision, timm
    try:
        source = resolve_backbone(run.backbone, run.pretrained)
    except ConfigError as err:
        raise ConfigError(f"{where}: backbone: {err}") from None
    check = getattr(cls, "check_run", None)
    if check is not None:
        try:
            check(run, method_config)
        except ValueError as err:
            raise ConfigError(f"{where}: impossible combination: {err}") from None
    config = to_dict(run)
    config["backbone"], config["pretrained"] = source.name, source.pretrained
    config = {"method": {"name": method_name, **to_dict(method_config)}, **config, "optim": to_dict(optim),
              "fast": to_dict(fast)}
    return ResolvedRun(run, method_name, method_config, optim, config, run_id_of(config), fast)


def _resolve_targets(run: RunConfig, where: str) -> RunConfig:
    from dataclasses import replace

    from protocols.protocols import DEFAULT_TARGETS, plan
    targets = run.targets
    if run.protocol in DEFAULT_TARGETS and not targets:
        targets = tuple(t for t in DEFAULT_TARGETS[run.protocol] if t != run.dataset)
    try:
        plan(run.protocol, run.dataset, targets)
    except ConfigError as err:
        raise ConfigError(f"{where}: {err}") from None
    return replace(run, targets=tuple(targets))


__all__ = ["RunConfig", "ResolvedRun", "resolve", "run_id_of", "parse_overrides", "set_dotted", "merge",
           "check_value", "suggest"]
