"""Loading any open_clip backbone, frozen, behind one small wrapper.

Sources a backbone can come from (``backbone`` / ``pretrained`` in a run config):

* an open_clip architecture and pretrained tag: ``ViT-B-16`` + ``openai``, ``ViT-B/16`` (OpenAI spelling),
  ``ViT-B-16-quickgelu``; a tag trained with QuickGELU forces the ``-quickgelu`` variant (open_clip 3.3 silently
  builds GELU otherwise) and an explicit GELU/QuickGELU mismatch is an error;
* an architecture + a local checkpoint file as ``pretrained`` (``.pt``, ``.bin``, ``.safetensors``);
* ``local-dir:PATH`` (open_clip's own format: ``open_clip_config.json`` + weights);
* a model-config JSON file (``path/to/tiny.json``) for tiny models, with ``pretrained`` a weights file or none;
* a suite asset folder ``frozen_clip/assets/<name>/`` (or any folder) holding ``open_clip_config.json`` and
  ``<tag>.safetensors``: ``backbone: tiny-world, pretrained: world``.

Weights are always loaded with ``strict=True`` and upcast to fp32. Every parameter is frozen and the model stays in
eval mode (CLIP has no dropout; the official methods never train it).
"""

from __future__ import annotations

import copy
import functools
import json
import os
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

from frozen_clip import openclip_catalog
from frozen_clip.contract import BackboneShape
from frozen_clip.errors import ConfigError
from frozen_clip.stamps import file_stamp
from frozen_clip.shared_prefix import common_prefix_length, shared_prefix_hidden, taps_are_per_token, tower_can_share
from frozen_clip.taps import Taps
from frozen_clip.weights import WEIGHTS_CACHE_ENV
from frozen_clip.towers import TextTower, visual_forward

ASSETS_DIR = Path(__file__).resolve().parent / "assets"
CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)
CLIP_STD = (0.26862954, 0.26130258, 0.27577711)
_RANDOM_INIT_SEED = 0  # random-weight backbones are built under this seed, so "pretrained: none" is reproducible
_NO_WEIGHTS = (None, "", "none", "random")


@dataclass(frozen=True)
class BackboneSource:
    """A resolved backbone: the canonical name recorded in run records and how to build it."""

    name: str  # canonical name, e.g. "ViT-B-16-quickgelu", "tiny-world", "local-dir:/x"
    pretrained: str | None  # tag, file path, or None
    model_cfg: dict[str, Any] | None = None  # set for config-file / asset backbones
    preprocess_cfg: dict[str, Any] | None = None
    weights_file: Path | None = None


def canonical_arch(name: str) -> str:
    """``ViT-B/16`` -> ``ViT-B-16``; other names unchanged."""
    return name.replace("/", "-")


def _tag_quick_gelu(arch: str, tag: str) -> bool | None:
    """QuickGELU flag open_clip records for (arch, tag); None if the tag is unknown for the GELU base name."""
    base = arch[: -len("-quickgelu")] if arch.endswith("-quickgelu") else arch
    for candidate in (base, base + "-quickgelu"):
        quick = openclip_catalog.tag_quick_gelu(candidate, tag)
        if quick is not None:
            return quick
    return None


def _read_model_config(path: Path) -> dict[str, Any]:
    """A model-config JSON file (open_clip's layout); :class:`ConfigError` naming the file if it is not one."""
    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError) as err:
        raise ConfigError(f"model config {path} cannot be read as JSON ({type(err).__name__}: {err})") from None
    if not isinstance(data, dict):
        raise ConfigError(f"model config {path} must hold a JSON object, got {type(data).__name__}")
    if "model_cfg" in data and not isinstance(data["model_cfg"], dict):
        raise ConfigError(f"model config {path}: model_cfg must be an object")
    return data


def _asset_dir(name: str) -> Path | None:
    for candidate in (ASSETS_DIR / name, Path(name)):
        if candidate.is_dir() and (candidate / "open_clip_config.json").is_file():
            return candidate
    return None


def _resolve_asset(folder: Path, name: str, pretrained: str | None) -> BackboneSource:
    cfg = _read_model_config(folder / "open_clip_config.json")
    weights = None
    if pretrained not in _NO_WEIGHTS:
        weights = folder / f"{pretrained}.safetensors"
        if not weights.is_file():
            weights = Path(pretrained)
        if not weights.is_file():
            tags = sorted(p.stem for p in folder.glob("*.safetensors"))
            raise ConfigError(f"backbone {name!r}: pretrained {pretrained!r} is neither a tag of {folder} "
                              f"(available: {tags}) nor a weights file")
    if "model_cfg" not in cfg:
        raise ConfigError(f"model config {folder / 'open_clip_config.json'} has no model_cfg")
    if weights is not None:
        check_weights_file(weights)
    return BackboneSource(name, None if weights is None else str(pretrained), cfg["model_cfg"],
                          cfg.get("preprocess_cfg", {}), weights)


