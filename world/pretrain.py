"""Pretrain the tiny CLIP of the built-in world, reproducibly; probe it on the world datasets.

Reproduce the shipped weights (``frozen_clip/assets/tiny-world``)::

    python -m world.pretrain --out frozen_clip/assets/tiny-world

Measure zero-shot and simple 16-shot probes of a model folder on the world datasets::

    python -m world.pretrain --probe frozen_clip/assets/tiny-world

The model is open_clip's own ``CLIP`` class with :data:`MODEL_CFG` (32 px input, patch 4, vision 4 x 128, text
3 x 64, context length 77). It is trained from scratch on image-caption pairs drawn from the world's pretraining
distribution (:func:`world.generate.pretraining_scene`; the held-out colour+shape pairs are never shown), rendered
at 64 px and preprocessed exactly as the suite's evaluation transform does (bicubic resize to 32 px). Training:
AdamW (betas 0.9/0.98, weight decay 0.1 on matrices only), linear warm-up then cosine decay, batch 128, fp32,
logit scale clamped at 100, InfoNCE with identical captions in a batch counted as positives. Determinism: one
seed for the data stream and one for the initialisation, ``torch.use_deterministic_algorithms(True)``, a fixed
thread count; the result is bit-identical on the same machine type and library versions (``world/WORLD.md``
records what was measured). The weights are saved in fp16 with the token-embedding rows that no caption used set
to zero (they never received a gradient), so the file compresses well in git and wheels.
"""

from __future__ import annotations

import argparse
import contextlib
import hashlib
import json
import math
import sys
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Iterator, Sequence

import numpy as np
import open_clip
import torch
import torch.nn.functional as F
from PIL import Image
from torch import nn

from frozen_clip import atomic
from frozen_clip.backbone import CLIP_MEAN, CLIP_STD
from frozen_clip.seeding import derive_string_seed
from world import generate as world

IMAGE_INPUT = 32
MODEL_CFG: dict[str, Any] = {
    "embed_dim": 64,
    "quick_gelu": True,
    "vision_cfg": {"image_size": IMAGE_INPUT, "layers": 4, "width": 128, "head_width": 32, "patch_size": 4,
                   "mlp_ratio": 4.0},
    "text_cfg": {"context_length": 77, "vocab_size": 49408, "width": 64, "heads": 2, "layers": 3, "mlp_ratio": 4.0},
}
PREPROCESS_CFG: dict[str, Any] = {"size": IMAGE_INPUT, "mean": list(CLIP_MEAN), "std": list(CLIP_STD),
                                  "interpolation": "bicubic", "resize_mode": "shortest"}
CONFIG_FILE = "open_clip_config.json"
WEIGHTS_FILE = "world.safetensors"
MAX_LOGIT_SCALE = math.log(100.0)


@dataclass(frozen=True)
class PretrainConfig:
    """Every setting of the shipped pretraining run (the defaults reproduce the shipped weights)."""

    samples: int = 128_000  # image-caption pairs seen (= steps x batch)
    batch: int = 128
    lr: float = 2e-3
    weight_decay: float = 0.1
    warmup: float = 0.08  # share of steps with linear warm-up
    betas: tuple[float, float] = (0.9, 0.98)
    data_seed: int = 0  # the stream of scenes and captions
    init_seed: int = 0  # the model initialisation
    threads: int = 2

    @property
    def steps(self) -> int:
        return self.samples // self.batch


# ----------------------------------------------------------------------------------------------------------------
# Model and data


def build_model(seed: int = 0) -> open_clip.model.CLIP:
    """A freshly initialised tiny-world CLIP (open_clip's ``CLIP`` class with :data:`MODEL_CFG`)."""
    cfg = dict(MODEL_CFG)
    quick_gelu = cfg.pop("quick_gelu")
    torch.manual_seed(seed)
    return open_clip.model.CLIP(**cfg, quick_gelu=quick_gelu)


