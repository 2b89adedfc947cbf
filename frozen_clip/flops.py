"""FLOPs of CLIP towers and training steps, device peaks, and model FLOPs utilisation (MFU).

Convention: open_clip's profiler (``src/open_clip_train/profiler.py``, ``--profiler torch``, the default) counts
with :class:`torch.utils.flop_counter.FlopCounterMode`: **2 FLOPs per multiply-accumulate** of every matmul and
convolution (``mm``, ``addmm``, ``bmm``, ``convolution``, the fused attention kernels), nothing for LayerNorm,
activations, softmax or additions. The analytic model here follows that convention term by term, and
:func:`count_flops` runs the counter itself (with PyTorch's ``math`` attention backend, because the CPU fused
attention kernel is not registered with the counter and would silently count as zero).

Per block of width ``D``, MLP width ``M`` and ``L`` tokens, forward::

    2 L (3 D^2)        q, k, v projection (one fused in_proj)
    2 L^2 D  x 2       q k^T and attn v (all L^2 pairs: the causal text mask is additive, so the kernels
                       compute every pair, and so does the counter)
    2 L D^2            out_proj
    2 L D M x 2        c_fc and c_proj

Training steps (:func:`step_flops`) follow the accounting of nanoGPT's ``estimate_mfu`` (PaLM appendix B): a
weight matmul costs 1x forward, 1x for the gradient of its input and 1x for the gradient of its weight. For a frozen
backbone that means: a tower run without gradients costs 1x its forward; a tower that gradients traverse (adapters
inside it, or learned prompt tokens at its input) 2x (weights frozen: no weight gradients); trainable parameters
3x their own forward. Model FLOPs count only what the model needs: recomputation, padding beyond the longest
prompt (when the path truncates) or caches are not credited.

MFU = model FLOPs per second / the device's dense peak for the precision in use (:data:`PEAK_TFLOPS`); None on CPU
and on unknown devices: there is no meaningful "peak" for a shared CPU, and a made-up one would mislead.
"""

from __future__ import annotations

from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any, Callable, Iterator

import torch
from torch import nn

#: Dense (no 2:4 sparsity) peak TFLOP/s per precision, from the vendors' data sheets. Matched by substring of
#: ``torch.cuda.get_device_name`` (first match wins, so the specific names come first). ``fp32`` is the plain FP32
#: peak; ``tf32`` the tensor-core TF32 peak used when ``torch.backends.cuda.matmul.allow_tf32`` is set.
PEAK_TFLOPS: tuple[tuple[str, dict[str, float]], ...] = (
    ("H200", {"bf16": 989.4, "fp16": 989.4, "tf32": 494.7, "fp32": 66.9}),  # H200 SXM data sheet
    ("H100 PCIe", {"bf16": 756.0, "fp16": 756.0, "tf32": 378.0, "fp32": 51.2}),
    ("H100 NVL", {"bf16": 835.5, "fp16": 835.5, "tf32": 417.5, "fp32": 60.0}),
    ("H100", {"bf16": 989.4, "fp16": 989.4, "tf32": 494.7, "fp32": 66.9}),  # H100 SXM5
    ("A100", {"bf16": 312.0, "fp16": 312.0, "tf32": 156.0, "fp32": 19.5}),
    ("L40S", {"bf16": 362.05, "fp16": 362.05, "tf32": 183.0, "fp32": 91.6}),
    ("A6000", {"bf16": 154.8, "fp16": 154.8, "tf32": 77.4, "fp32": 38.7}),
    ("A10", {"bf16": 125.0, "fp16": 125.0, "tf32": 62.5, "fp32": 31.2}),
    ("L4", {"bf16": 121.0, "fp16": 121.0, "tf32": 60.0, "fp32": 30.3}),
    ("4090", {"bf16": 165.2, "fp16": 165.2, "tf32": 82.6, "fp32": 82.6}),
    ("V100", {"fp16": 125.0, "fp32": 15.7}),  # no bf16 tensor cores
    ("T4", {"fp16": 65.0, "fp32": 8.1}),
)

_PRECISION_KEY = {"amp_bf16": "bf16", "amp_fp16": "fp16", "bf16": "bf16", "fp16": "fp16", "fp32": "fp32"}


# -- analytic model ---------------------------------------------------------------------------------------------------
def block_flops(tokens: int, width: int, mlp_width: int) -> int:
    """Forward FLOPs of one residual attention block on one sequence of ``tokens`` tokens (module docstring)."""
    projections = 2 * tokens * (3 * width * width + width * width + 2 * width * mlp_width)
    attention = 2 * 2 * tokens * tokens * width
    return projections + attention


@dataclass(frozen=True)
class TowerShape:
    """What the FLOP model needs to know about one tower."""

    layers: int
    width: int
    mlp_width: int
    embed_dim: int  # output projection width (0 when there is none)

    def forward(self, tokens: int) -> int:
        """Forward FLOPs of the blocks and the output projection for one sequence of ``tokens`` tokens."""
        return self.layers * block_flops(tokens, self.width, self.mlp_width) + 2 * self.width * self.embed_dim


