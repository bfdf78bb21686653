"""A debug-exit port compatible with QEMU's ``isa-debug-exit``.

A write of value ``v`` asks the VMM to end with a status.  QEMU exits with
``(v << 1) | 1``; pyhv exits with ``v & 0xff`` itself, so a guest that writes 0
ends pyhv with status 0.  Off unless configured (``--debug-exit``).
"""

from __future__ import annotations

from collections.abc import Callable

DEFAULT_BASE = 0xF4
LENGTH = 4


class DebugExit:
    def __init__(self, exit: Callable[[int], None]) -> None:
        self._exit = exit

    def read(self, offset: int, size: int) -> int:
        return 0

    def write(self, offset: int, size: int, value: int) -> None:
        self._exit(value)
