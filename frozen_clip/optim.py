"""Optimisers and learning-rate schedules of the CoOp/Dassl family, explicit and resumable.

The schedule is a pure function of (epoch, iteration), so a run resumed from a checkpoint uses exactly the learning
rates of an uninterrupted run. ``cosine`` is Dassl's ``CosineAnnealingLR(T_max=epochs)`` stepped once per epoch,
with optional constant warmup (``WARMUP_RECOUNT=True``: the cosine restarts after the warmup); ``cosine_iter``
anneals per iteration down to ``eta_min`` (CLIP-LoRA, Tip-Adapter-F); ``constant`` keeps ``lr``.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import TYPE_CHECKING, Iterable, Literal

from frozen_clip.contract import option

if TYPE_CHECKING:  # pragma: no cover - typing only; the config and schedules import no torch (config resolution)
    import torch
    from torch import nn


@dataclass(frozen=True)
class OptimConfig:
    """Optimisation settings of one run. Defaults are Dassl's (``dassl/config/defaults.py``) with CoOp's recipe."""

    name: Literal["sgd", "adamw"] = option("sgd", "CoOp configs/trainers/CoOp/vit_b16.yaml:16-17 (OPTIM.NAME; Dassl's own default is adam)")
    lr: float = option(0.002, "CoOp configs/trainers/CoOp/vit_b16.yaml:16-17 (a method's recipe sets its own)")
    weight_decay: float = option(  # applied to every trainable parameter
        5e-4, "Dassl dassl/config/defaults.py:153-156 (OPTIM.WEIGHT_DECAY)")
    momentum: float = option(0.9, "Dassl dassl/config/defaults.py:153-156 (OPTIM.MOMENTUM, SGD)")
    betas: tuple[float, float] = option((0.9, 0.999), "torch.optim.AdamW's default (AdamW only)")
    eps: float = option(1e-8, "torch.optim.AdamW's default (AdamW only)")
    epochs: int = option(10, "Dassl dassl/config/defaults.py OPTIM.MAX_EPOCH (a method's recipe sets its own)")
    iterations: int | None = option(  # CLIP-LoRA: 500 x shots
        None, "train for this many steps instead of epochs when set (a method's recipe sets it)", kind="suite")
    batch_size: int = option(32, "CoOp configs/trainers/CoOp/vit_b16.yaml:3 (DATALOADER.TRAIN_X.BATCH_SIZE)")
    last_batch: Literal["drop", "keep"] = option(
        "drop", "Dassl dassl/data/data_manager.py:43 (drop_last when the train set holds a full batch)")
    eval_batch_size: int = option(100, "CoOp configs/trainers/CoOp/vit_b16.yaml:5 (does not change a result)")
    scheduler: Literal["cosine", "cosine_iter", "constant"] = option(
        "cosine", "Dassl dassl/optim/lr_scheduler.py:128-131 (CosineAnnealingLR stepped per epoch)")
    warmup_epochs: int = option(  # constant warmup at warmup_lr (CoOp, CoCoOp, MaPLe: 1)
        0, "Dassl dassl/config/defaults.py:180 (OPTIM.WARMUP_EPOCH)")
    warmup_lr: float = option(1e-5, "Dassl dassl/config/defaults.py:185 (OPTIM.WARMUP_CONS_LR)")
    eta_min: float = option(0.0, "floor of cosine_iter (CLIP-LoRA's recipe sets 1e-6)", kind="suite")
    grad_clip: float | None = option(None, "no clipping in any official code", kind="suite")

    def validate(self) -> None:
        """Reject impossible settings."""
        if self.lr <= 0 or self.batch_size <= 0 or self.eval_batch_size <= 0:
            raise ValueError("lr, batch_size and eval_batch_size must be positive")
        if self.epochs < 0 or (self.iterations is not None and self.iterations <= 0):
            raise ValueError("epochs must be >= 0 and iterations > 0 when given")
        trains_by_epochs = self.iterations is None and self.epochs > 0  # epochs 0: no training, warmup unused
        if self.warmup_epochs < 0 or (trains_by_epochs and self.warmup_epochs >= self.epochs):
            raise ValueError(f"warmup_epochs={self.warmup_epochs} must be smaller than epochs={self.epochs}")


def lr_at(cfg: OptimConfig, epoch: int, iteration: int, total_iterations: int) -> float:
    """Learning rate for 1-based ``epoch`` and 0-based global ``iteration``."""
    if cfg.scheduler == "constant":
        return cfg.lr
    if cfg.scheduler == "cosine_iter":
        t = min(iteration, total_iterations)
        return cfg.eta_min + (cfg.lr - cfg.eta_min) * 0.5 * (1 + math.cos(math.pi * t / max(total_iterations, 1)))
    if epoch <= cfg.warmup_epochs:
        return cfg.warmup_lr
    return cfg.lr * 0.5 * (1 + math.cos(math.pi * (epoch - 1 - cfg.warmup_epochs) / cfg.epochs))


def build_optimizer(cfg: OptimConfig, params: Iterable[nn.Parameter]) -> torch.optim.Optimizer:
    """SGD (Dassl: dampening 0, no Nesterov) or AdamW over ``params``."""
    import torch
    params = list(params)
    if cfg.name == "sgd":
        return torch.optim.SGD(params, lr=cfg.lr, momentum=cfg.momentum, weight_decay=cfg.weight_decay,
                               dampening=0, nesterov=False)
    return torch.optim.AdamW(params, lr=cfg.lr, betas=cfg.betas, eps=cfg.eps, weight_decay=cfg.weight_decay)


def set_lr(optimizer: torch.optim.Optimizer, lr: float) -> None:
    """Set the learning rate of every parameter group."""
    for group in optimizer.param_groups:
        group["lr"] = lr
