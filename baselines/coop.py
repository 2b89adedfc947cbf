"""CoOp (``KaiyangZhou/CoOp@ff61507:trainers/coop.py``): learned context vectors in the text prompt.

Prompts are ``[SOS] [V]_1 ... [V]_M [CLASS] . [EOS]`` (``end``), ``[SOS] [V]_1..M/2 [CLASS] [V]_M/2+1..M . [EOS]``
(``middle``) or ``[SOS] [CLASS] [V]_1..M . [EOS]`` (``front``), encoded through the frozen text tower from token
embeddings; text features of all classes are recomputed every step. The context is shared (``csc: false``) or
class-specific, initialised from the words of ``ctx_init`` (which then sets M) or from N(0, 0.02).

Deviations (exact, on by default): the text sequence is cut to the longest prompt of the class set
(``truncate_text``), which leaves features unchanged up to floating-point reduction order; with a
shared context at the end (``csc: false``, ``class_token_position: end``) the positions ``[SOS] [V]_1..M`` are the
same for every class, so the text tower runs them once instead of once per class (``shared_prefix``,
:mod:`frozen_clip.shared_prefix`; exact under the causal mask). The training step can run on cached image features
(``feature_training_step``): the image encoder is frozen.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Literal, Sequence

import torch
from torch import nn
from torch.nn import functional as F

from frozen_clip.backbone import FrozenCLIP
from frozen_clip.contract import (
    Capabilities, Code, MethodInfo, OfficialPrecision, Paper, Sourced, no_official, official, option)
from frozen_clip.method import Method, MethodContext, StepOutput, normalize
from frozen_clip.shared_prefix import can_share, encode_text_shared_prefix


def prompt_tokens(clip: FrozenCLIP, classnames: Sequence[str], prompt_prefix: str, n_ctx: int,
                  truncate: bool) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, list[int]]:
    """The frozen parts of ``"{prompt_prefix} {name}."`` prompts (CoOp/CoCoOp/MaPLe ``PromptLearner.__init__``).

    Returns the token ids ``[C, L]`` (cut to the longest prompt when ``truncate``), the SOS embedding ``[C, 1, D]``,
    the embeddings after the ``n_ctx`` context positions ``[C, L - 1 - n_ctx, D]`` (class name, ".", EOS, padding)
    and the BPE length of each class name.
    """
    names = [name.replace("_", " ") for name in classnames]
    name_lens = [len(clip.tokenizer.encode(name)) for name in names]
    ids = clip.tokenize([f"{prompt_prefix} {name}." for name in names])
    if truncate:
        ids = clip.truncate(ids)
    with torch.no_grad():
        embedding = clip.token_embedding(ids)
    return ids, embedding[:, :1], embedding[:, 1 + n_ctx:], name_lens


_FEWSHOT_EPOCHS = {1: 50, 2: 100, 4: 100, 8: 200, 16: 200}


def coop_epochs(protocol: str, dataset: str, shots: int) -> Sourced:
    """CoOp's epochs for a run, with the config file that sets them (shared by CoOp and the CLIP-Adapter recipe that
    follows CoOp's command)."""
    if dataset == "imagenet":
        return official(50, "COOP.md:13 (ImageNet: vit_b16_ep50.yaml for every shot count)" if protocol == "fewshot"
                        else "configs/trainers/CoOp/vit_b16_ep50_ctxv1.yaml:18 (scripts/cocoop/base2new_train.sh:15,"
                             " xd_train.sh:14)")
    if protocol == "fewshot":
        if shots in _FEWSHOT_EPOCHS:
            return official(_FEWSHOT_EPOCHS[shots], "COOP.md:18-22 (vit_b16_ep50 / ep100 / vit_b16.yaml:18 by shots)")
        return no_official(200, f"CoOp has no config for {shots} shots; the 16-shot config's 200 epochs")
    if shots != 16:
        return no_official(_FEWSHOT_EPOCHS.get(shots, 200), f"the official {protocol} runs use 16 shots; the few-shot "
                                                             f"epochs for {shots} shots (COOP.md:18-22)")
    return official(200, "configs/trainers/CoOp/vit_b16_ctxv1.yaml:18 (scripts/cocoop/base2new_train.sh:14)")


