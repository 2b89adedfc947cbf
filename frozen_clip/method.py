"""The contract between the runner and a method.

A method is an ``nn.Module`` built from the frozen backbone, the class names of the split it is fitted or evaluated
on, its frozen config dataclass and a :class:`MethodContext`. It provides:

* its trainable state: every parameter registered on the method module itself (the backbone is held outside the
  module tree, so ``method.state_dict()`` is exactly the method's own state, saved and loaded strictly);
* ``forward(images) -> logits`` for evaluation on the current class names;
* ``training_step(images, labels) -> StepOutput`` (loss plus auxiliary terms reported separately);
* ``set_classnames(names)``: rebuild the class-dependent state (e.g. text features) to evaluate other classes;
* optionally ``prepare_fit(fit_data)``: work done before the gradient loop (closed-form fits, caches);
* ported methods: ``load_official_state_dict(sd)`` mapping official parameter names to the suite's.

Methods whose image path is entirely frozen (zero-shot, linear probe, CLIP-Adapter, Tip-Adapter) subclass
:class:`FeatureMethod`: they work on cached image features through ``logits_from_features``.

What a method declares about itself (``Config`` fields built with :func:`~frozen_clip.contract.option`, ``info``, a
:class:`~frozen_clip.contract.MethodInfo`) lives in :mod:`frozen_clip.contract`, which imports no torch;
:func:`check_method_class` verifies a registered class against it. ``docs/adding_a_method.md`` walks through a
complete method file.
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from typing import Any, Callable, ClassVar, Sequence

import torch
from torch import nn

from frozen_clip.backbone import FrozenCLIP
from frozen_clip.contract import BackboneShape, MethodInfo, Sourced, recipe_values, undocumented_options


@dataclass(frozen=True)
class MethodContext:
    """What a method may know about the run besides its own config (never the test data)."""

    dataset: str
    template: str  # the dataset's CoOp template, e.g. "a photo of a {}, a type of pet."
    protocol: str
    shots: int
    seed: int
    epochs: int  # gradient epochs the runner will run (0 for training-free methods)


@dataclass
class StepOutput:
    """A training step's loss and its named parts (``loss_ce``, ``loss_rec_visual``, ...), all scalars."""

    loss: torch.Tensor
    aux: dict[str, torch.Tensor] = field(default_factory=dict)
    logits: torch.Tensor | None = None


@dataclass
class FitData:
    """Access to the few-shot training data for ``prepare_fit`` (features are computed and cached by the runner).

    ``features(split)`` returns ``(features [N, E], labels [N])`` of ``split`` ("train" or "val"; "test" only for a
    method whose config :meth:`Method.selects_on_test`, "val_full", the dataset's whole val split, only for one that
    :meth:`Method.reads_full_val`) under the test transform; ``augmented_features(split, view,
    rrc_scale)`` those of the ``view``-th augmented pass of "train" or "val".
    """

    classnames: tuple[str, ...]
    n_train: int
    n_val: int
    features: Callable[[str], tuple[torch.Tensor, torch.Tensor]]
    augmented_features: Callable[[str, int, tuple[float, float]], tuple[torch.Tensor, torch.Tensor]] | None = None


