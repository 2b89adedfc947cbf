"""Building blocks shared by the adapter methods (HeBA, MMA, RMAdapter).

* :func:`grad_scale` -- the gradient-scale trick of the official code (``gsl.py``): identity forward, gradient
  multiplied by ``scale`` backward. HeBA and MMA write an adapter branch as
  ``gsl(f(gsl(x, s)) * s, 1 / s)``: the forward value is ``s * f(x)``, the gradient that flows back into the backbone
  stream is exact, and every adapter parameter receives ``1 / s`` times its true gradient (measured on the official
  module).
* :func:`scaled_branch` -- that expression, with the trick switchable (``grad_scale_trick: false`` gives the naive
  ``s * f(x)``: identical forward, parameter gradients ``s`` times smaller).
* :func:`init_linear_like` -- the init schemes the ablations compare.
* :func:`grad_scaled` -- the same sandwich without the forward scaling (parameters get ``factor`` x their gradient,
  the input its exact one): RMAdapter's reconstruction path under ``rec_grad_scale: match``.
* :func:`kaiming_linears_` -- MMA's init loop (kaiming-normal fan_out on every Linear, zero bias, in module order).
"""

from __future__ import annotations

import math
from typing import Callable

import torch
from torch import nn


class _GradScale(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x: torch.Tensor, scale: float) -> torch.Tensor:  # type: ignore[override]
        ctx.scale = scale
        return x.view_as(x)

    @staticmethod
    def backward(ctx, grad: torch.Tensor):  # type: ignore[override]
        return grad * ctx.scale, None


def grad_scale(x: torch.Tensor, scale: float) -> torch.Tensor:
    """Identity forward; multiplies the incoming gradient by ``scale`` (the official ``gsl``)."""
    return _GradScale.apply(x, scale)


def scaled_branch(fn: Callable[[torch.Tensor], torch.Tensor], x: torch.Tensor, scale: float,
                  trick: bool = True) -> torch.Tensor:
    """``scale * fn(x)``; with ``trick`` written as ``gsl(fn(gsl(x, s)) * s, 1/s)`` like the official code."""
    if not trick:
        return fn(x) * scale
    return grad_scale(fn(grad_scale(x, scale)) * scale, 1.0 / scale)


def kaiming_fan_out_(weight: torch.Tensor) -> torch.Tensor:
    """``kaiming_normal_(mode='fan_out', nonlinearity='relu')``: std = sqrt(2 / fan_out)."""
    return nn.init.kaiming_normal_(weight, mode="fan_out", nonlinearity="relu")


def torch_default_(module: nn.Module) -> None:
    """PyTorch's default Linear/Conv init (``kaiming_uniform_(a=sqrt(5))``, bias U(+-1/sqrt(fan_in)))."""
    module.reset_parameters()


def xavier_(weight: torch.Tensor) -> torch.Tensor:
    """Xavier-uniform init."""
    return nn.init.xavier_uniform_(weight)


def zero_(weight: torch.Tensor) -> torch.Tensor:
    """Zero init (e.g. the up-projection, so a plain residual adapter starts as the identity)."""
    return nn.init.zeros_(weight)


def fan_out_std(fan_out: int) -> float:
    """The std of :func:`kaiming_fan_out_` for a given fan_out."""
    return math.sqrt(2.0 / fan_out)


def grad_scaled(fn: Callable[[torch.Tensor], torch.Tensor], x: torch.Tensor, factor: float) -> torch.Tensor:
    """``fn(x)`` whose parameters receive ``factor`` times their gradient while ``x`` receives its exact gradient.

    Written ``gsl(fn(gsl(x, 1/factor)), factor)``: the same sandwich as :func:`scaled_branch` without the forward
    multiplication by ``s``. RMAdapter uses it to put its reconstruction path on the adaptation branch's footing
    (``rec_grad_scale: match``). ``factor == 1`` is plain ``fn(x)``.
    """
    if factor == 1.0:
        return fn(x)
    return grad_scale(fn(grad_scale(x, 1.0 / factor)), factor)


def kaiming_linears_(module: nn.Module) -> nn.Module:
    """Every ``nn.Linear`` under ``module``, in ``modules()`` order: :func:`kaiming_fan_out_` weight, zero bias.

    The MMA init loop (``trainers/mmadapter.py`` ``_build_adapter``); the traversal order fixes the RNG draws, so a
    seeded build reproduces the official initialisation bitwise when the Linears were created in the official order.
    """
    for m in module.modules():
        if isinstance(m, nn.Linear):
            kaiming_fan_out_(m.weight)
            if m.bias is not None:
                nn.init.zeros_(m.bias)
    return module
