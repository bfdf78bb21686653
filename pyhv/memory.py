"""Guest physical memory: host mappings registered with KVM as memory slots.

Layout (x86): RAM starts at guest-physical 0 and runs up to the MMIO hole at
3 GiB (:data:`MMIO_HOLE_START`); RAM beyond that continues at 4 GiB.  Each RAM
range is one host mapping and one KVM memory slot, so KVM's second-level
translation (guest-physical to host) is exactly the table in :attr:`regions`.

Every access from pyhv into guest memory goes through :meth:`GuestMemory.read`,
:meth:`GuestMemory.write` or :meth:`GuestMemory.view`, which check that the
whole range ``[gpa, gpa + size)`` lies inside one region before touching host
memory; a range that straddles regions or leaves RAM raises
:class:`~pyhv.errors.MemoryAccessError`.
"""

from __future__ import annotations

import os
from typing import Protocol

from ._sys import libc
from ._sys.kvm_h import KVM_MEM_READONLY
from .errors import MemoryAccessError, PyhvError

KiB = 1 << 10
MiB = 1 << 20
GiB = 1 << 30
PAGE_SIZE = 4096

#: start of the hole below 4 GiB kept free of RAM for device MMIO, APIC, BIOS area
MMIO_HOLE_START = 3 * GiB
MMIO_HOLE_END = 4 * GiB


def x86_ram_layout(size: int) -> list[tuple[int, int]]:
    """(gpa, size) of each RAM range for a guest with ``size`` bytes of memory."""
    if size <= 0 or size % PAGE_SIZE:
        raise PyhvError(f"memory size {size} must be a positive multiple of {PAGE_SIZE}")
    low = min(size, MMIO_HOLE_START)
    ranges = [(0, low)]
    if size > low:
        ranges.append((MMIO_HOLE_END, size - low))
    return ranges


class Region:
    """One RAM range: guest-physical [gpa, gpa+size) is host [host_addr, host_addr+size)."""

    __slots__ = ("end", "fd", "file_backed", "gpa", "host_addr", "size", "view")

    def __init__(
        self, gpa: int, size: int, host_addr: int, view: memoryview, fd: int = -1, file_backed: bool = False
    ) -> None:
        self.gpa = gpa
        self.size = size
        self.end = gpa + size  # a plain attribute: bounds checks read it on every access
        self.host_addr = host_addr
        self.view = view
        self.fd = fd  # memfd backing, or -1 for anonymous memory
        #: a private mapping of a snapshot file: pages not yet written read the file
        self.file_backed = file_backed


