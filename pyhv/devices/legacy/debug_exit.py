"""A debug-exit port compatible with QEMU's ``isa-debug-exit``.

A write of value ``v`` asks the VMM to end with a status: ``v & 0xff`` under
pyhv's own mapping (``--debug-exit``), ``(v << 1) | 1`` under QEMU's
(``--debug-exit=qemu``); the description's ``debug_exit`` picks one
(:func:`pyhv.model.debug_exit_status`).  Off unless configured.
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
