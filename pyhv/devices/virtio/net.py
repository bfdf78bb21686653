"""virtio-net (virtio 1.2, 5.1): one receive and one transmit queue over a frame backend.

Frames keep the 12-byte ``struct virtio_net_hdr_v1`` in front on both sides,
so the backend (a TAP opened with IFF_VNET_HDR and header size 12,
``backends/tap.py``) and the guest's buffers exchange bytes without copying
through Python objects: transmit is one gathered send from views of guest
memory, receive one scattered read into them
(:class:`~pyhv.backends.interfaces.FrameBackend`).

Offloads (5.1.6.2, 5.1.6.4)
---------------------------
Where the backend can do them (:meth:`FrameBackend.offloads`), pyhv offers
VIRTIO_NET_F_CSUM and HOST_TSO4/6/UFO (the guest may send frames with a
partial checksum, and TCP segments or UDP datagrams of up to 64 KiB for the
host to cut up), GUEST_CSUM and GUEST_TSO4/6 (the guest takes such frames),
and always MRG_RXBUF (a received frame may span several receive buffers; the
header's num_buffers says how many).  The backend is told which frames the
guest accepts (TUNSETOFFLOAD follows the GUEST_* bits it acked) at activation
and again after a restore.  A transmit header is checked against what was
negotiated: an unknown flag, a checksum position outside the frame, a GSO
type that was not negotiated or without NEEDS_CSUM, or a frame longer than
the negotiated maximum (:data:`MAX_FRAME`, or :data:`MAX_GSO_FRAME` with a
GSO type) is a malformed frame: dropped, counted and reported once.  The
guest never takes the device or the VMM down with a frame.

Receive is driven by the backend: while the guest has posted receive buffers
the I/O thread watches the backend's fd; when they run out it stops watching
until the guest kicks the receive queue.  A frame is read straight into the
first receive buffer; with MRG_RXBUF, the part that does not fit lands in a
bounce buffer and is copied into further buffers (if the guest posted too
few, the frame is dropped and the buffers stay posted).
"""

from __future__ import annotations

import struct
import sys
from typing import Any

from ...backends.interfaces import (
    OFFLOAD_CSUM,
    OFFLOAD_TSO4,
    OFFLOAD_TSO6,
    OFFLOAD_UFO,
    VNET_HDR_SIZE,
    FrameBackend,
    Readiness,
)
from .device import STATUS_DEVICE_NEEDS_RESET, STATUS_DRIVER_OK, VirtioDevice, buffer_views
from .queue import DescriptorChain, SplitQueue

DEVICE_ID = 1
RX, TX = 0, 1

VIRTIO_NET_F_CSUM = 0
VIRTIO_NET_F_GUEST_CSUM = 1
VIRTIO_NET_F_MTU = 3
VIRTIO_NET_F_MAC = 5
VIRTIO_NET_F_GUEST_TSO4 = 7
VIRTIO_NET_F_GUEST_TSO6 = 8
VIRTIO_NET_F_HOST_TSO4 = 11
VIRTIO_NET_F_HOST_TSO6 = 12
VIRTIO_NET_F_HOST_UFO = 14
VIRTIO_NET_F_MRG_RXBUF = 15
VIRTIO_NET_F_STATUS = 16
VIRTIO_NET_S_LINK_UP = 1

VIRTIO_NET_HDR_F_NEEDS_CSUM = 1
VIRTIO_NET_HDR_GSO_NONE = 0
VIRTIO_NET_HDR_GSO_TCPV4 = 1
VIRTIO_NET_HDR_GSO_UDP = 3
VIRTIO_NET_HDR_GSO_TCPV6 = 4

MTU = 1500
#: the largest frame (with its header) pyhv moves without segmentation offloads
MAX_FRAME = VNET_HDR_SIZE + 14 + 4 + MTU + 64
#: the largest frame with a GSO type: a 64 KiB IP packet behind a VLAN-tagged Ethernet header
MAX_GSO_FRAME = VNET_HDR_SIZE + 14 + 4 + 0xFFFF
HDR_NUM_BUFFERS = 10

