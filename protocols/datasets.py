"""Dataset specs (as data), the dataset registry and the reader of the CoOp on-disk layout.

The 11 CoOp datasets and the 4 ImageNet domain-generalisation targets are declared here exactly as CoOp's dataset
classes read them (``datasets/*.py`` of KaiyangZhou/CoOp, each entry's notes saying what it follows). :func:`load_splits` reads a dataset root in the CoOp
layout **unchanged**: it never writes into the data root (Dassl writes ``split_fewshot/*.pkl`` and ImageNet's
``preprocessed.pkl`` there) and it never opens an image (see :mod:`protocols.imagefolder` for that).

Keys starting with ``world_`` (the built-in procedural demo data) are provided lazily by ``world.generate`` (the built-in world package)
through its ``WORLD_SPECS`` mapping, when that module exists.
"""

from __future__ import annotations

import hashlib
import importlib
import json
import functools
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Mapping, Sequence

from frozen_clip.configtools import suggest
from frozen_clip.errors import ConfigError, DataError

LAYOUTS = ("json", "fgvc_txt", "imagenet", "imagenet_variant")
FOLDER_LABELS = ("sorted", "numeric")
FILE_ORDERS = ("sorted", "listdir")  # how ImageNet's class folders list their files (load_splits)
CLASSNAMES_FILE = "classnames.txt"
WORLD_PREFIX = "world_"
WORLD_MODULE = "world.generate"


@dataclass(frozen=True)
class DatasetSpec:
    """How one dataset lies on disk and how CoOp reads it.

    Attributes:
        key: CoOp config name (``configs/datasets/<key>.yaml``), e.g. ``"oxford_pets"``; the suite's dataset name.
        dassl_name: Dassl ``DATASET.NAME``, e.g. ``"OxfordPets"``; the key of CoOp's ``CUSTOM_TEMPLATES``.
        folder: the dataset's folder under the data root, e.g. ``"oxford_pets"``.
        image_dir: the image folder inside ``folder`` that item paths are relative to (``"images"``); ``""`` when
            paths are relative to ``folder`` itself (StanfordCars). For ``imagenet`` it holds ``train/`` and
            ``val/``; for the ImageNet variants it holds one sub-folder per class.
        split_file: the split file inside ``folder`` (``"split_zhou_OxfordPets.json"``), or None where the split
            comes from folders or text files.
        layout: ``"json"`` (Zhou split file), ``"fgvc_txt"`` (``variants.txt`` + ``images_variant_*.txt``),
            ``"imagenet"`` (``images/train`` + ``images/val`` wnid folders, val used as test) or
            ``"imagenet_variant"`` (test-only class folders under ``image_dir``).
        template: CoOp's ``CUSTOM_TEMPLATES`` entry (``trainers/zsclip.py``), with one ``{}``.
        n_classes: number of classes of the real dataset (checked by ``verify_data``; not enforced when loading,
            so that synthetic stand-ins in the same layout load too).
        has_val: default True; False for the ImageNet family, which has no validation split (the few-shot draw
            then samples train only).
        notes: default ``""``; class-name fixes and other documentation carried with the entry.
        folder_labels: default ``"sorted"``: for the folder layouts, label = index of the class folder in sorted
            order (ImageNet, -Sketch, -A, -R); ``"numeric"``: the folder name is the label (ImageNetV2, ``0..999``).
        split_sha256: default None (not checked); the expected SHA-256 of ``split_file`` when known.
    """

    key: str
    dassl_name: str
    folder: str
    image_dir: str
    split_file: str | None
    layout: str
    template: str
    n_classes: int
    has_val: bool = True
    notes: str = ""
    folder_labels: str = "sorted"
    split_sha256: str | None = None

    def __post_init__(self) -> None:
        where = f"dataset spec {self.key!r}"
        if not self.key or not self.folder:
            raise ConfigError(f"{where}: key and folder must be non-empty")
        if self.layout not in LAYOUTS:
            raise ConfigError(f"{where}: layout {self.layout!r} is not one of {list(LAYOUTS)}")
        if self.folder_labels not in FOLDER_LABELS:
            raise ConfigError(f"{where}: folder_labels {self.folder_labels!r} is not one of {list(FOLDER_LABELS)}")
        if (self.layout == "json") != (self.split_file is not None):
            raise ConfigError(f"{where}: a split_file is required for layout 'json' and only for it")
        if self.template.count("{}") != 1:
            raise ConfigError(f"{where}: template {self.template!r} must contain exactly one '{{}}'")
        if self.n_classes < 1:
            raise ConfigError(f"{where}: n_classes must be positive, got {self.n_classes}")

    @property
    def has_train(self) -> bool:
        """False for the test-only ImageNet variants (evaluation targets only)."""
        return self.layout != "imagenet_variant"


