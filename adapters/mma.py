"""MMA: the Multi-Modal Adapter -- a parallel bottleneck branch in the upper blocks of both CLIP towers, with a
middle layer shared by the two towers at each depth.

Source: ``ZjjConan/Multi-Modal-Adapter@547ee34`` (MIT), ``trainers/mmadapter.py`` + ``clip/model.py`` +
``clip/gsl.py``; paper: MMA, CVPR 2024. The defaults reproduce the **official code**
(``configs/trainers/MultiModalAdapter/vit_b16_ep5.yaml``), pinned by the golden fixtures ``tests/fixtures/mma.*``.

Model. In blocks 5-12 (1-based) of both towers, a branch reads the **block input** ``x`` through the
block's own frozen ``ln_1`` and is added to the block output (tap ``block_out``), for every token::

    y = gsl(x, s); y = ln_1(y); y = down(y)         # Linear(D, 32) + ReLU, per tower and layer
    y = shared(y)                                   # Linear(32, 32) + ReLU, ONE module per layer for both towers
    y = gsl(up(y) * s, 1 / s)                       # Linear(32, D), per tower and layer; s = 0.001
    out = (x + attn(ln_1(x)) + mlp(ln_2(x))) + y

``gsl`` (the gradient-scale trick, :mod:`adapters.blocks`) leaves the forward value ``s · f(x)`` and the gradient
into the backbone stream exact, and gives every adapter parameter ``1/s = 1000`` times its true gradient (measured,
see the tests); SGD lr 0.0015 therefore acts like lr 1.5 on the adapters. Every Linear is initialised
``kaiming_normal_(fan_out, relu)`` with zero bias, in the official order (all text Linears are created, then
initialised; then the image ones; then the shared ones), so a seeded build reproduces the official init bitwise.
The prompt is ``"a photo of a {}."``; the loss is plain cross-entropy over all classes, with the text features of
every class recomputed at each step. Trainable parameters on ViT-B/16: 674,560.

Layers and presets. ``layers`` (1-based, both towers) left at ``null`` means: 5-12 on base-to-novel and few-shot
(the official configs); on cross-dataset / domain generalisation the ``xd_preset`` chooses them (``xd_start9``:
9-12, the default; ``xd_start10``: 10-12; both guesses) together with its recipe (1 epoch, batch 128,
lr 0.0015). **An explicit ``layers`` always wins**; the preset's recipe still applies unless ``xd_preset: none``.

Deviations from the official code, all named options or harmless:

* ``truncate_text`` (on): the text context is cut to the longest prompt of the class set. The branch is per token,
  so this is exact under the causal mask; ``false`` encodes all 77 positions as the official
  code does.
* ``text_buckets`` (3) and ``share_text_prefix`` (on), with truncation on: the class prompts are grouped by length
  into at most that many batches, each cut to its own longest, and the positions all prompts share
  (``[SOS] a photo of a``) run once for all of them (:mod:`frozen_clip.shared_prefix`). Exact because the branch
  is per token; left out of the run id. Only the method's own taps take this path (see :meth:`MMA.encode_text`).
* The eval text cache is dropped on every mode switch, class change or load (official: never invalidated).
* Checkpoints load strictly (:meth:`MMA.load_official_state_dict`); the official loader is non-strict.
* Not reproduced (unreachable in the official configs): the index-0 adapters (START=0), and the
  ``mid_dim == d_model`` quirk of ``_build_adapter``, which would turn a tower's adapter into a single
  ``Linear + ReLU`` if its width equalled ``ADAPTER_DIM``.

Ablation axes are fields of :class:`MMAConfig`. ``activation`` switches the down-projection's
nonlinearity only; the shared middle layer keeps its ReLU (as in RMAdapter's design).
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from functools import partial
from typing import Any, ClassVar, Literal, Sequence

import torch
from torch import nn
from torch.nn import functional as F

from adapters.blocks import kaiming_linears_, scaled_branch
from frozen_clip.backbone import FrozenCLIP
from frozen_clip.contract import (
    BackboneShape, Capabilities, Code, MethodInfo, OfficialPrecision, Paper, Sourced, no_official, official,
    option)
from frozen_clip.errors import ConfigError
from frozen_clip.method import Method, MethodContext, StepOutput, normalize
from frozen_clip.taps import Taps, TapSite

TOWERS = ("text", "visual")  # construction order of the official code: text, then image (then shared)
XD_PROTOCOLS = ("cross_dataset", "domain_generalization")
BASE_LAYERS = tuple(range(5, 13))  # ADAPTER_START=5, ADAPTER_END=12 (vit_b16_ep5*.yaml:34-35)
# guesses: the official repository has no cross-dataset config
XD_PRESETS = {"xd_start9": tuple(range(9, 13)), "xd_start10": tuple(range(10, 13))}
#: official ``AdapterLearner`` buffers (not parameters); dropped by name when loading a checkpoint
OFFICIAL_BUFFERS = ("token_embedding", "tokenized_prompts")
_OFFICIAL_NAME = re.compile(r"^(text|visual|shared)_adapter\.(\d+)\.(.+)$")
Activation = Literal["relu", "gelu"]


@dataclass(frozen=True)
class MMAConfig:
    """MMA options. Defaults reproduce ``vit_b16_ep5.yaml`` + ``trainers/mmadapter.py`` @547ee34."""

    #: exact speed switches left out of the run id (a run with other settings computes the same result)
    UNHASHED_FIELDS: ClassVar[tuple[str, ...]] = ("text_buckets", "share_text_prefix")

    layers: tuple[int, ...] | None = option(
        None, "1-based blocks of both towers; null = 5-12, or the XD preset's (above)")
    bottleneck_dim: int = option(32, "ADAPTER_DIM")
    shared_layer: bool = option(True, "the per-layer Linear(r, r)+ReLU shared by both towers; false = no middle layer")
    scale: float = option(0.001, "ADAPTER_SCALE (train and test, base and novel)")
    grad_scale_trick: bool = option(
        True, "clip/gsl.py: adapter gradients x 1/s; false = plain s·f(x), gradients s x smaller")
    activation: Activation = option("relu", 'of the down-projection; "gelu" is RMAdapter\'s reported choice')
    tap: Literal["ln_1", "block_input"] = option(
        "ln_1", "branch input: ln_1(block input) (official) or the block input")
    template: str = option("a photo of a {}.", 'TEXT_CTX_INIT + " {}."; "dataset" = the dataset\'s CoOp template')
    truncate_text: bool = option(
        True, "exact (per-token branch): cut the text context to the longest prompt", kind="suite",
        fast_path_off=False)
    text_buckets: int = option(
        3, "exact fast path: class prompts grouped by length, each group cut to its own longest", kind="suite",
        fast_path_off=1)
    share_text_prefix: bool = option(
        True, "exact fast path: the positions all class prompts share run once", kind="suite",
        fast_path_off=False)
    xd_preset: Literal["xd_start9", "xd_start10", "none"] = option("xd_start9", "cross-dataset / DG layers + recipe")

    def validate(self) -> None:
        """Reject impossible values (layers beyond the tower depth are checked when the model is built)."""
        if self.layers is not None and (not self.layers or min(self.layers) < 1
                                        or len(set(self.layers)) != len(self.layers)):
            raise ValueError(f"layers must be null or distinct 1-based block numbers, got {list(self.layers)}")
        if self.text_buckets < 1:
            raise ValueError(f"text_buckets must be >= 1 (1 = one batch), got {self.text_buckets}")
        if self.bottleneck_dim <= 0:
            raise ValueError(f"bottleneck_dim must be positive, got {self.bottleneck_dim}")
        if self.scale <= 0:
            raise ValueError(f"scale must be positive (the gsl trick divides by it), got {self.scale}")
        if self.template != "dataset" and "{}" not in self.template:
            raise ValueError(f"template must contain '{{}}' for the class name (or be 'dataset'), "
                             f"got {self.template!r}")


def adapted_layers(config: MMAConfig, protocol: str, n_blocks: int) -> tuple[int, ...]:
    """0-based indices of the adapted blocks: explicit ``layers``, else the XD preset's or 5-12 (module docstring)."""
    if config.layers is not None:
        layers = config.layers
    elif protocol in XD_PROTOCOLS and config.xd_preset != "none":
        layers = XD_PRESETS[config.xd_preset]
    else:
        layers = BASE_LAYERS
    if max(layers) > n_blocks:
        raise ConfigError(f"method.layers: {list(layers)} exceeds the {n_blocks} blocks of the tower (1-based); "
                          "set method.layers for this backbone")
    return tuple(sorted(layer - 1 for layer in layers))


