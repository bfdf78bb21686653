"""QEMU's firmware configuration device (fw_cfg), x86 I/O-port flavour.

fw_cfg hands the guest named blobs ("items"): firmware reads its memory map,
CPU count, boot order and tables from it, and Linux exposes it under
``/sys/firmware/qemu_fw_cfg``.  The interface is QEMU's ``docs/specs/fw_cfg.rst``:

====== ===== =========================================================
port   width what
====== ===== =========================================================
0x510  16    selector (write): picks an item, sets the data offset to 0
0x511  8     data (read): the next byte of the item, 0 past its end
0x514  2x32  DMA address, big-endian: the high half at 0x514, then the
             low half at 0x518, whose write starts the transfer; reads
             give the signature ``QEMU CFG``
====== ===== =========================================================

As in QEMU, a byte read at 0x510 is a data read too (the two ports are one
register pair), and a 16-bit write anywhere in the pair selects.  Selector
bit 14 (the old write channel) is ignored when looking an item up; a key
with no item reads as zeros.

A DMA transfer reads an ``FWCfgDmaAccess`` {control, length, address}
(big-endian, 16 bytes) at the address written.  Control bits: SELECT (the
upper 16 bits are a selector, chosen first), then one of READ (copy
``length`` bytes of the item from the data offset to ``address``; past the
item's end the guest gets zeros), WRITE, SKIP (move the offset on).  The
device then writes the control word back: 0, or ERROR.  What it checks,
since every value is the guest's:

- the descriptor must be guest RAM; if it is not, the request fails, and
  ERROR is written to its control word if just that word is RAM;
- ``[address, address + length)`` of a READ must be guest RAM in one piece,
  checked before anything is written (so no 64-bit wrap and no partial copy);
- every item is read-only in this slice: a WRITE of one or more bytes fails;
- an ERROR bit the guest set itself fails the request, as in QEMU.

Items have fixed keys (signature, id, UUID, RAM size, CPU counts, the kernel
items a firmware's Linux loader reads, the file directory) and "files" from key 0x20 on, named in the directory (key 0x19:
a big-endian count, then 64-byte entries {size BE32, select BE16, reserved,
name[56]}), sorted by name as QEMU sorts them.
"""

from __future__ import annotations

import struct
import threading
from collections.abc import Iterable, Mapping, Sequence
from typing import Any, Protocol

#: the selector/data pair, and the DMA address register (I/O ports)
PORT_BASE = 0x510
PORT_LENGTH = 2
DMA_BASE = 0x514
DMA_LENGTH = 8
#: the range the ACPI node reports (QEMU's: selector to the end of the DMA register)
ACPI_IO_LENGTH = DMA_BASE + DMA_LENGTH - PORT_BASE
ACPI_HID = "QEMU0002"

# item keys (QEMU's FW_CFG_*)
KEY_SIGNATURE = 0x0000
KEY_ID = 0x0001
KEY_UUID = 0x0002
KEY_RAM_SIZE = 0x0003
KEY_NB_CPUS = 0x0005
KEY_KERNEL_ADDR = 0x0007
KEY_KERNEL_SIZE = 0x0008
KEY_INITRD_ADDR = 0x000A
KEY_INITRD_SIZE = 0x000B
KEY_MAX_CPUS = 0x000F
KEY_KERNEL_DATA = 0x0011
KEY_INITRD_DATA = 0x0012
KEY_CMDLINE_ADDR = 0x0013
KEY_CMDLINE_SIZE = 0x0014
KEY_CMDLINE_DATA = 0x0015
KEY_SETUP_ADDR = 0x0016
KEY_SETUP_SIZE = 0x0017
KEY_SETUP_DATA = 0x0018
KEY_FILE_DIR = 0x0019
KEY_FILE_FIRST = 0x0020
KEY_WRITE_CHANNEL = 0x4000  # ignored in lookups
KEY_INVALID = 0xFFFF

SIGNATURE = b"QEMU"
ID_TRADITIONAL = 1 << 0
ID_DMA = 1 << 1
DMA_SIGNATURE = b"QEMU CFG"

# FWCfgDmaAccess.control bits
DMA_CTL_ERROR = 1 << 0
DMA_CTL_READ = 1 << 1
DMA_CTL_SKIP = 1 << 2
DMA_CTL_SELECT = 1 << 3
DMA_CTL_WRITE = 1 << 4
DESCRIPTOR = struct.Struct(">IIQ")  # control, length, address

FILE_NAME_SIZE = 56  # name[56] in a directory entry, NUL included
FILE_NAME_MAX = FILE_NAME_SIZE - 1
_DIR_ENTRY = struct.Struct(">IHH56s")
_E820_ENTRY = struct.Struct("<QQI")  # QEMU's etc/e820: address, length, type (packed)

