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

import functools
import hashlib
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal, Mapping

from frozen_clip.configtools import build, check_value, suggest, to_dict, to_dict_values
from frozen_clip.contract import defaults, option_display, value_display
from frozen_clip.errors import ConfigError
from frozen_clip.fastconfig import FastPaths, inexact_fast_settings
from frozen_clip.optim import OptimConfig
from jobs.rawconfig import folder_name_problem, merge, parse_overrides, set_dotted
from jobs.registry import METHODS

UNHASHED_KEYS = ("name", "data_root", "results_dir", "device", "num_workers", "fast")
#: ``method.checkpoint``: an official checkpoint the run loads (frozen_clip/checkpoints.py). Not a method option:
#: kept in the method section with the file's content digest (``checkpoint_sha256``); the id hashes the digest only
CHECKPOINT_KEYS = ("checkpoint", "checkpoint_sha256")


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
    # dassl: Dassl's few-shot draw (ImageNet's files sorted); dassl_listdir: the same with ImageNet's files in
    # os.listdir order, as Dassl reads them (the same draws as Dassl's on the same file system only)
    sampling: Literal["dassl", "local", "dassl_listdir"] = "dassl"
    # auto: the method's official precision on CUDA (MethodInfo.precision), fp32 on a CPU (frozen_clip/precision.py)
    precision: Literal["auto", "fp32", "amp_fp16", "amp_bf16", "fp16"] = "auto"
    deterministic: bool = True  # cuDNN deterministic, no autotuning; false: cudnn.benchmark as the official code
    results_dir: str = "results"  # not hashed
    device: str = "auto"  # "auto" | "cpu" | "cuda" | "cuda:1" (not hashed)
    num_workers: int = 0  # data-loader workers (not hashed)

    def validate(self) -> None:
        if self.shots < 0:
            raise ValueError(f"shots must be >= 0 (0: every training image), got {self.shots}")
        problem = folder_name_problem(self.name)
        if problem:
            raise ValueError(f"name {problem}")


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


@functools.lru_cache(maxsize=None)
def _json_defaults(config_cls: type) -> dict[str, Any]:
    """``config_cls``'s defaults in their JSON form (frozen dataclasses: computed once per class)."""
    return to_dict_values(defaults(config_cls))


def _without_defaults(values: Mapping[str, Any], config_cls: type) -> dict[str, Any]:
    """``values`` minus the entries equal to ``config_cls``'s defaults (compared in their JSON form)."""
    reference = _json_defaults(config_cls)
    return {k: v for k, v in values.items() if k not in reference or reference[k] != v}


def _result_changing(config: Mapping[str, Any]) -> dict[str, Any]:
    """The config without what cannot change a result: :data:`UNHASHED_KEYS`, the method's exact speed switches
    (its ``UNHASHED_FIELDS``), and the ``fast`` switches other than the result-changing ones set off their defaults
    (``fast.augment_views``, ``fast.device_augment``, ``fast.shared_views``: in the id when set)."""
    hashed = {k: v for k, v in config.items() if k not in UNHASHED_KEYS and k != "resolved_precision"}
    method = hashed.get("method")
    if isinstance(method, Mapping) and method.get("name") in METHODS:
        exact = (*exact_method_fields(method["name"]), "checkpoint")  # the checkpoint by content, not by path
        hashed["method"] = {k: v for k, v in method.items() if k not in exact}
    inexact = inexact_fast_settings(config.get("fast") or {})
    if inexact:
        hashed["fast"] = inexact
    return hashed


def _hashed_precision(config: Mapping[str, Any]) -> dict[str, str] | None:
    """The resolved precision as the id hashes it: None for fp32/fp32 (every CPU run, and every run resolved before
    precisions were), else ``{"train", "eval"}``."""
    resolved = config.get("resolved_precision")
    if not isinstance(resolved, Mapping) or (resolved.get("train"), resolved.get("eval")) == ("fp32", "fp32"):
        return None
    return {"train": resolved.get("train"), "eval": resolved.get("eval")}


def canonical_config(config: Mapping[str, Any]) -> dict[str, Any]:
    """What a run id hashes (DESIGN.md, "Run ids"): :func:`_result_changing` of the resolved config without every
    option equal to its default, plus the method's recipe version.

    Leaving defaults out is what lets a new option whose default reproduces the old behaviour keep every existing run
    id; a changed default must bump the method's ``info.recipe_version`` (pinned by ``tests/test_method_registry.py``),
    which changes the ids of all its runs, so a run made under the old default is never mistaken for a new one.
    """
    hashed = _result_changing(config)
    method = hashed.get("method")
    if isinstance(method, Mapping) and method.get("name") in METHODS:
        cls = METHODS.get(method["name"])
        options = _without_defaults({k: v for k, v in method.items() if k != "name"}, cls.Config)
        hashed["method"] = {"name": method["name"], "recipe_version": cls.info.recipe_version, **options}
    canonical = {"method": hashed.get("method"),
                 **_without_defaults({k: v for k, v in hashed.items() if k not in ("method", "optim", "fast")},
                                     RunConfig)}
    precision = _hashed_precision(config)  # the resolved precision, unless fp32/fp32
    if precision is not None:
        canonical["resolved_precision"] = precision
    if "optim" in hashed:
        canonical["optim"] = _without_defaults(hashed["optim"], OptimConfig)
    if "fast" in hashed:
        canonical["fast"] = hashed["fast"]
    return canonical


