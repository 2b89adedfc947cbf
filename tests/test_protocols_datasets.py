"""Dataset registry and the reader of the CoOp on-disk layout (every layout, every data error)."""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
import shutil
import sys
import types
from pathlib import Path

import pytest

from frozen_clip.errors import ConfigError, DataError
from protocols import datasets
from protocols.datasets import Item, get_spec, list_datasets, load_splits, register_dataset

FIXTURES = Path(__file__).parent / "fixtures"

TEMPLATES = {
    "imagenet": "a photo of a {}.", "caltech101": "a photo of a {}.", "oxford_pets": "a photo of a {}, a type of pet.",
    "stanford_cars": "a photo of a {}.", "oxford_flowers": "a photo of a {}, a type of flower.",
    "food101": "a photo of {}, a type of food.", "fgvc_aircraft": "a photo of a {}, a type of aircraft.",
    "sun397": "a photo of a {}.", "dtd": "{} texture.", "eurosat": "a centered satellite photo of {}.",
    "ucf101": "a photo of a person doing {}.", "imagenetv2": "a photo of a {}.", "imagenet_sketch": "a photo of a {}.",
    "imagenet_a": "a photo of a {}.", "imagenet_r": "a photo of a {}.",
}
N_CLASSES = {"imagenet": 1000, "caltech101": 100, "oxford_pets": 37, "stanford_cars": 196, "oxford_flowers": 102,
             "food101": 101, "fgvc_aircraft": 100, "sun397": 397, "dtd": 47, "eurosat": 10, "ucf101": 101,
             "imagenetv2": 1000, "imagenet_sketch": 1000, "imagenet_a": 200, "imagenet_r": 200}


def tree(root: Path) -> dict[str, tuple[int, int]]:
    """Every path under ``root`` with its size and mtime, to prove nothing was written."""
    return {str(p.relative_to(root)): (p.stat().st_size, p.stat().st_mtime_ns) for p in sorted(root.rglob("*"))}


def fake_pets(root: Path) -> Path:
    (root / "oxford_pets" / "images").mkdir(parents=True)
    shutil.copy(FIXTURES / "split_zhou_Fake.json", root / "oxford_pets" / "split_zhou_OxfordPets.json")
    return root / "oxford_pets" / "split_zhou_OxfordPets.json"


def write(path: Path, text: str = "") -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)


def touch(path: Path) -> None:
    write(path)


# ---------------------------------------------------------------- registry


def test_registry_holds_the_15_datasets_with_coop_templates() -> None:
    assert list_datasets(include_world=False) == list(TEMPLATES)
    for key, template in TEMPLATES.items():
        spec = get_spec(key)
        assert (spec.key, spec.template, spec.n_classes) == (key, template, N_CLASSES[key])
    assert [k for k in TEMPLATES if not get_spec(k).has_val] == [
        "imagenet", "imagenetv2", "imagenet_sketch", "imagenet_a", "imagenet_r"]
    assert get_spec("stanford_cars").image_dir == ""
    assert get_spec("caltech101").folder == "caltech-101"
    assert get_spec("eurosat").split_file == "split_zhou_EuroSAT.json"
    assert "Annual Crop Land" in get_spec("eurosat").notes


def test_unknown_key_suggests_close_match() -> None:
    with pytest.raises(ConfigError, match="unknown dataset 'oxford_pet'; did you mean 'oxford_pets'"):
        get_spec("oxford_pet")


