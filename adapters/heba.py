"""HeBA: heterogeneous bottleneck adapters in every block of both CLIP towers.

Source: ``Jahid12012021/VLM-HeBA@60ecf23`` (MIT), ``trainers/heba.py`` + ``clip/model.py``; paper arXiv 2603.16653.
The defaults reproduce what the **official code** does (pinned by the golden fixtures
``tests/fixtures/heba.*``), which is not always what the paper describes.

Model. In every block of both towers two adapters run serially, sharing that block's scale ``s``:

* on the attention input (tap ``attn_in``, the output of ``ln_1``; width D) and
* on the MLP hidden state (tap ``mlp_hidden``, the output of ``c_fc`` before QuickGELU; width 4D),

each as ``A(x) = x + s · LN(x + up(GELU(mid(down(x)))))`` (:class:`~adapters.bottleneck.BottleneckBlock`). The
text adapter is per token (``linear``); the image adapter works on the patch grid (``conv``: 1x1 -> depthwise 3x3 ->
GELU -> 1x1) while the CLS token passes through unchanged at both points. The branch is written with the
gradient-scale trick, ``x + gsl(f(gsl(x, s)) · s, 1/s)``: identical forward, adapter gradients ``1/s`` times the
true ones.

Scale and slow-fast boost: ``s = 0.025``; for every block index of each tower, in every forward, ``torch.rand(1)`` is
drawn from the global CPU generator (text tower first, then image; also in eval mode and for blocks without an
adapter) and the block is boosted to ``s · 2.25`` when the draw exceeds 0.8 **and** the method is training.

Training step: when there are more classes than images in the batch, the step uses the batch's classes
plus up to 5x as many negatives (``randperm`` over the ascending list of the other classes); one template per step
class is drawn with ``randint`` (even with a single template); label-smoothed cross-entropy (0.1). RNG order per step:
``randperm`` (only when sampling), ``randint``, text ``rand(1)`` x L, image ``rand(1)`` x L -- exactly the official
order, so a seeded step replays the official class set, template ids and boost pattern.

Prompts: the committed code never loads its CuPL descriptions (two defects of the loader), so the effective
prompt is ``"a photo of a {c}, a photo of a {c}."`` (``prompts: fallback``, the default). ``prompts: cupl`` gives the
intended ``"a photo of a {c}, <description>"`` for every description in ``cupl_file`` (JSON
``{class: [descriptions]}``), each class padded to the longest list by repeating its first prompt. Evaluation
averages over templates (normalise, mean, renormalise) and caches the result until :meth:`HeBA.invalidate`.

Deviations from the official code, all named options or harmless:

* ``truncate_text`` (on): the text context is cut to the longest prompt in use. Exact for the per-token text
  adapters (``linear``, ``conv1d_causal``) under the causal mask; **automatically off for
  ``text_adapter: conv1d``**, whose symmetric kernel lets every token see the next one (padding included), so the
  full 77-token context is encoded as the official LwEIB-style code would.
* ``text_buckets`` (3): with truncation on, the step's prompts are grouped by length into at most that many
  batches, each cut to its own longest prompt (:func:`frozen_clip.backbone.length_buckets`), so the many short class
  names do not pay for the padding of the longest. Exact for the same reason as truncation (the adapters act on
  each prompt alone); 1 = one batch cut to the longest prompt.
* ``share_text_prefix`` (on): the positions every prompt of a text batch shares (``[SOS] a photo of a``) run once
  and the rest of each prompt attends to them (:mod:`frozen_clip.shared_prefix`). Exact only with the per-token
  ``linear`` text adapter (a causal convolution would mix prefix tokens into the first suffix tokens through a
  path the shared run does not see), so it applies only there, with truncation on.
* ``novel_scale`` (null = official): ``ADAPTER_SCALE_NOVEL`` is dead in the official code (``use_novel_scale`` is
  hard-coded False), so novel classes are evaluated with the base scale. A float applies the paper's intended
  novel scale at evaluation whenever the class set differs from the one the method was trained on.
* The eval text cache is dropped on every mode switch, class change or load (official: never invalidated; only
  matters for evaluations in the middle of training). It is computed under ``no_grad``.
* A step with exactly one negative class works (official: a 0-d index crashes; unreachable on the 11
  datasets). Token ids stay ``long`` (the official fp16 ``argmax`` defect is not reproduced).
* Checkpoints load strictly (:meth:`HeBA.load_official_state_dict`); the official loader is non-strict.

Ablation axes are fields of :class:`HeBAConfig`. Cross-dataset / domain-generalisation runs use an XD
preset (both presets are guesses, because the official ``x2d.yaml`` cannot be loaded).
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import Any, ClassVar, Literal, Sequence

import torch
from torch import nn
from torch.nn import functional as F

from adapters.blocks import scaled_branch
from adapters.bottleneck import BottleneckBlock, InitScheme, bottleneck_width, init_bottleneck_
from frozen_clip.backbone import FrozenCLIP
from frozen_clip.contract import (
    BackboneShape, Capabilities, Code, MethodInfo, OfficialPrecision, Paper, Sourced, no_official, official,
    option)
from frozen_clip.errors import ConfigError
from frozen_clip.method import Method, MethodContext, StepOutput, normalize
from frozen_clip.taps import Taps, TapSite

Point = Literal["attn_in", "mlp_hidden"]
TOWERS = ("text", "visual")  # construction and RNG order of the official code: text first
XD_PROTOCOLS = ("cross_dataset", "domain_generalization")
#: official buffers of ``AdapterLearner`` that are not parameters; dropped by name when loading a checkpoint
OFFICIAL_BUFFERS = ("tk_prompts", "token_embedding", "tokenized_prompts", "text_features_for_inference")
_OFFICIAL_NAME = re.compile(r"^(text|visual)_adapter\.(\d+)\.(att_conv|mlp_conv)\.(.+)$")
_OFFICIAL_POINT = {"att_conv": "attn_in", "mlp_conv": "mlp_hidden"}


@dataclass(frozen=True)
class HeBAConfig:
    """HeBA options. Defaults reproduce ``configs/trainers/HeBA/base2new.yaml`` and ``trainers/heba.py`` @60ecf23.

    Layer numbers are 1-based like the official ``ADAPTER_START``/``ADAPTER_END`` (block k has index k+1).
    """

    #: exact speed switches left out of the run id (a run with other buckets computes the same result)
    UNHASHED_FIELDS: ClassVar[tuple[str, ...]] = ("text_buckets", "share_text_prefix")

    bottleneck_ratio: int = option(
        4, "RobustAdapterBlock(reduction=4): D -> D/4 at both points; any divisor of D and 4D")
    init: InitScheme = option(
        "official", "heba.py L86-87: kaiming-normal fan_out on `up`, PyTorch default elsewhere", display="init",
        values={"official": "official (Kaiming on up)", "zero": "zero up", "kaiming_all": "Kaiming (all)",
                "xavier": "Xavier", "torch_default": "PyTorch default"},
        value_notes={"zero": "HeBA init=zero is not an identity adapter: with the internal LayerNorm "
                             "A(x) = x + s·LN(x)."})
    visual_adapter: Literal["conv", "linear"] = option(
        "conv", "official: 1x1 -> dw 3x3 -> GELU -> 1x1 on the patch grid")
    text_adapter: Literal["linear", "conv1d", "conv1d_causal"] = option("linear", "official: per-token Linear")
    points: tuple[Point, ...] = option(("attn_in", "mlp_hidden"), "clip/model.py L209-243: ln_1 output and c_fc output")
    text_layers: tuple[int, ...] | None = option(None, "None = all (ADAPTER_START=1, ADAPTER_END=12)")
    visual_layers: tuple[int, ...] | None = option(None, "None = all")
    scale: float = option(0.025, "ADAPTER_SCALE_BASE")
    boost_factor: float = option(2.25, "ADAPTER_SCALE_FACTOR")
    slow_fast_ratio: float = option(0.8, "SLOW_FAST_RATIO: boost iff rand(1) > ratio (probability 0.2)")
    neg_sampling_ratio: int = option(5, "NEG_SAMPLING_RATIO; 0 = positives only; < 0 = always all classes")
    label_smoothing: float = option(0.1, "LabelSmoothingCrossEntropy(0.1)")
    grad_scale_trick: bool = option(True, "trainers/gsl.py: adapter gradients x 1/s; false = plain s·f(x)")
    cls_passthrough: bool = option(
        True, "heba.py L229-248: CLS skips the image adapters (false needs visual_adapter linear)")
    ctx_init: str = option("a photo of a", "TEXT_CTX_INIT")
    prompts: Literal["fallback", "cupl"] = option(
        "fallback", "trainers/heba.py:171,176: the fallback prompt, the CuPL loader returning nothing "
                    "(trainers/gpt3_prompts.py:4,10); the paper and README describe CuPL descriptions: cupl",
        values={"fallback": "fallback prompt (code)", "cupl": "CuPL descriptions (paper)"})
    cupl_file: str | None = option(None, "JSON {classname: [descriptions]}, required by prompts: cupl")
    novel_scale: float | None = option(
        None, "trainers/heba.py:154,200-202: novel classes get the base scale (use_novel_scale is hard-coded False); "
              "the README passes ADAPTER_SCALE_NOVEL 0.010 (README.md:80): novel_scale: 0.010",
        values={None: "base scale (code)"})
    truncate_text: bool = option(
        True, "exact fast path; never applied with text_adapter conv1d (module docstring)", kind="suite",
        fast_path_off=False)
    text_buckets: int = option(
        3, "exact fast path: prompts grouped by length, each group truncated to its own longest", kind="suite",
        fast_path_off=1)
    share_text_prefix: bool = option(
        True, "exact fast path: the positions all prompts share run once (linear adapter)", kind="suite",
        fast_path_off=False)
    xd_preset: Literal["xd_intended", "xd_literal_rename", "none"] = option(
        "xd_intended", "configs/trainers/HeBA/x2d.yaml:36-39 as intended (blocks 9-12, scale 0.05, boost 10); the "
                       "file's trainer block is TRAINER.LWEIB and cannot be loaded into HeBA's config",
        kind="no_official")

    def validate(self) -> None:
        """Reject impossible values (divisibility of the widths is checked when the model is built)."""
        if self.bottleneck_ratio <= 0:
            raise ValueError(f"bottleneck_ratio must be positive, got {self.bottleneck_ratio}")
        if not self.points or len(set(self.points)) != len(self.points):
            raise ValueError(f"points must be a non-empty list without repeats, got {list(self.points)}")
        for name in ("text_layers", "visual_layers"):
            layers = getattr(self, name)
            if layers is not None and (not layers or min(layers) < 1 or len(set(layers)) != len(layers)):
                raise ValueError(f"{name} must be null or distinct 1-based layer numbers, got {list(layers)}")
        if self.text_buckets < 1:
            raise ValueError(f"text_buckets must be >= 1 (1 = one batch), got {self.text_buckets}")
        if self.scale <= 0 or self.boost_factor <= 0 or (self.novel_scale is not None and self.novel_scale <= 0):
            raise ValueError("scale, boost_factor and novel_scale must be positive (the gsl trick divides by s)")
        if not 0.0 <= self.label_smoothing < 1.0:
            raise ValueError(f"label_smoothing must be in [0, 1), got {self.label_smoothing}")
        if self.prompts == "cupl" and not self.cupl_file:
            raise ValueError("prompts: cupl needs cupl_file (a JSON file {classname: [descriptions]})")
        if not self.cls_passthrough and self.visual_adapter == "conv":
            raise ValueError("cls_passthrough: false needs visual_adapter: linear (CLS has no place on the "
                             "patch grid of the convolutional adapter)")


@dataclass(frozen=True)
class XDPreset:
    """Method-side values of a cross-dataset/DG preset; the optimiser side is in :meth:`HeBA.recipe`."""

    last_layers: int  # adapters on the last N blocks of both towers (9-12 of 12)
    scale: float
    boost_factor: float


XD_PRESETS = {
    # x2d.yaml's ADAPTER_SCALE 0.05 read as the base scale
    "xd_intended": XDPreset(last_layers=4, scale=0.05, boost_factor=10.0),
    # what the code would do after renaming TRAINER.LWEIB to TRAINER.HeBA: ADAPTER_SCALE is dead, 0.025 is used
    "xd_literal_rename": XDPreset(last_layers=4, scale=0.025, boost_factor=10.0),
}
_PRESET_FIELDS = {"scale": 0.025, "boost_factor": 2.25, "text_layers": None, "visual_layers": None}


@dataclass(frozen=True)
class Settings:
    """The values a run actually uses: the config, or the XD preset on cross-dataset / DG protocols."""

    text_layers: tuple[int, ...]  # 0-based block indices with adapters
    visual_layers: tuple[int, ...]
    scale: float
    boost_factor: float


def effective_settings(config: HeBAConfig, protocol: str, n_text: int, n_visual: int) -> Settings:
    """Resolve layers (to 0-based indices) and scale for ``protocol`` on towers of ``n_text``/``n_visual`` blocks."""
    preset = XD_PRESETS.get(config.xd_preset) if protocol in XD_PROTOCOLS else None
    if preset is not None:
        text = tuple(range(max(n_text - preset.last_layers, 0), n_text))
        visual = tuple(range(max(n_visual - preset.last_layers, 0), n_visual))
        return Settings(text, visual, preset.scale, preset.boost_factor)
    return Settings(_layers(config.text_layers, n_text, "text_layers"),
                    _layers(config.visual_layers, n_visual, "visual_layers"), config.scale, config.boost_factor)


def _layers(layers: tuple[int, ...] | None, n_layers: int, name: str) -> tuple[int, ...]:
    if layers is None:
        return tuple(range(n_layers))
    if max(layers) > n_layers:
        raise ConfigError(f"method.{name}: {list(layers)} exceeds the {n_layers} blocks of the tower (1-based)")
    return tuple(sorted(layer - 1 for layer in layers))


@dataclass
class StepInfo:
    """What the last training step drew (for inspection and RNG-exact tests)."""

    class_ids: torch.Tensor  # original class index of each logit column
    template_ids: torch.Tensor  # template drawn per step class
    targets: torch.Tensor  # labels remapped to the step's columns
    scales: dict[str, list[float]]  # per-block scale used, per tower


class HeBA(Method):
    """Heterogeneous bottleneck adapters (module docstring)."""

    Config = HeBAConfig
    info = MethodInfo(
        name="heba", display="HeBA", paper=Paper("HeBA: heterogeneous bottleneck adapters", "arXiv", 2026, "2603.16653"),
        code=Code("Jahid12012021/VLM-HeBA", "60ecf23"), capabilities=Capabilities(trains_on="images"),
        factors={"heterogeneity": ("visual_adapter", "text_adapter")},
        precision=OfficialPrecision(
            "amp_fp16", "fp32",
            "configs/trainers/HeBA/base2new.yaml:41 (PREC amp: autocast + GradScaler); Dassl "
            "dassl/engine/trainer.py:446-475 (test() without autocast)",
            "official"))

    def __init__(self, clip: FrozenCLIP, classnames: Sequence[str], config: HeBAConfig,
                 context: MethodContext) -> None:
        super().__init__(clip, classnames, config, context)
        self.n_blocks = {"text": len(clip.text.transformer.resblocks),
                         "visual": len(clip.visual.transformer.resblocks)}
        self.settings = effective_settings(config, context.protocol, self.n_blocks["text"], self.n_blocks["visual"])
        self.fit_classnames = tuple(classnames)
        self.text_adapters = self._build_tower("text", clip.text.transformer.resblocks)
        self.visual_adapters = self._build_tower("visual", clip.visual.transformer.resblocks)
        self._descriptions = _read_cupl(config.cupl_file) if config.prompts == "cupl" else {}
        self._text_cache: torch.Tensor | None = None
        self.last_step: StepInfo | None = None
        self._build_prompts(classnames)

    # -- construction -------------------------------------------------------------------------------------------------
    def _build_tower(self, tower: str, resblocks: nn.ModuleList) -> nn.ModuleDict:
        """``{block index: {point: block}}``, created block by block, attention point first (official order)."""
        kind = self._block_kind(tower)
        layers = self.settings.text_layers if tower == "text" else self.settings.visual_layers
        adapters = nn.ModuleDict()
        for layer in layers:
            frozen = resblocks[layer]
            widths = {"attn_in": frozen.ln_1.normalized_shape[0], "mlp_hidden": frozen.mlp.c_fc.out_features}
            blocks = nn.ModuleDict()
            for point in ("attn_in", "mlp_hidden"):
                if point in self.config.points:
                    block = BottleneckBlock(widths[point], self.config.bottleneck_ratio, kind)
                    blocks[point] = init_bottleneck_(block, self.config.init)
            adapters[str(layer)] = blocks
        return adapters

    def _block_kind(self, tower: str) -> str:
        if tower == "visual":
            return "conv2d" if self.config.visual_adapter == "conv" else "linear"
        return self.config.text_adapter

    @classmethod
    def recipe_settings(cls, protocol: str, dataset: str, shots: int, config: Any) -> dict[str, Sourced]:
        """Official optimisation: base-to-novel ``base2new.yaml`` (+ Dassl defaults): SGD lr 0.0075,
        momentum 0.9, wd 5e-4, 30 epochs cosine (per epoch), no warmup, batch 16, test batch 128. Few-shot: the same
        (GUESS, no official config). Cross-dataset / DG: ``x2d.yaml``'s lr 0.0065, 10 epochs, batch 64 (both XD
        presets); with ``xd_preset: none`` the base-to-novel recipe."""
        b2n = "configs/trainers/HeBA/base2new.yaml"
        dassl = "Dassl dassl/config/defaults.py:153-156 (not overridden)"
        values = {"name": ("sgd", f"{b2n}:16"), "momentum": (0.9, dassl),
                  "weight_decay": (5e-4, dassl),
                  "scheduler": ("cosine", f"{b2n}:19-22"), "warmup_epochs": (0, f"{b2n}:19-22"),
                  "eval_batch_size": (128, f"{b2n}:5"), "lr": (0.0075, f"{b2n}:17"), "epochs": (30, f"{b2n}:18"),
                  "batch_size": (16, f"{b2n}:3")}
        if protocol in XD_PROTOCOLS and config.xd_preset != "none":
            unloadable = ("configs/trainers/HeBA/x2d.yaml:{} sets it, but the file's trainer block is TRAINER.LWEIB "
                          "(x2d.yaml:34) and cannot be loaded into HeBA's config")
            values.update(lr=(0.0065, unloadable.format(17)), epochs=(10, unloadable.format(18)),
                          batch_size=(64, unloadable.format(3)))
            return {k: (no_official(v, where) if "x2d" in where else official(v, where))
                    for k, (v, where) in values.items()}
        if protocol != "base2novel":
            return {k: no_official(v, f"no {protocol} config in the official repository; base-to-novel {where}")
                    for k, (v, where) in values.items()}
        return {k: official(v, where) for k, (v, where) in values.items()}

    @classmethod
    def check_run(cls, run: Any, config: HeBAConfig) -> None:
        """An XD preset sets layers, scale and boost factor itself: refuse explicit values that it would override."""
        if run.protocol not in XD_PROTOCOLS or config.xd_preset == "none":
            return
        changed = [name for name, default in _PRESET_FIELDS.items() if getattr(config, name) != default]
        if changed:
            raise ValueError(f"heba: xd_preset {config.xd_preset!r} sets {changed} on protocol {run.protocol!r}; "
                             "set method.xd_preset: none to choose them yourself")

    @classmethod
    def check_backbone(cls, shape: BackboneShape, protocol: str, config: HeBAConfig) -> None:
        """The adapted layers exist in both towers and the bottleneck ratio divides every adapted width (the
        attention input's and, with ``points`` holding it, the MLP hidden layer's)."""
        settings = effective_settings(config, protocol, shape.text.layers, shape.visual.layers)
        for tower, layers in (("text", settings.text_layers), ("visual", settings.visual_layers)):
            size = getattr(shape, tower)
            widths = {"attn_in": size.width, "mlp_hidden": size.mlp_width}
            for point in config.points if layers else ():
                bottleneck_width(widths[point], config.bottleneck_ratio,
                                 f"method.bottleneck_ratio (the {tower} tower's {point} width)")

    # -- prompts ------------------------------------------------------------------------------------------------------
    def class_prompts(self, classnames: Sequence[str]) -> list[list[str]]:
        """Prompt strings per class, padded to the longest list by repeating the first (heba.py L159-188)."""
        ctx = self.config.ctx_init
        lists = []
        for raw in classnames:
            name = raw.replace("_", " ")
            descriptions = self._descriptions.get(raw, self._descriptions.get(name, []))
            if descriptions:
                lists.append([f"{ctx} {name}, {d.replace('{}', name)}" for d in descriptions])
            else:
                lists.append([f"{ctx} {name}, {ctx} {name}."])
        n_temp = max(len(p) for p in lists)
        return [p + [p[0]] * (n_temp - len(p)) for p in lists]

    def _build_prompts(self, classnames: Sequence[str]) -> None:
        prompts = self.class_prompts(classnames)
        flat = [p for per_class in prompts for p in per_class]
        ids = self.clip.tokenize(flat).view(len(prompts), len(prompts[0]), -1)
        self.register_buffer("tk_prompts", ids, persistent=False)  # [n_cls, n_temp, context]

    def set_classnames(self, classnames: Sequence[str]) -> None:
        super().set_classnames(classnames)
        self._build_prompts(classnames)

    def invalidate(self) -> None:
        """Drop the cached eval text features (after training, loading or a class change)."""
        self._text_cache = None

    # -- adapted towers -----------------------------------------------------------------------------------------------
    @property
    def truncates_text(self) -> bool:
        """Whether the text context is truncated (exact only when no operation mixes a token with later ones)."""
        return self.config.truncate_text and self.config.text_adapter != "conv1d"

    @property
    def shares_text_prefix(self) -> bool:
        """Whether the shared prompt positions run once (exact only for the per-token ``linear`` text adapter)."""
        return self.config.share_text_prefix and self.truncates_text and self.config.text_adapter == "linear"

    def _encode_text_tapped(self, ids: torch.Tensor, scales: list[float]) -> torch.Tensor:
        """Adapted text features of ``ids`` with the per-block ``scales``, through the exact fast paths."""
        return self.clip.encode_text(ids, self.taps("text", scales), truncate=self.truncates_text,
                                     buckets=self.config.text_buckets, share_prefix=self.shares_text_prefix)

    def report(self) -> dict[str, Any]:
        """The settings the run actually used (record's ``method_report``): on cross-dataset / DG protocols an XD
        preset replaces the config's layers, scale and boost, which the config alone does not show."""
        preset = self.config.xd_preset if self.context.protocol in XD_PROTOCOLS else "none"
        return {"xd_preset": preset,
                "text_layers": [i + 1 for i in self.settings.text_layers],
                "visual_layers": [i + 1 for i in self.settings.visual_layers],
                "scale": self.settings.scale, "boost_factor": self.settings.boost_factor,
                "novel_scale": self.config.novel_scale}

    def current_scale(self) -> float:
        """Base scale of this forward: the novel scale only at evaluation on another class set (when configured)."""
        novel = self.config.novel_scale
        if novel is not None and not self.training and self.classnames != self.fit_classnames:
            return novel
        return self.settings.scale

    def draw_scales(self, tower: str) -> list[float]:
        """One ``torch.rand(1)`` per block of ``tower`` (always, for RNG parity); boosted only while training."""
        base, boosted = self.current_scale(), self.current_scale() * self.settings.boost_factor
        scales = []
        for _ in range(self.n_blocks[tower]):
            draw = float(torch.rand(1))
            scales.append(boosted if self.training and draw > self.config.slow_fast_ratio else base)
        return scales

    def taps(self, tower: str, scales: list[float]) -> Taps:
        """Taps running this tower's adapters with the per-block ``scales``."""
        taps = Taps()
        adapters = self.text_adapters if tower == "text" else self.visual_adapters
        for key, blocks in adapters.items():
            for point, block in blocks.items():
                taps.add(point, tower, int(key), partial(self._adapt, block, scales[int(key)]))
        return taps

    def _adapt(self, block: BottleneckBlock, scale: float, x: torch.Tensor, site: TapSite) -> torch.Tensor:
        """``x + s·block(x)`` (gsl-written); on the image tower the prefix (CLS) passes through when configured."""
        grid = site.grid_size if site.tower == "visual" else None
        branch = partial(block, grid_size=grid)
        if site.tower == "visual" and self.config.cls_passthrough:
            prefix, patches = x[:, :site.n_prefix], x[:, site.n_prefix:]
            adapted = patches + scaled_branch(branch, patches, scale, self.config.grad_scale_trick)
            return torch.cat([prefix, adapted], dim=1)
        return x + scaled_branch(branch, x, scale, self.config.grad_scale_trick)

    def encode_text(self, ids: torch.Tensor) -> torch.Tensor:
        """Adapted, un-normalised text features of token ids ``[N, context]`` (draws the text scales)."""
        return self._encode_text_tapped(ids, self.draw_scales("text"))

    def encode_image(self, images: torch.Tensor) -> torch.Tensor:
        """Adapted, un-normalised image features (draws the image scales)."""
        return self.clip.encode_image(images, self.taps("visual", self.draw_scales("visual")))

    def text_features(self) -> torch.Tensor:
        """Normalised class text features: per template normalised, averaged, renormalised (heba.py L329-352).

        Cached in eval mode (computed under ``no_grad``); recomputed with gradients in training mode."""
        if not self.training and self._text_cache is not None:
            return self._text_cache
        with torch.set_grad_enabled(self.training and torch.is_grad_enabled()):
            per_template = [normalize(self.encode_text(self.tk_prompts[:, t]))
                            for t in range(self.tk_prompts.shape[1])]
            features = normalize(torch.stack(per_template).mean(dim=0))
        if not self.training:
            self._text_cache = features
        return features

    # -- forward ------------------------------------------------------------------------------------------------------
    def forward(self, images: torch.Tensor) -> torch.Tensor:
        text = self.text_features()
        image = normalize(self.encode_image(images))
        return self.clip.logit_scale() * image @ text.t()

    def select_classes(self, labels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """The step's class set and remapped labels (heba.py L285-310); draws ``randperm`` when sampling."""
        n_cls, ratio = len(self.classnames), self.config.neg_sampling_ratio
        if ratio < 0 or n_cls <= labels.shape[0]:
            return torch.arange(n_cls, device=labels.device), labels
        positives, targets = torch.unique(labels, sorted=True, return_inverse=True)
        if ratio == 0:
            return positives, targets
        is_negative = torch.ones(n_cls, dtype=torch.bool, device=labels.device)
        is_negative[positives] = False
        negatives = is_negative.nonzero().flatten()  # ascending; flatten also covers the one-negative case
        n_neg = min(len(negatives), ratio * len(positives))
        order = torch.randperm(len(negatives))[:n_neg].to(labels.device)  # CPU generator, as the official code
        return torch.cat([positives, negatives[order]]), targets

    def training_step(self, images: torch.Tensor, labels: torch.Tensor) -> StepOutput:
        classes, targets = self.select_classes(labels)
        template_ids = torch.randint(0, self.tk_prompts.shape[1], (1, len(classes)))[0].to(classes.device)
        text_scales = self.draw_scales("text")  # text before image: the official RNG order
        text = self._encode_text_tapped(self.tk_prompts[classes, template_ids], text_scales)
        image_scales = self.draw_scales("visual")
        image = self.clip.encode_image(images, self.taps("visual", image_scales))
        logits = self.clip.logit_scale() * normalize(image) @ normalize(text).t()
        loss = F.cross_entropy(logits, targets, label_smoothing=self.config.label_smoothing)
        self.last_step = StepInfo(classes, template_ids, targets, {"text": text_scales, "visual": image_scales})
        return StepOutput(loss, {"loss_ce": loss.detach()}, logits)

    # -- checkpoints --------------------------------------------------------------------------------------------------
    def load_official_state_dict(self, state_dict: dict[str, torch.Tensor]) -> None:
        """Load an official ``adapter_learner`` state (prefix optional), strictly.

        ``{text|visual}_adapter.{i}.{att_conv|mlp_conv}.*`` (block i 1-based) becomes
        ``{text|visual}_adapters.{i-1}.{attn_in|mlp_hidden}.*``; the buffers in :data:`OFFICIAL_BUFFERS` are dropped
        by name. Anything else, a missing adapter or a shape mismatch raises.
        """
        mapped = {}
        for name, value in state_dict.items():
            key = name.removeprefix("adapter_learner.")
            if key.split(".")[0] in OFFICIAL_BUFFERS:
                continue
            match = _OFFICIAL_NAME.match(key)
            if match is None:
                raise ConfigError(f"official HeBA state dict: unexpected key {name!r}")
            tower, index, point, rest = match.groups()
            mapped[f"{tower}_adapters.{int(index) - 1}.{_OFFICIAL_POINT[point]}.{rest}"] = value
        self.load_state_dict(mapped, strict=True)
        self.invalidate()


def _read_cupl(path: str | None) -> dict[str, list[str]]:
    """A CuPL description file: JSON ``{classname: [descriptions]}`` (ConfigError naming the problem otherwise)."""
    file = Path(str(path))
    if not file.is_file():
        raise ConfigError(f"method.cupl_file: {path!r} does not exist")
    try:
        data = json.loads(file.read_text())
    except json.JSONDecodeError as err:
        raise ConfigError(f"method.cupl_file: {path} is not valid JSON: {err}") from None
    if not isinstance(data, dict) or not all(
            isinstance(v, list) and all(isinstance(d, str) for d in v) for v in data.values()):
        raise ConfigError(f"method.cupl_file: {path} must map each class name to a list of description strings")
    return data