@dataclass(frozen=True)
class Item:
    """One labelled image: ``path`` relative to the dataset's image directory, ``label``, ``classname``."""

    path: str
    label: int
    classname: str


@dataclass(frozen=True)
class DatasetSplits:
    """The full train/val/test lists of a dataset as read from disk (no sampling).

    ``image_root`` is the absolute directory item paths are relative to; ``val`` is empty for the ImageNet family;
    ``classnames[label]`` is the class name of ``label``; ``split_sha256`` (default None: folder layouts) is the
    SHA-256 of the split source (the split JSON; FGVC's ``variants.txt`` and three split files, in that order).
    """

    spec: DatasetSpec
    image_root: Path
    train: tuple[Item, ...]
    val: tuple[Item, ...]
    test: tuple[Item, ...]
    classnames: tuple[str, ...]
    split_sha256: str | None = None


_IMAGENET_NOTE = "labels = index of the sorted wnid folder; names from classnames.txt (CLIP's curated names)"

_BUILTIN_SPECS: tuple[DatasetSpec, ...] = (
    DatasetSpec("imagenet", "ImageNet", "imagenet", "images", None, "imagenet", "a photo of a {}.", 1000,
                has_val=False,
                notes=f"train = images/train, test = images/val (official val); no val split; {_IMAGENET_NOTE}; "
                      "files listed in sorted order (Dassl uses os.listdir order, so ImageNet draws are not "
                      "bit-exact with Dassl's; sampling: dassl_listdir lists them in os.listdir order)"),
    DatasetSpec("caltech101", "Caltech101", "caltech-101", "101_ObjectCategories", "split_zhou_Caltech101.json",
                "json", "a photo of a {}.", 100,
                notes="BACKGROUND_Google and Faces_easy ignored; airplanes->airplane, Faces->face, "
                      "Leopards->leopard, Motorbikes->motorbike (in the split file)"),
    DatasetSpec("oxford_pets", "OxfordPets", "oxford_pets", "images", "split_zhou_OxfordPets.json", "json",
                "a photo of a {}, a type of pet.", 37,
                notes="breed = file name without the trailing index, lower-cased (in the split file)"),
    DatasetSpec("stanford_cars", "StanfordCars", "stanford_cars", "", "split_zhou_StanfordCars.json", "json",
                "a photo of a {}.", 196,
                notes="paths relative to stanford_cars/ (cars_train/, cars_test/); model year moved to the front "
                      "of the devkit name (in the split file)"),
    DatasetSpec("oxford_flowers", "OxfordFlowers", "oxford_flowers", "jpg", "split_zhou_OxfordFlowers.json", "json",
                "a photo of a {}, a type of flower.", 102, notes="names from cat_to_name.json (in the split file)"),
    DatasetSpec("food101", "Food101", "food-101", "images", "split_zhou_Food101.json", "json",
                "a photo of {}, a type of food.", 101),
    DatasetSpec("fgvc_aircraft", "FGVCAircraft", "fgvc_aircraft", "images", None, "fgvc_txt",
                "a photo of a {}, a type of aircraft.", 100,
                notes="official split: class list = lines of variants.txt (label = line index); images from "
                      "images_variant_{train,val,test}.txt (<id> <variant>, image images/<id>.jpg)"),
    DatasetSpec("sun397", "SUN397", "sun397", "SUN397", "split_zhou_SUN397.json", "json", "a photo of a {}.", 397,
                notes="first-letter directory dropped, remaining components reversed and joined by spaces "
                      "(in the split file)"),
    DatasetSpec("dtd", "DescribableTextures", "dtd", "images", "split_zhou_DescribableTextures.json", "json",
                "{} texture.", 47),
    DatasetSpec("eurosat", "EuroSAT", "eurosat", "2750", "split_zhou_EuroSAT.json", "json",
                "a centered satellite photo of {}.", 10,
                notes="AnnualCrop->Annual Crop Land, HerbaceousVegetation->Herbaceous Vegetation Land, "
                      "Highway->Highway or Road, Industrial->Industrial Buildings, Pasture->Pasture Land, "
                      "PermanentCrop->Permanent Crop Land, Residential->Residential Buildings, SeaLake->Sea or Lake "
                      "(in the split file)"),
    DatasetSpec("ucf101", "UCF101", "ucf101", "UCF-101-midframes", "split_zhou_UCF101.json", "json",
                "a photo of a person doing {}.", 101,
                notes="middle frame of each video; CamelCase split at capitals and joined by '_' (in the split file)"),
    DatasetSpec("imagenetv2", "ImageNetV2", "imagenetv2", "imagenetv2-matched-frequency-format-val", None,
                "imagenet_variant", "a photo of a {}.", 1000, has_val=False, folder_labels="numeric",
                notes="test only; label = folder number 0..999, name = label-th line of classnames.txt "
                      "(a copy of ImageNet's)"),
    DatasetSpec("imagenet_sketch", "ImageNetSketch", "imagenet-sketch", "images", None, "imagenet_variant",
                "a photo of a {}.", 1000, has_val=False, notes=f"test only; {_IMAGENET_NOTE}"),
    DatasetSpec("imagenet_a", "ImageNetA", "imagenet-adversarial", "imagenet-a", None, "imagenet_variant",
                "a photo of a {}.", 200, has_val=False,
                notes="test only; 200 sorted wnid folders (README.txt ignored), labels 0..199, names from "
                      "classnames.txt in this folder (ImageNet's names)"),
    DatasetSpec("imagenet_r", "ImageNetR", "imagenet-rendition", "imagenet-r", None, "imagenet_variant",
                "a photo of a {}.", 200, has_val=False,
                notes="test only; 200 sorted wnid folders (README.txt ignored), labels 0..199, names from "
                      "classnames.txt in this folder (ImageNet's names)"),
)

