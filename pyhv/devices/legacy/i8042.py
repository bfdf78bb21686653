"""The i8042 keyboard controller, as far as a VMM needs it: the reset line and
a keyboard that only ever presses Ctrl-Alt-Del.

Guests reboot by pulsing the CPU reset line through the controller (command
0xFE on the command port, or clearing bit 0 of the output port with 0xD1).
The host asks a guest to reboot itself with :meth:`I8042.ctrl_alt_del`, as
Firecracker's SendCtrlAltDel does: the keyboard's make and break codes of
Ctrl, Alt and Delete go into the output buffer (status bit 0 says a byte is
there) and IRQ 1 is raised for each byte while the guest has the keyboard
interrupt enabled (configuration byte bit 0).  The codes are scan code set 2,
what a keyboard sends; when the guest turned on the controller's translation
(configuration bit 6, as Linux's atkbd usually runs) they are set 1, what the
controller would have translated them into.  A byte written to the keyboard
(the data port, with no controller command waiting) is answered with ACK
(0xFA), as a keyboard does, so a driver that sends it commands carries on.
Ports: data 0x60, status/command 0x64.
"""

from __future__ import annotations

import threading
from collections import deque
from collections.abc import Callable
from typing import Any

from ...errors import PyhvError
from ..bus import BytePort

DATA_PORT = 0x60
COMMAND_PORT = 0x64
KEYBOARD_IRQ = 1

STATUS_OUTPUT_FULL_BIT = 0x01
STATUS_SYSTEM_FLAG_BIT = 0x04
STATUS_COMMAND_BIT = 0x08

CONFIG_KBD_INT = 0x01  # raise IRQ 1 when a keyboard byte arrives
CONFIG_XLATE = 0x40  # translate the keyboard's set 2 codes to set 1

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
KBD_ACK = 0xFA

#: Ctrl, Alt, Delete pressed, then released in the opposite order
CTRL_ALT_DEL_SET2 = bytes([0x14, 0x11, 0xE0, 0x71, 0xE0, 0xF0, 0x71, 0xF0, 0x11, 0xF0, 0x14])
CTRL_ALT_DEL_SET1 = bytes([0x1D, 0x38, 0xE0, 0x53, 0xE0, 0xD3, 0xB8, 0x9D])
#: the output buffer's depth (Firecracker's)
BUFFER = 16


class I8042:
    def __init__(self, reset: Callable[[], None], irq: Callable[[int], None] = lambda level: None) -> None:
        self._reset = reset
        self._irq = irq
        self._lock = threading.Lock()  # vCPU threads and the host's ctrl_alt_del
        self.config = 0
        self.status = STATUS_SYSTEM_FLAG_BIT
        self.output: deque[int] = deque()
        self.pending: int | None = None  # command waiting for its data byte
        self.data = BytePort(lambda: self.read_port(DATA_PORT), lambda v: self.write_port(DATA_PORT, v))
        self.command = BytePort(lambda: self.read_port(COMMAND_PORT), lambda v: self.write_port(COMMAND_PORT, v))

    def read_port(self, port: int) -> int:
        with self._lock:
            if port == DATA_PORT:
                value = self.output.popleft() if self.output else 0
                more = bool(self.output)
            else:
                return self.status | (STATUS_OUTPUT_FULL_BIT if self.output else 0)
        if more:
            self._keyboard_interrupt()
        return value

    def write_port(self, port: int, value: int) -> None:
        with self._lock:
            if port == COMMAND_PORT:
                reset = self._command(value)
            else:
                reset = self._data(value)
        if reset:
            self._reset()

    def _data(self, value: int) -> bool:
        pending, self.pending = self.pending, None
        if pending == CMD_WRITE_CONFIG:
            self.config = value
        elif pending == CMD_WRITE_OUTPUT_PORT:
            return not value & OUTPUT_PORT_RESET_BIT
        else:  # a byte for the keyboard: it acknowledges
            self._answer(KBD_ACK)
            self._keyboard_interrupt()
        return False

    def _command(self, cmd: int) -> bool:
        self.pending = None
        if cmd == CMD_READ_CONFIG:
            self._answer(self.config)
        elif cmd in (CMD_WRITE_CONFIG, CMD_WRITE_OUTPUT_PORT):
            self.pending = cmd
        elif cmd == CMD_SELF_TEST:
            self._answer(SELF_TEST_OK)
        elif cmd == CMD_READ_OUTPUT_PORT:
            self._answer(OUTPUT_PORT_RESET_BIT)
        elif cmd == CMD_PULSE_RESET:
            return True
        return False

    def _answer(self, value: int) -> None:
        """A controller or keyboard answer replaces whatever was unread."""
        self.output.clear()
        self.output.append(value & 0xFF)

    # --- the host's keyboard ------------------------------------------------------------

    def ctrl_alt_del(self) -> int:
        """Press and release Ctrl-Alt-Del; the number of bytes queued."""
        with self._lock:
            codes = CTRL_ALT_DEL_SET1 if self.config & CONFIG_XLATE else CTRL_ALT_DEL_SET2
            if len(self.output) + len(codes) > BUFFER:
                raise PyhvError("the i8042's output buffer is full (the guest is not reading its keyboard)")
            self.output.extend(codes)
        self._keyboard_interrupt()
        return len(codes)

    def _keyboard_interrupt(self) -> None:
        """An edge on IRQ 1 (ISA interrupts are edge-triggered), if the guest enabled it."""
        if self.config & CONFIG_KBD_INT:
            self._irq(1)
            self._irq(0)

    # --- state -------------------------------------------------------------------

    def state(self) -> dict[str, Any]:
        with self._lock:
            return {"config": self.config, "status": self.status, "output": list(self.output), "pending": self.pending}

    def set_state(self, state: Any) -> None:
        from ..state import DeviceStateError, check_keys, int_field

        check_keys(state, ("config", "status", "output", "pending"), "i8042")
        config = int_field(state, "config", 0xFF, "i8042")
        status = int_field(state, "status", 0xFF, "i8042")
        output = state["output"]
        if output is None:  # snapshots of the controller before it had a keyboard: one byte or none
            output = []
        elif isinstance(output, int) and not isinstance(output, bool):
            output = [output]
        if (not isinstance(output, list) or len(output) > BUFFER
                or not all(isinstance(b, int) and not isinstance(b, bool) and 0 <= b <= 0xFF for b in output)):
            raise DeviceStateError(f"i8042 state: output must be a list of at most {BUFFER} bytes")
        pending = state["pending"]
        if pending not in (None, CMD_WRITE_CONFIG, CMD_WRITE_OUTPUT_PORT) or isinstance(pending, bool):
            raise DeviceStateError("i8042 state: pending must be null or a command waiting for data")
        with self._lock:
            self.config, self.status, self.output, self.pending = config, status, deque(output), pending
