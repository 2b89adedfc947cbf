"""Raw run configs before resolution: ``key=value`` overrides, dotted keys and deep merges of nested mappings.

Standard library and YAML only (no torch): a grid is expanded into raw run configs with these alone
(:func:`jobs.grid.expand_grid`); :mod:`jobs.config` resolves them.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Mapping

from frozen_clip.errors import ConfigError


def parse_overrides(items: list[str], where: str = "command line") -> dict[str, Any]:
    """``["method.init=zero", "seed=1", "optim.lr=0.01"]`` -> nested dict; values parsed as YAML scalars/lists."""
    import yaml
    nested: dict[str, Any] = {}
    for item in items:
        if "=" not in item:
            raise ConfigError(f"{where}: override {item!r} must look like key=value")
        key, text = item.split("=", 1)
        try:
            value = yaml.safe_load(text) if text != "" else ""
        except yaml.YAMLError as err:
            raise ConfigError(f"{where}: override {key!r}: cannot parse {text!r}: {err}") from None
        set_dotted(nested, key, value, where)
    return nested


def set_dotted(target: dict[str, Any], key: str, value: Any, where: str) -> None:
    """Set ``a.b.c`` in a nested dict; ``method.x`` turns a string ``method`` into ``{"name": ...}``."""
    parts = key.split(".")
    node = target
    for part in parts[:-1]:
        child = node.get(part)
        if isinstance(child, str) and part == "method":
            child = {"name": child}
        elif child is None:
            child = {}
        elif not isinstance(child, dict):
            raise ConfigError(f"{where}: {key!r}: {part!r} is not a mapping")
        node[part] = child
        node = child
    last = parts[-1]
    if last == "method" and isinstance(value, str) and isinstance(node.get("method"), dict):
        node["method"] = {**node["method"], "name": value}
    else:
        node[last] = value


def merge(base: Mapping[str, Any], override: Mapping[str, Any]) -> dict[str, Any]:
    """Deep merge of nested config dicts (``override`` wins); string methods are promoted to mappings."""
    out = {k: (dict(v) if isinstance(v, Mapping) else v) for k, v in base.items()}
    for key, value in override.items():
        current = out.get(key)
        if key == "method":
            current = {"name": current} if isinstance(current, str) else current
            value = {"name": value} if isinstance(value, str) else value
            if isinstance(current, Mapping) and "name" in current and value.get("name", current["name"]) != current["name"]:
                current = {}  # another method: the base's options belong to the base's method
        if isinstance(current, Mapping) and isinstance(value, Mapping):
            out[key] = merge(current, value)
        else:
            out[key] = value
    return out


def read_yaml_mapping(path: Path, what: str, keys_hint: str = "") -> dict[str, Any]:
    """A YAML file holding a mapping (a grid file, a run config); :class:`ConfigError` naming ``what`` if not."""
    import yaml
    if not path.is_file():
        raise ConfigError(f"{what} {path} does not exist")
    try:
        data = yaml.safe_load(path.read_text())
    except yaml.YAMLError as err:
        raise ConfigError(f"{path}: not valid YAML: {err}") from None
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: a {what} must be a mapping{keys_hint}")
    return data