def load_model(folder: str | Path) -> open_clip.model.CLIP:
    """The model stored in ``folder`` (``open_clip_config.json`` + ``world.safetensors``), loaded strictly, fp32."""
    from safetensors.torch import load_file

    folder = Path(folder)
    cfg = json.loads((folder / CONFIG_FILE).read_text())["model_cfg"]
    quick_gelu = cfg.pop("quick_gelu", False)
    model = open_clip.model.CLIP(**cfg, quick_gelu=quick_gelu)
    state = load_file(str(folder / WEIGHTS_FILE))
    model.load_state_dict({k: v.float() for k, v in state.items()}, strict=True)
    return model.eval()


def image_transform() -> Any:
    """The suite's evaluation transform for this model (``frozen_clip.transforms.test_spec``)."""
    from frozen_clip.transforms import test_spec

    return test_spec(IMAGE_INPUT, CLIP_MEAN, CLIP_STD).build()


class CaptionTokens:
    """open_clip's tokenizer with a cache (captions repeat) and a record of every token id used."""

    def __init__(self) -> None:
        self.tokenizer = open_clip.tokenizer.SimpleTokenizer(context_length=MODEL_CFG["text_cfg"]["context_length"])
        self.cache: dict[str, torch.Tensor] = {}
        self.used: set[int] = set()

    def __call__(self, texts: Sequence[str]) -> torch.Tensor:
        missing = [t for t in dict.fromkeys(texts) if t not in self.cache]
        if missing:
            for text, ids in zip(missing, self.tokenizer(missing)):
                self.cache[text] = ids
                self.used.update(int(i) for i in ids.tolist())
        return torch.stack([self.cache[t] for t in texts])


def pretraining_batch(rng: np.random.Generator, n: int, transform: Any) -> tuple[torch.Tensor, list[str]]:
    """``n`` images (preprocessed) and captions from the world's pretraining distribution."""
    images, captions = [], []
    for _ in range(n):
        scene = world.pretraining_scene(rng)
        images.append(transform(Image.fromarray(world.render(scene), "RGB")))
        captions.append(world.caption(scene, rng))
    return torch.stack(images), captions


def encode_text(model: open_clip.model.CLIP, ids: torch.Tensor) -> torch.Tensor:
    """``model.encode_text`` on ids truncated to the longest caption (exact: causal mask, EOT pooling)."""
    length = int(ids.argmax(dim=-1).max()) + 1
    ids = ids[:, :length]
    x = model.token_embedding(ids) + model.positional_embedding[:length]
    x = model.transformer(x, attn_mask=model.attn_mask[:length, :length])
    x = model.ln_final(x)
    x = x[torch.arange(ids.shape[0]), ids.argmax(dim=-1)]
    return x @ model.text_projection


def contrastive_loss(image: torch.Tensor, text: torch.Tensor, scale: torch.Tensor, captions: Sequence[str]) -> \
        torch.Tensor:
    """Symmetric InfoNCE; pairs with identical captions are positives of each other (targets spread evenly)."""
    logits = scale * F.normalize(image, dim=-1) @ F.normalize(text, dim=-1).T
    index = {c: i for i, c in enumerate(dict.fromkeys(captions))}
    ids = torch.tensor([index[c] for c in captions])
    same = (ids[:, None] == ids[None, :]).float()
    targets = same / same.sum(dim=1, keepdim=True)
    return 0.5 * (F.cross_entropy(logits, targets) + F.cross_entropy(logits.T, targets))


def param_groups(model: nn.Module, weight_decay: float) -> list[dict[str, Any]]:
    """Weight decay on weight matrices only (not on embeddings, gains, biases or the logit scale)."""
    no_decay = ("token_embedding", "positional_embedding", "class_embedding", "logit_scale")
    decay, rest = [], []
    for name, p in model.named_parameters():
        (rest if p.ndim < 2 or any(k in name for k in no_decay) else decay).append(p)
    return [{"params": decay, "weight_decay": weight_decay}, {"params": rest, "weight_decay": 0.0}]


def lr_at(step: int, cfg: PretrainConfig) -> float:
    """Linear warm-up over ``warmup`` of the steps, then cosine decay to zero."""
    warm = max(1, round(cfg.warmup * cfg.steps))
    if step < warm:
        return cfg.lr * (step + 1) / warm
    return 0.5 * cfg.lr * (1 + math.cos(math.pi * (step - warm) / max(1, cfg.steps - warm)))


