"""CoCoOp (``KaiyangZhou/CoOp@ff61507:trainers/cocoop.py``): CoOp's context shifted per image by a meta-net.

The prompt is CoOp's ``[SOS] [V]_1 ... [V]_M [CLASS] . [EOS]`` with M = 4 context vectors initialised from
"a photo of a" (``vit_b16_c4_ep10_batch1_ctxv1``). A meta-net ``Linear(E, E // 16) - ReLU - Linear(E // 16, D)`` maps
the L2-normalised image feature (E = embedding width, D = text width) to a bias added to **every** context vector, so
each image has its own prompts for all classes and the text tower runs once per image:
``logits[b] = exp(logit_scale) * f_b . normalize(T(ctx + pi(f_b)))``. The official train-mode forward returns the
cross-entropy itself; :meth:`training_step` returns the same loss (and the logits).

Recipe (``vit_b16_c4_ep10_batch1_ctxv1``, ``scripts/cocoop/*.sh``): SGD lr 0.002, momentum 0.9, weight decay 5e-4,
cosine, one constant warmup epoch at 1e-5, **batch 1**, 10 epochs, test batch 100; the same for every protocol
(base-to-novel trains on the base classes; cross-dataset/DG train on ImageNet and evaluate the targets).

Options beyond the official code (both exact, see :class:`CoCoOpConfig`): ``batched_prompts`` encodes the prompts of
all images of a batch in one text-tower pass instead of the official per-image loop (same numbers, more memory);
``truncate_text`` (inherited from CoOp) cuts the text context to the longest prompt.
"""

from __future__ import annotations

from collections import OrderedDict
from dataclasses import dataclass
from typing import Any, Sequence

import torch
from torch import nn

from baselines.coop import CoOp
from frozen_clip.backbone import FrozenCLIP
from frozen_clip.contract import (
    Capabilities, Code, MethodInfo, OfficialPrecision, Paper, Sourced, no_official, official, option)
from frozen_clip.errors import ConfigError
from frozen_clip.method import MethodContext, normalize


@dataclass(frozen=True)
class CoCoOpConfig:
    """CoCoOp options; defaults are ``TRAINER.COCOOP`` of ``vit_b16_c4_ep10_batch1_ctxv1.yaml``."""

    n_ctx: int = option(4, "N_CTX (ignored when ctx_init is given: M = number of its words)")
    ctx_init: str = option("a photo of a", 'CTX_INIT; "" = random N(0, init_std) context')
    init_std: float = option(0.02, "std of a random context (official literal)")
    meta_net_reduction: int = option(16, "hidden width = E // 16 (official literal ``vis_dim // 16``)")
    batched_prompts: bool = option(
        False, "suite option: one text pass for all images of a batch (official: per image)", kind="suite")
    truncate_text: bool = option(True, "suite option (exact): cut the text context to the longest prompt", kind="suite",
                                  fast_path_off=False)

    @property
    def csc(self) -> bool:
        """CoCoOp has one context shared by all classes (read by CoOp's constructor)."""
        return False

    @property
    def class_token_position(self) -> str:
        """The class token follows the context (the official ``construct_prompts`` has only this layout)."""
        return "end"

    def validate(self) -> None:
        if self.n_ctx <= 0 and not self.ctx_init:
            raise ValueError("n_ctx must be positive")
        if self.meta_net_reduction <= 0:
            raise ValueError("meta_net_reduction must be positive")


