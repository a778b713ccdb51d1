"""A small registry for things users extend (losses, importers, judges) and for internal alternatives (engines).

Entries may be objects or lazy ``"module:attr"`` strings, so registering costs no imports.
"""

from __future__ import annotations

import difflib
import importlib
from collections.abc import Callable
from typing import Any

from bpo.errors import BpoError


class Registry:
    def __init__(self, kind: str):
        self.kind = kind
        self._entries: dict[str, Any] = {}

    def register(self, name: str, target: Any = None) -> Callable:
        """Use as ``reg.register("name", "pkg.mod:attr")`` or as a decorator ``@reg.register("name")``."""
        if target is not None:
            self._entries[name] = target
            return target

        def deco(obj):
            self._entries[name] = obj
            return obj

        return deco

    def get(self, name: str) -> Any:
        if name not in self._entries:
            close = difflib.get_close_matches(name, list(self._entries), n=1)
            hint = f"; did you mean {close[0]!r}?" if close else ""
            raise BpoError(f"unknown {self.kind} {name!r}{hint} (known: {', '.join(sorted(self._entries))})")
        target = self._entries[name]
        if isinstance(target, str):
            module, _, attr = target.partition(":")
            target = getattr(importlib.import_module(module), attr)
            self._entries[name] = target
        return target

    def names(self) -> list[str]:
        return sorted(self._entries)

    def __contains__(self, name: str) -> bool:
        return name in self._entries