# ----------------------------------------------------------------------------------------------------------------
# Training


@contextlib.contextmanager
def deterministic_torch(threads: int) -> Iterator[None]:
    """Fixed thread count and deterministic algorithms inside the block; the previous settings after it."""
    saved = (torch.get_num_threads(), torch.are_deterministic_algorithms_enabled(),
             torch.utils.deterministic.fill_uninitialized_memory)
    torch.set_num_threads(threads)
    torch.use_deterministic_algorithms(True)
    torch.utils.deterministic.fill_uninitialized_memory = False  # NaN-filling every torch.empty costs 3x on CPU
    try:
        yield
    finally:
        torch.set_num_threads(saved[0])
        torch.use_deterministic_algorithms(saved[1])
        torch.utils.deterministic.fill_uninitialized_memory = saved[2]


def pretrain(cfg: PretrainConfig, log_every: int = 50) -> tuple[open_clip.model.CLIP, set[int]]:
    """Train a tiny-world CLIP from scratch; returns the model and the token ids the captions used."""
    with deterministic_torch(cfg.threads):
        return _train(cfg, log_every)


def _train(cfg: PretrainConfig, log_every: int) -> tuple[open_clip.model.CLIP, set[int]]:
    model = build_model(cfg.init_seed).train()
    opt = torch.optim.AdamW(param_groups(model, cfg.weight_decay), lr=cfg.lr, betas=cfg.betas, eps=1e-6)
    rng = np.random.default_rng(derive_string_seed("pretrain", world.WORLD_VERSION, cfg.data_seed))
    tokens, transform = CaptionTokens(), image_transform()
    start = time.time()
    for step in range(cfg.steps):
        images, captions = pretraining_batch(rng, cfg.batch, transform)
        for group in opt.param_groups:
            group["lr"] = lr_at(step, cfg)
        loss = contrastive_loss(model.encode_image(images), encode_text(model, tokens(captions)),
                                model.logit_scale.exp(), captions)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        with torch.no_grad():
            model.logit_scale.clamp_(0, MAX_LOGIT_SCALE)
        if step % log_every == 0 or step == cfg.steps - 1:
            print(f"step {step:5d}/{cfg.steps}  loss {loss.item():.4f}  scale {model.logit_scale.exp().item():6.2f}"
                  f"  {time.time() - start:7.1f}s", flush=True)
    return model.eval(), tokens.used


def export_state(model: nn.Module, used_tokens: set[int]) -> dict[str, torch.Tensor]:
    """fp16 state dict with the token-embedding rows of ids no caption used set to zero."""
    state = {k: v.detach().to(torch.float16).contiguous() for k, v in model.state_dict().items()}
    keep = torch.zeros(state["token_embedding.weight"].shape[0], dtype=torch.bool)
    keep[sorted(used_tokens)] = True
    state["token_embedding.weight"][~keep] = 0
    return state


def save(folder: str | Path, state: dict[str, torch.Tensor]) -> Path:
    """Write ``open_clip_config.json`` and ``world.safetensors`` into ``folder``; returns the weights path."""
    from safetensors.torch import save_file

    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    config = {"model_cfg": MODEL_CFG, "preprocess_cfg": PREPROCESS_CFG}
    atomic.write_text(folder / CONFIG_FILE, json.dumps(config, indent=2) + "\n")
    save_file(state, str(folder / WEIGHTS_FILE))
    (folder / WEIGHTS_FILE).chmod(0o644)  # safetensors writes through a private temporary file
    return folder / WEIGHTS_FILE


def sha256_file(path: str | Path) -> str:
    """Hex SHA-256 of a file."""
    return hashlib.sha256(Path(path).read_bytes()).hexdigest()


# ----------------------------------------------------------------------------------------------------------------
# Probes (zero-shot with the dataset template, 16-shot linear probe and a minimal CoOp, on frozen features)


@torch.no_grad()
def image_features(model: open_clip.model.CLIP, root: Path, paths: Sequence[str], batch: int = 256) -> torch.Tensor:
    """L2-normalised image features of ``root/path`` under the evaluation transform."""
    transform = image_transform()
    feats = [torch.zeros(0, MODEL_CFG["embed_dim"])]
    for i in range(0, len(paths), batch):
        imgs = torch.stack([transform(Image.open(root / p).convert("RGB")) for p in paths[i:i + batch]])
        feats.append(F.normalize(model.encode_image(imgs), dim=-1))
    return torch.cat(feats)


