"""CLIP-LoRA (``MaxZanella/CLIP-LoRA@358f0d7:{main.py, lora.py, loralib/layers.py, loralib/utils.py}``).

Low-rank updates of the attention projections of the frozen CLIP: for each adapted projection
``W x + b + s * B A dropout(x)`` with ``A`` ``[r, d]`` (kaiming-uniform, a = sqrt(5)), ``B`` ``[d, r]`` (zero, so
the model equals the frozen CLIP at initialisation) and ``s = alpha / sqrt(r)`` (``LoRALayer.scaling``; the standard
``alpha / r`` is commented out in the official code and offered as ``scaling: standard``). Defaults: q, k and v of
every block (``--position all``) of both towers (``--encoder both``), r = 2, alpha = 1, dropout 0.25 on the LoRA
input in training (one independent mask per projection, as each official ``LinearLoRA`` owns its dropout).

Implementation: the official code replaces each ``nn.MultiheadAttention`` with ``PlainMultiheadAttentionLoRA``
(explicit q/k/v/o linears + ``F.scaled_dot_product_attention`` with the tower's additive mask). The suite's backbone
is shared and frozen, so instead the tower forward calls this method's attention through the ``attn`` tap
(:mod:`frozen_clip.taps`): q/k/v come from slices of the frozen fused ``in_proj_weight`` plus the LoRA deltas,
attention is ``scaled_dot_product_attention`` (additive causal mask on the text tower), and ``out_proj`` stays
frozen (plus a delta when ``o`` is adapted). The official eval mode merges ``W += s B A``; the unmerged form used
here is the same function. ``huggingface/peft``'s MHA LoRA is not used: it cannot restrict itself to q, k, v.

Training: text features of all classes are recomputed through the LoRA text tower every step from
the official template "a photo of a {}." on every dataset (``template``; ``dataset`` = the dataset's CoOp template
instead, what the suite used before recipe version 2); logits are the constant
``100 x`` cosine (``main.py``: ``logit_scale = 100``), CE loss, no validation, last iterate. Recipe: AdamW lr 2e-4,
weight decay 1e-2, betas (0.9, 0.999), ``CosineAnnealingLR(500 x shots, eta_min=1e-6)`` stepped per iteration,
batch 32, the same for every dataset and shot count, keeping the last partial batch of each epoch as the official
loader does (``optim.last_batch: keep``, since recipe version 3; ``drop`` is Dassl's rule, what the suite did before).
Deviations: precision follows the runner (fp16 autocast on CUDA, as the official ``autocast`` + ``GradScaler``). The official A-initialisation consumes the RNG in another order (it first
builds throw-away linears), so the same seed gives other A matrices.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Literal, Sequence

import torch
from torch import nn
from torch.nn import functional as F

from frozen_clip.backbone import FrozenCLIP
from frozen_clip.contract import (
    BackboneShape, Capabilities, Code, MethodInfo, OfficialPrecision, Paper, Sourced, no_official, official,
    option)
from frozen_clip.errors import ConfigError
from frozen_clip.method import Method, MethodContext, StepOutput, normalize
from frozen_clip.taps import Taps, TapSite

#: ``loralib/utils.py`` ``INDEX_POSITIONS_TEXT`` / ``INDEX_POSITIONS_VISION['ViT-B/16']`` (vision calls top1 "top");
#: ``all`` is every block of the tower.
POSITIONS: dict[str, tuple[int, ...]] = {
    "top1": (11,), "top2": (10, 11), "top3": (9, 10, 11), "bottom": (0, 1, 2, 3), "mid": (4, 5, 6, 7),
    "up": (8, 9, 10, 11), "half-up": (6, 7, 8, 9, 10, 11), "half-bottom": (0, 1, 2, 3, 4, 5),
}
PROJECTIONS = ("q", "k", "v", "o")
TOWERS = {"both": ("text", "visual"), "text": ("text",), "vision": ("visual",)}


@dataclass(frozen=True)
class CLIPLoRAConfig:
    """CLIP-LoRA options; defaults are the official ``run_utils.get_arguments`` defaults."""

    params: tuple[str, ...] = option(("q", "k", "v"), "--params: adapted projections (q, k, v, o)")
    encoder: Literal["both", "text", "vision"] = option("both", "--encoder")
    position: Literal["all", "top1", "top2", "top3", "bottom", "mid", "up", "half-up", "half-bottom"] = option(
        "all", "--position (run_utils.get_arguments): LoRA in every block")
    layers: tuple[int, ...] = option((), "explicit 0-based block indices; overrides ``position``")
    r: int = option(2, "--r")
    alpha: float = option(1.0, "--alpha")
    scaling: Literal["sqrt", "standard"] = option(
        "sqrt", "alpha / sqrt(r) (official) or alpha / r (loralib, commented out)")
    dropout_rate: float = option(0.25, "--dropout_rate, on the LoRA input, training only")
    logit_scale: float = option(100.0, "main.py: logit_scale = 100")
    template: str = option(
        "a photo of a {}.", "datasets/*.py: every dataset's template is 'a photo of a {}.' (the per-dataset templates "
        "sit inside string literals); 'dataset' = the dataset's CoOp template (the suite's reading before recipe "
        "version 2)", values={"dataset": "the dataset's template"})

    def validate(self) -> None:
        unknown = sorted(set(self.params) - set(PROJECTIONS))
        if unknown or not self.params or len(set(self.params)) != len(self.params):
            raise ValueError(f"params must be distinct names among {list(PROJECTIONS)}, got {list(self.params)}")
        if self.r < 1:
            raise ValueError("r must be >= 1")
        if self.template != "dataset" and "{}" not in self.template:
            raise ValueError(f"template must hold '{{}}' (the class name) or be 'dataset', got {self.template!r}")
        if not 0 <= self.dropout_rate < 1:
            raise ValueError("dropout_rate must be in [0, 1)")
        if any(layer < 0 for layer in self.layers):
            raise ValueError("layers are 0-based block indices")

    @property
    def scale(self) -> float:
        """The factor s of the LoRA update."""
        return self.alpha / (math.sqrt(self.r) if self.scaling == "sqrt" else self.r)


class LoRADelta(nn.Module):
    """The trainable low-rank pair of one projection: ``delta(x) = (x A^T) B^T`` (unscaled)."""

    def __init__(self, in_features: int, out_features: int, r: int) -> None:
        super().__init__()
        self.lora_A = nn.Parameter(torch.empty(r, in_features))
        self.lora_B = nn.Parameter(torch.zeros(out_features, r))
        nn.init.kaiming_uniform_(self.lora_A, a=math.sqrt(5))  # loralib init_lora_param (B stays zero)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.linear(F.linear(x, self.lora_A), self.lora_B)


class LoRAAttention(nn.Module):
    """The LoRA pairs of one attention layer, keyed by projection name (``q``, ``k``, ``v``, ``o``)."""

    def __init__(self, width: int, params: Sequence[str], r: int) -> None:
        super().__init__()
        self.deltas = nn.ModuleDict({name: LoRADelta(width, width, r) for name in params})

    def project(self, name: str, x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None, scale: float,
                dropout: float, training: bool) -> torch.Tensor:
        """``LinearLoRA.forward``: the frozen projection plus ``s * delta(dropout(x))`` when ``name`` is adapted."""
        out = F.linear(x, weight, bias)
        if name not in self.deltas:
            return out
        return out + self.deltas[name](F.dropout(x, dropout, training)) * scale

    def forward(self, a: torch.Tensor, attn: nn.MultiheadAttention, mask: torch.Tensor | None, scale: float,
                dropout: float, training: bool) -> torch.Tensor:
        """``PlainMultiheadAttentionLoRA.forward_module`` on batch-first ``a`` ``[B, L, D]`` (q = k = v input)."""
        n, length, width = a.shape
        heads = attn.num_heads
        weights = attn.in_proj_weight.chunk(3)
        biases = attn.in_proj_bias.chunk(3) if attn.in_proj_bias is not None else (None, None, None)
        q, k, v = (self.project(name, a, w, b, scale, dropout, training).view(n, length, heads, width // heads)
                   .transpose(1, 2) for name, w, b in zip("qkv", weights, biases))
        mask = mask.to(q.dtype) if mask is not None else None
        out = F.scaled_dot_product_attention(q, k, v, attn_mask=mask)
        out = out.transpose(1, 2).reshape(n, length, width)
        return self.project("o", out, attn.out_proj.weight, attn.out_proj.bias, scale, dropout, training)


def lora_layers(config: CLIPLoRAConfig, tower: str, n_layers: int) -> tuple[int, ...]:
    """0-based blocks of ``tower`` (``n_layers`` blocks) that get LoRA: ``layers``, else ``position``'s;
    :class:`ConfigError` naming the key when a block does not exist."""
    if config.layers:
        layers, key = tuple(config.layers), "method.layers"
    elif config.position == "all":
        return tuple(range(n_layers))
    else:
        layers, key = POSITIONS[config.position], f"method.position={config.position!r}"
    if max(layers) >= n_layers:
        raise ConfigError(f"{key}: block {max(layers)} does not exist in the {tower} tower ({n_layers} blocks)")
    return tuple(sorted(set(layers)))


class CLIPLoRA(Method):
    """LoRA on the attention projections of both frozen CLIP towers."""

    Config = CLIPLoRAConfig
    info = MethodInfo(
        name="clip_lora", display="CLIP-LoRA",
        paper=Paper("Low-Rank Few-Shot Adaptation of Vision-Language Models", "CVPR Workshops", 2024, "2405.18541"),
        code=Code("MaxZanella/CLIP-LoRA", "358f0d7"), capabilities=Capabilities(trains_on="images"),
        # 2: the official template "a photo of a {}." on every dataset; version 1 used the dataset's CoOp template;
        # 3: the last partial batch of each epoch is kept, as the official loader does (optim.last_batch: keep)
        recipe_version=3,
        precision=OfficialPrecision(
            "amp_fp16", "amp_fp16",
            "lora.py:82,98-105 (autocast fp16 + GradScaler; the official CLIP weights are fp16 with the adapted"
            " projections in fp32)",
            "official"))

    def __init__(self, clip: FrozenCLIP, classnames: Sequence[str], config: CLIPLoRAConfig,
                 context: MethodContext) -> None:
        super().__init__(clip, classnames, config, context)
        self.lora = nn.ModuleDict()
        self.taps = Taps()
        for tower in TOWERS[config.encoder]:  # text first, then vision: the official apply_lora order
            blocks = clip.text.transformer.resblocks if tower == "text" else clip.visual.transformer.resblocks
            layers = self._layers(tower, len(blocks))
            self.lora[tower] = nn.ModuleDict({str(i): LoRAAttention(self._width(blocks[i], tower, i), config.params,
                                                                    config.r) for i in layers})
            for i in layers:
                self.taps.add("attn", tower, i, self._attention_fn(tower, i))
        self._text: torch.Tensor | None = None
        self._build_prompts(classnames)

    @classmethod
    def recipe_settings(cls, protocol: str, dataset: str, shots: int, config: Any) -> dict[str, Sourced]:
        """``run_utils`` defaults: AdamW lr 2e-4, wd 1e-2, per-iteration cosine to 1e-6 over 500 x shots, batch 32.
        The repository has few-shot code only: other protocols run the same recipe (no official value)."""
        if shots <= 0:
            return {"epochs": no_official(0, "500 x shots iterations: none with shots 0 (every training image)")}
        settings = {"name": ("adamw", "lora.py:75"), "lr": (2e-4, "run_utils.py:28, lora.py:75"),
                    "weight_decay": (1e-2, "lora.py:75"), "betas": ((0.9, 0.999), "lora.py:75 (AdamW's default)"),
                    "eps": (1e-8, "lora.py:75 (AdamW's default)"),
                    "scheduler": ("cosine_iter", "lora.py:76,122 (CosineAnnealingLR stepped per iteration)"),
                    "eta_min": (1e-6, "lora.py:76"), "iterations": (500 * shots, "run_utils.py:29, lora.py:73"),
                    "batch_size": (32, "run_utils.py:30"), "warmup_epochs": (0, "lora.py: no warmup"),
                    "last_batch": ("keep", "datasets/utils.py:375 (the train loader's drop_last=False)")}
        if protocol != "fewshot":
            return {k: no_official(v, f"no {protocol} code in the official repository; few-shot {where}")
                    for k, (v, where) in settings.items()}
        return {k: official(v, where) for k, (v, where) in settings.items()}

    # -- construction helpers --------------------------------------------------------------------------------------
    def _layers(self, tower: str, n_layers: int) -> tuple[int, ...]:
        return lora_layers(self.config, tower, n_layers)

    @classmethod
    def check_backbone(cls, shape: BackboneShape, protocol: str, config: CLIPLoRAConfig) -> None:
        """The adapted blocks exist in every adapted tower."""
        for tower in TOWERS[config.encoder]:
            lora_layers(config, tower, getattr(shape, tower).layers)

    @staticmethod
    def _width(block: nn.Module, tower: str, layer: int) -> int:
        attn = getattr(block, "attn", None)
        if not isinstance(attn, nn.MultiheadAttention) or not attn._qkv_same_embed_dim:
            raise ConfigError(f"clip_lora needs nn.MultiheadAttention with a fused in_proj in {tower} block {layer}, "
                              f"got {type(attn).__name__}")
        return attn.embed_dim

    def _attention_fn(self, tower: str, layer: int):
        def attention(a: torch.Tensor, site: TapSite, attn: nn.MultiheadAttention,
                      mask: torch.Tensor | None) -> torch.Tensor:
            cfg = self.config
            return self.lora[tower][str(layer)](a, attn, mask, cfg.scale, cfg.dropout_rate, self.training)
        return attention

    def prompt_templates(self) -> tuple[str, ...]:
        return (self.context.template if self.config.template == "dataset" else self.config.template,)

    def _build_prompts(self, classnames: Sequence[str]) -> None:
        (template,) = self.prompt_templates()
        ids = self.clip.tokenize(self.prompts(template, classnames))
        self.register_buffer("tokenized_prompts", self.clip.truncate(ids), persistent=False)

    def set_classnames(self, classnames: Sequence[str]) -> None:
        super().set_classnames(classnames)
        self._build_prompts(classnames)

    def invalidate(self) -> None:
        self._text = None

    # -- forward -----------------------------------------------------------------------------------------------------
    def text_features(self) -> torch.Tensor:
        """Normalised class features ``[C, E]`` through the LoRA text tower (cached in eval mode)."""
        if self._text is not None and not self.training:
            return self._text
        if "text" in self.lora:
            feats = normalize(self.clip.encode_text(self.tokenized_prompts, self.taps))
        else:
            with torch.no_grad():
                feats = normalize(self.clip.encode_text(self.tokenized_prompts))
        if not self.training:
            self._text = feats
        return feats

    def image_features(self, images: torch.Tensor) -> torch.Tensor:
        """Normalised image features ``[B, E]`` through the LoRA image tower."""
        if "visual" in self.lora:
            return normalize(self.clip.encode_image(images, self.taps))
        with torch.no_grad():
            return normalize(self.clip.encode_image(images))

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        image = self.image_features(images)
        return self.config.logit_scale * image @ self.text_features().t()  # official: (100 * f) @ t^T

    def training_step(self, images: torch.Tensor, labels: torch.Tensor) -> StepOutput:
        logits = self(images)
        loss = F.cross_entropy(logits, labels)
        return StepOutput(loss, {"loss_ce": loss.detach()}, logits)

    def load_official_state_dict(self, state_dict: dict[str, torch.Tensor]) -> None:
        """Official ``lora_state_dict(clip_model)`` names: ``[visual.]transformer.resblocks.{i}.attn.{q_proj, k_proj,
        v_proj, proj}.w_lora_{A, B}``."""
        names = {"q_proj": "q", "k_proj": "k", "v_proj": "v", "proj": "o"}
        mapped = {}
        for key, value in state_dict.items():
            tower = "visual" if key.startswith("visual.") else "text"
            parts = key.removeprefix("visual.").split(".")  # transformer resblocks i attn proj w_lora_X
            if parts[:2] != ["transformer", "resblocks"] or len(parts) != 6 or parts[4] not in names:
                raise KeyError(f"not an official CLIP-LoRA key: {key!r}")
            suffix = parts[5].removeprefix("w_")
            mapped[f"lora.{tower}.{parts[2]}.deltas.{names[parts[4]]}.{suffix}"] = value
        self.load_state_dict(mapped, strict=True)
        self.invalidate()
