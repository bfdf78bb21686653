"""The split virtqueue, device side (virtio 1.2, 2.7).

Layout in guest memory (all fields little-endian)::

    descriptor table  16 * size bytes, 16-aligned    {le64 addr; le32 len; le16 flags; le16 next}
    available ring    6 + 2 * size bytes, 2-aligned  {le16 flags; le16 idx; le16 ring[size]; le16 used_event}
    used ring         6 + 8 * size bytes, 4-aligned  {le16 flags; le16 idx; {le32 id; le32 len} ring[size];
                                                      le16 avail_event}

(``used_event`` and ``avail_event`` exist only with VIRTIO_F_EVENT_IDX; without it
the rings are two bytes shorter and that is all this queue requires of them.)

The guest is hostile
--------------------
Everything read from guest memory is untrusted.  A protocol violation raises
:class:`QueueError`; the device turns it into DEVICE_NEEDS_RESET and the VM
keeps running.  The queue never touches memory outside guest RAM, never loops
without a bound and never allocates in proportion to a guest value:

* at :meth:`SplitQueue.activate` the size (a power of two, 1..``max_size``)
  and the three rings (alignment, and each whole ring inside one RAM region)
  are checked, and the queue then takes one view of each ring through the
  bounds-checked :meth:`GuestRam.view`; every ring access indexes those views
  with an index below the size, so it stays inside the ring (and a view can
  never reach past it: an out-of-range index raises).  Buffers and indirect
  tables are still checked one by one with :meth:`GuestRam.contains`, and a
  :class:`~pyhv.errors.MemoryAccessError` that escapes becomes a
  :class:`QueueError`.  The views must not outlive the guest memory: the
  machine stops the I/O thread before it unmaps RAM;
* ``avail.idx`` may run ahead of what the device has consumed by at most the
  queue size, and every head index is below the size;
* every descriptor is read and checked as the chain is walked: the buffer lies
  inside one RAM region and is not empty, ``next`` is below the table size,
  device-readable buffers all come before device-writable ones, a chain visits
  at most ``size`` descriptors of the ring's table (which is what catches a
  loop) and describes at most 2**32 - 1 bytes in all (the used ring reports
  lengths in 32 bits);
* indirect tables (VIRTQ_DESC_F_INDIRECT) are accepted only when
  VIRTIO_F_INDIRECT_DESC was negotiated, never together with VIRTQ_DESC_F_NEXT,
  never nested, with a length that is a non-zero multiple of 16 and at most
  ``size`` entries ("A driver MUST NOT create a descriptor chain longer than
  the Queue Size of the device", 2.7.5.3.1), the whole table inside one RAM
  region.

Two choices go beyond the letter of the specification.  A zero-length
descriptor is refused: it carries nothing, no driver needs one, and accepting
it would let a chain grow without moving a byte.  And a chain that is too long
is treated as a ring violation (DEVICE_NEEDS_RESET) rather than a failed
request, like every other breach of a driver MUST.

Memory ordering
---------------
The driver and the device share the rings without locks, so the order in
which each side's loads and stores become visible to the other matters.  The
specification (2.7.13, Supplying Buffers to The Device; 2.7.8, the used ring;
2.7.7 and 2.7.10, notification suppression) asks for three things of the
device:

1. read ``avail.idx`` before the ring entries and descriptors it publishes
   (load -> load);
2. write a used element before the ``used.idx`` that publishes it
   (store -> store);
3. after publishing ``used.idx``, read ``avail.flags``/``used_event`` only once
   that store is visible; and after asking for kicks (``used.flags`` or
   ``avail_event``) re-read ``avail.idx`` only once that request is visible
   (store -> load).

Python has no barrier primitive.  What it has is program order: each access
here is a separate C call (``memoryview`` slicing, ``struct`` packing and
unpacking), so neither the interpreter nor the C compiler reorders one access
across another.  On x86 the processor keeps load->load, store->store and
load->store order (TSO), so (1) and (2) hold by program order alone.  TSO does
*not* keep store->load order: a store can wait in the store buffer while a
later load completes.  Without a full barrier in (3) the device can read a
stale ``used_event`` while the driver reads a stale ``used.idx``, and both
sleep -- a lost interrupt, a hung guest.  The barrier comes from a
``threading.Lock``: acquiring and releasing an uncontended CPython lock is a
compare-and-swap and an atomic add on the lock word, ``lock``-prefixed
instructions that x86 orders as full barriers (:meth:`SplitQueue._fence`).

Index fields are read with a native ``"H"`` :class:`struct.Struct` and written
through a ``memoryview.cast("H")`` item assignment: each is one 2-byte load or
store, which on an aligned address is single-copy atomic, so the guest never
sees a half-written ``used.idx`` and the device never reads a torn
``avail.idx``.  (``struct.pack_into`` is *not* one store: it zeroes the target
first and then writes the value, and a polling driver saw ``used.idx`` drop to
0 between the two.)  Every index field is at least 2-aligned because the rings
are.

This object is not thread-safe: the device serialises calls to it.
"""