def check_weights_file(path: Path) -> None:
    """A ``.safetensors`` weights file whose header does not parse or does not cover the file (truncated, not a
    safetensors file) is a :class:`ConfigError` naming it, when the config is resolved rather than in every run.
    Reading the header costs microseconds; other formats are checked when loaded."""
    path = Path(path)
    if path.suffix == ".safetensors":
        _check_safetensors(str(path), file_stamp(path))


@functools.lru_cache(maxsize=64)
def _check_safetensors(path: str, stamp: str) -> None:  # ``stamp``: a rewritten file is checked again
    from safetensors import SafetensorError, safe_open
    try:
        with safe_open(path, framework="pt") as handle:
            handle.keys()
    except (SafetensorError, OSError) as err:
        raise ConfigError(f"weights file {path} is damaged or not a safetensors file ({err})") from None


def resolve_backbone(name: str, pretrained: str | None) -> BackboneSource:
    """Validate a (backbone, pretrained) pair and return its canonical form. Raises :class:`ConfigError`."""
    if not isinstance(name, str) or not name:
        raise ConfigError(f"backbone must be a non-empty string, got {name!r}")
    if name.startswith(("local-dir:", "hf-hub:")):
        return BackboneSource(name, None)
    folder = _asset_dir(name)
    if folder is not None:
        return _resolve_asset(folder, name, pretrained)
    if name.endswith(".json"):
        path = Path(name)
        if not path.is_file():
            raise ConfigError(f"backbone model config {name!r} does not exist")
        weights = None if pretrained in _NO_WEIGHTS else Path(pretrained)
        if weights is not None and not weights.is_file():
            raise ConfigError(f"backbone {name!r}: pretrained weights file {pretrained!r} does not exist")
        if weights is not None:
            check_weights_file(weights)
        return BackboneSource(path.stem, str(pretrained) if weights else None, _read_model_config(path), {},
                              weights)
    arch = canonical_arch(name)
    known = openclip_catalog.known_models()  # read without importing open_clip where it can be
    if arch not in known:
        import difflib
        close = difflib.get_close_matches(arch, known, n=3)
        raise ConfigError(f"unknown backbone {name!r}" + (f"; did you mean {close}?" if close else ""))
    if pretrained in _NO_WEIGHTS:
        return BackboneSource(arch, None)
    if Path(str(pretrained)).is_file():
        return BackboneSource(arch, str(pretrained))
    return BackboneSource(_quick_gelu_arch(arch, name, str(pretrained)), str(pretrained))


def backbone_shape(src: BackboneSource) -> BackboneShape | None:
    """The tower sizes of a resolved backbone, read from its model config without building it (a bundled or
    config-file backbone's config, a ``local-dir:`` folder's ``open_clip_config.json``, open_clip's config of an
    architecture); None where no config can be read (``hf-hub:``) or it is not a plain transformer."""
    cfg = src.model_cfg
    if cfg is None and src.name.startswith("local-dir:"):
        path = Path(src.name[len("local-dir:"):]) / "open_clip_config.json"
        try:
            cfg = json.loads(path.read_text()).get("model_cfg")
        except (OSError, ValueError, AttributeError):
            cfg = None
    elif cfg is None and not src.name.startswith("hf-hub:"):
        cfg = openclip_catalog.model_config(src.name)
    return BackboneShape.from_model_config(cfg)


def _quick_gelu_arch(arch: str, given: str, tag: str) -> str:
    """The architecture to build for a tag: QuickGELU tags force ``-quickgelu``; explicit mismatches raise."""
    wants_quick = _tag_quick_gelu(arch, tag)
    if wants_quick is None:
        tags = openclip_catalog.pretrained_tags(arch)
        raise ConfigError(f"backbone {given!r}: unknown pretrained tag {tag!r} (known: {tags}) and not a file")
    is_quick = arch.endswith("-quickgelu")
    if wants_quick and not is_quick:
        quick = arch + "-quickgelu"
        if quick not in openclip_catalog.known_models():
            raise ConfigError(f"backbone {given!r}: tag {tag!r} was trained with QuickGELU but no {quick!r} "
                              "config exists")
        return quick
    if is_quick and not wants_quick:
        raise ConfigError(f"backbone {given!r} uses QuickGELU but pretrained tag {tag!r} was trained with GELU; "
                          f"use {arch[:-len('-quickgelu')]!r}")
    return arch