def activation_module(name: str) -> nn.Module:
    """``relu`` -> ``nn.ReLU``; ``gelu`` -> exact (erf) ``nn.GELU``."""
    return nn.ReLU() if name == "relu" else nn.GELU()


class Branch(nn.Module):
    """One tower's adapter at one block: ``down = Sequential(Linear(D, r), act)``, ``up = Linear(r, D)``.

    The attribute names mirror the official ``Sequential(OrderedDict(down=..., up=...))``; ``down`` is created
    before ``up`` (RNG order of the default init that the Kaiming init then overwrites).
    """

    def __init__(self, width: int, bottleneck: int, activation: str) -> None:
        super().__init__()
        self.down = nn.Sequential(nn.Linear(width, bottleneck), activation_module(activation))
        self.up = nn.Linear(bottleneck, width)


class MMA(Method):
    """Multi-Modal Adapter (module docstring)."""

    Config = MMAConfig
    info = MethodInfo(
        name="mma", display="MMA", paper=Paper("MMA: Multi-Modal Adapter for Vision-Language Models", "CVPR", 2024),
        code=Code("ZjjConan/Multi-Modal-Adapter", "547ee34"), capabilities=Capabilities(trains_on="images"),
        tiny_world_overrides={"method.layers": [2, 3]},
        precision=OfficialPrecision(
            "amp_fp16", "fp32",
            "configs/trainers/MultiModalAdapter/vit_b16_ep5.yaml:38 (PREC amp); Dassl "
            "dassl/engine/trainer.py:446-475 (test() without autocast)",
            "official"))

    def __init__(self, clip: FrozenCLIP, classnames: Sequence[str], config: MMAConfig,
                 context: MethodContext) -> None:
        super().__init__(clip, classnames, config, context)
        n_blocks = min(len(self.resblocks(tower)) for tower in TOWERS)
        self.layers = adapted_layers(config, context.protocol, n_blocks)
        self.text_adapters = kaiming_linears_(self._branches("text"))
        self.visual_adapters = kaiming_linears_(self._branches("visual"))
        self.shared_adapters = kaiming_linears_(self._shared())
        self._text_cache: torch.Tensor | None = None
        self._set_prompts(classnames)

    @classmethod
    def check_backbone(cls, shape: BackboneShape, protocol: str, config: MMAConfig) -> None:
        """The adapted blocks exist in both towers."""
        adapted_layers(config, protocol, min(shape.text.layers, shape.visual.layers))

    # -- construction -------------------------------------------------------------------------------------------------
    def resblocks(self, tower: str) -> nn.ModuleList:
        """The frozen blocks of ``tower`` (reached through the backbone, never registered on this module)."""
        return self.clip.text.transformer.resblocks if tower == "text" else self.clip.visual.transformer.resblocks

    def width(self, tower: str) -> int:
        """Token width D of ``tower`` (512 text, 768 image on ViT-B/16)."""
        return self.resblocks(tower)[0].ln_1.normalized_shape[0]

    def _branches(self, tower: str) -> nn.ModuleDict:
        """``{block index: Branch}`` for the adapted blocks of ``tower`` (0-based keys)."""
        return nn.ModuleDict({str(layer): Branch(self.width(tower), self.config.bottleneck_dim,
                                                 self.config.activation) for layer in self.layers})

    def _shared(self) -> nn.ModuleDict:
        """``{block index: Sequential(Linear(r, r), ReLU)}``; empty with ``shared_layer: false``."""
        r = self.config.bottleneck_dim
        if not self.config.shared_layer:
            return nn.ModuleDict()
        return nn.ModuleDict({str(layer): nn.Sequential(nn.Linear(r, r), nn.ReLU()) for layer in self.layers})

    def adapters(self, tower: str) -> nn.ModuleDict:
        """The per-layer branches of ``tower``."""
        return self.text_adapters if tower == "text" else self.visual_adapters

    @classmethod
    def recipe_settings(cls, protocol: str, dataset: str, shots: int, config: Any) -> dict[str, Sourced]:
        """Official optimisation (Dassl defaults + ``vit_b16_ep5*.yaml``): SGD lr 0.0015, momentum 0.9,
        wd 5e-4, cosine per epoch, no warmup, 5 epochs, batch 16 (ImageNet 128, ``vit_b16_ep5_imnet.yaml``), test
        batch 100. Few-shot: the same (GUESS). Cross-dataset / DG with an XD preset: 1 epoch, batch 128 (GUESS, from
        the paper's sentence quoted in VLM-MultiModalAdapter#3)."""
        ep5 = "configs/trainers/MultiModalAdapter/vit_b16_ep5.yaml"
        values = {"name": ("sgd", f"{ep5}:16"), "lr": (0.0015, f"{ep5}:17"),
                  "momentum": (0.9, "Dassl dassl/config/defaults.py:153-156 (not overridden)"),
                  "weight_decay": (5e-4, "Dassl dassl/config/defaults.py:153-156 (not overridden)"),
                  "scheduler": ("cosine", f"{ep5}:19-20"), "warmup_epochs": (0, f"{ep5}:19-20"),
                  "eval_batch_size": (100, f"{ep5}:5"), "epochs": (5, f"{ep5}:18"),
                  "batch_size": (128, "vit_b16_ep5_imnet.yaml:3 (run_examples.sh:12-15)") if dataset == "imagenet"
                  else (16, f"{ep5}:3")}
        if protocol in XD_PROTOCOLS and config.xd_preset != "none":
            quote = (f"xd_preset {config.xd_preset}: no config in the official repository; the paper's '1 epoch' "
                     "as quoted in the repository's issue #3")
            values.update(epochs=(1, quote), batch_size=(128, quote))
        if protocol != "base2novel":
            return {k: no_official(v, where if "xd_preset" in where
                                   else f"no {protocol} config in the official repository; base-to-novel {where}")
                    for k, (v, where) in values.items()}
        return {k: official(v, where) for k, (v, where) in values.items()}

    # -- prompts ------------------------------------------------------------------------------------------------------
    def prompt_templates(self) -> tuple[str, ...]:
        return (self.template(),)

    def template(self) -> str:
        """The prompt template in use (``template: dataset`` = the dataset's CoOp template)."""
        return self.context.template if self.config.template == "dataset" else self.config.template

    def _set_prompts(self, classnames: Sequence[str]) -> None:
        ids = self.clip.tokenize(self.prompts(self.template(), classnames))
        self.register_buffer("text_ids", ids, persistent=False)  # [n_cls, context], full 77 positions

    def set_classnames(self, classnames: Sequence[str]) -> None:
        super().set_classnames(classnames)
        self._set_prompts(classnames)

    def invalidate(self) -> None:
        """Drop the cached eval text features (after training, loading or a class change)."""
        self._text_cache = None

    @property
    def truncates_text(self) -> bool:
        """Whether the text context is cut to the longest prompt (exact for per-token branches)."""
        return self.config.truncate_text

    @property
    def shares_text_prefix(self) -> bool:
        """Whether the positions all class prompts share run once (with truncation; the branch is per token)."""
        return self.config.share_text_prefix and self.truncates_text

    def class_ids(self) -> torch.Tensor:
        """Token ids of the class prompts, truncated when :attr:`truncates_text`."""
        return self.clip.truncate(self.text_ids) if self.truncates_text else self.text_ids

    # -- the adaptation branch ----------------------------------------------------------------------------------------
    def adapter_input(self, tower: str, key: str, x: torch.Tensor) -> torch.Tensor:
        """What the down-projection reads: the block's frozen ``ln_1`` of the block input (``tap: ln_1``) or it."""
        return self.resblocks(tower)[int(key)].ln_1(x) if self.config.tap == "ln_1" else x

    def bottleneck(self, tower: str, key: str, u: torch.Tensor) -> torch.Tensor:
        """``shared(down(u))`` (``down(u)`` without the shared layer): the branch's latent."""
        z = self.adapters(tower)[key].down(u)
        return self.shared_adapters[key](z) if self.config.shared_layer else z

    def _branch(self, tower: str, key: str, x: torch.Tensor) -> torch.Tensor:
        return self.adapters(tower)[key].up(self.bottleneck(tower, key, self.adapter_input(tower, key, x)))

    def adaptation(self, tower: str, key: str, x: torch.Tensor) -> torch.Tensor:
        """``s · up(shared(down(ln_1(x))))``, written ``gsl(up(...(ln_1(gsl(x, s)))) · s, 1/s)``."""
        return scaled_branch(partial(self._branch, tower, key), x, self.config.scale, self.config.grad_scale_trick)

    def _add_branch(self, tower: str, key: str, y: torch.Tensor, site: TapSite, x: torch.Tensor) -> torch.Tensor:
        return y + self.adaptation(tower, key, x)  # (x + attn + mlp) + branch: the official summation order

    def taps(self, tower: str) -> Taps:
        """Taps adding the adaptation branch to the output of every adapted block of ``tower``."""
        taps = Taps()
        for key in self.adapters(tower):
            taps.add("block_out", tower, int(key), partial(self._add_branch, tower, key))
        return taps

    # -- features and logits ------------------------------------------------------------------------------------------
    def encode_text(self, ids: torch.Tensor | None = None, taps: Taps | None = None) -> torch.Tensor:
        """Adapted, un-normalised text features of ``ids`` (default: the class prompts) ``[N, E]``.

        With the method's own taps (per-token branches) the prompts go through the exact fast paths: length
        buckets and the shared prefix run once. Taps passed in by a caller may keep per-batch state (RMAdapter's
        reconstruction losses over the batch's tokens), so they see the prompts as one batch."""
        ids = self.class_ids() if ids is None else ids
        if taps is not None:
            return self.clip.encode_text(ids, taps, truncate=False)
        return self.clip.encode_text(ids, self.taps("text"), truncate=self.truncates_text,
                                     buckets=self.config.text_buckets, share_prefix=self.shares_text_prefix)

    def encode_image(self, images: torch.Tensor, taps: Taps | None = None) -> torch.Tensor:
        """Adapted, un-normalised image features ``[B, E]``."""
        return self.clip.encode_image(images, self.taps("visual") if taps is None else taps)

    def text_features(self) -> torch.Tensor:
        """Un-normalised class text features; cached in eval mode (``text_features_for_inference``) until
        :meth:`invalidate`, recomputed with gradients in training mode (``mmadapter.py:188-197``)."""
        if self.training:
            return self.encode_text()
        if self._text_cache is None:
            with torch.no_grad():
                self._text_cache = self.encode_text()
        return self._text_cache

    def logits(self, image_features: torch.Tensor, text_features: torch.Tensor) -> torch.Tensor:
        """``exp(logit_scale) · normalize(img) @ normalize(txt)ᵀ``."""
        return self.clip.logit_scale() * normalize(image_features) @ normalize(text_features).t()

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        text = self.text_features()
        return self.logits(self.encode_image(images), text)

    def training_step(self, images: torch.Tensor, labels: torch.Tensor) -> StepOutput:
        """Cross-entropy over all classes; the text features of every class are recomputed at each step."""
        text = self.encode_text()  # text tower first, as the official forward (no randomness either way)
        logits = self.logits(self.encode_image(images), text)
        loss = F.cross_entropy(logits, labels)
        return StepOutput(loss, {"loss_ce": loss.detach()}, logits)

    # -- checkpoints --------------------------------------------------------------------------------------------------
    def load_official_state_dict(self, state_dict: dict[str, torch.Tensor]) -> None:
        """Load an official ``adapter_learner`` state (prefix ``adapter_learner.`` optional), strictly.

        ``{text|visual}_adapter.{i}.{down.0|up}.*`` (block i 1-based) becomes ``{text|visual}_adapters.{i-1}...``;
        ``shared_adapter.{i}.0.*`` becomes ``shared_adapters.{i-1}.0.*``; the buffers in :data:`OFFICIAL_BUFFERS`
        are dropped by name. Any other key, a missing adapter or a shape mismatch raises.
        """
        mapped = {}
        for name, value in state_dict.items():
            key = name.removeprefix("adapter_learner.")
            if key in OFFICIAL_BUFFERS:
                continue
            match = _OFFICIAL_NAME.match(key)
            if match is None:
                raise ConfigError(f"official MMA state dict: unexpected key {name!r}")
            kind, index, rest = match.groups()
            mapped[f"{kind}_adapters.{int(index) - 1}.{rest}"] = value
        self.load_state_dict(mapped, strict=True)
        self.invalidate()
