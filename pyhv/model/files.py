"""Domain description files (TOML) and ``key=value`` overrides.

A file decodes to the description's plain form (see :mod:`pyhv.model`), which
:func:`pyhv.model.from_plain` checks; an error names the file and the key, e.g.
``web1.toml: vcpus: must be an integer between 1 and 255``.
"""

from __future__ import annotations

from typing import Any

from ..errors import UsageError
from . import Description, DescriptionError, from_plain

#: a description is a few kilobytes; this much is certainly not one
MAX_FILE = 1 << 20
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
            raw = f.read(MAX_FILE + 1)
    except OSError as e:
        raise UsageError(f"{path}: cannot read: {e.strerror}") from None
    if len(raw) > MAX_FILE:
        raise UsageError(f"{path}: larger than {MAX_FILE >> 20} MiB: not a domain description")
    try:
        data = tomllib.loads(raw.decode())
    except (tomllib.TOMLDecodeError, UnicodeDecodeError) as e:
        raise UsageError(f"{path}: not valid TOML: {e}") from None
    except RecursionError:
        raise UsageError(f"{path}: nested deeper than {MAX_DEPTH} levels") from None
    check_depth(data, f"{path}: ")
    return data


def check_depth(value: Any, where: str = "", limit: int = MAX_DEPTH) -> None:
    """Refuse plain values nested deeper than ``limit`` (iteratively: no recursion to exhaust)."""
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
            raise UsageError(f"{where}nested deeper than {limit} levels")
        stack.extend((c, depth + 1) for c in children)


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