class GuestMemory:
    """Guest RAM made of host mappings; all accesses bounds-checked."""

    def __init__(self, size: int, *, memfd: bool = False) -> None:
        self.size = size
        self.regions: list[Region] = []
        #: read-only memory (a firmware ROM), registered with KVM_MEM_READONLY after the RAM:
        #: guest reads come from it, guest writes exit as MMIO; pyhv's own accesses never see it
        self.roms: list[Region] = []
        self._low = Region(0, 0, 0, memoryview(b""))
        try:
            for gpa, length in x86_ram_layout(size):
                self.regions.append(self._map(gpa, length, memfd))
            self._low = self.regions[0]
        except OSError as e:
            self.close()
            raise PyhvError(f"cannot allocate {size // MiB} MiB of guest memory: {e.strerror}") from None

    @classmethod
    def from_file(cls, size: int, fd: int, offsets: list[int]) -> GuestMemory:
        """Guest RAM mapped private (copy-on-write) from file ``fd``: RAM range i
        starts at file offset ``offsets[i]`` (page aligned).  Nothing is read
        now: the guest faults pages in from the page cache as it touches them,
        and its writes never reach the file."""
        self = cls.__new__(cls)
        self.size = size
        self.regions = []
        self.roms = []
        self._low = Region(0, 0, 0, memoryview(b""))
        prot = libc.PROT_READ | libc.PROT_WRITE
        try:
            for (gpa, length), offset in zip(x86_ram_layout(size), offsets, strict=True):
                addr = libc.mmap(length, prot, libc.MAP_PRIVATE | libc.MAP_NORESERVE, fd, offset)
                self.regions.append(Region(gpa, length, addr, libc.view(addr, length), file_backed=True))
            self._low = self.regions[0]
        except OSError as e:
            self.close()
            raise PyhvError(f"cannot map {size // MiB} MiB of guest memory from the snapshot: {e.strerror}") from None
        return self

    def resident_pages(self, region: Region) -> bytes:
        """mincore() of a region: byte i has bit 0 set if page i is in memory."""
        return libc.mincore(region.host_addr, region.size)

    @staticmethod
    def _map(gpa: int, length: int, memfd: bool) -> Region:
        prot = libc.PROT_READ | libc.PROT_WRITE
        if memfd:
            fd = os.memfd_create(f"pyhv-ram-{gpa:#x}", os.MFD_CLOEXEC)
            try:
                os.ftruncate(fd, length)
                addr = libc.mmap(length, prot, libc.MAP_SHARED | libc.MAP_NORESERVE, fd)
            except OSError:
                os.close(fd)
                raise
        else:
            fd = -1
            addr = libc.mmap(
                length, prot, libc.MAP_PRIVATE | libc.MAP_ANONYMOUS | libc.MAP_NORESERVE
            )
        return Region(gpa, length, addr, libc.view(addr, length), fd)

    # --- translation -----------------------------------------------------------

    def _find(self, gpa: int, size: int) -> Region:
        # Device emulation calls this for every ring and buffer access; the
        # low region (where almost everything is) is tried first.
        low = self._low
        if 0 <= gpa and 0 <= size and gpa + size <= low.end:
            return low
        if gpa < 0 or size < 0:
            raise MemoryAccessError(f"guest range {gpa:#x}+{size:#x} is invalid")
        for region in self.regions:
            if region.gpa <= gpa and gpa + size <= region.end:
                return region
        raise MemoryAccessError(f"guest range {gpa:#x}+{size:#x} is outside guest RAM")

    def contains(self, gpa: int, size: int = 1) -> bool:
        if 0 <= gpa and 0 <= size and gpa + size <= self._low.end:
            return True
        try:
            self._find(gpa, size)
        except MemoryAccessError:
            return False
        return True

    def host_address(self, gpa: int, size: int = 1) -> int:
        """Host virtual address of ``gpa``, after checking ``[gpa, gpa+size)`` is RAM."""
        region = self._find(gpa, size)
        return region.host_addr + (gpa - region.gpa)

    def view(self, gpa: int, size: int) -> memoryview:
        """A writable view of ``[gpa, gpa+size)``, which must lie inside one RAM region."""
        region = self._find(gpa, size)
        start = gpa - region.gpa
        if self.touched is not None:
            self._touch(gpa, size)
        return region.view[start : start + size]

    def region_view(self, gpa: int, size: int) -> memoryview:
        """:meth:`view` for the VMM's own copying (migration): not recorded as touched."""
        region = self._find(gpa, size)
        start = gpa - region.gpa
        return region.view[start : start + size]

    # --- what devices touched (migration) ----------------------------------------

    #: page numbers handed out through view/write/discard since tracking began,
    #: or None when not tracking.  KVM's dirty log sees only the guest's own
    #: stores; this is how writes by devices (DMA) are found.
    touched: set[int] | None = None

    def track(self, on: bool) -> set[int]:
        """Start (or stop) recording the pages devices reach; returns what was recorded."""
        seen = self.touched or set()
        self.touched = set() if on else None
        return seen

    def _touch(self, gpa: int, size: int) -> None:
        assert self.touched is not None
        self.touched.update(range(gpa >> 12, (gpa + max(size, 1) - 1 >> 12) + 1))

    def read(self, gpa: int, size: int) -> bytes:
        return bytes(self.view(gpa, size))

    def write(self, gpa: int, data: bytes | bytearray | memoryview) -> None:
        self.view(gpa, len(data))[:] = data

    def discard(self, gpa: int, size: int) -> None:
        """Give the host pages of ``[gpa, gpa+size)`` back (balloon inflate).

        The range must be page aligned and inside one region.  The guest reads
        zeroes there afterwards, and the host allocates again on first touch.
        """
        if gpa % PAGE_SIZE or size % PAGE_SIZE:
            raise MemoryAccessError(f"discard of {gpa:#x}+{size:#x} is not page aligned")
        region = self._find(gpa, size)
        offset = gpa - region.gpa
        if self.touched is not None:
            self._touch(gpa, size)
        if region.fd >= 0:
            # shared memfd pages live in the file: punch them out of it
            libc.fallocate(region.fd, libc.FALLOC_FL_PUNCH_HOLE | libc.FALLOC_FL_KEEP_SIZE, offset, size)
        else:
            libc.madvise(region.host_addr + offset, size, libc.MADV_DONTNEED)

    # --- guest-virtual addresses (introspection, the debugger) --------------------

    def translate(self, cr3: int, va: int, la57: bool = False) -> int:
        """The guest-physical address of ``va`` under the page tables at ``cr3``
        (4-level, or 5-level with ``la57``); NotMapped if a walk would fault.
        See pyhv/paging.py (the tables are read through :meth:`read`, bounds-checked)."""
        from .paging import translate

        return translate(self, cr3, va, la57).gpa

    def read_virtual(self, cr3: int, va: int, size: int, la57: bool = False) -> bytes:
        """``size`` bytes at guest-virtual ``va``, page by page through the tables at ``cr3``."""
        from .paging import read_virtual

        return read_virtual(self, cr3, va, size, la57)

    def ram_ranges(self) -> list[tuple[int, int]]:
        return [(r.gpa, r.size) for r in self.regions]

    # --- lifetime --------------------------------------------------------------

    def register(self, vm: VmLike, first_slot: int = 0, flags: int = 0) -> None:
        """Register every region with KVM as a memory slot (again, to change ``flags``);
        ROMs go into the slots after the RAM's, read-only."""
        for i, region in enumerate(self.regions):
            vm.set_user_memory_region(first_slot + i, region.gpa, region.size, region.host_addr, flags)
        for i, rom in enumerate(self.roms, start=first_slot + len(self.regions)):
            vm.set_user_memory_region(i, rom.gpa, rom.size, rom.host_addr, KVM_MEM_READONLY)

    def add_rom(self, gpa: int, data: bytes) -> None:
        """Read-only memory holding ``data`` at ``[gpa, gpa + len(data))``, which must be
        page aligned and clear of RAM and of the other ROMs (checked here)."""
        size = len(data)
        if gpa % PAGE_SIZE or size % PAGE_SIZE or not size:
            raise PyhvError(f"ROM at {gpa:#x}+{size:#x} is not page aligned")
        if any(r.gpa < gpa + size and gpa < r.end for r in (*self.regions, *self.roms)):
            raise PyhvError(f"ROM at {gpa:#x}+{size:#x} overlaps guest memory")
        try:
            addr = libc.mmap(size, libc.PROT_READ | libc.PROT_WRITE, libc.MAP_PRIVATE | libc.MAP_ANONYMOUS)
        except OSError as e:
            raise PyhvError(f"cannot allocate a ROM of {size} bytes: {e.strerror}") from None
        rom = Region(gpa, size, addr, libc.view(addr, size))
        rom.view[:] = data  # the mapping is exactly ``size`` bytes long
        self.roms.append(rom)

    def close(self) -> None:
        """Unmap everything.  Views handed out earlier must not be used after this."""
        for region in (*self.regions, *self.roms):
            region.view.release()
            libc.munmap(region.host_addr, region.size)
            if region.fd >= 0:
                os.close(region.fd)
        self.regions = []
        self.roms = []
        self._low = Region(0, 0, 0, memoryview(b""))  # every access now fails cleanly


class VmLike(Protocol):
    """What :meth:`GuestMemory.register` needs of a VM (pyhv.kvm.Vm)."""

    def set_user_memory_region(
        self, slot: int, guest_phys_addr: int, memory_size: int, userspace_addr: int, flags: int = 0
    ) -> None: ...
