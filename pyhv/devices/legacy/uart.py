"""An 8250/16550A UART, enough for a Linux serial console and the probe guest.

Register map (offset from the base port, LCR.DLAB clear / set):

====== ============= ============= ==================================
offset read          write         notes
====== ============= ============= ==================================
0      RBR / DLL     THR / DLL     receive buffer, transmit holding
1      IER / DLM     IER / DLM     interrupt enable
2      IIR           FCR           interrupt identification, FIFO ctl
3      LCR           LCR           line control (bit 7: DLAB)
4      MCR           MCR           modem control (bit 4: loopback)
5      LSR           -             line status
6      MSR           -             modem status
7      SCR           SCR           scratch
====== ============= ============= ==================================

Transmission is instantaneous: a byte written to THR goes straight to the
output callable, so THR and the transmitter are always empty.  The transmit
interrupt ("THR empty") follows the 16550 rule: it is raised when enabled
while THR is empty and after each write to THR, and cleared by a write to THR
or by reading IIR while it is the reported source.

The interrupt output is a level: ``irq(True)`` while any enabled condition is
pending.  Received bytes come from another thread (:meth:`enqueue`), so all
state is behind a lock.
"""

from __future__ import annotations

import threading
from collections import deque
from collections.abc import Callable
from typing import Any

from ...errors import PyhvError

RBR = THR = DLL = 0
IER = DLM = 1
IIR = FCR = 2
LCR = 3
MCR = 4
LSR = 5
MSR = 6
SCR = 7

IER_RDA_BIT = 0x01  # received data available
IER_THRE_BIT = 0x02  # transmit holding register empty
IER_RLS_BIT = 0x04  # receiver line status
IER_MS_BIT = 0x08  # modem status
IER_MASK = 0x0F

IIR_NO_INT_BIT = 0x01
IIR_THRE = 0x02
IIR_RDA = 0x04
IIR_FIFO_ENABLED = 0xC0

FCR_FIFO_ENABLE_BIT = 0x01
FCR_CLEAR_RX_BIT = 0x02

LCR_DLAB_BIT = 0x80

MCR_DTR_BIT = 0x01
MCR_RTS_BIT = 0x02
MCR_OUT1_BIT = 0x04
MCR_OUT2_BIT = 0x08
MCR_LOOP_BIT = 0x10
MCR_MASK = 0x1F

LSR_DATA_READY_BIT = 0x01
LSR_OVERRUN_BIT = 0x02
LSR_EMPTY_THR_BIT = 0x20
LSR_IDLE_BIT = 0x40

MSR_CTS_BIT = 0x10
MSR_DSR_BIT = 0x20
MSR_RI_BIT = 0x40
MSR_DCD_BIT = 0x80

#: receive FIFO depth; input beyond it waits in the backend, not here
RX_FIFO_SIZE = 64

COM1_BASE = 0x3F8
COM1_IRQ = 4