@dataclass(frozen=True)
class CoOpConfig:
    """CoOp options; defaults are ``TRAINER.COOP`` of the official configs."""

    n_ctx: int | None = option(
        None, "N_CTX (ignored when ctx_init is given: M = number of its words); null = the official config of the "
        "protocol: 16 on few-shot (configs/trainers/CoOp/*_ep50.yaml ...), 4 on base-to-novel, cross-dataset and DG "
        "(vit_b16_ctxv1.yaml, vit_b16_ep50_ctxv1.yaml)", values={None: "official for the protocol"})
    ctx_init: str | None = option(
        None, 'CTX_INIT; "" = random N(0, init_std); null = the official config of the protocol: "" on few-shot, '
        '"a photo of a" on base-to-novel, cross-dataset and DG (vit_b16_ctxv1.yaml, vit_b16_ep50_ctxv1.yaml)',
        values={None: "official for the protocol"})
    csc: bool = option(False, "CSC: class-specific contexts")
    class_token_position: Literal["end", "middle", "front"] = option("end", "CLASS_TOKEN_POSITION")
    init_std: float = option(0.02, "coop.py PromptLearner: nn.init.normal_(ctx_vectors, std=0.02)")
    truncate_text: bool = option(True, "exact fast path: cut the text context to the longest prompt", kind="suite",
                                  fast_path_off=False)
    shared_prefix: bool = option(
        True, "exact fast path: [SOS] + shared context encoded once, not per class (end position)", kind="suite",
        fast_path_off=False)

    def validate(self) -> None:
        if self.n_ctx is not None and self.n_ctx <= 0 and not self.ctx_init:
            raise ValueError("n_ctx must be positive (or null: the protocol's official value)")


#: (N_CTX, CTX_INIT) of CoOp's official configs per protocol: the few-shot runs learn 16 random context tokens; the
#: base-to-novel, cross-dataset and DG runs (the CoCoOp paper's CoOp rows) 4 tokens initialised from "a photo of a"
PROTOCOL_CONTEXT: dict[str, tuple[int, str]] = {"fewshot": (16, ""), "base2novel": (4, "a photo of a"),
                                                "cross_dataset": (4, "a photo of a"),
                                                "domain_generalization": (4, "a photo of a")}


def context_settings(config: Any, protocol: str) -> tuple[int, str]:
    """``(n_ctx, ctx_init)`` of a run: the config's values, where null the official ones for ``protocol``."""
    official_n, official_init = PROTOCOL_CONTEXT.get(protocol, PROTOCOL_CONTEXT["fewshot"])
    return (official_n if config.n_ctx is None else config.n_ctx,
            official_init if config.ctx_init is None else config.ctx_init)


