"""System Control Port A (0x92), the PC's fast reset line.

The port keeps the A20 gate bit (bit 1) and the others for read-back;
writing bit 0 as 1 requests a reset, as the i8042's reset line does.
KVM never masks A20, so the bit is only remembered; it carries nothing across
a snapshot (the port reads 0x02 again after a restore, as after power-on).
"""

from __future__ import annotations

from collections.abc import Callable

PORT_A = 0x92
PORT_A_RESET = 0x01
PORT_A_A20 = 0x02


class SystemControlPortA:
    def __init__(self, reset: Callable[[], None]) -> None:
        self._reset = reset
        self.value = PORT_A_A20

    def read(self, offset: int, size: int) -> int:
        return self.value

    def write(self, offset: int, size: int, value: int) -> None:
        # the reset bit reads back 0: the reset has happened by the time it could be read
        self.value = value & 0xFF & ~PORT_A_RESET
        if value & PORT_A_RESET:
            self._reset()