def run_label(config: Mapping[str, Any]) -> str:
    """A short human label of a resolved run config, for progress lines, ``--dry-run`` and ``--status``: the method's
    display name with its options set off their defaults (display names of options and values; exact speed switches
    left out), then dataset, protocol, shots and seed, e.g.
    ``HeBA [bottleneck ratio=2, init=Kaiming (all)] imagenet base2novel shots=16 seed=1``."""
    return (f"{variant_label(config)} {config['dataset']} {config['protocol']} shots={config['shots']} "
            f"seed={config['seed']}")


def variant_label(config: Mapping[str, Any]) -> str:
    """The method part of :func:`run_label`: its display name with the options set off their defaults
    (``HeBA [bottleneck ratio=8]``), what tells the variants of one grid apart."""
    method = config["method"]
    name = method["name"]
    cls = METHODS.get(name)
    exact = (*exact_method_fields(name), *CHECKPOINT_KEYS)
    changed = _without_defaults({k: v for k, v in method.items() if k != "name" and k not in exact}, cls.Config)
    parts = [f"{option_display(cls.Config, k)}={value_display(cls.Config, k, v)}" for k, v in changed.items()]
    if method.get("checkpoint"):
        parts.append(f"checkpoint={Path(method['checkpoint']).name}")
    return cls.info.display + (f" [{', '.join(parts)}]" if parts else "")


def _digest(hashed: Mapping[str, Any]) -> str:
    return hashlib.sha256(json.dumps(hashed, sort_keys=True).encode()).hexdigest()[:16]


def run_id_of(config: Mapping[str, Any]) -> str:
    """16 hex chars of sha256 over the canonical JSON of :func:`canonical_config`."""
    return _digest(canonical_config(config))


def legacy_run_id(config: Mapping[str, Any]) -> str:
    """The id the suite gave runs before defaults were left out of ids (every result-changing option hashed); read
    by ``python -m jobs.migrate_ids`` to find run folders of that layout."""
    return _digest(_result_changing(config))


def _split_method(raw: Mapping[str, Any], where: str) -> tuple[str, dict[str, Any]]:
    """The method's name and its options (``method.checkpoint`` and its digest left out: not options)."""
    method = raw.get("method")
    if isinstance(method, str):
        return method, {}
    if isinstance(method, Mapping):
        options = {k: v for k, v in method.items() if k not in CHECKPOINT_KEYS}
        name = options.pop("name", None)
        if not isinstance(name, str):
            raise ConfigError(f"{where}: method.name must be a string naming a method, got {name!r}")
        return name, options
    raise ConfigError(f"{where}: 'method' is required (a name, or a mapping with 'name' and options)")


def method_class(name: str, where: str) -> type:
    """The registered class of method ``name`` (ConfigError with a suggestion if unknown; TypeError naming what a
    method file lacks when it does not fill in the contract)."""
    from frozen_clip.method import check_method_class
    METHODS.check(name, where)
    cls = METHODS.get(name)
    check_method_class(name, cls)
    return cls


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


