"""PCI bus 0: the host bridge, up to 31 devices, config access and BAR placement.

Configuration access, both reaching the same config spaces:

* mechanism #1 (PCI 3.0, 3.2.2.3.2) through :class:`PciConfigIo`, inserted on
  the port bus at 0xCF8 with length 8.  CONFIG_ADDRESS (0xCF8) is a 32-bit
  register: bit 31 enable, bits 23:16 bus, 15:11 device, 10:8 function, 7:2
  register; bits 27:24 extend the register number to 4 KiB as AMD's extended
  configuration space does.  Only 4-byte accesses at 0xCF8 reach it; others
  read all ones and are dropped (so a byte write to 0xCFB, the probe Linux
  makes, leaves it alone).  CONFIG_DATA (0xCFC-0xCFF) takes 1-, 2- and 4-byte
  accesses at the byte offset of the register.
* ECAM (PCI Express memory-mapped configuration) through :class:`PciConfigMmio`,
  inserted on the MMIO bus at ``ecam_base`` with length :data:`ECAM_SIZE`
  (bus 0 only): offset = device << 15 | function << 12 | register.

Slots without a device, functions other than 0 and buses other than 0 read
all ones and ignore writes.

Slot 0 is the host bridge, vendor 0x8086 device 0x0d57: the ID other KVM VMMs
(crosvm, Cloud Hypervisor, Firecracker) give their virtual PCIe host bridge.
It names no real chipset, so chipset drivers leave it alone, and its vendor
and class (0x060000) satisfy the sanity check Linux makes before trusting
mechanism #1.  Under firmware the bridge is the i440FX's (0x1237, QEMU's ``pc``
machine), which SeaBIOS looks for to run as on QEMU: it programs the PAM
registers (0x59-0x5F) to make 0xC0000-0xFFFFF writable RAM and, when PAM0 said
it was not, copies itself there from the ROM's alias below 4 GiB.  The
registers keep what is written; the memory they describe is RAM whatever
they say (pyhv maps no ROM below 1 MiB), so "read-only" is not enforced.

BARs: :meth:`PciRoot.add_device` places each BAR naturally aligned (at least
4 KiB) in the MMIO window, programs it and turns memory decoding on, as
firmware would; :meth:`PciRoot.regions` lists what is then mapped.  After
every guest write to a command register or a BAR the root works out which
BARs are decoded, and reports each change to ``on_bar_change(device, bar,
old_address, new_address)`` (None = not mapped).  A BAR is mapped only while
memory decoding is on, its whole range lies inside one of the root's MMIO
windows, and it overlaps no other mapped BAR: a BAR that stays where it was
keeps its mapping, one moved on top of it is left unmapped until the way is
clear; so what the root reports never overlaps.  Unmaps are
reported first, then moves, then new mappings.  The windows must be
reserved for PCI: nothing else may be inserted on the MMIO bus there.
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from typing import NamedTuple

from ...errors import PyhvError
from ..bus import ALL_ONES
from .config import BAR_END, COMMAND, COMMAND_MEMORY, MEM64, PciConfigSpace
from .device import PciDevice

SLOTS = 32
HOST_BRIDGE_SLOT = 0
HOST_BRIDGE_VENDOR_ID = 0x8086
HOST_BRIDGE_DEVICE_ID = 0x0D57
HOST_BRIDGE_CLASS = 0x060000
I440FX_DEVICE_ID = 0x1237
I440FX_REVISION = 0x02
I440FX_PAM0 = 0x59  # PAM0 (0xF0000-0xFFFFF, high nibble), PAM1-6 (0xC0000-0xEFFFF, two nibbles each)
I440FX_PAM_COUNT = 7

CONFIG_ADDRESS_PORT = 0xCF8
#: 0xCF9, the reset control register, inside the range PciConfigIo serves; its bits
RESET_CONTROL_OFFSET = 1
RESET_HARD, RESET_CPU, RESET_FULL = 0x02, 0x04, 0x08
CONFIG_DATA_PORT = 0xCFC
#: length of the port range PciConfigIo serves (0xCF8-0xCFF)
CONFIG_IO_LENGTH = 8
CONFIG_ADDRESS_ENABLE = 1 << 31
#: bits of CONFIG_ADDRESS that hold state: enable, extended register, bus, device, function, register
CONFIG_ADDRESS_BITS = 0x8FFF_FFFC

#: ECAM window for bus 0 alone: 32 devices x 8 functions x 4 KiB
ECAM_SIZE = 1 << 20
ECAM_BUS_START = 0
ECAM_BUS_END = 0

MiB = 1 << 20
#: the MMIO hole runs from 3 GiB to 4 GiB; PCI takes its first 512 MiB for BARs,
DEFAULT_MMIO32_WINDOW = (0xC000_0000, 512 * MiB)
#: and ECAM right after it, clear of the IOAPIC (0xFEC00000) and LAPIC (0xFEE00000)
DEFAULT_ECAM_BASE = 0xE000_0000

#: BARs are placed on at least page boundaries
MIN_BAR_ALIGNMENT = 4096

OnBarChange = Callable[[PciDevice, int, int | None, int | None], None]


class PciError(PyhvError):
    """A PCI wiring problem found while building the machine (slots, windows)."""


class BarRegion(NamedTuple):
    device: PciDevice
    slot: int
    bar: int
    address: int
    size: int


class HostBridge(PciDevice):
    """pyhv's own bridge, or (``i440fx``) the 82441FX's ID with its PAM registers."""

    def __init__(self, i440fx: bool = False) -> None:
        config = PciConfigSpace(HOST_BRIDGE_VENDOR_ID, I440FX_DEVICE_ID if i440fx else HOST_BRIDGE_DEVICE_ID,
                                HOST_BRIDGE_CLASS)
        super().__init__(config)
        if i440fx:
            config.set(0x08, 1, I440FX_REVISION)
            config.set_writable(I440FX_PAM0, 1, 0x30)  # PAM0: only the F segment's nibble
            for i in range(1, I440FX_PAM_COUNT):
                config.set_writable(I440FX_PAM0 + i, 1, 0x33)


class _Window:
    def __init__(self, base: int, size: int, limit: int, label: str) -> None:
        if size <= 0 or base < 0 or base % MIN_BAR_ALIGNMENT or size % MIN_BAR_ALIGNMENT or base + size > limit:
            raise PciError(f"PCI {label} window {base:#x}+{size:#x} is invalid")
        self.base = base
        self.size = size
        self.end = base + size
        self.cursor = base

    def holds(self, address: int, size: int) -> bool:
        return self.base <= address and address + size <= self.end


class PciRoot:
    """Bus 0 of PCI segment 0 with its host bridge."""

    def __init__(
        self,
        mmio32_window: tuple[int, int] = DEFAULT_MMIO32_WINDOW,
        *,
        mmio64_window: tuple[int, int] | None = None,
        ecam_base: int = DEFAULT_ECAM_BASE,
        on_bar_change: OnBarChange | None = None,
        i440fx: bool = False,
    ) -> None:
        self._mmio32 = _Window(*mmio32_window, limit=1 << 32, label="32-bit MMIO")
        self._mmio64 = None if mmio64_window is None else _Window(*mmio64_window, limit=1 << 52, label="64-bit MMIO")
        if ecam_base % ECAM_SIZE or not 0 < ecam_base <= (1 << 52) - ECAM_SIZE:
            raise PciError(f"ECAM base {ecam_base:#x} must be 1 MiB aligned")
        for window in self._windows():
            if ecam_base < window.end and window.base < ecam_base + ECAM_SIZE:
                raise PciError(f"ECAM at {ecam_base:#x} overlaps the MMIO window at {window.base:#x}")
        self.ecam_base = ecam_base
        #: called as on_bar_change(device, bar, old_address, new_address) after guest changes
        self.on_bar_change = on_bar_change
        self._lock = threading.RLock()
        self._slots: list[PciDevice | None] = [None] * SLOTS
        self._slots[HOST_BRIDGE_SLOT] = HostBridge(i440fx)
        #: (slot, bar index) -> address of every BAR currently decoded
        self._mapped: dict[tuple[int, int], int] = {}
        self.config_io = PciConfigIo(self)
        self.config_mmio = PciConfigMmio(self)

    # --- windows -------------------------------------------------------------------

    def _windows(self) -> list[_Window]:
        return [self._mmio32] if self._mmio64 is None else [self._mmio32, self._mmio64]

    @property
    def mmio32_window(self) -> tuple[int, int]:
        return self._mmio32.base, self._mmio32.size

    @property
    def mmio64_window(self) -> tuple[int, int] | None:
        return None if self._mmio64 is None else (self._mmio64.base, self._mmio64.size)

    # --- devices -------------------------------------------------------------------

    def add_device(self, device: PciDevice, slot: int | None = None) -> int:
        """Plug ``device`` into ``slot`` (default: the first free one) and place its BARs.

        Returns the slot.  Raises :class:`PciError` when the slot is taken, no
        slot is free or the BARs do not fit in the windows."""
        with self._lock:
            if any(d is device for d in self._slots):
                raise PciError("PCI device added twice")
            if slot is None:
                slot = next((s for s in range(1, SLOTS) if self._slots[s] is None), None)
                if slot is None:
                    raise PciError("no free PCI slot on bus 0")
            elif not 0 <= slot < SLOTS or self._slots[slot] is not None:
                raise PciError(f"PCI slot {slot} is not free")
            placement = self._place_bars(device)
            for window, cursor in {w: c for w, c, _, _ in placement}.items():
                window.cursor = cursor
            config = device.config
            for _, _, index, address in placement:
                config.set_bar_address(index, address)
                self._mapped[(slot, index)] = address
            if placement:
                config.set(COMMAND, 2, config.command | COMMAND_MEMORY)
            self._slots[slot] = device
            return slot

    def _place_bars(self, device: PciDevice) -> list[tuple[_Window, int, int, int]]:
        """(window, new cursor, bar index, address) for each BAR, largest first; nothing changed yet."""
        cursors = {w: w.cursor for w in self._windows()}
        placement = []
        for bar in sorted(device.config.bars(), key=lambda b: (-b.size, b.number)):
            window = self._mmio64 if bar.kind == MEM64 and self._mmio64 is not None else self._mmio32
            align = max(bar.size, MIN_BAR_ALIGNMENT)
            address = -(-cursors[window] // align) * align
            if address + bar.size > window.end:
                raise PciError(f"PCI BAR {bar.number} of {bar.size:#x} bytes does not fit the MMIO window")
            cursors[window] = address + bar.size
            placement.append((window, cursors[window], bar.number, address))
        return placement

    def device(self, slot: int) -> PciDevice | None:
        return self._slots[slot] if 0 <= slot < SLOTS else None

    def devices(self) -> list[tuple[int, PciDevice]]:
        """(slot, device) for every occupied slot, the host bridge included."""
        return [(slot, d) for slot, d in enumerate(self._slots) if d is not None]

    def slot_of(self, device: PciDevice) -> int:
        for slot, d in enumerate(self._slots):
            if d is device:
                return slot
        raise PciError("device is not on this PCI bus")

    def regions(self) -> list[BarRegion]:
        """The BARs decoded now, in slot and BAR order."""
        with self._lock:
            out = []
            for (slot, index), address in sorted(self._mapped.items()):
                device = self._slots[slot]
                bar = device.config.bar(index) if device is not None else None
                if device is not None and bar is not None:
                    out.append(BarRegion(device, slot, index, address, bar.size))
            return out

    # --- config access -------------------------------------------------------------

    def config_read(self, slot: int, function: int, register: int, size: int) -> int:
        """Read a config register of bus 0; absent functions read all ones."""
        device = self._slots[slot] if function == 0 and 0 <= slot < SLOTS else None
        if device is None:
            return ALL_ONES.get(size, 0)
        with self._lock:
            return device.config.read(register, size)

    def config_write(self, slot: int, function: int, register: int, size: int, value: int) -> None:
        """Write a config register of bus 0 and apply any BAR or decode change."""
        device = self._slots[slot] if function == 0 and 0 <= slot < SLOTS else None
        if device is None:
            return
        with self._lock:
            device.config.write(register, size, value)
            if register < BAR_END and register + size > COMMAND:
                self._update_mappings()

    def state(self) -> dict[str, object]:
        """CONFIG_ADDRESS and the host bridge's config space (devices save their own)."""
        bridge = self._slots[HOST_BRIDGE_SLOT]
        assert bridge is not None
        return {"config_address": self.config_io.address, "host_bridge": bridge.config.state()}

    def set_state(self, state: object) -> None:
        from ..state import check_keys, int_field

        st = check_keys(state, ("config_address", "host_bridge"), "pci root")
        address = int_field(st, "config_address", 0xFFFF_FFFF, "pci root") & CONFIG_ADDRESS_BITS
        bridge = self._slots[HOST_BRIDGE_SLOT]
        assert bridge is not None
        bridge.config.set_state(st["host_bridge"], "pci host bridge config")
        self.config_io.address = address

    def refresh_mappings(self) -> None:
        """Work out the decoded BARs again (after config spaces were restored) and report changes."""
        with self._lock:
            self._update_mappings()

    def _update_mappings(self) -> None:
        wanted = self._decoded_bars()
        old = self._mapped
        keys = set(old) | set(wanted)
        unmaps = sorted(k for k in keys if k not in wanted)
        moves = sorted(k for k in keys if k in old and k in wanted and old[k] != wanted[k])
        maps = sorted(k for k in keys if k not in old)
        self._mapped = wanted
        callback = self.on_bar_change
        if callback is None:
            return
        for slot, index in unmaps + moves + maps:
            device = self._slots[slot]
            if device is not None:
                callback(device, index, old.get((slot, index)), wanted.get((slot, index)))

    def _decoded_bars(self) -> dict[tuple[int, int], int]:
        """Which BARs decode now: those already mapped at an unchanged address
        first, then the rest in slot and BAR order, each only if it is inside a
        window and clear of every BAR accepted before it."""
        candidates: list[tuple[tuple[int, int], int, int]] = []
        windows = self._windows()
        for slot, device in enumerate(self._slots):
            if device is None or not device.config.memory_enabled:
                continue
            for bar in device.config.bars():
                address = device.config.bar_address(bar.number)
                if any(w.holds(address, bar.size) for w in windows):
                    candidates.append(((slot, bar.number), address, bar.size))
        candidates.sort(key=lambda c: self._mapped.get(c[0]) != c[1])  # stable: unchanged ones first
        decoded: dict[tuple[int, int], int] = {}
        taken: list[tuple[int, int]] = []
        for key, address, size in candidates:
            end = address + size
            if not any(address < t_end and t_start < end for t_start, t_end in taken):
                taken.append((address, end))
                decoded[key] = address
        return decoded


