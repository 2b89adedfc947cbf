"""MaPLe (``muzairkhattak/multimodal-prompt-learning@69bce21:{trainers/maple.py, clip/model.py}``).

Multi-modal prompts coupled text -> image:

* text prompt "a photo of a {c}." whose first ``N_CTX = 2`` word tokens ("a photo") are replaced by the learned
  context ``ctx`` ``[2, D]`` (initialised from those embeddings; random N(0, 0.02) and "X X" without ``ctx_init``);
* shallow image prompt: ``proj(ctx)`` (``Linear(D -> W)``, W the image width) appended **after** the patch tokens,
  after the positional embedding and before ``ln_pre`` (the ``tower_in`` tap);
* deep prompts for blocks 1 .. depth - 1 (the ``block_in`` taps): a text prompt ``[2, D]`` (N(0, 0.02)) replaces the
  text tokens 1..2, and its projection through a per-layer ``Linear(D -> W)`` replaces the last 2 image tokens. The
  per-layer projections are deep copies of one Linear, so they start identical. Later blocks keep what the previous
  block produced. The image tower pools CLS (index 0), so the appended tokens only act through attention; taps that
  address patches keep using ``site.n_prefix`` and ``site.grid_size`` (the prompt tokens sit after the grid).

Loss: CE on ``exp(logit_scale)`` x cosine, text features of all classes every step. Paper configs, as recipes per
protocol: base-to-novel (and the suite's few-shot, a GUESS: MaPLe has no few-shot config)
``vit_b16_c2_ep5_batch4_2ctx`` -- depth 9, SGD lr 0.0035, 5 epochs, batch 4, 1 constant warmup epoch; cross-dataset and
DG ``vit_b16_c2_ep5_batch4_2ctx_cross_datasets`` -- depth 3, lr 0.0026, 2 epochs. ``prompt_depth: null`` picks the
protocol's depth. The official code hard-codes 512 (text) and 768 (image) widths; the suite reads them from the
backbone. A depth beyond a tower's block count is rejected (the official code would silently train unused
prompts). Text-context truncation is exact: the deep text prompts sit at fixed positions before every EOT.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass
from functools import partial
from typing import Any, Sequence

import torch
from torch import nn
from torch.nn import functional as F

from baselines.coop import prompt_tokens
from frozen_clip.backbone import FrozenCLIP
from frozen_clip.contract import (
    BackboneShape, Capabilities, Code, MethodInfo, OfficialPrecision, Paper, Sourced, no_official, official,
    option)
from frozen_clip.errors import ConfigError
from frozen_clip.method import Method, MethodContext, StepOutput, normalize
from frozen_clip.taps import Taps, TapSite

#: ``PROMPT_DEPTH`` of the paper configs per protocol (base-to-novel; cross-dataset and DG).
PAPER_DEPTH = {"base2novel": 9, "fewshot": 9, "cross_dataset": 3, "domain_generalization": 3}


@dataclass(frozen=True)
class MaPLeConfig:
    """MaPLe options; defaults are ``TRAINER.MAPLE`` of ``vit_b16_c2_ep5_batch4_2ctx.yaml``."""

    n_ctx: int = option(2, "N_CTX")
    ctx_init: str = option("a photo of a", "CTX_INIT (used when n_ctx <= 4, as the official condition)")
    prompt_depth: int | None = option(None, "PROMPT_DEPTH; None: 9 (base2novel, fewshot) or 3 (cross_dataset, DG)")
    init_std: float = option(0.02, "deep text prompts (and a random ctx): N(0, 0.02)")
    truncate_text: bool = option(True, "suite option (exact): cut the text context to the longest prompt", kind="suite",
                                  fast_path_off=False)

    def validate(self) -> None:
        if self.n_ctx < 1:
            raise ValueError("n_ctx must be >= 1")
        if self.prompt_depth is not None and self.prompt_depth < 1:
            raise ValueError("prompt_depth must be >= 1 (1 = shallow MaPLe)")


def _append_tokens(x: torch.Tensor, site: TapSite, prompt: torch.Tensor) -> torch.Tensor:
    """``VisionTransformer_MaPLe``: the shallow image prompt after the patch tokens."""
    return torch.cat([x, prompt.to(x.dtype).unsqueeze(0).expand(x.shape[0], -1, -1)], dim=1)


def _replace_last(x: torch.Tensor, site: TapSite, prompt: torch.Tensor) -> torch.Tensor:
    """Deep image prompt: the last ``n_ctx`` tokens are replaced."""
    tokens = prompt.to(x.dtype).unsqueeze(0).expand(x.shape[0], -1, -1)
    return torch.cat([x[:, :x.shape[1] - prompt.shape[0]], tokens], dim=1)


def _replace_after_sos(x: torch.Tensor, site: TapSite, prompt: torch.Tensor) -> torch.Tensor:
    """Deep text prompt: tokens ``1 .. n_ctx`` (right after SOS) are replaced."""
    tokens = prompt.to(x.dtype).unsqueeze(0).expand(x.shape[0], -1, -1)
    return torch.cat([x[:, :1], tokens, x[:, 1 + prompt.shape[0]:]], dim=1)


def prompt_depth(config: MaPLeConfig, protocol: str, text_blocks: int, image_blocks: int) -> int:
    """The prompt depth of a run (``prompt_depth``, else the paper's for ``protocol``); :class:`ConfigError` when a
    tower has fewer blocks."""
    depth = config.prompt_depth if config.prompt_depth is not None else PAPER_DEPTH[protocol]
    for tower, blocks in (("text", text_blocks), ("image", image_blocks)):
        if depth > blocks:
            raise ConfigError(f"method.prompt_depth={depth} exceeds the {blocks} blocks of the {tower} tower"
                              " (set method.prompt_depth explicitly for small backbones)")
    return depth


class MaPLe(Method):
    """Deep vision-language prompts; the image prompts are projections of the text prompts."""

    Config = MaPLeConfig
    info = MethodInfo(
        name="maple", display="MaPLe", paper=Paper("MaPLe: Multi-modal Prompt Learning", "CVPR", 2023, "2210.03117"),
        code=Code("muzairkhattak/multimodal-prompt-learning", "69bce21"), capabilities=Capabilities(trains_on="images"),
        tiny_world_overrides={"method.prompt_depth": 3},
        precision=OfficialPrecision(
            "fp16", "fp16",
            "configs/trainers/MaPLe/vit_b16_c2_ep5_batch4_2ctx.yaml:35 (PREC fp16); trainers/maple.py:75,104 "
            "(ctx, proj fp16), :111-117 (deep prompts fp32), :257 (no GradScaler)",
            "official"))

    def __init__(self, clip: FrozenCLIP, classnames: Sequence[str], config: MaPLeConfig,
                 context: MethodContext) -> None:
        super().__init__(clip, classnames, config, context)
        self.depth = self._depth(config, context)
        text_width = clip.text.width
        image_width = int(clip.visual.ln_pre.normalized_shape[0])
        self.n_ctx = config.n_ctx
        if config.ctx_init and config.n_ctx <= 4:  # official condition
            init = config.ctx_init.replace("_", " ")
            with torch.no_grad():
                vectors = clip.token_embedding(clip.tokenize([init]))[0, 1:1 + self.n_ctx].clone()
            self.prompt_prefix = init
        else:
            vectors = torch.empty(self.n_ctx, text_width, dtype=clip.dtype, device=clip.device)
            nn.init.normal_(vectors, std=config.init_std)
            self.prompt_prefix = " ".join(["X"] * self.n_ctx)
        # construction order = the official RNG order: ctx, proj, deep text prompts, the shared projection
        self.proj = nn.Linear(text_width, image_width)
        self.ctx = nn.Parameter(vectors)
        self.compound_prompts_text = nn.ParameterList(
            [nn.Parameter(torch.empty(self.n_ctx, text_width)) for _ in range(self.depth - 1)])
        for prompt in self.compound_prompts_text:
            nn.init.normal_(prompt, std=config.init_std)
        if clip.dtype == torch.float16:  # official: proj.half() under PREC fp16 (trainers/maple.py:104); the deep
            self.proj.half()             # prompts and their projections stay fp32 (:111-117)
        single_layer = nn.Linear(text_width, image_width)
        self.compound_prompt_projections = nn.ModuleList([copy.deepcopy(single_layer) for _ in range(self.depth - 1)])
        self._text: torch.Tensor | None = None
        self._build_prompts(classnames)

    def _depth(self, config: MaPLeConfig, context: MethodContext) -> int:
        return prompt_depth(config, context.protocol, len(self.clip.text.transformer.resblocks),
                            len(self.clip.visual.transformer.resblocks))

    @classmethod
    def check_backbone(cls, shape: BackboneShape, protocol: str, config: MaPLeConfig) -> None:
        """The prompt depth fits both towers."""
        prompt_depth(config, protocol, shape.text.layers, shape.visual.layers)

    @classmethod
    def recipe_settings(cls, protocol: str, dataset: str, shots: int, config: Any) -> dict[str, Sourced]:
        """The paper configs: base-to-novel (also few-shot, which has no config of its own) lr 0.0035 for 5 epochs,
        cross-dataset/DG lr 0.0026 for 2 epochs; SGD, batch 4, 1 constant warmup epoch at 1e-5, cosine."""
        config_file = "configs/trainers/MaPLe/vit_b16_c2_ep5_batch4_2ctx"
        if protocol in ("cross_dataset", "domain_generalization"):
            config_file += "_cross_datasets"
            values = {"lr": (0.0026, 17), "epochs": (2, 18)}
        else:
            values = {"lr": (0.0035, 17), "epochs": (5, 18)}
        values.update({"name": ("sgd", "16-17"), "batch_size": (4, 3), "warmup_epochs": (1, "19-22"),
                       "eval_batch_size": (100, 5)})
        if protocol == "fewshot":
            return {k: no_official(v, f"no few-shot config in the official repository; {config_file}.yaml:{line}")
                    for k, (v, line) in values.items()}
        return {k: official(v, f"{config_file}.yaml:{line}") for k, (v, line) in values.items()}

    # -- prompts -----------------------------------------------------------------------------------------------------
    def _build_prompts(self, classnames: Sequence[str]) -> None:
        ids, prefix, suffix, _ = prompt_tokens(self.clip, classnames, self.prompt_prefix, self.n_ctx,
                                               self.config.truncate_text)
        self.register_buffer("tokenized_prompts", ids, persistent=False)
        self.register_buffer("token_prefix", prefix, persistent=False)  # SOS
        self.register_buffer("token_suffix", suffix, persistent=False)  # "of a {c}." EOS (padding)

    def set_classnames(self, classnames: Sequence[str]) -> None:
        super().set_classnames(classnames)
        self._build_prompts(classnames)

    def invalidate(self) -> None:
        self._text = None

    def prompt_embeddings(self) -> torch.Tensor:
        """``MultiModalPromptLearner.construct_prompts``: ``[C, L, D]``."""
        ctx = self.ctx.unsqueeze(0).expand(self.token_prefix.shape[0], -1, -1)
        return torch.cat([self.token_prefix, ctx, self.token_suffix], dim=1)

    def text_taps(self) -> Taps:
        """Deep text prompts at blocks 1 .. depth - 1."""
        taps = Taps()
        for layer, prompt in enumerate(self.compound_prompts_text, start=1):
            taps.add("block_in", "text", layer, partial(_replace_after_sos, prompt=prompt))
        return taps

    def image_taps(self) -> Taps:
        """The shallow image prompt before ``ln_pre`` and the projected deep prompts at blocks 1 .. depth - 1."""
        taps = Taps().add("tower_in", "visual", -1, partial(_append_tokens, prompt=self.proj(self.ctx)))
        for layer, (projection, prompt) in enumerate(zip(self.compound_prompt_projections,
                                                         self.compound_prompts_text), start=1):
            taps.add("block_in", "visual", layer, partial(_replace_last, prompt=projection(prompt)))
        return taps

    # -- forward -----------------------------------------------------------------------------------------------------
    def text_features(self) -> torch.Tensor:
        """Normalised class features ``[C, E]`` (recomputed while training; cached in eval mode)."""
        if self._text is not None and not self.training:
            return self._text
        feats = normalize(self.clip.encode_text_embeddings(self.prompt_embeddings(), self.tokenized_prompts,
                                                           self.text_taps()))
        if not self.training:
            self._text = feats
        return feats

    def image_features(self, images: torch.Tensor) -> torch.Tensor:
        """Normalised image features ``[B, E]`` with the image prompts."""
        return normalize(self.clip.encode_image(images, self.image_taps()))

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        text = self.text_features()
        return self.clip.logit_scale() * self.image_features(images) @ text.t()

    def training_step(self, images: torch.Tensor, labels: torch.Tensor) -> StepOutput:
        logits = self(images)
        loss = F.cross_entropy(logits, labels)
        return StepOutput(loss, {"loss_ce": loss.detach()}, logits)

    def load_official_state_dict(self, state_dict: dict[str, torch.Tensor]) -> None:
        """Official ``prompt_learner.*`` names (``ctx``, ``proj``, ``compound_prompts_text.i``,
        ``compound_prompt_projections.i``); the ``token_prefix``/``token_suffix`` buffers are rebuilt."""
        mapped = {k.removeprefix("prompt_learner."): v for k, v in state_dict.items()}
        mapped = {k: v for k, v in mapped.items() if k not in ("token_prefix", "token_suffix")}
        self.load_state_dict(mapped, strict=True)
        self.invalidate()
