"""HeBA's bottleneck block family: ``LN(x + up(GELU(mid(down(x)))))`` on per-token, grid or token-axis layouts.

Source: ``Jahid12012021/VLM-HeBA@60ecf23:trainers/heba.py`` L64-112 (``RobustAdapterBlock``).
The block carries its own residual and LayerNorm, so its output is *not* near zero at initialisation:
with ``up = 0`` it returns ``LN(x)``.

Layouts (``kind``), all taking and returning batch-first tokens ``[B, N, D]``:

``linear``         per token: ``down = Linear(D, b)``, ``mid = Identity``, ``up = Linear(b, D)`` (official text side).
``conv2d``         the N tokens are a row-major patch grid ``[B, D, gh, gw]``: ``down`` and ``up`` are 1x1 ``Conv2d``,
                   ``mid`` a depthwise 3x3 ``Conv2d`` with zero padding (official image side; a "depthwise-separable"
                   convolution with GELU after the depthwise step).
``conv1d``         the 1-D analogue along the token axis: 1x1 ``Conv1d`` -> depthwise ``Conv1d(k=3, padding=1)`` ->
                   GELU -> 1x1 ``Conv1d`` [a guess]. It mixes each token with both neighbours, including the
                   *next* one, so it is not causal.
``conv1d_causal``  as ``conv1d`` with the depthwise kernel left-padded by 2: token t sees tokens t-2..t only, so a
                   causal text tower stays causal (truncating the text context stays exact).

No biases, no dropout, exact (erf) GELU, ``LayerNorm(D)`` with eps 1e-5 (all as the official block).

Init schemes (:func:`init_bottleneck_`), usable by any block with ``down``/``mid``/``up`` weights:

``official``       ``up``: ``kaiming_normal_(mode='fan_out', nonlinearity='relu')``; ``down``/``mid``: PyTorch default
                   (``kaiming_uniform_(a=sqrt(5))``); LayerNorm (1, 0). (heba.py L86-87)
``zero``           ``up`` = 0, the rest as ``official`` (a draft called it ``zero_up``). With the internal LN the
                   block is not the identity: ``block(x) = LN(x)``.
``kaiming_all``    ``kaiming_normal_(fan_out, relu)`` on ``down``, ``mid`` and ``up``.
``xavier``         ``xavier_uniform_`` on ``down``, ``mid`` and ``up``.
``torch_default``  PyTorch's default on every weight, ``up`` included.
"""

from __future__ import annotations

from typing import Literal

import torch
from torch import nn
from torch.nn import functional as F

from adapters.blocks import kaiming_fan_out_, xavier_, zero_
from frozen_clip.errors import ConfigError

BlockKind = Literal["linear", "conv2d", "conv1d", "conv1d_causal"]
InitScheme = Literal["official", "zero", "kaiming_all", "xavier", "torch_default"]
BLOCK_KINDS: tuple[str, ...] = ("linear", "conv2d", "conv1d", "conv1d_causal")
INIT_SCHEMES: tuple[str, ...] = ("official", "zero", "kaiming_all", "xavier", "torch_default")


def bottleneck_width(dim: int, ratio: int, where: str = "bottleneck_ratio") -> int:
    """``dim // ratio``; :class:`ConfigError` unless ``ratio`` divides ``dim``."""
    if ratio <= 0 or dim % ratio:
        raise ConfigError(f"{where}: {ratio} must be a positive divisor of the adapted width {dim}")
    return dim // ratio


