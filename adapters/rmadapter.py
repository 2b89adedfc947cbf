"""RMAdapter: MMA plus a reconstruction branch that shares the down-projection, a local per-layer reconstruction
loss and a consistency loss towards the frozen CLIP features.

Paper: "RMAdapter: Reconstruction-based Multi-Modal Adapter for Vision-Language Models", AAAI 2026 (arXiv
2512.06811). **No official code and no full paper text were available**: the method
is known from third-party summaries only (SECONDARY), and every choice they leave open is a config option whose
default is the suite's guess (a ``no_official`` option). Tables built from these runs must say so.

Built on :class:`~adapters.mma.MMA` (subclassed: the adaptation branch, its modules, their official construction
order, the gradient-scale trick, the prompts, the eval cache and the recipe are MMA's code). Per adapted block
with ``h`` the block input and ``u = ln_1(h)`` the tensor the down-projection consumes::

    out = blk(h) + gsl(up(shared(σ(down(ln_1(gsl(h, α)))))) · α, 1/α)      # MMA's branch, σ = GELU by default
    rec = gsl(decoder(σ(down(gsl(src, α)))), 1/α)    src = u.detach()     # training only; decoder: depth 1-3
    L_rec[l] = mean over tokens and features of (rec − u.detach())²        # text: SOT..EOT of each prompt

and the step's loss is (the λ's and every term's form are GUESSes)::

    L = CE + λ1 Σ_l L_rec^V[l] + λ2 Σ_l L_rec^T[l] + λ3 mean|x̂ᵃ − x̂| + λ4 mean|ŵᵃ − ŵ|

with x̂, ŵ the L2-normalised frozen-CLIP image features of the same batch (one extra frozen image forward per step)
and class text features of the same prompts (computed once per class set). ``StepOutput.aux`` reports each term
**unweighted** (``loss_ce``, ``loss_rec_visual``, ``loss_rec_text``, ``loss_con_image``, ``loss_con_text``); the
run record's ``aux_losses`` carries them. At inference only the adaptation branch runs (the decoders are unused).

Gradient scaling. ``rec_grad_scale: match`` gives the reconstruction path's parameters the same
``1/α`` factor as the adaptation branch's (through :func:`~adapters.blocks.grad_scaled`), so the λ's keep their
written weight relative to CE. The published pseudo-code writes only the outer ``gsl(rec, 1/α)``; the inner
``gsl(src, α)`` added here changes nothing with the default ``rec_local: true`` (``src`` is detached) and keeps the
gradient that flows into the backbone stream exact with ``rec_local: false`` (the outer gsl alone would amplify it
1000x). With ``grad_scale_trick: false`` the factor is 1.

Inherited MMA fields and what they mean here (all GUESSes for RMAdapter): ``layers`` (#1, 5-12),
``bottleneck_dim`` (#2, 32), ``shared_layer`` (#4, MMA's cross-modal middle
layer, kept), ``scale`` (#7, 0.001), ``grad_scale_trick`` (#8), ``template`` (#20), ``xd_preset`` (#23); the
optimiser recipe is MMA's (#22). ``activation`` defaults to GELU (#3, SECONDARY) and applies to the down-projection
and the decoder's hidden layers; the shared middle layer keeps MMA's ReLU.
MMA's exact text speed switches (``text_buckets``, ``share_text_prefix``) apply at evaluation and, in training, only
with ``reconstruction: false``: the reconstruction taps average over the tokens of the batch they see (SOT..EOT of
each prompt), so during training with reconstruction the class prompts run as one batch.

Trainable parameters on ViT-B/16 (blocks 5-12, r = 32): **1,029,376** with the defaults (674,560 of MMA + 354,816
of the depth-2 decoders); 674,560 are used at inference. Pinned by the tests for every
row of the parameter table computed from the layer shapes.

The paper's design ladder is expressed by :data:`PRESETS` (option overrides, used by
``grids/ablations.yaml`` and :func:`preset_config`): ``rm_as_mma`` equals the ``mma`` method bit for bit.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from functools import partial
from typing import Any, Literal, Sequence

import torch
from torch import nn
from torch.nn import functional as F

from adapters.blocks import grad_scaled, kaiming_linears_
from adapters.mma import MMA, Activation, MMAConfig, activation_module
from frozen_clip.backbone import FrozenCLIP
from frozen_clip.contract import Capabilities, MethodInfo, OfficialPrecision, Paper, Sourced, no_official, option
from frozen_clip.method import MethodContext, StepOutput, normalize
from frozen_clip.taps import Taps, TapSite

#: the paper's design ladder as option overrides of the defaults (activation fixed across the rungs
#: except for ``rm_as_mma``, which reproduces MMA exactly)
PRESETS: dict[str, dict[str, Any]] = {
    "rm_as_mma": {"reconstruction": False, "consistency": False, "activation": "relu"},
    "rm_base": {"reconstruction": False, "consistency": False},
    "rm_rec_unshared": {"reconstruction": True, "share_down": False, "consistency": False},
    "rm_rec_shared": {"reconstruction": True, "share_down": True, "consistency": False},
    "rm_full": {},
}
AUX_TERMS = ("loss_ce", "loss_rec_visual", "loss_rec_text", "loss_con_image", "loss_con_text")
RecLosses = dict[tuple[str, int], torch.Tensor]  # (tower, 0-based block) -> L_rec of that block


@dataclass(frozen=True)
class RMAdapterConfig(MMAConfig):
    """RMAdapter options. Fields whose source says "no official value" are **not given by the paper**;
    SECONDARY ones come from third-party summaries. Reconstruction options are inert with ``reconstruction: false``,
    consistency options with ``consistency: false``."""

    activation: Activation = option(
        "gelu", "paper (per third-party summaries): σ = GELU in the down-projection and the decoder",
        kind="paper")
    # -- ablation switches --
    reconstruction: bool = option(True, "the reconstruction branch and its loss")
    share_down: bool = option(
        True, "paper (per third-party summaries): decoder reads the adapter's down; false = separate down_rec",
        kind="paper")
    consistency: bool = option(
        True, "paper (per third-party summaries): L1 consistency towards frozen-CLIP features", kind="paper")
    decoder_depth: Literal[1, 2, 3] = option(
        2, "SECONDARY: number of Linear layers of the decoder (2 reported best)", kind="paper")
    rec_loss: Literal["l2", "l1", "cosine"] = option(
        "l2", "SECONDARY: L2 best; cosine = 1 − cos per token", kind="paper")
    lambda_rec_visual: float = option(1.0, "no official value: λ1, no value known", kind="no_official")
    lambda_rec_text: float = option(1.0, "no official value: λ2", kind="no_official")
    lambda_con_image: float = option(10.0, "no official value: λ3, PromptSRC's image weight", kind="no_official")
    lambda_con_text: float = option(25.0, "no official value: λ4, PromptSRC's text weight", kind="no_official")
    # -- the remaining unknowns --
    decoder_hidden: int | None = option(
        None, "no official value: hidden width of the decoder; null = bottleneck_dim", kind="no_official")
    decoder_input: Literal["down", "shared"] = option(
        "down", "no official value: x_down, or the shared layer's output", kind="no_official")
    decoder_init: Literal["kaiming", "torch_default"] = option(
        "kaiming", "no official value: MMA's kaiming fan_out, bias 0", kind="no_official")
    rec_grad_scale: Literal["match", "none"] = option(
        "match", "no official value: decoder/down get 1/α x grad like the branch", kind="no_official")
    rec_target: Literal["adapter_input", "block_input", "block_output"] = option(
        "adapter_input", "no official value: ln_1(h)", kind="no_official")
    rec_detach_target: bool = option(True, "no official value: the target carries no gradient", kind="no_official")
    rec_local: bool = option(
        True, "no official value: the reconstruction path reads u.detach() (no cross-layer backprop)",
        kind="no_official")
    rec_text_tokens: Literal["valid", "all"] = option(
        "valid", "no official value: SOT..EOT per prompt; all = 77, no truncation", kind="no_official")
    rec_visual_tokens: Literal["all", "patches"] = option(
        "all", "paper (per third-party summaries): CLS + patches", kind="paper")
    rec_reduction: Literal["mean", "sum"] = option(
        "mean", "no official value: mean over tokens+features; sum = ‖·‖² per sample", kind="no_official")
    con_normalize: bool = option(True, "no official value: L1 between L2-normalised features (PromptSRC)",
                                 kind="no_official")
    con_reduction: Literal["mean", "sum"] = option(
        "mean", "no official value: mean over elements; sum = L1 norm per sample", kind="no_official")
    con_text_target: Literal["same_template", "dataset_template"] = option(
        "same_template", "no official value: the consistency target uses the same prompts", kind="no_official")
    rec_at_inference: Literal[False] = option(
        False, "no official value: the decoder is skipped at inference (the only value: the design defines no use of a "
        "reconstruction at inference)", kind="no_official")

    def validate(self) -> None:
        super().validate()
        lambdas = ("lambda_rec_visual", "lambda_rec_text", "lambda_con_image", "lambda_con_text")
        negative = [name for name in lambdas if getattr(self, name) < 0]
        if negative:
            raise ValueError(f"{negative} must be non-negative")
        if self.decoder_hidden is not None and self.decoder_hidden <= 0:
            raise ValueError(f"decoder_hidden must be positive or null, got {self.decoder_hidden}")
        if self.decoder_input == "shared" and not self.shared_layer:
            raise ValueError("decoder_input: shared needs shared_layer: true (there is no shared layer to read)")


def preset_config(name: str, **overrides: Any) -> RMAdapterConfig:
    """The config of a design-ladder rung (:data:`PRESETS`), with further overrides."""
    return replace(RMAdapterConfig(), **{**PRESETS[name], **overrides})


class RecBranch(nn.Module):
    """One tower's reconstruction path at one block: an optional own ``down`` (``share_down: false``, same shape as
    the adapter's) and the decoder ``Sequential`` of ``depth`` Linears (hidden layers followed by σ)."""

    def __init__(self, width: int, config: RMAdapterConfig) -> None:
        super().__init__()
        r = config.bottleneck_dim
        hidden = config.decoder_hidden or r
        self.down = None if config.share_down else nn.Sequential(nn.Linear(width, r),
                                                                 activation_module(config.activation))
        dims = [r] + [hidden] * (config.decoder_depth - 1) + [width]
        layers: list[nn.Module] = []
        for i, (d_in, d_out) in enumerate(zip(dims[:-1], dims[1:])):
            layers.append(nn.Linear(d_in, d_out))
            if i < len(dims) - 2:
                layers.append(activation_module(config.activation))
        self.decoder = nn.Sequential(*layers)


