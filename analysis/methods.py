"""Method names for tables, read from the method contract (``frozen_clip/contract.py``), never listed here.

A record carries its method's card (display names of the method, its options and values, its names in the papers'
reported numbers); :func:`remember` is called for every loaded record, so tables name methods without importing
them, and so without torch. A method with no card in any record (a record of an older layout) is described by
importing its class when that is possible, and by its registry name otherwise. The order of methods in tables is
the order of registration in ``jobs/registry.py``.
"""

from __future__ import annotations

from typing import Any, Mapping

from jobs.registry import METHODS, method_card

_CARDS: dict[str, dict[str, Any]] = {}


def remember(card: Mapping[str, Any] | None) -> None:
    """Keep a method card read from a record (the newest card of a method wins)."""
    if isinstance(card, Mapping) and isinstance(card.get("name"), str):
        _CARDS[card["name"]] = dict(card)


def card_of(name: str) -> dict[str, Any] | None:
    """The card of method ``name``: from a record, else from its class, else None."""
    if name not in _CARDS and name in METHODS:
        try:
            _CARDS[name] = method_card(name)
        except ImportError:  # torch (or the method's own dependencies) unavailable: names fall back to keys
            return None
    return _CARDS.get(name)


def all_cards() -> list[dict[str, Any]]:
    """Cards of every registered method that can be described, in table order."""
    return [c for c in (card_of(n) for n in METHODS.in_order()) if c is not None]


def method_display(name: str) -> str:
    """Display name of a suite method (``heba`` -> ``HeBA``)."""
    found = card_of(name)
    return found["display"] if found else name


def method_rank(name: str) -> tuple[int, str]:
    """Sort key: the order of registration, unknown methods after it."""
    order = METHODS.in_order()
    return (order.index(name) if name in order else len(order), name)


NO_DEFAULT = object()
"""What :func:`option_default` returns for an option whose default no card states."""


def _option_entry(method: str, option: str) -> dict[str, Any]:
    return dict(((card_of(method) or {}).get("options") or {}).get(option) or {})


def option_display(method: str, option: str) -> str:
    """How tables name ``option`` of ``method`` (``bottleneck_ratio`` -> ``bottleneck ratio``)."""
    return _option_entry(method, option).get("display") or option.replace("_", " ")


def value_display(method: str, option: str, value: Any) -> str:
    """How tables name ``value`` of an option (``kaiming_all`` -> ``Kaiming (all)``), from the card's value names;
    unnamed values as written (lists as ``[2,3]``, whole floats without ``.0``, switches as on/off)."""
    named = _option_entry(method, option).get("values") or {}
    text = named.get(json_key(value))
    if text is not None:
        return text
    if isinstance(value, (list, tuple)):
        return "[" + ",".join(value_display(method, option, v) for v in value) + "]"
    if isinstance(value, bool):
        return "on" if value else "off"  # a switch: its table row reads "reconstruction off"
    if isinstance(value, float) and value.is_integer():
        return str(int(value))
    return str(value)


def option_default(method: str, option: str) -> Any:
    """The default of ``option`` as a record's config holds it (lists for tuples), from the card; a card written
    before cards carried defaults is replaced by the class's own card when the class can be imported, else
    :data:`NO_DEFAULT`."""
    entry = _option_entry(method, option)
    if "default" not in entry and entry and method in METHODS:
        try:
            _CARDS[method] = method_card(method)
        except ImportError:
            return NO_DEFAULT
        entry = _option_entry(method, option)
    return entry.get("default", NO_DEFAULT)


def default_kind(method: str, option: str) -> str:
    """Where the default of ``option`` comes from: ``official``, ``paper`` or ``suite`` ("" when unknown)."""
    return str(_option_entry(method, option).get("kind") or "")


def factor_groups(method: str) -> dict[str, tuple[str, ...]]:
    """The method's named factor groups (``heterogeneity`` -> visual and text adapter kinds)."""
    return {name: tuple(options) for name, options in ((card_of(method) or {}).get("factors") or {}).items()}


def json_key(value: Any) -> str:
    """A value as the card's value names key it (``True`` -> ``"true"``, ``4`` -> ``"4"``, tuples as lists); the
    same text for a value read from a record and from a class (``frozen_clip.contract._json_key``)."""
    import json
    if isinstance(value, str):
        return value
    if isinstance(value, float) and value.is_integer() and not isinstance(value, bool):
        value = int(value)  # pandas reads an int column with missing values as floats
    try:
        return json.dumps(list(value) if isinstance(value, tuple) else value)
    except TypeError:
        return str(value)


def is_exact_option(method: str, option: str) -> bool | None:
    """Whether ``option`` is an exact speed switch of ``method`` according to its card (None: no card, or no such
    option)."""
    found = card_of(method)
    entry = (found or {}).get("options", {}).get(option)
    return None if entry is None else bool(entry.get("exact"))


def paper_names() -> dict[str, tuple[str, dict[str, Any]]]:
    """Name in the papers' reported numbers -> (suite method, options identifying the variant), for every method
    that can be described."""
    out = {}
    for found in all_cards():
        for paper, options in found.get("paper_names", {}).items():
            out[paper] = (found["name"], dict(options))
    return out


def paper_method(name: str, options: Mapping[str, Any]) -> str | None:
    """The reference CSV's name of a suite run (``tip_adapter`` with ``finetune: true`` -> ``Tip-Adapter-F``)."""
    found = card_of(name)
    if not found:
        return None
    candidates = [(len(required), paper) for paper, required in found.get("paper_names", {}).items()
                  if all(options.get(k) == v for k, v in required.items())]
    return max(candidates)[1] if candidates else None


def run_display(row: Mapping[str, Any]) -> str:
    """Display name of the run in a flat record row (``method.name`` plus ``method.<option>`` columns): the name of
    a variant the method names itself (Tip-Adapter-F), else the method's display name."""
    name = row["method.name"]
    options = {k[len("method."):]: v for k, v in row.items() if str(k).startswith("method.")}
    paper = paper_method(name, options)
    found = card_of(name)
    if paper is not None and found and found.get("paper_names", {}).get(paper):
        return paper
    return method_display(name)


__all__ = ["remember", "card_of", "all_cards", "method_display", "method_rank", "is_exact_option", "paper_names",
           "paper_method", "run_display", "NO_DEFAULT", "option_display", "value_display", "option_default",
           "default_kind", "factor_groups", "json_key"]
