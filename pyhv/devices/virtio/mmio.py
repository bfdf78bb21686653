"""The virtio-mmio transport, version 2 (virtio 1.2, 4.2.2).

A 4 KiB register window per device on the MMIO bus; interrupts are a level
on one IRQ line with InterruptStatus saying why (bit 0: used buffers, bit 1:
configuration change).  QueueNotify is write-only: the builder may register an
ioeventfd on it (``NOTIFY_OFFSET``, datamatch = queue index) so kicks never
reach Python on the vCPU thread; a write that does reach us is served the
same way.

Every register the guest writes is checked against 4.2.2 before it changes
anything: accesses other than aligned 32-bit ones below the configuration
space are ignored (reads give 0); a feature select beyond the two words
reads 0 and takes no features; QueueSel naming no queue makes QueueNumMax
read 0 and the queue registers ignore writes; the queue registers freeze once
the driver is running (DRIVER_OK); QueueNum and the ring addresses are only
stored here and checked when DRIVER_OK activates the queue (a size that is
not a power of two up to QueueNumMax, or a ring outside RAM, marks the device
DEVICE_NEEDS_RESET: see :meth:`SplitQueue.activate`); QueueReset does nothing,
since VIRTIO_F_RING_RESET is not offered; status writes go through the
device's status machine (2.1).
"""

from __future__ import annotations

import threading
from collections.abc import Callable

from .device import CONFIG_INTERRUPT, STATUS_DRIVER_OK, VirtioDevice

MAGIC = 0x7472_6976  # "virt"
VERSION = 2
VENDOR_ID = 0x5648_5950  # the bytes "PYHV" read as a little-endian word
WINDOW_SIZE = 0x1000

MAGIC_VALUE = 0x000
VERSION_REG = 0x004
DEVICE_ID = 0x008
VENDOR_ID_REG = 0x00C
DEVICE_FEATURES = 0x010
DEVICE_FEATURES_SEL = 0x014
DRIVER_FEATURES = 0x020
DRIVER_FEATURES_SEL = 0x024
QUEUE_SEL = 0x030
QUEUE_NUM_MAX = 0x034
QUEUE_NUM = 0x038
QUEUE_READY = 0x044
NOTIFY_OFFSET = 0x050
INTERRUPT_STATUS = 0x060
INTERRUPT_ACK = 0x064
STATUS = 0x070
QUEUE_DESC_LOW = 0x080
QUEUE_DESC_HIGH = 0x084
QUEUE_DRIVER_LOW = 0x090
QUEUE_DRIVER_HIGH = 0x094
QUEUE_DEVICE_LOW = 0x0A0
QUEUE_DEVICE_HIGH = 0x0A4
SHM_LEN_LOW = 0x0B0
SHM_LEN_HIGH = 0x0B4
SHM_BASE_LOW = 0x0B8
SHM_BASE_HIGH = 0x0BC
QUEUE_RESET = 0x0C0
CONFIG_GENERATION = 0x0FC
CONFIG = 0x100

INT_USED_BUFFER = 1
INT_CONFIG_CHANGE = 2

_ADDR_REGS = {
    QUEUE_DESC_LOW: ("desc_addr", 0),
    QUEUE_DESC_HIGH: ("desc_addr", 32),
    QUEUE_DRIVER_LOW: ("avail_addr", 0),
    QUEUE_DRIVER_HIGH: ("avail_addr", 32),
    QUEUE_DEVICE_LOW: ("used_addr", 0),
    QUEUE_DEVICE_HIGH: ("used_addr", 32),
}