COOP_DATASETS: tuple[str, ...] = tuple(s.key for s in _BUILTIN_SPECS[:11])
"""The 11 CoOp datasets in the papers' table order."""
DG_TARGETS: tuple[str, ...] = ("imagenetv2", "imagenet_sketch", "imagenet_a", "imagenet_r")
"""The 4 ImageNet domain-generalisation targets."""

_REGISTRY: dict[str, DatasetSpec] = {}


def register_dataset(spec: DatasetSpec) -> DatasetSpec:
    """Add ``spec`` to the registry; raises :class:`ConfigError` when its key is already registered."""
    if spec.key in _REGISTRY:
        raise ConfigError(f"dataset {spec.key!r} is already registered")
    _REGISTRY[spec.key] = spec
    return spec


def _world_specs() -> Mapping[str, DatasetSpec]:
    """``world.generate.WORLD_SPECS`` if that module exists, else an empty mapping."""
    try:
        module = importlib.import_module(WORLD_MODULE)
    except ModuleNotFoundError as err:
        if err.name == WORLD_MODULE:
            return {}
        raise
    specs: Mapping[str, DatasetSpec] = module.WORLD_SPECS
    for key, spec in specs.items():
        if not key.startswith(WORLD_PREFIX) or key != spec.key or key in _REGISTRY:
            raise ConfigError(f"{WORLD_MODULE}.WORLD_SPECS: key {key!r} must start with {WORLD_PREFIX!r}, equal its "
                              f"spec's key ({spec.key!r}) and not clash with a registered dataset")
    return specs


def list_datasets(include_world: bool = True) -> list[str]:
    """Registered dataset keys in registration order, then the ``world_*`` keys (sorted) when asked."""
    keys = list(_REGISTRY)
    if include_world:
        keys += sorted(_world_specs())
    return keys


def get_spec(key: str) -> DatasetSpec:
    """The spec registered under ``key``; :class:`ConfigError` with a close-match suggestion otherwise."""
    if key in _REGISTRY:
        return _REGISTRY[key]
    if key.startswith(WORLD_PREFIX):
        world = _world_specs()
        if key in world:
            return world[key]
    raise ConfigError(f"unknown dataset {key!r}{suggest(key, list_datasets())}")


def resolve_spec(key_or_spec: str | DatasetSpec) -> DatasetSpec:
    """``key_or_spec`` itself when it is a spec, else :func:`get_spec` of it."""
    return key_or_spec if isinstance(key_or_spec, DatasetSpec) else get_spec(key_or_spec)


