"""YAML from other hands (policy uploads, PCR files), with its shape bounded while it is
composed, before any object is built.

PyYAML composes nodes recursively, so a document of a few thousand brackets ends in
RecursionError; and an alias repeats a whole subtree, so a few hundred bytes of aliases of
aliases stand for billions of nodes (an alias bomb) that any walk, repr or error message then
expands. No document this project reads needs either, so nesting past a caller's bound and
aliases at all are refused with `ShapeError`, a yaml.YAMLError: a caller's existing handler
for YAML that does not parse turns it into its own typed error.
"""

from __future__ import annotations

from typing import Any

import yaml
from yaml.composer import Composer
from yaml.parser import Parser


class ShapeError(yaml.YAMLError):
    pass


class _Bounded(Parser, Composer):
    max_depth = 0
    _depth = 0

    def compose_node(self, parent: yaml.Node | None, index: int) -> yaml.Node | None:
        if self.check_event(yaml.AliasEvent):
            raise ShapeError(f"line {self._line()}: YAML aliases (*name) are not allowed")
        self._depth += 1
        try:
            if self._depth > self.max_depth:
                raise ShapeError(f"line {self._line()}: nested deeper than {self.max_depth} levels")
            return super().compose_node(parent, index)
        finally:
            self._depth -= 1

    def _line(self) -> int:
        line: int = self.peek_event().start_mark.line + 1  # type: ignore[no-untyped-call]
        return line


class SafeLoader(_Bounded, yaml.SafeLoader):
    """yaml.safe_load's loader, bounded."""


class BaseLoader(_Bounded, yaml.BaseLoader):
    """yaml.BaseLoader (every scalar a string), bounded."""


def load(text: str | bytes, loader: type[SafeLoader] | type[BaseLoader], max_depth: int) -> Any:
    """The single document in `text`; yaml.YAMLError (ShapeError for the bounds) if it is not one."""
    instance = loader(text)
    instance.max_depth = max_depth
    try:
        return instance.get_single_data()
    finally:
        instance.dispose()
