"""MSI-X (PCI Local Bus 3.0, 6.8.2): the capability and the vector table.

The capability (ID 0x11, 12 bytes) holds Message Control (table size N-1 in
bits 10:0, Function Mask bit 14, MSI-X Enable bit 15), then the table's and
the Pending Bit Array's offset and BAR indicator (BIR, bits 2:0).

The table has N entries of 16 bytes: message address (low, DWORD aligned),
message upper address, message data, vector control (bit 0: mask, set at
reset).  The PBA holds one pending bit per vector in QWORDs.  The transport
maps both regions into a BAR and forwards accesses to :class:`MsixTable` and
its :attr:`MsixTable.pba`.  Aligned 4- and 8-byte accesses work; any other
access reads all ones and writes nothing.

:meth:`MsixTable.notify` may run on an I/O thread while a vCPU thread writes
the table or the capability, so state changes happen under a lock; the
``deliver`` callable is called after the lock is released.
"""

from __future__ import annotations

import struct
import threading
from collections.abc import Callable

from ..bus import ALL_ONES
from .config import BAR_COUNT, CAP_ID_MSIX, PciConfigSpace

MAX_VECTORS = 2048
ENTRY_SIZE = 16
VIRTIO_MSI_NO_VECTOR = 0xFFFF

# capability fields, relative to the capability start
MSG_CTRL = 2
TABLE_OFFSET_BIR = 4
PBA_OFFSET_BIR = 8

MSG_CTRL_TABLE_SIZE = 0x07FF
MSG_CTRL_FUNCTION_MASK = 1 << 14
MSG_CTRL_ENABLE = 1 << 15
BIR_MASK = 0x7

# entry fields
ENTRY_ADDR_LO = 0
ENTRY_ADDR_HI = 4
ENTRY_DATA = 8
ENTRY_VECTOR_CTRL = 12
VECTOR_CTRL_MASK = 1

#: (address, data) of an MSI to raise
Deliver = Callable[[int, int], None]