class VirtioMmio:
    """Bus device for one virtio device's register window."""

    def __init__(self, device: VirtioDevice, irq: Callable[[bool], None]) -> None:
        self.device = device
        self._irq = irq
        self._lock = threading.Lock()
        self.interrupt_status = 0
        self.device_features_sel = 0
        self.driver_features_sel = 0
        self.queue_sel = 0
        device.interrupt = self._interrupt

    # --- state ----------------------------------------------------------------------

    def state(self) -> dict[str, object]:
        with self._lock:
            return {
                "interrupt_status": self.interrupt_status,
                "device_features_sel": self.device_features_sel,
                "driver_features_sel": self.driver_features_sel,
                "queue_sel": self.queue_sel,
                "device": self.device.state(),
            }

    def set_state(self, state: object) -> None:
        """Take back :meth:`state`, checked first; the interrupt line follows the status."""
        from ..state import check_keys, int_field

        what = self.device.name
        keys = ("interrupt_status", "device_features_sel", "driver_features_sel", "queue_sel", "device")
        st = check_keys(state, keys, what)
        status = int_field(st, "interrupt_status", 3, what)
        fields = [int_field(st, k, 0xFFFF_FFFF, what) for k in keys[1:4]]
        self.device.set_state(st["device"])
        with self._lock:
            self.interrupt_status = status
            self.device_features_sel, self.driver_features_sel, self.queue_sel = fields
            self._irq(bool(status))

    # --- interrupts -------------------------------------------------------------
    #
    # The line's level is InterruptStatus != 0, set under the lock: a device
    # raising it on the io thread and a vCPU acknowledging can never leave the
    # line low with a reason pending (or high with none).  pyhv's MP table
    # describes the line as level-triggered; a guest that programs it as an
    # edge (an ISA line's default) still hears of a reason left after an
    # acknowledgement, since the line then drops and rises again.

    def _interrupt(self, vector: int) -> None:
        with self._lock:
            self.interrupt_status |= INT_CONFIG_CHANGE if vector == CONFIG_INTERRUPT else INT_USED_BUFFER
            self._irq(True)

    def _ack(self, bits: int) -> None:
        with self._lock:
            self.interrupt_status &= ~bits
            if self.interrupt_status:
                # a reason came after the one acknowledged: a guest that set the pin
                # edge-triggered needs a new edge to hear of it
                self._irq(False)
            self._irq(bool(self.interrupt_status))

    # --- registers ----------------------------------------------------------------

    def read(self, offset: int, size: int) -> int:
        dev = self.device
        if offset >= CONFIG:
            return dev.read_config(offset - CONFIG, size)
        if size != 4 or offset & 3:
            return 0
        with dev.lock:
            q = self.device.queue(self.queue_sel)
            if offset == MAGIC_VALUE:
                return MAGIC
            if offset == VERSION_REG:
                return VERSION
            if offset == DEVICE_ID:
                return dev.device_id
            if offset == VENDOR_ID_REG:
                return VENDOR_ID
            if offset == DEVICE_FEATURES:
                return (dev.offered_features() >> (32 * self.device_features_sel)) & 0xFFFF_FFFF if self.device_features_sel < 2 else 0
            if offset == QUEUE_NUM_MAX:
                return q.max_size if q is not None else 0
            if offset == QUEUE_READY:
                return int(q.ready) if q is not None else 0
            if offset == INTERRUPT_STATUS:
                return self.interrupt_status
            if offset == STATUS:
                return dev.status
            if offset in (SHM_LEN_LOW, SHM_LEN_HIGH, SHM_BASE_LOW, SHM_BASE_HIGH):
                return 0xFFFF_FFFF  # no shared memory regions
            if offset == CONFIG_GENERATION:
                return dev.config_generation & 0xFFFF_FFFF
        return 0

    def write(self, offset: int, size: int, value: int) -> None:
        dev = self.device
        if offset >= CONFIG:
            dev.write_config(offset - CONFIG, size, value)
            return
        if size != 4 or offset & 3:
            return
        value &= 0xFFFF_FFFF
        if offset == NOTIFY_OFFSET:
            dev.notify(value & 0xFFFF)
            return
        if offset == INTERRUPT_ACK:
            self._ack(value & (INT_USED_BUFFER | INT_CONFIG_CHANGE))
            return
        if offset == STATUS:
            dev.write_status(value)
            if value & 0xFF == 0:  # a reset (the device keeps the low byte only)
                self._ack(INT_USED_BUFFER | INT_CONFIG_CHANGE)
                self.queue_sel = self.device_features_sel = self.driver_features_sel = 0
            return
        with dev.lock:
            q = self.device.queue(self.queue_sel)
            if offset == DEVICE_FEATURES_SEL:
                self.device_features_sel = value
            elif offset == DRIVER_FEATURES_SEL:
                self.driver_features_sel = value
            elif offset == DRIVER_FEATURES:
                dev.write_driver_features(self.driver_features_sel, value)
            elif offset == QUEUE_SEL:
                self.queue_sel = value
            elif q is None or dev.status & STATUS_DRIVER_OK:  # no such queue, or running: queue config is frozen
                return
            elif offset == QUEUE_NUM:
                q.size = value
            elif offset == QUEUE_READY:
                q.ready = bool(value & 1)
            elif offset in _ADDR_REGS:
                attr, shift = _ADDR_REGS[offset]
                old = getattr(q, attr)
                setattr(q, attr, (old & ~(0xFFFF_FFFF << shift)) | (value << shift))