from __future__ import annotations

import struct
import sys
import threading
from typing import NamedTuple, Protocol

from ...errors import MemoryAccessError, PyhvError

VIRTQ_DESC_F_NEXT = 1
VIRTQ_DESC_F_WRITE = 2
VIRTQ_DESC_F_INDIRECT = 4

VIRTQ_AVAIL_F_NO_INTERRUPT = 1
VIRTQ_USED_F_NO_NOTIFY = 1

VIRTIO_F_INDIRECT_DESC = 28
VIRTIO_F_EVENT_IDX = 29
VIRTIO_F_VERSION_1 = 32

#: the largest queue size a split virtqueue can have (2.7)
MAX_QUEUE_SIZE = 32768
#: the most bytes one chain may describe: the used ring's len field is 32 bits
MAX_CHAIN_BYTES = 0xFFFF_FFFF

DESC_SIZE = 16
USED_ELEM_SIZE = 8

_DESC = struct.Struct("<QIHH")
_USED_ELEM = struct.Struct("<II")
# Native format: one 2-byte load or store (see "Memory ordering" above).  x86 is
# little-endian, which is the ring's byte order; elsewhere fall back to "<H".
_U16 = struct.Struct("H" if sys.byteorder == "little" else "<H")

_ADDR_LIMIT = 1 << 64


class QueueError(PyhvError):
    """The driver broke the virtqueue protocol; the device needs a reset."""


class GuestRam(Protocol):
    """What the queue needs of guest memory (:class:`pyhv.memory.GuestMemory`).

    Every method checks that ``[gpa, gpa + size)`` lies inside one RAM region
    and raises :class:`~pyhv.errors.MemoryAccessError` otherwise.
    """

    def read(self, gpa: int, size: int) -> bytes: ...

    def write(self, gpa: int, data: bytes | bytearray | memoryview) -> None: ...

    def view(self, gpa: int, size: int) -> memoryview: ...

    def contains(self, gpa: int, size: int) -> bool: ...


class Buffer(NamedTuple):
    """One guest buffer of a chain: ``length`` bytes at guest-physical ``addr``."""

    addr: int
    length: int
    writable: bool


