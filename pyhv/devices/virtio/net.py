"""virtio-net (virtio 1.2, 5.1): one receive and one transmit queue over a frame backend.

Frames keep the 12-byte ``struct virtio_net_hdr_v1`` in front on both sides,
so the backend (a TAP opened with IFF_VNET_HDR and header size 12,
``backends/tap.py``) and the guest's buffers exchange bytes without copying
through Python objects: transmit is one gathered send from views of guest
memory, receive one scattered read into them
(:class:`~pyhv.backends.interfaces.FrameBackend`).

pyhv offers no checksum or segmentation offloads (the TAP is told so with
TUNSETOFFLOAD 0), so a transmit header must be all zeroes apart from
num_buffers: anything else is a malformed frame and is dropped, counted, and
reported once.  Frames longer than :data:`MAX_FRAME` are dropped the same way.
The guest never takes the device or the VMM down with a frame.

Receive is driven by the backend: while the guest has posted receive buffers
the I/O thread watches the backend's fd; when they run out it stops watching
until the guest kicks the receive queue.
"""

from __future__ import annotations

import struct
import sys
from typing import Any

from ...backends.interfaces import VNET_HDR_SIZE, FrameBackend, Readiness
from .device import STATUS_DEVICE_NEEDS_RESET, STATUS_DRIVER_OK, VirtioDevice, buffer_views
from .queue import DescriptorChain, SplitQueue

DEVICE_ID = 1
RX, TX = 0, 1

VIRTIO_NET_F_MTU = 3
VIRTIO_NET_F_MAC = 5
VIRTIO_NET_F_STATUS = 16
VIRTIO_NET_S_LINK_UP = 1

MTU = 1500
#: the largest frame (with its header) pyhv moves without offloads
MAX_FRAME = VNET_HDR_SIZE + 14 + 4 + MTU + 64
HDR_NUM_BUFFERS = 10
#: the header's offload fields (flags .. csum_offset) as two words: (0, 0) without offloads
_HDR_OFFLOAD = struct.Struct("<QH")


class Net(VirtioDevice):
    device_id = DEVICE_ID
    name = "virtio-net"

    def __init__(self, mem: Any, backend: FrameBackend, mac: bytes, io: Readiness) -> None:
        super().__init__(mem, num_queues=2)
        if len(mac) != 6:
            raise ValueError("MAC address must be 6 bytes")
        self.backend = backend
        self.io = io
        self.mac = mac
        self.name = f"virtio-net({backend.name})"
        self._watching = False
        self.rx_frames = self.tx_frames = self.rx_bytes = self.tx_bytes = 0
        self.tx_dropped = self.rx_dropped = 0
        self._warned = False

    def device_features(self) -> int:
        return (1 << VIRTIO_NET_F_MAC) | (1 << VIRTIO_NET_F_STATUS) | (1 << VIRTIO_NET_F_MTU)

    def config_bytes(self) -> bytes:
        # struct virtio_net_config: mac[6], status, max_virtqueue_pairs, mtu
        return self.mac + struct.pack("<HHH", VIRTIO_NET_S_LINK_UP, 1, MTU)

    def _device_activate(self) -> None:
        self._set_watch(True)

    def _device_reset(self) -> None:
        self._set_watch(False)

    def _set_watch(self, on: bool) -> None:
        """Watch the backend for received frames, or stop."""
        if on != self._watching:
            self._watching = on
            self.io.watch(self.backend.fileno(), self.backend_readable if on else None, None)

    def _device_process(self, index: int, queue: SplitQueue) -> bool:
        if index == TX:
            return self._transmit(queue)
        # the guest posted receive buffers: frames waiting in the backend can come in
        self._set_watch(True)
        return self._receive(queue)

    # --- guest -> backend ----------------------------------------------------------

    def _transmit(self, queue: SplitQueue) -> bool:
        return self._drain(queue, self._send_frame)

    def _send_frame(self, chain: DescriptorChain) -> int:
        """Send one guest frame to the backend, or drop it; nothing is written back."""
        length = chain.readable_len()
        if not VNET_HDR_SIZE < length <= MAX_FRAME:
            self._drop_tx(f"frame of {length} bytes")
            return 0
        if len(chain.readable) == 1:  # the usual layout: header and frame in one buffer
            # the buffer lies in RAM (checked at pop) and is `length` bytes long
            views = [self.mem.view(chain.readable[0].addr, length)]
            header = views[0]
        else:
            views = buffer_views(self.mem, chain.readable, 0, length)
            header = views[0] if len(views[0]) >= HDR_NUM_BUFFERS else memoryview(chain.read_all(self.mem, VNET_HDR_SIZE))
        if _HDR_OFFLOAD.unpack_from(header) != (0, 0):  # flags, gso_type, hdr_len, gso_size, csum_*
            self._drop_tx("offload header fields set but no offload was negotiated")
            return 0
        try:
            self.backend.send(views)
        except BlockingIOError:
            self.tx_dropped += 1  # the backend's queue is full: the network drops, as a wire would
            return 0
        except OSError as e:
            self._drop_tx(f"{self.backend.name} write failed: {e.strerror}")
            return 0
        self.tx_frames += 1
        self.tx_bytes += length - VNET_HDR_SIZE
        return 0

    def _drop_tx(self, why: str) -> None:
        self.tx_dropped += 1
        if not self._warned:
            self._warned = True
            print(f"pyhv: {self.name}: dropped a transmitted frame: {why}", file=sys.stderr)

    # --- backend -> guest ----------------------------------------------------------

    def backend_readable(self) -> None:
        """The I/O thread saw the backend readable: move frames into posted buffers."""
        with self.lock:
            if not self.status & STATUS_DRIVER_OK or self.status & STATUS_DEVICE_NEEDS_RESET:
                return
            try:
                used = self._receive(self.queues[RX])
            except Exception as e:  # noqa: BLE001 - QueueError and friends: fail the device
                self.fail(f"receive queue: {e}")
                return
            signal = used and self.queues[RX].should_notify()
        if signal:
            self.interrupt(RX)

    def _receive(self, queue: SplitQueue) -> bool:
        used = False
        while True:
            if not queue.has_available():
                self._set_watch(False)  # nowhere to put a frame: wait for the guest's kick
                return used
            chain = queue.pop()
            if chain is None:
                return used
            if len(chain.writable) == 1:  # one buffer: in RAM (checked at pop), `length` bytes
                views = [self.mem.view(chain.writable[0].addr, chain.writable[0].length)]
            else:
                views = buffer_views(self.mem, chain.writable, 0, chain.writable_len())
            try:
                n = self.backend.recv_into(views)
            except BlockingIOError:
                queue.unpop()
                return used
            except OSError:
                n = 0
            if n < VNET_HDR_SIZE:
                self.rx_dropped += 1
                queue.push_used(chain, 0, publish=False)
            else:
                # one buffer per frame (no MRG_RXBUF): num_buffers = 1
                if len(views[0]) >= VNET_HDR_SIZE:
                    views[0][HDR_NUM_BUFFERS:VNET_HDR_SIZE] = b"\x01\x00"
                else:
                    chain.write_at(self.mem, HDR_NUM_BUFFERS, b"\x01\x00")
                self.rx_frames += 1
                self.rx_bytes += n - VNET_HDR_SIZE
                queue.push_used(chain, n, publish=False)
            used = True
