"""Which numeric precision a run trains and evaluates in (standard library only: configs resolve without torch).

``precision: auto`` (the default) runs the method's official precision (``MethodInfo.precision``) on CUDA and fp32
on a CPU; an explicit value runs as given, except that autocast exists on CUDA only, so ``amp_*`` on a CPU is fp32.
The resolved pair is part of the run id (``jobs.config``) whenever it is not fp32/fp32, so a CUDA run and a CPU run
of one config are different runs, while every CPU run keeps the id it had before precisions were resolved.
"""

from __future__ import annotations

from dataclasses import dataclass

from frozen_clip.contract import PRECISIONS, OfficialPrecision, describe_precision

REQUESTS = ("auto", *PRECISIONS)


@dataclass(frozen=True)
class ResolvedPrecision:
    """What a run computes in: ``train`` (the gradient loop and ``prepare_fit``'s features) and ``eval``."""

    train: str = "fp32"
    eval: str = "fp32"

    @property
    def half_model(self) -> bool:
        """Whether the frozen model is converted to fp16 (pure fp16 training or evaluation)."""
        return "fp16" in (self.train, self.eval)

    def describe(self) -> str:
        return describe_precision(self.train, self.eval)


def device_kind(device: str, hint: str | None = None) -> str:
    """``cuda`` or ``cpu``: what ``device`` (a run's ``device`` setting) computes on. ``auto`` uses ``hint`` (what
    the executor will give the run, e.g. Slurm tasks with GPUs) or, without one, whether this machine has CUDA."""
    if device.startswith("cuda"):
        return "cuda"
    if device != "auto":
        return "cpu"
    if hint is not None:
        return hint
    import torch
    return "cuda" if torch.cuda.is_available() else "cpu"


def on_device(kind: str, precision: str) -> str:
    """``precision`` as it runs on a device of ``kind`` (``cuda``, ``cpu``): autocast is CUDA-only, so ``amp_*``
    elsewhere is fp32; pure fp16 (a half model) and fp32 run anywhere."""
    return "fp32" if kind != "cuda" and precision.startswith("amp_") else precision


def resolve_precision(requested: str, kind: str, official: OfficialPrecision) -> ResolvedPrecision:
    """The precision a run computes in (see the module docstring)."""
    if requested not in REQUESTS:
        raise ValueError(f"precision must be one of {REQUESTS}, got {requested!r}")
    if requested == "auto":
        return ResolvedPrecision(on_device(kind, official.train), on_device(kind, official.eval)) if kind == "cuda" \
            else ResolvedPrecision()
    return ResolvedPrecision(on_device(kind, requested), on_device(kind, requested))


__all__ = ["ResolvedPrecision", "resolve_precision", "device_kind", "on_device", "REQUESTS"]
