"""The configuration space of one PCI function (PCI Local Bus 3.0, chapter 6).

4 KiB, the size PCI Express gives a function: the first 256 bytes are the
conventional header and capability area, the rest the extended space (empty
here: a zero header at 0x100 says "no extended capabilities").

Only a type 0 (endpoint) header is modelled.  Every byte has a writable mask:
a guest write changes only the bits the mask allows, so identity fields,
BAR type bits and capability headers stay what the device model set.  The
guest-facing :meth:`PciConfigSpace.read` and :meth:`PciConfigSpace.write`
never raise: an access of a size other than 1, 2 or 4 bytes, or one that does
not fit inside the 4 KiB, reads all ones and writes nothing.

BARs are memory BARs (32- or 64-bit, a 64-bit BAR takes two slots).  The
sizing protocol needs no special code: the address bits below the BAR size
have a zero writable mask, so writing all ones and reading back yields the
size mask together with the read-only type bits.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Literal, NamedTuple

from ..bus import ALL_ONES

CONFIG_SIZE = 4096
CONVENTIONAL_SIZE = 256

# --- type 0 header (PCI 3.0, 6.1) ----------------------------------------------
VENDOR_ID = 0x00
DEVICE_ID = 0x02
COMMAND = 0x04
STATUS = 0x06
REVISION_ID = 0x08
CLASS_CODE = 0x09  # 3 bytes: programming interface, sub-class, base class
CACHE_LINE_SIZE = 0x0C
LATENCY_TIMER = 0x0D
HEADER_TYPE = 0x0E
BIST = 0x0F
BAR0 = 0x10
BAR_COUNT = 6
BAR_END = BAR0 + 4 * BAR_COUNT  # 0x28
SUBSYSTEM_VENDOR_ID = 0x2C
SUBSYSTEM_ID = 0x2E
EXPANSION_ROM = 0x30
CAPABILITIES_POINTER = 0x34
INTERRUPT_LINE = 0x3C
INTERRUPT_PIN = 0x3D

HEADER_TYPE_ENDPOINT = 0x00

COMMAND_IO = 1 << 0
COMMAND_MEMORY = 1 << 1
COMMAND_BUS_MASTER = 1 << 2
COMMAND_INTX_DISABLE = 1 << 10
#: the command bits a guest may change; all others read as zero
COMMAND_WRITABLE = COMMAND_IO | COMMAND_MEMORY | COMMAND_BUS_MASTER | COMMAND_INTX_DISABLE

STATUS_CAPABILITIES = 1 << 4

# memory BAR low bits (6.2.5.1): bit 0 = 0 (memory), bits 2:1 type, bit 3 prefetchable
BAR_TYPE_64 = 0x4
BAR_PREFETCHABLE = 0x8
BAR_FLAG_BITS = 0xF

#: capabilities live between the end of the header and the end of the conventional space
CAPABILITIES_START = 0x40

#: capability IDs (PCI Code and ID Assignment)
CAP_ID_VENDOR = 0x09
CAP_ID_PCIE = 0x10
CAP_ID_MSIX = 0x11

MIN_BAR_SIZE = 16
MAX_BAR32_SIZE = 1 << 31

BarKind = Literal["mem32", "mem64"]
MEM32: BarKind = "mem32"
MEM64: BarKind = "mem64"

#: called with (offset inside the capability, size, value as stored) -> value the guest reads
CapabilityReadHook = Callable[[int, int, int], int]
#: called after a guest write was stored: (offset inside the capability, size, value written)
CapabilityWriteHook = Callable[[int, int, int], None]


class Bar(NamedTuple):
    """A memory BAR as the device model declared it."""

    number: int
    size: int
    kind: BarKind
    prefetchable: bool

    @property
    def is64(self) -> bool:
        return self.kind == MEM64

    @property
    def flags(self) -> int:
        """The read-only low bits of the BAR register."""
        return (BAR_TYPE_64 if self.is64 else 0) | (BAR_PREFETCHABLE if self.prefetchable else 0)


class Capability(NamedTuple):
    offset: int
    cap_id: int
    length: int
    on_read: CapabilityReadHook | None
    on_write: CapabilityWriteHook | None


def _is_power_of_two(n: int) -> bool:
    return n > 0 and n & (n - 1) == 0


class PciConfigSpace:
    """Configuration space of a single-function type 0 device.

    ``class_code`` is the 24-bit value base class << 16 | sub-class << 8 |
    programming interface (e.g. 0x060000 for a host bridge).
    """

    def __init__(
        self,
        vendor_id: int,
        device_id: int,
        class_code: int,
        *,
        revision: int = 0,
        subsystem_vendor_id: int = 0,
        subsystem_id: int = 0,
    ) -> None:
        if not 0 <= vendor_id < 0xFFFF:
            raise ValueError(f"PCI vendor ID {vendor_id:#x} is invalid (0xffff means 'no device')")
        for label, value, limit in (
            ("device ID", device_id, 1 << 16),
            ("class code", class_code, 1 << 24),
            ("revision", revision, 1 << 8),
            ("subsystem vendor ID", subsystem_vendor_id, 1 << 16),
            ("subsystem ID", subsystem_id, 1 << 16),
        ):
            if not 0 <= value < limit:
                raise ValueError(f"PCI {label} {value:#x} out of range")
        self._data = bytearray(CONFIG_SIZE)
        self._wmask = bytearray(CONFIG_SIZE)
        self._bars: list[Bar | None] = [None] * BAR_COUNT
        self._slot_used = [False] * BAR_COUNT
        self._caps: list[Capability] = []
        self._next_cap = CAPABILITIES_START
        #: called after a guest write reaches the command register (bus mastering, decoding)
        self.on_command: Callable[[], None] | None = None

        self.set(VENDOR_ID, 2, vendor_id)
        self.set(DEVICE_ID, 2, device_id)
        self.set(REVISION_ID, 1, revision)
        self.set(CLASS_CODE, 3, class_code)
        self.set(HEADER_TYPE, 1, HEADER_TYPE_ENDPOINT)
        self.set(SUBSYSTEM_VENDOR_ID, 2, subsystem_vendor_id)
        self.set(SUBSYSTEM_ID, 2, subsystem_id)
        self.set_writable(COMMAND, 2, COMMAND_WRITABLE)
        self.set_writable(CACHE_LINE_SIZE, 1, 0xFF)
        self.set_writable(INTERRUPT_LINE, 1, 0xFF)
        # interrupt pin 0: no INTx; MSI-X only

    # --- guest access ------------------------------------------------------------

    def read(self, offset: int, size: int) -> int:
        """A guest read; never raises."""
        if size not in (1, 2, 4) or offset < 0 or offset + size > CONFIG_SIZE:
            return ALL_ONES.get(size, 0)
        value = int.from_bytes(self._data[offset : offset + size], "little")
        cap = self._capability_holding(offset, size)
        if cap is not None and cap.on_read is not None:
            value = cap.on_read(offset - cap.offset, size, value) & ALL_ONES[size]
        return value

    def write(self, offset: int, size: int, value: int) -> None:
        """A guest write: only bits the writable mask allows change; never raises."""
        if size not in (1, 2, 4) or offset < 0 or offset + size > CONFIG_SIZE:
            return
        value &= ALL_ONES[size]
        data, wmask = self._data, self._wmask
        for i in range(size):
            mask = wmask[offset + i]
            if mask:
                byte = (value >> (8 * i)) & 0xFF
                data[offset + i] = (data[offset + i] & ~mask) | (byte & mask)
        cap = self._capability_holding(offset, size)
        if cap is not None and cap.on_write is not None:
            cap.on_write(offset - cap.offset, size, value)
        if self.on_command is not None and offset < COMMAND + 2 and offset + size > COMMAND:
            self.on_command()

    # --- state -----------------------------------------------------------------

    def state(self) -> dict[str, str]:
        """The whole 4 KiB as hex (only the guest-writable bits matter on the way back)."""
        return {"data": bytes(self._data).hex()}

    def set_state(self, state: object, what: str = "pci config") -> None:
        """Take back the guest-writable bits of :meth:`state`; identity fields, BAR
        types and capability headers stay what this device model says they are."""
        from ..state import bytes_field, check_keys

        data = bytes_field(check_keys(state, ("data",), what), "data", CONFIG_SIZE, what)
        cur, wmask = self._data, self._wmask
        self._data = bytearray((c & ~m) | (d & m) for c, d, m in zip(cur, data, wmask, strict=True))

    # --- device-model access (unmasked) --------------------------------------------

    def get(self, offset: int, size: int) -> int:
        """The stored little-endian value, without capability hooks."""
        self._check_range(offset, size)
        return int.from_bytes(self._data[offset : offset + size], "little")

    def set(self, offset: int, size: int, value: int) -> None:
        """Store a value regardless of the writable mask (the device model's view)."""
        self._check_range(offset, size)
        self._data[offset : offset + size] = (value & ((1 << (8 * size)) - 1)).to_bytes(size, "little")

    def set_writable(self, offset: int, size: int, mask: int) -> None:
        """Set the writable-bit mask of ``size`` bytes at ``offset``."""
        self._check_range(offset, size)
        self._wmask[offset : offset + size] = (mask & ((1 << (8 * size)) - 1)).to_bytes(size, "little")

    def writable(self, offset: int, size: int) -> int:
        self._check_range(offset, size)
        return int.from_bytes(self._wmask[offset : offset + size], "little")

    @staticmethod
    def _check_range(offset: int, size: int) -> None:
        if size <= 0 or offset < 0 or offset + size > CONFIG_SIZE:
            raise ValueError(f"config space range {offset:#x}+{size} outside 4 KiB")

    # --- identity and command ------------------------------------------------------

    @property
    def vendor_id(self) -> int:
        return self.get(VENDOR_ID, 2)

    @property
    def device_id(self) -> int:
        return self.get(DEVICE_ID, 2)

    @property
    def class_code(self) -> int:
        return self.get(CLASS_CODE, 3)

    @property
    def command(self) -> int:
        return self.get(COMMAND, 2)

    @property
    def memory_enabled(self) -> bool:
        return bool(self.command & COMMAND_MEMORY)

    @property
    def bus_master(self) -> bool:
        return bool(self.command & COMMAND_BUS_MASTER)

    # --- BARs ----------------------------------------------------------------------

    def add_bar(self, index: int, size: int, kind: BarKind = MEM32, prefetchable: bool = False) -> Bar:
        """Declare memory BAR ``index`` of ``size`` bytes (a power of two, at least 16).

        A 64-bit BAR also takes slot ``index + 1`` for the upper address half."""
        if kind not in (MEM32, MEM64):
            raise ValueError(f"BAR kind {kind!r} is not mem32 or mem64")
        slots = 2 if kind == MEM64 else 1
        if not 0 <= index <= BAR_COUNT - slots:
            raise ValueError(f"BAR index {index} out of range for a {kind} BAR")
        if any(self._slot_used[index : index + slots]):
            raise ValueError(f"BAR slot {index} already in use")
        limit = MAX_BAR32_SIZE if kind == MEM32 else 1 << 63
        if not _is_power_of_two(size) or not MIN_BAR_SIZE <= size <= limit:
            raise ValueError(f"BAR size {size:#x} must be a power of two in [16, {limit:#x}]")
        bar = Bar(index, size, kind, prefetchable)
        self._bars[index] = bar
        for i in range(index, index + slots):
            self._slot_used[i] = True
        address_mask = ~(size - 1) & ((1 << (32 * slots)) - 1)
        offset = BAR0 + 4 * index
        self.set(offset, 4, bar.flags)
        self.set_writable(offset, 4, address_mask & 0xFFFF_FFF0)
        if bar.is64:
            self.set(offset + 4, 4, 0)
            self.set_writable(offset + 4, 4, address_mask >> 32)
        return bar

    def bars(self) -> list[Bar]:
        return [bar for bar in self._bars if bar is not None]

    def bar(self, index: int) -> Bar | None:
        """The BAR declared at ``index`` (None for unused slots and upper halves)."""
        return self._bars[index] if 0 <= index < BAR_COUNT else None

    def bar_address(self, index: int) -> int:
        """The address currently programmed into BAR ``index``."""
        bar = self._declared(index)
        offset = BAR0 + 4 * index
        address = self.get(offset, 4) & ~BAR_FLAG_BITS
        if bar.is64:
            address |= self.get(offset + 4, 4) << 32
        return address

    def set_bar_address(self, index: int, address: int) -> None:
        """Program BAR ``index`` as firmware would (naturally aligned)."""
        bar = self._declared(index)
        limit = 1 << (64 if bar.is64 else 32)
        if address % bar.size or not 0 <= address <= limit - bar.size:
            raise ValueError(f"BAR {index} address {address:#x} not aligned to {bar.size:#x} or out of range")
        offset = BAR0 + 4 * index
        self.set(offset, 4, (address & 0xFFFF_FFFF) | bar.flags)
        if bar.is64:
            self.set(offset + 4, 4, address >> 32)

    def _declared(self, index: int) -> Bar:
        bar = self.bar(index)
        if bar is None:
            raise ValueError(f"BAR {index} is not declared")
        return bar

    # --- capabilities --------------------------------------------------------------

    def add_capability(
        self,
        cap_id: int,
        body: bytes,
        writable_mask: bytes | None = None,
        *,
        on_read: CapabilityReadHook | None = None,
        on_write: CapabilityWriteHook | None = None,
    ) -> int:
        """Append a capability to the list and return its config-space offset.

        ``body`` is what follows the two header bytes (ID and next pointer),
        so the capability occupies ``2 + len(body)`` bytes; ``writable_mask``
        (same length as ``body``, default all read-only) says which body bits
        a guest may change.  The header bytes are always read-only.

        ``on_read``/``on_write`` see guest accesses that lie entirely inside
        the capability, with offsets relative to its start (0 = the ID byte).
        """
        if not 0 <= cap_id <= 0xFF:
            raise ValueError(f"capability ID {cap_id:#x} out of range")
        mask = bytes(len(body)) if writable_mask is None else bytes(writable_mask)
        if len(mask) != len(body):
            raise ValueError("capability writable mask and body differ in length")
        length = 2 + len(body)
        offset = self._next_cap
        if offset + length > CONVENTIONAL_SIZE:
            raise ValueError(f"capability {cap_id:#x} of {length} bytes does not fit in config space")
        self._data[offset] = cap_id
        self._data[offset + 1] = 0
        self._data[offset + 2 : offset + length] = body
        self._wmask[offset : offset + 2] = b"\x00\x00"
        self._wmask[offset + 2 : offset + length] = mask
        if self._caps:
            self._data[self._caps[-1].offset + 1] = offset
        else:
            self.set(CAPABILITIES_POINTER, 1, offset)
            self.set(STATUS, 2, self.get(STATUS, 2) | STATUS_CAPABILITIES)
        self._caps.append(Capability(offset, cap_id, length, on_read, on_write))
        self._next_cap = (offset + length + 3) & ~3
        return offset

    def capabilities(self) -> list[tuple[int, int]]:
        """(offset, capability ID) pairs, walked through the pointers as a guest would."""
        found: list[tuple[int, int]] = []
        if not self.get(STATUS, 2) & STATUS_CAPABILITIES:
            return found
        pointer = self.get(CAPABILITIES_POINTER, 1) & ~3
        seen: set[int] = set()
        while pointer >= CAPABILITIES_START and pointer not in seen:
            seen.add(pointer)
            found.append((pointer, self._data[pointer]))
            pointer = self._data[pointer + 1] & ~3
        return found

    def find_capability(self, cap_id: int) -> int | None:
        """Offset of the first capability with ``cap_id``, or None."""
        return next((offset for offset, found in self.capabilities() if found == cap_id), None)

    def _capability_holding(self, offset: int, size: int) -> Capability | None:
        for cap in self._caps:
            if cap.offset <= offset and offset + size <= cap.offset + cap.length:
                return cap
        return None
