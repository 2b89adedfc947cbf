"""The method contract's declarations: what a method says about itself, readable without torch.

Every method class (``frozen_clip.method.Method`` subclass, one file under ``adapters/`` or ``baselines/``) sets

* ``Config``: a frozen dataclass whose fields are declared with :func:`option`, so every option carries its
  default, a display name, display names of its values and the source of its default;
* ``info``: a :class:`MethodInfo` (display name, paper, official code, capabilities, factor groups, recipe version);
* ``recipe(protocol, dataset, shots, config)``: the optimisation settings the official scripts use for that run.

Nothing else in the suite keeps lists of methods, names or captions: the runner, the analysis and the benchmarks
read them from here. A finished run stores :func:`card` of its method in the record, so the analysis can name
methods and options without importing the method (and torch).
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any, Literal, Mapping

#: where a value comes from: the official code (``file:line``), the paper (section), the suite's own choice (with the
#: reason), or nowhere (``no_official``: the official code and paper give no value; the reason the suite's was chosen)
SourceKind = Literal["official", "paper", "suite", "no_official"]
SOURCE_KIND_NAMES = {"official": "official code", "paper": "paper", "suite": "suite choice",
                     "no_official": "no official value"}
PROTOCOL_NAMES = ("base2novel", "fewshot", "cross_dataset", "domain_generalization")
#: protocols that score classes the method never saw in training
UNSEEN_CLASS_PROTOCOLS = ("base2novel", "cross_dataset", "domain_generalization")


_NO_FAST_PATH = object()


def option(default: Any, source: str, *, kind: SourceKind = "official", display: str | None = None,
           values: Mapping[Any, str] | None = None, value_notes: Mapping[Any, str] | None = None,
           fast_path_off: Any = _NO_FAST_PATH) -> Any:
    """A config field with its documentation: ``source`` says where the default comes from (an official
    ``file:line``, a paper section, or for ``kind="suite"`` the reason the suite chose it); ``display`` names the
    option in tables (default: the field name with spaces); ``values`` names option values (default: the value);
    ``value_notes`` are sentences a table caption must carry when a value appears in it; ``fast_path_off``, for an
    exact speed switch of the method, is the value that runs the official (slow) path instead, which the equivalence
    tests and the step benchmark compare against (:func:`fast_path_switches`).
    """
    if not source:
        raise ValueError("option(): every default needs its source")
    meta = {"source": source, "kind": kind, "display": display, "values": dict(values or {}),
            "value_notes": dict(value_notes or {})}
    if fast_path_off is not _NO_FAST_PATH:
        meta["fast_path_off"] = fast_path_off
    return field(default=default, metadata=meta)


@dataclass(frozen=True)
class Sourced:
    """One recipe value with where it comes from (``source``: an official ``file:line``, a paper section, or for
    ``kind="suite"`` / ``"no_official"`` the reason the suite chose it). ``Method.recipe_settings`` returns these, so
    the recipe cards (``python -m analysis.recipes``) can cite every value, and a value without a source fails the
    registry-wide tests."""

    value: Any
    source: str
    kind: SourceKind = "official"


def official(value: Any, source: str) -> Sourced:
    """A recipe value the official code sets, ``source`` its ``repository-relative file:line``."""
    return Sourced(value, source, "official")


def suite_choice(value: Any, reason: str) -> Sourced:
    """A recipe value the suite chose where the official code does something else, with the reason."""
    return Sourced(value, reason, "suite")


def no_official(value: Any, reason: str) -> Sourced:
    """A recipe value for a setting the official code and paper give no value for, with why this one."""
    return Sourced(value, reason, "no_official")


def recipe_values(settings: Mapping[str, Any]) -> dict[str, Any]:
    """The plain values of a recipe (``Sourced`` unwrapped)."""
    return {k: v.value if isinstance(v, Sourced) else v for k, v in settings.items()}


def unsourced(settings: Mapping[str, Any]) -> list[str]:
    """The keys of a recipe whose value carries no source (the registry-wide tests require none)."""
    return [k for k, v in settings.items() if not isinstance(v, Sourced) or not v.source.strip()]


def fast_path_switches(config_cls: type) -> dict[str, Any]:
    """The method's exact speed switches, each with the value that turns its fast path off (the official path)."""
    return {f.name: f.metadata["fast_path_off"] for f in dataclasses.fields(config_cls)
            if "fast_path_off" in f.metadata}


