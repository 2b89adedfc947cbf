"""Pretrained weights in a shared cache, for compute nodes without internet.

open_clip downloads an architecture's pretrained weights on first use (from the Hugging Face hub, or a URL). Compute
nodes of a cluster usually cannot: the weights are staged on the login node into a cache folder every node sees
(:func:`stage`, ``python -m jobs.stage_weights``), and jobs load them from there with the hub kept offline. A
backbone that is a local file or a suite asset needs nothing staged.

The cache folder reaches the backbone loader through the environment variable :data:`WEIGHTS_CACHE_ENV` (open_clip's
``cache_dir``); unset, open_clip's own caches are used (``~/.cache/huggingface``, ``~/.cache/clip``).
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

from frozen_clip import atomic
from frozen_clip.errors import ConfigError

WEIGHTS_CACHE_ENV = "FCS_WEIGHTS_CACHE"
STAGED_NAME = "STAGED.json"  # in the cache: which backbone's weights are which file (written by stage())


@dataclass(frozen=True)
class Download:
    """Where open_clip fetches one architecture's pretrained tag from (the hub preferred, as open_clip does)."""

    arch: str
    tag: str
    hf_repo: str | None  # Hugging Face repository, or None for a plain URL
    filename: str  # file in the repository, or the URL's file name
    url: str | None = None

    @property
    def label(self) -> str:
        return f"{self.arch} ({self.tag})"


def download_of(arch: str, tag: str | None) -> Download | None:
    """What ``arch`` with pretrained ``tag`` downloads; None when nothing is (a local file, a suite asset, no
    weights, a tag open_clip does not know)."""
    from frozen_clip.openclip_catalog import known_models
    if not tag or arch not in known_models():  # the suite's assets and files: no open_clip import (seconds) needed
        return None
    from open_clip.pretrained import get_pretrained_cfg, has_hf_hub
    cfg = get_pretrained_cfg(arch, tag)
    if not cfg or "file" in cfg:
        return None
    hub = cfg.get("hf_hub", "")
    if hub and has_hf_hub():
        repo, filename = os.path.split(hub)
        return Download(arch, tag, repo, filename or "open_clip_pytorch_model.bin")
    url = cfg.get("url", "")
    return Download(arch, tag, None, os.path.basename(url), url) if url else None


def cached_file(download: Download, cache_dir: Path | None) -> Path | None:
    """The weights file of ``download`` in ``cache_dir`` (None: open_clip's default caches), found without any
    network access; None when it is not there."""
    if download.hf_repo is not None:
        from huggingface_hub import try_to_load_from_cache
        found = try_to_load_from_cache(download.hf_repo, download.filename,
                                       cache_dir=str(cache_dir) if cache_dir else None)
        return Path(found) if isinstance(found, str) else None
    folder = Path(cache_dir) if cache_dir else Path("~/.cache/clip").expanduser()
    path = folder / download.filename
    return path if path.is_file() else None


def stage(download: Download, cache_dir: Path) -> Path:
    """Download the weights of ``download`` into ``cache_dir`` (online; a file already there is kept) and record it
    in ``cache_dir/STAGED.json``. :class:`ConfigError` when the download fails."""
    from open_clip.pretrained import download_pretrained, get_pretrained_cfg
    cache_dir.mkdir(parents=True, exist_ok=True)
    try:
        path = download_pretrained(get_pretrained_cfg(download.arch, download.tag), cache_dir=str(cache_dir))
    except Exception as err:  # noqa: BLE001 - network, hub and checksum errors all mean: not staged
        raise ConfigError(f"could not download the weights of {download.label} into {cache_dir}: "
                          f"{type(err).__name__}: {err}") from None
    if not path:
        raise ConfigError(f"open_clip has no download for {download.label}")
    record_staged(cache_dir, download, Path(path))
    return Path(path)


def record_staged(cache_dir: Path, download: Download, path: Path) -> None:
    """Add ``download`` -> ``path`` to the cache's ``STAGED.json`` (what was staged, and where)."""
    import json
    index = Path(cache_dir) / STAGED_NAME
    try:
        staged = json.loads(index.read_text())
    except (OSError, ValueError):
        staged = {}
    staged[download.label] = str(path)
    atomic.write_json(index, staged)


def missing_offline(downloads: list[Download], cache_dir: Path | None) -> list[Download]:
    """The downloads whose weights are not in ``cache_dir`` (what a job without internet could not load)."""
    return [download for download in downloads if cached_file(download, cache_dir) is None]
