"""The virtio PCI transport, modern only (virtio 1.2, 4.1).

One 32-bit memory BAR (BAR 0) holds every structure, each found through a
vendor-specific capability (4.1.4):

=========  ========  ==========================================
offset     size      structure
=========  ========  ==========================================
0x0000     0x40      common configuration (4.1.4.3)
0x1000     0x4       ISR status (4.1.4.5)
0x2000     0x1000    device-specific configuration (4.1.4.6)
0x3000     4 * N     queue notifications, notify_off_multiplier 4
0x4000     16 * V    MSI-X table
0x5000     8 * ...   MSI-X pending bits
=========  ========  ==========================================

Each queue notifies at its own 4-byte slot, so the builder can hang one
ioeventfd per queue on it (``notify_address``) and kicks never return to
user space on the vCPU thread.  Interrupts are MSI-X only: a queue's vector
(or the configuration vector) goes to ``deliver(address, data)``, which the
builder points at KVM_SIGNAL_MSI, and only while the driver has enabled bus
mastering.
"""

from __future__ import annotations

import struct
from collections.abc import Callable

from ..pci.config import MEM32, PciConfigSpace
from ..pci.device import PciDevice
from ..pci.msix import MsixCapability, MsixTable
from .device import CONFIG_INTERRUPT, STATUS_DRIVER_OK, VirtioDevice

VIRTIO_PCI_VENDOR = 0x1AF4
VIRTIO_PCI_DEVICE_BASE = 0x1040  # + virtio device id
PCI_CAP_ID_VNDR = 0x09

VIRTIO_PCI_CAP_COMMON_CFG = 1
VIRTIO_PCI_CAP_NOTIFY_CFG = 2
VIRTIO_PCI_CAP_ISR_CFG = 3
VIRTIO_PCI_CAP_DEVICE_CFG = 4
VIRTIO_PCI_CAP_PCI_CFG = 5

BAR = 0
BAR_SIZE = 0x8000
COMMON_OFFSET, COMMON_SIZE = 0x0000, 0x40
ISR_OFFSET, ISR_SIZE = 0x1000, 0x4
DEVICE_OFFSET, DEVICE_SIZE = 0x2000, 0x1000
NOTIFY_OFFSET = 0x3000
NOTIFY_MULTIPLIER = 4
MSIX_TABLE_OFFSET = 0x4000
MSIX_PBA_OFFSET = 0x5000

VIRTIO_MSI_NO_VECTOR = 0xFFFF
ISR_QUEUE = 1
ISR_CONFIG = 2

# struct virtio_pci_common_cfg field offsets
DEVICE_FEATURE_SELECT = 0x00
DEVICE_FEATURE = 0x04
DRIVER_FEATURE_SELECT = 0x08
DRIVER_FEATURE = 0x0C
CONFIG_MSIX_VECTOR = 0x10
NUM_QUEUES = 0x12
DEVICE_STATUS = 0x14
CONFIG_GENERATION = 0x15
QUEUE_SELECT = 0x16
QUEUE_SIZE = 0x18
QUEUE_MSIX_VECTOR = 0x1A
QUEUE_ENABLE = 0x1C
QUEUE_NOTIFY_OFF = 0x1E
QUEUE_DESC = 0x20
QUEUE_DRIVER = 0x28
QUEUE_DEVICE = 0x30
QUEUE_NOTIFY_DATA = 0x38
QUEUE_RESET = 0x3A

_QUEUE_ADDR = {QUEUE_DESC: "desc_addr", QUEUE_DRIVER: "avail_addr", QUEUE_DEVICE: "used_addr"}

Deliver = Callable[[int, int], None]


def _virtio_cap(cfg_type: int, offset: int, length: int, extra: bytes = b"") -> bytes:
    """struct virtio_pci_cap after its first two bytes (cap_vndr, cap_next)."""
    cap_len = 16 + len(extra)
    return struct.pack("<BBBBxxII", cap_len, cfg_type, BAR, 0, offset, length) + extra