for _spec in _BUILTIN_SPECS:
    register_dataset(_spec)


# --------------------------------------------------------------------------------------------------------------
# Reading the on-disk layout


def dataset_dir(spec: DatasetSpec, data_root: str | Path) -> Path:
    """The dataset's folder under ``data_root`` (absolute, symlinks kept); :class:`DataError` if missing."""
    root = Path(data_root).expanduser().absolute()
    if not root.is_dir():
        raise DataError(f"data root {root} does not exist (expected a folder holding the datasets in CoOp layout)")
    folder = root / spec.folder
    if not folder.is_dir():
        raise DataError(f"dataset folder {folder} is missing (expected {spec.dassl_name} in CoOp layout: "
                        f"<data root>/{spec.folder}/)")
    return folder


def image_root(spec: DatasetSpec, data_root: str | Path) -> Path:
    """The absolute directory item paths of ``spec`` are relative to; :class:`DataError` if missing."""
    folder = dataset_dir(spec, data_root)
    root = folder / spec.image_dir if spec.image_dir else folder
    if not root.is_dir():
        raise DataError(f"image folder {root} is missing (expected the images of {spec.dassl_name} there)")
    return root


def split_sources(spec: DatasetSpec, data_root: str | Path) -> tuple[Path, ...]:
    """The files the split is read from (split JSON, or FGVC's text files); empty for the folder layouts."""
    return _sources(spec, dataset_dir(spec, data_root))


def _sources(spec: DatasetSpec, folder: Path) -> tuple[Path, ...]:
    if spec.layout == "json":
        return (folder / str(spec.split_file),)
    if spec.layout == "fgvc_txt":
        return (folder / "variants.txt", *(folder / f"images_variant_{n}.txt" for n in ("train", "val", "test")))
    return ()


def _checksum(spec: DatasetSpec, folder: Path) -> str | None:
    """SHA-256 of the split source (the split JSON; FGVC's four text files in order), None for folder layouts.

    Raises :class:`DataError` when ``spec.split_sha256`` is set and differs (a wrong or edited split file).
    """
    sources = _sources(spec, folder)
    if not sources:
        return None
    digest = hashlib.sha256()
    for path in sources:
        digest.update(path.read_bytes())
    found = digest.hexdigest()
    if spec.split_sha256 is not None and found != spec.split_sha256:
        raise DataError(f"split file {sources[0]} has SHA-256 {found}, expected {spec.split_sha256} "
                        f"(a different or edited split file)")
    return found


def load_splits(key_or_spec: str | DatasetSpec, data_root: str | Path, file_order: str = "sorted") -> DatasetSplits:
    """Read the full train/val/test lists of a dataset from ``data_root`` (CoOp layout, read-only, no images opened).

    ``file_order`` applies to ImageNet's folder layout: ``sorted`` (the default: the same lists on every machine) or
    ``listdir`` (the order ``os.listdir`` gives, which Dassl's ``listdir_nohidden(sort=False)`` reads and draws
    from: reproduces Dassl's ImageNet draws on the same file system only).

    Raises:
        ConfigError: unknown dataset key.
        DataError: missing data root, dataset folder, image folder or split file; malformed split file; a split
            file whose SHA-256 differs from ``spec.split_sha256`` (the message names the path and what was
            expected).
    """
    spec = resolve_spec(key_or_spec)
    folder = dataset_dir(spec, data_root)
    root = image_root(spec, data_root)
    if file_order not in FILE_ORDERS:
        raise ConfigError(f"file_order must be one of {list(FILE_ORDERS)}, got {file_order!r}")
    key = _splits_key(spec, folder, root)
    if key is not None and key in _SPLITS_READ:
        return _SPLITS_READ[key]
    readers = {"json": _read_json_layout, "fgvc_txt": _read_fgvc_layout,
               "imagenet": functools.partial(_read_imagenet_layout, file_order=file_order),
               "imagenet_variant": _read_variant_layout}
    train, val, test, classnames = readers[spec.layout](spec, folder, root)
    splits = DatasetSplits(spec, root, tuple(train), tuple(val), tuple(test), tuple(classnames),
                           _checksum(spec, folder))
    if key is not None:
        _SPLITS_READ[key] = splits
    return splits


# Split files read in this process, by :func:`_splits_key`: a grid's preflight builds a manifest per run and split,
# and re-reading a split JSON for each (thousands of times for a large grid) was most of a submission's CPU time.
_SPLITS_READ: dict[tuple, DatasetSplits] = {}