@torch.no_grad()
def class_text_features(model: open_clip.model.CLIP, template: str, classnames: Sequence[str]) -> torch.Tensor:
    """L2-normalised text features of the dataset template filled with each class name."""
    tokens = CaptionTokens()(([template.format(c.replace("_", " ")) for c in classnames]))
    return F.normalize(encode_text(model, tokens), dim=-1)


@dataclass
class SplitFeatures:
    """Cached features of one world dataset."""

    classnames: list[str]
    train: torch.Tensor
    train_labels: torch.Tensor
    test: torch.Tensor
    test_labels: torch.Tensor


def dataset_features(model: open_clip.model.CLIP, key: str, data_root: Path, shots: int = 16) -> SplitFeatures:
    """Features of the first ``shots`` train images per class and of the whole test split."""
    from protocols.datasets import load_splits

    splits = load_splits(key, data_root)
    train = [it for label in range(len(splits.classnames)) for it in
             [i for i in splits.train if i.label == label][:shots]]
    feats = SplitFeatures(list(splits.classnames), image_features(model, splits.image_root, [i.path for i in train]),
                          torch.tensor([i.label for i in train]),
                          image_features(model, splits.image_root, [i.path for i in splits.test]),
                          torch.tensor([i.label for i in splits.test]))
    return feats


def _accuracy(logits: torch.Tensor, labels: torch.Tensor) -> float:
    return 100.0 * (logits.argmax(dim=-1) == labels).float().mean().item()


def zero_shot(model: open_clip.model.CLIP, feats: SplitFeatures, template: str, classes: Sequence[int]) -> float:
    """Zero-shot accuracy on the test images of ``classes`` (a closed set over those classes)."""
    text = class_text_features(model, template, [feats.classnames[c] for c in classes])
    mask, relabel = _subset(feats.test_labels, classes)
    return _accuracy(feats.test[mask] @ text.T, relabel[mask])


def _subset(labels: torch.Tensor, classes: Sequence[int]) -> tuple[torch.Tensor, torch.Tensor]:
    relabel = torch.full((int(labels.max()) + 1,), -1, dtype=torch.long)
    relabel[list(classes)] = torch.arange(len(classes))
    return relabel[labels] >= 0, relabel[labels]


def linear_probe(feats: SplitFeatures, classes: Sequence[int], steps: int = 300, wd: float = 1e-3) -> float:
    """A logistic-regression probe on the 16-shot train features of ``classes`` (Adam, full batch)."""
    mask, relabel = _subset(feats.train_labels, classes)
    x, y = feats.train[mask], relabel[mask]
    torch.manual_seed(0)
    head = nn.Linear(x.shape[1], len(classes))
    opt = torch.optim.Adam(head.parameters(), lr=0.05, weight_decay=wd)
    for _ in range(steps):
        loss = F.cross_entropy(head(x * 10), y)
        opt.zero_grad()
        loss.backward()
        opt.step()
    tmask, trelabel = _subset(feats.test_labels, classes)
    with torch.no_grad():
        return _accuracy(head(feats.test[tmask] * 10), trelabel[tmask])


