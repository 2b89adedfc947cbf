"""What every benchmark shares: the machine description, backbones without downloads, the reference backbone and
interleaved timing.

Timing discipline (nanoGPT ``bench.py``): the measured work is exactly what the training loop runs, after a warm-up
step, on synchronised devices. The two paths of a comparison run **side by side in one process**, alternating step
by step (fast, reference, reference, fast, ...), so that load from other processes on a shared machine hits both
alike; the median of each path is reported.
"""

from __future__ import annotations

import os
import platform
import statistics
import time
from dataclasses import dataclass, field
from typing import Any, Callable

import torch

from frozen_clip.backbone import FrozenCLIP, load_backbone
from frozen_clip.taps import Taps

#: the golden tiny CLIP's architecture (tests/fixtures/clip_tiny), built here with random weights
TINY_CONFIG: dict[str, Any] = {
    "embed_dim": 32, "quick_gelu": True,
    "vision_cfg": {"image_size": 32, "layers": 2, "width": 64, "patch_size": 8, "head_width": 64, "mlp_ratio": 4.0},
    "text_cfg": {"context_length": 77, "vocab_size": 49408, "width": 32, "heads": 2, "layers": 2, "mlp_ratio": 4.0},
}


#: glibc malloc settings that keep freed blocks in the process instead of handing them back to the kernel. Under
#: the defaults a tensor over the mmap threshold (dynamic, at most 32 MiB on 64-bit) is a fresh ``mmap`` whose pages
#: fault in, zeroed, on first touch, and is unmapped again when freed; the reference path's 77-token text batches
#: (e.g. 96 x 77 x 3072 floats of ViT-B/16's MLP = 87 MiB) pay that on every allocation, the suite's shorter ones
#: much less, so the allocator alone moves the ratio (``--allocator``).
TUNED_MALLOC: dict[str, str] = {"MALLOC_MMAP_THRESHOLD_": str(2 ** 32), "MALLOC_TRIM_THRESHOLD_": str(2 ** 36),
                                "MALLOC_TOP_PAD_": str(2 ** 30)}


def allocator() -> str:
    """``tuned`` when this process runs with :data:`TUNED_MALLOC`, ``preload:<lib>`` under an ``LD_PRELOAD``-ed
    allocator, else ``default`` (glibc's own settings)."""
    preload = os.environ.get("LD_PRELOAD", "")
    if any(name in preload for name in ("jemalloc", "tcmalloc", "mimalloc")):
        return "preload:" + os.path.basename(preload.split(":")[0])
    if all(os.environ.get(key) == value for key, value in TUNED_MALLOC.items()):
        return "tuned"
    return "default"


def machine() -> dict[str, Any]:
    """A description of the machine for the results file."""
    info: dict[str, Any] = {"python": platform.python_version(), "torch": torch.__version__,
                            "platform": platform.platform(), "cpu_count": os.cpu_count(),
                            "torch_threads": torch.get_num_threads(), "cpu": _cpu_name(),
                            "allocator": allocator()}
    try:
        info["load_average"] = [round(x, 2) for x in os.getloadavg()]
    except OSError:
        info["load_average"] = None
    if torch.cuda.is_available():
        info["gpu"] = torch.cuda.get_device_name(0)
        info["gpu_memory_gb"] = round(torch.cuda.get_device_properties(0).total_memory / 2 ** 30, 1)
    else:
        info["gpu"] = None
    return info


def _cpu_name() -> str:
    try:
        with open("/proc/cpuinfo") as handle:
            for line in handle:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def tiny_backbone(device: torch.device, folder: str | None = None) -> FrozenCLIP:
    """The golden tiny architecture with random weights (seeded by the backbone loader)."""
    import json
    import tempfile
    folder = folder or tempfile.mkdtemp(prefix="bench-tiny-")
    path = os.path.join(folder, "bench-tiny.json")
    with open(path, "w") as handle:
        json.dump(TINY_CONFIG, handle)
    return load_backbone(path, None, device)


def vit_b16_backbone(device: torch.device) -> FrozenCLIP:
    """ViT-B/16 with QuickGELU (the OpenAI architecture) and random weights: the real shapes, no download."""
    return load_backbone("ViT-B-16-quickgelu", None, device)


def backbone(name: str, device: torch.device) -> FrozenCLIP:
    """``tiny`` or ``vit_b16``."""
    if name == "tiny":
        return tiny_backbone(device)
    if name == "vit_b16":
        return vit_b16_backbone(device)
    raise ValueError(f"unknown bench backbone {name!r}; expected 'tiny' or 'vit_b16'")


class FullContextCLIP(FrozenCLIP):
    """The same frozen model, encoding text the way the official code does: all ``context_length`` positions.

    ``truncate`` returns the ids unchanged, and ids or embeddings shorter than the context are padded back with
    token 0 (the tokenizer's padding), so a method built on this backbone runs every prompt at 77 tokens whatever its
    own ``truncate_text`` setting. Shares the wrapped model (no copy of the weights).
    """

    def __init__(self, clip: FrozenCLIP) -> None:
        super().__init__(clip.model, clip.source, {"size": clip.image_size, "mean": clip.mean, "std": clip.std})
        self.tokenizer = clip.tokenizer

    def truncate(self, ids: torch.Tensor, length: int | None = None) -> torch.Tensor:
        return ids

    def _pad_ids(self, ids: torch.Tensor) -> torch.Tensor:
        missing = self.text.context_length - ids.shape[-1]
        return ids if missing <= 0 else torch.nn.functional.pad(ids, (0, missing))

    def encode_text(self, ids: torch.Tensor, taps: Taps | None = None, truncate: bool = True,
                    buckets: int = 1, share_prefix: bool = False) -> torch.Tensor:
        return super().encode_text(self._pad_ids(ids), taps, truncate=False)

    def encode_text_embeddings(self, embeddings: torch.Tensor, ids: torch.Tensor,
                               taps: Taps | None = None) -> torch.Tensor:
        full = self._pad_ids(ids)
        missing = full.shape[-1] - embeddings.shape[1]
        if missing > 0:
            pad = self.token_embedding(full[:, -missing:]).to(embeddings.dtype)
            embeddings = torch.cat([embeddings, pad], dim=1)
        return super().encode_text_embeddings(embeddings, full, taps)


def synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def timed(fn: Callable[[], Any], device: torch.device) -> float:
    """Seconds taken by ``fn()`` on a synchronised device."""
    synchronize(device)
    start = time.perf_counter()
    fn()
    synchronize(device)
    return time.perf_counter() - start


@dataclass
class Interleaved:
    """Alternating timings of named paths (ABBA order, so neither path always runs first)."""

    times: dict[str, list[float]] = field(default_factory=dict)

    def run(self, paths: dict[str, Callable[[], Any]], repeats: int, device: torch.device) -> None:
        names = list(paths)
        for r in range(repeats):
            order = names if r % 2 == 0 else names[::-1]
            for name in order:
                self.times.setdefault(name, []).append(timed(paths[name], device))

    def median(self, name: str) -> float:
        return statistics.median(self.times[name])

    def spread(self, name: str) -> tuple[float, float]:
        return min(self.times[name]), max(self.times[name])


def peak_memory_of(fn: Callable[[], Any], device: torch.device) -> float | None:
    """Peak CUDA memory (MiB) allocated while running ``fn`` once; None on CPU (no per-call peak there)."""
    if device.type != "cuda":
        fn()
        return None
    torch.cuda.synchronize(device)
    torch.cuda.reset_peak_memory_stats(device)
    fn()
    torch.cuda.synchronize(device)
    return torch.cuda.max_memory_allocated(device) / 2 ** 20