class CoOp(Method):
    """Context optimisation on a frozen CLIP."""

    Config = CoOpConfig
    info = MethodInfo(
        name="coop", display="CoOp",
        paper=Paper("Learning to Prompt for Vision-Language Models", "IJCV", 2022, "2109.01134"),
        code=Code("KaiyangZhou/CoOp", "ff61507"), capabilities=Capabilities(trains_on="features"),
        # 2: the context follows the official config of the protocol (4 tokens from "a photo of a" on
        # base-to-novel, cross-dataset and DG), where version 1 learned 16 random tokens on every protocol
        recipe_version=2,
        precision=OfficialPrecision(
            "fp16", "fp16",
            "train.py:94 (TRAINER.COOP.PREC fp16); trainers/coop.py:229-231 (CLIP kept in fp16), :250 (no "
            "GradScaler)",
            "official"))

    def __init__(self, clip: FrozenCLIP, classnames: Sequence[str], config: CoOpConfig,
                 context: MethodContext) -> None:
        super().__init__(clip, classnames, config, context)
        width = clip.text.width
        n_ctx, ctx_init = context_settings(config, context.protocol)
        if ctx_init:
            init = ctx_init.replace("_", " ")
            ids = clip.tokenize([init])
            self.n_ctx = len(init.split(" "))  # official: words, assumed one BPE token each
            with torch.no_grad():
                vectors = clip.token_embedding(ids)[0, 1:1 + self.n_ctx].clone()
            self.prompt_prefix = init  # official: a word-initialised context is generic even with CSC
        else:
            self.n_ctx = n_ctx
            shape = (len(classnames), self.n_ctx, width) if config.csc else (self.n_ctx, width)
            vectors = torch.empty(shape, dtype=clip.dtype, device=clip.device)
            nn.init.normal_(vectors, std=config.init_std)
            self.prompt_prefix = " ".join(["X"] * self.n_ctx)
        self.ctx = nn.Parameter(vectors)
        self._build_prompts(classnames)

    @classmethod
    def recipe_settings(cls, protocol: str, dataset: str, shots: int, config: Any) -> dict[str, Sourced]:
        """CoOp's configs: SGD lr 0.002, batch 32, 1 constant warmup epoch; epochs by shots (IJCV few-shot table),
        50 on ImageNet; base-to-novel (CoCoOp paper's CoOp rows): 200 epochs (ImageNet 50); cross-dataset / DG:
        ``vit_b16_ep50_ctxv1``, 50 epochs on the ImageNet source."""
        config_file = "configs/trainers/CoOp/vit_b16.yaml"
        return {"name": official("sgd", f"{config_file}:16-17"), "lr": official(0.002, f"{config_file}:16-17"),
                "epochs": coop_epochs(protocol, dataset, shots), "batch_size": official(32, f"{config_file}:3"),
                "warmup_epochs": official(1, f"{config_file}:19-22 (constant warmup at 1e-5)"),
                "eval_batch_size": official(100, f"{config_file}:5")}

    @classmethod
    def protocol_settings(cls, config: CoOpConfig, protocol: str) -> dict[str, Any]:
        n_ctx, ctx_init = context_settings(config, protocol)
        return {"n_ctx": len(ctx_init.split(" ")) if ctx_init else n_ctx, "ctx_init": ctx_init}

    @classmethod
    def check_run(cls, run: Any, config: CoOpConfig) -> None:
        """Class-specific contexts cannot describe classes unseen in training."""
        if config.csc and run.protocol != "fewshot":
            raise ValueError(f"coop with csc=true cannot evaluate unseen classes (protocol {run.protocol!r})")

    # -- prompts ---------------------------------------------------------------------------------------------------
    def _build_prompts(self, classnames: Sequence[str]) -> None:
        ids, prefix, suffix, self.name_lens = prompt_tokens(self.clip, classnames, self.prompt_prefix, self.n_ctx,
                                                             self.config.truncate_text)
        self.register_buffer("tokenized_prompts", ids, persistent=False)
        self.register_buffer("token_prefix", prefix, persistent=False)  # SOS
        self.register_buffer("token_suffix", suffix, persistent=False)  # CLS, ".", EOS, pad

    def set_classnames(self, classnames: Sequence[str]) -> None:
        super().set_classnames(classnames)
        self._build_prompts(classnames)

    def prompt_embeddings(self, ctx: torch.Tensor | None = None) -> torch.Tensor:
        """``PromptLearner.forward()``: the assembled prompt embeddings ``[C, L, D]``.

        ``ctx`` (default: the learned context) replaces the context, e.g. CoCoOp's per-image shifted context.
        """
        ctx = self.ctx if ctx is None else ctx
        n_cls = self.token_prefix.shape[0]
        if ctx.dim() == 2:
            ctx = ctx.unsqueeze(0).expand(n_cls, -1, -1)
        prefix, suffix = self.token_prefix, self.token_suffix
        position = self.config.class_token_position
        if position == "end":
            return torch.cat([prefix, ctx, suffix], dim=1)
        prompts = []
        half = self.n_ctx // 2
        for i, name_len in enumerate(self.name_lens):
            class_i, rest_i = suffix[i:i + 1, :name_len], suffix[i:i + 1, name_len:]
            if position == "middle":
                parts = [prefix[i:i + 1], ctx[i:i + 1, :half], class_i, ctx[i:i + 1, half:], rest_i]
            else:
                parts = [prefix[i:i + 1], class_i, ctx[i:i + 1], rest_i]
            prompts.append(torch.cat(parts, dim=1))
        return torch.cat(prompts, dim=0)

    def shares_prefix(self) -> bool:
        """Whether :meth:`text_features` encodes ``[SOS] + context`` once for all classes (module docstring)."""
        return (getattr(self.config, "shared_prefix", False) and self.ctx.dim() == 2
                and self.config.class_token_position == "end" and can_share(self.clip))

    def text_features(self) -> torch.Tensor:
        """Un-normalised text features of all classes (recomputed: the context trains)."""
        if self.shares_prefix():
            prefix = torch.cat([self.token_prefix[:1], self.ctx.unsqueeze(0)], dim=1)  # SOS is the same for all
            return encode_text_shared_prefix(self.clip, prefix, self.token_suffix, self.tokenized_prompts)
        return self.clip.encode_text_embeddings(self.prompt_embeddings(), self.tokenized_prompts)

    # -- forward -----------------------------------------------------------------------------------------------------
    def logits_from_features(self, image_features: torch.Tensor) -> torch.Tensor:
        """Logits of frozen image features against the learned prompts (the image tower has nothing to train)."""
        return self.clip.logit_scale() * normalize(image_features) @ normalize(self.text_features()).t()

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return self.logits_from_features(self.clip.encode_image(images))

    def training_step(self, images: torch.Tensor, labels: torch.Tensor) -> StepOutput:
        logits = self(images)
        loss = F.cross_entropy(logits, labels)
        return StepOutput(loss, {"loss_ce": loss.detach()}, logits)

    def feature_training_step(self, features: torch.Tensor, labels: torch.Tensor) -> StepOutput:
        """:meth:`training_step` on cached image features of the batch (the runner's exact fast path: CoOp's image
        path is frozen, so the features of each epoch's augmented view are computed once and shared)."""
        logits = self.logits_from_features(features)
        loss = F.cross_entropy(logits, labels)
        return StepOutput(loss, {"loss_ce": loss.detach()}, logits)

    def load_official_state_dict(self, state_dict: dict[str, torch.Tensor]) -> None:
        """Official ``prompt_learner`` state (``ctx``; the ``token_prefix``/``token_suffix`` buffers are rebuilt)."""
        mapped = {k.removeprefix("prompt_learner."): v for k, v in state_dict.items()}
        mapped = {k: v for k, v in mapped.items() if k not in ("token_prefix", "token_suffix")}
        self.load_state_dict(mapped, strict=True)