def reconstruction_loss(rec: torch.Tensor, target: torch.Tensor, mask: torch.Tensor | None, kind: str,
                        reduction: str) -> torch.Tensor:
    """One block's ``L_rec`` over the selected tokens (``mask`` ``[B, L]`` bool, None = all).

    ``mean``: mean over the selected tokens and the features (cosine: over tokens); ``sum``: the squared / absolute
    error summed over selected tokens and features (cosine: ``1 − cos`` summed over tokens), averaged over samples.
    """
    rec, target = rec.float(), target.float()  # under autocast the decoder runs in fp16; reduce in fp32
    if kind == "cosine":
        per_token = 1.0 - F.cosine_similarity(rec, target, dim=-1)
    else:
        diff = rec - target
        elementwise = diff.square() if kind == "l2" else diff.abs()
        per_token = elementwise.mean(-1) if reduction == "mean" else elementwise.sum(-1)
    if mask is not None:
        per_token = per_token * mask.to(per_token.dtype)
        count = mask.sum()
    else:
        count = per_token.new_tensor(float(per_token.numel()))
    return per_token.sum() / (count if reduction == "mean" else per_token.shape[0])


class RMAdapter(MMA):
    """Reconstruction-based multi-modal adapter (module docstring)."""

    Config = RMAdapterConfig
    info = MethodInfo(
        name="rmadapter", display="RMAdapter",
        paper=Paper("RMAdapter: Reconstruction-based Multi-Modal Adapter for Vision-Language Models", "AAAI", 2026,
                    "2512.06811"),
        code=None, capabilities=Capabilities(trains_on="images"),
        factors={"reconstruction branch": ("reconstruction", "consistency")},
        caption_note="RMAdapter has no official code: its unknown design choices are the suite's guesses "
                     "(every one a named option).",
        tiny_world_overrides={"method.layers": [2, 3], "optim.grad_clip": 1.0},
        precision=OfficialPrecision(
            "amp_fp16", "fp32",
            "no official RMAdapter code: MMA's (vit_b16_ep5.yaml:38, Dassl test() without autocast)",
            "no_official"))

    @classmethod
    def recipe_settings(cls, protocol: str, dataset: str, shots: int, config: Any) -> dict[str, Sourced]:
        """MMA's recipe: RMAdapter has no official code, so no value is official."""
        return {k: no_official(v.value, f"no official RMAdapter code; MMA's: {v.source}")
                for k, v in super().recipe_settings(protocol, dataset, shots, config).items()}

    def __init__(self, clip: FrozenCLIP, classnames: Sequence[str], config: RMAdapterConfig,
                 context: MethodContext) -> None:
        super().__init__(clip, classnames, config, context)  # MMA's modules first: rm_as_mma replays MMA's RNG
        self.text_rec = self._rec_branches("text")
        self.visual_rec = self._rec_branches("visual")
        self._frozen_text: torch.Tensor | None = None

    def _rec_branches(self, tower: str) -> nn.ModuleDict:
        """``{block index: RecBranch}`` (empty without reconstruction); created, then initialised (MMA's order)."""
        if not self.config.reconstruction:
            return nn.ModuleDict()
        branches = nn.ModuleDict({key: RecBranch(self.width(tower), self.config) for key in self.adapters(tower)})
        for branch in branches.values():
            if branch.down is not None:
                kaiming_linears_(branch.down)  # "same shape and init" as the adapter's down
            if self.config.decoder_init == "kaiming":
                kaiming_linears_(branch.decoder)
        return branches

    def rec_branches(self, tower: str) -> nn.ModuleDict:
        """The reconstruction paths of ``tower``."""
        return self.text_rec if tower == "text" else self.visual_rec

    @property
    def truncates_text(self) -> bool:
        """``rec_text_tokens: all`` reconstructs all 77 positions, so the text context is then never cut."""
        all_tokens = self.config.reconstruction and self.config.rec_text_tokens == "all"
        return super().truncates_text and not all_tokens

    def set_classnames(self, classnames: Sequence[str]) -> None:
        super().set_classnames(classnames)
        self._frozen_text = None

    def load_official_state_dict(self, state_dict: dict[str, torch.Tensor]) -> None:
        raise NotImplementedError("RMAdapter has no official code release to load checkpoints from")

    # -- the reconstruction path --------------------------------------------------------------------------------------
    @property
    def rec_grad_factor(self) -> float:
        """Gradient factor of the reconstruction path's parameters: ``1/α`` under ``match`` with the trick, else 1."""
        match = self.config.rec_grad_scale == "match" and self.config.grad_scale_trick
        return 1.0 / self.config.scale if match else 1.0

    def reconstruct(self, tower: str, key: str, src: torch.Tensor) -> torch.Tensor:
        """``decoder(σ(down(src)))`` with the shared or the own down-projection (and the shared layer if asked)."""
        branch = self.rec_branches(tower)[key]
        down = self.adapters(tower)[key].down if branch.down is None else branch.down
        z = down(src)
        if self.config.decoder_input == "shared":
            z = self.shared_adapters[key](z)
        return branch.decoder(z)

    def _record_reconstruction(self, tower: str, key: str, sink: RecLosses, mask: torch.Tensor | None,
                               y: torch.Tensor, site: TapSite, x: torch.Tensor) -> torch.Tensor:
        """A ``block_out`` tap that stores this block's ``L_rec`` in ``sink`` and returns ``y`` unchanged."""
        u = self.adapter_input(tower, key, x)
        target = {"adapter_input": u, "block_input": x, "block_output": y}[self.config.rec_target]
        target = target.detach() if self.config.rec_detach_target else target
        src = u.detach() if self.config.rec_local else u
        rec = grad_scaled(partial(self.reconstruct, tower, key), src, self.rec_grad_factor)
        if tower == "visual" and self.config.rec_visual_tokens == "patches":
            rec, target = rec[:, site.n_prefix:], target[:, site.n_prefix:]
        sink[(tower, int(key))] = reconstruction_loss(rec, target, mask, self.config.rec_loss,
                                                      self.config.rec_reduction)
        return y

    def training_taps(self, tower: str, sink: RecLosses, ids: torch.Tensor | None = None) -> Taps:
        """MMA's taps plus, with reconstruction, one tap per block recording ``L_rec`` (text: ``ids`` give the
        valid positions, SOT .. EOT = argmax of the ids, under ``rec_text_tokens: valid``)."""
        taps = self.taps(tower)
        if not self.config.reconstruction:
            return taps
        mask = None
        if tower == "text" and self.config.rec_text_tokens == "valid":
            positions = torch.arange(ids.shape[1], device=ids.device)
            mask = positions[None, :] <= ids.argmax(dim=-1)[:, None]
        for key in self.adapters(tower):
            taps.add("block_out", tower, int(key), partial(self._record_reconstruction, tower, key, sink, mask))
        return taps

    def forward_train(self, images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, RecLosses]:
        """Adapted image and class text features (un-normalised) and the per-block reconstruction losses."""
        sink: RecLosses = {}
        ids = self.class_ids()
        # without reconstruction the taps are MMA's own, per token: MMA's exact fast text paths apply (as in MMA)
        text = self.encode_text(ids, self.training_taps("text", sink, ids)) if self.config.reconstruction \
            else self.encode_text(ids)
        image = self.encode_image(images, self.training_taps("visual", sink))
        return image, text, sink

    # -- consistency --------------------------------------------------------------------------------------------------
    def frozen_text_features(self) -> torch.Tensor:
        """Frozen-CLIP class text features (``con_text_target``), computed once per class set."""
        if self._frozen_text is None:
            if self.config.con_text_target == "dataset_template":
                ids = self.clip.tokenize(self.prompts(self.context.template))
            else:
                ids = self.text_ids
            with torch.no_grad():
                self._frozen_text = self.clip.encode_text(ids, truncate=self.truncates_text)
        return self._frozen_text

    def consistency_loss(self, adapted: torch.Tensor, frozen: torch.Tensor) -> torch.Tensor:
        """L1 between (L2-normalised) adapted and frozen features, mean over elements or L1 norm per sample."""
        adapted, frozen = adapted.float(), frozen.float()  # fp32 under autocast, as the reductions need
        if self.config.con_normalize:
            adapted, frozen = normalize(adapted), normalize(frozen)
        diff = (adapted - frozen).abs()
        return diff.mean() if self.config.con_reduction == "mean" else diff.sum(-1).mean()

    # -- the step -----------------------------------------------------------------------------------------------------
    def training_step(self, images: torch.Tensor, labels: torch.Tensor) -> StepOutput:
        """CE + λ-weighted reconstruction and consistency terms; each term reported unweighted in ``aux``."""
        image, text, rec = self.forward_train(images)
        logits = self.logits(image, text)
        terms = {"loss_ce": F.cross_entropy(logits, labels)}
        weights = {"loss_ce": 1.0}
        if self.config.reconstruction:
            for tower, name in (("visual", "loss_rec_visual"), ("text", "loss_rec_text")):
                terms[name] = sum(loss for (t, _), loss in rec.items() if t == tower)
            weights.update(loss_rec_visual=self.config.lambda_rec_visual, loss_rec_text=self.config.lambda_rec_text)
        if self.config.consistency:
            with torch.no_grad():
                frozen_image = self.clip.encode_image(images)  # the one extra frozen forward per batch, no taps
            terms["loss_con_image"] = self.consistency_loss(image, frozen_image)
            terms["loss_con_text"] = self.consistency_loss(text, self.frozen_text_features())
            weights.update(loss_con_image=self.config.lambda_con_image, loss_con_text=self.config.lambda_con_text)
        loss = terms["loss_ce"]
        for name in AUX_TERMS[1:]:
            if name in terms:
                loss = loss + weights[name] * terms[name]
        return StepOutput(loss, {name: value.detach() for name, value in terms.items()}, logits)