#: the files pyhv itself provides (the model refuses these names and all of etc/ for user entries)
E820_FILE = "etc/e820"
BOOTORDER_FILE = "bootorder"
ACPI_TABLES_FILE = "etc/acpi/tables"
ACPI_RSDP_FILE = "etc/acpi/rsdp"
TABLE_LOADER_FILE = "etc/table-loader"
OWN_FILES = (BOOTORDER_FILE, E820_FILE)

#: the kernel items: (address key, size key, data key) of each piece
KERNEL_KEYS = {
    "setup": (KEY_SETUP_ADDR, KEY_SETUP_SIZE, KEY_SETUP_DATA),
    "kernel": (KEY_KERNEL_ADDR, KEY_KERNEL_SIZE, KEY_KERNEL_DATA),
    "initrd": (KEY_INITRD_ADDR, KEY_INITRD_SIZE, KEY_INITRD_DATA),
    "cmdline": (KEY_CMDLINE_ADDR, KEY_CMDLINE_SIZE, KEY_CMDLINE_DATA),
}

#: a DMA transfer copies at most this much guest memory at a time
_CHUNK = 1 << 20
_ZEROS = bytes(_CHUNK)
_ADDRESS_LIMIT = 1 << 64


class GuestRam(Protocol):
    """What fw_cfg needs of guest memory (pyhv.memory.GuestMemory)."""

    def contains(self, gpa: int, size: int = 1) -> bool: ...

    def read(self, gpa: int, size: int) -> bytes: ...

    def write(self, gpa: int, data: bytes | bytearray | memoryview) -> None: ...


def e820_file(entries: Iterable[tuple[int, int, int]]) -> bytes:
    """``etc/e820``: (address, length, type) entries, 20 bytes each, little-endian."""
    return b"".join(_E820_ENTRY.pack(addr, size, kind) for addr, size, kind in entries)


def _be(value: int, size: int) -> int:
    """A port write's value, taken as the big-endian number its bytes spell."""
    return int.from_bytes(value.to_bytes(size, "little"), "big")