class BottleneckBlock(nn.Module):
    """``LN(x + up(GELU(mid(down(x)))))`` (HeBA's ``RobustAdapterBlock``) on ``[B, N, D]`` tokens.

    Submodules are created in the official order (``down``, ``up``, ``mid``, ``norm``: the state-dict order of the
    official module), so that under the same seed the PyTorch-default weights are drawn identically (checked
    bitwise against the official initialisation in the golden fixture).
    """

    def __init__(self, dim: int, ratio: int = 4, kind: BlockKind = "linear") -> None:
        super().__init__()
        if kind not in BLOCK_KINDS:
            raise ConfigError(f"bottleneck kind {kind!r} is not one of {list(BLOCK_KINDS)}")
        hidden = bottleneck_width(dim, ratio)
        self.kind = kind
        self.down, self.up, self.mid = _projections(dim, hidden, kind)
        self.act = nn.GELU()  # exact erf GELU, unlike CLIP's QuickGELU
        self.norm = nn.LayerNorm(dim)

    def branch(self, x: torch.Tensor, grid_size: tuple[int, int] | None = None) -> torch.Tensor:
        """``up(GELU(mid(down(x))))`` on ``[B, N, D]`` (the inner function f, without residual and norm)."""
        if self.kind == "linear":
            return self.up(self.act(self.down(x)))
        if self.kind == "conv2d":
            if grid_size is None:
                raise ValueError("a conv2d bottleneck needs the patch grid size")
            b, n, d = x.shape
            grid = x.transpose(1, 2).reshape(b, d, *grid_size)  # row-major, as the official [N,B,D]->[B,D,p,p]
            y = self.up(self.act(self.mid(self.down(grid))))
            return y.reshape(b, d, n).transpose(1, 2)
        seq = x.transpose(1, 2)  # [B, D, N]: convolve along the token axis
        y = self.down(seq)
        if self.kind == "conv1d_causal":
            y = F.pad(y, (2, 0))  # left padding only: position t sees t-2..t
        return self.up(self.act(self.mid(y))).transpose(1, 2)

    def forward(self, x: torch.Tensor, grid_size: tuple[int, int] | None = None) -> torch.Tensor:
        return self.norm(x + self.branch(x, grid_size))


def _projections(dim: int, hidden: int, kind: str) -> tuple[nn.Module, nn.Module, nn.Module]:
    """(down, up, mid) of one layout, created in this order (the RNG order of the official constructor)."""
    if kind == "linear":
        return nn.Linear(dim, hidden, bias=False), nn.Linear(hidden, dim, bias=False), nn.Identity()
    if kind == "conv2d":
        return (nn.Conv2d(dim, hidden, 1, bias=False), nn.Conv2d(hidden, dim, 1, bias=False),
                nn.Conv2d(hidden, hidden, 3, padding=1, groups=hidden, bias=False))
    padding = 1 if kind == "conv1d" else 0  # conv1d_causal pads explicitly on the left
    return (nn.Conv1d(dim, hidden, 1, bias=False), nn.Conv1d(hidden, dim, 1, bias=False),
            nn.Conv1d(hidden, hidden, 3, padding=padding, groups=hidden, bias=False))


def _weights(block: nn.Module) -> list[torch.Tensor]:
    """The projection weights of a block (``down``, ``mid`` if it has one, ``up``)."""
    parts = [getattr(block, name, None) for name in ("down", "mid", "up")]
    return [p.weight for p in parts if p is not None and getattr(p, "weight", None) is not None]


@torch.no_grad()
def init_bottleneck_(block: nn.Module, scheme: InitScheme = "official") -> nn.Module:
    """Apply an init scheme (module docstring) to a freshly built block with ``down``/``mid``/``up``; returns it.

    The PyTorch defaults are assumed to be in place already (they are drawn at construction), so ``official``
    only re-draws ``up`` -- exactly the official code's RNG consumption.
    """
    if scheme not in INIT_SCHEMES:
        raise ConfigError(f"init {scheme!r} is not one of {list(INIT_SCHEMES)}")
    if scheme == "official":
        kaiming_fan_out_(block.up.weight)
    elif scheme == "zero":
        zero_(block.up.weight)
    elif scheme == "kaiming_all":
        for weight in _weights(block):
            kaiming_fan_out_(weight)
    elif scheme == "xavier":
        for weight in _weights(block):
            xavier_(weight)
    return block


def bottleneck_params(dim: int, ratio: int, kind: BlockKind) -> int:
    """Trainable scalars of one block: ``2·D·b + 2·D`` (+ ``9·b`` for conv2d, ``3·b`` for conv1d)."""
    hidden = dim // ratio
    mid = {"linear": 0, "conv2d": 9 * hidden}.get(kind, 3 * hidden)
    return 2 * dim * hidden + mid + 2 * dim