def _splits_key(spec: DatasetSpec, folder: Path, root: Path) -> tuple | None:
    """What a dataset's split lists depend on: the spec, the folders and each split file's size and modification
    time (a rewritten file is read again); None for folder layouts, whose lists come from listing directories."""
    sources = _sources(spec, folder)
    if not sources:
        return None
    try:
        stamps = tuple((st.st_size, st.st_mtime_ns) for st in (os.stat(path) for path in sources))
    except OSError:
        return None  # a missing file: the reader says which
    return (spec, str(folder), str(root), stamps)


_Lists = tuple[list[Item], list[Item], list[Item], list[str]]


def _read_text(path: Path, what: str = "split file") -> str:
    if not path.is_file():
        raise DataError(f"{what} {path} is missing")
    try:
        return path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as err:
        raise DataError(f"{what} {path} cannot be read: {err}") from err


def _read_json_layout(spec: DatasetSpec, folder: Path, root: Path) -> _Lists:
    (path,) = _sources(spec, folder)
    try:
        data = json.loads(_read_text(path))
    except json.JSONDecodeError as err:
        raise DataError(f"split file {path} is not valid JSON: {err}") from err
    if not isinstance(data, dict):
        raise DataError(f"split file {path}: expected a JSON object with keys 'train', 'val', 'test', "
                        f"got {type(data).__name__}")
    lists = [_parse_entries(path, data, name) for name in ("train", "val", "test")]
    return lists[0], lists[1], lists[2], _classnames_from_items(lists, str(path))


def _parse_entries(path: Path, data: dict[str, Any], name: str) -> list[Item]:
    """Entries ``[relpath, label, classname]`` under ``data[name]`` as items, validated."""
    if name not in data:
        raise DataError(f"split file {path}: key {name!r} is missing (expected 'train', 'val' and 'test')")
    return items_from_entries(data[name], f"split file {path}: {name!r}")


def items_from_entries(entries: Any, where: str) -> list[Item]:
    """JSON entries ``[[relpath, label, classname], ...]`` as items; :class:`DataError` naming ``where`` if bad."""
    if not isinstance(entries, list):
        raise DataError(f"{where} must be a list of [relpath, label, classname], got {type(entries).__name__}")
    items = []
    for i, entry in enumerate(entries):
        if not (isinstance(entry, list) and len(entry) == 3 and isinstance(entry[0], str)
                and type(entry[1]) is int and entry[1] >= 0 and isinstance(entry[2], str)):
            raise DataError(f"{where}[{i}] must be [relpath, label >= 0, classname], got {entry!r}")
        if os.path.isabs(entry[0]):
            raise DataError(f"{where}[{i}]: path {entry[0]!r} must be relative")
        items.append(Item(entry[0], entry[1], entry[2]))
    return items


def _classnames_from_items(lists: Sequence[Sequence[Item]], source: str) -> list[str]:
    """``names[label]`` over every item of ``lists``; :class:`DataError` on a gap or on two names for one label."""
    names: dict[int, str] = {}
    for items in lists:
        for item in items:
            if names.setdefault(item.label, item.classname) != item.classname:
                raise DataError(f"{source}: label {item.label} has two class names, "
                                f"{names[item.label]!r} and {item.classname!r}")
    missing = sorted(set(range(len(names))) - set(names))
    if missing:
        raise DataError(f"{source}: labels must be 0..{max(names)}, label {missing[0]} has no item")
    return [names[label] for label in range(len(names))]


def _read_fgvc_layout(spec: DatasetSpec, folder: Path, root: Path) -> _Lists:
    variants, *split_files = _sources(spec, folder)
    classnames = [line.strip() for line in _read_text(variants).splitlines() if line.strip()]
    if not classnames:
        raise DataError(f"split file {variants} is empty (expected one aircraft variant per line)")
    label_of = {name: label for label, name in enumerate(classnames)}
    train, val, test = (_read_fgvc_split(path, label_of) for path in split_files)
    return train, val, test, classnames


def _read_fgvc_split(path: Path, label_of: dict[str, int]) -> list[Item]:
    items = []
    for number, line in enumerate(_read_text(path).splitlines(), start=1):
        if not line.strip():
            continue
        image_id, _, name = line.strip().partition(" ")
        if name not in label_of:
            raise DataError(f"split file {path}, line {number}: variant {name!r} is not in variants.txt "
                            f"(expected '<image id> <variant>')")
        items.append(Item(f"{image_id}.jpg", label_of[name], name))
    return items


