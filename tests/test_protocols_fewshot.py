"""Few-shot sampling and base/new subsampling against the golden lists produced by the real CoOp/Dassl code."""

from __future__ import annotations

import dataclasses
import json
import random
import shutil
from pathlib import Path

import pytest

from frozen_clip.errors import ConfigError, DataError
from protocols.datasets import DatasetSplits, Item, get_spec, load_splits
from protocols.fewshot import base_new_classnames, dassl_fewshot, sample_fewshot, subsample_classes

FIXTURES = Path(__file__).parent / "fixtures"
GOLDEN = json.loads((FIXTURES / "fewshot_splits.json").read_text())
SEEDS = (1, 2, 3)
SHOTS = (1, 2, 4, 8, 16)
SUBSAMPLES = ("all", "base", "new")


def as_entries(items: list[Item] | tuple[Item, ...]) -> list[list]:
    return [[it.path, it.label, it.classname] for it in items]


@pytest.fixture(scope="module")
def fake_pets(tmp_path_factory: pytest.TempPathFactory) -> DatasetSplits:
    """split_zhou_Fake.json laid out as <root>/oxford_pets/split_zhou_OxfordPets.json, as the golden run did."""
    root = tmp_path_factory.mktemp("data")
    (root / "oxford_pets" / "images").mkdir(parents=True)
    shutil.copy(FIXTURES / "split_zhou_Fake.json", root / "oxford_pets" / "split_zhou_OxfordPets.json")
    return load_splits("oxford_pets", root)


def test_fixture_input_counts(fake_pets: DatasetSplits) -> None:
    counts = GOLDEN["input_split_counts_per_label"]
    for name in ("train", "val", "test"):
        items = getattr(fake_pets, name)
        assert [sum(it.label == c for it in items) for c in range(10)] == counts[name]
    assert list(fake_pets.classnames) == GOLDEN["classnames_by_label"]


@pytest.mark.parametrize("seed", SEEDS)
@pytest.mark.parametrize("shots", SHOTS)
@pytest.mark.parametrize("subsample", SUBSAMPLES)
def test_dassl_mode_reproduces_golden(fake_pets: DatasetSplits, seed: int, shots: int, subsample: str) -> None:
    expected = GOLDEN["results"][f"seed{seed}"][f"shots{shots}"][subsample]
    train, val = sample_fewshot(fake_pets, shots, seed, mode="dassl")
    train_s, val_s, test_s = subsample_classes(train, val, fake_pets.test, subsample)
    assert as_entries(train_s) == expected["train"]
    assert as_entries(val_s) == expected["val"]
    assert as_entries(test_s) == GOLDEN["test_lists_data"][subsample]
    assert list(base_new_classnames(fake_pets.classnames, train, subsample)) == GOLDEN["classnames"][subsample]


@pytest.mark.parametrize("seed", SEEDS)
@pytest.mark.parametrize("shots", SHOTS)
def test_dassl_fewshot_is_the_generic_flow(fake_pets: DatasetSplits, seed: int, shots: int) -> None:
    rng = random.Random(seed)
    train = dassl_fewshot(fake_pets.train, shots, rng)
    val = dassl_fewshot(fake_pets.val, min(shots, 4), rng)
    expected = GOLDEN["results"][f"seed{seed}"][f"shots{shots}"]["all"]
    assert (as_entries(train), as_entries(val)) == (expected["train"], expected["val"])


@pytest.mark.parametrize("seed", SEEDS)
@pytest.mark.parametrize("shots", SHOTS)
def test_imagenet_flow_draws_train_only(fake_pets: DatasetSplits, seed: int, shots: int) -> None:
    """ImageNet class: no val split, only train drawn; the fixture's imagenet_check says it equals the generic train."""
    assert GOLDEN["imagenet_check"][f"seed{seed}_shots{shots}"]["train_equals_generic_flow_train"]
    spec = dataclasses.replace(get_spec("imagenet"), n_classes=10)
    splits = DatasetSplits(spec, fake_pets.image_root, fake_pets.train, (), fake_pets.test, fake_pets.classnames)
    train, val = sample_fewshot(splits, shots, seed)
    assert val == ()
    for subsample in SUBSAMPLES:
        expected = GOLDEN["results"][f"seed{seed}"][f"shots{shots}"][subsample]
        train_s, val_s, test_s = subsample_classes(train, val, splits.test, subsample)
        assert as_entries(train_s) == expected["train"]
        assert val_s == []
        assert as_entries(test_s) == GOLDEN["test_lists_data"][subsample]