class DescriptorChain:
    """One request: the buffers of a validated descriptor chain.

    Every buffer was checked to lie inside one guest RAM region when the chain
    was popped, so a device may access them through the memory's bounds-checked
    methods (``read``, ``write``, ``view``) directly.
    """

    __slots__ = ("_readable_len", "_writable_len", "generation", "head", "readable", "writable")

    def __init__(
        self,
        head: int,
        readable: list[Buffer],
        writable: list[Buffer],
        generation: int = 0,
        lengths: tuple[int, int] | None = None,
    ) -> None:
        #: head descriptor index: the id reported in the used ring
        self.head = head
        #: device-readable buffers, in order
        self.readable = readable
        #: device-writable buffers, in order
        self.writable = writable
        #: the queue configuration the chain was popped from (stale chains are dropped)
        self.generation = generation
        if lengths is None:  # the walk passes the sums it already has
            lengths = sum(b.length for b in readable), sum(b.length for b in writable)
        self._readable_len, self._writable_len = lengths

    def __repr__(self) -> str:
        return f"DescriptorChain(head={self.head}, readable={self.readable}, writable={self.writable})"

    def readable_len(self) -> int:
        return self._readable_len

    def writable_len(self) -> int:
        return self._writable_len

    def read_all(self, mem: GuestRam, limit: int) -> bytes:
        """The device-readable bytes in order, at most ``limit`` of them.

        A chain with more readable bytes yields its first ``limit``; whether that
        is an error is the device's call (compare :meth:`readable_len`).
        """
        if limit < 0:
            raise ValueError(f"negative read limit {limit}")
        want = min(limit, self._readable_len)
        out = bytearray()
        try:
            for b in self.readable:
                if len(out) >= want:
                    break
                # b lies in RAM (checked at pop); take never exceeds b.length
                out += mem.read(b.addr, min(b.length, want - len(out)))
        except MemoryAccessError as e:
            raise QueueError(f"reading chain {self.head}: {e}") from None
        return bytes(out)

    def write_at(self, mem: GuestRam, offset: int, data: bytes | bytearray | memoryview) -> int:
        """Write ``data`` into the writable buffers from byte ``offset`` on.

        Writes stop at the end of the last writable buffer; the result is the
        number of bytes of ``data`` written.
        """
        if offset < 0:
            raise ValueError(f"negative write offset {offset}")
        src = memoryview(data)
        done = 0
        skip = offset
        try:
            for b in self.writable:
                if done >= len(src):
                    break
                if skip >= b.length:
                    skip -= b.length
                    continue
                take = min(b.length - skip, len(src) - done)
                # [b.addr + skip, +take) is inside b, which lies in RAM (checked at pop)
                mem.write(b.addr + skip, src[done : done + take])
                done += take
                skip = 0
        except MemoryAccessError as e:
            raise QueueError(f"writing chain {self.head}: {e}") from None
        return done


def need_event(event: int, new: int, old: int) -> bool:
    """Whether moving an index from ``old`` to ``new`` crosses ``event`` (2.7.10, mod 2**16).

    True when ``event`` is one of ``old, old+1, ..., new-1``: the other side
    asked to be told once the index passes ``event``.
    """
    return (new - event - 1) & 0xFFFF < (new - old) & 0xFFFF


