"""virtio-vsock (virtio 1.2, 5.10): the protocol, with the host end behind a backend.

The device speaks to the guest; host programs are reached through a
:class:`~pyhv.backends.interfaces.VsockHost` (``backends/vsock_uds.py``: unix
sockets in Firecracker's convention), which hands over connections a host
program opened for a guest port and opens connections the guest asks for.  The
device sees each as a non-blocking :class:`~pyhv.backends.interfaces.HostStream`
and watches it through the I/O thread's
:class:`~pyhv.backends.interfaces.Readiness`.

Streams use the spec's credit-based flow control (5.10.6.3): each side tells
the other how much buffer it has (``buf_alloc``) and how much it has consumed
(``fwd_cnt``); a sender never has more than ``buf_alloc - (tx_cnt - fwd_cnt)``
bytes in flight.  pyhv reads a host stream only while the guest has credit,
and counts bytes toward its own ``fwd_cnt`` only once the host stream took
them.  A peer that vanishes is a reset (RST) to the other side.

Everything runs on the I/O thread.  Packets for the guest wait in a queue until
it posts receive buffers.

Batching and copies: when nothing is waiting for the guest, a readable host
stream is read straight into the guest's receive buffers, several at once (up
to :data:`RX_BATCH` chains, one ``recvmsg_into`` over views of their data
parts, each checked to lie in guest RAM when the chain was popped); the
chains the read did not reach are given back.  Data the guest transmits is
gathered per connection over the whole transmit queue and handed to the host
stream once per pass rather than once per packet.  Malformed packets from the guest (bad type, lengths
that do not match the buffers, a CID that is not its own) are answered with a
reset and never take the device down.
"""

from __future__ import annotations

import struct
import sys
from collections import deque
from collections.abc import Callable
from typing import Any

from ...backends.interfaces import HostStream, Readiness, VsockHost
from .device import STATUS_DRIVER_OK, VirtioDevice, buffer_views
from .queue import DescriptorChain, SplitQueue

DEVICE_ID = 19
RX, TX, EVENT = 0, 1, 2
VIRTIO_VSOCK_EVENT_TRANSPORT_RESET = 0
HOST_CID = 2

HEADER = struct.Struct("<QQIIIHHIII")  # src_cid dst_cid src_port dst_port len type op flags buf_alloc fwd_cnt
TYPE_STREAM = 1
OP_REQUEST, OP_RESPONSE, OP_RST, OP_SHUTDOWN, OP_RW, OP_CREDIT_UPDATE, OP_CREDIT_REQUEST = 1, 2, 3, 4, 5, 6, 7
SHUTDOWN_RCV, SHUTDOWN_SEND = 1, 2

#: host-side receive buffer per connection (what the guest may have in flight to us)
BUF_ALLOC = 256 * 1024
#: largest payload pyhv puts in one packet to the guest, and accepts from it
MAX_PAYLOAD = 64 * 1024
#: control packets (no payload) waiting for receive buffers, at most: a guest that
#: transmits but never posts receive buffers must not grow the host's queue for ever
MAX_PENDING_CONTROL = 1024
FIRST_HOST_PORT = 1 << 30
#: receive chains one read of a host stream fills at most
RX_BATCH = 64


class Connection:
    def __init__(self, stream: HostStream, host_port: int, guest_port: int) -> None:
        self.stream = stream
        self.host_port = host_port
        self.guest_port = guest_port
        self.established = False
        self.peer_buf_alloc = 0
        self.peer_fwd_cnt = 0
        self.tx_cnt = 0  # bytes sent to the guest
        self.rx_cnt = 0  # bytes received from the guest
        self.fwd_cnt = 0  # bytes of those the host stream took
        self.last_credit_sent = 0
        self.to_host = bytearray()  # received from the guest, not yet taken by the host stream
        self.early = b""  # sent by the host after asking to connect, before the guest accepted
        self.closing = False
        self.stalled = False  # not reading the host stream: the guest has no credit left

    def guest_credit(self) -> int:
        return self.peer_buf_alloc - (self.tx_cnt - self.peer_fwd_cnt)


