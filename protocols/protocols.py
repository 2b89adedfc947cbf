"""The four evaluation protocols as data.

A protocol turns (source dataset, targets) into a :class:`ProtocolPlan`: which dataset and classes a method is fitted
on, and which splits it is evaluated on afterwards, each under a record key (``base``, ``novel``, ``test``,
``source`` or a target dataset key).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

from frozen_clip.configtools import suggest
from frozen_clip.errors import ConfigError
from protocols.datasets import COOP_DATASETS, DG_TARGETS, get_spec

PROTOCOLS: tuple[str, ...] = ("base2novel", "fewshot", "cross_dataset", "domain_generalization")
_TARGET_PROTOCOLS = ("cross_dataset", "domain_generalization")

DEFAULT_TARGETS: dict[str, tuple[str, ...]] = {
    "cross_dataset": tuple(k for k in COOP_DATASETS if k != "imagenet"),
    "domain_generalization": DG_TARGETS,
}
"""Targets of the published protocols (source ImageNet): the 10 other CoOp datasets, and the 4 ImageNet shifts."""


@dataclass(frozen=True)
class EvalSplit:
    """One evaluation after fit: record key ``name``, the test split of ``dataset`` restricted to ``subsample``."""

    name: str
    dataset: str
    subsample: str


@dataclass(frozen=True)
class ProtocolPlan:
    """What to fit on (``fit_dataset`` restricted to ``fit_subsample`` classes) and what to evaluate afterwards."""

    fit_dataset: str
    fit_subsample: str
    evals: tuple[EvalSplit, ...]


def plan(protocol: str, dataset: str, targets: Sequence[str] = ()) -> ProtocolPlan:
    """The plan of ``protocol`` with source ``dataset``.

    ``base2novel``: fit on base classes, evaluate ``base`` and ``novel`` (the new classes). ``fewshot``: fit on all
    classes, evaluate ``test``. ``cross_dataset`` / ``domain_generalization``: fit on all classes, evaluate
    ``source`` and every target (all classes; record key = target key). Targets are required for those two (see
    :data:`DEFAULT_TARGETS`) and refused for the others.

    Raises:
        ConfigError: unknown protocol or dataset, a source without a train split, targets missing or given where
            they do not belong, a target equal to the source, or a repeated target.
    """
    if protocol not in PROTOCOLS:
        raise ConfigError(f"unknown protocol {protocol!r}{suggest(protocol, PROTOCOLS)} "
                          f"(expected one of {list(PROTOCOLS)})")
    spec = get_spec(dataset)
    if not spec.has_train:
        raise ConfigError(f"dataset {dataset!r} has no train split and can only be an evaluation target")
    targets = tuple(targets)
    if protocol == "base2novel":
        _no_targets(protocol, targets)
        return ProtocolPlan(dataset, "base", (EvalSplit("base", dataset, "base"), EvalSplit("novel", dataset, "new")))
    if protocol == "fewshot":
        _no_targets(protocol, targets)
        return ProtocolPlan(dataset, "all", (EvalSplit("test", dataset, "all"),))
    _check_targets(protocol, dataset, targets)
    evals = (EvalSplit("source", dataset, "all"), *(EvalSplit(t, t, "all") for t in targets))
    return ProtocolPlan(dataset, "all", evals)


def _no_targets(protocol: str, targets: tuple[str, ...]) -> None:
    if targets:
        raise ConfigError(f"protocol {protocol!r} takes no targets, got {list(targets)} "
                          f"(targets belong to {' and '.join(_TARGET_PROTOCOLS)})")


def _check_targets(protocol: str, dataset: str, targets: tuple[str, ...]) -> None:
    if not targets:
        raise ConfigError(f"protocol {protocol!r} needs target datasets (published: {list(DEFAULT_TARGETS[protocol])})")
    for target in targets:
        get_spec(target)
        if target == dataset:
            raise ConfigError(f"protocol {protocol!r}: target {target!r} is the source dataset")
    repeated = sorted({t for t in targets if targets.count(t) > 1})
    if repeated:
        raise ConfigError(f"protocol {protocol!r}: target(s) {repeated} given more than once")
