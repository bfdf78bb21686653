"""Domain description files (TOML), ``key=value`` overrides, and the bounds on
what the toolstack decodes (files and API bodies).

Python's TOML and JSON decoders recurse once per level of nesting, so input of
``[[[[...]]]]`` ten thousand deep ends in RecursionError; nothing pyhv reads
needs more than a few levels, or more than a megabyte.

A file decodes to the description's plain form (see :mod:`pyhv.model`), which
:func:`pyhv.model.from_plain` checks; an error names the file and the key, e.g.
``web1.toml: vcpus: must be an integer between 1 and 255``.
"""

from __future__ import annotations

from typing import Any

from ..errors import UsageError
from . import Description, DescriptionError, from_plain

#: a description is a few kilobytes; this much (a file, an API body) is certainly not one
MAX_SIZE = 1 << 20
#: tables and arrays nest two deep in a description; deeper input is refused
MAX_DEPTH = 32


def load(path: str) -> Description:
    data = load_mapping(path)
    try:
        return from_plain(data)
    except DescriptionError as e:
        raise UsageError(f"{path}: {e}") from None


def load_mapping(path: str) -> dict[str, Any]:
    """The file's TOML as a mapping, not yet checked (bounded in size and depth)."""
    import tomllib

    try:
        with open(path, "rb") as f:
            raw = f.read(MAX_SIZE + 1)
    except OSError as e:
        raise UsageError(f"{path}: cannot read: {e.strerror}") from None
    if len(raw) > MAX_SIZE:
        raise UsageError(f"{path}: larger than {MAX_SIZE >> 20} MiB: not a domain configuration")
    try:
        data = tomllib.loads(raw.decode())
    except (tomllib.TOMLDecodeError, UnicodeDecodeError) as e:
        raise UsageError(f"{path}: not valid TOML: {e}") from None
    except RecursionError:
        data = None
    if data is None or too_deep(data):
        raise UsageError(f"{path}: arrays or tables nested more than {MAX_DEPTH} deep")
    return data


def too_deep(value: Any, limit: int = MAX_DEPTH) -> bool:
    """Whether plain values nest lists or tables deeper than ``limit`` (checked
    iteratively: no recursion to exhaust)."""
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
        stack.extend((c, depth + 1) for c in children)
    return False


def apply_override(data: dict[str, Any], assignment: str) -> None:
    """``key=value`` from the command line (``sched.weight=512`` reaches into a table).

    The value is TOML when it parses as a TOML value (``2``, ``true``,
    ``"text"``), otherwise the plain string, so ``cmdline=probe.test=counter``
    needs no quotes."""
    import tomllib

    key, eq, text = assignment.partition("=")
    if not eq or not key:
        raise UsageError(f"{assignment!r}: expected key=value")
    try:
        value: Any = tomllib.loads(f"v = {text}")["v"]
    except (tomllib.TOMLDecodeError, RecursionError):
        value = text
    *tables, last = key.split(".")
    target = data
    for t in tables:
        target = target.setdefault(t, {})
        if not isinstance(target, dict):
            raise UsageError(f"{key}: {t} is not a table")
    target[last] = value