#: a feature bit, the backend offload it needs, and the feature it depends on (5.1.3.1)
_OFFLOAD_FEATURES = (
    (VIRTIO_NET_F_CSUM, OFFLOAD_CSUM, None),
    (VIRTIO_NET_F_HOST_TSO4, OFFLOAD_TSO4, VIRTIO_NET_F_CSUM),
    (VIRTIO_NET_F_HOST_TSO6, OFFLOAD_TSO6, VIRTIO_NET_F_CSUM),
    (VIRTIO_NET_F_HOST_UFO, OFFLOAD_UFO, VIRTIO_NET_F_CSUM),
    (VIRTIO_NET_F_GUEST_CSUM, OFFLOAD_CSUM, None),
    (VIRTIO_NET_F_GUEST_TSO4, OFFLOAD_TSO4, VIRTIO_NET_F_GUEST_CSUM),
    (VIRTIO_NET_F_GUEST_TSO6, OFFLOAD_TSO6, VIRTIO_NET_F_GUEST_CSUM),
)
#: the GSO types a transmitted frame may carry, and the feature each needs
_GSO_FEATURE = {
    VIRTIO_NET_HDR_GSO_TCPV4: VIRTIO_NET_F_HOST_TSO4,
    VIRTIO_NET_HDR_GSO_TCPV6: VIRTIO_NET_F_HOST_TSO6,
    VIRTIO_NET_HDR_GSO_UDP: VIRTIO_NET_F_HOST_UFO,
}
#: the header before num_buffers: flags, gso_type, hdr_len, gso_size, csum_start, csum_offset
_HDR = struct.Struct("<BBHHHH")
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
        self._rx_kicks = True  # whether the receive queue asks the driver for kicks
        self._max_tx = MAX_FRAME  # with HOST_TSO/UFO: MAX_GSO_FRAME
        self._mergeable = False
        self._bounce = bytearray(MAX_GSO_FRAME)  # the part of a merged frame beyond its first buffer
        self.rx_frames = self.tx_frames = self.rx_bytes = self.tx_bytes = 0
        self.tx_dropped = self.rx_dropped = 0
        self._warned = False

    def device_features(self) -> int:
        features = 1 << VIRTIO_NET_F_MAC | 1 << VIRTIO_NET_F_STATUS | 1 << VIRTIO_NET_F_MTU | 1 << VIRTIO_NET_F_MRG_RXBUF
        can = self.backend.offloads()
        for bit, offload, _ in _OFFLOAD_FEATURES:
            if can & offload and can & OFFLOAD_CSUM:
                features |= 1 << bit
        return features

    def accepts_features(self, features: int) -> bool:
        """An offload needs the checksum feature it builds on (5.1.3.1)."""
        return all(
            not features >> bit & 1 or needs is None or features >> needs & 1 for bit, _, needs in _OFFLOAD_FEATURES
        )

    def _guest_offloads(self, features: int) -> int:
        """The backend offloads the guest accepts on receive (its GUEST_* bits)."""
        return (
            (OFFLOAD_CSUM if features >> VIRTIO_NET_F_GUEST_CSUM & 1 else 0)
            | (OFFLOAD_TSO4 if features >> VIRTIO_NET_F_GUEST_TSO4 & 1 else 0)
            | (OFFLOAD_TSO6 if features >> VIRTIO_NET_F_GUEST_TSO6 & 1 else 0)
        )

    def config_bytes(self) -> bytes:
        # struct virtio_net_config: mac[6], status, max_virtqueue_pairs, mtu
        return self.mac + struct.pack("<HHH", VIRTIO_NET_S_LINK_UP, 1, MTU)

    def _device_activate(self) -> None:
        self._rx_kicks = True  # as every queue starts (and is restored) asking for them
        features = self.driver_features
        gso = any(features >> bit & 1 for bit in _GSO_FEATURE.values())
        self._max_tx = MAX_GSO_FRAME if gso else MAX_FRAME
        self._mergeable = bool(features >> VIRTIO_NET_F_MRG_RXBUF & 1)
        if not self._set_offload(self._guest_offloads(features)):
            return
        self._set_watch(True)

    def _device_reset(self) -> None:
        self._set_watch(False)
        self._rx_kicks = True
        self._max_tx, self._mergeable = MAX_FRAME, False
        self._set_offload(0)

    def _set_offload(self, flags: int) -> bool:
        """Tell the backend which offloaded frames the guest takes; a backend
        that refuses fails the device (True when it took them)."""
        if not self.backend.offloads():
            return True
        try:
            self.backend.set_offload(flags)
        except OSError as e:
            self.fail(f"{self.backend.name}: cannot set offloads {flags:#x}: {e.strerror or e}")
            return False
        return True

    def _set_watch(self, on: bool) -> None:
        """Watch the backend for received frames, or stop."""
        if on != self._watching:
            self._watching = on
            self.io.watch(self.backend.fileno(), self.backend_readable if on else None, None)

    def notify(self, index: int) -> None:
        """After a transmit pass, look at the backend once: a reply the host made
        while taking the frames (an ARP or ICMP answer from the host's own
        stack) is in the TAP already, and comes in without waiting for the
        I/O thread to see the backend readable."""
        super().notify(index)
        if index == TX and self._watching:
            self.backend_readable()

    def _device_process(self, index: int, queue: SplitQueue) -> bool:
        if index == TX:
            return self._transmit(queue)
        # the guest posted receive buffers: frames waiting in the backend can come in
        self._set_watch(True)
        return self._receive(queue)

    # --- guest -> backend ----------------------------------------------------------

    def _transmit(self, queue: SplitQueue) -> bool:
        return self._drain(queue, self._send_frame, TX, lambda chain: max(0, chain.readable_len() - VNET_HDR_SIZE))

    def _send_frame(self, chain: DescriptorChain) -> int:
        """Send one guest frame to the backend, or drop it; nothing is written back."""
        length = chain.readable_len()
        if not VNET_HDR_SIZE < length <= self._max_tx:
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
            why = self._check_offload(_HDR.unpack_from(header), length - VNET_HDR_SIZE)
            if why:
                self._drop_tx(why)
                return 0
        elif length > MAX_FRAME:
            self._drop_tx(f"frame of {length} bytes without a GSO type")
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

    def _check_offload(self, header: tuple[int, ...], frame_len: int) -> str:
        """Why a transmit header (not all zero) is malformed, or "" (5.1.6.2.1)."""
        flags, gso_type, hdr_len, gso_size, csum_start, csum_offset = header
        features = self.driver_features
        if flags & ~VIRTIO_NET_HDR_F_NEEDS_CSUM:
            return f"header flags {flags:#x}"
        if flags and not features >> VIRTIO_NET_F_CSUM & 1:
            return "NEEDS_CSUM but VIRTIO_NET_F_CSUM was not negotiated"
        if flags and csum_start + csum_offset + 2 > frame_len:
            return f"checksum at {csum_start}+{csum_offset} outside a frame of {frame_len} bytes"
        if gso_type == VIRTIO_NET_HDR_GSO_NONE:
            return "" if frame_len <= MAX_FRAME - VNET_HDR_SIZE else f"frame of {frame_len} bytes without a GSO type"
        feature = _GSO_FEATURE.get(gso_type)
        if feature is None or not features >> feature & 1:
            return f"GSO type {gso_type:#x} was not negotiated"
        if not flags:
            return "GSO without NEEDS_CSUM"
        if gso_size == 0 or hdr_len > frame_len:
            return f"GSO with gso_size {gso_size} and hdr_len {hdr_len} in a frame of {frame_len} bytes"
        return ""

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
        limiter = self.limiters.get(RX)  # looked up once a pass: this loop runs per frame
        if self._rx_kicks:  # buffers to fill and the backend watched: the guest need not kick
            self._rx_kicks = False
            queue.set_notification(False)
        while True:
            if limiter is not None and not self._admit(RX, 1, 1, take=False):  # charged once the frame is in
                self._set_watch(False)  # the limiter's timer serves the queue again
                return used
            chain = queue.pop()
            if chain is None:
                # out of buffers: ask for a kick, then look once more (a buffer
                # posted before the request was visible brought no kick)
                self._rx_kicks = True
                queue.set_notification(True)
                if queue.has_available():
                    self._rx_kicks = False
                    queue.set_notification(False)
                    continue
                self._set_watch(False)  # nowhere to put a frame: wait for the guest's kick
                return used
            room = chain.writable_len()
            if len(chain.writable) == 1:  # one buffer: in RAM (checked at pop), `room` bytes
                views = [self.mem.view(chain.writable[0].addr, room)]
            else:
                views = buffer_views(self.mem, chain.writable, 0, room)
            spill = self._mergeable and room < MAX_GSO_FRAME
            if spill:  # what does not fit goes to the bounce buffer, then to more chains
                views.append(memoryview(self._bounce)[: MAX_GSO_FRAME - room])
            try:
                n = self.backend.recv_into(views)
            except BlockingIOError:
                queue.unpop()
                return used
            except OSError:
                n = 0
            used = True
            if n < VNET_HDR_SIZE:
                self.rx_dropped += 1
                queue.push_used(chain, 0, publish=False)
                continue
            if n <= room:
                self._set_num_buffers(chain, views[0], 1)
                queue.push_used(chain, n, publish=False)
            elif not self._merge(queue, chain, views[0], room, n):  # n > room only with a spill view
                continue
            self.rx_frames += 1
            self.rx_bytes += n - VNET_HDR_SIZE
            if limiter is not None:
                limiter.charge(1, n - VNET_HDR_SIZE)

    def _set_num_buffers(self, chain: DescriptorChain, first: memoryview, count: int) -> None:
        value = count.to_bytes(2, "little")
        if len(first) >= VNET_HDR_SIZE:
            first[HDR_NUM_BUFFERS:VNET_HDR_SIZE] = value
        else:
            chain.write_at(self.mem, HDR_NUM_BUFFERS, value)

    def _merge(self, queue: SplitQueue, chain: DescriptorChain, first: memoryview, room: int, n: int) -> bool:
        """Spread a frame of ``n`` bytes, the first ``room`` in ``chain``, the
        rest in the bounce buffer, over more receive chains (MRG_RXBUF).  With
        too few chains posted the frame is dropped: every chain popped here is
        given back and ``chain`` is used empty."""
        rest = memoryview(self._bounce)[: n - room]  # n <= MAX_GSO_FRAME: recv_into was given no more
        more: list[tuple[DescriptorChain, int]] = []
        done = 0
        while done < len(rest):
            extra = queue.pop()
            if extra is None:
                queue.unpop(len(more))
                self.rx_dropped += 1
                queue.push_used(chain, 0, publish=False)
                return False
            # write_at stops at the chain's writable bytes (each checked at pop)
            took = extra.write_at(self.mem, 0, rest[done:])
            more.append((extra, took))
            done += took
        self._set_num_buffers(chain, first, 1 + len(more))
        queue.push_used(chain, room, publish=False)
        for extra, took in more:
            queue.push_used(extra, took, publish=False)
        return True
