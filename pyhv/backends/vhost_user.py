"""vhost-user, front-end side: a device's data path in another process.

The back end (virtiofsd, qemu-storage-daemon, ...) serves the virtqueues
itself: pyhv hands it guest RAM (memfd regions, SCM_RIGHTS), each queue's
layout, the eventfd KVM signals on the guest's kick (``KICK``) and the eventfd
that KVM turns into the queue's MSI (``CALL``).  After that no request and no
completion passes through Python.  Protocol: QEMU's docs/interop/vhost-user.rst.

Framing: every message is a 12-byte header (request, flags, payload size,
all u32 little-endian) and a payload; flags hold the version (1) in bits 0-1,
REPLY (bit 2, set by the back end) and NEED_REPLY (bit 3, set by us when the
REPLY_ACK protocol feature is on, asking for a u64 status on a message that
has no reply of its own).

The back end is another program and its replies are untrusted input: every
reply's request code, flags and size are checked, descriptors it sends are
closed, and a reply that does not come within :data:`REPLY_TIMEOUT` seconds
counts as missing.  Any of these is a :class:`VhostUserError`, which fails the
device that uses the back end, never the VMM.
"""

from __future__ import annotations

import array
import os
import socket
import struct
import time
from collections.abc import Callable, Sequence
from typing import NamedTuple

from ..errors import PyhvError

# --- requests (front end -> back end) -------------------------------------------
GET_FEATURES = 1
SET_FEATURES = 2
SET_OWNER = 3
RESET_OWNER = 4
SET_MEM_TABLE = 5
SET_VRING_NUM = 8
SET_VRING_ADDR = 9
SET_VRING_BASE = 10
GET_VRING_BASE = 11
SET_VRING_KICK = 12
SET_VRING_CALL = 13
SET_VRING_ERR = 14
GET_PROTOCOL_FEATURES = 15
SET_PROTOCOL_FEATURES = 16
GET_QUEUE_NUM = 17
SET_VRING_ENABLE = 18
GET_CONFIG = 24

NAMES = {
    GET_FEATURES: "GET_FEATURES", SET_FEATURES: "SET_FEATURES", SET_OWNER: "SET_OWNER",
    RESET_OWNER: "RESET_OWNER", SET_MEM_TABLE: "SET_MEM_TABLE", SET_VRING_NUM: "SET_VRING_NUM",
    SET_VRING_ADDR: "SET_VRING_ADDR", SET_VRING_BASE: "SET_VRING_BASE", GET_VRING_BASE: "GET_VRING_BASE",
    SET_VRING_KICK: "SET_VRING_KICK", SET_VRING_CALL: "SET_VRING_CALL", SET_VRING_ERR: "SET_VRING_ERR",
    GET_PROTOCOL_FEATURES: "GET_PROTOCOL_FEATURES", SET_PROTOCOL_FEATURES: "SET_PROTOCOL_FEATURES",
    GET_QUEUE_NUM: "GET_QUEUE_NUM", SET_VRING_ENABLE: "SET_VRING_ENABLE", GET_CONFIG: "GET_CONFIG",
}

# --- header flags ----------------------------------------------------------------
VERSION = 0x1
VERSION_MASK = 0x3
FLAG_REPLY = 1 << 2
FLAG_NEED_REPLY = 1 << 3
HEADER = struct.Struct("<III")

# --- feature bits ------------------------------------------------------------------
#: virtio feature bit 30: the back end speaks the protocol-feature extension
F_PROTOCOL_FEATURES = 30
PROTOCOL_F_MQ = 0
PROTOCOL_F_REPLY_ACK = 3
PROTOCOL_F_CONFIG = 9
#: protocol features pyhv implements; the rest are never acknowledged
PROTOCOL_SUPPORTED = (1 << PROTOCOL_F_MQ) | (1 << PROTOCOL_F_REPLY_ACK) | (1 << PROTOCOL_F_CONFIG)

#: a vring fd message's index bits, and the bit saying no descriptor comes with it
VRING_IDX_MASK = 0xFF
VRING_NOFD = 1 << 8

MAX_MEM_REGIONS = 8  # VHOST_MEMORY_BASELINE_NREGIONS
MAX_CONFIG = 256  # VHOST_USER_MAX_CONFIG_SIZE
#: the largest reply payload pyhv takes: GET_CONFIG's header and space
MAX_REPLY = 12 + MAX_CONFIG
REPLY_TIMEOUT = 5.0


class VhostUserError(PyhvError):
    """The back end broke the protocol, went away, or refused a request: ``name: detail``."""

    def __init__(self, name: str, detail: str) -> None:
        super().__init__(f"{name}: {detail}")
        self.detail = detail


