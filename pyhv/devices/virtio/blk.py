"""virtio-blk (virtio 1.2, 5.2) on a raw disk image.

A request is a chain: a 16-byte device-readable header (type, reserved,
sector), the data (device-readable for writes, device-writable for reads),
and a final device-writable status byte.  Everything in it comes from the
guest and is checked before use: a request with a short header, no status
byte, data that is not whole sectors or that runs past the end of the disk,
a write to a read-only disk or an unknown type is answered with IOERR or
UNSUPP, and the device carries on.  Only a malformed *ring* (the queue's
business) makes the device need a reset.

Data moves straight between the image file and guest memory (preadv and
pwritev on views of guest RAM).  FLUSH is fdatasync: once the driver sees a
FLUSH complete, what it wrote before is on stable storage.
"""

from __future__ import annotations

import struct
import sys
from typing import Any

from ...backends.block import SECTOR_SIZE, RawDisk
from .device import VirtioDevice, buffer_views
from .queue import DescriptorChain, SplitQueue

DEVICE_ID = 2

VIRTIO_BLK_F_SIZE_MAX = 1
VIRTIO_BLK_F_SEG_MAX = 2
VIRTIO_BLK_F_RO = 5
VIRTIO_BLK_F_BLK_SIZE = 6
VIRTIO_BLK_F_FLUSH = 9
VIRTIO_BLK_F_DISCARD = 13
VIRTIO_BLK_F_WRITE_ZEROES = 14

VIRTIO_BLK_T_IN = 0
VIRTIO_BLK_T_OUT = 1
VIRTIO_BLK_T_FLUSH = 4
VIRTIO_BLK_T_GET_ID = 8
VIRTIO_BLK_T_DISCARD = 11
VIRTIO_BLK_T_WRITE_ZEROES = 13

VIRTIO_BLK_S_OK = 0
VIRTIO_BLK_S_IOERR = 1
VIRTIO_BLK_S_UNSUPP = 2

VIRTIO_BLK_ID_BYTES = 20
WRITE_ZEROES_FLAG_UNMAP = 1

HEADER = struct.Struct("<IIQ")
SEGMENT = struct.Struct("<QII")  # discard / write-zeroes: sector, num_sectors, flags

#: limits advertised in the configuration space and enforced per request
SIZE_MAX = 1 << 20  # bytes per segment (descriptor)
SEG_MAX = 254
MAX_DISCARD_SECTORS = 1 << 22
MAX_DISCARD_SEG = 32
MAX_REQUEST_BYTES = SIZE_MAX * SEG_MAX


def _data_bytes(chain: DescriptorChain) -> int:
    """The bytes a request moves (what a bandwidth limit counts): all but the header and status."""
    return max(0, chain.readable_len() + chain.writable_len() - HEADER.size - 1)


