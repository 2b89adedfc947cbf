"""Zero-shot CLIP (CoOp ``trainers/zsclip.py`` @ ff61507): logits = exp(logit_scale) * cos(image, class text).

Nothing trains. ``templates: coop_custom`` (default, ``ZeroshotCLIP``) uses the dataset's CoOp template;
``ensemble`` (``ZeroshotCLIP2``) the 7 ``IMAGENET_TEMPLATES_SELECT`` plus the dataset template (ImageNet: the 7);
``template_list`` gives an explicit list instead.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Literal, Sequence

import torch

from baselines.templates import ensemble_templates
from baselines.text_classifier import class_text_features
from frozen_clip.backbone import FrozenCLIP
from frozen_clip.contract import Capabilities, Code, MethodInfo, OfficialPrecision, Paper, Sourced, official, option
from frozen_clip.method import FeatureMethod, MethodContext, normalize


@dataclass(frozen=True)
class ZeroShotConfig:
    """Zero-shot options."""

    templates: Literal["coop_custom", "ensemble"] = option("coop_custom", "CoOp ZeroshotCLIP / ZeroshotCLIP2")
    template_list: tuple[str, ...] = option((), 'explicit templates ("{}" = class name); overrides ``templates``')


class ZeroShotCLIP(FeatureMethod):
    """Zero-shot CLIP with per-dataset templates or a template ensemble."""

    Config = ZeroShotConfig
    info = MethodInfo(
        name="zeroshot", display="Zero-shot CLIP", paper=Paper("Learning Transferable Visual Models From Natural Language Supervision", "ICML", 2021, "2103.00020"),
        code=Code("KaiyangZhou/CoOp", "ff61507"), capabilities=Capabilities(trains_on="features"), paper_names={"ZS-CLIP": {}},
        # 2: cross-dataset and DG targets are prompted with their own template (version 1: the source's)
        recipe_version=2,
        precision=OfficialPrecision(
            "fp16", "fp16",
            "trainers/zsclip.py:39-40 (load_clip_to_cpu keeps CLIP's fp16 weights)",
            "official"))

    def __init__(self, clip: FrozenCLIP, classnames: Sequence[str], config: ZeroShotConfig,
                 context: MethodContext) -> None:
        super().__init__(clip, classnames, config, context)
        self._text: torch.Tensor | None = None

    @classmethod
    def recipe_settings(cls, protocol: str, dataset: str, shots: int, config: Any) -> dict[str, Sourced]:
        """No training."""
        return {"epochs": official(0, "trainers/zsclip.py: no training (eval-only)")}

    def prompt_templates(self) -> tuple[str, ...]:
        return self.template_set()

    def template_set(self) -> tuple[str, ...]:
        """The templates in use."""
        if self.config.template_list:
            return tuple(self.config.template_list)
        if self.config.templates == "ensemble":
            return ensemble_templates(self.context.dataset, self.context.template)
        return (self.context.template,)

    def invalidate(self) -> None:
        self._text = None

    def text_features(self) -> torch.Tensor:
        """Normalised class text features ``[C, E]`` (computed once per class set)."""
        if self._text is None:
            self._text = normalize(class_text_features(self.clip, self.classnames, self.template_set()))
        return self._text

    def logits_from_features(self, features: torch.Tensor) -> torch.Tensor:
        return self.clip.logit_scale() * normalize(features) @ self.text_features().t()