class Uart:
    def __init__(
        self,
        output: Callable[[bytes], None],
        irq: Callable[[bool], None] = lambda level: None,
    ) -> None:
        self._output = output
        self._irq = irq
        self._lock = threading.Lock()
        self._irq_level = False
        self.reset()

    def reset(self) -> None:
        self.ier = 0
        self.lcr = 0x03  # 8 data bits, no parity, 1 stop bit
        self.mcr = MCR_OUT2_BIT
        self.scr = 0
        self.dll = 0x0C  # 9600 baud
        self.dlm = 0
        self.fifo_enabled = False
        self.thr_interrupt = False
        self.overrun = False
        self.rx: deque[int] = deque()

    # --- guest side --------------------------------------------------------------

    def read(self, offset: int, size: int) -> int:
        with self._lock:
            value = self._read(offset & 7)
            self._update_irq()
        return value

    def write(self, offset: int, size: int, value: int) -> None:
        out = b""
        with self._lock:
            out = self._write(offset & 7, value & 0xFF)
            self._update_irq()
        if out:
            self._output(out)

    def _read(self, offset: int) -> int:
        dlab = self.lcr & LCR_DLAB_BIT
        if offset == RBR:
            if dlab:
                return self.dll
            return self.rx.popleft() if self.rx else 0
        if offset == IER:
            return self.dlm if dlab else self.ier
        if offset == IIR:
            iir = self._iir()
            if iir & 0x0F == IIR_THRE:
                self.thr_interrupt = False
            return iir | (IIR_FIFO_ENABLED if self.fifo_enabled else 0)
        if offset == LCR:
            return self.lcr
        if offset == MCR:
            return self.mcr
        if offset == LSR:
            lsr = LSR_EMPTY_THR_BIT | LSR_IDLE_BIT
            if self.rx:
                lsr |= LSR_DATA_READY_BIT
            if self.overrun:
                lsr |= LSR_OVERRUN_BIT
                self.overrun = False
            return lsr
        if offset == MSR:
            if self.mcr & MCR_LOOP_BIT:
                # loopback wires DTR->DSR, RTS->CTS, OUT1->RI, OUT2->DCD
                m = self.mcr
                return (
                    (MSR_DSR_BIT if m & MCR_DTR_BIT else 0)
                    | (MSR_CTS_BIT if m & MCR_RTS_BIT else 0)
                    | (MSR_RI_BIT if m & MCR_OUT1_BIT else 0)
                    | (MSR_DCD_BIT if m & MCR_OUT2_BIT else 0)
                )
            return MSR_CTS_BIT | MSR_DSR_BIT | MSR_DCD_BIT
        return self.scr

    def _write(self, offset: int, value: int) -> bytes:
        dlab = self.lcr & LCR_DLAB_BIT
        if offset == THR:
            if dlab:
                self.dll = value
                return b""
            self.thr_interrupt = True  # transmitted at once: THR is empty again
            if self.mcr & MCR_LOOP_BIT:
                self._push(value)
                return b""
            return bytes((value,))
        if offset == IER:
            if dlab:
                self.dlm = value
            else:
                if value & IER_THRE_BIT and not self.ier & IER_THRE_BIT:
                    self.thr_interrupt = True
                self.ier = value & IER_MASK
        elif offset == FCR:
            self.fifo_enabled = bool(value & FCR_FIFO_ENABLE_BIT)
            if value & FCR_CLEAR_RX_BIT:
                self.rx.clear()
        elif offset == LCR:
            self.lcr = value
        elif offset == MCR:
            self.mcr = value & MCR_MASK
        elif offset == SCR:
            self.scr = value
        return b""

    def _iir(self) -> int:
        if self.ier & IER_RDA_BIT and self.rx:
            return IIR_RDA
        if self.ier & IER_THRE_BIT and self.thr_interrupt:
            return IIR_THRE
        return IIR_NO_INT_BIT

    def _update_irq(self) -> None:
        level = self._iir() != IIR_NO_INT_BIT
        if level != self._irq_level:
            self._irq_level = level
            self._irq(level)

    def _push(self, byte: int) -> bool:
        if len(self.rx) >= RX_FIFO_SIZE:
            self.overrun = True
            return False
        self.rx.append(byte)
        return True

    # --- host side ---------------------------------------------------------------

    def enqueue(self, data: bytes) -> int:
        """Queue received bytes; returns how many fit in the receive FIFO."""
        taken = 0
        with self._lock:
            for byte in data:
                if len(self.rx) >= RX_FIFO_SIZE:
                    break
                self.rx.append(byte)
                taken += 1
            self._update_irq()
        return taken

    # --- state -------------------------------------------------------------------

    _STATE_KEYS = ("ier", "lcr", "mcr", "scr", "dll", "dlm", "fifo_enabled", "thr_interrupt", "rx")

    def state(self) -> dict[str, Any]:
        with self._lock:
            return {
                "ier": self.ier,
                "lcr": self.lcr,
                "mcr": self.mcr,
                "scr": self.scr,
                "dll": self.dll,
                "dlm": self.dlm,
                "fifo_enabled": self.fifo_enabled,
                "thr_interrupt": self.thr_interrupt,
                "rx": list(self.rx),
            }

    def set_state(self, state: dict[str, Any]) -> None:
        """Restore from :meth:`state`, checking every value before using any."""
        if not isinstance(state, dict) or set(state) != set(self._STATE_KEYS):
            raise PyhvError("uart state: wrong set of keys")
        for key in ("ier", "lcr", "mcr", "scr", "dll", "dlm"):
            v = state[key]
            if not isinstance(v, int) or isinstance(v, bool) or not 0 <= v <= 0xFF:
                raise PyhvError(f"uart state: {key} must be a byte")
        rx = state["rx"]
        if not isinstance(rx, list) or len(rx) > RX_FIFO_SIZE or not all(
            isinstance(b, int) and 0 <= b <= 0xFF for b in rx
        ):
            raise PyhvError("uart state: rx must be a list of at most 64 bytes")
        with self._lock:
            self.ier = state["ier"] & IER_MASK
            self.lcr = state["lcr"]
            self.mcr = state["mcr"] & MCR_MASK
            self.scr = state["scr"]
            self.dll = state["dll"]
            self.dlm = state["dlm"]
            self.fifo_enabled = bool(state["fifo_enabled"])
            self.thr_interrupt = bool(state["thr_interrupt"])
            self.rx = deque(rx)
            self._update_irq()