class Blk(VirtioDevice):
    device_id = DEVICE_ID
    name = "virtio-blk"

    def __init__(self, mem: Any, disk: RawDisk, serial: str = "") -> None:
        super().__init__(mem, num_queues=1)
        self.disk = disk
        self.serial = serial.encode()
        if len(self.serial) > VIRTIO_BLK_ID_BYTES:  # the description refuses these; say so if one slips by
            raise ValueError(f"disk serial {serial!r} is longer than {VIRTIO_BLK_ID_BYTES} bytes")
        self.name = f"virtio-blk({disk.path})"
        self.requests = 0
        self.bytes_read = 0
        self.bytes_written = 0
        self.errors = 0

    def swap_disk(self, disk: RawDisk) -> RawDisk:
        """Serve ``disk`` from now on and return the one it replaces (for the
        caller to close).  Requests are served with the device's lock held, so
        none is in flight on the old disk once this has it.  The driver is told
        the new capacity by a configuration change."""
        if disk.readonly != self.disk.readonly:
            raise ValueError("a swapped disk must be read-only exactly when the one it replaces is")
        with self.lock:
            old, self.disk = self.disk, disk
            self.name = f"virtio-blk({disk.path})"
        self.config_changed()
        return old

    def device_features(self) -> int:
        bits = (
            (1 << VIRTIO_BLK_F_SIZE_MAX)
            | (1 << VIRTIO_BLK_F_SEG_MAX)
            | (1 << VIRTIO_BLK_F_BLK_SIZE)
            | (1 << VIRTIO_BLK_F_FLUSH)
        )
        if self.disk.readonly:
            bits |= 1 << VIRTIO_BLK_F_RO
        else:
            bits |= (1 << VIRTIO_BLK_F_DISCARD) | (1 << VIRTIO_BLK_F_WRITE_ZEROES)
        return bits

    def config_bytes(self) -> bytes:
        # struct virtio_blk_config (5.2.4), up to write_zeroes_may_unmap
        cfg = bytearray(60)
        struct.pack_into("<Q", cfg, 0, self.disk.sectors)  # capacity
        struct.pack_into("<II", cfg, 8, SIZE_MAX, SEG_MAX)  # size_max, seg_max
        struct.pack_into("<I", cfg, 20, SECTOR_SIZE)  # blk_size
        struct.pack_into("<III", cfg, 36, MAX_DISCARD_SECTORS, MAX_DISCARD_SEG, 1)  # discard limits, alignment
        struct.pack_into("<II", cfg, 48, MAX_DISCARD_SECTORS, MAX_DISCARD_SEG)  # write-zeroes limits
        cfg[56] = 1  # write_zeroes_may_unmap
        return bytes(cfg)

    def _device_process(self, index: int, queue: SplitQueue) -> bool:
        return self._drain(queue, self._request, index, _data_bytes)

    def _request(self, chain: DescriptorChain) -> int:
        """Carry out one request; the number of bytes written into the chain."""
        self.requests += 1
        status_room = chain.writable_len()
        if chain.readable_len() < HEADER.size or status_room < 1:
            self.errors += 1
            return 0  # no header or nowhere to put the status: nothing to answer
        first = chain.readable[0]
        if first.length >= HEADER.size:  # the usual layout: the header is a buffer of its own
            kind, _, sector = HEADER.unpack_from(self.mem.view(first.addr, HEADER.size))
        else:
            kind, _, sector = HEADER.unpack(chain.read_all(self.mem, HEADER.size))
        data_in = status_room - 1  # device-writable data bytes (before the status byte)
        data_out = chain.readable_len() - HEADER.size  # device-readable data bytes
        try:
            status, written = self._dispatch(chain, kind, sector, data_in, data_out)
        except OSError as e:
            self._log_io_error(e)
            status, written = VIRTIO_BLK_S_IOERR, 0
        if status != VIRTIO_BLK_S_OK:
            self.errors += 1
        last = chain.writable[-1]  # the status is the last writable byte (5.2.6)
        self.mem.view(last.addr + last.length - 1, 1)[0] = status
        return written + 1

    def _dispatch(self, chain: DescriptorChain, kind: int, sector: int, data_in: int, data_out: int) -> tuple[int, int]:
        if kind == VIRTIO_BLK_T_IN:
            if not self._in_range(sector, data_in):
                return VIRTIO_BLK_S_IOERR, 0
            views = buffer_views(self.mem, chain.writable, 0, data_in)
            self.disk.readv(sector * SECTOR_SIZE, views)
            self.bytes_read += data_in
            return VIRTIO_BLK_S_OK, data_in
        if kind == VIRTIO_BLK_T_OUT:
            if self.disk.readonly or not self._in_range(sector, data_out):
                return VIRTIO_BLK_S_IOERR, 0
            views = buffer_views(self.mem, chain.readable, HEADER.size, data_out)
            self.disk.writev(sector * SECTOR_SIZE, views)
            self.bytes_written += data_out
            return VIRTIO_BLK_S_OK, 0
        if kind == VIRTIO_BLK_T_FLUSH:
            if not self.disk.readonly:
                self.disk.flush()
            return VIRTIO_BLK_S_OK, 0
        if kind == VIRTIO_BLK_T_GET_ID:
            if data_in < 1:
                return VIRTIO_BLK_S_IOERR, 0
            ident = self.serial.ljust(VIRTIO_BLK_ID_BYTES, b"\0")[: min(data_in, VIRTIO_BLK_ID_BYTES)]
            chain.write_at(self.mem, 0, ident)
            return VIRTIO_BLK_S_OK, len(ident)
        if kind in (VIRTIO_BLK_T_DISCARD, VIRTIO_BLK_T_WRITE_ZEROES):
            return self._ranges(chain, kind, data_out), 0
        return VIRTIO_BLK_S_UNSUPP, 0

    def _ranges(self, chain: DescriptorChain, kind: int, data_out: int) -> int:
        if self.disk.readonly:
            return VIRTIO_BLK_S_IOERR
        if data_out == 0 or data_out % SEGMENT.size or data_out // SEGMENT.size > MAX_DISCARD_SEG:
            return VIRTIO_BLK_S_IOERR
        payload = chain.read_all(self.mem, HEADER.size + data_out)[HEADER.size :]
        segments = [SEGMENT.unpack_from(payload, i) for i in range(0, data_out, SEGMENT.size)]
        for sector, count, flags in segments:  # check every segment before touching the disk
            if count > MAX_DISCARD_SECTORS or not self._in_range(sector, count * SECTOR_SIZE):
                return VIRTIO_BLK_S_IOERR
            if flags & ~WRITE_ZEROES_FLAG_UNMAP or (kind == VIRTIO_BLK_T_DISCARD and flags):
                return VIRTIO_BLK_S_UNSUPP
        for sector, count, flags in segments:
            if kind == VIRTIO_BLK_T_DISCARD:
                self.disk.discard(sector * SECTOR_SIZE, count * SECTOR_SIZE)
            else:
                self.disk.write_zeroes(sector * SECTOR_SIZE, count * SECTOR_SIZE, bool(flags & WRITE_ZEROES_FLAG_UNMAP))
        return VIRTIO_BLK_S_OK

    def _in_range(self, sector: int, length: int) -> bool:
        return length % SECTOR_SIZE == 0 and length <= MAX_REQUEST_BYTES and sector + length // SECTOR_SIZE <= self.disk.sectors

    def _log_io_error(self, e: OSError) -> None:
        if self.errors == 0:
            print(f"pyhv: {self.name}: I/O error: {e.strerror or e}", file=sys.stderr)
