"""Which config keys are speed switches, read from the suite's source without importing it (no torch).

The analysis must tell a result-changing setting from an exact speed switch (left out of the run id by
:func:`jobs.config.run_id_of`): the ``fast`` section's result-changing switches and their defaults (from the
torch-free :mod:`frozen_clip.fastconfig`), and each method config's fields and ``UNHASHED_FIELDS``. Records carry
the latter in their method card; for a record of an older layout, without a card, this module reads them from the
method's source with :mod:`ast` (importing a method imports torch): the dataclasses hold literal defaults and the
tuples are literals. Where the source holds something else (a computed default, a base class imported from outside
the suite), it says it does not know.
"""

from __future__ import annotations

import ast
import importlib.util
from functools import lru_cache
from pathlib import Path
from typing import Any

_NOT_LITERAL = object()


class _NeedsImport(Exception):
    """The source does not say it literally: import the module instead."""


@lru_cache(maxsize=None)
def _module_ast(module: str) -> ast.Module:
    spec = importlib.util.find_spec(module)
    if spec is None or not spec.origin or not spec.origin.endswith(".py"):
        raise _NeedsImport(module)
    return ast.parse(Path(spec.origin).read_text())


def _literal(node: ast.AST | None) -> Any:
    try:
        return ast.literal_eval(node) if node is not None else _NOT_LITERAL
    except ValueError:
        return _NOT_LITERAL


def _class(module: str, name: str) -> tuple[str, ast.ClassDef]:
    """The class definition ``name`` as seen from ``module`` (defined there, or imported there with ``from``)."""
    tree = _module_ast(module)
    for node in tree.body:
        if isinstance(node, ast.ClassDef) and node.name == name:
            return module, node
    for node in tree.body:
        if isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            for alias in node.names:
                if (alias.asname or alias.name) == name:
                    return _class(node.module, alias.name)
    raise _NeedsImport(f"{module}:{name}")


def _is_classvar(annotation: ast.AST) -> bool:
    text = ast.unparse(annotation)
    return text.startswith(("ClassVar", "typing.ClassVar"))


def _dataclass_facts(module: str, name: str) -> tuple[dict[str, Any], dict[str, Any]]:
    """``(fields -> literal default, class attributes -> literal value)`` of a dataclass, bases included."""
    module, node = _class(module, name)
    fields: dict[str, Any] = {}
    attrs: dict[str, Any] = {}
    for base in node.bases:
        if not isinstance(base, ast.Name):
            raise _NeedsImport(f"{module}:{name}")
        base_fields, base_attrs = _dataclass_facts(module, base.id)
        fields.update(base_fields)
        attrs.update(base_attrs)
    for stmt in node.body:
        if isinstance(stmt, ast.AnnAssign) and isinstance(stmt.target, ast.Name):
            if _is_classvar(stmt.annotation):
                attrs[stmt.target.id] = _literal(stmt.value)
            else:
                fields[stmt.target.id] = _literal(stmt.value) if stmt.value is not None else None
        elif isinstance(stmt, ast.Assign):
            for target in stmt.targets:
                if isinstance(target, ast.Name):
                    attrs[target.id] = _literal(stmt.value)
    return fields, attrs


@lru_cache(maxsize=None)
def inexact_fast_defaults() -> dict[str, Any]:
    """The result-changing ``fast`` switches with their defaults (:func:`frozen_clip.fastconfig.inexact_fast_defaults`,
    a torch-free module)."""
    from frozen_clip.fastconfig import inexact_fast_defaults as defaults
    return defaults()


@lru_cache(maxsize=None)
def method_config(name: str) -> tuple[frozenset[str], tuple[str, ...]] | None:
    """``(fields, UNHASHED_FIELDS)`` of registered method ``name``'s config dataclass, read from its source; None
    where the source does not say them literally (the caller then knows nothing, and treats every option as one
    that changes results)."""
    from jobs.registry import METHODS
    module, cls = METHODS.target(name).split(":")
    try:
        _, node = _class(module, cls)
        config = [s.value for s in node.body if isinstance(s, ast.Assign)
                  and any(isinstance(t, ast.Name) and t.id == "Config" for t in s.targets)]
        if len(config) != 1 or not isinstance(config[0], ast.Name):
            return None
        fields, attrs = _dataclass_facts(module, config[0].id)
        unhashed = attrs.get("UNHASHED_FIELDS", ())
        return None if unhashed is _NOT_LITERAL else (frozenset(fields), tuple(unhashed))
    except _NeedsImport:
        return None
