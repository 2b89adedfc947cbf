"""A cross-dataset or DG target is scored with its own dataset's prompt template, as the official eval-only run on
the target's config does: zero-shot CLIP trained "on" world_hues (template "a photo of a {} object.") scores on the
target world_objects ("a photo of a {}.") exactly what it scores on world_objects directly."""

from __future__ import annotations

from pathlib import Path

import pytest

from jobs.config import resolve
from tests.conftest import execute_resolved


@pytest.fixture(scope="module")
def small_world(tmp_path_factory) -> Path:
    from world.generate import generate_world
    return generate_world(tmp_path_factory.mktemp("world") / "root", per_class=(4, 2, 6),
                          datasets=["world_hues", "world_objects"])


def zeroshot(data: Path, results: Path, **run) -> dict:
    cfg = {"method": "zeroshot", "backbone": "tiny-world", "pretrained": "world", "data_root": str(data),
           "results_dir": str(results), "seed": 1, "optim": {"eval_batch_size": 64}, **run}
    return execute_resolved(resolve(cfg, "test"))


def test_a_target_is_scored_with_its_own_template(small_world, tmp_path):
    transfer = zeroshot(small_world, tmp_path / "xd", dataset="world_hues", protocol="cross_dataset",
                        targets=["world_objects"], shots=2)
    direct = zeroshot(small_world, tmp_path / "direct", dataset="world_objects", protocol="fewshot", shots=2)
    assert transfer["metrics"]["world_objects"]["accuracy"] == direct["metrics"]["test"]["accuracy"]
    assert (transfer["metrics"]["world_objects"]["per_class_accuracy"]
            == direct["metrics"]["test"]["per_class_accuracy"])
    # provenance: each split says which prompts scored it; the record, the precision and the recipe version
    assert transfer["metrics"]["source"]["templates"] == ["a photo of a {} object."]
    assert transfer["metrics"]["world_objects"]["templates"] == ["a photo of a {}."]
    assert transfer["env"]["precision"] == "fp32" and transfer["method_card"]["recipe_version"] >= 1


def test_novel_classes_keep_the_training_datasets_template(tiny_clip):
    from baselines.zeroshot import ZeroShotCLIP, ZeroShotConfig
    from frozen_clip.method import MethodContext
    context = MethodContext(dataset="oxford_pets", template="a photo of a {}, a type of pet.", protocol="base2novel",
                            shots=4, seed=1, epochs=0)
    method = ZeroShotCLIP(tiny_clip, ["cat"], ZeroShotConfig(), context)
    method.evaluate_on("oxford_pets", "a photo of a {}, a type of pet.", ["dog"])
    assert method.context.template == "a photo of a {}, a type of pet." and method.classnames == ("dog",)
    method.evaluate_on("caltech101", "a photo of a {}.", ["dog"])
    assert method.context.dataset == "caltech101" and method.context.template == "a photo of a {}."
