"""Raw run configs before resolution: ``key=value`` overrides, dotted keys and deep merges of nested mappings.

Standard library and YAML only (no torch): a grid is expanded into raw run configs with these alone
(:func:`jobs.grid.expand_grid`); :mod:`jobs.config` resolves them.

YAML is read strictly (:func:`load_yaml`): a key given twice in one mapping is an error naming the file, the key and
both lines (PyYAML would keep the last silently), and numbers in exponent form without a dot (``1e-3``, ``5E-4``),
which YAML 1.2 reads as floats and PyYAML's YAML 1.1 rules read as strings, are floats.
"""

from __future__ import annotations

import functools
import re
from collections.abc import Mapping  # isinstance against typing.Mapping costs 5x more (grids of 10,000 runs)
from pathlib import Path
from typing import Any

from frozen_clip.errors import ConfigError

#: YAML 1.2 floats that YAML 1.1 reads as strings: an exponent without a dot in the mantissa (``1e-3``, ``+2E5``)
_EXPONENT_FLOAT = re.compile(r"^[-+]?[0-9][0-9_]*[eE][-+]?[0-9]+$")


@functools.lru_cache(maxsize=1)
def _strict_loader() -> type:
    import yaml

    class StrictLoader(yaml.SafeLoader):
        """SafeLoader that refuses duplicate keys and reads YAML 1.2 exponent floats."""

        def construct_mapping(self, node: Any, deep: bool = False) -> dict[Any, Any]:
            seen: dict[Any, int] = {}
            for key_node, _value in node.value:
                key = self.construct_object(key_node, deep=True)
                line = key_node.start_mark.line + 1
                if isinstance(key, (str, int, float, bool)) and key in seen:
                    raise ConfigError(f"{key_node.start_mark.name}: key {key!r} is given twice in one mapping "
                                      f"(lines {seen[key]} and {line}); YAML would keep only the last")
                seen[key] = line
            return super().construct_mapping(node, deep)

    StrictLoader.add_implicit_resolver("tag:yaml.org,2002:float", _EXPONENT_FLOAT, list("-+0123456789"))
    return StrictLoader


def load_yaml(text: str, name: str = "<text>") -> Any:
    """``text`` parsed as YAML, strictly (module docstring); ``name`` is the file the errors name."""
    loader = _strict_loader()(text)
    loader.name = name
    try:
        return loader.get_single_data()
    finally:
        loader.dispose()


def folder_name_problem(name: Any) -> str | None:
    """What is wrong with ``name`` as a grid or run ``name``, or None. A name is one folder under ``results_dir``:
    a non-empty string without path separators that does not start with a dot (``..`` would write outside
    ``results_dir``; the results folder's own files start with a dot)."""
    if not isinstance(name, str) or not name.strip():
        return f"must be a non-empty string (one folder under results_dir), got {name!r}"
    if "/" in name or "\\" in name or name.startswith(".") or "\0" in name:
        return (f"{name!r} must be one folder name under results_dir: no '/', '\\' or leading '.' (it must not "
                "write outside results_dir)")
    return None


def parse_overrides(items: list[str], where: str = "command line") -> dict[str, Any]:
    """``["method.init=zero", "seed=1", "optim.lr=0.01"]`` -> nested dict; values parsed as YAML scalars/lists."""
    import yaml
    nested: dict[str, Any] = {}
    for item in items:
        if "=" not in item:
            raise ConfigError(f"{where}: override {item!r} must look like key=value")
        key, text = item.split("=", 1)
        try:
            value = load_yaml(text, f"{where}: override {key!r}") if text != "" else ""
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
        data = load_yaml(path.read_text(), str(path))
    except yaml.YAMLError as err:
        raise ConfigError(f"{path}: not valid YAML: {err}") from None
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: a {what} must be a mapping{keys_hint}")
    return data
