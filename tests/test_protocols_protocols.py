"""The four protocols as plans, and their validation."""

from __future__ import annotations

import pytest

from frozen_clip.errors import ConfigError
from protocols.datasets import COOP_DATASETS, DG_TARGETS
from protocols.protocols import DEFAULT_TARGETS, PROTOCOLS, EvalSplit, ProtocolPlan, plan


def test_base2novel() -> None:
    assert plan("base2novel", "eurosat") == ProtocolPlan(
        "eurosat", "base", (EvalSplit("base", "eurosat", "base"), EvalSplit("novel", "eurosat", "new")))


def test_fewshot() -> None:
    assert plan("fewshot", "dtd") == ProtocolPlan("dtd", "all", (EvalSplit("test", "dtd", "all"),))


@pytest.mark.parametrize("protocol", ["cross_dataset", "domain_generalization"])
def test_target_protocols(protocol: str) -> None:
    targets = DEFAULT_TARGETS[protocol]
    p = plan(protocol, "imagenet", targets)
    assert (p.fit_dataset, p.fit_subsample) == ("imagenet", "all")
    assert p.evals == (EvalSplit("source", "imagenet", "all"), *(EvalSplit(t, t, "all") for t in targets))


def test_default_targets() -> None:
    assert PROTOCOLS == ("base2novel", "fewshot", "cross_dataset", "domain_generalization")
    assert DEFAULT_TARGETS["cross_dataset"] == COOP_DATASETS[1:] and len(COOP_DATASETS[1:]) == 10
    assert DEFAULT_TARGETS["domain_generalization"] == DG_TARGETS == (
        "imagenetv2", "imagenet_sketch", "imagenet_a", "imagenet_r")


@pytest.mark.parametrize("args, message", [
    (("base2nvel", "dtd"), "unknown protocol 'base2nvel'; did you mean 'base2novel'"),
    (("base2novel", "dtd", ("eurosat",)), "takes no targets"),
    (("fewshot", "dtd", ("eurosat",)), "takes no targets"),
    (("cross_dataset", "imagenet"), "needs target datasets"),
    (("domain_generalization", "imagenet", ()), "needs target datasets"),
    (("cross_dataset", "imagenet", ("imagenet", "dtd")), "'imagenet' is the source"),
    (("cross_dataset", "imagenet", ("dtdd",)), "unknown dataset 'dtdd'; did you mean 'dtd'"),
    (("cross_dataset", "imagenet", ("dtd", "dtd")), r"\['dtd'\] given more than once"),
    (("fewshot", "oxfordpets"), "unknown dataset 'oxfordpets'"),
    (("fewshot", "imagenet_a"), "no train split"),
])
def test_validation(args: tuple, message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        plan(*args)
