"""The image dataset over a manifest and the image checks: decoding, missing and corrupt files."""

from __future__ import annotations

import io
import json
import os
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from frozen_clip.errors import DataError
from frozen_clip.images import ImageListDataset, open_image
from protocols.datasets import Item
from protocols.imagefolder import check_images, check_images_with_ledger, image_problem
from protocols.splits import build_manifest

FIXTURES = Path(__file__).parent / "fixtures"


def to_tensor(image: Image.Image) -> torch.Tensor:
    return torch.from_numpy(np.asarray(image, dtype=np.float32)).permute(2, 0, 1) / 255


def write_image(path: Path, colour: tuple[int, int, int] = (10, 20, 30), fmt: str = "PNG") -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new("RGB", (4, 4), colour).save(path, format=fmt)


def test_dataset_returns_tensor_label_index(tmp_path: Path) -> None:
    items = [Item("a/x.jpg", 0, "a"), Item("b/y.jpg", 1, "b")]
    write_image(tmp_path / "a/x.jpg", (255, 0, 0))
    Image.new("L", (4, 4), 128).save(tmp_path / "b.png")
    (tmp_path / "b").mkdir()
    shutil.move(tmp_path / "b.png", tmp_path / "b/y.jpg")  # grey image with a .jpg name, converted to RGB
    ds = ImageListDataset(items, tmp_path, to_tensor)
    assert len(ds) == 2 and ds.labels == [0, 1]
    image, label, index = ds[1]
    assert (image.shape, label, index) == ((3, 4, 4), 1, 1)
    assert torch.allclose(ds[0][0][0], torch.ones(4, 4))


def test_dataset_from_manifest(tmp_path: Path) -> None:
    data = tmp_path / "data"
    (data / "oxford_pets" / "images").mkdir(parents=True)
    shutil.copy(FIXTURES / "split_zhou_Fake.json", data / "oxford_pets" / "split_zhou_OxfordPets.json")
    m = build_manifest("oxford_pets", data, 1, 1, "base", "dassl", tmp_path / "cache")
    for item in m.train:
        write_image(Path(m.image_root) / item.path)
    ds = ImageListDataset.from_manifest(m, "train", to_tensor)
    assert [ds[i][1] for i in range(len(ds))] == [it.label for it in m.train]
    assert ds.path(0) == Path(m.image_root) / m.train[0].path


def test_missing_image_raises_data_error_naming_it(tmp_path: Path) -> None:
    ds = ImageListDataset([Item("gone.jpg", 0, "a")], tmp_path, to_tensor)
    with pytest.raises(DataError, match=f"image {tmp_path / 'gone.jpg'} is missing"):
        ds[0]


def test_corrupt_image_raises_data_error_naming_it(tmp_path: Path) -> None:
    (tmp_path / "bad.jpg").write_bytes(b"this is not an image at all")
    with pytest.raises(DataError, match=f"image {tmp_path / 'bad.jpg'} cannot be decoded"):
        ImageListDataset([Item("bad.jpg", 0, "a")], tmp_path, to_tensor)[0]


def test_truncated_jpeg_is_unreadable(tmp_path: Path) -> None:
    buffer = io.BytesIO()
    Image.effect_noise((64, 64), 50).convert("RGB").save(buffer, format="JPEG")
    (tmp_path / "cut.jpg").write_bytes(buffer.getvalue()[: len(buffer.getvalue()) // 2])
    with pytest.raises(DataError, match="cut.jpg cannot be decoded"):
        open_image(tmp_path / "cut.jpg")


def test_check_images(tmp_path: Path) -> None:
    write_image(tmp_path / "ok.jpg", fmt="JPEG")
    (tmp_path / "bad.jpg").write_bytes(b"\x00" * 64)
    paths = [tmp_path / "ok.jpg", tmp_path / "bad.jpg", tmp_path / "gone.jpg"]
    problems = check_images(paths)
    assert [(p, why.split(" ")[0]) for p, why in problems] == [
        (str(tmp_path / "bad.jpg"), "unreadable"), (str(tmp_path / "gone.jpg"), "missing")]
    assert check_images(paths, workers=3) == problems
    assert check_images(paths, decode=False) == [(str(tmp_path / "gone.jpg"), "missing")]
    assert image_problem(tmp_path / "ok.jpg") is None


def test_check_images_with_ledger_decodes_only_new_or_changed_files(tmp_path: Path) -> None:
    """The ledger records what decoded; an unchanged file (same size and mtime) is not decoded again, so a file
    corrupted in place with both kept passes (the documented assumption), and one whose mtime moved is checked."""
    ledger = tmp_path / "cache" / "verified.json"
    write_image(tmp_path / "ok.jpg", fmt="JPEG")
    (tmp_path / "bad.jpg").write_bytes(b"\x00" * 64)
    ok, bad, gone = tmp_path / "ok.jpg", tmp_path / "bad.jpg", tmp_path / "gone.jpg"
    paths = [ok, bad, gone]
    assert check_images_with_ledger(paths, ledger) == check_images(paths)
    assert set(json.loads(ledger.read_text())) == {str(ok)}
    stat = ok.stat()
    ok.write_bytes(b"\x00" * stat.st_size)  # corrupt, same size ...
    os.utime(ok, ns=(stat.st_atime_ns, stat.st_mtime_ns))  # ... and same mtime: trusted
    assert [p for p, _ in check_images_with_ledger(paths, ledger)] == [str(bad), str(gone)]
    os.utime(ok, ns=(stat.st_atime_ns, stat.st_mtime_ns + 1))  # touched: decoded again, and found unreadable
    assert [p for p, _ in check_images_with_ledger(paths, ledger)] == [str(ok), str(bad), str(gone)]
    write_image(bad, fmt="JPEG")  # repaired: passes and joins the ledger
    assert [p for p, _ in check_images_with_ledger(paths, ledger)] == [str(ok), str(gone)]
    assert str(bad) in json.loads(ledger.read_text())
    for damaged in ("{not json", "[1, 2]"):  # a damaged ledger is ignored (everything checked), then rewritten
        ledger.write_text(damaged)
        assert [p for p, _ in check_images_with_ledger(paths, ledger)] == [str(ok), str(gone)]
        assert set(json.loads(ledger.read_text())) == {str(bad)}
