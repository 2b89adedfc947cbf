"""CLIP-Adapter (``gaopengcuhk/CLIP-Adapter@9ac913a:clip_adapter.py``; fixture commit 08d07f8).

A bottleneck MLP on the final image embedding, blended residually:
``A(f) = ReLU(W2 ReLU(W1 f))`` (no biases, ``c -> c/4 -> c``), ``f' = 0.2 A(f) + 0.8 f``, then cosine logits against
the frozen class text features of the dataset template, scaled by ``exp(logit_scale)``. The official code
hard-codes ``c = 1024`` (RN50); the suite uses the backbone's embedding width. The paper's text adapter is not in the
released code (gaopengcuhk/CLIP-Adapter#3): ``text_adapter`` is not offered. Training settings were not released;
the recipe is the suite's guess (spec baselines.md §5): SGD lr 0.01, batch 32, 200 epochs, 1 warmup epoch.
The image path is frozen, so evaluation runs on cached features.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Sequence

import torch
from torch import nn

from baselines.text_classifier import class_text_features
from frozen_clip.backbone import FrozenCLIP
from frozen_clip.contract import Capabilities, Code, MethodInfo, Paper, option
from frozen_clip.method import FeatureMethod, MethodContext, normalize


@dataclass(frozen=True)
class CLIPAdapterConfig:
    """CLIP-Adapter options (defaults: the released trainer)."""

    reduction: int = option(4, "bottleneck c -> c / reduction")
    residual_ratio: float = option(0.2, "literal in the released trainer")


class CLIPAdapter(FeatureMethod):
    """Visual residual adapter on frozen CLIP features."""

    Config = CLIPAdapterConfig
    info = MethodInfo(
        name="clip_adapter", display="CLIP-Adapter",
        paper=Paper("CLIP-Adapter: Better Vision-Language Models with Feature Adapters", "IJCV", 2024, "2110.04544"),
        code=Code("gaopengcuhk/CLIP-Adapter", "9ac913a"), capabilities=Capabilities(trains_on="features"),
        # 2: cross-dataset and DG targets are prompted with their own template (version 1: the source's)
        recipe_version=2)

    def __init__(self, clip: FrozenCLIP, classnames: Sequence[str], config: CLIPAdapterConfig,
                 context: MethodContext) -> None:
        super().__init__(clip, classnames, config, context)
        c = clip.embed_dim
        self.fc = nn.Sequential(nn.Linear(c, c // config.reduction, bias=False), nn.ReLU(inplace=True),
                                nn.Linear(c // config.reduction, c, bias=False), nn.ReLU(inplace=True))
        self._text: torch.Tensor | None = None

    @classmethod
    def recipe(cls, protocol: str, dataset: str, shots: int, config: Any) -> dict[str, Any]:
        """CoOp's few-shot trainer settings with lr 0.01 and 200 epochs (GUESS, see module docstring)."""
        return {"name": "sgd", "lr": 0.01, "epochs": 200, "batch_size": 32, "warmup_epochs": 1}

    def set_classnames(self, classnames: Sequence[str]) -> None:
        super().set_classnames(classnames)
        self._text = None

    def prompt_templates(self) -> tuple[str, ...]:
        return (self.context.template,)

    def text_features(self) -> torch.Tensor:
        """Normalised frozen text features of the dataset template (cached per class set; nothing text-side trains)."""
        if self._text is None:
            feats = class_text_features(self.clip, self.classnames, [self.context.template], normalize_each=False)
            self._text = normalize(feats)
        return self._text

    def logits_from_features(self, features: torch.Tensor) -> torch.Tensor:
        ratio = self.config.residual_ratio
        mixed = ratio * self.fc(features) + (1 - ratio) * features
        return self.clip.logit_scale() * normalize(mixed) @ self.text_features().t()

    def load_official_state_dict(self, state_dict: dict[str, torch.Tensor]) -> None:
        """Official names ``adapter.fc.0.weight`` / ``fc.0.weight`` (the official ``CustomCLIP.adapter``)."""
        mapped = {k.removeprefix("adapter."): v for k, v in state_dict.items()}
        self.load_state_dict(mapped, strict=True)