class MsixTable:
    """N MSI-X vectors: table entries, pending bits and the enable/mask state."""

    def __init__(self, vectors: int, deliver: Deliver) -> None:
        if not 1 <= vectors <= MAX_VECTORS:
            raise ValueError(f"MSI-X vector count {vectors} out of range 1..{MAX_VECTORS}")
        self.vectors = vectors
        self._deliver = deliver
        self._lock = threading.Lock()
        self._addr_lo = [0] * vectors
        self._addr_hi = [0] * vectors
        self._data = [0] * vectors
        self._ctrl = [VECTOR_CTRL_MASK] * vectors
        self._pending = 0  # bit i set: vector i pending
        self._enabled = False
        self._function_masked = False
        self.pba = MsixPba(self)
        #: called (without the lock) after the guest changes an entry, the enable or the
        #: function mask: where something outside this table routes messages (irqfds) follows
        self.on_change: Callable[[], None] | None = None

    @property
    def table_size(self) -> int:
        """Bytes the table occupies in its BAR."""
        return self.vectors * ENTRY_SIZE

    @property
    def pba_size(self) -> int:
        """Bytes the PBA occupies in its BAR (whole QWORDs)."""
        return (self.vectors + 63) // 64 * 8

    @property
    def enabled(self) -> bool:
        return self._enabled

    @property
    def function_masked(self) -> bool:
        return self._function_masked

    def entry(self, vector: int) -> tuple[int, int, bool]:
        """(address, data, masked) of one entry."""
        with self._lock:
            return self._address(vector), self._data[vector], bool(self._ctrl[vector] & VECTOR_CTRL_MASK)

    def pending(self, vector: int) -> bool:
        return 0 <= vector < self.vectors and bool(self._pending >> vector & 1)

    # --- interrupts ----------------------------------------------------------------

    def notify(self, vector: int) -> None:
        """Signal ``vector``: deliver it, or mark it pending while it is masked.

        Ignored while MSI-X is disabled, and for vectors out of range (including
        VIRTIO_MSI_NO_VECTOR)."""
        if not 0 <= vector < self.vectors:
            return
        with self._lock:
            if not self._enabled:
                return
            if self._function_masked or self._ctrl[vector] & VECTOR_CTRL_MASK:
                self._pending |= 1 << vector
                return
            message = (self._address(vector), self._data[vector])
        self._deliver(*message)

    def set_control(self, enabled: bool, function_masked: bool) -> None:
        """Apply MSI-X Enable and Function Mask from Message Control.

        When the function becomes enabled and unmasked, pending vectors whose
        entries are unmasked are delivered and their pending bits cleared."""
        with self._lock:
            self._enabled = enabled
            self._function_masked = function_masked
            messages = self._take_deliverable()
        for address, data in messages:
            self._deliver(address, data)
        if self.on_change is not None:
            self.on_change()

    def _take_deliverable(self) -> list[tuple[int, int]]:
        """Clear and return the pending, deliverable messages (lock held)."""
        if not self._enabled or self._function_masked or not self._pending:
            return []
        messages = []
        for vector in range(self.vectors):
            if self._pending >> vector & 1 and not self._ctrl[vector] & VECTOR_CTRL_MASK:
                self._pending &= ~(1 << vector)
                messages.append((self._address(vector), self._data[vector]))
        return messages

    def _address(self, vector: int) -> int:
        return self._addr_hi[vector] << 32 | self._addr_lo[vector]

    # --- table region --------------------------------------------------------------

    def read(self, offset: int, size: int) -> int:
        """Guest read of the table region; never raises."""
        if size == 8 and offset % 8 == 0 and 0 <= offset < self.table_size:
            return self._read_dword(offset) | self._read_dword(offset + 4) << 32
        if size == 4 and offset % 4 == 0 and 0 <= offset < self.table_size:
            return self._read_dword(offset)
        return ALL_ONES.get(size, 0)

    def write(self, offset: int, size: int, value: int) -> None:
        """Guest write of the table region; bad sizes and offsets are dropped."""
        if size == 8 and offset % 8 == 0 and 0 <= offset < self.table_size:
            self._write_dword(offset, value & 0xFFFF_FFFF)
            self._write_dword(offset + 4, (value >> 32) & 0xFFFF_FFFF)
        elif size == 4 and offset % 4 == 0 and 0 <= offset < self.table_size:
            self._write_dword(offset, value & 0xFFFF_FFFF)

    def _read_dword(self, offset: int) -> int:
        vector, field = divmod(offset, ENTRY_SIZE)
        with self._lock:
            if field == ENTRY_ADDR_LO:
                return self._addr_lo[vector]
            if field == ENTRY_ADDR_HI:
                return self._addr_hi[vector]
            if field == ENTRY_DATA:
                return self._data[vector]
            return self._ctrl[vector]

    def _write_dword(self, offset: int, value: int) -> None:
        vector, field = divmod(offset, ENTRY_SIZE)
        message = None
        with self._lock:
            if field == ENTRY_ADDR_LO:
                self._addr_lo[vector] = value & ~3
            elif field == ENTRY_ADDR_HI:
                self._addr_hi[vector] = value
            elif field == ENTRY_DATA:
                self._data[vector] = value
            else:
                self._ctrl[vector] = value & VECTOR_CTRL_MASK
                if (
                    not value & VECTOR_CTRL_MASK
                    and self._pending >> vector & 1
                    and self._enabled
                    and not self._function_masked
                ):
                    self._pending &= ~(1 << vector)
                    message = (self._address(vector), self._data[vector])
        if message is not None:
            self._deliver(*message)
        if self.on_change is not None:
            self.on_change()

    # --- state ---------------------------------------------------------------------

    def state(self) -> dict[str, object]:
        with self._lock:
            return {
                "addr_lo": list(self._addr_lo), "addr_hi": list(self._addr_hi), "data": list(self._data),
                "ctrl": list(self._ctrl), "pending": self._pending, "enabled": self._enabled,
                "function_masked": self._function_masked,
            }

    def set_state(self, state: object) -> None:
        """Take back :meth:`state` (checked first); nothing is delivered here:
        vectors pending in the state stay pending."""
        from ..state import bool_field, check_keys, int_field, int_list

        keys = ("addr_lo", "addr_hi", "data", "ctrl", "pending", "enabled", "function_masked")
        st = check_keys(state, keys, "msix")
        n, word = self.vectors, 0xFFFF_FFFF
        addr_lo = [a & ~3 for a in int_list(st, "addr_lo", n, word, "msix")]
        addr_hi = int_list(st, "addr_hi", n, word, "msix")
        data = int_list(st, "data", n, word, "msix")
        ctrl = int_list(st, "ctrl", n, VECTOR_CTRL_MASK, "msix")
        pending = int_field(st, "pending", (1 << n) - 1, "msix")
        enabled = bool_field(st, "enabled", "msix")
        masked = bool_field(st, "function_masked", "msix")
        with self._lock:
            self._addr_lo, self._addr_hi, self._data, self._ctrl = addr_lo, addr_hi, data, ctrl
            self._pending, self._enabled, self._function_masked = pending, enabled, masked
        if self.on_change is not None:
            self.on_change()

    # --- PBA region ----------------------------------------------------------------

    def read_pba(self, offset: int, size: int) -> int:
        """Guest read of the PBA region; never raises."""
        if size not in (4, 8) or offset % size or not 0 <= offset < self.pba_size:
            return ALL_ONES.get(size, 0)
        return (self._pending >> (8 * offset)) & ALL_ONES[size]