def _build_model(src: BackboneSource) -> tuple[nn.Module, dict[str, Any]]:
    import open_clip  # here, not at module level: methods import this module, resolving a config needs no open_clip
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(_RANDOM_INIT_SEED)
        if src.model_cfg is not None:
            model = _model_from_cfg(src)
            preprocess = dict(src.preprocess_cfg or {})
        else:
            with warnings.catch_warnings():
                warnings.filterwarnings("error", message=".*QuickGELU mismatch.*")
                try:
                    # staged weights (frozen_clip.weights) where the environment names their cache
                    model = open_clip.create_model(src.name, pretrained=src.pretrained,
                                                   cache_dir=os.environ.get(WEIGHTS_CACHE_ENV) or None)
                except UserWarning as err:
                    raise ConfigError(f"backbone {src.name!r} with {src.pretrained!r}: {err}") from err
                except RuntimeError as err:
                    raise ConfigError(f"backbone {src.name!r}: could not load pretrained weights "
                                      f"{src.pretrained!r}: {err}") from err
            preprocess = dict(open_clip.get_model_preprocess_cfg(model))
    return model.float(), preprocess


def _model_from_cfg(src: BackboneSource) -> nn.Module:
    import open_clip
    cfg = copy.deepcopy(src.model_cfg)
    quick_gelu = bool(cfg.pop("quick_gelu", False))
    cfg.pop("custom_text", None)
    model = open_clip.model.CLIP(**cfg, quick_gelu=quick_gelu)
    if src.weights_file is not None:
        state = _read_state_dict(src.weights_file)
        try:
            model.load_state_dict({k: v.float() for k, v in state.items()}, strict=True)
        except RuntimeError as err:
            raise ConfigError(f"weights {src.weights_file} do not match backbone {src.name!r}: {err}") from err
    return model


@functools.lru_cache(maxsize=None)
def _tokenizer(name: str | None, context_length: int) -> Any:
    """open_clip's tokenizer of backbone ``name`` (None: a config file's model, CLIP's BPE at ``context_length``).

    One per process: building the BPE tables takes ~70 ms, paid by every run of a grid executed in one process
    otherwise. Tokenizers hold no per-call state (the BPE memo only grows), so runs can share one.
    """
    import open_clip
    if name is None:
        return open_clip.tokenizer.SimpleTokenizer(context_length=context_length)
    return open_clip.get_tokenizer(name)


def _read_state_dict(path: Path) -> dict[str, torch.Tensor]:
    if path.suffix == ".safetensors":
        from safetensors.torch import load_file
        return load_file(str(path))
    state = torch.load(str(path), map_location="cpu", weights_only=True)
    return state.get("state_dict", state)