class Method(nn.Module):
    """Base class of every method. Subclasses set ``Config`` and implement the abstract hooks."""

    Config: ClassVar[type]
    #: display name, paper, official code, capabilities, factor groups, recipe version (frozen_clip/contract.py)
    info: ClassVar[MethodInfo]
    #: True when no trainable parameter sits on the image path, so image features can be cached per split.
    frozen_image_path: ClassVar[bool] = False

    def __init__(self, clip: FrozenCLIP, classnames: Sequence[str], config: Any, context: MethodContext) -> None:
        super().__init__()
        object.__setattr__(self, "clip", clip)  # held outside the module tree: not saved, never trained
        self.config = config
        self.context = context
        self.classnames: tuple[str, ...] = tuple(classnames)

    # -- trainable state ---------------------------------------------------------------------------------------------
    def trainable_parameters(self) -> dict[str, nn.Parameter]:
        """The parameters the optimiser updates (default: every parameter of the method module)."""
        return {name: p for name, p in self.named_parameters() if p.requires_grad}

    def num_trainable(self) -> int:
        """Number of trainable scalars."""
        return sum(p.numel() for p in self.trainable_parameters().values())

    def train(self, mode: bool = True) -> "Method":
        """Switch mode; any cached eval-time state is dropped because the weights may change."""
        self.invalidate()
        return super().train(mode)

    def invalidate(self) -> None:
        """Drop caches that depend on trainable weights (called on every mode switch and after loading)."""

    @classmethod
    def recipe_settings(cls, protocol: str, dataset: str, shots: int, config: Any) -> dict[str, Sourced]:
        """The official optimisation for this run (``OptimConfig`` fields: optimiser, lr, schedule, epochs, batch),
        each value with its source (:func:`~frozen_clip.contract.official`, ``suite_choice``, ``no_official``), for
        the recipe cards; overridable by ``optim.*``. Default: nothing beyond ``OptimConfig``'s defaults."""
        return {}

    @classmethod
    def recipe(cls, protocol: str, dataset: str, shots: int, config: Any) -> dict[str, Any]:
        """:meth:`recipe_settings` as plain values (what the runner builds the ``OptimConfig`` from)."""
        return recipe_values(cls.recipe_settings(protocol, dataset, shots, config))

    @classmethod
    def selects_on_test(cls, config: Any) -> bool:
        """Whether ``prepare_fit`` reads the test split to select something: an oracle that some official code
        reports numbers with (Tip-Adapter-F's best epoch on test, the linear probe's C on ImageNet's test images),
        offered as a named option, never a default. The runner hands the test features to ``prepare_fit`` only then,
        and the record says so (``selected_on_test``). Default: never."""
        return False

    @classmethod
    def reads_full_val(cls, config: Any) -> bool:
        """Whether ``prepare_fit`` reads the fit dataset's whole val split (``FitData.features("val_full")``), not
        only the protocol's few-shot val (Tip-Adapter's ``search_data: full_val``, as its official search). Default:
        never."""
        return False

    @classmethod
    def check_run(cls, run: Any, config: Any) -> None:
        """Raise ``ValueError`` for a combination of run and options the method cannot do (beyond the protocols its
        capabilities declare, which the runner checks itself); default: every combination is possible."""

    @classmethod
    def protocol_settings(cls, config: Any, protocol: str) -> dict[str, Any]:
        """The values that options left at null take on ``protocol`` (e.g. CoOp's context: 4 tokens from "a photo
        of a" on base-to-novel, 16 random ones on few-shot), for ``--print-config`` and the records; default:
        none."""
        return {}

    @classmethod
    def check_backbone(cls, shape: BackboneShape, protocol: str, config: Any) -> None:
        """Raise :class:`~frozen_clip.errors.ConfigError` when the options cannot fit a backbone of ``shape`` (adapted
        layers it does not have, a width a bottleneck ratio does not divide). Called when a config is resolved, so a
        grid fails before its first run, not after others ran; the same checks run again when the method is built.
        Default: every backbone fits."""

    # -- hooks --------------------------------------------------------------------------------------------------------
    def set_classnames(self, classnames: Sequence[str]) -> None:
        """Rebuild class-dependent state for ``classnames`` (evaluation on novel classes or another dataset)."""
        self.classnames = tuple(classnames)
        self.invalidate()

    def prompt_templates(self) -> tuple[str, ...] | None:
        """The hand-written prompt template(s) the method scores classes with now (stored with each evaluated split
        in the record); None for a method whose prompts are learned (CoOp's context) or not templates."""
        return None

    def evaluate_on(self, dataset: str, template: str, classnames: Sequence[str]) -> None:
        """Score ``classnames`` of ``dataset`` from now on, prompting with that dataset's ``template``: a
        cross-dataset or DG target is evaluated with its own template, as the official eval-only runs on a target's
        config do (novel classes of the training dataset keep its template)."""
        if dataset != self.context.dataset or template != self.context.template:
            self.context = replace(self.context, dataset=dataset, template=template)
            self.set_classnames(classnames)
        elif tuple(classnames) != tuple(self.classnames):
            self.set_classnames(classnames)

    def prepare_fit(self, data: FitData) -> None:
        """Called once before the gradient loop (closed-form fits, caches); default: nothing."""

    def report(self) -> dict[str, Any]:
        """What the method decided during fit (e.g. a searched hyper-parameter); stored as the record's
        ``method_report``. Must be JSON-serialisable; default: nothing."""
        return {}

    def forward(self, images: torch.Tensor) -> torch.Tensor:  # pragma: no cover - abstract
        raise NotImplementedError

    def training_step(self, images: torch.Tensor, labels: torch.Tensor) -> StepOutput:  # pragma: no cover
        raise NotImplementedError(f"{type(self).__name__} has no gradient training step")

    def load_official_state_dict(self, state_dict: dict[str, torch.Tensor]) -> None:  # pragma: no cover
        raise NotImplementedError(f"{type(self).__name__} has no official checkpoint mapping")

    # -- helpers --------------------------------------------------------------------------------------------------------
    def prompts(self, template: str, classnames: Sequence[str] | None = None) -> list[str]:
        """``template`` filled with each class name, ``_`` replaced by a space (as every official method does)."""
        names = self.classnames if classnames is None else classnames
        return [template.format(name.replace("_", " ")) for name in names]