class SplitQueue:
    """One split virtqueue: configuration written by the transport, the ring protocol for the device.

    The transport writes :attr:`size`, :attr:`desc_addr`, :attr:`avail_addr`,
    :attr:`used_addr` and :attr:`ready` as the driver programs them, then calls
    :meth:`activate`.  Until :meth:`activate` succeeds the queue is inactive:
    :meth:`pop` returns None and nothing touches guest memory.
    """

    def __init__(self, mem: GuestRam, max_size: int = 256) -> None:
        if not 1 <= max_size <= MAX_QUEUE_SIZE or max_size & (max_size - 1):
            raise ValueError(f"queue max_size {max_size} is not a power of two in 1..{MAX_QUEUE_SIZE}")
        self.mem = mem
        self.max_size = max_size
        self._fence_lock = threading.Lock()
        self._generation = 0
        self.reset()

    def reset(self) -> None:
        """Back to the reset state: not ready, inactive, addresses 0, size ``max_size``."""
        self.size = self.max_size
        self.desc_addr = 0
        self.avail_addr = 0
        self.used_addr = 0
        self.ready = False
        self._clear()

    def _clear(self) -> None:
        self._active = False
        self.indirect_desc = False
        self.event_idx = False
        self.last_avail_idx = 0
        self.used_idx = 0
        self._shadow_avail_idx = 0  # the last avail.idx read (and checked)
        self._signalled_used: int | None = None  # used.idx at the last should_notify()
        self._notify = True  # whether the device wants kicks
        self._generation += 1  # chains popped before this point are stale
        # the ring geometry of the active configuration
        self._mask = 0
        self._avail_ring = 0
        self._used_ring = 0
        self._used_event = 0
        self._avail_event = 0

    @property
    def generation(self) -> int:
        """Changes at every reset and activation; chains popped before it are stale."""
        return self._generation

    @property
    def active(self) -> bool:
        """True between a successful :meth:`activate` and the next :meth:`reset`."""
        return self._active

    # --- activation -------------------------------------------------------------

    def used_ring_span(self) -> tuple[int, int]:
        """(guest-physical address, bytes) of the used ring with its avail_event:
        the queue writes it through a view taken at activation, which guest-memory
        write tracking does not see (migration sends these pages again)."""
        return self.used_addr, 4 + USED_ELEM_SIZE * self.size + 2

    def activate(self, features: int) -> None:
        """Check the configuration and start serving the rings from index 0.

        ``features`` are the negotiated feature bits; VIRTIO_F_INDIRECT_DESC and
        VIRTIO_F_EVENT_IDX are latched.  Raises :class:`QueueError` (and stays
        inactive) if the size or a ring is unusable.
        """
        self._clear()
        indirect = bool(features >> VIRTIO_F_INDIRECT_DESC & 1)
        event_idx = bool(features >> VIRTIO_F_EVENT_IDX & 1)
        self._check_geometry(self.size, self.desc_addr, self.avail_addr, self.used_addr, event_idx)
        self._start(indirect, event_idx)

    def _check_geometry(self, size: int, desc: int, avail: int, used: int, event_idx: bool) -> None:
        if not 1 <= size <= self.max_size or size & (size - 1):
            raise QueueError(f"queue size {size} is not a power of two in 1..{self.max_size}")
        extra = 2 if event_idx else 0
        rings = (
            ("descriptor table", desc, 16, DESC_SIZE * size),
            ("available ring", avail, 2, 4 + 2 * size + extra),
            ("used ring", used, 4, 4 + USED_ELEM_SIZE * size + extra),
        )
        for name, addr, align, length in rings:
            if not 0 <= addr < _ADDR_LIMIT:
                raise QueueError(f"{name} address {addr:#x} is invalid")
            if addr % align:
                raise QueueError(f"{name} at {addr:#x} is not {align}-byte aligned")
            if not self.mem.contains(addr, length):
                raise QueueError(f"{name} at {addr:#x}+{length:#x} is not inside guest RAM")

    def _start(self, indirect: bool, event_idx: bool) -> None:
        """Latch the features and the geometry of the (already checked) configuration."""
        self.indirect_desc = indirect
        self.event_idx = event_idx
        self._mask = self.size - 1
        self._avail_ring = self.avail_addr + 4
        self._used_ring = self.used_addr + 4
        self._used_event = self.avail_addr + 4 + 2 * self.size
        self._avail_event = self.used_addr + 4 + USED_ELEM_SIZE * self.size
        # Views of the three rings, taken once: each range was checked to lie
        # inside guest RAM (_check_geometry) before the queue starts.
        self._desc_view = self.mem.view(self.desc_addr, DESC_SIZE * self.size)
        self._avail_u16 = self.mem.view(self.avail_addr, 4 + 2 * self.size).cast("H")
        self._used_view = self.mem.view(self.used_addr, 4 + USED_ELEM_SIZE * self.size)
        self._used_u16 = self._used_view[:4].cast("H")
        self._active = True

    # --- ring access -------------------------------------------------------------
    # Every address passed to these lies inside a ring that activate() (or
    # set_state()) found inside one RAM region; the memory still checks bounds.

    def _load16(self, gpa: int) -> int:
        value: int = _U16.unpack(self.mem.view(gpa, 2))[0]
        return value

    def _store16(self, gpa: int, value: int) -> None:
        # One 2-byte store.  struct.pack_into would not do: it clears the target
        # and then writes the value, so a driver polling used.idx could see 0
        # in between and take the whole ring for new entries.
        self.mem.view(gpa, 2).cast("H")[0] = value

    def _fence(self) -> None:
        """A full memory barrier (store -> load); see "Memory ordering" in the module doc."""
        self._fence_lock.acquire()
        self._fence_lock.release()

    def _pending(self) -> int:
        """How many chains the driver has made available and the device not yet popped."""
        pending = (self._shadow_avail_idx - self.last_avail_idx) & 0xFFFF
        if pending:
            return pending
        idx = self._avail_u16[1]  # avail.idx
        pending = (idx - self.last_avail_idx) & 0xFFFF
        if pending > self.size:
            raise QueueError(
                f"avail.idx {idx} is {pending} entries ahead of {self.last_avail_idx},"
                f" more than the queue size {self.size}"
            )
        self._shadow_avail_idx = idx
        return pending

    # --- device interface ---------------------------------------------------------

    def has_available(self) -> bool:
        """Whether :meth:`pop` would return a chain (or raise)."""
        if not self._active:
            return False
        try:
            return self._pending() > 0
        except MemoryAccessError as e:
            raise QueueError(str(e)) from None

    def pop(self) -> DescriptorChain | None:
        """The next available chain, fully validated, or None if there is none."""
        if not self._active:
            return None
        try:
            if not self._pending():
                return None
            # the slot is below size: inside the available ring checked at activation
            head = self._avail_u16[2 + (self.last_avail_idx & self._mask)]  # avail.ring[slot]
            if head >= self.size:
                raise QueueError(f"available ring head {head} is not below the queue size {self.size}")
            chain = self._walk(head)
            self.last_avail_idx = (self.last_avail_idx + 1) & 0xFFFF
            if self.event_idx and self._notify:
                # kick me once the driver publishes past what I have consumed
                self._store16(self._avail_event, self.last_avail_idx)
            return chain
        except MemoryAccessError as e:
            raise QueueError(str(e)) from None

    def unpop(self, count: int = 1) -> None:
        """Give back the ``count`` chains just popped: the device could not use
        them yet (virtio-net had no frame for a receive buffer); the next pops
        return them again."""
        if not 0 <= count <= self.size:
            raise ValueError(f"cannot give back {count} chains of a queue of {self.size}")
        self.last_avail_idx = (self.last_avail_idx - count) & 0xFFFF
        if self._active and self.event_idx and self._notify:
            self._store16(self._avail_event, self.last_avail_idx)

    def _walk(self, head: int) -> DescriptorChain:
        # The common chain is one direct descriptor (a network frame, a vsock
        # packet): checked and returned without the general walk.  Its length
        # is a le32, so it never exceeds MAX_CHAIN_BYTES.
        addr, length, flags, _ = _DESC.unpack_from(self._desc_view, DESC_SIZE * head)
        if not flags & (VIRTQ_DESC_F_NEXT | VIRTQ_DESC_F_INDIRECT):
            if length == 0:
                raise QueueError(f"descriptor {head} has length 0")
            if not self.mem.contains(addr, length):
                raise QueueError(f"descriptor {head}: buffer {addr:#x}+{length:#x} is not inside guest RAM")
            if flags & VIRTQ_DESC_F_WRITE:
                return DescriptorChain(head, [], [Buffer(addr, length, True)], self._generation, (0, length))
            return DescriptorChain(head, [Buffer(addr, length, False)], [], self._generation, (length, 0))
        readable: list[Buffer] = []
        writable: list[Buffer] = []
        total = 0
        seen_writable = False
        index = head
        for _ in range(self.size):  # a longer chain revisits a descriptor: a loop
            # index < size, so the 16 bytes lie inside the descriptor table
            addr, length, flags, nxt = _DESC.unpack_from(self._desc_view, DESC_SIZE * index)
            if flags & VIRTQ_DESC_F_INDIRECT:
                if flags & VIRTQ_DESC_F_NEXT:
                    raise QueueError(f"descriptor {index} has both INDIRECT and NEXT")
                self._walk_indirect(index, addr, length, readable, writable, total, seen_writable)
                break
            total += length
            seen_writable = self._add_buffer(
                index, addr, length, flags, readable, writable, total, seen_writable
            )
            if not flags & VIRTQ_DESC_F_NEXT:
                break
            if nxt >= self.size:
                raise QueueError(f"descriptor {index}: next {nxt} is not below the queue size {self.size}")
            index = nxt
        else:
            raise QueueError(f"chain at head {head} is longer than the queue size {self.size} (a loop?)")
        return DescriptorChain(head, readable, writable, self._generation)

    def _walk_indirect(
        self,
        index: int,
        addr: int,
        length: int,
        readable: list[Buffer],
        writable: list[Buffer],
        total: int,
        seen_writable: bool,
    ) -> None:
        """Append the buffers of the indirect table that descriptor ``index`` points at."""
        if not self.indirect_desc:
            raise QueueError(f"descriptor {index} is INDIRECT but VIRTIO_F_INDIRECT_DESC was not negotiated")
        if length == 0 or length % DESC_SIZE:
            raise QueueError(
                f"descriptor {index}: indirect table length {length} is not a positive multiple of 16"
            )
        count = length // DESC_SIZE
        cap = self.size
        if count > cap:
            raise QueueError(f"descriptor {index}: indirect table of {count} entries, more than {cap}")
        if not self.mem.contains(addr, length):
            raise QueueError(
                f"descriptor {index}: indirect table at {addr:#x}+{length:#x} is not inside guest RAM"
            )
        # One read of at most 16 * cap bytes, inside RAM (just checked).  Parsing a
        # private copy also means the guest cannot change entries under the walk.
        table = self.mem.read(addr, length)
        entry = 0
        for _ in range(count):  # a longer walk revisits an entry: a loop
            e_addr, e_len, e_flags, e_next = _DESC.unpack_from(table, DESC_SIZE * entry)
            if e_flags & VIRTQ_DESC_F_INDIRECT:
                raise QueueError(f"indirect table of descriptor {index}: entry {entry} is INDIRECT (nested)")
            total += e_len
            seen_writable = self._add_buffer(
                index, e_addr, e_len, e_flags, readable, writable, total, seen_writable, entry
            )
            if not e_flags & VIRTQ_DESC_F_NEXT:
                return
            if e_next >= count:
                raise QueueError(
                    f"indirect table of descriptor {index}: entry {entry} next {e_next} is not below {count}"
                )
            entry = e_next
        raise QueueError(
            f"indirect table of descriptor {index}: chain longer than its {count} entries (a loop?)"
        )

    def _add_buffer(
        self,
        index: int,
        addr: int,
        length: int,
        flags: int,
        readable: list[Buffer],
        writable: list[Buffer],
        total: int,
        seen_writable: bool,
        entry: int | None = None,
    ) -> bool:
        """Check one buffer descriptor and append it; returns whether a writable buffer has been seen."""
        if length == 0:
            raise QueueError(f"{_where(index, entry)} has length 0")
        if total > MAX_CHAIN_BYTES:
            raise QueueError(f"{_where(index, entry)}: chain describes more than {MAX_CHAIN_BYTES} bytes")
        if not self.mem.contains(addr, length):
            raise QueueError(f"{_where(index, entry)}: buffer {addr:#x}+{length:#x} is not inside guest RAM")
        if flags & VIRTQ_DESC_F_WRITE:
            writable.append(Buffer(addr, length, True))
            return True
        if seen_writable:
            raise QueueError(f"{_where(index, entry)} is device-readable after a device-writable descriptor")
        readable.append(Buffer(addr, length, False))
        return False

    def push_used(self, chain: DescriptorChain, written: int, publish: bool = True) -> None:
        """Return ``chain`` to the driver with ``written`` bytes written into it.

        The used element is written before ``used.idx`` publishes it.  With
        ``publish=False`` the element is written but ``used.idx`` is left for
        :meth:`publish_used` (or :meth:`should_notify`): a batch of completions
        costs the driver one index update (and at most one interrupt).  A chain
        popped before the last reset or activation is dropped silently: the
        driver has forgotten it.
        """
        if not self._active or chain.generation != self._generation:
            return
        if not 0 <= written <= chain._writable_len:
            raise ValueError(
                f"chain {chain.head}: {written} bytes written, it has {chain.writable_len()} writable"
            )
        # slot < size: the element lies inside the used ring checked at activation
        _USED_ELEM.pack_into(self._used_view, 4 + USED_ELEM_SIZE * (self.used_idx & self._mask), chain.head, written)
        self.used_idx = (self.used_idx + 1) & 0xFFFF
        if publish:
            self._used_u16[1] = self.used_idx  # used.idx: one 2-byte store, after the element

    def publish_used(self) -> None:
        """Publish the elements :meth:`push_used` wrote with ``publish=False``:
        one store of ``used.idx``, after them (store -> store, see "Memory ordering")."""
        if self._active and self._used_u16[1] != self.used_idx:
            self._used_u16[1] = self.used_idx

    def should_notify(self) -> bool:
        """After pushing: whether the driver wants a used-buffer notification now.

        With VIRTIO_F_EVENT_IDX: whether ``used.idx`` passed ``used_event`` since
        the last call (always true on the first call after activation).
        Without it: unless the driver set VIRTQ_AVAIL_F_NO_INTERRUPT.
        """
        if not self._active:
            return False
        self.publish_used()
        self._fence()  # used.idx must be visible before the driver's flags are read
        try:
            if self.event_idx:
                old = self._signalled_used
                new = self._signalled_used = self.used_idx
                return old is None or need_event(self._load16(self._used_event), new, old)
            return not self._avail_u16[0] & VIRTQ_AVAIL_F_NO_INTERRUPT
        except MemoryAccessError as e:
            raise QueueError(str(e)) from None

    def set_notification(self, enabled: bool) -> None:
        """Tell the driver whether the device wants available-buffer notifications (kicks).

        With VIRTIO_F_EVENT_IDX enabling publishes ``avail_event`` (and
        :meth:`pop` keeps it current); disabling stops updating it.  Without it
        VIRTQ_USED_F_NO_NOTIFY in ``used.flags`` is cleared or set.  After
        enabling, check :meth:`has_available` again: a chain added just before
        the request became visible brought no kick.
        """
        self._notify = enabled
        if not self._active:
            return
        try:
            if self.event_idx:
                if enabled:
                    self._store16(self._avail_event, self.last_avail_idx)
            else:
                self._store16(self.used_addr, 0 if enabled else VIRTQ_USED_F_NO_NOTIFY)
        except MemoryAccessError as e:
            raise QueueError(str(e)) from None
        if enabled:
            self._fence()  # the request must be visible before avail.idx is read again

    # --- state ------------------------------------------------------------------------

    def state(self) -> dict[str, object]:
        """The queue as plain values, for :meth:`set_state`."""
        return {
            "size": self.size,
            "desc_addr": self.desc_addr,
            "avail_addr": self.avail_addr,
            "used_addr": self.used_addr,
            "ready": self.ready,
            "active": self._active,
            "indirect_desc": self.indirect_desc,
            "event_idx": self.event_idx,
            "last_avail_idx": self.last_avail_idx,
            "used_idx": self.used_idx,
            "signalled_used": self._signalled_used,
            "notify": self._notify,
        }

    def set_state(self, state: dict[str, object]) -> None:
        """Restore what :meth:`state` returned; everything is checked before anything changes.

        Raises :class:`QueueError` for a malformed state or, if it says the
        queue is active, for a configuration :meth:`activate` would refuse.
        Chains popped before the call are stale afterwards.
        """
        if not isinstance(state, dict):
            raise QueueError("queue state: not a dict")
        size = _int_field(state, "size", 0xFFFF_FFFF)
        desc = _int_field(state, "desc_addr", _ADDR_LIMIT - 1)
        avail = _int_field(state, "avail_addr", _ADDR_LIMIT - 1)
        used = _int_field(state, "used_addr", _ADDR_LIMIT - 1)
        last_avail_idx = _int_field(state, "last_avail_idx", 0xFFFF)
        used_idx = _int_field(state, "used_idx", 0xFFFF)
        ready, active, indirect, event_idx, notify = (
            _bool_field(state, key) for key in ("ready", "active", "indirect_desc", "event_idx", "notify")
        )
        signalled = (
            None if state.get("signalled_used") is None else _int_field(state, "signalled_used", 0xFFFF)
        )
        if active:
            self._check_geometry(size, desc, avail, used, event_idx)
        # all checked: now change
        self.size, self.desc_addr, self.avail_addr, self.used_addr, self.ready = (
            size,
            desc,
            avail,
            used,
            ready,
        )
        self._clear()
        self.indirect_desc, self.event_idx = indirect, event_idx
        if active:
            self._start(indirect, event_idx)
        self.last_avail_idx = self._shadow_avail_idx = last_avail_idx
        self.used_idx = used_idx
        self._signalled_used = signalled
        self._notify = notify


def _where(index: int, entry: int | None) -> str:
    return f"descriptor {index}" if entry is None else f"descriptor {index} indirect entry {entry}"


def _int_field(state: dict[str, object], key: str, limit: int) -> int:
    v = state.get(key)
    if not isinstance(v, int) or isinstance(v, bool) or not 0 <= v <= limit:
        raise QueueError(f"queue state: bad {key} {v!r}")
    return v


def _bool_field(state: dict[str, object], key: str) -> bool:
    v = state.get(key)
    if not isinstance(v, bool):
        raise QueueError(f"queue state: bad {key} {v!r}")
    return v