@dataclass(frozen=True)
class Paper:
    """The publication a method comes from."""

    title: str
    venue: str
    year: int
    arxiv: str = ""  # arXiv id, e.g. "2109.01134"


@dataclass(frozen=True)
class Code:
    """The official implementation the port reproduces."""

    repository: str  # "owner/name" on GitHub
    commit: str  # the commit the port follows


@dataclass(frozen=True)
class TowerShape:
    """One transformer tower of a backbone: its number of blocks, width and MLP hidden width."""

    layers: int
    width: int
    mlp_width: int


@dataclass(frozen=True)
class BackboneShape:
    """The sizes a method's options must fit, read from the backbone's model config without building it
    (:meth:`from_model_config`), so that a method can refuse a backbone before any run starts
    (``Method.check_backbone``: adapted layers it does not have, a bottleneck ratio that does not divide a width)."""

    text: TowerShape
    visual: TowerShape
    embed_dim: int

    @classmethod
    def from_model_config(cls, cfg: Mapping[str, Any] | None) -> "BackboneShape | None":
        """The shape of an open_clip model config (``embed_dim``, ``vision_cfg``, ``text_cfg``); None where it is
        not a transformer on both sides (ResNet image towers, a text tower from Hugging Face)."""
        try:
            towers = {}
            for name, key in (("text", "text_cfg"), ("visual", "vision_cfg")):
                tower = cfg[key]  # type: ignore[index]
                if "hf_model_name" in tower or "timm_model_name" in tower and tower["timm_model_name"]:
                    return None
                layers, width = tower["layers"], tower["width"]
                if not isinstance(layers, int) or not isinstance(width, int):
                    return None
                towers[name] = TowerShape(layers, width, int(width * float(tower.get("mlp_ratio", 4.0))))
            return cls(towers["text"], towers["visual"], int(cfg["embed_dim"]))  # type: ignore[index]
        except (KeyError, TypeError, ValueError):
            return None


@dataclass(frozen=True)
class Capabilities:
    """What the runner may ask of a method, declared instead of inferred.

    ``trains_on``: ``"features"`` when the training step reads images only through the frozen image encoder, so it
    can train on cached features of each augmented view (the method implements ``feature_training_step``);
    ``"images"`` when its image path has trainable parts or the step reads the images otherwise (CoCoOp's meta-net).
    Training-free methods on frozen features (zero-shot, the linear probe) declare ``"features"``.
    ``unseen_classes``: whether it can score classes absent from training (novel classes, other datasets).
    ``protocols``: the protocols it supports (default: all four, minus the unseen-class ones when it cannot).
    """

    trains_on: Literal["features", "images"] = "images"
    unseen_classes: bool = True
    protocols: tuple[str, ...] = PROTOCOL_NAMES

    def __post_init__(self) -> None:
        unknown = [p for p in self.protocols if p not in PROTOCOL_NAMES]
        if unknown:
            raise ValueError(f"Capabilities: unknown protocols {unknown}; known: {', '.join(PROTOCOL_NAMES)}")
        if not self.unseen_classes and any(p in UNSEEN_CLASS_PROTOCOLS for p in self.protocols):
            raise ValueError("Capabilities: a method that cannot score unseen classes supports only 'fewshot'")

    @property
    def feature_training(self) -> bool:
        """Whether the training step can run on cached image features."""
        return self.trains_on == "features"