class MsixPba:
    """The Pending Bit Array region: read-only to the guest."""

    def __init__(self, table: MsixTable) -> None:
        self._table = table

    def read(self, offset: int, size: int) -> int:
        return self._table.read_pba(offset, size)

    def write(self, offset: int, size: int, value: int) -> None:
        return None


class MsixCapability:
    """The MSI-X capability in a config space, driving an :class:`MsixTable`.

    ``table_bar``/``table_offset`` and ``pba_bar``/``pba_offset`` say where the
    transport maps the two regions (offsets 8-byte aligned, inside a declared
    BAR).  Writes to Message Control set the table's enable and function mask.
    """

    def __init__(
        self,
        config: PciConfigSpace,
        table: MsixTable,
        *,
        table_bar: int,
        table_offset: int,
        pba_bar: int,
        pba_offset: int,
    ) -> None:
        for label, bar_index, offset, length in (
            ("table", table_bar, table_offset, table.table_size),
            ("PBA", pba_bar, pba_offset, table.pba_size),
        ):
            bar = config.bar(bar_index) if 0 <= bar_index < BAR_COUNT else None
            if bar is None:
                raise ValueError(f"MSI-X {label} BAR {bar_index} is not declared")
            if offset % 8 or offset < 0 or offset + length > bar.size or offset >= 1 << 32:
                raise ValueError(f"MSI-X {label} at {offset:#x}+{length:#x} does not fit BAR {bar_index}")
        self.config = config
        self.table = table
        body = struct.pack("<HII", table.vectors - 1, table_offset | table_bar, pba_offset | pba_bar)
        writable = struct.pack("<HII", MSG_CTRL_FUNCTION_MASK | MSG_CTRL_ENABLE, 0, 0)
        self.offset = config.add_capability(CAP_ID_MSIX, body, writable, on_write=self._written)

    def _written(self, offset: int, size: int, value: int) -> None:
        if offset < MSG_CTRL + 2 and offset + size > MSG_CTRL:
            control = self.config.get(self.offset + MSG_CTRL, 2)
            self.table.set_control(bool(control & MSG_CTRL_ENABLE), bool(control & MSG_CTRL_FUNCTION_MASK))
