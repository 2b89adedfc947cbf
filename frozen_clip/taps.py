"""Named taps inside the frozen CLIP towers.

A method does not fork open_clip's model code. It registers small functions at named points of the towers, and the
suite's tower forward (:mod:`frozen_clip.towers`) calls them. The points, in the order a block runs them:

``tower_in``     ``fn(x, site) -> x``        after the positional embedding, before ``ln_pre`` (image) or the first
                                             block (text); used to append shallow prompt tokens (MaPLe).
``block_in``     ``fn(x, site) -> x``        before a block; used to replace deep prompt tokens.
``attn_in``      ``fn(a, site) -> a``        the output of ``ln_1``, i.e. the input of attention (q = k = v).
``attn``         ``fn(a, site, attn, mask)``  replaces the attention call ``attn(a, a, a, attn_mask=mask)[0]``:
                 ``-> out``                  ``attn`` is the frozen ``nn.MultiheadAttention``, ``mask`` the additive
                                             mask (causal on the text tower, None on the image tower); at most one
                                             per site (CLIP-LoRA's q/k/v deltas need the projections themselves).
``mlp_hidden``   ``fn(h, site) -> h``        the output of ``mlp.c_fc`` (width 4D), before the activation.
``block_out``    ``fn(y, site, x) -> y``     after the block; ``x`` is the block input, ``y`` its output. A parallel
                                             branch returns ``y + branch(x)`` (MMA, RMAdapter).

Tensors are batch-first ``[B, L, D]``. On the image tower the CLS token is at index 0 and the patch tokens are
``x[:, site.n_prefix : site.n_prefix + gh * gw]`` in row-major order of ``site.grid_size``. Several functions at one
point run in registration order. A :class:`Taps` object is passed per call, so one frozen backbone can run a
frozen pass and an adapted pass side by side (e.g. RMAdapter's consistency targets).
"""

from __future__ import annotations

from collections import defaultdict
from dataclasses import dataclass
from typing import Callable, Iterable

import torch

POINTS: tuple[str, ...] = ("tower_in", "block_in", "attn_in", "attn", "mlp_hidden", "block_out")
TOWERS: tuple[str, ...] = ("visual", "text")

TapFn = Callable[..., torch.Tensor]


@dataclass(frozen=True)
class TapSite:
    """Where a tap runs: which tower, which block (0-based, -1 for ``tower_in``) and the token layout."""

    tower: str
    layer: int
    n_layers: int
    width: int
    grid_size: tuple[int, int] | None = None  # image patch grid (rows, cols); None on the text tower
    n_prefix: int = 0  # tokens before the patch grid (1 = CLS on the image tower)


class Taps:
    """A set of tap functions keyed by (point, tower, layer)."""

    def __init__(self) -> None:
        self._fns: dict[tuple[str, str, int], list[TapFn]] = defaultdict(list)

    def add(self, point: str, tower: str, layers: int | Iterable[int], fn: TapFn) -> "Taps":
        """Register ``fn`` at ``point`` of ``tower`` for one layer or several (``tower_in`` uses layer -1)."""
        if point not in POINTS:
            raise ValueError(f"unknown tap point {point!r}; expected one of {POINTS}")
        if tower not in TOWERS:
            raise ValueError(f"unknown tower {tower!r}; expected one of {TOWERS}")
        for layer in [layers] if isinstance(layers, int) else layers:
            if point == "attn" and self._fns.get((point, tower, int(layer))):
                raise ValueError(f"{tower} layer {layer} already has an attn replacement (at most one per site)")
            self._fns[(point, tower, int(layer))].append(fn)
        return self

    def copy(self) -> "Taps":
        """A new set with the same functions; adding to it leaves this one unchanged."""
        out = Taps()
        for key, fns in self._fns.items():
            out._fns[key] = list(fns)
        return out

    def get(self, point: str, tower: str, layer: int) -> list[TapFn]:
        """The functions registered at one site (empty list if none)."""
        return self._fns.get((point, tower, layer), [])

    def points(self, tower: str) -> set[str]:
        """The points of ``tower`` where at least one function is registered."""
        return {key[0] for key, fns in self._fns.items() if fns and key[1] == tower}

    def has_tower(self, tower: str) -> bool:
        """Whether any tap touches ``tower`` (an untapped tower can take open_clip's own forward)."""
        return any(key[1] == tower for key, fns in self._fns.items() if fns)

    def __bool__(self) -> bool:
        return any(self._fns.values())


def apply(fns: list[TapFn], x: torch.Tensor, site: TapSite, *extra: torch.Tensor) -> torch.Tensor:
    """Run ``fns`` in order on ``x``."""
    for fn in fns:
        x = fn(x, site, *extra)
    return x