#: numeric precisions of a run: ``fp32``; ``amp_fp16`` / ``amp_bf16`` (fp32 weights, autocast on CUDA, a GradScaler for
#: fp16); ``fp16`` (pure: the frozen model and the parameters created in its dtype are fp16, no autocast, no
#: GradScaler, as Dassl's ``PREC "fp16"``)
PRECISIONS = ("fp32", "amp_fp16", "amp_bf16", "fp16")


@dataclass(frozen=True)
class OfficialPrecision:
    """How the official code computes on a GPU: ``train`` and ``eval`` are :data:`PRECISIONS` (HeBA and MMA train
    under amp and evaluate in fp32, Dassl's ``test()`` having no autocast); ``source`` says where (``file:line``) or,
    with ``kind="suite"``, why the suite chose it. ``precision: auto`` runs this on CUDA and fp32 on a CPU."""

    train: str = "amp_fp16"
    eval: str = "amp_fp16"
    source: str = "the suite's default: fp32 weights with fp16 autocast and a GradScaler"
    kind: SourceKind = "suite"

    def __post_init__(self) -> None:
        if self.train not in PRECISIONS or self.eval not in PRECISIONS:
            raise ValueError(f"precisions must be among {PRECISIONS}, got train={self.train!r} eval={self.eval!r}")

    def describe(self) -> str:
        return describe_precision(self.train, self.eval)


def describe_precision(train: str, eval: str) -> str:
    """``fp16``, or ``amp_fp16, evaluated in fp32`` when training and evaluation differ."""
    return train if train == eval else f"{train}, evaluated in {eval}"


@dataclass(frozen=True)
class MethodInfo:
    """A method's metadata: how tables name it, where it comes from, what it can do.

    ``factors`` names groups of options a paper ablates together (HeBA's ``heterogeneity`` = visual x text adapter
    kinds). ``recipe_version`` is part of every run id of the method: bump it when a default changes, so that runs
    made under the old default are never mistaken for runs of the new one (DESIGN.md, "Run ids").
    ``paper_names`` names the method in the papers' reported numbers (``analysis/reference_results.csv``), each name
    with the options that identify that variant (Tip-Adapter-F = ``tip_adapter`` with ``finetune: true``); a name
    whose options are not empty is also how tables name that variant. Empty: the display name, no options.
    """

    name: str  # registry name, e.g. "heba"
    display: str  # e.g. "HeBA"
    paper: Paper | None
    code: Code | None
    capabilities: Capabilities = Capabilities()
    factors: Mapping[str, tuple[str, ...]] = field(default_factory=dict)
    recipe_version: int = 1
    paper_names: Mapping[str, Mapping[str, Any]] = field(default_factory=dict)
    caption_note: str = ""  # a sentence every table holding this method's runs must carry
    #: settings (dotted keys as in a grid: ``method.layers``, ``optim.grad_clip``) that fit the built-in world's tiny
    #: CLIP (3 text / 4 image blocks) where a default assumes ViT-B/16 (12 blocks, its loss scales); the
    #: registry-wide tests run the method on that model with these, as ``grids/quickstart.yaml`` does
    tiny_world_overrides: Mapping[str, Any] = field(default_factory=dict)
    #: the official code's precision on a GPU (``precision: auto`` runs it on CUDA)
    precision: OfficialPrecision = OfficialPrecision()

    def names_in_papers(self) -> dict[str, dict[str, Any]]:
        """``paper_names``, or the display name with no options."""
        return {k: dict(v) for k, v in self.paper_names.items()} or {self.display: {}}


def option_meta(config_cls: type, name: str) -> dict[str, Any]:
    """The :func:`option` metadata of field ``name`` of ``config_cls`` ({} for a plain field)."""
    for f in dataclasses.fields(config_cls):
        if f.name == name:
            return dict(f.metadata)
    raise KeyError(f"{config_cls.__name__} has no option {name!r}")


