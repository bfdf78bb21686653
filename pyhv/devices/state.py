"""Checking device state read back from a snapshot or a migration stream.

Every device's ``state()`` returns plain values (dicts, lists, ints, bools,
strings: what JSON carries) and its ``set_state()`` takes them back.  What
comes back may be hostile: these helpers check each value's type and range
and raise :class:`DeviceStateError`, one line naming the device and the field,
before the device changes anything.
"""

from __future__ import annotations

from typing import Any

from ..errors import PyhvError


class DeviceStateError(PyhvError):
    """A device state that this device cannot take (wrong keys, types or ranges)."""

    exit_status = 2


def check_keys(state: Any, keys: tuple[str, ...] | set[str], what: str) -> dict[str, Any]:
    if not isinstance(state, dict):
        raise DeviceStateError(f"{what} state: expected a mapping, got {type(state).__name__}")
    if set(state) != set(keys):
        missing = sorted(set(keys) - set(state))
        extra = sorted(set(state) - set(keys))
        detail = f"missing {missing[0]!r}" if missing else f"unknown {extra[0]!r}"
        raise DeviceStateError(f"{what} state: {detail}")
    return state


def int_field(state: dict[str, Any], key: str, limit: int, what: str, low: int = 0) -> int:
    v = state.get(key)
    if isinstance(v, bool) or not isinstance(v, int) or not low <= v <= limit:
        raise DeviceStateError(f"{what} state: {key} must be an integer in {low}..{limit:#x}, got {v!r:.40}")
    return v


def bool_field(state: dict[str, Any], key: str, what: str) -> bool:
    v = state.get(key)
    if not isinstance(v, bool):
        raise DeviceStateError(f"{what} state: {key} must be true or false, got {v!r:.40}")
    return v


def float_field(state: dict[str, Any], key: str, limit: float, what: str) -> float:
    v = state.get(key)
    if isinstance(v, bool) or not isinstance(v, (int, float)) or not -limit <= v <= limit:
        raise DeviceStateError(f"{what} state: {key} must be a number within +-{limit:g}, got {v!r:.40}")
    return float(v)


def bytes_field(state: dict[str, Any], key: str, length: int, what: str) -> bytes:
    """A hex string of exactly ``length`` bytes."""
    v = state.get(key)
    if not isinstance(v, str) or len(v) != 2 * length:
        raise DeviceStateError(f"{what} state: {key} must be {length} bytes in hex")
    try:
        return bytes.fromhex(v)
    except ValueError:
        raise DeviceStateError(f"{what} state: {key} is not hex") from None


def int_list(state: dict[str, Any], key: str, length: int, limit: int, what: str) -> list[int]:
    v = state.get(key)
    if not isinstance(v, list) or len(v) != length or not all(
        isinstance(x, int) and not isinstance(x, bool) and 0 <= x <= limit for x in v
    ):
        raise DeviceStateError(f"{what} state: {key} must be a list of {length} integers in 0..{limit:#x}")
    return list(v)