def test_small_group_kept_whole_without_draw() -> None:
    items = [Item(f"{i}.jpg", 0, "a") for i in range(3)] + [Item(f"b{i}.jpg", 1, "b") for i in range(5)]
    rng, twin = random.Random(7), random.Random(7)
    out = dassl_fewshot(items, 4, rng)
    assert out[:3] == items[:3]  # whole group, file order
    assert out[3:] == twin.sample(items[3:], 4)  # the only draw on the stream
    assert rng.getstate() == twin.getstate()


def test_groups_follow_first_appearance() -> None:
    items = [Item("x", 2, "c"), Item("y", 0, "a"), Item("z", 2, "c"), Item("w", 1, "b")]
    assert [it.label for it in dassl_fewshot(items, 1, random.Random(0))] == [2, 0, 1]


def test_shots_zero_returns_full_lists(fake_pets: DatasetSplits) -> None:
    assert sample_fewshot(fake_pets, 0, 1) == (fake_pets.train, fake_pets.val)


def test_bad_arguments(fake_pets: DatasetSplits) -> None:
    with pytest.raises(ConfigError, match="sampling"):
        sample_fewshot(fake_pets, 1, 1, mode="numpy")
    with pytest.raises(ConfigError, match="shots"):
        sample_fewshot(fake_pets, -1, 1)
    with pytest.raises(ConfigError, match="k must be"):
        dassl_fewshot(fake_pets.train, 0, random.Random(0))
    with pytest.raises(ConfigError, match="subsample"):
        subsample_classes(fake_pets.train, fake_pets.val, fake_pets.test, "novel")
    with pytest.raises(DataError, match="empty"):
        subsample_classes([], [], fake_pets.test, "base")


def test_subsample_relabels_and_keeps_order() -> None:
    train = [Item("a", 4, "e"), Item("b", 0, "a"), Item("c", 2, "c"), Item("d", 1, "b"), Item("e", 4, "e")]
    test = [Item("t1", 3, "d"), Item("t2", 2, "c"), Item("t3", 4, "e"), Item("t4", 0, "a")]
    # labels of train: [0, 1, 2, 4] -> base [0, 1], new [2, 4]; label 3 (absent from train) is in neither
    base = subsample_classes(train, [], test, "base")
    assert base == ([Item("b", 0, "a"), Item("d", 1, "b")], [], [Item("t4", 0, "a")])
    new = subsample_classes(train, [], test, "new")
    assert new == ([Item("a", 1, "e"), Item("c", 0, "c"), Item("e", 1, "e")], [],
                   [Item("t2", 0, "c"), Item("t3", 1, "e")])
    names = ("a", "b", "c", "d", "e")
    assert base_new_classnames(names, train, "new") == ("c", "e")
    assert base_new_classnames(names, train, "all") == names


def test_odd_class_count_gives_base_the_extra_class() -> None:
    train = [Item(str(i), i, str(i)) for i in range(37)]
    assert len(subsample_classes(train, [], [], "base")[0]) == 19
    assert len(subsample_classes(train, [], [], "new")[0]) == 18


def test_local_mode_deterministic_and_independent_of_global_random(fake_pets: DatasetSplits) -> None:
    random.seed(0)
    first = sample_fewshot(fake_pets, 4, 1, mode="local")
    random.seed(12345)
    state = random.getstate()
    second = sample_fewshot(fake_pets, 4, 1, mode="local")
    assert first == second
    assert random.getstate() == state  # the global stream is untouched
    random.seed(1)
    sample_fewshot(fake_pets, 4, 1, mode="dassl")
    assert random.getstate() == random.Random(1).getstate()


def test_local_mode_differs_from_dassl_and_across_seeds(fake_pets: DatasetSplits) -> None:
    for shots in (1, 4, 16):
        local = sample_fewshot(fake_pets, shots, 1, mode="local")
        assert local != sample_fewshot(fake_pets, shots, 1, mode="dassl")
        assert local != sample_fewshot(fake_pets, shots, 2, mode="local")
        train, val = local
        assert len(train) == sum(min(n, shots) for n in GOLDEN["input_split_counts_per_label"]["train"])
        assert len(val) == sum(min(n, min(shots, 4)) for n in GOLDEN["input_split_counts_per_label"]["val"])


def test_local_mode_keyed_by_dataset(fake_pets: DatasetSplits) -> None:
    other = dataclasses.replace(fake_pets, spec=dataclasses.replace(fake_pets.spec, key="other"))
    assert sample_fewshot(other, 4, 1, mode="local") != sample_fewshot(fake_pets, 4, 1, mode="local")
