"""The host end of virtio-vsock on unix sockets, in Firecracker's convention.

* A host program connects to the VM's socket ``uds`` and writes
  ``CONNECT <port>\\n``; the device asks the guest, and once the guest accepts,
  the program reads ``OK <host port>\\n`` and the socket carries the stream.
* A guest connecting to the host's port P reaches the unix socket
  ``<uds>_<P>``; if nothing listens there the connection fails.

:class:`VsockUds` owns the listening socket, the connections still in their
handshake and every stream it handed out, and closes them all with itself.
The CONNECT line is bounded (:data:`CONNECT_LINE_MAX` bytes, newline included);
anything else there closes the connection.  Bytes sent after the line, before
the guest accepted, are handed over as ``early``.
"""

from __future__ import annotations

import os
import socket
from collections.abc import Sequence

from .._sys.files import handed
from .interfaces import OnConnect, Readiness

CONNECT_LINE_MAX = 64
LISTEN_BACKLOG = 64


class UdsStream:
    """One connected unix socket (non-blocking), a :class:`~.interfaces.HostStream`."""

    def __init__(self, sock: socket.socket, owner: VsockUds) -> None:
        self.sock = sock
        self._owner = owner

    def fileno(self) -> int:
        return self.sock.fileno()

    def recv(self, size: int) -> bytes:
        try:
            return self.sock.recv(size)
        except BlockingIOError:
            raise
        except OSError:
            return b""  # a reset is an end of stream to the reader

    def recv_into(self, views: Sequence[memoryview]) -> int:
        try:
            return self.sock.recvmsg_into(views)[0]
        except BlockingIOError:
            raise
        except OSError:
            return 0  # a reset is an end of stream to the reader

    def send(self, data: bytes | bytearray | memoryview) -> int:
        return self.sock.send(data)

    def confirm(self, host_port: int) -> None:
        # the first bytes on a fresh socket: its send buffer has room for them
        self.sock.sendall(f"OK {host_port}\n".encode())

    def shutdown_write(self) -> None:
        try:
            self.sock.shutdown(socket.SHUT_WR)
        except OSError:
            pass

    def close(self) -> None:
        self._owner._streams.discard(self)
        self.sock.close()


class VsockUds:
    """Listens on ``uds`` (replacing a stale socket file there), a :class:`~.interfaces.VsockHost`.

    Raises OSError when it cannot listen.  Readiness of the listening socket
    and of connections in their handshake goes through ``io``.
    """

    def __init__(self, uds: str, io: Readiness) -> None:
        self.uds = uds
        self._io = io
        self._on_connect: OnConnect | None = None
        self._handshakes: dict[int, tuple[socket.socket, bytearray]] = {}  # fd -> socket, line so far
        self._streams: set[UdsStream] = set()
        fd = handed(uds)  # a confined process gets the socket bound before (pyhv/jail/)
        if fd is not None:
            listener = socket.socket(fileno=fd)
        else:
            listener = bind_listener(uds)
        listener.setblocking(False)
        self._listener: socket.socket | None = listener

    # --- connections from host programs ----------------------------------------------

    def start_accepting(self, on_connect: OnConnect) -> None:
        self._on_connect = on_connect
        if self._listener is not None:
            self._io.watch(self._listener.fileno(), self._accept, None)

    def _accept(self) -> None:
        if self._listener is None:
            return
        try:
            sock, _ = self._listener.accept()
        except (BlockingIOError, InterruptedError):
            return
        sock.setblocking(False)
        fd = sock.fileno()
        self._handshakes[fd] = (sock, bytearray())
        self._io.watch(fd, lambda: self._read_connect(fd), None)

    def _read_connect(self, fd: int) -> None:
        if fd not in self._handshakes:
            return
        sock, line = self._handshakes[fd]
        try:
            data = sock.recv(CONNECT_LINE_MAX - len(line))
        except BlockingIOError:
            return
        except OSError:
            data = b""
        line += data
        if not data or (b"\n" not in line and len(line) >= CONNECT_LINE_MAX):
            self._drop_handshake(fd)
            return
        if b"\n" not in line:
            return
        port = parse_connect(bytes(line))
        if port is None:
            self._drop_handshake(fd)
            return
        early = bytes(line).partition(b"\n")[2]
        del self._handshakes[fd]
        self._io.watch(fd, None, None)  # the device watches the stream from now on
        stream = UdsStream(sock, self)
        self._streams.add(stream)
        assert self._on_connect is not None  # set before the listener was watched
        self._on_connect(stream, port, early)

    def _drop_handshake(self, fd: int) -> None:
        sock, _ = self._handshakes.pop(fd)
        self._io.watch(fd, None, None)
        sock.close()

    # --- connections from the guest ---------------------------------------------------

    def connect(self, host_port: int) -> UdsStream:
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        try:
            sock.connect(f"{self.uds}_{host_port}")
        except BaseException:
            sock.close()
            raise
        sock.setblocking(False)
        stream = UdsStream(sock, self)
        self._streams.add(stream)
        return stream

    # --- end ----------------------------------------------------------------------------

    def close(self) -> None:
        """Close every socket it made (the machine closes it after the I/O thread)."""
        for stream in list(self._streams):
            stream.close()
        for fd in list(self._handshakes):
            self._drop_handshake(fd)
        if self._listener is not None:
            self._io.watch(self._listener.fileno(), None, None)
            self._listener.close()
            self._listener = None
            try:
                os.unlink(self.uds)
            except OSError:
                pass


def bind_listener(uds: str) -> socket.socket:
    """A socket listening on ``uds`` (a stale file there replaced).  Raises OSError."""
    try:
        os.unlink(uds)
    except FileNotFoundError:
        pass
    listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        listener.bind(uds)
        listener.listen(LISTEN_BACKLOG)
    except BaseException:
        listener.close()
        raise
    return listener


def parse_connect(line: bytes) -> int | None:
    """The port of a ``CONNECT <port>\\n`` line (what follows the newline is not
    looked at), or None if it is anything else."""
    head = line.partition(b"\n")[0]
    words = head.split()
    if len(words) != 2 or words[0] != b"CONNECT" or not words[1].isdigit() or int(words[1]) > 0xFFFF_FFFF:
        return None
    return int(words[1])
