"""Few-shot sampling and base/novel class subsampling, exactly as Dassl/CoOp do it.

Pure Python: every draw goes through an explicit :class:`random.Random`; the global ``random`` state is never
touched. ``dassl`` mode reproduces the lists of CoOp's ``train.py`` for a given seed bit for bit (its Python
``random`` state at the first draw equals ``random.Random(seed)``); ``local`` mode draws from RNGs keyed by a
stable hash of (dataset, k, seed), so a split never depends on what else ran before it.
"""

from __future__ import annotations

import hashlib
import json
import math
import random
from typing import Sequence

from frozen_clip.errors import ConfigError, DataError
from protocols.datasets import DatasetSplits, Item

#: ``dassl_listdir``: Dassl's draw with ImageNet's files in ``os.listdir`` order (as Dassl reads them)
SAMPLING_MODES = ("dassl", "local", "dassl_listdir")
SUBSAMPLES = ("all", "base", "new")
MAX_VAL_SHOTS = 4  # CoOp datasets draw min(k, 4) validation shots per class


def dassl_fewshot(items: Sequence[Item], k: int, rng: random.Random) -> list[Item]:
    """Dassl's ``generate_fewshot_dataset(items, num_shots=k)`` (``repeat=False``) on ``rng``.

    Items are grouped by label, groups in order of the label's first appearance, each group in file order; a group
    with at least ``k`` items gives ``rng.sample(group, k)``, a smaller one gives the whole group without a draw.
    """
    if k < 1:
        raise ConfigError(f"few-shot k must be >= 1, got {k}")
    groups: dict[int, list[Item]] = {}
    for item in items:
        groups.setdefault(item.label, []).append(item)
    out: list[Item] = []
    for group in groups.values():
        out.extend(rng.sample(group, k) if len(group) >= k else group)
    return out


def val_shots(k: int) -> int:
    """Validation shots per class for ``k`` training shots: ``min(k, 4)``."""
    return min(k, MAX_VAL_SHOTS)


def _local_rng(dataset: str, k: int, seed: int, role: str) -> random.Random:
    """An RNG seeded from SHA-256 of (dataset, k, seed, role): stable across processes and Python versions."""
    key = json.dumps([dataset, k, seed, role]).encode()
    return random.Random(int.from_bytes(hashlib.sha256(key).digest()[:8], "big"))


def sample_fewshot(splits: DatasetSplits, shots: int, seed: int,
                   mode: str = "dassl") -> tuple[tuple[Item, ...], tuple[Item, ...]]:
    """The ``shots``-shot (train, val) lists of ``splits`` for split seed ``seed``.

    ``dassl`` (and ``dassl_listdir``, whose lists differ only in ImageNet's file order, see
    :func:`~protocols.datasets.load_splits`): one ``random.Random(seed)`` stream, train drawn first with ``shots``
    then val with ``min(shots, 4)``;
    datasets without a val split (ImageNet family) draw train only and return an empty val. ``local``: train and
    val each from their own RNG keyed by (dataset key, shots, seed). ``shots == 0`` returns the full lists.
    """
    if mode not in SAMPLING_MODES:
        raise ConfigError(f"sampling {mode!r} is not one of {list(SAMPLING_MODES)}")
    if shots < 0:
        raise ConfigError(f"shots must be >= 0, got {shots}")
    if shots == 0:
        return splits.train, splits.val
    if not splits.train:
        raise DataError(f"dataset {splits.spec.key!r} has no train split to draw {shots} shots from")
    if mode in ("dassl", "dassl_listdir"):
        train_rng = val_rng = random.Random(seed)
    else:
        train_rng = _local_rng(splits.spec.key, shots, seed, "train")
        val_rng = _local_rng(splits.spec.key, shots, seed, "val")
    train = tuple(dassl_fewshot(splits.train, shots, train_rng))
    if not splits.spec.has_val:
        return train, ()
    return train, tuple(dassl_fewshot(splits.val, val_shots(shots), val_rng))


def _check_subsample(which: str) -> None:
    if which not in SUBSAMPLES:
        raise ConfigError(f"subsample {which!r} is not one of {list(SUBSAMPLES)}")


def selected_labels(train: Sequence[Item], which: str) -> list[int]:
    """The original labels kept by ``which``: sorted labels of ``train``, base = first ⌈n/2⌉, new = the rest."""
    _check_subsample(which)
    labels = sorted({item.label for item in train})
    if which == "all":
        return labels
    if not labels:
        raise DataError(f"cannot choose {which!r} classes: the train list (which defines them) is empty")
    m = math.ceil(len(labels) / 2)
    return labels[:m] if which == "base" else labels[m:]


def subsample_classes(train: Sequence[Item], val: Sequence[Item], test: Sequence[Item],
                      which: str = "all") -> tuple[list[Item], list[Item], list[Item]]:
    """CoOp's ``subsample_classes``: keep the ``which`` classes (defined by ``train``) and relabel them from 0.

    Kept items keep their order and class name; ``all`` returns the lists unchanged.
    """
    _check_subsample(which)
    if which == "all":
        return list(train), list(val), list(test)
    relabel = {old: new for new, old in enumerate(selected_labels(train, which))}

    def keep(items: Sequence[Item]) -> list[Item]:
        return [Item(it.path, relabel[it.label], it.classname) for it in items if it.label in relabel]

    return keep(train), keep(val), keep(test)


def base_new_classnames(classnames: Sequence[str], train: Sequence[Item], which: str) -> tuple[str, ...]:
    """Class names after :func:`subsample_classes` (index = new label): ``classnames[old]`` of each kept label.

    With ``all`` every class name is kept, including classes absent from ``train`` (Dassl leaves the lists as they
    are).
    """
    _check_subsample(which)
    if which == "all":
        return tuple(classnames)
    return tuple(classnames[label] for label in selected_labels(train, which))