class MemRegion(NamedTuple):
    """One guest RAM range the back end maps: its guest-physical start, size,
    the front end's address for it (what ring addresses are given in), and
    the memfd holding it (mapped from ``mmap_offset``)."""

    gpa: int
    size: int
    user_addr: int
    fd: int
    mmap_offset: int = 0


class VhostUserClient:
    """The front end's end of one vhost-user socket: one request at a time.

    Methods raise :class:`VhostUserError` for anything the back end does wrong.
    Not thread-safe: its owner serialises calls (the device's lock)."""

    def __init__(self, sock: socket.socket, name: str = "vhost-user") -> None:
        self.sock = sock
        self.name = name
        self.sock.settimeout(REPLY_TIMEOUT)
        self.protocol_features = 0  # acknowledged (what SET_PROTOCOL_FEATURES said)
        self.broken: str | None = None

    @classmethod
    def connect(cls, path: str, name: str = "vhost-user", wait: float = 0.0) -> VhostUserClient:
        """Connect to the back end at ``path``; ``wait`` seconds more while it is
        not listening yet (a back end pyhv has just started)."""
        deadline = time.monotonic() + wait
        while True:
            sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM | socket.SOCK_CLOEXEC)
            try:
                sock.settimeout(REPLY_TIMEOUT)
                sock.connect(path)
                return cls(sock, name)
            except OSError as e:
                sock.close()
                retry = isinstance(e, (ConnectionRefusedError, FileNotFoundError)) and time.monotonic() < deadline
                if not retry:
                    raise VhostUserError(name, f"cannot connect to {path}: {e.strerror or e}") from None
            time.sleep(0.01)

    def fileno(self) -> int:
        return self.sock.fileno()

    def close(self) -> None:
        self.sock.close()

    # --- framing ----------------------------------------------------------------------

    def _fail(self, what: str) -> VhostUserError:
        self.broken = self.broken or what
        return VhostUserError(self.name, what)

    def _send(self, request: int, payload: bytes = b"", fds: Sequence[int] = (), need_reply: bool = False) -> None:
        if self.broken is not None:
            raise VhostUserError(self.name, self.broken)
        flags = VERSION | (FLAG_NEED_REPLY if need_reply else 0)
        message = HEADER.pack(request, flags, len(payload)) + payload
        ancillary = [(socket.SOL_SOCKET, socket.SCM_RIGHTS, array.array("i", fds).tobytes())] if fds else []
        try:
            sent = self.sock.sendmsg([message], ancillary)
        except OSError as e:
            raise self._fail(f"{NAMES.get(request, request)}: send failed: {e.strerror or e}") from None
        if sent != len(message):  # a unix stream socket takes a small message whole, or the peer is wedged
            raise self._fail(f"{NAMES.get(request, request)}: short send")

    def _recv_exact(self, size: int, what: str) -> bytes:
        """``size`` bytes; descriptors that come with them are closed (none is expected)."""
        data = b""
        while len(data) < size:
            try:
                chunk, ancdata, _flags, _addr = self.sock.recvmsg(size - len(data), socket.CMSG_SPACE(4 * 8))
            except TimeoutError:
                raise self._fail(f"{what}: no reply within {REPLY_TIMEOUT:g} s") from None
            except OSError as e:
                raise self._fail(f"{what}: receive failed: {e.strerror or e}") from None
            for level, kind, blob in ancdata:
                if level == socket.SOL_SOCKET and kind == socket.SCM_RIGHTS:
                    fds = array.array("i")
                    fds.frombytes(blob[: len(blob) - len(blob) % fds.itemsize])
                    for fd in fds:
                        os.close(fd)
            if not chunk:
                raise self._fail(f"{what}: the back end closed the connection")
            data += chunk
        return data

    def _reply(self, request: int, sizes: tuple[int, ...]) -> bytes:
        """The back end's reply to ``request``, whose payload is one of ``sizes`` bytes."""
        what = NAMES.get(request, str(request))
        code, flags, size = HEADER.unpack(self._recv_exact(HEADER.size, what))
        if code != request:
            raise self._fail(f"{what}: reply is for request {code}")
        if flags & VERSION_MASK != VERSION or not flags & FLAG_REPLY:
            raise self._fail(f"{what}: reply flags {flags:#x} (version 1 with REPLY expected)")
        if size not in sizes or size > MAX_REPLY:
            raise self._fail(f"{what}: reply of {size} bytes (expected {' or '.join(map(str, sizes))})")
        return self._recv_exact(size, what)

    def _u64_reply(self, request: int) -> int:
        value: int = struct.unpack("<Q", self._reply(request, (8,)))[0]
        return value

    def _command(self, request: int, payload: bytes = b"", fds: Sequence[int] = ()) -> None:
        """A request without a reply of its own: acknowledged when REPLY_ACK is on."""
        ack = bool(self.protocol_features >> PROTOCOL_F_REPLY_ACK & 1)
        self._send(request, payload, fds, need_reply=ack)
        if ack:
            status = self._u64_reply(request)
            if status != 0:
                raise VhostUserError(self.name, f"{NAMES.get(request, request)} refused (status {status})")

    # --- requests ----------------------------------------------------------------------

    def set_owner(self) -> None:
        self._command(SET_OWNER)

    def get_features(self) -> int:
        self._send(GET_FEATURES)
        return self._u64_reply(GET_FEATURES)

    def set_features(self, features: int) -> None:
        self._command(SET_FEATURES, struct.pack("<Q", features))

    def get_protocol_features(self) -> int:
        self._send(GET_PROTOCOL_FEATURES)
        return self._u64_reply(GET_PROTOCOL_FEATURES)

    def set_protocol_features(self, features: int) -> None:
        # REPLY_ACK applies from the next message on (the spec: this one is not acknowledged
        # unless it was already negotiated), so the ack bit is taken after sending.
        self._command(SET_PROTOCOL_FEATURES, struct.pack("<Q", features))
        self.protocol_features = features

    def get_queue_num(self) -> int:
        self._send(GET_QUEUE_NUM)
        return self._u64_reply(GET_QUEUE_NUM)

    def get_config(self, size: int) -> bytes:
        """The device's configuration space, ``size`` (at most 256) bytes from offset 0."""
        if not 0 < size <= MAX_CONFIG:
            raise ValueError(f"config size {size} out of 1..{MAX_CONFIG}")
        self._send(GET_CONFIG, struct.pack("<III", 0, size, 0) + bytes(size))
        reply = self._reply(GET_CONFIG, (12 + size,))
        offset, length, _flags = struct.unpack_from("<III", reply)
        if offset != 0 or length != size:
            raise self._fail(f"GET_CONFIG: reply for {length} bytes at {offset} (asked {size} at 0)")
        return reply[12:]

    def set_mem_table(self, regions: Sequence[MemRegion]) -> None:
        if not 0 < len(regions) <= MAX_MEM_REGIONS:
            raise ValueError(f"{len(regions)} memory regions: 1..{MAX_MEM_REGIONS} supported")
        payload = struct.pack("<II", len(regions), 0) + b"".join(
            struct.pack("<QQQQ", r.gpa, r.size, r.user_addr, r.mmap_offset) for r in regions
        )
        self._command(SET_MEM_TABLE, payload, [r.fd for r in regions])

    def set_vring_num(self, index: int, num: int) -> None:
        self._command(SET_VRING_NUM, struct.pack("<II", index, num))

    def set_vring_addr(self, index: int, desc: int, used: int, avail: int, flags: int = 0, log: int = 0) -> None:
        """Ring addresses in the front end's address space (``MemRegion.user_addr``)."""
        self._command(SET_VRING_ADDR, struct.pack("<IIQQQQ", index, flags, desc, used, avail, log))

    def set_vring_base(self, index: int, base: int) -> None:
        self._command(SET_VRING_BASE, struct.pack("<II", index, base))

    def get_vring_base(self, index: int) -> int:
        """Stops the ring; returns the next available index the back end would have read."""
        self._send(GET_VRING_BASE, struct.pack("<II", index, 0))
        got, base = struct.unpack("<II", self._reply(GET_VRING_BASE, (8,)))
        if got != index:
            raise self._fail(f"GET_VRING_BASE: reply for ring {got} (asked {index})")
        return int(base)

    def _vring_fd(self, request: int, index: int, fd: int | None) -> None:
        if not 0 <= index <= VRING_IDX_MASK:
            raise ValueError(f"ring index {index} out of range")
        value = index if fd is not None else index | VRING_NOFD
        self._command(request, struct.pack("<Q", value), [fd] if fd is not None else [])

    def set_vring_kick(self, index: int, fd: int | None) -> None:
        self._vring_fd(SET_VRING_KICK, index, fd)

    def set_vring_call(self, index: int, fd: int | None) -> None:
        self._vring_fd(SET_VRING_CALL, index, fd)

    def set_vring_err(self, index: int, fd: int | None) -> None:
        self._vring_fd(SET_VRING_ERR, index, fd)

    def set_vring_enable(self, index: int, enable: bool) -> None:
        self._command(SET_VRING_ENABLE, struct.pack("<II", index, int(enable)))


