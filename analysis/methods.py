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


__all__ = ["remember", "card_of", "all_cards", "method_display", "method_rank", "is_exact_option", "paper_names", "paper_method", "run_display"]
