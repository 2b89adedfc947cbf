"""A lazy name -> ``"module:Class"`` registry: listing names imports nothing, duplicates and typos fail loudly."""

from __future__ import annotations

import importlib
from typing import Any

from frozen_clip.configtools import suggest
from frozen_clip.errors import ConfigError


class Registry:
    """Maps names to import targets; the target module is imported on first :meth:`get`."""

    def __init__(self, kind: str, entries: dict[str, str] | None = None) -> None:
        self.kind = kind
        self._targets: dict[str, str] = {}
        self._loaded: dict[str, Any] = {}
        for name, target in (entries or {}).items():
            self.register(name, target)

    def register(self, name: str, target: str) -> None:
        """Add ``name`` -> ``"package.module:Attribute"``; a second registration of a name raises."""
        if name in self._targets:
            raise ValueError(f"{self.kind} {name!r} is already registered (as {self._targets[name]!r})")
        if ":" not in target:
            raise ValueError(f"{self.kind} {name!r}: target {target!r} must look like 'package.module:Attribute'")
        self._targets[name] = target

    def names(self) -> list[str]:
        """All registered names, sorted."""
        return sorted(self._targets)

    def target(self, name: str) -> str:
        """The ``"package.module:Attribute"`` registered as ``name`` (nothing imported)."""
        self.check(name)
        return self._targets[name]

    def __contains__(self, name: object) -> bool:
        return name in self._targets

    def check(self, name: str, where: str = "") -> None:
        """Raise :class:`ConfigError` for an unknown name, with a close-match suggestion."""
        if name not in self._targets:
            prefix = f"{where}: " if where else ""
            raise ConfigError(f"{prefix}unknown {self.kind} {name!r}{suggest(name, self._targets)}; "
                              f"known: {', '.join(self.names())}")

    def get(self, name: str) -> Any:
        """Import and return the registered object."""
        self.check(name)
        if name not in self._loaded:
            module_name, attribute = self._targets[name].split(":")
            self._loaded[name] = getattr(importlib.import_module(module_name), attribute)
        return self._loaded[name]