@dataclass(frozen=True)
class CLIPShape:
    """Tower shapes of an open_clip ViT CLIP (read from a model by :func:`clip_shape`)."""

    visual: TowerShape
    text: TowerShape
    patch_size: int
    grid: tuple[int, int]
    context_length: int

    @property
    def image_tokens(self) -> int:
        """Patches + CLS."""
        return self.grid[0] * self.grid[1] + 1

    def image_forward(self) -> int:
        """Forward FLOPs of one image: patch embedding (a convolution) + blocks + projection."""
        patches = self.grid[0] * self.grid[1]
        embed = 2 * patches * 3 * self.patch_size * self.patch_size * self.visual.width
        return embed + self.visual.forward(self.image_tokens)

    def text_forward(self, tokens: int | None = None) -> int:
        """Forward FLOPs of one prompt of ``tokens`` tokens (default: the full context, as the official code)."""
        return self.text.forward(self.context_length if tokens is None else tokens)


def _tower(blocks: nn.ModuleList, embed_dim: int) -> TowerShape:
    first = blocks[0]
    return TowerShape(len(blocks), int(first.ln_1.normalized_shape[0]), int(first.mlp.c_fc.out_features), embed_dim)


def clip_shape(clip: Any) -> CLIPShape:
    """The :class:`CLIPShape` of a :class:`~frozen_clip.backbone.FrozenCLIP` (or an open_clip ``CLIP``)."""
    model = getattr(clip, "model", clip)
    visual = model.visual
    text_owner = model.text if hasattr(model, "text") else model
    proj = text_owner.text_projection
    text_embed = 0 if proj is None else int(proj.out_features if isinstance(proj, nn.Linear) else proj.shape[1])
    visual_embed = 0 if getattr(visual, "proj", None) is None else int(visual.proj.shape[1])
    patch = visual.conv1.kernel_size[0]
    return CLIPShape(_tower(visual.transformer.resblocks, visual_embed), _tower(text_owner.transformer.resblocks,
                     text_embed), int(patch), tuple(int(g) for g in visual.grid_size),
                     int(text_owner.positional_embedding.shape[0]))


def vit_b16_shape() -> CLIPShape:
    """ViT-B/16 (OpenAI): image 12 x 768 (MLP 3072), 14 x 14 patches of 16; text 12 x 512 (MLP 2048), 77 tokens."""
    return CLIPShape(TowerShape(12, 768, 3072, 512), TowerShape(12, 512, 2048, 512), 16, (14, 14), 77)


@dataclass(frozen=True)
class StepCost:
    """Model FLOPs of one training step, split by where they are spent."""

    image: int
    text: int
    trainable: int = 0

    @property
    def total(self) -> int:
        return self.image + self.text + self.trainable


def step_flops(shape: CLIPShape, *, images: int, prompts: int, text_tokens: int | None = None,
               image_grad: bool = False, text_grad: bool = False, trainable_forward: int = 0) -> StepCost:
    """Model FLOPs of a step with ``images`` images and ``prompts`` class prompts of ``text_tokens`` tokens.

    ``image_grad``/``text_grad``: whether gradients traverse that tower (2x forward instead of 1x).
    ``trainable_forward``: forward FLOPs of the trainable parameters themselves (adapters, heads), counted 3x.
    """
    image = images * shape.image_forward() * (2 if image_grad else 1)
    text = prompts * shape.text_forward(text_tokens) * (2 if text_grad else 1)
    return StepCost(image, text, 3 * trainable_forward)


# -- measured ---------------------------------------------------------------------------------------------------------
@contextmanager
def _math_attention() -> Iterator[None]:
    """PyTorch's math attention backend, whose matmuls the flop counter sees (the CPU fused kernel it does not)."""
    from torch.nn.attention import SDPBackend, sdpa_kernel
    with sdpa_kernel(SDPBackend.MATH):
        yield


def count_flops(fn: Callable[[], Any]) -> int:
    """FLOPs of running ``fn()`` (forward and any backward it runs), counted as open_clip's profiler counts them."""
    from torch.utils.flop_counter import FlopCounterMode
    with _math_attention(), FlopCounterMode(display=False) as counter:
        fn()
    return int(counter.get_total_flops())


# -- device peaks and MFU --------------------------------------------------------------------------------------------
def peak_flops(device: torch.device | str, precision: str = "fp32") -> float | None:
    """Dense peak FLOP/s of ``device`` for ``precision`` (``fp32``, ``amp_bf16``, ``amp_fp16``); None if unknown/CPU.

    fp32 uses the TF32 tensor-core peak when TF32 matmuls are enabled (``torch.backends.cuda.matmul.allow_tf32``).
    """
    device = torch.device(device)
    if device.type != "cuda" or not torch.cuda.is_available():
        return None
    return peak_for_name(torch.cuda.get_device_name(device), precision,
                         tf32=bool(torch.backends.cuda.matmul.allow_tf32))


def peak_for_name(name: str, precision: str, tf32: bool = False) -> float | None:
    """Dense peak FLOP/s of the GPU called ``name`` (as ``torch.cuda.get_device_name`` spells it), or None."""
    key = _PRECISION_KEY.get(precision)
    if key is None:
        raise ValueError(f"unknown precision {precision!r}; expected one of {sorted(_PRECISION_KEY)}")
    if key == "fp32" and tf32:
        key = "tf32"
    for pattern, peaks in PEAK_TFLOPS:
        if pattern in name:
            value = peaks.get(key, peaks.get("fp32") if key == "tf32" else None)
            return None if value is None else value * 1e12
    return None


def mfu(flops: float, seconds: float, peak: float | None) -> float | None:
    """Model FLOPs utilisation: ``flops / seconds / peak`` (None without a peak or a positive time)."""
    if peak is None or seconds <= 0 or flops <= 0:
        return None
    return flops / seconds / peak