def _visible(entries: Sequence[str]) -> list[str]:
    return sorted(e for e in entries if not e.startswith("."))


def _scan(directory: Path) -> list[os.DirEntry]:
    """The entries of a dataset folder; :class:`DataError` naming it when it cannot be listed (permissions, gone)."""
    try:
        with os.scandir(directory) as entries:
            return list(entries)
    except OSError as err:
        raise DataError(f"dataset folder {directory} cannot be read ({err.strerror}): check that it exists and is "
                        "readable by this user") from None


def _class_folders(directory: Path) -> list[str]:
    """Sorted non-hidden sub-folders of ``directory`` (files such as README.txt are ignored)."""
    if not directory.is_dir():
        raise DataError(f"image folder {directory} is missing (expected one sub-folder per class)")
    folders = _visible([e.name for e in _scan(directory) if e.is_dir()])
    if not folders:
        raise DataError(f"image folder {directory} has no class sub-folders")
    return folders


def _read_classnames_file(path: Path) -> dict[str, str]:
    """``classnames.txt``: ``<wnid> <name>`` per line, in file order."""
    names: dict[str, str] = {}
    for number, line in enumerate(_read_text(path, "class-name file").splitlines(), start=1):
        wnid, _, name = line.strip().partition(" ")
        if wnid and not name:
            raise DataError(f"class-name file {path}, line {number}: expected '<wnid> <class name>', got {line!r}")
        if wnid:
            names[wnid] = name
    return names


def _folder_items(root: Path, sub: str, folders: Sequence[str], labels: Sequence[int],
                  names: Sequence[str], file_order: str = "sorted") -> list[Item]:
    """Items of each class folder ``root/sub/folder`` (files in sorted order, or with ``file_order: listdir`` in the
    order the file system lists them, as Dassl reads them), paths relative to ``root``."""
    items = []
    for folder, label, name in zip(folders, labels, names):
        prefix = f"{sub}/{folder}" if sub else folder
        listed = [e.name for e in _scan(root / prefix) if e.is_file()]  # os.scandir: os.listdir's order
        files = _visible(listed) if file_order == "sorted" else [f for f in listed if not f.startswith(".")]
        items.extend(Item(f"{prefix}/{f}", label, name) for f in files)
    return items


def _names_for(folders: Sequence[str], names: dict[str, str], path: Path) -> list[str]:
    missing = [f for f in folders if f not in names]
    if missing:
        raise DataError(f"class-name file {path} has no line for folder {missing[0]!r} ({len(missing)} missing)")
    return [names[f] for f in folders]


def _read_imagenet_layout(spec: DatasetSpec, folder: Path, root: Path, file_order: str = "sorted") -> _Lists:
    names_path = folder / CLASSNAMES_FILE
    folders = _class_folders(root / "train")
    test_folders = _class_folders(root / "val")
    if test_folders != folders:
        raise DataError(f"image folders {root / 'train'} and {root / 'val'} hold different class folders "
                        f"({len(folders)} vs {len(test_folders)}); expected the same wnids")
    classnames = _names_for(folders, _read_classnames_file(names_path), names_path)
    labels = range(len(folders))
    train = _folder_items(root, "train", folders, labels, classnames, file_order)
    test = _folder_items(root, "val", folders, labels, classnames, file_order)
    return train, [], test, classnames


def _read_variant_layout(spec: DatasetSpec, folder: Path, root: Path) -> _Lists:
    names_path = folder / CLASSNAMES_FILE
    names = _read_classnames_file(names_path)
    folders = _class_folders(root)
    if spec.folder_labels == "numeric":
        classnames = list(names.values())
        bad = [f for f in folders if not (f.isdigit() and int(f) < len(classnames))]
        if bad:
            raise DataError(f"image folder {root}: class folder {bad[0]!r} is not a number in "
                            f"0..{len(classnames) - 1} (the lines of {names_path})")
        folders = sorted(folders, key=int)
        labels = [int(f) for f in folders]
        folder_names = [classnames[label] for label in labels]
    else:
        classnames = folder_names = _names_for(folders, names, names_path)
        labels = list(range(len(folders)))
    return [], [], _folder_items(root, "", folders, labels, folder_names), classnames
