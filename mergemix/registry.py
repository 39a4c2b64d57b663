"""Named implementations of one kind (model architectures, search back-ends, samplers, baselines, Lightning
strategies, benchmark sources): one pattern for every choice a config makes by name, with one error line."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from mergemix.errors import MergeMixError


class Registry(dict):
    """`@REGISTRY.register("name")` adds an implementation; `REGISTRY.get(name)` returns it or raises one line
    naming the choices: f"unknown {what} '{name}' (choose from a, b, c)"."""

    def __init__(self, what: str, entries: dict[str, Any] | None = None):
        super().__init__(entries or {})
        self.what = what

    def register(self, name: str) -> Callable[[Any], Any]:
        def add(obj):
            self[name] = obj
            return obj

        return add

    def get(self, name: str, context: str = "") -> Any:  # type: ignore[override]
        if name not in self:
            raise MergeMixError(f"{context}unknown {self.what} '{name}' (choose from {', '.join(self)})")
        return self[name]