class FwCfg:
    """The items and the guest's position in them (selector, offset, pending DMA high half)."""

    def __init__(
        self, memory: GuestRam, *, ram_size: int, nb_cpus: int, max_cpus: int,
        files: Sequence[tuple[str, bytes]] = (), uuid: bytes = bytes(16),
        kernel: Mapping[str, tuple[int, bytes]] | None = None,
    ) -> None:
        """``kernel``: piece name (a :data:`KERNEL_KEYS` key) -> (address, bytes), the
        items a firmware's Linux loader reads (``boot/firmware.py``); empty pieces are left out."""
        if len(uuid) != 16:
            raise ValueError("fw_cfg: a UUID is 16 bytes")
        self._memory = memory
        self._lock = threading.Lock()
        items: dict[int, bytes] = {
            KEY_SIGNATURE: SIGNATURE,
            KEY_ID: struct.pack("<I", ID_TRADITIONAL | ID_DMA),
            KEY_UUID: bytes(uuid),
            KEY_RAM_SIZE: struct.pack("<Q", ram_size),
            KEY_NB_CPUS: struct.pack("<H", nb_cpus),
            KEY_MAX_CPUS: struct.pack("<H", max_cpus),
        }
        for piece, (addr, data) in (kernel or {}).items():
            if data:
                addr_key, size_key, data_key = KERNEL_KEYS[piece]
                items.update({addr_key: struct.pack("<I", addr), size_key: struct.pack("<I", len(data)),
                              data_key: bytes(data)})
        names = sorted(name for name, _ in files)
        if len(set(names)) != len(names):
            raise ValueError("fw_cfg: two files with the same name")
        by_name = dict(files)
        directory = bytearray(struct.pack(">I", len(names)))
        for i, name in enumerate(names):
            encoded = name.encode("ascii")
            if not 0 < len(encoded) <= FILE_NAME_MAX or b"\0" in encoded:
                raise ValueError(f"fw_cfg: bad file name {name!r:.70}")
            data = bytes(by_name[name])
            if len(data) >= 1 << 32:
                raise ValueError(f"fw_cfg: {name} is too large")
            items[KEY_FILE_FIRST + i] = data
            directory += _DIR_ENTRY.pack(len(data), KEY_FILE_FIRST + i, 0, encoded)
        items[KEY_FILE_DIR] = bytes(directory)
        self._items = items
        self._keys = {name: KEY_FILE_FIRST + i for i, name in enumerate(names)}
        self.selector = KEY_SIGNATURE
        self.offset = 0
        self.dma_high = 0
        self.ports = _Ports(self)
        self.dma = _DmaRegister(self)

    # --- lookup (tests and the builder) ----------------------------------------------------

    def key_of(self, name: str) -> int:
        """The selector key of file ``name``."""
        return self._keys[name]

    def item(self, key: int) -> bytes | None:
        return self._items.get(key & ~KEY_WRITE_CHANNEL)

    # --- the selector/data pair ---------------------------------------------------------------

    def select(self, key: int) -> None:
        with self._lock:
            self._select(key)

    def _select(self, key: int) -> None:
        self.selector = key & 0xFFFF
        self.offset = 0

    def read_data(self) -> int:
        with self._lock:
            item = self.item(self.selector)
            if item is None or self.offset >= len(item):
                return 0
            value = item[self.offset]
            self.offset += 1
            return value

    # --- DMA ----------------------------------------------------------------------------------------

    def write_dma(self, offset: int, size: int, value: int) -> None:
        with self._lock:
            if size == 4 and offset == 0:
                self.dma_high = _be(value, 4)
            elif size == 4 and offset == 4:
                address = self.dma_high << 32 | _be(value, 4)
                self.dma_high = 0
                self._transfer(address)
            elif size == 8 and offset == 0:
                self.dma_high = 0
                self._transfer(_be(value, 8))
            # other widths and offsets are not accesses QEMU takes: dropped

    def _transfer(self, address: int) -> None:
        if not self._memory.contains(address, DESCRIPTOR.size):
            self._report(address, DMA_CTL_ERROR)
            return
        control, length, buffer = DESCRIPTOR.unpack(self._memory.read(address, DESCRIPTOR.size))
        self._report(address, 0 if self._run(control, length, buffer) else DMA_CTL_ERROR)

    def _report(self, address: int, control: int) -> None:
        """The control word back into the descriptor, if that much of it is RAM."""
        if self._memory.contains(address, 4):
            self._memory.write(address, struct.pack(">I", control))

    def _run(self, control: int, length: int, buffer: int) -> bool:
        """One request; False fails it (ERROR).  QEMU's order: SELECT, then READ, WRITE or SKIP."""
        if control & DMA_CTL_ERROR:
            return False
        if control & DMA_CTL_SELECT:
            self._select(control >> 16)
        item = self.item(self.selector)
        remaining = max(0, len(item) - self.offset) if item is not None else 0
        if length == 0:
            return True
        if control & DMA_CTL_READ:
            return self._read(item or b"", remaining, length, buffer)  # no item: all zeros
        if control & DMA_CTL_WRITE:
            return False  # every item is read-only
        if control & DMA_CTL_SKIP:
            self.offset += min(length, remaining)
        return True

    def _read(self, item: bytes, remaining: int, length: int, buffer: int) -> bool:
        # The whole destination is checked first: nothing is written unless all
        # of it is guest RAM (the sum cannot wrap: Python integers).
        if buffer + length > _ADDRESS_LIMIT or not self._memory.contains(buffer, length):
            return False
        count = min(length, remaining)
        for pos in range(0, count, _CHUNK):
            start = self.offset + pos
            self._memory.write(buffer + pos, item[start : start + min(_CHUNK, count - pos)])
        self.offset += count
        for pos in range(count, length, _CHUNK):  # past the item's end: zeros (inside the range checked above)
            self._memory.write(buffer + pos, memoryview(_ZEROS)[: min(_CHUNK, length - pos)])
        return True

    # --- state ------------------------------------------------------------------------------------------

    def state(self) -> dict[str, Any]:
        """The guest's position: the selector, the data offset and the DMA address's high half."""
        with self._lock:
            return {"selector": self.selector, "offset": self.offset, "dma_high": self.dma_high}

    def set_state(self, state: Any) -> None:
        """Take back what :meth:`state` returned; every value is checked first (the
        items themselves come from the description, so the offset must fit them)."""
        from ..state import DeviceStateError, check_keys, int_field

        check_keys(state, ("selector", "offset", "dma_high"), "fw_cfg")
        selector = int_field(state, "selector", 0xFFFF, "fw_cfg")
        item = self.item(selector)
        offset = int_field(state, "offset", len(item) if item is not None else 0, "fw_cfg")
        dma_high = int_field(state, "dma_high", 0xFFFF_FFFF, "fw_cfg")
        if item is None and offset:
            raise DeviceStateError("fw_cfg state: offset into a selector with no item")
        with self._lock:
            self.selector, self.offset, self.dma_high = selector, offset, dma_high


class _Ports:
    """0x510-0x511 on the port bus: byte reads are data, 16-bit writes select."""

    def __init__(self, dev: FwCfg) -> None:
        self._dev = dev

    def read(self, offset: int, size: int) -> int:
        if size != 1:
            return (1 << (8 * size)) - 1  # not an access QEMU takes: all ones, as unclaimed
        return self._dev.read_data()

    def write(self, offset: int, size: int, value: int) -> None:
        if size == 2:
            self._dev.select(value)
        # byte writes to the data register are ignored (items are read-only)


class _DmaRegister:
    """0x514-0x51b on the port bus: the DMA address, and its signature when read."""

    def __init__(self, dev: FwCfg) -> None:
        self._dev = dev

    def read(self, offset: int, size: int) -> int:
        return int.from_bytes(DMA_SIGNATURE[offset : offset + size].ljust(size, b"\0"), "little")

    def write(self, offset: int, size: int, value: int) -> None:
        self._dev.write_dma(offset, size, value)