class CoCoOp(CoOp):
    """Conditional context optimisation: CoOp's prompt learner plus an image-conditioned meta-net."""

    Config = CoCoOpConfig
    info = MethodInfo(
        name="cocoop", display="CoCoOp",
        paper=Paper("Conditional Prompt Learning for Vision-Language Models", "CVPR", 2022, "2203.05557"),
        code=Code("KaiyangZhou/CoOp", "ff61507"), capabilities=Capabilities(trains_on="images"),
        precision=OfficialPrecision(
            "fp16", "fp16",
            "configs/trainers/CoCoOp/vit_b16_c4_ep10_batch1_ctxv1.yaml:35 (PREC fp16); "
            "trainers/cocoop.py:101-102 (meta-net .half())",
            "official"))

    def __init__(self, clip: FrozenCLIP, classnames: Sequence[str], config: CoCoOpConfig,
                 context: MethodContext) -> None:
        super().__init__(clip, classnames, config, context)  # ctx, then the meta-net: the official RNG order
        vis_dim, ctx_dim = clip.embed_dim, clip.text.width
        hidden = vis_dim // config.meta_net_reduction
        if hidden < 1:
            raise ConfigError(f"method.meta_net_reduction={config.meta_net_reduction} leaves no hidden unit for "
                              f"embedding width {vis_dim}")
        self.meta_net = nn.Sequential(OrderedDict([
            ("linear1", nn.Linear(vis_dim, hidden)),
            ("relu", nn.ReLU(inplace=True)),
            ("linear2", nn.Linear(hidden, ctx_dim)),
        ]))
        if clip.dtype == torch.float16:  # official: meta_net.half() under PREC fp16 (trainers/cocoop.py:101-102)
            self.meta_net.half()

    @classmethod
    def recipe_settings(cls, protocol: str, dataset: str, shots: int, config: Any) -> dict[str, Sourced]:
        """``vit_b16_c4_ep10_batch1_ctxv1``: SGD lr 0.002, batch 1, 10 epochs, 1 constant warmup epoch (every
        protocol; the repository has no few-shot config, so few-shot runs the same one)."""
        config_file = "configs/trainers/CoCoOp/vit_b16_c4_ep10_batch1_ctxv1.yaml"
        values = {"name": ("sgd", "16-17"), "lr": (0.002, 17), "epochs": (10, 18), "batch_size": (1, 3),
                  "warmup_epochs": (1, "19-22"), "eval_batch_size": (100, 5)}
        if protocol == "fewshot":
            return {k: no_official(v, f"no few-shot config in the official repository; {config_file}:{line}")
                    for k, (v, line) in values.items()}
        return {k: official(v, f"{config_file}:{line}") for k, (v, line) in values.items()}

    # -- prompts -----------------------------------------------------------------------------------------------------
    def shifted_context(self, image_features: torch.Tensor) -> torch.Tensor:
        """``ctx + meta_net(f)`` for L2-normalised image features ``f`` ``[B, E]``: ``[B, M, D]``."""
        bias = self.meta_net(image_features)
        return self.ctx.unsqueeze(0) + bias.unsqueeze(1)

    def _text_features_per_image(self, ctx_shifted: torch.Tensor) -> torch.Tensor:
        """The official loop: one text pass of all C prompts per image; normalised ``[B, C, E]``."""
        feats = [self.clip.encode_text_embeddings(self.prompt_embeddings(ctx_i), self.tokenized_prompts)
                 for ctx_i in ctx_shifted]
        return torch.stack([normalize(f) for f in feats])

    def _text_features_batched(self, ctx_shifted: torch.Tensor) -> torch.Tensor:
        """All B x C prompts in one text pass; normalised ``[B, C, E]``."""
        n_img, n_ctx, width = ctx_shifted.shape
        n_cls = self.token_prefix.shape[0]
        prompts = torch.cat([self.token_prefix.unsqueeze(0).expand(n_img, -1, -1, -1),
                             ctx_shifted.unsqueeze(1).expand(-1, n_cls, -1, -1),
                             self.token_suffix.unsqueeze(0).expand(n_img, -1, -1, -1)], dim=2)
        ids = self.tokenized_prompts.repeat(n_img, 1)
        feats = self.clip.encode_text_embeddings(prompts.flatten(0, 1), ids)
        return normalize(feats).view(n_img, n_cls, -1)

    # -- forward -----------------------------------------------------------------------------------------------------
    def forward(self, images: torch.Tensor) -> torch.Tensor:
        """``CustomCLIP.forward``: per-image prompts, logits ``[B, C]``."""
        image_features = normalize(self.clip.encode_image(images))
        ctx_shifted = self.shifted_context(image_features)
        if self.config.batched_prompts:
            text = self._text_features_batched(ctx_shifted)
        else:
            text = self._text_features_per_image(ctx_shifted)
        scale = self.clip.logit_scale()
        return torch.stack([scale * f_i @ t_i.t() for f_i, t_i in zip(image_features, text)])  # official order