class Vsock(VirtioDevice):
    device_id = DEVICE_ID
    name = "virtio-vsock"

    def __init__(self, mem: Any, guest_cid: int, host: VsockHost, io: Readiness) -> None:
        super().__init__(mem, num_queues=3)
        if not 3 <= guest_cid < 0xFFFF_FFFF:
            raise ValueError(f"guest CID {guest_cid} is reserved or out of range")
        self.guest_cid = guest_cid
        self.host = host
        self.io = io
        self.conns: dict[tuple[int, int], Connection] = {}  # (host port, guest port)
        self.pending: deque[tuple[bytes, bytes]] = deque()  # packets for the guest
        self._next_port = FIRST_HOST_PORT
        self.bad_packets = 0
        self.dropped_control = 0  # control packets dropped: the guest did not take its replies
        self.transport_reset_pending = False  # restored: the guest must hear its connections are gone
        self._rx_kicks = True  # whether the receive queue asks the driver for kicks (_rx_pop)
        self._to_flush: dict[tuple[int, int], Connection] = {}  # took guest data in this transmit pass

    def device_features(self) -> int:
        return 0

    def config_bytes(self) -> bytes:
        return struct.pack("<Q", self.guest_cid)

    # --- connections the host opens ------------------------------------------------

    def _host_connect(self, stream: HostStream, guest_port: int, early: bytes) -> None:
        """A host program asked for ``guest_port``: ask the guest (OP_REQUEST)."""
        with self.lock:
            host_port = self._allocate_port()
            conn = Connection(stream, host_port, guest_port)
            conn.early = early
            self.conns[(host_port, guest_port)] = conn
            self._send(conn, OP_REQUEST)
            self._flush_rx()

    def _allocate_port(self) -> int:
        while True:
            port = self._next_port
            self._next_port = FIRST_HOST_PORT if self._next_port >= 0xFFFF_FFFE else self._next_port + 1
            if not any(k[0] == port for k in self.conns):
                return port

    # --- packets to the guest -----------------------------------------------------

    def _send(self, conn: Connection, op: int, payload: bytes = b"", flags: int = 0) -> None:
        if not payload and self._control_full():
            return
        header = HEADER.pack(
            HOST_CID, self.guest_cid, conn.host_port, conn.guest_port, len(payload), TYPE_STREAM, op, flags,
            BUF_ALLOC, conn.fwd_cnt,
        )
        conn.last_credit_sent = conn.fwd_cnt
        self.pending.append((header, payload))

    def _control_full(self) -> bool:
        if len(self.pending) < MAX_PENDING_CONTROL:
            return False
        self.dropped_control += 1
        return True

    def _send_rst(self, src_port: int, dst_port: int) -> None:
        if self._control_full():
            return
        header = HEADER.pack(HOST_CID, self.guest_cid, src_port, dst_port, 0, TYPE_STREAM, OP_RST, 0, 0, 0)
        self.pending.append((header, b""))

    def _flush_rx(self) -> None:
        """Move waiting packets into the guest's receive buffers."""
        if self.queues[RX].active:
            self._on_rx(self._fill_rx)

    def _on_rx(self, work: Callable[[SplitQueue], bool]) -> None:
        """Run ``work`` on the receive queue (it returns whether it used buffers),
        then interrupt if the driver wants it; a ring violation fails the device."""
        q = self.queues[RX]
        try:
            signal = work(q) and q.should_notify()
        except Exception as e:  # noqa: BLE001 - a ring violation: the device needs a reset
            self.fail(f"receive queue: {e}")
            return
        if signal:
            self.interrupt(RX)

    def _rx_pop(self, q: SplitQueue) -> DescriptorChain | None:
        """The next receive chain.  While the guest has buffers posted it is
        asked not to kick the receive queue (the device looks at the ring when
        it has something to deliver; a kick would only wake the I/O thread
        ahead of the guest's transmit kick).  When none is left it is asked
        to kick again, and the ring is looked at once more: a buffer posted
        before the request was visible brought no kick."""
        chain = q.pop()
        if chain is None and not self._rx_kicks:
            self._rx_kicks = True
            q.set_notification(True)
            chain = q.pop()
        if chain is not None and self._rx_kicks:
            self._rx_kicks = False
            q.set_notification(False)
        return chain

    def _fill_rx(self, q: SplitQueue) -> bool:
        """Waiting packets into receive chains, in order; True if any chain was used."""
        used = False
        while self.pending and (chain := self._rx_pop(q)) is not None:
            header, payload = self.pending[0]
            room = chain.writable_len() - len(header)
            if room < min(len(payload), 1):
                self._bad_rx_buffer(chain.writable_len())
                q.push_used(chain, 0, publish=False)  # too small for even a header: hand it back empty
                used = True
                continue
            if len(payload) > room:
                # stream data may be split: send what fits, keep the rest first in line
                fields = list(HEADER.unpack(header))
                rest = payload[room:]
                fields[4] = len(rest)
                self.pending[0] = (HEADER.pack(*fields), rest)
                fields[4] = room
                header, payload = HEADER.pack(*fields), payload[:room]
            else:
                self.pending.popleft()
            chain.write_at(self.mem, 0, header + payload)
            q.push_used(chain, len(header) + len(payload), publish=False)
            used = True
        return used

    # --- state ----------------------------------------------------------------------

    def _device_state(self) -> Any:
        # Host connections are streams of this process: they do not survive a
        # restore, and the restored device tells the guest so (after_restore).
        return {"guest_cid": self.guest_cid}

    def _device_check_state(self, state: Any) -> Any:
        # The saved CID is checked but not taken: the CID is the description's,
        # so a clone of a snapshot gets its own.  The transport reset sent after
        # the restore makes the guest read it again (Linux:
        # virtio_vsock_update_guest_cid on VIRTIO_VSOCK_EVENT_TRANSPORT_RESET).
        from ..state import check_keys, int_field

        int_field(check_keys(state, ("guest_cid",), self.name), "guest_cid", 0xFFFF_FFFF, self.name)
        return None

    def _device_set_state(self, checked: Any) -> None:
        self.transport_reset_pending = bool(self.status & STATUS_DRIVER_OK)

    def after_restore(self) -> None:
        """Send VIRTIO_VSOCK_EVENT_TRANSPORT_RESET: the guest drops its connections
        (their host ends are gone).  Without an event buffer yet, it goes out
        when the driver provides one."""
        signal = False
        with self.lock:
            q = self.queues[EVENT]
            if not self.transport_reset_pending or not q.active:
                return
            chain = q.pop()
            if chain is None:
                return
            self.transport_reset_pending = False
            written = chain.write_at(self.mem, 0, struct.pack("<I", VIRTIO_VSOCK_EVENT_TRANSPORT_RESET))
            q.push_used(chain, written)
            signal = q.should_notify()
        if signal:
            self.interrupt(EVENT)

    # --- the queues -------------------------------------------------------------------

    def _device_activate(self) -> None:
        self._rx_kicks = True  # as every queue starts (and is restored) asking for them
        self.host.start_accepting(self._host_connect)

    def _device_reset(self) -> None:
        self._rx_kicks = True
        for conn in list(self.conns.values()):
            self._close(conn, tell_guest=False)
        self.pending.clear()

    def _device_process(self, index: int, queue: SplitQueue) -> bool:
        if index == RX:
            self._flush_rx()
            return False
        if index == EVENT:
            if self.transport_reset_pending:
                self.after_restore()
            return False
        used = self._drain(queue, self._from_guest)
        self._flush_to_host()
        self._flush_rx()
        return used

    def _flush_to_host(self) -> None:
        """Hand the host streams what this transmit pass gathered: one send each."""
        while self._to_flush:
            key, conn = self._to_flush.popitem()
            if key in self.conns:
                self._drain_to_host(conn)

    def _from_guest(self, chain: DescriptorChain) -> int:
        """Handle one packet from the transmit queue; nothing is written back."""
        self._packet(chain)
        return 0

    def _packet(self, chain: DescriptorChain) -> None:
        total = chain.readable_len()
        if total < HEADER.size or total > HEADER.size + MAX_PAYLOAD:
            self._bad(f"packet of {total} bytes")
            return
        first = chain.readable[0]
        # the header's own buffer (the usual layout) or a copy: both inside RAM (checked at pop)
        header = self.mem.view(first.addr, HEADER.size) if first.length >= HEADER.size else chain.read_all(self.mem, HEADER.size)
        src_cid, dst_cid, src_port, dst_port, length, type_, op, flags, buf_alloc, fwd_cnt = HEADER.unpack_from(header)
        if src_cid != self.guest_cid or dst_cid != HOST_CID or length != total - HEADER.size:
            self._bad(f"header src_cid={src_cid} dst_cid={dst_cid} len={length} with {total - HEADER.size} bytes")
            return
        if type_ != TYPE_STREAM:
            self._send_rst(dst_port, src_port)
            return
        conn = self.conns.get((dst_port, src_port))
        if conn is not None:
            starved = conn.stalled
            conn.peer_buf_alloc, conn.peer_fwd_cnt = buf_alloc, fwd_cnt
            if starved and conn.guest_credit() > 0:
                self._resume_host_reads(conn)  # every packet carries fresh credit
        if op == OP_REQUEST:
            self._guest_connect(dst_port, src_port, buf_alloc, fwd_cnt)
        elif conn is None:
            if op != OP_RST:
                self._send_rst(dst_port, src_port)
        elif op == OP_RESPONSE and not conn.established:
            conn.established = True
            try:
                conn.stream.confirm(conn.host_port)
            except OSError:
                self._close(conn, tell_guest=True)
                return
            if conn.early:
                self._forward_to_guest(conn, conn.early)
                conn.early = b""
            self.io.watch(conn.stream.fileno(), self._reader(conn), None)
        elif op == OP_RW and conn.established:
            if conn.rx_cnt + length - conn.fwd_cnt > BUF_ALLOC:
                self._bad("guest sent past its credit")
                self._close(conn, tell_guest=True)
                return
            conn.rx_cnt += length
            for view in buffer_views(self.mem, chain.readable, HEADER.size, length):
                conn.to_host += view
            self._to_flush[(conn.host_port, conn.guest_port)] = conn  # sent after the pass
        elif op == OP_CREDIT_UPDATE:
            self._resume_host_reads(conn)
        elif op == OP_CREDIT_REQUEST:
            self._send(conn, OP_CREDIT_UPDATE)
        elif op == OP_SHUTDOWN:
            self._drain_to_host(conn)  # what the guest sent before it shut down goes first
            if (conn.host_port, conn.guest_port) not in self.conns:
                return
            if flags & SHUTDOWN_SEND and flags & SHUTDOWN_RCV:
                self._close(conn, tell_guest=True)
            elif flags & SHUTDOWN_SEND:
                conn.stream.shutdown_write()
        elif op == OP_RST:
            self._close(conn, tell_guest=False)

    def _bad_rx_buffer(self, size: int) -> None:
        self._bad(f"receive buffer of {size} bytes cannot hold a packet header")

    def _bad(self, what: str) -> None:
        self.bad_packets += 1
        if self.bad_packets == 1:
            print(f"pyhv: {self.name}: malformed packet from the guest: {what}", file=sys.stderr)

    def _guest_connect(self, host_port: int, guest_port: int, buf_alloc: int, fwd_cnt: int) -> None:
        old = self.conns.get((host_port, guest_port))
        if old is not None:  # the guest reused a pair of ports: the old connection ends
            self._close(old, tell_guest=False)
        try:
            stream = self.host.connect(host_port)
        except OSError:
            self._send_rst(host_port, guest_port)
            return
        conn = Connection(stream, host_port, guest_port)
        conn.established = True
        conn.peer_buf_alloc, conn.peer_fwd_cnt = buf_alloc, fwd_cnt
        self.conns[(host_port, guest_port)] = conn
        self._send(conn, OP_RESPONSE)
        self.io.watch(stream.fileno(), self._reader(conn), None)

    # --- host stream <-> guest --------------------------------------------------------

    def _host_readable(self, conn: Connection) -> None:
        with self.lock:
            if (conn.host_port, conn.guest_port) not in self.conns:
                return
            credit = conn.guest_credit()
            if credit <= 0:
                # the guest's buffer is full: stop reading and ask it to say when it has room
                conn.stalled = True
                self.io.watch(conn.stream.fileno(), None, self._writer(conn) if conn.to_host else None)
                self._send(conn, OP_CREDIT_REQUEST)
                self._flush_rx()
                return
            if not self.pending and self._rx_ready():  # nothing queued before it: straight in
                self._read_into_guest(conn, credit)
                return
            try:
                data = conn.stream.recv(min(credit, MAX_PAYLOAD))
            except BlockingIOError:
                return
            if not data:
                self._send(conn, OP_SHUTDOWN, flags=SHUTDOWN_RCV | SHUTDOWN_SEND)
                self.io.watch(conn.stream.fileno(), None, None)
                conn.closing = True
            else:
                self._forward_to_guest(conn, data)
            self._flush_rx()

    def _rx_ready(self) -> bool:
        """Whether the guest has receive buffers posted (a ring violation fails the device)."""
        try:
            return self.queues[RX].has_available()
        except Exception as e:  # noqa: BLE001 - QueueError: the device needs a reset
            self.fail(f"receive queue: {e}")
            return False

    def _read_into_guest(self, conn: Connection, credit: int) -> None:
        """Read the host stream straight into receive chains, each packet's
        header written after its data.  The first read fills one chain; while
        reads fill every chain offered, the next offers twice as many (up to
        :data:`RX_BATCH`), so a short message costs one chain and one read and
        a bulk transfer few reads.  At most ``credit`` bytes in all."""

        def work(q: SplitQueue) -> bool:
            left, used, batch = credit, False, 1
            while left > 0:
                filled, got = self._read_batch(conn, q, batch, left)
                used = used or got > 0 or filled is None
                if not filled:
                    return used
                left -= got
                batch = min(2 * batch, RX_BATCH)
            return used

        self._on_rx(work)

    def _read_batch(self, conn: Connection, q: SplitQueue, batch: int, credit: int) -> tuple[bool | None, int]:
        """One read into up to ``batch`` chains.  Returns (whether every chain
        offered was filled, or None when a chain too small for a header was used
        empty instead; bytes read)."""
        chains: list[tuple[DescriptorChain, int]] = []
        views: list[memoryview] = []
        total = 0
        while total < credit and len(chains) < batch and (chain := self._rx_pop(q)) is not None:
            room = chain.writable_len() - HEADER.size
            if room <= 0:
                if chains:  # handled first next time: only the last chains popped can go back
                    q.unpop()
                    break
                self._bad_rx_buffer(chain.writable_len())
                q.push_used(chain, 0, publish=False)
                return None, 0
            take = min(room, credit - total, MAX_PAYLOAD)
            chains.append((chain, take))
            # bytes [HEADER.size, HEADER.size + take) of the chain's writable buffers,
            # which lie in guest RAM (checked at pop); each view comes from the bounds-checked mem.view
            views += buffer_views(self.mem, chain.writable, HEADER.size, take)
            total += take
        if not chains:
            return False, 0
        try:
            n = conn.stream.recv_into(views)
        except BlockingIOError:
            q.unpop(len(chains))
            return False, 0
        if n == 0:  # the host closed its end
            q.unpop(len(chains))
            self._send(conn, OP_SHUTDOWN, flags=SHUTDOWN_RCV | SHUTDOWN_SEND)
            self.io.watch(conn.stream.fileno(), None, None)
            conn.closing = True
            self._flush_rx()
            return False, 0
        left = n
        for i, (chain, take) in enumerate(chains):
            if not left:
                q.unpop(len(chains) - i)
                break
            part = min(take, left)
            left -= part
            conn.tx_cnt += part
            conn.last_credit_sent = conn.fwd_cnt
            header = HEADER.pack(
                HOST_CID, self.guest_cid, conn.host_port, conn.guest_port, part, TYPE_STREAM, OP_RW, 0,
                BUF_ALLOC, conn.fwd_cnt,
            )
            chain.write_at(self.mem, 0, header)
            q.push_used(chain, HEADER.size + part, publish=False)
        return n == total, n

    def _forward_to_guest(self, conn: Connection, data: bytes) -> None:
        conn.tx_cnt += len(data)
        self._send(conn, OP_RW, data)

    def _resume_host_reads(self, conn: Connection) -> None:
        if conn.established and not conn.closing and conn.guest_credit() > 0:
            conn.stalled = False
            self.io.watch(conn.stream.fileno(), self._reader(conn), self._writer(conn) if conn.to_host else None)

    def _drain_to_host(self, conn: Connection) -> None:
        while conn.to_host:
            try:
                n = conn.stream.send(conn.to_host)
            except BlockingIOError:
                reader = self._reader(conn) if not conn.closing else None
                self.io.watch(conn.stream.fileno(), reader, self._writer(conn))
                return
            except InterruptedError:
                continue
            except OSError:
                self._close(conn, tell_guest=True)
                return
            del conn.to_host[:n]
            conn.fwd_cnt += n
        if conn.fwd_cnt - conn.last_credit_sent >= BUF_ALLOC // 4:
            self._send(conn, OP_CREDIT_UPDATE)

    def _reader(self, conn: Connection) -> Callable[[], None]:
        return lambda: self._host_readable(conn)

    def _writer(self, conn: Connection) -> Callable[[], None]:
        def writable() -> None:
            with self.lock:
                self._drain_to_host(conn)
                if not conn.to_host and (conn.host_port, conn.guest_port) in self.conns:
                    reader = self._reader(conn) if not conn.closing else None
                    self.io.watch(conn.stream.fileno(), reader, None)
                self._flush_rx()

        return writable

    def _close(self, conn: Connection, tell_guest: bool) -> None:
        self.conns.pop((conn.host_port, conn.guest_port), None)
        self.io.watch(conn.stream.fileno(), None, None)
        conn.stream.close()
        if tell_guest:
            self._send_rst(conn.host_port, conn.guest_port)