def coop_probe(model: open_clip.model.CLIP, feats: SplitFeatures, base: Sequence[int], novel: Sequence[int],
               n_ctx: int = 4, steps: int = 200, lr: float = 0.01) -> tuple[float, float]:
    """A minimal CoOp: ``n_ctx`` learned context vectors (init "a photo of a"), trained on base; (base, novel) acc."""
    tokenizer = CaptionTokens()
    init = tokenizer(["a photo of a"])[0, 1:1 + n_ctx]
    ctx = nn.Parameter(model.token_embedding(init).detach().clone())

    def text_feats(classes: Sequence[int]) -> torch.Tensor:
        ids = tokenizer([" ".join(["X"] * n_ctx) + " " + feats.classnames[c].replace("_", " ") + "."
                         for c in classes])
        length = int(ids.argmax(dim=-1).max()) + 1
        ids = ids[:, :length]
        emb = model.token_embedding(ids)
        emb = torch.cat([emb[:, :1], ctx.expand(len(classes), -1, -1), emb[:, 1 + n_ctx:]], dim=1)
        x = model.transformer(emb + model.positional_embedding[:length], attn_mask=model.attn_mask[:length, :length])
        x = model.ln_final(x)[torch.arange(len(classes)), ids.argmax(dim=-1)]
        return F.normalize(x @ model.text_projection, dim=-1)

    mask, relabel = _subset(feats.train_labels, base)
    x, y = feats.train[mask], relabel[mask]
    opt = torch.optim.Adam([ctx], lr=lr)
    scale = model.logit_scale.exp().detach()
    for _ in range(steps):
        loss = F.cross_entropy(scale * x @ text_feats(base).T, y)
        opt.zero_grad()
        loss.backward()
        opt.step()
    with torch.no_grad():
        out = []
        for classes in (base, novel):
            tmask, trelabel = _subset(feats.test_labels, classes)
            out.append(_accuracy(scale * feats.test[tmask] @ text_feats(classes).T, trelabel[tmask]))
    return out[0], out[1]


def probe(folder: str | Path, data_root: Path, keys: Sequence[str] | None = None) -> list[dict[str, Any]]:
    """Zero-shot (all / base / novel), 16-shot linear probe and CoOp (base / novel) per world dataset."""
    torch.manual_seed(0)
    model = load_model(folder)
    for p in model.parameters():
        p.requires_grad_(False)
    rows = []
    for key in keys or list(world.WORLD_SPECS):
        spec = world.WORLD_SPECS[key]
        feats = dataset_features(model, key, data_root)
        n = len(feats.classnames)
        every, base, novel = list(range(n)), list(range((n + 1) // 2)), list(range((n + 1) // 2, n))
        row = {"dataset": key, "classes": n, "chance": round(100.0 / n, 1),
               "zs_all": zero_shot(model, feats, spec.template, every),
               "zs_base": zero_shot(model, feats, spec.template, base),
               "zs_novel": zero_shot(model, feats, spec.template, novel),
               "lp16_all": linear_probe(feats, every), "lp16_base": linear_probe(feats, base)}
        row["coop16_base"], row["coop16_novel"] = coop_probe(model, feats, base, novel)
        rows.append({k: round(v, 1) if isinstance(v, float) else v for k, v in row.items()})
        print(json.dumps(rows[-1]), flush=True)
    return rows


# ----------------------------------------------------------------------------------------------------------------
# Command line


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m world.pretrain", description=__doc__.split("\n\n")[0],
                                     epilog="example: python -m world.pretrain --probe frozen_clip/assets/tiny-world")
    parser.add_argument("--out", help="folder to write open_clip_config.json and world.safetensors into")
    parser.add_argument("--samples", type=int, default=PretrainConfig.samples, help="image-caption pairs to train on")
    parser.add_argument("--threads", type=int, default=PretrainConfig.threads, help="torch threads (fixed for bits)")
    parser.add_argument("--probe", metavar="FOLDER", help="probe the model in FOLDER on the world datasets instead")
    parser.add_argument("--data-root", help="world root for --probe (default: ensure_world())")
    parser.add_argument("--datasets", nargs="*", help="world dataset keys for --probe (default: all)")
    args = parser.parse_args(argv)
    if args.probe:
        root = Path(args.data_root) if args.data_root else world.ensure_world()
        probe(args.probe, root, args.datasets)
        return 0
    if not args.out:
        parser.error("--out or --probe is required")
    cfg = PretrainConfig(samples=args.samples, threads=args.threads)
    print(json.dumps({"config": asdict(cfg), "model_cfg": MODEL_CFG, "torch": torch.__version__,
                      "open_clip": open_clip.__version__}), flush=True)
    start = time.time()
    model, used = pretrain(cfg)
    path = save(args.out, export_state(model, used))
    print(f"wrote {path} ({path.stat().st_size / 1e6:.2f} MB, sha256 {sha256_file(path)}) in "
          f"{time.time() - start:.0f}s; {len(used)} token ids used", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