class FrozenCLIP(nn.Module):
    """A frozen open_clip model with tapped tower forwards and exact text-context truncation.

    Methods get features through :meth:`encode_image`, :meth:`encode_text` and :meth:`encode_text_embeddings`,
    each accepting a :class:`~frozen_clip.taps.Taps`. Nothing here names a method.
    """

    def __init__(self, model: nn.Module, source: BackboneSource, preprocess: dict[str, Any]) -> None:
        super().__init__()
        self.model = model
        self.source = source
        for p in self.model.parameters():
            p.requires_grad_(False)
        self.model.eval()
        self.text = TextTower(model)
        self.tokenizer = _tokenizer(source.name if source.model_cfg is None else None, self.text.context_length)
        size = preprocess.get("size", getattr(model.visual, "image_size", 224))
        self.image_size: int = int(size[0] if isinstance(size, (tuple, list)) else size)
        self.mean: tuple[float, ...] = tuple(preprocess.get("mean", CLIP_MEAN))
        self.std: tuple[float, ...] = tuple(preprocess.get("std", CLIP_STD))

    # -- identity -------------------------------------------------------------------------------------------------
    @property
    def name(self) -> str:
        """Canonical backbone name (recorded in run records and cache keys)."""
        return self.source.name

    @property
    def pretrained(self) -> str | None:
        """Pretrained tag or weights path (None = random init)."""
        return self.source.pretrained

    def weights_files(self) -> list[Path]:
        """The local files the weights were loaded from (a bundled backbone's weights, a weights file, the files of
        a ``local-dir:`` folder); empty for open_clip's named tags, which name fixed released weights."""
        src = self.source
        if src.weights_file is not None:
            return [Path(src.weights_file)]
        if src.pretrained and Path(src.pretrained).is_file():
            return [Path(src.pretrained)]
        if src.name.startswith("local-dir:"):
            return sorted(p for p in Path(src.name[len("local-dir:"):]).iterdir() if p.is_file())
        return []

    @property
    def weights_stamp(self) -> str | None:
        """:func:`~frozen_clip.stamps.file_stamp` of :meth:`weights_files` (None when there are none). Caches of this
        model's features are keyed by it, so replacing a weights file recomputes them."""
        files = self.weights_files()
        return ";".join(f"{p.name}:{file_stamp(p)}" for p in files) if files else None

    def train(self, mode: bool = True) -> "FrozenCLIP":
        """The frozen backbone always stays in eval mode."""
        super().train(False)
        return self

    # -- shapes -----------------------------------------------------------------------------------------------------

    @property
    def visual(self) -> nn.Module:
        return self.model.visual

    @property
    def embed_dim(self) -> int:
        """Dimension of the joint embedding space."""
        proj = getattr(self.model.visual, "proj", None)
        if isinstance(proj, torch.Tensor):
            return int(proj.shape[1])
        return int(self.model.visual.output_dim)

    @property
    def dtype(self) -> torch.dtype:
        return self.text.token_embedding.weight.dtype

    @property
    def device(self) -> torch.device:
        return self.text.token_embedding.weight.device

    def logit_scale(self) -> torch.Tensor:
        """``exp(logit_scale)`` of the frozen model (100 for the OpenAI weights)."""
        return self.model.logit_scale.exp()

    # -- image ------------------------------------------------------------------------------------------------------
    def encode_image(self, images: torch.Tensor, taps: Taps | None = None) -> torch.Tensor:
        """Pooled, projected, un-normalised image features ``[B, E]`` (images cast to the model's dtype, as CLIP's
        ``encode_image`` does: a pure-fp16 model takes fp32 pixels)."""
        images = images.to(self.dtype)
        if taps is None or not taps.has_tower("visual"):
            return self.model.encode_image(images)
        return visual_forward(self.model.visual, images, taps)

    # -- text -------------------------------------------------------------------------------------------------------
    def tokenize(self, texts: list[str]) -> torch.Tensor:
        """Token ids ``[N, context_length]`` (SOT ... EOT, zero padded), truncated like ``clip.tokenize(truncate=True)``."""
        return self.tokenizer(texts).to(self.device)

    @staticmethod
    def context_needed(ids: torch.Tensor) -> int:
        """1 + the largest EOT position (EOT is the largest id): the exact truncation length for ``ids``."""
        return int(ids.argmax(dim=-1).max().item()) + 1

    def truncate(self, ids: torch.Tensor, length: int | None = None) -> torch.Tensor:
        """``ids[:, :L]`` with L = :meth:`context_needed` (or ``length``); exact for causal towers."""
        length = self.context_needed(ids) if length is None else length
        if length < self.context_needed(ids):
            raise ValueError(f"cannot truncate to {length} tokens: an EOT sits at {self.context_needed(ids) - 1}")
        return ids[:, :length]

    def token_embedding(self, ids: torch.Tensor) -> torch.Tensor:
        """Frozen token embeddings ``[N, L, D]``."""
        return self.text.token_embedding(ids)

    def encode_text(self, ids: torch.Tensor, taps: Taps | None = None, truncate: bool = True,
                    buckets: int = 1, share_prefix: bool = False) -> torch.Tensor:
        """Un-normalised text features ``[N, E]`` from token ids; truncated to the longest prompt when ``truncate``.

        ``buckets > 1`` (with ``truncate``): the prompts are grouped by length into at most that many batches, each
        truncated to its own longest prompt (:func:`length_buckets`), so short prompts do not pay for the padding
        of long ones. Exact for the same reason as truncation (causal tower), provided every tap acts on each
        prompt independently (no statistics over the batch, no per-batch state); the taps run once per bucket.

        ``share_prefix`` (with ``truncate``): the token positions all prompts share (e.g. ``[SOS] a photo of a``)
        run once, the rest of each prompt attends to them (:mod:`frozen_clip.shared_prefix`). Exact provided every
        tap acts on each token alone; ignored where nothing is shared or the tower or taps do not allow it.
        """
        if not self.text.supports_embedding_path():
            if taps:
                raise ConfigError(f"text taps are not supported for backbone {self.name!r}")
            return self.model.encode_text(ids)
        taps = taps or Taps()
        if truncate and share_prefix and ids.shape[0] > 1:
            n_prefix = common_prefix_length(ids)
            if n_prefix > 0 and tower_can_share(self.text) and taps_are_per_token(taps):
                return self._encode_shared_prefix(ids, taps, max(buckets, 1), n_prefix)

        def run(part: torch.Tensor) -> torch.Tensor:
            return self.text.forward_embeddings(self.token_embedding(part), part, taps)
        if not truncate:
            return run(ids)
        if buckets <= 1 or ids.shape[0] < 2:
            return run(self.truncate(ids))
        groups = length_buckets(ids.argmax(dim=-1) + 1, buckets)
        feats = [run(ids[rows, :length]) for rows, length in groups]
        return _in_input_order(feats, groups)

    def _encode_shared_prefix(self, ids: torch.Tensor, taps: Taps, buckets: int, n_prefix: int) -> torch.Tensor:
        """:meth:`encode_text` with the first ``n_prefix`` positions run once, the rest in length buckets."""
        eot = ids.argmax(dim=-1)
        groups = length_buckets(eot + 1, buckets)
        suffixes = [self.token_embedding(ids[rows, n_prefix:length]) for rows, length in groups]
        hidden = shared_prefix_hidden(self.text, self.token_embedding(ids[:1, :n_prefix]), suffixes, taps)
        feats = [self.text.project(states[torch.arange(len(rows), device=states.device), eot[rows] - n_prefix])
                 for (rows, _), states in zip(groups, hidden)]
        return _in_input_order(feats, groups)

    def encode_text_embeddings(self, embeddings: torch.Tensor, ids: torch.Tensor,
                               taps: Taps | None = None) -> torch.Tensor:
        """Text features from (possibly learned) token embeddings ``[N, L, D]``; ``ids`` ``[N, L]`` locate the EOT."""
        return self.text.forward_embeddings(embeddings, ids, taps or Taps())