class PciConfigIo:
    """Configuration mechanism #1: insert at port 0xCF8 with length 8.

    One-byte accesses to 0xCF9 are the PC's reset control register instead:
    writing bit 2 (reset CPU) set calls ``reset`` (bits 1 and 3, hard and full
    reset, only change what reads back; every reset here is the same one)."""

    def __init__(self, root: PciRoot) -> None:
        self._root = root
        self.address = 0
        #: the guest-reset callable behind 0xCF9 (the builder sets it)
        self.reset: Callable[[], None] | None = None
        self.reset_control = 0

    def _target(self, offset: int, size: int) -> tuple[int, int, int] | None:
        """(slot, function, register) a data-port access reaches, or None."""
        address = self.address
        if offset < 4 or offset + size > CONFIG_IO_LENGTH or not address & CONFIG_ADDRESS_ENABLE:
            return None
        if (address >> 16) & 0xFF:  # bus
            return None
        register = ((address >> 16) & 0xF00) | (address & 0xFC) | (offset - 4)
        return (address >> 11) & 0x1F, (address >> 8) & 0x7, register

    def read(self, offset: int, size: int) -> int:
        if offset == 0 and size == 4:
            return self.address
        if offset == RESET_CONTROL_OFFSET and size == 1:
            return self.reset_control
        target = self._target(offset, size)
        if target is None:
            return ALL_ONES.get(size, 0)
        return self._root.config_read(*target, size)

    def write(self, offset: int, size: int, value: int) -> None:
        if offset == 0 and size == 4:
            self.address = value & CONFIG_ADDRESS_BITS
            return
        if offset == RESET_CONTROL_OFFSET and size == 1:
            self.reset_control = value & (RESET_HARD | RESET_FULL)  # the CPU-reset bit reads back 0
            if value & RESET_CPU and self.reset is not None:
                self.reset()
            return
        target = self._target(offset, size)
        if target is not None:
            self._root.config_write(*target, size, value)


class PciConfigMmio:
    """ECAM for bus 0: insert at ``root.ecam_base`` with length :data:`ECAM_SIZE`."""

    def __init__(self, root: PciRoot) -> None:
        self._root = root

    def read(self, offset: int, size: int) -> int:
        if not 0 <= offset < ECAM_SIZE:
            return ALL_ONES.get(size, 0)
        return self._root.config_read(offset >> 15, (offset >> 12) & 0x7, offset & 0xFFF, size)

    def write(self, offset: int, size: int, value: int) -> None:
        if 0 <= offset < ECAM_SIZE:
            self._root.config_write(offset >> 15, (offset >> 12) & 0x7, offset & 0xFFF, size, value)
