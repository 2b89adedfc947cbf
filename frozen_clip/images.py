"""Images read as the runner reads them: decoded as Dassl does (PIL, converted to RGB), and lists of labelled images
as a torch dataset.

A missing or undecodable image raises :class:`~frozen_clip.errors.DataError` naming the file, never a bare PIL
traceback deep inside a DataLoader worker. What an item is (a split's image) is decided above, in
:mod:`protocols`; here an item is anything with a ``path`` relative to an image root and a ``label``
(:class:`ImageItem`), so the runner reads images without depending on the protocols.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Callable, Protocol, Sequence

from PIL import Image, UnidentifiedImageError
from torch.utils.data import Dataset

from frozen_clip.errors import DataError

DECODE_ERRORS: tuple[type[BaseException], ...] = (
    OSError, UnidentifiedImageError, SyntaxError, ValueError, Image.DecompressionBombError)
"""What PIL raises on corrupt, truncated or hostile files."""


class ImageItem(Protocol):
    """One labelled image (e.g. :class:`protocols.datasets.Item`): ``path`` relative to an image root, ``label``."""

    @property
    def path(self) -> str: ...

    @property
    def label(self) -> int: ...


class ItemSource(Protocol):
    """Something holding the items of named splits under one image root (e.g. :class:`protocols.splits.SplitManifest`)."""

    @property
    def image_root(self) -> str: ...

    def items(self, split: str) -> Sequence[ImageItem]: ...


def load_rgb(path: str | Path) -> Image.Image:
    """The image at ``path`` decoded as RGB; PIL's own exceptions pass through (:data:`DECODE_ERRORS`)."""
    with Image.open(path) as image:
        return image.convert("RGB")


def open_image(path: str | Path) -> Image.Image:
    """The image at ``path`` fully decoded as RGB; :class:`DataError` naming the file if missing or undecodable."""
    try:
        return load_rgb(path)
    except FileNotFoundError as err:
        raise DataError(f"image {path} is missing") from err
    except DECODE_ERRORS as err:
        raise DataError(f"image {path} cannot be decoded ({type(err).__name__}: {err})") from err


class ImageListDataset(Dataset):
    """Items (paths relative to ``image_root``) as ``(transform(image), label, index)``.

    Args:
        items: the items, e.g. ``manifest.train``.
        image_root: the directory item paths are relative to.
        transform: maps the RGB PIL image to a tensor (the train or test transform).
    """

    def __init__(self, items: Sequence[ImageItem], image_root: str | Path,
                 transform: Callable[[Image.Image], Any]) -> None:
        self.items = tuple(items)
        self.image_root = Path(image_root)
        self.transform = transform

    @classmethod
    def from_manifest(cls, manifest: ItemSource, split: str,
                      transform: Callable[[Image.Image], Any]) -> "ImageListDataset":
        """The ``split`` (``train``, ``val`` or ``test``) items of ``manifest``."""
        return cls(manifest.items(split), manifest.image_root, transform)

    @property
    def labels(self) -> list[int]:
        """The label of every item, in order."""
        return [item.label for item in self.items]

    def path(self, index: int) -> Path:
        """Absolute path of item ``index``."""
        return self.image_root / self.items[index].path

    def __len__(self) -> int:
        return len(self.items)

    def __getitem__(self, index: int) -> tuple[Any, int, int]:
        return self.transform(open_image(self.path(index))), self.items[index].label, index
