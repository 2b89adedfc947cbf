"""Training-step benchmark: a method's step on the suite's path against the official-style reference path.

For each (backbone, method): two instances of the method with identical weights over the same frozen model, one on
the suite's :class:`~frozen_clip.backbone.FrozenCLIP` with its default (fast, exact) settings, one on
:class:`bench.common.FullContextCLIP` with every fast-path flag of the method off, i.e. what the official code does:
all class prompts re-encoded at the full 77-token context every step, no caches. Same batch, same labels, same
class count, same RNG seed per step; one step = ``training_step`` + ``backward`` + an SGD step, exactly as the
trainer runs it. The loss of the first step is compared between the two paths (they must agree: the fast paths are
exact).

CoOp's image encoder is frozen, so the suite trains it on cached features of each epoch's augmented view (the
runner's ``fast.feature_training``; the views are shared with every other run on the same split, CLIP-Adapter
included). Its rows come in two variants: ``coop`` encodes the batch in the step (a cold cache: the cost of the one
feature pass), ``coop (cached views)`` reads the batch's features from the cache (every later epoch-view reuse).
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any, Callable

import torch

from bench.common import FullContextCLIP, Interleaved, peak_memory_of
from frozen_clip import flops
from frozen_clip.backbone import FrozenCLIP, length_buckets
from frozen_clip.contract import fast_path_switches
from frozen_clip.fastconfig import supports_feature_training
from frozen_clip.method import Method, MethodContext
from frozen_clip.shared_prefix import common_prefix_length

#: the methods the step benchmark runs by default (``--methods`` takes any registered method); the switches that
#: turn a method's fast paths off come from its contract (``option(..., fast_path_off=...)``), and every reference
#: path also runs on the full-context backbone (CLIP-LoRA, which always truncates, differs only there)
STEP_METHODS = ("heba", "mma", "coop", "clip_lora")


def class_names(n: int) -> list[str]:
    """The first ``n`` ImageNet class names of open_clip (realistic token lengths), repeated with a suffix past 1000."""
    from open_clip.zero_shot_metadata import IMAGENET_CLASSNAMES
    names = list(IMAGENET_CLASSNAMES)
    return [names[i % len(names)] + ("" if i < len(names) else f" {i // len(names)}") for i in range(n)]


def build_method(name: str, clip: FrozenCLIP, classnames: list[str], reference: bool) -> Method:
    """Method ``name`` with its default config (reference: fast-path flags off), seeded init."""
    from jobs.config import method_class
    cls = method_class(name, "bench")
    config = dataclasses.replace(cls.Config(), **shape_overrides(name, clip))
    if reference:
        config = dataclasses.replace(config, **fast_path_switches(cls.Config))
    context = MethodContext(dataset="imagenet", template="a photo of a {}.", protocol="base2novel", shots=16,
                            seed=1, epochs=1)
    torch.manual_seed(0)
    return cls(clip, classnames, config, context).to(clip.device)


def shape_overrides(name: str, clip: FrozenCLIP) -> dict[str, Any]:
    """Config changes a small backbone needs (MMA's default blocks 5-12 do not exist on a 2-block tower)."""
    n_blocks = len(clip.visual.transformer.resblocks)
    if name == "mma" and n_blocks < 12:
        return {"layers": tuple(range(1, n_blocks + 1))}
    return {}


def default_batch(name: str) -> int:
    """The batch size of the method's own recipe for a 16-shot base-to-novel run (HeBA 16, MMA 16, CoOp 32,
    CLIP-LoRA 32; MMA's ImageNet recipe would take 128)."""
    from jobs.config import method_class
    cls = method_class(name, "bench")
    return int(cls.recipe("base2novel", "caltech101", 16, cls.Config()).get("batch_size", 32))


@dataclass
class StepResult:
    """One (backbone, method) comparison."""

    backbone: str
    method: str
    classes: int
    batch: int
    text_tokens_fast: int
    text_tokens_reference: int
    seconds_fast: float
    seconds_reference: float
    spread_fast: tuple[float, float]
    spread_reference: tuple[float, float]
    flops_fast: int
    flops_reference: int
    loss_delta: float
    peak_mb_fast: float | None
    peak_mb_reference: float | None
    repeats: int
    cached_features: bool = False
    text_positions_fast: float | None = None  # mean positions run per prompt when the prompts are length-bucketed
    mfu_fast: float | None = None
    mfu_reference: float | None = None

    @property
    def speedup(self) -> float:
        return self.seconds_reference / self.seconds_fast

    def as_dict(self) -> dict[str, Any]:
        out = dataclasses.asdict(self)
        out.update(speedup=self.speedup, steps_per_s_fast=1 / self.seconds_fast,
                   steps_per_s_reference=1 / self.seconds_reference,
                   images_per_s_fast=self.batch / self.seconds_fast,
                   images_per_s_reference=self.batch / self.seconds_reference)
        return out


def _stepper(method: Method, images: torch.Tensor, labels: torch.Tensor,
             cached_features: bool = False) -> Callable[[int], float]:
    params = list(method.trainable_parameters().values())
    optimizer = torch.optim.SGD(params, lr=1e-3, momentum=0.9)
    method.train()
    if cached_features:  # the runner's feature cache: the batch's features were computed by an earlier pass
        with torch.no_grad():
            features = method.clip.encode_image(images)

    def step(seed: int) -> float:
        # same class sampling / boosts in both paths; the CPU generator alone (what the methods draw from), since
        # torch.manual_seed also queues accelerator seeding that records a stack trace, inside the timed step
        torch.default_generator.manual_seed(seed)
        if cached_features:
            out = method.feature_training_step(features, labels)
        else:
            out = method.training_step(images, labels)
        optimizer.zero_grad(set_to_none=True)
        out.loss.backward()
        optimizer.step()
        return float(out.loss.detach())
    return step


def text_tokens(method: Method, clip: FrozenCLIP) -> int:
    """Length of the token sequences the method's text tower runs on (after its truncation, if any)."""
    for attr in ("tokenized_prompts", "tk_prompts", "text_ids"):
        ids = getattr(method, attr, None)
        if isinstance(ids, torch.Tensor):
            full = ids.reshape(-1, ids.shape[-1])
            truncates = getattr(method, "truncates_text", True)
            return int(clip.truncate(full).shape[-1]) if truncates else int(full.shape[-1])
    return clip.text.context_length


def bucketed_positions(method: Method) -> float | None:
    """Mean token positions per prompt the suite runs for all class prompts when the method groups its prompts by
    length (HeBA's and MMA's ``text_buckets``), counting positions all prompts share once when it runs them once
    (``share_text_prefix``); None when it runs one batch."""
    buckets = getattr(method.config, "text_buckets", 1)
    ids = getattr(method, "tk_prompts", getattr(method, "text_ids", None))
    if buckets <= 1 or not isinstance(ids, torch.Tensor) or not getattr(method, "truncates_text", False):
        return None
    ids = ids.reshape(-1, ids.shape[-1])
    shared = common_prefix_length(ids) if getattr(method, "shares_text_prefix", False) else 0
    groups = length_buckets(ids.argmax(dim=-1) + 1, buckets)
    return (shared + sum(len(rows) * (length - shared) for rows, length in groups)) / ids.shape[0]


def bench_method(name: str, backbone_name: str, clip: FrozenCLIP, n_classes: int, repeats: int,
                 batch: int | None = None, precision: str = "fp32", cached_features: bool = False) -> StepResult:
    """Time ``name``'s training step on both paths, interleaved; count each path's FLOPs on its first step.

    ``cached_features``: the suite path reads the batch's image features from the feature cache (methods whose
    step needs the images only through the frozen encoder, :func:`~frozen_clip.fastpaths.supports_feature_training`).
    """
    device = clip.device
    reference_clip = FullContextCLIP(clip)
    names = class_names(n_classes)
    fast = build_method(name, clip, names, reference=False)
    ref = build_method(name, reference_clip, names, reference=True)
    ref.load_state_dict(fast.state_dict())
    batch = batch or default_batch(name)
    gen = torch.Generator().manual_seed(0)
    images = torch.randn(batch, 3, clip.image_size, clip.image_size, generator=gen).to(device)
    labels = torch.randint(0, n_classes, (batch,), generator=gen).to(device)
    if cached_features and not supports_feature_training(fast):
        raise ValueError(f"{name} cannot train on cached image features")
    fast_step, ref_step = _stepper(fast, images, labels, cached_features), _stepper(ref, images, labels)
    loss_fast, loss_ref = fast_step(0), ref_step(0)  # first (warm-up) step: same weights, same seed
    flops_fast = flops.count_flops(lambda: fast_step(1))
    flops_ref = flops.count_flops(lambda: ref_step(1))
    peak_fast = peak_ref = None
    if device.type == "cuda":  # per-path peaks need CUDA's counters; on CPU the step is not repeated for nothing
        peak_fast = peak_memory_of(lambda: fast_step(2), device)
        peak_ref = peak_memory_of(lambda: ref_step(2), device)
    timer = Interleaved()
    seeds = {"fast": iter(range(3, 3 + repeats)), "reference": iter(range(3, 3 + repeats))}  # same seeds per path
    timer.run({"fast": lambda: fast_step(next(seeds["fast"])),
               "reference": lambda: ref_step(next(seeds["reference"]))}, repeats, device)
    result = StepResult(backbone_name, name, n_classes, batch, text_tokens(fast, clip),
                        text_tokens(ref, reference_clip), timer.median("fast"), timer.median("reference"),
                        timer.spread("fast"), timer.spread("reference"), flops_fast, flops_ref,
                        abs(loss_fast - loss_ref), peak_fast, peak_ref, repeats, cached_features,
                        bucketed_positions(fast))
    peak = flops.peak_flops(device, precision)
    # MFU counts the model FLOPs the step needs (the fast path's) against each path's time
    result.mfu_fast = flops.mfu(flops_fast, result.seconds_fast, peak)
    result.mfu_reference = flops.mfu(flops_fast, result.seconds_reference, peak)
    return result
