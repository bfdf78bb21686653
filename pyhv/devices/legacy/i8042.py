"""The i8042 keyboard controller, as far as a VMM needs it: the reset line.

Guests reboot by pulsing the CPU reset line through the controller (command
0xFE on the command port, or clearing bit 0 of the output port with 0xD1).
There is no keyboard or mouse behind it.  Ports: data 0x60, status/command 0x64.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from ..bus import BytePort

DATA_PORT = 0x60
COMMAND_PORT = 0x64

STATUS_OUTPUT_FULL_BIT = 0x01
STATUS_SYSTEM_FLAG_BIT = 0x04
STATUS_COMMAND_BIT = 0x08

CMD_READ_CONFIG = 0x20
CMD_WRITE_CONFIG = 0x60
CMD_DISABLE_AUX = 0xA7
CMD_ENABLE_AUX = 0xA8
CMD_SELF_TEST = 0xAA
CMD_DISABLE_KBD = 0xAD
CMD_ENABLE_KBD = 0xAE
CMD_READ_OUTPUT_PORT = 0xD0
CMD_WRITE_OUTPUT_PORT = 0xD1
CMD_PULSE_RESET = 0xFE

SELF_TEST_OK = 0x55
OUTPUT_PORT_RESET_BIT = 0x01  # 0 = assert CPU reset


class I8042:
    def __init__(self, reset: Callable[[], None]) -> None:
        self._reset = reset
        self.config = 0
        self.status = STATUS_SYSTEM_FLAG_BIT
        self.output: int | None = None
        self.pending: int | None = None  # command waiting for its data byte
        self.data = BytePort(lambda: self.read_port(DATA_PORT), lambda v: self.write_port(DATA_PORT, v))
        self.command = BytePort(lambda: self.read_port(COMMAND_PORT), lambda v: self.write_port(COMMAND_PORT, v))

    def read_port(self, port: int) -> int:
        if port == DATA_PORT:
            value = self.output if self.output is not None else 0
            self.output = None
            return value
        status = self.status
        if self.output is not None:
            status |= STATUS_OUTPUT_FULL_BIT
        return status

    def write_port(self, port: int, value: int) -> None:
        if port == COMMAND_PORT:
            self._command(value)
        elif self.pending == CMD_WRITE_CONFIG:
            self.config = value
            self.pending = None
        elif self.pending == CMD_WRITE_OUTPUT_PORT:
            self.pending = None
            if not value & OUTPUT_PORT_RESET_BIT:
                self._reset()

    def _command(self, cmd: int) -> None:
        self.pending = None
        if cmd == CMD_READ_CONFIG:
            self.output = self.config
        elif cmd in (CMD_WRITE_CONFIG, CMD_WRITE_OUTPUT_PORT):
            self.pending = cmd
        elif cmd == CMD_SELF_TEST:
            self.output = SELF_TEST_OK
        elif cmd == CMD_READ_OUTPUT_PORT:
            self.output = OUTPUT_PORT_RESET_BIT
        elif cmd == CMD_PULSE_RESET:
            self._reset()

    # --- state -------------------------------------------------------------------

    def state(self) -> dict[str, Any]:
        return {"config": self.config, "status": self.status, "output": self.output, "pending": self.pending}

    def set_state(self, state: Any) -> None:
        from ..state import DeviceStateError, check_keys, int_field

        check_keys(state, ("config", "status", "output", "pending"), "i8042")
        config = int_field(state, "config", 0xFF, "i8042")
        status = int_field(state, "status", 0xFF, "i8042")
        output = None if state["output"] is None else int_field(state, "output", 0xFF, "i8042")
        pending = state["pending"]
        if pending not in (None, CMD_WRITE_CONFIG, CMD_WRITE_OUTPUT_PORT) or isinstance(pending, bool):
            raise DeviceStateError("i8042 state: pending must be null or a command waiting for data")
        self.config, self.status, self.output, self.pending = config, status, output, pending