def option_display(config_cls: type, name: str) -> str:
    """How tables name option ``name`` (``bottleneck_ratio`` -> ``bottleneck ratio``)."""
    return option_meta(config_cls, name).get("display") or name.replace("_", " ")


def value_display(config_cls: type, name: str, value: Any) -> str:
    """How tables name ``value`` of option ``name`` (``kaiming_all`` -> ``Kaiming (all)``; unnamed values as
    written, lists as ``[5,6]``)."""
    named = option_meta(config_cls, name).get("values") or {}
    for known, text in named.items():
        if _json_key(known) == _json_key(value):
            return text
    if isinstance(value, (list, tuple)):
        return "[" + ",".join(str(v) for v in value) + "]"
    return str(value)


def defaults(config_cls: type) -> dict[str, Any]:
    """Every option's default (``default_factory`` called)."""
    out = {}
    for f in dataclasses.fields(config_cls):
        if f.default is not dataclasses.MISSING:
            out[f.name] = f.default
        elif f.default_factory is not dataclasses.MISSING:  # type: ignore[misc]
            out[f.name] = f.default_factory()  # type: ignore[misc]
    return out


def undocumented_options(config_cls: type) -> list[str]:
    """Fields declared without a source (the registry-wide tests require none)."""
    return [f.name for f in dataclasses.fields(config_cls) if not f.metadata.get("source")]


def card(method_cls: type) -> dict[str, Any]:
    """A JSON-ready description of a method, stored in every record: display names of the method, its options and
    their values, each option's default and its source, its factor groups, paper and code, and the recipe version its
    runs were made under (the analysis reads the defaults to tell an ablation's default row from its levels)."""
    info: MethodInfo = method_cls.info
    config_cls = method_cls.Config
    options = {}
    exact = getattr(config_cls, "UNHASHED_FIELDS", ())
    default_values = defaults(config_cls)
    for f in dataclasses.fields(config_cls):
        meta = f.metadata
        options[f.name] = {"display": option_display(config_cls, f.name), "exact": f.name in exact,
                           "default": _json_value(default_values.get(f.name)),
                           "values": {_json_key(v): d for v, d in (meta.get("values") or {}).items()},
                           "value_notes": {_json_key(v): d for v, d in (meta.get("value_notes") or {}).items()},
                           "source": meta.get("source", ""), "kind": meta.get("kind", "")}
    return {"name": info.name, "display": info.display, "recipe_version": info.recipe_version,
            "precision": dataclasses.asdict(info.precision),
            "paper_names": info.names_in_papers(), "caption_note": info.caption_note,
            "capabilities": dataclasses.asdict(info.capabilities),
            "paper": dataclasses.asdict(info.paper) if info.paper else None,
            "code": dataclasses.asdict(info.code) if info.code else None,
            "factors": {k: list(v) for k, v in info.factors.items()}, "options": options}


def _json_value(value: Any) -> Any:
    """A default as JSON holds it (tuples as lists, nested too), so a card compares equal to a record's config."""
    if isinstance(value, (list, tuple)):
        return [_json_value(v) for v in value]
    return value


def _json_key(value: Any) -> str:
    """Option values as JSON object keys (``True`` -> ``"true"``, ``4`` -> ``"4"``, tuples as lists)."""
    import json
    if isinstance(value, str):
        return value
    return json.dumps(list(value) if isinstance(value, tuple) else value)


__all__ = [
    "option", "Sourced", "official", "suite_choice", "no_official", "recipe_values", "unsourced",
    "SOURCE_KIND_NAMES", "PRECISIONS", "OfficialPrecision", "describe_precision", "Paper", "Code", "TowerShape", "BackboneShape",
    "Capabilities", "MethodInfo", "option_meta", "option_display", "value_display", "defaults",
    "fast_path_switches", "undocumented_options", "card", "PROTOCOL_NAMES", "UNSEEN_CLASS_PROTOCOLS"]