class FeatureMethod(Method):
    """A method acting on frozen image features: ``forward(images) = logits_from_features(encode_image(images))``."""

    frozen_image_path: ClassVar[bool] = True

    def logits_from_features(self, features: torch.Tensor) -> torch.Tensor:  # pragma: no cover - abstract
        raise NotImplementedError

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        with torch.no_grad():
            features = self.clip.encode_image(images)
        return self.logits_from_features(features)

    def training_step(self, images: torch.Tensor, labels: torch.Tensor) -> StepOutput:
        with torch.no_grad():
            features = self.clip.encode_image(images)
        return self.feature_training_step(features, labels)

    def feature_training_step(self, features: torch.Tensor, labels: torch.Tensor) -> StepOutput:
        """A training step on (augmented) image features: CE on ``logits_from_features`` by default."""
        logits = self.logits_from_features(features)
        loss = nn.functional.cross_entropy(logits, labels)
        return StepOutput(loss, {"loss_ce": loss.detach()}, logits)


def check_method_class(name: str, cls: type) -> None:
    """Raise ``TypeError`` naming what a registered method class lacks: a ``Method`` subclass with a frozen
    dataclass ``Config`` whose every option has a documented source, and an ``info`` whose name is ``name``; a method
    declaring ``trains_on="features"`` must implement ``feature_training_step``."""
    import dataclasses
    where = f"method {name!r} ({cls.__module__}.{cls.__qualname__})"
    if not (isinstance(cls, type) and issubclass(cls, Method)):
        raise TypeError(f"{where}: must be a subclass of frozen_clip.method.Method")
    config = getattr(cls, "Config", None)
    if config is None or not dataclasses.is_dataclass(config) or not config.__dataclass_params__.frozen:
        raise TypeError(f"{where}: Config must be a frozen dataclass")
    undocumented = undocumented_options(config)
    if undocumented:
        raise TypeError(f"{where}: options {undocumented} have no source; declare them with "
                        "frozen_clip.contract.option(default, source)")
    info = cls.__dict__.get("info")
    if not isinstance(info, MethodInfo):
        raise TypeError(f"{where}: needs its own `info = MethodInfo(...)` (frozen_clip/contract.py)")
    if info.name != name:
        raise TypeError(f"{where}: info.name is {info.name!r}, registered as {name!r}")
    if info.capabilities.feature_training and getattr(cls, "feature_training_step", None) is None:
        raise TypeError(f"{where}: declares trains_on='features' but has no feature_training_step")


def normalize(x: torch.Tensor) -> torch.Tensor:
    """L2-normalise the last dimension (``x / x.norm(dim=-1, keepdim=True)`` as the official code writes it)."""
    return x / x.norm(dim=-1, keepdim=True)
