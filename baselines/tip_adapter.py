"""Tip-Adapter and Tip-Adapter-F (``gaopengcuhk/Tip-Adapter@d0e2d6f:{main.py, utils.py, configs/*.yaml}``).

**Cache model.** The few-shot train set is passed ``augment_epoch = 10`` times through the frozen image encoder
with ``RandomResizedCrop(scale=(0.5, 1), bicubic)`` + flip; the raw features of the passes are averaged, then
L2-normalised: these are the keys K ``[N, E]``. The values V ``[N, C]`` are the one-hot labels. For a normalised
feature f, with W the normalised class text features (dataset template; the 7-template ensemble on ImageNet)::

    tip(f) = 100 f W^T + alpha * exp(-(beta - beta f K^T)) V

(``alpha`` weights the cache logits, ``beta`` sets its sharpness; gaopengcuhk/Tip-Adapter#4 notes that the paper
swaps the names). The augmented passes come from the runner (``FitData.augmented_features``, view ``v`` of the
cache = the ``v``-th augmented pass, cached per view index), so the view count is part of the method config.

**Tip-Adapter-F** (``finetune: true``). The keys become a trainable ``Linear(E, N, bias=False)`` initialised with K,
trained with AdamW (lr 0.001, eps 1e-4, torch's default weight decay 0.01), ``CosineAnnealingLR`` stepped per
iteration over ``train_epoch x ceil(N / 256)`` steps, batch 256 shuffled, ``drop_last=False``, CE on ``tip`` with
the initial alpha/beta. Each epoch trains on a fresh augmented pass of the train set (the runner's view
``augment_epoch + epoch``, independent of the cache views, as the official loader draws new crops every epoch).
This loop runs inside :meth:`prepare_fit` on those features, because the runner's gradient loop feeds images of
its own train transform (RRC scale (0.08, 1), ``drop_last`` when the set exceeds a batch) and not Tip-Adapter's;
the recipe therefore sets ``optim.epochs = 0`` and the fine-tuning settings live in this config.

**Hyper-parameter search** (``utils.search_hp``): ``beta_i = 0.1 + i (s0 - 0.1) / 200``, ``alpha_j = 0.1 + j
(s1 - 0.1) / 20``, beta outer loop, alpha inner, the first strict maximum of accuracy wins (starting from accuracy 0
and (0, 0)). **By default the suite searches on the ``min(k, 4)``-shot validation split** that the few-shot protocol
gives every method; the official ``main.py:47`` searches the dataset's whole val split (``search_data: full_val``,
which reads it: more labelled images than the protocol's shots). The official code also selects on test:
``main.py`` keeps Tip-Adapter-F's best-on-*test* epoch and prints ``max(best test acc, searched acc)``
(gaopengcuhk/Tip-Adapter#11), and ``main_imagenet.py`` runs the alpha/beta search itself on the *test* features.
By default Tip-Adapter-F keeps the last epoch (``epoch_selection: last``) or the best epoch on val (``val``), and
nothing is selected on test. Where the fit split has no validation images (ImageNet in the CoOp protocol, unless the
split manifests provide one) no search runs and ``init_alpha``/``init_beta`` are used (``search_outcome`` says
which). The official choices are named options that select on test (the record's ``selected_on_test`` is then
true): ``epoch_selection: best_on_test`` keeps the best epoch on test and, after the val search, the alpha/beta of
the two (initial, searched) that score higher on test, which is ``main.py``'s reported ``max``;
``search_without_val: on_test`` searches alpha/beta on the test features where there is no val split, as
``main_imagenet.py`` does.
Fast path (``batched_search``, exact, not hashed): the logits of all alphas of one beta are formed in one batch
(:func:`search_hp`; the official double loop is :func:`search_hp_loop`, same result, ~5x slower).

Per-dataset values (``init_alpha``, ``search_scale``, ``train_epoch``) come from the official configs; datasets
without an official config (the generated world, other datasets) get the ImageNet/OxfordPets values.

Deviations (named options): ``fix_key_aliasing`` (default true) clones the keys before making them trainable. The
official ``adapter.weight = nn.Parameter(cache_keys.t())`` shares storage with ``cache_keys``, so every AdamW step
also rewrites the keys in place; the official pipeline never reads the keys again after fine-tuning starts
(the training-free Tip-Adapter runs first), so Tip-Adapter-F's numbers are the same either way, but with aliasing the
method's stored ``cache_keys`` buffer ends up equal to the fine-tuned weight. ``false`` reproduces that aliasing.
The suite computes in fp32 (official: fp16 features and one-hot values). The cache values have ``len(classnames)``
columns (official ``F.one_hot``: max label + 1; the same whenever the last class has a training image).
Tip-Adapter cannot score classes absent from its cache: it runs under the ``fewshot`` protocol only.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, replace
from typing import Any, ClassVar, Literal, Sequence

import torch
from torch import nn
from torch.nn import functional as F

from baselines.templates import IMAGENET_TEMPLATES_SELECT
from baselines.text_classifier import class_text_features
from frozen_clip.backbone import FrozenCLIP
from frozen_clip.contract import Capabilities, Code, MethodInfo, OfficialPrecision, Paper, Sourced, official, option
from frozen_clip.method import FeatureMethod, FitData, MethodContext, StepOutput, normalize
from frozen_clip.seeding import derive_seed


@dataclass(frozen=True)
class DatasetHParams:
    """One row of the official per-dataset configs (``configs/<dataset>.yaml``)."""

    init_alpha: float
    search_scale: tuple[float, float]  # [s0 (beta), s1 (alpha)]
    train_epoch: int


#: ``configs/*.yaml`` @ d0e2d6f (``init_beta = 1``, ``search_step = [200, 20]``, ``lr 0.001`` everywhere).
OFFICIAL_HPARAMS: dict[str, DatasetHParams] = {
    "imagenet": DatasetHParams(1.17, (7.0, 3.0), 20),
    "caltech101": DatasetHParams(3.0, (12.0, 5.0), 20),
    "dtd": DatasetHParams(2.0, (13.0, 13.0), 20),
    "eurosat": DatasetHParams(2.0, (12.0, 10.0), 100),
    "fgvc_aircraft": DatasetHParams(5.0, (30.0, 30.0), 20),
    "food101": DatasetHParams(1.17, (10.0, 10.0), 20),
    "oxford_flowers": DatasetHParams(10.0, (50.0, 50.0), 20),
    "oxford_pets": DatasetHParams(1.17, (7.0, 3.0), 20),
    "stanford_cars": DatasetHParams(3.0, (20.0, 10.0), 20),
    "sun397": DatasetHParams(1.17, (12.0, 10.0), 20),
    "ucf101": DatasetHParams(3.0, (7.0, 3.0), 20),
}
DEFAULT_HPARAMS = OFFICIAL_HPARAMS["imagenet"]  # = OxfordPets; used for datasets without an official config


@dataclass(frozen=True)
class TipAdapterConfig:
    """Tip-Adapter(-F) options. ``None`` means the official per-dataset value (:data:`OFFICIAL_HPARAMS`)."""

    finetune: bool = option(False, "Tip-Adapter-F: train the cache keys")
    augment_epoch: int = option(10, "augmented passes averaged into the keys (configs: augment_epoch)")
    rrc_scale: tuple[float, float] = option(
        (0.5, 1.0), "RandomResizedCrop scale of the cache/training passes (main.py)")
    init_beta: float = option(1.0, "configs: init_beta (all datasets)")
    init_alpha: float | None = option(None, "configs: init_alpha")
    search_hp: bool = option(True, "configs: search_hp (on the split search_data names)")
    search_scale: tuple[float, float] | None = option(None, "configs: search_scale [beta, alpha]")
    search_step: tuple[int, int] = option((200, 20), "configs: search_step [beta, alpha]")
    train_epoch: int | None = option(None, "configs: train_epoch (Tip-Adapter-F)")
    lr: float = option(0.001, "configs: lr (AdamW)")
    eps: float = option(1e-4, "main.py: AdamW(eps=1e-4)")
    weight_decay: float = option(0.01, "main.py passes none: torch.optim.AdamW's default")
    batch_size: int = option(256, "main.py: train_loader_F batch size")
    epoch_selection: Literal["last", "val", "best_on_test"] = option(
        "last", "test-clean: the last epoch (official main.py:121-127,141: the best epoch on test, then the larger of "
                "its test accuracy and the searched one: best_on_test)", kind="suite", display="epoch selection",
        values={"last": "last epoch", "val": "best on val", "best_on_test": "best on test (official)"},
        value_notes={"best_on_test": "Tip-Adapter-F's epoch (and whether the searched alpha/beta replace the "
                                     "initial ones) is chosen on the test set, as the official code reports."})
    search_data: Literal["fewshot_val", "full_val"] = option(
        "fewshot_val", "the min(k, 4)-shot val split every method gets (official main.py:47 searches the dataset's "
                       "whole val split: full_val)", kind="suite", display="search data",
        values={"fewshot_val": "few-shot val", "full_val": "full val (official)"},
        value_notes={"full_val": "Tip-Adapter's alpha/beta are searched on the dataset's whole validation split, as "
                                 "the official code does (more labelled images than the few-shot protocol gives)."})
    search_without_val: Literal["none", "on_test"] = option(
        "none", "test-clean: no search without a val split (official main_imagenet.py:43,110 searches on test: "
                "on_test)", kind="suite", display="search without val",
        values={"none": "none (initial alpha/beta)", "on_test": "on test (official, ImageNet)"},
        value_notes={"on_test": "Tip-Adapter's alpha/beta are searched on the test set where there is no "
                                "validation split (ImageNet), as the official code does."})
    fix_key_aliasing: bool = option(True, "clone the keys before training them (false: official shared storage)")
    template_list: tuple[str, ...] = option(
        (), "explicit templates; default: dataset template, ImageNet the 7-ensemble")
    clip_logit_scale: float = option(
        100.0, "the literal 100. of the official logits (= exp(logit_scale) of OpenAI CLIP)")
    batched_search: bool = option(
        True, "all alphas of a beta in one batch (exact; false: the official double loop)", kind="suite",
        fast_path_off=False)

    UNHASHED_FIELDS: ClassVar[tuple[str, ...]] = ("batched_search",)

    def validate(self) -> None:
        if self.augment_epoch < 1:
            raise ValueError("augment_epoch must be >= 1")
        if len(self.rrc_scale) != 2 or not 0 < self.rrc_scale[0] <= self.rrc_scale[1] <= 1:
            raise ValueError(f"rrc_scale must be (low, high) with 0 < low <= high <= 1, got {self.rrc_scale}")
        if self.search_scale is not None and len(self.search_scale) != 2:
            raise ValueError("search_scale must be [beta_scale, alpha_scale]")
        if len(self.search_step) != 2 or min(self.search_step) < 1:
            raise ValueError("search_step must be two positive integers [beta_steps, alpha_steps]")
        if self.train_epoch is not None and self.train_epoch < 1:
            raise ValueError("train_epoch must be >= 1")
        if self.batch_size < 1 or self.lr <= 0:
            raise ValueError("batch_size and lr must be positive")

    def resolved(self, dataset: str) -> "TipAdapterConfig":
        """This config with every ``None`` replaced by the official value for ``dataset``."""
        row = OFFICIAL_HPARAMS.get(dataset, DEFAULT_HPARAMS)
        return replace(self,
                       init_alpha=row.init_alpha if self.init_alpha is None else self.init_alpha,
                       search_scale=row.search_scale if self.search_scale is None else self.search_scale,
                       train_epoch=row.train_epoch if self.train_epoch is None else self.train_epoch)


def build_cache(features_per_view: torch.Tensor, labels: torch.Tensor,
                n_classes: int) -> tuple[torch.Tensor, torch.Tensor]:
    """``build_cache_model``: keys = normalise(mean over views of the raw features) ``[N, E]``; values = one-hot
    labels ``[N, C]``."""
    keys = features_per_view.mean(dim=0)
    keys = keys / keys.norm(dim=-1, keepdim=True)
    return keys, F.one_hot(labels, n_classes).to(keys.dtype)


def tip_logits(features: torch.Tensor, affinity: torch.Tensor, text: torch.Tensor, values: torch.Tensor,
               alpha: float, beta: float, scale: float = 100.0) -> torch.Tensor:
    """Official arithmetic, operation for operation: ``100. * f @ W + ((-1) * (beta - beta * A)).exp() @ V * alpha``.

    ``features`` are normalised ``[B, E]``, ``affinity`` = f K^T ``[B, N]``, ``text`` the normalised class features
    ``[C, E]``.
    """
    cache_logits = ((-1) * (beta - beta * affinity)).exp() @ values
    clip_logits = scale * features @ text.t()
    return clip_logits + cache_logits * alpha


def cls_acc(logits: torch.Tensor, labels: torch.Tensor) -> float:
    """``utils.cls_acc``: top-1 accuracy in percent, through ``topk`` as the official code (same tie breaking)."""
    pred = logits.topk(1, 1, True, True)[1].t()
    correct = pred.eq(labels.view(1, -1).expand_as(pred))
    return 100 * float(correct[:1].reshape(-1).float().sum(0, keepdim=True).item()) / labels.shape[0]


def search_hp(affinity: torch.Tensor, features: torch.Tensor, text: torch.Tensor, values: torch.Tensor,
              labels: torch.Tensor, search_scale: tuple[float, float], search_step: tuple[int, int],
              scale: float = 100.0) -> tuple[float, float, float]:
    """``utils.search_hp``: (best beta, best alpha, best accuracy) on the given (validation) features.

    The cache logits do not depend on alpha, so they are computed once per beta, and the logits of all alphas are
    formed in one batch: the same elementwise float32 products and sums as the official double loop (a Python float
    alpha multiplies in float32 too), the same ``topk`` per row, the same accuracies, visited in the official order
    with its strict ``>`` (pinned against :func:`search_hp_loop`).
    """
    beta_list, alpha_list = _search_grid(search_scale, search_step)
    clip_logits = scale * features @ text.t()
    alphas = torch.tensor(alpha_list, dtype=clip_logits.dtype, device=clip_logits.device)[:, None, None]
    n = labels.shape[0]
    best_acc, best_beta, best_alpha = 0.0, 0.0, 0.0
    for beta in beta_list:
        cache_logits = ((-1) * (beta - beta * affinity)).exp() @ values
        logits = clip_logits + cache_logits * alphas  # [A, B, C]
        correct = (logits.topk(1, 2, True, True)[1][..., 0] == labels).float().sum(1).tolist()
        for alpha, count in zip(alpha_list, correct):
            acc = 100 * float(count) / n
            if acc > best_acc:
                best_acc, best_beta, best_alpha = acc, beta, alpha
    return best_beta, best_alpha, best_acc


def _search_grid(search_scale: tuple[float, float], search_step: tuple[int, int]) -> tuple[list[float], list[float]]:
    """The official beta and alpha lists of ``utils.search_hp``."""
    beta_list = [i * (search_scale[0] - 0.1) / search_step[0] + 0.1 for i in range(search_step[0])]
    alpha_list = [i * (search_scale[1] - 0.1) / search_step[1] + 0.1 for i in range(search_step[1])]
    return beta_list, alpha_list


def search_hp_loop(affinity: torch.Tensor, features: torch.Tensor, text: torch.Tensor, values: torch.Tensor,
                   labels: torch.Tensor, search_scale: tuple[float, float], search_step: tuple[int, int],
                   scale: float = 100.0) -> tuple[float, float, float]:
    """:func:`search_hp` as the official double loop, one ``cls_acc`` per (beta, alpha) (the reference it is
    tested against)."""
    beta_list, alpha_list = _search_grid(search_scale, search_step)
    clip_logits = scale * features @ text.t()
    best_acc, best_beta, best_alpha = 0.0, 0.0, 0.0
    for beta in beta_list:
        cache_logits = ((-1) * (beta - beta * affinity)).exp() @ values
        for alpha in alpha_list:
            acc = cls_acc(clip_logits + cache_logits * alpha, labels)
            if acc > best_acc:
                best_acc, best_beta, best_alpha = acc, beta, alpha
    return best_beta, best_alpha, best_acc


class TipAdapter(FeatureMethod):
    """Training-free cache model (Tip-Adapter) or its fine-tuned keys (Tip-Adapter-F, ``finetune: true``)."""

    Config = TipAdapterConfig
    info = MethodInfo(
        name="tip_adapter", display="Tip-Adapter",
        paper=Paper("Tip-Adapter: Training-free Adaption of CLIP for Few-shot Classification", "ECCV", 2022,
                    "2207.09519"),
        code=Code("gaopengcuhk/Tip-Adapter", "d0e2d6f"),
        # "images": the runner's loop never trains it on cached features (Tip-Adapter-F trains in prepare_fit)
        capabilities=Capabilities(trains_on="images", unseen_classes=False, protocols=("fewshot",)),
        paper_names={"Tip-Adapter": {"finetune": False}, "Tip-Adapter-F": {"finetune": True}},
        precision=OfficialPrecision(
            "fp16", "fp16",
            "main.py:69, utils.py:62 (fp16 CLIP features; the suite keeps the cache and Tip-Adapter-F's adapter"
            " in fp32)",
            "official"))

    def __init__(self, clip: FrozenCLIP, classnames: Sequence[str], config: TipAdapterConfig,
                 context: MethodContext) -> None:
        super().__init__(clip, classnames, config, context)
        self.hp = config.resolved(context.dataset)
        dim = clip.embed_dim
        self.register_buffer("cache_keys", torch.zeros(0, dim))  # filled by prepare_fit: [N, E]
        self.register_buffer("cache_values", torch.zeros(0, len(classnames)))  # [N, C]
        self.adapter: nn.Linear | None = None  # Tip-Adapter-F: created by prepare_fit ([N, E] weight)
        self.beta, self.alpha = float(self.hp.init_beta), float(self.hp.init_alpha)
        self.search_outcome: dict[str, Any] = {}
        self.fit_log: list[dict[str, float]] = []
        self._text: torch.Tensor | None = None

    @classmethod
    def recipe_settings(cls, protocol: str, dataset: str, shots: int, config: Any) -> dict[str, Sourced]:
        """No epochs in the runner's loop: the cache is built, and Tip-Adapter-F fine-tuned, in ``prepare_fit``."""
        return {"epochs": official(0, "main.py: the cache is built and Tip-Adapter-F trained by the method itself "
                                      "(its own settings are method options)")}

    # -- text -------------------------------------------------------------------------------------------------------
    def prompt_templates(self) -> tuple[str, ...]:
        return self.templates()

    def templates(self) -> tuple[str, ...]:
        """The dataset's template; the 7 ``IMAGENET_TEMPLATES_SELECT`` on ImageNet (``datasets/imagenet.py``)."""
        if self.config.template_list:
            return tuple(self.config.template_list)
        if self.context.dataset == "imagenet":
            return IMAGENET_TEMPLATES_SELECT
        return (self.context.template,)

    def text_features(self) -> torch.Tensor:
        """``clip_classifier``: normalised class features ``[C, E]`` (frozen, computed once; in fp32, where the suite
        keeps the cache, also from a pure-fp16 model)."""
        if self._text is None:
            self._text = class_text_features(self.clip, self.classnames, self.templates()).float()
        return self._text

    def set_classnames(self, classnames: Sequence[str]) -> None:
        if tuple(classnames) != self.classnames:
            raise ValueError("Tip-Adapter's cache holds the training classes only; it cannot score other classes")

    # -- fit --------------------------------------------------------------------------------------------------------
    def report(self) -> dict[str, Any]:
        """The alpha/beta search (on val) and, for Tip-Adapter-F, the per-epoch fine-tuning log."""
        return {"search": self.search_outcome, "fit_log": self.fit_log}

    def prepare_fit(self, data: FitData) -> None:
        """Build the cache from augmented views, fine-tune the keys (Tip-Adapter-F), search alpha/beta on val."""
        device = self.clip.device
        views = [data.augmented_features("train", view, self.config.rrc_scale)
                 for view in range(self.config.augment_epoch)]
        labels = views[0][1]
        if any(not torch.equal(v_labels, labels) for _, v_labels in views):
            raise RuntimeError("augmented views disagree on the train labels (the cache passes must not shuffle)")
        keys, values = build_cache(torch.stack([feats for feats, _ in views]).to(device), labels.to(device),
                                   len(self.classnames))
        self.cache_keys, self.cache_values = keys, values
        val_feats, val_labels = data.features("val")
        val_feats, val_labels = normalize(val_feats.to(device)), val_labels.to(device)
        test = self._test_features(data) if type(self).selects_on_test(self.config) else None
        best_on_test = test is not None and self.config.finetune and self.hp.epoch_selection == "best_on_test"
        if self.config.finetune:
            self._make_adapter()
            self._finetune(data, val_feats, val_labels, test if best_on_test else None)
        search_feats, search_labels, search_split = val_feats, val_labels, "val"
        if self.hp.search_data == "full_val":
            full_feats, search_labels = data.features("val_full")
            search_feats, search_labels, search_split = normalize(full_feats.to(device)), search_labels.to(device), \
                "val_full"
        if len(search_labels) == 0 and test is not None and self.hp.search_without_val == "on_test":
            self._search(*test, split="test")
        else:
            self._search(search_feats, search_labels, split=search_split)
        if best_on_test:
            self._keep_the_better_on_test(*test)

    @classmethod
    def reads_full_val(cls, config: "TipAdapterConfig") -> bool:
        return config.search_data == "full_val"

    @classmethod
    def selects_on_test(cls, config: "TipAdapterConfig") -> bool:
        return (config.finetune and config.epoch_selection == "best_on_test") or config.search_without_val == "on_test"

    def _test_features(self, data: FitData) -> tuple[torch.Tensor, torch.Tensor]:
        feats, labels = data.features("test")
        return normalize(feats.to(self.clip.device)), labels.to(self.clip.device)

    @torch.no_grad()
    def _keep_the_better_on_test(self, test_feats: torch.Tensor, test_labels: torch.Tensor) -> None:
        """``main.py``'s reported number is ``max(best-epoch test accuracy, test accuracy after the search)``: keep the
        initial alpha/beta when the searched ones score lower on test (``best_on_test`` only)."""
        searched = cls_acc(tip_logits(test_feats, self._affinity(test_feats), self.text_features(), self.cache_values,
                                      self.alpha, self.beta, self.hp.clip_logit_scale), test_labels)
        initial = self._acc_with_initial_hp(test_feats, test_labels)
        self.search_outcome["test_selection"] = {"searched_test_acc": searched, "initial_test_acc": initial,
                                                 "kept": "searched" if searched >= initial else "initial"}
        if searched < initial:
            self.beta, self.alpha = float(self.hp.init_beta), float(self.hp.init_alpha)

    def _make_adapter(self) -> None:
        n_keys, dim = self.cache_keys.shape
        weight = self.cache_keys.clone() if self.config.fix_key_aliasing else self.cache_keys
        self.adapter = nn.Linear(dim, n_keys, bias=False, device="meta")  # no throw-away random init
        self.adapter.weight = nn.Parameter(weight)  # without the clone, it shares the keys' storage (official)

    def _finetune(self, data: FitData, val_feats: torch.Tensor, val_labels: torch.Tensor,
                  test: tuple[torch.Tensor, torch.Tensor] | None = None) -> None:
        """``run_tip_adapter_F``'s loop on augmented features; keeps the last epoch, the best on val, or (``test``
        given, ``best_on_test``) the best on test as the official loop does."""
        assert self.adapter is not None
        hp, weight = self.hp, self.adapter.weight
        optimizer = torch.optim.AdamW([weight], lr=hp.lr, eps=hp.eps, weight_decay=hp.weight_decay)
        steps_per_epoch = math.ceil(data.n_train / hp.batch_size)
        scheduler = torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, hp.train_epoch * steps_per_epoch)
        generator = torch.Generator().manual_seed(derive_seed("tip_adapter_f", self.context.seed))
        best_acc, best_weight = -1.0, None
        self.train()
        for epoch in range(hp.train_epoch):
            feats, labels = data.augmented_features("train", hp.augment_epoch + epoch, hp.rrc_scale)
            feats, labels = feats.to(weight.device), labels.to(weight.device)
            losses = []
            for index in torch.randperm(len(labels), generator=generator).split(hp.batch_size):
                out = self.feature_training_step(feats[index.to(weight.device)], labels[index.to(weight.device)])
                optimizer.zero_grad()
                out.loss.backward()
                optimizer.step()
                scheduler.step()
                losses.append(float(out.loss.detach()))
            entry = {"epoch": epoch + 1, "loss": sum(losses) / len(losses), "lr": scheduler.get_last_lr()[0]}
            if hp.epoch_selection == "val" and len(val_labels):
                entry["val_acc"] = self._acc_with_initial_hp(val_feats, val_labels)
                if entry["val_acc"] > best_acc:  # official criterion (strict), on val instead of test
                    best_acc, best_weight = entry["val_acc"], weight.detach().clone()
            elif test is not None:
                entry["test_acc"] = self._acc_with_initial_hp(*test)
                if entry["test_acc"] > best_acc:  # main.py:121-127: strict, on test
                    best_acc, best_weight = entry["test_acc"], weight.detach().clone()
            self.fit_log.append(entry)
        if best_weight is not None:
            with torch.no_grad():
                weight.copy_(best_weight)
        self.eval()

    @torch.no_grad()
    def _acc_with_initial_hp(self, feats: torch.Tensor, labels: torch.Tensor) -> float:
        """Accuracy on normalised ``feats`` with the current keys and the initial alpha/beta (the official per-epoch
        evaluation)."""
        logits = tip_logits(feats, self._affinity(feats), self.text_features(), self.cache_values,
                            self.hp.init_alpha, self.hp.init_beta, self.hp.clip_logit_scale)
        return cls_acc(logits, labels)

    @torch.no_grad()
    def _search(self, val_feats: torch.Tensor, val_labels: torch.Tensor, split: str = "val") -> None:
        """``search_hp`` on ``split`` (val; test only with ``search_without_val: on_test``)."""
        if not self.hp.search_hp or len(val_labels) == 0:
            reason = "search_hp is false" if not self.hp.search_hp else "no validation images"
            self.search_outcome = {"searched": False, "reason": reason, "beta": self.beta, "alpha": self.alpha}
            return
        search = search_hp if self.hp.batched_search else search_hp_loop
        beta, alpha, acc = search(self._affinity(val_feats), val_feats, self.text_features(), self.cache_values,
                                  val_labels, self.hp.search_scale, self.hp.search_step, self.hp.clip_logit_scale)
        self.beta, self.alpha = beta, alpha
        self.search_outcome = {"searched": True, "split": split, f"n_{split}": int(len(val_labels)), "beta": beta,
                               "alpha": alpha, f"{split}_accuracy": acc}

    # -- logits -----------------------------------------------------------------------------------------------------
    def _affinity(self, features: torch.Tensor) -> torch.Tensor:
        """f K^T with the (fine-tuned) keys, ``[B, N]``."""
        if self.adapter is not None:
            return self.adapter(features)
        return features @ self.cache_keys.t()

    def logits_from_features(self, features: torch.Tensor) -> torch.Tensor:
        """Tip-Adapter logits with the selected alpha/beta (features un-normalised, as the cache holds them)."""
        feats = normalize(features.to(self.cache_keys.dtype))
        return tip_logits(feats, self._affinity(feats), self.text_features(), self.cache_values, self.alpha,
                          self.beta, self.hp.clip_logit_scale)

    def feature_training_step(self, features: torch.Tensor, labels: torch.Tensor) -> StepOutput:
        """One Tip-Adapter-F step: CE on ``tip`` with the fine-tuned keys and the initial alpha/beta."""
        feats = normalize(features)
        logits = tip_logits(feats, self._affinity(feats), self.text_features(), self.cache_values,
                            self.hp.init_alpha, self.hp.init_beta, self.hp.clip_logit_scale)
        loss = F.cross_entropy(logits, labels)
        return StepOutput(loss, {"loss_ce": loss.detach()}, logits)

    def training_step(self, images: torch.Tensor, labels: torch.Tensor) -> StepOutput:
        raise NotImplementedError("Tip-Adapter(-F) trains in prepare_fit on augmented features; keep optim.epochs 0")

    def load_official_state_dict(self, state_dict: dict[str, torch.Tensor]) -> None:
        """Official tensors: ``cache_keys`` ``[E, N]``, ``cache_values`` ``[N, C]`` and, for Tip-Adapter-F, the saved
        ``adapter.weight`` ``[N, E]`` (``best_F_*.pt``)."""
        self.cache_keys = state_dict["cache_keys"].t().contiguous().to(self.clip.device)
        self.cache_values = state_dict["cache_values"].float().to(self.clip.device)
        if self.config.finetune:
            self._make_adapter()
            with torch.no_grad():
                self.adapter.weight.copy_(state_dict["adapter.weight"])
