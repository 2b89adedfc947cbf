"""Typed construction of frozen config dataclasses from untyped mappings (YAML, command line).

Unknown keys, wrong types and values outside a ``Literal`` are rejected with a :class:`ConfigError` that names the
source (file, command line) and the dotted key. Ints are accepted where floats are expected; nothing else is
coerced silently.
"""

from __future__ import annotations

import dataclasses
import difflib
import functools
import types
import typing
from typing import Any, Literal, Mapping, TypeVar, Union, get_args, get_origin, get_type_hints

from frozen_clip.errors import ConfigError

T = TypeVar("T")


def suggest(name: str, options: typing.Iterable[str]) -> str:
    """``"; did you mean 'x'?"`` for a close match, else an empty string."""
    close = difflib.get_close_matches(name, list(options), n=1)
    return f"; did you mean {close[0]!r}?" if close else ""


def _type_name(tp: Any) -> str:
    return getattr(tp, "__name__", None) or str(tp).replace("typing.", "")


def check_value(value: Any, tp: Any, where: str) -> Any:
    """Return ``value`` converted to ``tp`` (tuples from lists, floats from ints) or raise :class:`ConfigError`."""
    origin = get_origin(tp)
    if tp is Any:
        return value
    if origin in (Union, types.UnionType):
        errors = []
        for option in get_args(tp):
            try:
                return check_value(value, option, where)
            except ConfigError as err:
                errors.append(str(err))
        raise ConfigError(f"{where}: {value!r} is not a valid {_type_name(tp)}")
    if tp is type(None):
        if value is None:
            return None
        raise ConfigError(f"{where}: expected null, got {value!r}")
    if origin is Literal:
        if any(value == a and type(value) is type(a) for a in get_args(tp)):
            return value
        raise ConfigError(f"{where}: {value!r} is not one of {list(get_args(tp))}")
    if origin in (tuple, list):
        if not isinstance(value, (list, tuple)):
            raise ConfigError(f"{where}: expected a list, got {type(value).__name__} {value!r}")
        args = get_args(tp)
        item_tp = args[0] if args else Any
        items = [check_value(v, item_tp, f"{where}[{i}]") for i, v in enumerate(value)]
        return tuple(items) if origin is tuple else items
    if origin is dict or tp is dict:
        if not isinstance(value, Mapping):
            raise ConfigError(f"{where}: expected a mapping, got {type(value).__name__}")
        return dict(value)
    if tp is bool:
        if isinstance(value, bool):
            return value
        raise ConfigError(f"{where}: expected true/false, got {value!r}")
    if tp is int:
        if isinstance(value, int) and not isinstance(value, bool):
            return value
        raise ConfigError(f"{where}: expected an integer, got {value!r}")
    if tp is float:
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return float(value)
        raise ConfigError(f"{where}: expected a number, got {value!r}")
    if tp is str:
        if isinstance(value, str):
            return value
        raise ConfigError(f"{where}: expected a string, got {value!r}")
    raise ConfigError(f"{where}: unsupported config type {tp!r}")


@functools.lru_cache(maxsize=None)
def _schema(cls: type) -> tuple[dict[str, Any], frozenset[str]]:
    """``(type hints, init fields)`` of a dataclass: evaluating string annotations is the costly part of
    :func:`build`, and a class's annotations do not change (a grid of 1,000 runs builds 4,000 configs)."""
    return get_type_hints(cls), frozenset(f.name for f in dataclasses.fields(cls) if f.init)


def build(cls: type[T], values: Mapping[str, Any], where: str, prefix: str = "") -> T:
    """Instantiate the frozen dataclass ``cls`` from ``values`` with full validation."""
    hints, fields = _schema(cls)
    kwargs = {}
    for key, value in values.items():
        dotted = f"{prefix}{key}"
        if key not in fields:
            raise ConfigError(f"{where}: unknown key {dotted!r}{suggest(key, fields)}")
        kwargs[key] = check_value(value, hints[key], f"{where}: {dotted}")
    try:
        obj = cls(**kwargs)
    except (TypeError, ValueError) as err:
        raise ConfigError(f"{where}: {prefix.rstrip('.') or cls.__name__}: {err}") from err
    validate = getattr(obj, "validate", None)
    if callable(validate):
        try:
            validate()
        except ValueError as err:
            raise ConfigError(f"{where}: {prefix.rstrip('.') or cls.__name__}: {err}") from err
    return obj


def _json_form(v: Any) -> Any:
    if isinstance(v, (tuple, list)):
        return [_json_form(x) for x in v]
    if isinstance(v, dict):
        return {k: _json_form(x) for k, x in v.items()}
    return v


def to_dict_values(values: Mapping[str, Any]) -> dict[str, Any]:
    """A mapping of option values in JSON-friendly form (tuples become lists), as :func:`to_dict` writes them."""
    return {k: _json_form(v) for k, v in values.items()}


def to_dict(obj: Any) -> dict[str, Any]:
    """A dataclass as a JSON-friendly dict (tuples become lists)."""
    return to_dict_values({f.name: getattr(obj, f.name) for f in dataclasses.fields(obj)})
