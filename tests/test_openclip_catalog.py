"""open_clip's catalogue is read once and then resolves backbone names without importing open_clip.

Resolving a config is what ``--dry-run`` and every launch do for each run; the catalogue must say exactly what
open_clip says (names, tags, QuickGELU flags, tag normalisation) and must never go stale when open_clip changes.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import open_clip
import pytest

from frozen_clip import openclip_catalog
from frozen_clip.backbone import resolve_backbone
from frozen_clip.errors import ConfigError

REPO = Path(__file__).resolve().parent.parent
# importing open_clip fails; finding it (importlib.util.find_spec, which imports nothing) still works
NO_OPEN_CLIP_IMPORT = """import builtins
_import = builtins.__import__


def _guarded(name, *args, **kwargs):
    if name.split(".")[0] == "open_clip":
        raise ImportError("importing open_clip is blocked in this test")
    return _import(name, *args, **kwargs)


builtins.__import__ = _guarded
"""


@pytest.fixture()
def cache(tmp_path, monkeypatch) -> Path:
    monkeypatch.setenv(openclip_catalog.CACHE_ENV, str(tmp_path / "cache"))
    openclip_catalog.catalog.cache_clear()
    yield tmp_path / "cache"
    openclip_catalog.catalog.cache_clear()


def test_the_catalogue_is_open_clips(cache):
    assert openclip_catalog.known_models() == open_clip.list_models()
    for arch, tag in open_clip.list_pretrained():
        expected = bool(open_clip.pretrained.get_pretrained_cfg(arch, tag).get("quick_gelu", False))
        assert openclip_catalog.tag_quick_gelu(arch, tag) is expected, (arch, tag)
    assert openclip_catalog.pretrained_tags("ViT-B-16") == open_clip.list_pretrained_tags_by_model("ViT-B-16")
    # open_clip's tag normalisation (lower case, '-' -> '_') and unknown tags
    tag = open_clip.list_pretrained_tags_by_model("ViT-B-32")[0]
    assert openclip_catalog.tag_quick_gelu("ViT-B-32", tag.upper().replace("_", "-")) is not None
    assert openclip_catalog.tag_quick_gelu("ViT-B-32", "no-such-tag") is None


def test_resolution_reads_the_cache_file_without_open_clip(cache, tmp_path):
    first = resolve_backbone("ViT-B/16", "openai")
    assert first.name == "ViT-B-16-quickgelu"  # the openai tag was trained with QuickGELU
    files = list((cache / "open_clip-catalog").glob("*.json"))
    assert len(files) == 1
    blocker = tmp_path / "blocker"
    blocker.mkdir()
    (blocker / "sitecustomize.py").write_text(NO_OPEN_CLIP_IMPORT)
    code = ("from frozen_clip.backbone import resolve_backbone; import sys; "
            "print(resolve_backbone('ViT-B/16', 'openai').name, 'open_clip' in sys.modules)")
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(blocker), str(REPO)]),
           openclip_catalog.CACHE_ENV: str(cache)}
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.split() == ["ViT-B-16-quickgelu", "False"]


def test_a_damaged_or_foreign_cache_file_is_read_again(cache):
    openclip_catalog.catalog()
    path = next((cache / "open_clip-catalog").glob("*.json"))
    path.write_text("{not json")
    openclip_catalog.catalog.cache_clear()
    assert openclip_catalog.known_models() == open_clip.list_models()
    assert json.loads(path.read_text())["models"] == open_clip.list_models()  # rewritten whole


def test_the_cache_file_is_named_by_open_clips_sources(cache, tmp_path, monkeypatch):
    """Another open_clip (here: a copy with one model config more) hashes to another file."""
    package = openclip_catalog._package_dir()
    assert package is not None
    copy = tmp_path / "open_clip"
    (copy / "model_configs").mkdir(parents=True)
    for name in ("version.py", "pretrained.py"):
        (copy / name).write_bytes((package / name).read_bytes())
    for path in (package / "model_configs").glob("*.json"):
        (copy / "model_configs" / path.name).write_bytes(path.read_bytes())
    before = openclip_catalog._source_hash(copy)
    assert before == openclip_catalog._source_hash(package)
    (copy / "model_configs" / "My-ViT.json").write_text(json.dumps({"embed_dim": 8, "vision_cfg": {}, "text_cfg": {}}))
    assert openclip_catalog._source_hash(copy) != before


def test_unknown_names_and_tags_are_config_errors(cache):
    with pytest.raises(ConfigError, match="did you mean"):
        resolve_backbone("ViT-B/61", "openai")
    with pytest.raises(ConfigError, match="unknown pretrained tag 'nope'"):
        resolve_backbone("ViT-B-16", "nope")
    with pytest.raises(ConfigError, match="trained with GELU"):
        resolve_backbone("ViT-B-32-quickgelu", "laion2b_s34b_b79k")


def test_an_unwritable_cache_costs_only_the_import(tmp_path, monkeypatch):
    target = tmp_path / "file-not-folder"
    target.write_text("")
    monkeypatch.setenv(openclip_catalog.CACHE_ENV, str(target))
    openclip_catalog.catalog.cache_clear()
    try:
        assert openclip_catalog.known_models() == open_clip.list_models()
    finally:
        openclip_catalog.catalog.cache_clear()
