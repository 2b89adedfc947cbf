"""Every seed of the suite: how one is derived from named parts, and how a draw is made under one.

* :func:`derive_seed` turns any parts (a purpose, the run seed, an epoch, ...) into a 63-bit seed, stable across
  processes, so that every random stream of a run is named: ``("build", seed)`` for the method's initialisation,
  ``("epoch", seed, epoch)`` for an epoch's global RNGs, ``("loader", seed, epoch)`` for its shuffling, and the
  seeds of the augmented views below.
* :func:`seed_everything` seeds the global generators (Python, NumPy, torch), as Dassl's ``set_random_seed``.
* :func:`drawn_under` runs one draw under a seed inside a forked RNG, leaving the caller's stream as it was.
* Views: the ``v``-th augmented view of item ``i`` of a split is drawn under :func:`view_seed` of (the split
  manifest's content hash, ``v``, ``i``); with ``fast.shared_views`` under :func:`image_view_seed` of (the image's
  key, ``v``) instead (:mod:`frozen_clip.fastpaths`).
* :func:`derive_string_seed` is the other derivation, over the parts' ``str`` joined by a separator; the built-in
  world's files are a function of it, so it stays as it is.
"""

from __future__ import annotations

import hashlib
import random
from typing import Any, Callable

import numpy as np
import torch


def derive_seed(*parts: object) -> int:
    """A 63-bit seed from any parts (stable across processes, unlike ``hash``)."""
    return int.from_bytes(hashlib.sha256(repr(parts).encode()).digest()[:8], "little") >> 1


def derive_string_seed(*parts: object) -> int:
    """A 63-bit seed from any printable parts, hashed as their ``str`` joined by ``\\x1f`` (stable across processes
    and platforms)."""
    digest = hashlib.sha256("\x1f".join(map(str, parts)).encode("utf-8")).digest()
    return int.from_bytes(digest[:8], "little") >> 1


def seed_everything(seed: int) -> None:
    """Seed Python, NumPy and torch (all devices), as Dassl's ``set_random_seed``.

    Without an accelerator only the CPU generator is seeded, which is all ``torch.manual_seed`` seeds there too: it
    would also queue a lazy seeding of every accelerator backend, recording a stack trace each time (~0.6 ms a call,
    paid every epoch, as much as a whole epoch of a head-only method on cached features).
    """
    random.seed(seed)
    np.random.seed(seed % (2 ** 32))
    if torch.accelerator.is_available():
        torch.manual_seed(seed)
    else:
        torch.default_generator.manual_seed(seed)


def drawn_under(seed: int, draw: Callable[[], Any]) -> Any:
    """``draw()`` with the torch CPU generator seeded to ``seed``, inside a forked RNG (the caller's stream is left as
    it was)."""
    with torch.random.fork_rng(devices=[]):
        # the CPU generator only (what the forked state covers): ``torch.manual_seed`` would also queue a lazy seeding
        # of every accelerator backend, recording a stack trace each time (~60 us per item on CPU)
        torch.default_generator.manual_seed(seed)
        return draw()


def view_seed(key: str, view: int, index: int) -> int:
    """The seed of augmented view ``view`` of item ``index`` of the split identified by ``key``."""
    return derive_seed("view", key, view, index)


def image_view_seed(image: str, view: int) -> int:
    """The seed of augmented view ``view`` of the image whose key is ``image``
    (:func:`frozen_clip.fastpaths.image_key`; ``fast.shared_views``)."""
    return derive_seed("view-of-image", image, view)