class QueueLayout(NamedTuple):
    """One ring the driver set up: guest-physical addresses, size, and the
    available index the back end starts reading at."""

    ring: int
    size: int
    desc: int
    avail: int
    used: int
    base: int = 0


class VhostUserBackend:
    """A vhost-user back end serving one virtio device's queues.

    Made by the builder (:meth:`open`): the handshake (SET_OWNER, features,
    protocol features, queue count) happens then, so a socket with nothing
    sensible behind it fails the build with one line.  The wiring then gives
    each queue its kick and call eventfds (:meth:`set_queue_fds`); the device
    calls :meth:`start` on DRIVER_OK and :meth:`stop` on reset.

    ``translate(gpa, size)`` turns a guest-physical range into the front end's
    address for it (what the memory table maps), checking it lies in RAM.
    """

    def __init__(
        self, client: VhostUserClient, regions: Sequence[MemRegion], num_queues: int,
        translate: Callable[[int, int], int],
    ) -> None:
        self.client = client
        self.name = client.name
        self._regions = list(regions)
        self._translate = translate
        self.num_queues = num_queues
        self.kick_fds: list[int | None] = [None] * num_queues
        self.call_fds: list[int | None] = [None] * num_queues
        self._started: list[int] = []
        self.features = client.get_features()
        self.protocol_features = 0
        if self.features >> F_PROTOCOL_FEATURES & 1:
            offered = client.get_protocol_features()
            self.protocol_features = offered & PROTOCOL_SUPPORTED
            client.set_protocol_features(self.protocol_features)
        client.set_owner()
        if self.protocol_features >> PROTOCOL_F_MQ & 1:
            queues = client.get_queue_num()
            if queues < num_queues:
                raise VhostUserError(self.name, f"the back end serves {queues} queues, the device needs {num_queues}")

    @classmethod
    def open(
        cls, path: str, name: str, regions: Sequence[MemRegion], num_queues: int, translate: Callable[[int, int], int],
        wait: float = 0.0,
    ) -> VhostUserBackend:
        client = VhostUserClient.connect(path, name, wait)
        try:
            return cls(client, regions, num_queues, translate)
        except BaseException:
            client.close()
            raise

    def fileno(self) -> int:
        return self.client.fileno()

    @property
    def has_config(self) -> bool:
        return bool(self.protocol_features >> PROTOCOL_F_CONFIG & 1)

    def get_config(self, size: int) -> bytes:
        return self.client.get_config(size)

    def set_queue_fds(self, index: int, kick: int | None, call: int | None) -> None:
        self.kick_fds[index], self.call_fds[index] = kick, call

    def kick(self, index: int) -> None:
        """Signal queue ``index``'s kick eventfd (a notification that reached pyhv itself)."""
        fd = self.kick_fds[index]
        if fd is not None:
            os.eventfd_write(fd, 1)

    def start(self, features: int, queues: Sequence[QueueLayout]) -> None:
        """Hand the negotiated features, guest RAM and each ready ring to the back end.
        Rings stay with it, kicks and completions going straight between it and KVM,
        until :meth:`stop`."""
        c = self.client
        if self.features >> F_PROTOCOL_FEATURES & 1:
            features |= 1 << F_PROTOCOL_FEATURES
        c.set_features(features)
        c.set_mem_table(self._regions)
        for q in queues:
            c.set_vring_num(q.ring, q.size)
            c.set_vring_base(q.ring, q.base)
            c.set_vring_addr(
                q.ring,
                desc=self._translate(q.desc, 16 * q.size),
                used=self._translate(q.used, 6 + 8 * q.size),
                avail=self._translate(q.avail, 6 + 2 * q.size),
            )
            c.set_vring_kick(q.ring, self.kick_fds[q.ring])
            c.set_vring_call(q.ring, self.call_fds[q.ring])
            self._started.append(q.ring)
            if self.features >> F_PROTOCOL_FEATURES & 1:
                # with protocol features negotiated rings start disabled (vhost-user.rst, "Ring states")
                c.set_vring_enable(q.ring, True)

    def stop(self) -> dict[int, int]:
        """Take the rings back: each started ring's next available index."""
        started, self._started = self._started, []
        bases = {}
        for index in started:
            bases[index] = self.client.get_vring_base(index)
        return bases

    def idle_check(self) -> str | None:
        """Called while the socket is readable and no request is under way: why the
        back end is gone (EOF, an error) or broke the protocol (it sent something
        unasked; pyhv offers no back-end-initiated channel), else None."""
        sock = self.client.sock
        sock.setblocking(False)  # a socket with a timeout would wait for data even with MSG_DONTWAIT
        try:
            data = sock.recv(1, socket.MSG_PEEK)
        except BlockingIOError:
            return None
        except OSError as e:
            return f"connection failed: {e.strerror or e}"
        finally:
            sock.settimeout(REPLY_TIMEOUT)
        reason = "the back end closed the connection" if not data else "the back end sent a message it was not asked for"
        self.client.broken = self.client.broken or reason
        return reason

    def close(self) -> None:
        self.client.close()