def test_register_rejects_duplicates(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(datasets, "_REGISTRY", dict(datasets._REGISTRY))
    with pytest.raises(ConfigError, match="already registered"):
        register_dataset(get_spec("dtd"))
    spec = dataclasses.replace(get_spec("dtd"), key="dtd_copy")
    assert register_dataset(spec) is spec
    assert get_spec("dtd_copy") is spec and "dtd_copy" in list_datasets()


def test_spec_validation() -> None:
    base = get_spec("dtd")
    for bad in ({"layout": "csv"}, {"split_file": None}, {"template": "a photo"}, {"n_classes": 0},
                {"folder_labels": "alpha"}, {"key": ""}):
        with pytest.raises(ConfigError, match="dataset spec"):
            dataclasses.replace(base, **bad)


def test_world_specs_resolved_lazily(monkeypatch: pytest.MonkeyPatch) -> None:
    world = dataclasses.replace(get_spec("dtd"), key="world_colours", dassl_name="WorldColours", folder="world")
    module = types.ModuleType("world.generate")
    module.WORLD_SPECS = {"world_colours": world}
    monkeypatch.setitem(sys.modules, "world.generate", module)
    assert get_spec("world_colours") is world
    assert list_datasets()[-1] == "world_colours"
    assert "world_colours" not in list_datasets(include_world=False)
    with pytest.raises(ConfigError, match="did you mean 'world_colours'"):
        get_spec("world_colour")
    module.WORLD_SPECS = {"world_dtd": get_spec("dtd")}
    with pytest.raises(ConfigError, match="WORLD_SPECS: key 'world_dtd' must .* equal its spec's key"):
        get_spec("world_dtd")


def test_missing_world_module_is_skipped(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(datasets, "WORLD_MODULE", "protocols._no_such_world")
    assert len(list_datasets()) == 15
    with pytest.raises(ConfigError, match="unknown dataset"):
        get_spec("world_shapes")


# ---------------------------------------------------------------- json layout


def test_json_layout_reads_split_unchanged(tmp_path: Path) -> None:
    split = fake_pets(tmp_path)
    before = tree(tmp_path)
    splits = load_splits("oxford_pets", tmp_path)
    assert tree(tmp_path) == before
    raw = json.loads(split.read_text())
    assert [[i.path, i.label, i.classname] for i in splits.train] == raw["train"]
    assert [[i.path, i.label, i.classname] for i in splits.test] == raw["test"]
    assert splits.image_root == tmp_path.absolute() / "oxford_pets" / "images"
    assert splits.classnames[2] == "basset hound"


def test_stanford_cars_paths_relative_to_dataset_folder(tmp_path: Path) -> None:
    folder = tmp_path / "stanford_cars"
    folder.mkdir()
    entries = [["cars_train/00001.jpg", 0, "2012 Audi TTS Coupe"], ["cars_test/00002.jpg", 1, "2012 BMW M3 coupe"]]
    (folder / "split_zhou_StanfordCars.json").write_text(json.dumps({"train": entries, "val": [], "test": entries}))
    splits = load_splits("stanford_cars", tmp_path)
    assert splits.image_root == folder.absolute()
    assert splits.classnames == ("2012 Audi TTS Coupe", "2012 BMW M3 coupe")


def test_symlinked_dataset_folder_is_followed(tmp_path: Path) -> None:
    fake_pets(tmp_path / "elsewhere")
    (tmp_path / "root").mkdir()
    os.symlink(tmp_path / "elsewhere" / "oxford_pets", tmp_path / "root" / "oxford_pets")
    assert len(load_splits("oxford_pets", tmp_path / "root").train) == 168


# ---------------------------------------------------------------- fgvc / imagenet layouts


def test_fgvc_layout(tmp_path: Path) -> None:
    folder = tmp_path / "fgvc_aircraft"
    (folder / "images").mkdir(parents=True)
    (folder / "variants.txt").write_text("707-320\nA300B4\nF/A-18\n")
    (folder / "images_variant_train.txt").write_text("0034309 A300B4\n0034958 707-320\n")
    (folder / "images_variant_val.txt").write_text("0037511 F/A-18\n")
    (folder / "images_variant_test.txt").write_text("1514522 707-320\n\n")
    splits = load_splits("fgvc_aircraft", tmp_path)
    assert splits.classnames == ("707-320", "A300B4", "F/A-18")
    assert splits.train == (Item("0034309.jpg", 1, "A300B4"), Item("0034958.jpg", 0, "707-320"))
    assert splits.val == (Item("0037511.jpg", 2, "F/A-18"),)
    assert splits.test == (Item("1514522.jpg", 0, "707-320"),)
    assert splits.split_sha256 is not None and len(splits.split_sha256) == 64
    (folder / "images_variant_val.txt").write_text("0037511 Cessna 172\n")
    with pytest.raises(DataError, match=r"images_variant_val\.txt, line 1: variant 'Cessna 172'"):
        load_splits("fgvc_aircraft", tmp_path)


def make_imagenet(root: Path) -> None:
    folder = root / "imagenet"
    wnids = ["n02", "n01", "n03"]
    write(folder / "classnames.txt", "n01 tench\nn02 goldfish\nn03 great white shark\n")
    for wnid in wnids:
        touch(folder / "images" / "train" / wnid / f"{wnid}_b.JPEG")
        touch(folder / "images" / "train" / wnid / f"{wnid}_a.JPEG")
        touch(folder / "images" / "val" / wnid / f"val_{wnid}.JPEG")
    touch(folder / "images" / "train" / "n01" / ".DS_Store")


def test_imagenet_layout_sorted_wnids_no_val(tmp_path: Path) -> None:
    make_imagenet(tmp_path)
    splits = load_splits("imagenet", tmp_path)
    assert splits.classnames == ("tench", "goldfish", "great white shark")
    assert splits.val == ()
    assert splits.train[:2] == (Item("train/n01/n01_a.JPEG", 0, "tench"), Item("train/n01/n01_b.JPEG", 0, "tench"))
    assert [it.label for it in splits.train] == [0, 0, 1, 1, 2, 2]
    assert splits.test == (Item("val/n01/val_n01.JPEG", 0, "tench"), Item("val/n02/val_n02.JPEG", 1, "goldfish"),
                           Item("val/n03/val_n03.JPEG", 2, "great white shark"))
    assert splits.image_root == tmp_path.absolute() / "imagenet" / "images"


def test_imagenet_listdir_order_is_the_file_systems(tmp_path: Path) -> None:
    """``file_order: listdir`` lists each class folder's files as os.listdir does (Dassl's order), hidden files left
    out; ``sampling: dassl_listdir`` draws from those lists with Dassl's RNG stream."""
    import os

    from protocols.fewshot import sample_fewshot
    make_imagenet(tmp_path)
    for wnid in ("n01", "n02", "n03"):  # enough files that a listing order other than sorted would show
        for i in range(12):
            touch(tmp_path / "imagenet" / "images" / "train" / wnid / f"{wnid}_{(i * 7) % 12:02d}.JPEG")
    listed = load_splits("imagenet", tmp_path, "listdir")
    for wnid, label in (("n01", 0), ("n02", 1), ("n03", 2)):
        folder = tmp_path / "imagenet" / "images" / "train" / wnid
        expected = [f"train/{wnid}/{f}" for f in os.listdir(folder) if not f.startswith(".")]
        assert [it.path for it in listed.train if it.label == label] == expected
    ordered = load_splits("imagenet", tmp_path)
    assert set(listed.train) == set(ordered.train)
    assert [it.path for it in ordered.train] == sorted(it.path for it in ordered.train)
    draw, _ = sample_fewshot(listed, 2, 1, "dassl_listdir")
    assert draw == sample_fewshot(listed, 2, 1, "dassl")[0]  # the same RNG stream as dassl, on the listdir lists
    with pytest.raises(ConfigError, match="file_order must be one of"):
        load_splits("imagenet", tmp_path, "random")


def test_imagenet_errors_name_the_file(tmp_path: Path) -> None:
    make_imagenet(tmp_path)
    names = tmp_path / "imagenet" / "classnames.txt"
    names.write_text("n01 tench\nn02 goldfish\n")
    with pytest.raises(DataError, match=f"{names}.*'n03'"):
        load_splits("imagenet", tmp_path)
    names.unlink()
    with pytest.raises(DataError, match=f"class-name file {names} is missing"):
        load_splits("imagenet", tmp_path)


def test_imagenet_variant_ignores_readme(tmp_path: Path) -> None:
    folder = tmp_path / "imagenet-adversarial"
    write(folder / "classnames.txt", "n01 tench\nn02 goldfish\nn03 great white shark\n")
    touch(folder / "imagenet-a" / "README.txt")
    touch(folder / "imagenet-a" / "n03" / "x.jpg")
    touch(folder / "imagenet-a" / "n02" / "y.jpg")
    splits = load_splits("imagenet_a", tmp_path)
    assert splits.train == splits.val == () and splits.split_sha256 is None
    assert splits.classnames == ("goldfish", "great white shark")  # the dataset's own classes, labels 0..1
    assert splits.test == (Item("n02/y.jpg", 0, "goldfish"), Item("n03/x.jpg", 1, "great white shark"))


def test_imagenetv2_numeric_folders(tmp_path: Path) -> None:
    folder = tmp_path / "imagenetv2"
    names = [f"class{i}" for i in range(12)]
    write(folder / "classnames.txt", "".join(f"n{i:02d} {n}\n" for i, n in enumerate(names)))
    for i in (0, 1, 2, 10, 11):
        touch(folder / "imagenetv2-matched-frequency-format-val" / str(i) / "img.jpeg")
    splits = load_splits("imagenetv2", tmp_path)
    assert splits.classnames == tuple(names)
    assert [(it.path, it.label, it.classname) for it in splits.test] == [
        (f"{i}/img.jpeg", i, f"class{i}") for i in (0, 1, 2, 10, 11)]
    touch(folder / "imagenetv2-matched-frequency-format-val" / "12" / "img.jpeg")
    with pytest.raises(DataError, match="'12' is not a number in 0..11"):
        load_splits("imagenetv2", tmp_path)


# ---------------------------------------------------------------- data errors


def test_missing_root(tmp_path: Path) -> None:
    with pytest.raises(DataError, match=f"data root {tmp_path / 'nope'} does not exist"):
        load_splits("oxford_pets", tmp_path / "nope")


def test_missing_dataset_folder(tmp_path: Path) -> None:
    with pytest.raises(DataError, match=f"dataset folder {tmp_path / 'eurosat'} is missing"):
        load_splits("eurosat", tmp_path)


def test_missing_image_folder(tmp_path: Path) -> None:
    fake_pets(tmp_path)
    (tmp_path / "oxford_pets" / "images").rmdir()
    with pytest.raises(DataError, match=f"image folder {tmp_path / 'oxford_pets' / 'images'} is missing"):
        load_splits("oxford_pets", tmp_path)


def test_missing_split_file(tmp_path: Path) -> None:
    split = fake_pets(tmp_path)
    split.unlink()
    with pytest.raises(DataError, match=f"split file {split} is missing"):
        load_splits("oxford_pets", tmp_path)


@pytest.mark.parametrize("content, message", [
    ('{"train": [', "is not valid JSON"),
    ("[1, 2]", "expected a JSON object"),
    ('{"train": [], "test": []}', "key 'val' is missing"),
    ('{"train": {}, "val": [], "test": []}', "'train' must be a list"),
    ('{"train": [["a.jpg", "1", "x"]], "val": [], "test": []}', r"'train'\[0\] must be \[relpath, label >= 0"),
    ('{"train": [["/abs/a.jpg", 0, "x"]], "val": [], "test": []}', "must be relative"),
    ('{"train": [["a.jpg", 0, "x"]], "val": [["b.jpg", 0, "y"]], "test": []}', "label 0 has two class names"),
    ('{"train": [["a.jpg", 1, "x"]], "val": [], "test": []}', "label 0 has no item"),
])
def test_malformed_split_file(tmp_path: Path, content: str, message: str) -> None:
    split = fake_pets(tmp_path)
    split.write_text(content)
    with pytest.raises(DataError, match=message) as info:
        load_splits("oxford_pets", tmp_path)
    assert str(split) in str(info.value)


def test_split_checksum(tmp_path: Path) -> None:
    split = fake_pets(tmp_path)
    digest = load_splits("oxford_pets", tmp_path).split_sha256
    assert digest == hashlib.sha256(split.read_bytes()).hexdigest()
    spec = dataclasses.replace(get_spec("oxford_pets"), split_sha256="0" * 64)
    with pytest.raises(DataError, match=f"split file {split} has SHA-256 {digest}, expected 0+"):
        load_splits(spec, tmp_path)
    assert load_splits(dataclasses.replace(spec, split_sha256=digest), tmp_path).split_sha256 == digest


def test_split_file_read_once_per_process_and_again_when_rewritten(tmp_path: Path) -> None:
    """A grid's preflight asks for a dataset's splits once per run and split: the file is parsed once, and again
    after it changes (size or modification time)."""
    from tests.conftest import write_dataset
    root = write_dataset(tmp_path / "data", "oxford_pets", 3)
    first = load_splits("oxford_pets", root)
    assert load_splits("oxford_pets", root) is first
    split_file = next((root / "oxford_pets").glob("split_zhou_*.json"))
    data = json.loads(split_file.read_text())
    data["test"] = data["test"][:1]
    split_file.write_text(json.dumps(data))
    os.utime(split_file, ns=(1, 1))
    again = load_splits("oxford_pets", root)
    assert again is not first and len(again.test) == 1 and len(first.test) > 1