def resolve(raw: Mapping[str, Any], where: str, compute_device: str | None = None) -> ResolvedRun:
    """Validate and resolve a raw nested run config; ``where`` names the source (file, command line).
    ``compute_device`` (``cuda`` / ``cpu``): what a run with ``device: auto`` will compute on, where the executor
    knows better than this machine (Slurm tasks with or without GPUs); None: this machine's CUDA."""
    if not isinstance(raw, Mapping):
        raise ConfigError(f"{where}: a run config must be a mapping, got {type(raw).__name__}")
    method_name, method_options = _split_method(raw, where)
    cls = method_class(method_name, where)
    top = {k: v for k, v in raw.items() if k not in ("method", "optim", "fast", "resolved_precision")}
    if "dataset" not in top:
        raise ConfigError(f"{where}: 'dataset' is required")
    run = build(RunConfig, top, where)
    method_config = build(cls.Config, method_options, where, prefix="method.")
    optim_raw = _section(raw, "optim", "optimiser settings", where)
    recipe = dict(cls.recipe(run.protocol, run.dataset, run.shots, method_config))
    optim = build(OptimConfig, {**recipe, **optim_raw}, where, prefix="optim.")
    fast = build(FastPaths, _section(raw, "fast", "speed switches", where), where, prefix="fast.")
    run = _resolve_targets(run, where)
    _check_dataset(run.dataset, where, "dataset")
    from frozen_clip.backbone import backbone_shape, resolve_backbone  # lazy: torch
    try:
        source = resolve_backbone(run.backbone, run.pretrained)
    except ConfigError as err:
        raise ConfigError(f"{where}: backbone: {err}") from None
    _check_capabilities(cls, run, where)
    shape = backbone_shape(source)
    if shape is not None:  # options that cannot fit this backbone fail here, before any run of the grid starts
        try:
            cls.check_backbone(shape, run.protocol, method_config)
        except ConfigError as err:
            raise ConfigError(f"{where}: {method_name} on backbone {source.name}: {err}") from None
    try:
        cls.check_run(run, method_config)
    except ValueError as err:
        raise ConfigError(f"{where}: impossible combination: {err}") from None
    precision = _resolve_precision(cls, run, compute_device, where, raw.get("resolved_precision"))
    config = to_dict(run)
    config["backbone"], config["pretrained"] = source.name, source.pretrained
    config["resolved_precision"] = {"train": precision.train, "eval": precision.eval}
    config = {"method": {"name": method_name, **to_dict(method_config), **_checkpoint(raw, where)}, **config,
              "optim": to_dict(optim), "fast": to_dict(fast)}
    return ResolvedRun(run, method_name, method_config, optim, config, run_id_of(config), fast)


def _checkpoint(raw: Mapping[str, Any], where: str) -> dict[str, str]:
    """``{"checkpoint": absolute path, "checkpoint_sha256": digest}`` of ``method.checkpoint`` ({} when not set);
    ConfigError naming the key when it is not a readable file."""
    method = raw.get("method")
    path = method.get("checkpoint") if isinstance(method, Mapping) else None
    if path is None:
        return {}
    if not isinstance(path, str) or not path:
        raise ConfigError(f"{where}: method.checkpoint must be the path of a checkpoint file, got {path!r}")
    from frozen_clip.checkpoints import checkpoint_digest
    stored = method.get("checkpoint_sha256")
    if isinstance(stored, str) and stored.startswith("sha256:"):  # an already resolved config keeps its run id; the
        digest = stored                                            # run checks the file against it when it loads it
    else:
        try:
            digest = checkpoint_digest(Path(path).expanduser())
        except ConfigError as err:
            raise ConfigError(f"{where}: {err}") from None
    return {"checkpoint": str(Path(path).expanduser().resolve()), "checkpoint_sha256": digest}


def _resolve_precision(cls: type, run: RunConfig, compute_device: str | None, where: str,
                       stored: Any = None) -> Any:
    """The run's :class:`~frozen_clip.precision.ResolvedPrecision`; pure fp16 only for a method whose official code
    runs in it (the others create fp32 parameters that a half model cannot take). ``stored``: the
    ``resolved_precision`` of an already resolved config (a run folder's ``config.yaml``, which a Slurm job resolves
    again on its node): kept, so the run keeps its id wherever it is resolved; the run checks it against its device."""
    from frozen_clip.contract import PRECISIONS
    from frozen_clip.precision import ResolvedPrecision, device_kind, resolve_precision
    official = cls.info.precision
    if isinstance(stored, Mapping) and stored.get("train") in PRECISIONS and stored.get("eval") in PRECISIONS:
        resolved = ResolvedPrecision(stored["train"], stored["eval"])
    elif stored is not None:
        raise ConfigError(f"{where}: resolved_precision must be {{train: P, eval: P}} with P among {PRECISIONS}, "
                          f"got {stored!r}")
    else:
        resolved = resolve_precision(run.precision, device_kind(run.device, compute_device), official)
    if resolved.half_model and "fp16" not in (official.train, official.eval):
        raise ConfigError(f"{where}: precision: fp16 (pure fp16) is for methods whose official code runs in it "
                          f"(CoOp, CoCoOp, MaPLe, zero-shot, Tip-Adapter); {cls.info.name}'s runs in "
                          f"{official.train} (evaluated in {official.eval}): use amp_fp16, amp_bf16 or fp32")
    return resolved


def _check_capabilities(cls: type, run: RunConfig, where: str) -> None:
    """A protocol the method does not declare is an impossible combination (e.g. the linear probe, which cannot
    score classes unseen in training, under base-to-novel)."""
    capabilities = cls.info.capabilities
    if run.protocol not in capabilities.protocols:
        unseen = "" if capabilities.unseen_classes else " (it cannot score classes unseen in training)"
        raise ConfigError(f"{where}: impossible combination: {cls.info.name} does not support protocol "
                          f"{run.protocol!r}{unseen}; it supports {', '.join(capabilities.protocols)}")


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
           "check_value", "suggest", "canonical_config", "legacy_run_id", "run_label", "variant_label"]