class VirtioPci(PciDevice):
    def __init__(self, device: VirtioDevice, deliver: Deliver) -> None:
        n = len(device.queues)
        config = PciConfigSpace(
            VIRTIO_PCI_VENDOR,
            VIRTIO_PCI_DEVICE_BASE + device.device_id,
            _CLASS_CODES.get(device.device_id, 0xFF0000),
            revision=1,
            subsystem_vendor_id=VIRTIO_PCI_VENDOR,
            subsystem_id=0x40,
        )
        super().__init__(config)
        self.device = device
        self._deliver = deliver
        config.add_bar(BAR, BAR_SIZE, MEM32)
        self.msix = MsixTable(n + 1, self._deliver_if_master)
        config.add_capability(PCI_CAP_ID_VNDR, _virtio_cap(VIRTIO_PCI_CAP_COMMON_CFG, COMMON_OFFSET, COMMON_SIZE))
        config.add_capability(
            PCI_CAP_ID_VNDR,
            _virtio_cap(VIRTIO_PCI_CAP_NOTIFY_CFG, NOTIFY_OFFSET, NOTIFY_MULTIPLIER * n, struct.pack("<I", NOTIFY_MULTIPLIER)),
        )
        config.add_capability(PCI_CAP_ID_VNDR, _virtio_cap(VIRTIO_PCI_CAP_ISR_CFG, ISR_OFFSET, ISR_SIZE))
        config.add_capability(PCI_CAP_ID_VNDR, _virtio_cap(VIRTIO_PCI_CAP_DEVICE_CFG, DEVICE_OFFSET, DEVICE_SIZE))
        self._pci_cfg = config.add_capability(
            PCI_CAP_ID_VNDR,
            _virtio_cap(VIRTIO_PCI_CAP_PCI_CFG, 0, 0, bytes(4)),
            # writable: bar, offset, length and the data window (cap offsets 4, 8-15, 16-19)
            writable_mask=bytes(2) + b"\xff" + bytes(3) + b"\xff" * 8 + b"\xff" * 4,
            on_read=self._pci_cfg_read,
            on_write=self._pci_cfg_write,
        )
        MsixCapability(config, self.msix, table_bar=BAR, table_offset=MSIX_TABLE_OFFSET, pba_bar=BAR, pba_offset=MSIX_PBA_OFFSET)
        self.device_feature_select = 0
        self.driver_feature_select = 0
        self.queue_select = 0
        self.config_vector = VIRTIO_MSI_NO_VECTOR
        self.queue_vectors = [VIRTIO_MSI_NO_VECTOR] * n
        self.isr = 0
        device.interrupt = self._interrupt
        #: called after the guest changes how a queue's interrupt is delivered (its
        #: vector, the MSI-X table, the device status): irqfd routes follow it
        self.on_interrupt_change: Callable[[], None] | None = None
        self.msix.on_change = self._interrupt_changed
        config.on_command = self._interrupt_changed  # bus mastering gates MSI writes

    # --- interrupts -------------------------------------------------------------

    def _interrupt(self, queue: int) -> None:
        if queue == CONFIG_INTERRUPT:
            self.isr |= ISR_CONFIG
            vector = self.config_vector
        else:
            self.isr |= ISR_QUEUE
            vector = self.queue_vectors[queue] if 0 <= queue < len(self.queue_vectors) else VIRTIO_MSI_NO_VECTOR
        self.msix.notify(vector)

    def msi_target(self, queue: int) -> tuple[int, int] | None:
        """Where an interrupt of ``queue`` goes now: (address, data) while MSI-X is on and
        the queue's vector is assigned and unmasked, and the device may master the bus;
        else None (a signal would only be held pending, or dropped)."""
        vector = self.queue_vectors[queue] if 0 <= queue < len(self.queue_vectors) else VIRTIO_MSI_NO_VECTOR
        if not vector < self.msix.vectors or not self.config.bus_master:
            return None
        if not self.msix.enabled or self.msix.function_masked:
            return None
        address, data, masked = self.msix.entry(vector)
        return None if masked else (address, data)

    def _interrupt_changed(self) -> None:
        if self.on_interrupt_change is not None:
            self.on_interrupt_change()

    def _deliver_if_master(self, address: int, data: int) -> None:
        if self.config.bus_master:  # a device without bus mastering may not write MSI messages
            self._deliver(address, data)

    def notify_address(self, bar_address: int, queue: int) -> int:
        return bar_address + NOTIFY_OFFSET + NOTIFY_MULTIPLIER * queue

    # --- BAR 0 --------------------------------------------------------------------

    def bar_read(self, bar: int, offset: int, size: int) -> int:
        if bar != BAR:
            return (1 << (8 * size)) - 1
        if offset < COMMON_OFFSET + COMMON_SIZE:
            return self._common_read(offset, size)
        if ISR_OFFSET <= offset < ISR_OFFSET + ISR_SIZE:
            with self.device.lock:
                value, self.isr = self.isr, 0  # reading ISR clears it (4.1.4.5)
            return value if offset == ISR_OFFSET else 0
        if DEVICE_OFFSET <= offset < DEVICE_OFFSET + DEVICE_SIZE:
            return self.device.read_config(offset - DEVICE_OFFSET, size)
        if MSIX_TABLE_OFFSET <= offset < MSIX_PBA_OFFSET:
            return self.msix.read(offset - MSIX_TABLE_OFFSET, size)
        if MSIX_PBA_OFFSET <= offset < BAR_SIZE:
            return self.msix.read_pba(offset - MSIX_PBA_OFFSET, size)
        return 0

    def bar_write(self, bar: int, offset: int, size: int, value: int) -> None:
        if bar != BAR:
            return
        if offset < COMMON_OFFSET + COMMON_SIZE:
            self._common_write(offset, size, value)
        elif DEVICE_OFFSET <= offset < DEVICE_OFFSET + DEVICE_SIZE:
            self.device.write_config(offset - DEVICE_OFFSET, size, value)
        elif NOTIFY_OFFSET <= offset < NOTIFY_OFFSET + NOTIFY_MULTIPLIER * len(self.device.queues):
            # reaches here only when no ioeventfd is registered for the slot
            self.device.notify((offset - NOTIFY_OFFSET) // NOTIFY_MULTIPLIER)
        elif MSIX_TABLE_OFFSET <= offset < MSIX_PBA_OFFSET:
            self.msix.write(offset - MSIX_TABLE_OFFSET, size, value)

    # --- common configuration --------------------------------------------------------

    def _common_bytes(self) -> bytes:
        dev = self.device
        q = self.device.queue(self.queue_select)
        sel = self.device_feature_select
        feature = (dev.offered_features() >> (32 * sel)) & 0xFFFF_FFFF if sel < 2 else 0
        dsel = self.driver_feature_select
        driver = (dev.driver_features >> (32 * dsel)) & 0xFFFF_FFFF if dsel < 2 else 0
        head = struct.pack(
            "<IIIIHHBBH",
            sel, feature, dsel, driver, self.config_vector, len(dev.queues), dev.status,
            dev.config_generation & 0xFF, self.queue_select,
        )
        if q is None:
            tail = struct.pack("<HHHHQQQHH", 0, VIRTIO_MSI_NO_VECTOR, 0, 0, 0, 0, 0, 0, 0)
        else:
            index = self.queue_select
            tail = struct.pack(
                "<HHHHQQQHH", q.size, self.queue_vectors[index], int(q.ready), index,
                q.desc_addr, q.avail_addr, q.used_addr, index, 0,
            )
        return (head + tail).ljust(COMMON_SIZE, b"\0")

    def _common_read(self, offset: int, size: int) -> int:
        if size not in (1, 2, 4, 8) or offset + size > COMMON_SIZE:
            return 0
        with self.device.lock:
            data = self._common_bytes()
        return int.from_bytes(data[offset : offset + size], "little")

    def _common_write(self, offset: int, size: int, value: int) -> None:
        dev = self.device
        if offset == DEVICE_STATUS:
            dev.write_status(value & 0xFF)
            if value & 0xFF == 0:
                self._reset_transport()
            self._interrupt_changed()
            return
        with dev.lock:
            q = self.device.queue(self.queue_select)
            if offset == DEVICE_FEATURE_SELECT:
                self.device_feature_select = value
            elif offset == DRIVER_FEATURE_SELECT:
                self.driver_feature_select = value
            elif offset == DRIVER_FEATURE:
                dev.write_driver_features(self.driver_feature_select, value)
            elif offset == CONFIG_MSIX_VECTOR:
                self.config_vector = self._vector(value)
            elif offset == QUEUE_SELECT:
                self.queue_select = value & 0xFFFF
            elif q is None:
                return
            elif offset == QUEUE_MSIX_VECTOR:
                self.queue_vectors[self.queue_select] = self._vector(value)
                self._interrupt_changed()
            elif dev.status & STATUS_DRIVER_OK:
                return  # queue layout is frozen once the driver is running
            elif offset == QUEUE_SIZE:
                q.size = value & 0xFFFF
            elif offset == QUEUE_ENABLE:
                q.ready = bool(value & 1)
            else:
                base = offset & ~7
                if base in _QUEUE_ADDR and (size == 8 or (size == 4 and offset & 3 == 0)):
                    attr, shift = _QUEUE_ADDR[base], 8 * (offset - base)
                    width_mask = (1 << (8 * size)) - 1
                    old = getattr(q, attr)
                    setattr(q, attr, (old & ~(width_mask << shift)) | ((value & width_mask) << shift))

    def _vector(self, value: int) -> int:
        """A vector the table has, or NO_VECTOR (the driver reads back what we took)."""
        value &= 0xFFFF
        return value if value < self.msix.vectors else VIRTIO_MSI_NO_VECTOR

    def _reset_transport(self) -> None:
        with self.device.lock:
            self.config_vector = VIRTIO_MSI_NO_VECTOR
            self.queue_vectors = [VIRTIO_MSI_NO_VECTOR] * len(self.device.queues)
            self.isr = 0
            self.queue_select = self.device_feature_select = self.driver_feature_select = 0

    # --- state ------------------------------------------------------------------------

    def state(self) -> dict[str, object]:
        """Config space, MSI-X table, transport registers and the virtio device."""
        with self.device.lock:
            return {
                "config": self.config.state(),
                "msix": self.msix.state(),
                "device_feature_select": self.device_feature_select,
                "driver_feature_select": self.driver_feature_select,
                "queue_select": self.queue_select,
                "config_vector": self.config_vector,
                "queue_vectors": list(self.queue_vectors),
                "isr": self.isr,
                "device": self.device.state(),
            }

    def set_state(self, state: object) -> None:
        """Take back :meth:`state`; every part is checked before any part changes
        (the device's own check runs on a scratch copy first)."""
        from ..state import DeviceStateError, check_keys, int_field, int_list

        what = self.device.name
        keys = ("config", "msix", "device_feature_select", "driver_feature_select", "queue_select",
                "config_vector", "queue_vectors", "isr", "device")
        st = check_keys(state, keys, what)
        dfs = int_field(st, "device_feature_select", 0xFFFF_FFFF, what)
        drfs = int_field(st, "driver_feature_select", 0xFFFF_FFFF, what)
        qsel = int_field(st, "queue_select", 0xFFFF, what)
        vectors = int_list(st, "queue_vectors", len(self.device.queues), 0xFFFF, what)
        config_vector = int_field(st, "config_vector", 0xFFFF, what)
        isr = int_field(st, "isr", ISR_QUEUE | ISR_CONFIG, what)
        for v in (config_vector, *vectors):
            if v != VIRTIO_MSI_NO_VECTOR and v >= self.msix.vectors:
                raise DeviceStateError(f"{what} state: MSI-X vector {v} beyond the table's {self.msix.vectors}")
        # Check config space and MSI-X on scratch objects, so a bad part changes nothing.
        saved_config, saved_msix = self.config.state(), self.msix.state()
        try:
            self.config.set_state(st["config"], f"{what} pci config")
            self.msix.set_state(st["msix"])
            self.device.set_state(st["device"])
        except Exception:
            self.config.set_state(saved_config)
            self.msix.set_state(saved_msix)
            raise
        with self.device.lock:
            self.device_feature_select, self.driver_feature_select, self.queue_select = dfs, drfs, qsel
            self.config_vector, self.queue_vectors, self.isr = config_vector, vectors, isr

    # --- VIRTIO_PCI_CAP_PCI_CFG: BAR access through config space (4.1.4.8) ------------

    def _pci_cfg_window(self) -> tuple[int, int, int]:
        base = self._pci_cfg
        bar = self.config.get(base + 4, 1)
        offset = self.config.get(base + 8, 4)
        length = self.config.get(base + 12, 4)
        return bar, offset, length

    def _pci_cfg_read(self, offset: int, size: int, stored: int) -> int:
        if offset != 16:
            return stored
        bar, bar_offset, length = self._pci_cfg_window()
        if length not in (1, 2, 4) or bar != BAR:
            return 0
        return self.bar_read(bar, bar_offset, length)

    def _pci_cfg_write(self, offset: int, size: int, value: int) -> None:
        if offset != 16:
            return
        bar, bar_offset, length = self._pci_cfg_window()
        if length in (1, 2, 4) and bar == BAR:
            self.bar_write(bar, bar_offset, length, value)


_CLASS_CODES = {1: 0x020000, 2: 0x018000, 4: 0xFF0000}  # net, mass storage (other), rng
