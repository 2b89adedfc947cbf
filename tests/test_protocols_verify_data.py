"""``python -m protocols.verify_data``: a data root with one missing and one corrupt image."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from PIL import Image

from frozen_clip.errors import ConfigError
from protocols.verify_data import main, verify_dataset

FIXTURES = Path(__file__).parent / "fixtures"
REPO = Path(__file__).resolve().parent.parent


@pytest.fixture(scope="module")
def pets_root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The fake split as oxford_pets with every image written (tiny PNGs)."""
    root = tmp_path_factory.mktemp("data")
    images = root / "oxford_pets" / "images"
    split = FIXTURES / "split_zhou_Fake.json"
    images.mkdir(parents=True)
    shutil.copy(split, root / "oxford_pets" / "split_zhou_OxfordPets.json")
    image = Image.new("RGB", (2, 2), (1, 2, 3))
    for path, _, _ in (e for entries in json.loads(split.read_text()).values() for e in entries):
        (images / path).parent.mkdir(parents=True, exist_ok=True)
        image.save(images / path, format="PNG")
    return root


@pytest.fixture()
def broken_root(pets_root: Path, tmp_path: Path) -> tuple[Path, Path, Path]:
    root = shutil.copytree(pets_root, tmp_path / "data")
    images = root / "oxford_pets" / "images"
    missing, corrupt = images / "boxer/tr_boxer_002.jpg", images / "Bengal/te_Bengal_003.jpg"
    missing.unlink()
    corrupt.write_bytes(b"garbage bytes, not a jpeg")
    return root, missing, corrupt


def test_cli_reports_missing_and_corrupt(broken_root: tuple[Path, Path, Path]) -> None:
    root, missing, corrupt = broken_root
    before = sorted(p for p in root.rglob("*"))
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [str(REPO), os.environ.get("PYTHONPATH")]))}
    result = subprocess.run([sys.executable, "-m", "protocols.verify_data", str(root), "--datasets", "oxford_pets"],
                            capture_output=True, text=True, cwd=REPO, env=env, timeout=120)
    assert result.returncode == 1, result.stderr
    assert str(missing) in result.stdout and str(corrupt) in result.stdout
    assert "oxford_pets: 1 missing, 1 unreadable of 261 images" in result.stdout
    assert sorted(p for p in root.rglob("*")) == before


def test_library_report(broken_root: tuple[Path, Path, Path]) -> None:
    root, missing, corrupt = broken_root
    report = verify_dataset("oxford_pets", root)
    assert not report.ok and report.n_images == 261
    assert report.missing == (str(missing),)
    assert [p for p, _ in report.unreadable] == [str(corrupt)]
    assert report.warnings == ("10 classes found, OxfordPets has 37",)
    quick = verify_dataset("oxford_pets", root, decode=False)
    assert quick.missing == (str(missing),) and quick.unreadable == ()


def test_all_good_exits_zero(pets_root: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main([str(pets_root), "--datasets", "oxford_pets"]) == 0
    assert "oxford_pets: OK (261 images decoded)" in capsys.readouterr().out


def test_missing_dataset_folder_is_a_problem(pets_root: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main([str(pets_root), "--datasets", "oxford_pets", "eurosat", "--quick"]) == 1
    out = capsys.readouterr().out
    assert f"dataset folder {pets_root / 'eurosat'} is missing" in out
    assert "1/2 datasets OK; problems in: eurosat" in out


def test_default_checks_the_15_real_datasets(pets_root: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main([str(pets_root), "--quick"]) == 1
    assert "1/15 datasets OK" in capsys.readouterr().out


def test_bad_arguments_exit_two(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main([str(tmp_path / "nope")]) == 2
    assert f"data root {tmp_path / 'nope'} does not exist" in capsys.readouterr().err
    assert main([str(tmp_path), "--datasets", "oxford_pet"]) == 2
    assert "did you mean 'oxford_pets'" in capsys.readouterr().err
    with pytest.raises(ConfigError):
        verify_dataset("oxford_pet", tmp_path)
