"""Test doubles for virtio: flat fake guest RAM and the driver's half of a split virtqueue."""

from __future__ import annotations

import struct
from collections.abc import Iterable

from pyhv.devices.virtio.queue import (
    VIRTIO_F_EVENT_IDX,
    VIRTIO_F_INDIRECT_DESC,
    VIRTIO_F_VERSION_1,
    VIRTQ_DESC_F_INDIRECT,
    VIRTQ_DESC_F_NEXT,
    VIRTQ_DESC_F_WRITE,
    GuestRam,
    SplitQueue,
)
from pyhv.errors import MemoryAccessError

DESC = struct.Struct("<QIHH")
U16 = struct.Struct("<H")
USED_ELEM = struct.Struct("<II")

ALL_FEATURES = (1 << VIRTIO_F_VERSION_1) | (1 << VIRTIO_F_INDIRECT_DESC) | (1 << VIRTIO_F_EVENT_IDX)
BASIC_FEATURES = 1 << VIRTIO_F_VERSION_1


class FakeGuestRam:
    """Guest RAM ``[base, base + size)`` held in a bytearray, with GuestMemory's interface.

    An access outside it raises MemoryAccessError, like GuestMemory, and is
    counted in :attr:`violations`.  With :attr:`log` set to a list, every
    access is appended to it as ``(kind, gpa, size)``.
    """

    def __init__(self, size: int, base: int = 0) -> None:
        self.base = base
        self.size = size
        self.data = bytearray(size)
        self.violations = 0
        self.log: list[tuple[str, int, int]] | None = None

    def contains(self, gpa: int, size: int = 1) -> bool:
        return size >= 0 and self.base <= gpa and gpa + size <= self.base + self.size

    def _offset(self, kind: str, gpa: int, size: int) -> int:
        if not self.contains(gpa, size):
            self.violations += 1
            raise MemoryAccessError(f"guest range {gpa:#x}+{size:#x} is outside guest RAM")
        if self.log is not None:
            self.log.append((kind, gpa, size))
        return gpa - self.base

    def scribble(self, gpa: int, data: bytes) -> None:
        """The guest writes ``data`` at ``gpa``: whatever part of it falls inside RAM."""
        start = max(gpa, self.base)
        end = min(gpa + len(data), self.base + self.size)
        if start < end:
            self.data[start - self.base : end - self.base] = data[start - gpa : end - gpa]

    def read(self, gpa: int, size: int) -> bytes:
        start = self._offset("read", gpa, size)
        return bytes(self.data[start : start + size])

    def write(self, gpa: int, data: bytes | bytearray | memoryview) -> None:
        start = self._offset("write", gpa, len(data))
        self.data[start : start + len(data)] = data

    def view(self, gpa: int, size: int) -> memoryview:
        start = self._offset("view", gpa, size)
        return memoryview(self.data)[start : start + size]


