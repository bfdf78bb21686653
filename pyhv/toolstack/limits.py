"""Bounds on what the toolstack decodes: configuration files and API bodies.

Python's TOML and JSON decoders recurse once per level of nesting, so a file
or a request of ``[[[[...]]]]`` ten thousand deep ends in RecursionError;
nothing pyhv reads needs more than a few levels, or more than a megabyte.
"""

from __future__ import annotations

from typing import Any

#: the most a configuration file or a request body may hold
MAX_SIZE = 1 << 20
#: the deepest nesting of arrays and tables (objects) accepted
MAX_DEPTH = 32


def too_deep(value: Any, limit: int = MAX_DEPTH) -> bool:
    """True if ``value`` nests lists or dicts more than ``limit`` deep (checked
    without recursion)."""
    stack = [(value, 1)]
    while stack:
        item, depth = stack.pop()
        if isinstance(item, dict):
            children = list(item.values())
        elif isinstance(item, list):
            children = item
        else:
            continue
        if depth > limit:
            return True
        stack.extend((child, depth + 1) for child in children)
    return False
