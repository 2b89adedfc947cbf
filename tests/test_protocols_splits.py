"""Split manifests: content, hash stability, atomic writes under the cache folder, nothing written to the data root."""

from __future__ import annotations

import hashlib
import json
import shutil
from pathlib import Path

import pytest

from frozen_clip.errors import ConfigError, DataError
from protocols.splits import SplitManifest, build_manifest, load_manifest, manifest_path

FIXTURES = Path(__file__).parent / "fixtures"
GOLDEN = json.loads((FIXTURES / "fewshot_splits.json").read_text())


def fake_pets(root: Path) -> Path:
    (root / "oxford_pets" / "images").mkdir(parents=True)
    shutil.copy(FIXTURES / "split_zhou_Fake.json", root / "oxford_pets" / "split_zhou_OxfordPets.json")
    return root


def tree(root: Path) -> dict[str, tuple[int, int]]:
    return {str(p.relative_to(root)): (p.stat().st_size, p.stat().st_mtime_ns) for p in sorted(root.rglob("*"))}


def entries(items: tuple) -> list[list]:
    return [[it.path, it.label, it.classname] for it in items]


@pytest.fixture()
def data(tmp_path: Path) -> Path:
    return fake_pets(tmp_path / "data")


def build(data: Path, cache: Path, **kw: object) -> SplitManifest:
    args = {"shots": 16, "seed": 1, "subsample": "base", "sampling": "dassl"} | kw
    return build_manifest("oxford_pets", data, cache_dir=cache, **args)  # type: ignore[arg-type]


def test_manifest_content_matches_golden(data: Path, tmp_path: Path) -> None:
    m = build(data, tmp_path / "cache")
    expected = GOLDEN["results"]["seed1"]["shots16"]["base"]
    assert entries(m.train) == expected["train"] and entries(m.val) == expected["val"]
    assert entries(m.test) == GOLDEN["test_lists_data"]["base"]
    assert list(m.classnames) == GOLDEN["classnames"]["base"] and m.n_classes == 5
    assert m.image_root == str(data.absolute() / "oxford_pets" / "images")
    split = data / "oxford_pets" / "split_zhou_OxfordPets.json"
    assert m.split_file_sha256 == hashlib.sha256(split.read_bytes()).hexdigest()


def test_manifest_written_under_cache_and_data_root_untouched(data: Path, tmp_path: Path) -> None:
    before = tree(data)
    cache = tmp_path / "cache"
    m = build(data, cache)
    assert tree(data) == before
    path = manifest_path(m, cache)
    assert path.parent == cache / "splits" / "oxford_pets"
    assert path.name == f"base-16shot-seed1-dassl-{m.content_hash}.json"
    assert [p.name for p in path.parent.iterdir()] == [path.name]  # no temp file left behind
    assert load_manifest(path) == m


def test_hash_stable_and_sensitive(data: Path, tmp_path: Path) -> None:
    m = build(data, tmp_path / "cache")
    again = build(data, tmp_path / "cache2")
    assert again.content_hash == m.content_hash and len(m.content_hash) == 16
    hashes = {m.content_hash,
              build(data, tmp_path / "c", seed=2).content_hash,
              build(data, tmp_path / "c", shots=8).content_hash,
              build(data, tmp_path / "c", subsample="new").content_hash,
              build(data, tmp_path / "c", sampling="local").content_hash}
    assert len(hashes) == 5


def test_hash_ignores_image_root(data: Path, tmp_path: Path) -> None:
    other = shutil.copytree(data, tmp_path / "other")
    a, b = build(data, tmp_path / "cache"), build(other, tmp_path / "cache")
    assert a.image_root != b.image_root and a.content_hash == b.content_hash


def test_shots_zero_keeps_full_lists(data: Path, tmp_path: Path) -> None:
    m = build(data, tmp_path / "cache", shots=0, subsample="all")
    assert (len(m.train), len(m.val), len(m.test)) == (168, 48, 45)
    assert manifest_path(m, tmp_path / "cache").name.startswith("all-full-seed1-dassl-")


def test_absolute_paths_deduplicated(data: Path, tmp_path: Path) -> None:
    m = build(data, tmp_path / "cache", shots=1)
    paths = m.absolute_paths()
    assert len(paths) == len(set(paths)) == len(m.train) + len(m.val) + len(m.test)
    assert paths[0] == Path(m.image_root) / m.train[0].path


def test_bad_arguments(data: Path, tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="inside the data root"):
        build(data, data / "cache")
    with pytest.raises(ConfigError, match="subsample"):
        build(data, tmp_path / "cache", subsample="novel")
    with pytest.raises(ConfigError, match="sampling"):
        build(data, tmp_path / "cache", sampling="numpy")
    with pytest.raises(ConfigError, match="unknown dataset"):
        build_manifest("oxfordpets", data, 1, 1, "all", "dassl", tmp_path / "cache")
    assert not (data / "cache").exists()


def test_load_manifest_errors(data: Path, tmp_path: Path) -> None:
    path = manifest_path(build(data, tmp_path / "cache"), tmp_path / "cache")
    with pytest.raises(DataError, match=f"split manifest {tmp_path / 'nope.json'} does not exist"):
        load_manifest(tmp_path / "nope.json")
    content = json.loads(path.read_text())
    content["train"] = content["train"][1:]
    path.write_text(json.dumps(content))
    with pytest.raises(DataError, match="does not match its content"):
        load_manifest(path)
    del content["seed"]
    path.write_text(json.dumps(content))
    with pytest.raises(DataError, match=f"split manifest {path}: key 'seed' is missing"):
        load_manifest(path)
    path.write_text("{")
    with pytest.raises(DataError, match="cannot be read as JSON"):
        load_manifest(path)


def test_evaluation_only_target(tmp_path: Path) -> None:
    folder = tmp_path / "data" / "imagenet-rendition"
    (folder / "imagenet-r" / "n02").mkdir(parents=True)
    (folder / "imagenet-r" / "n01").mkdir()
    (folder / "imagenet-r" / "n01" / "a.jpg").write_bytes(b"")
    (folder / "imagenet-r" / "n02" / "b.jpg").write_bytes(b"")
    (folder / "classnames.txt").write_text("n01 tench\nn02 goldfish\n")
    m = build_manifest("imagenet_r", tmp_path / "data", 0, 1, "all", "dassl", tmp_path / "cache")
    assert (m.train, m.val, m.classnames, m.split_file_sha256) == ((), (), ("tench", "goldfish"), None)
    assert [(it.path, it.label) for it in m.test] == [("n01/a.jpg", 0), ("n02/b.jpg", 1)]
    with pytest.raises(DataError, match="no train split"):
        build_manifest("imagenet_r", tmp_path / "data", 16, 1, "all", "dassl", tmp_path / "cache")