class FakeDriver:
    """The driver side of one split virtqueue: lays out the rings and adds chains.

    Descriptors are handed out round-robin from 0 and data buffers from a bump
    allocator at ``data_addr``; nothing is ever freed, which is fine for tests.
    """

    def __init__(
        self,
        mem: GuestRam,
        size: int = 8,
        *,
        desc_addr: int = 0x1000,
        avail_addr: int = 0x2000,
        used_addr: int = 0x3000,
        data_addr: int = 0x8000,
    ) -> None:
        self.mem = mem
        self.size = size
        self.desc_addr = desc_addr
        self.avail_addr = avail_addr
        self.used_addr = used_addr
        self.avail_idx = 0
        self._next_desc = 0
        self._next_data = data_addr

    # --- set-up ---------------------------------------------------------------------

    def make_queue(self, features: int = ALL_FEATURES, max_size: int = 256) -> SplitQueue:
        """A SplitQueue programmed the way a transport would, and activated."""
        q = SplitQueue(self.mem, max_size)
        self.program(q)
        q.activate(features)
        return q

    def program(self, q: SplitQueue) -> None:
        q.size = self.size
        q.desc_addr = self.desc_addr
        q.avail_addr = self.avail_addr
        q.used_addr = self.used_addr
        q.ready = True

    # --- raw access -------------------------------------------------------------------

    def alloc(self, length: int, content: bytes = b"") -> int:
        """A guest buffer of ``length`` bytes starting with ``content``."""
        addr = self._next_data
        self._next_data += (length + 15) & ~15
        self.mem.write(addr, content)
        return addr

    def write_desc(self, index: int, addr: int, length: int, flags: int = 0, next_: int = 0) -> None:
        self.mem.write(self.desc_addr + 16 * index, DESC.pack(addr, length, flags, next_))

    def publish(self, head: int) -> None:
        """Put ``head`` in the available ring and advance avail.idx past it."""
        self.mem.write(self.avail_addr + 4 + 2 * (self.avail_idx % self.size), U16.pack(head))
        self.set_avail_idx((self.avail_idx + 1) & 0xFFFF)

    def set_avail_idx(self, idx: int) -> None:
        self.avail_idx = idx
        self.mem.write(self.avail_addr + 2, U16.pack(idx))

    def set_avail_flags(self, flags: int) -> None:
        self.mem.write(self.avail_addr, U16.pack(flags))

    def set_used_event(self, idx: int) -> None:
        self.mem.write(self.avail_addr + 4 + 2 * self.size, U16.pack(idx))

    # --- adding requests ------------------------------------------------------------------

    def _descriptors(self, readable: Iterable[bytes], writable: Iterable[int]) -> list[tuple[int, int, int]]:
        """(addr, len, flags) of fresh buffers: readable ones filled with the given bytes."""
        out = [(self.alloc(len(data), data), len(data), 0) for data in readable]
        out += [(self.alloc(length), length, VIRTQ_DESC_F_WRITE) for length in writable]
        return out

    def add_chain(self, readable: Iterable[bytes] = (), writable: Iterable[int] = ()) -> int:
        """Add a chain of direct descriptors; returns its head index."""
        descs = self._descriptors(readable, writable)
        indices = [(self._next_desc + i) % self.size for i in range(len(descs))]
        self._next_desc = (self._next_desc + len(descs)) % self.size
        for i, (addr, length, flags) in enumerate(descs):
            last = i == len(descs) - 1
            nxt = 0 if last else indices[i + 1]
            self.write_desc(indices[i], addr, length, flags | (0 if last else VIRTQ_DESC_F_NEXT), nxt)
        self.publish(indices[0])
        return indices[0]

    def add_indirect(self, readable: Iterable[bytes] = (), writable: Iterable[int] = ()) -> int:
        """Add one descriptor pointing at an indirect table of the buffers; returns its index."""
        descs = self._descriptors(readable, writable)
        table = b"".join(
            DESC.pack(addr, length, flags | (VIRTQ_DESC_F_NEXT if i < len(descs) - 1 else 0), i + 1)
            for i, (addr, length, flags) in enumerate(descs)
        )
        head = self.add_indirect_table(table)
        return head

    def add_indirect_table(
        self, table: bytes, length: int | None = None, flags: int = VIRTQ_DESC_F_INDIRECT
    ) -> int:
        """Add one descriptor pointing at ``table`` (raw entries); returns its index."""
        addr = self.alloc(len(table), table)
        head = self._next_desc
        self._next_desc = (self._next_desc + 1) % self.size
        self.write_desc(head, addr, len(table) if length is None else length, flags)
        self.publish(head)
        return head

    # --- what the device returned ------------------------------------------------------------

    def used_idx(self) -> int:
        value: int = U16.unpack(self.mem.read(self.used_addr + 2, 2))[0]
        return value

    def used_flags(self) -> int:
        value: int = U16.unpack(self.mem.read(self.used_addr, 2))[0]
        return value

    def used_elem(self, slot: int) -> tuple[int, int]:
        """(id, len) of used ring entry ``slot`` (taken mod the size)."""
        ident, length = USED_ELEM.unpack(self.mem.read(self.used_addr + 4 + 8 * (slot % self.size), 8))
        return ident, length

    def avail_event(self) -> int:
        value: int = U16.unpack(self.mem.read(self.used_addr + 4 + 8 * self.size, 2))[0]
        return value


def desc_entry(addr: int, length: int, flags: int = 0, next_: int = 0) -> bytes:
    """One raw descriptor, for hand-built indirect tables."""
    return DESC.pack(addr, length, flags, next_)


def bring_up_mmio(transport: object, drivers: list[FakeDriver], features: int = 1 << 32) -> None:
    """What a driver does through virtio-mmio registers (virtio 1.2, 3.1.1):
    negotiate ``features``, program one queue per driver in order, DRIVER_OK."""
    from pyhv.devices.virtio import mmio as m

    w = transport.write  # type: ignore[attr-defined]
    w(m.STATUS, 4, 1)
    w(m.STATUS, 4, 1 | 2)
    for sel in (0, 1):
        w(m.DRIVER_FEATURES_SEL, 4, sel)
        w(m.DRIVER_FEATURES, 4, (features >> (32 * sel)) & 0xFFFF_FFFF)
    w(m.STATUS, 4, 1 | 2 | 8)
    for q, d in enumerate(drivers):
        w(m.QUEUE_SEL, 4, q)
        w(m.QUEUE_NUM, 4, d.size)
        for reg, addr in ((m.QUEUE_DESC_LOW, d.desc_addr), (m.QUEUE_DRIVER_LOW, d.avail_addr), (m.QUEUE_DEVICE_LOW, d.used_addr)):
            w(reg, 4, addr & 0xFFFF_FFFF)
            w(reg + 4, 4, addr >> 32)
        w(m.QUEUE_READY, 4, 1)
    w(m.STATUS, 4, 1 | 2 | 8 | 4)
