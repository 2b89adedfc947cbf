"""Frozen text classifiers: class text features from templates, computed once per class set."""

from __future__ import annotations

from typing import Sequence

import torch

from frozen_clip.backbone import FrozenCLIP
from frozen_clip.method import normalize


@torch.no_grad()
def class_text_features(clip: FrozenCLIP, classnames: Sequence[str], templates: Sequence[str],
                        normalize_each: bool = True) -> torch.Tensor:
    """Text features ``[C, E]`` of ``classnames`` averaged over ``templates``.

    With one template and ``normalize_each=False`` this is the raw ``encode_text`` output. With several templates
    (CoOp ``ZeroshotCLIP2``): normalise per template, average, re-normalise.
    """
    names = [name.replace("_", " ") for name in classnames]
    per_template = []
    for template in templates:
        ids = clip.tokenize([template.format(name) for name in names])
        feats = clip.encode_text(ids)
        per_template.append(normalize(feats) if normalize_each or len(templates) > 1 else feats)
    if len(per_template) == 1:
        return per_template[0]
    return normalize(torch.stack(per_template).mean(dim=0))
