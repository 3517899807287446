"""Parsing YAML that someone else wrote (agent files): safe tags only, no aliases, bounded size.

``yaml.safe_load`` builds only plain data, but it still expands aliases: a few hundred bytes of
nested anchors (the "billion laughs" shape) parse into a graph that, serialised, is tens of
megabytes. Agent files have no use for aliases, so :class:`NoAliasLoader` refuses the first one
(naming where it stands); anchors alone are harmless and allowed. :func:`document_size` then
bounds what was parsed, counting without expanding anything.
"""

from __future__ import annotations

from typing import Any

import yaml
from yaml.nodes import Node, ScalarNode


class AliasRefused(yaml.YAMLError):
    """A YAML alias (``*name``) in a document that may not have any.

    ``field``: dotted path of the value the alias stands for (``parameters.stop``; None at the
    top), ``anchor``: its name, ``line`` and ``column``: 1-based position in the file.
    """

    def __init__(self, field: str | None, anchor: str, line: int, column: int):
        super().__init__(f"YAML alias *{anchor} at line {line}, column {column}")
        self.field = field
        self.anchor = anchor
        self.line = line
        self.column = column


class NoAliasLoader(yaml.SafeLoader):
    """``yaml.SafeLoader`` that raises :class:`AliasRefused` at the first alias it meets."""

    def __init__(self, stream: str | bytes):
        super().__init__(stream)
        self._path: list[str] = []

    def compose_node(self, parent: Node | None, index: Any) -> Node | None:  # PyYAML's own signature
        """Compose as SafeLoader does, keeping the path of mapping keys and list positions."""
        part = index.value if isinstance(index, ScalarNode) else str(index) if isinstance(index, int) else None
        if part is not None:
            self._path.append(str(part))
        try:
            if self.check_event(yaml.AliasEvent):
                event = self.peek_event()  # type: ignore[no-untyped-call]  # untyped in types-PyYAML
                mark = event.start_mark
                raise AliasRefused(".".join(self._path) or None, str(event.anchor), mark.line + 1, mark.column + 1)
            node: Node | None = super().compose_node(parent, index)
            return node
        finally:
            if part is not None:
                self._path.pop()


def load(text: str) -> Any:
    """Parse one YAML document with :class:`NoAliasLoader`.

    Raises :class:`AliasRefused` for an alias and ``yaml.YAMLError`` for a syntax error.
    """
    loader = NoAliasLoader(text)
    try:
        return loader.get_single_data()
    finally:
        loader.dispose()


def document_size(doc: Any, limit: int) -> int | None:
    """The size of a parsed document: characters of every string (keys included) plus one per
    other value and per container. Returns None as soon as it passes ``limit``, so a huge (or
    shared-reference) structure is never walked to its end."""
    total = 0
    stack = [doc]
    while stack:
        item = stack.pop()
        total += len(item) if isinstance(item, str | bytes) else 1
        if isinstance(item, dict):
            stack.extend(item.keys())
            stack.extend(item.values())
        elif isinstance(item, list | tuple | set | frozenset):
            stack.extend(item)
        if total > limit:
            return None
    return total