def _in_input_order(feats: list[torch.Tensor], groups: list[tuple[torch.Tensor, int]]) -> torch.Tensor:
    """Concatenate per-group features and put the rows back in the input order (groups from :func:`length_buckets`)."""
    order = torch.cat([rows for rows, _ in groups])
    return torch.cat(feats)[torch.argsort(order)]


def length_buckets(lengths: torch.Tensor, max_buckets: int) -> list[tuple[torch.Tensor, int]]:
    """Split prompts into at most ``max_buckets`` groups of similar length, minimising the padded positions.

    ``lengths``: tokens each prompt needs (EOT position + 1). Returns ``(row indices, bucket length)`` per group,
    longest first. The groups are contiguous ranges of the distinct lengths (there are few: at most the context
    length), and the cut points come from a small dynamic programme over them, so a bucket is only opened where
    it removes padding.
    """
    values, counts = torch.unique(lengths.cpu(), sorted=True, return_counts=True)
    vals, cnts = values.tolist(), counts.tolist()
    m = len(vals)
    prefix = [0]
    for c in cnts:
        prefix.append(prefix[-1] + c)
    # best[k][j]: fewest padded positions covering distinct lengths [0, j) with k buckets; cut[k][j]: last start
    inf = float("inf")
    best = [[inf] * (m + 1) for _ in range(max_buckets + 1)]
    cut = [[0] * (m + 1) for _ in range(max_buckets + 1)]
    best[0][0] = 0
    for k in range(1, max_buckets + 1):
        for j in range(1, m + 1):
            for i in range(j):
                cost = best[k - 1][i] + (prefix[j] - prefix[i]) * vals[j - 1]
                if cost < best[k][j]:
                    best[k][j], cut[k][j] = cost, i
    k = min(range(1, max_buckets + 1), key=lambda n: (best[n][m], n))
    groups, j = [], m
    while j > 0:
        i = cut[k][j]
        lo, hi = vals[i], vals[j - 1]
        rows = ((lengths >= lo) & (lengths <= hi)).nonzero().flatten()
        groups.append((rows, int(hi)))
        j, k = i, k - 1
    return groups


def load_backbone(name: str, pretrained: str | None, device: str | torch.device = "cpu") -> FrozenCLIP:
    """Resolve, build, load and freeze a backbone. Raises :class:`ConfigError` on any bad name or file."""
    source = resolve_backbone(name, pretrained)
    model, preprocess = _build_model(source)
    return FrozenCLIP(model, source, preprocess).to(device)
