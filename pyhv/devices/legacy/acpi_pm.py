"""The registers of a hardware-reduced ACPI platform (ACPI 6.5, 4.8.3.7-4.8.3.8).

* SLEEP_CONTROL_REG: the OS writes ``SLP_TYP << 2 | SLP_EN`` to enter a sleep
  state; pyhv honours S5 (soft off, the SLP_TYP published in \\_S5) as power-off.
* SLEEP_STATUS_REG: WAK_STS; reads as 0 (never woken from a sleep state).
* RESET_REG: writing RESET_VALUE resets the machine.

Port numbers are those the FADT publishes (pyhv.boot.acpi).
"""

from __future__ import annotations

from collections.abc import Callable

from ..bus import BytePort
from ...boot.acpi import RESET_PORT, RESET_VALUE, S5_SLP_TYP, SLEEP_CONTROL_PORT, SLEEP_STATUS_PORT

SLP_EN_BIT = 0x20
SLP_TYP_MASK = 0x1C
SLP_TYP_SHIFT = 2


def _zero() -> int:
    return 0  # write-only registers (and WAK_STS: never woken from a sleep state) read as 0


class AcpiPm:
    def __init__(self, poweroff: Callable[[], None], reset: Callable[[], None]) -> None:
        self._poweroff = poweroff
        self._reset = reset
        self.sleep_control = BytePort(_zero, self._write_sleep_control)
        self.sleep_status = BytePort(_zero, lambda value: None)
        self.reset = BytePort(_zero, self._write_reset)

    def _write_sleep_control(self, value: int) -> None:
        if value & SLP_EN_BIT and (value & SLP_TYP_MASK) >> SLP_TYP_SHIFT == S5_SLP_TYP:
            self._poweroff()

    def _write_reset(self, value: int) -> None:
        if value == RESET_VALUE:
            self._reset()

    #: (port, bus device, name) for the builder
    def ports(self) -> list[tuple[int, BytePort, str]]:
        return [
            (SLEEP_CONTROL_PORT, self.sleep_control, "acpi-sleep-control"),
            (SLEEP_STATUS_PORT, self.sleep_status, "acpi-sleep-status"),
            (RESET_PORT, self.reset, "acpi-reset"),
        ]
