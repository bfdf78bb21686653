"""The unix-socket vsock host (Firecracker's convention) with real sockets in a
temporary directory; the I/O thread is a fake that runs the watched callbacks
on demand and the device is a list of what it was handed."""

from __future__ import annotations

import os
import socket
from collections.abc import Iterator
from pathlib import Path

import pytest

from pyhv.backends.interfaces import HostStream
from pyhv.backends.vsock_uds import CONNECT_LINE_MAX, VsockUds, parse_connect

from .backend_fakes import FakeIo


class Host:
    def __init__(self, tmp_path: Path) -> None:
        self.uds = str(tmp_path / "v.sock")
        self.io = FakeIo()
        self.backend = VsockUds(self.uds, self.io)
        self.asked: list[tuple[HostStream, int, bytes]] = []
        self.backend.start_accepting(lambda stream, port, early: self.asked.append((stream, port, early)))
        self.clients: list[socket.socket] = []

    def client(self, *sends: bytes) -> socket.socket:
        """A host program connects and sends each of ``sends``, the I/O thread running after each."""
        s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        s.settimeout(2)
        s.connect(self.uds)
        self.clients.append(s)
        self.io.run()
        for data in sends:
            s.sendall(data)
            self.io.run()
        return s

    def close(self) -> None:
        self.backend.close()
        for s in self.clients:
            s.close()


@pytest.fixture
def host(tmp_path: Path) -> Iterator[Host]:
    h = Host(tmp_path)
    yield h
    h.close()


def test_connect_line_hands_the_stream_and_port_to_the_device(host: Host) -> None:
    host.client(b"CONNECT 1234\n")
    ((stream, port, early),) = host.asked
    assert (port, early) == (1234, b"") and stream.fileno() >= 0


def test_bytes_after_the_connect_line_are_handed_over_as_early(host: Host) -> None:
    host.client(b"CONNECT 1234\nhello")
    ((_, _, early),) = host.asked
    assert early == b"hello"


def test_connect_line_split_across_reads_is_put_together(host: Host) -> None:
    host.client(b"CONN", b"ECT 7", b"\n")
    assert [port for _, port, _ in host.asked] == [7]


def test_handed_over_stream_is_no_longer_watched_by_the_backend(host: Host) -> None:
    host.client(b"CONNECT 1234\n")
    ((stream, _, _),) = host.asked
    assert stream.fileno() not in host.io.readers


def test_confirm_answers_ok_with_the_host_port_and_the_stream_carries_bytes(host: Host) -> None:
    client = host.client(b"CONNECT 1234\n")
    ((stream, _, _),) = host.asked
    stream.confirm(1 << 30)
    stream.send(b"pong")
    client.sendall(b"ping")
    assert client.recv(64) == f"OK {1 << 30}\npong".encode() and stream.recv(64) == b"ping"


@pytest.mark.parametrize(
    "line", [b"HELLO\n", b"CONNECT\n", b"CONNECT x\n", b"CONNECT 1 2\n", b"CONNECT 4294967296\n", b"connect 1\n"]
)
def test_anything_but_a_connect_line_closes_the_host_socket(host: Host, line: bytes) -> None:
    client = host.client(line)
    assert client.recv(64) == b"" and host.asked == [] and len(host.io.readers) == 1  # the listener only


def test_connect_line_without_a_newline_in_its_bound_closes_the_host_socket(host: Host) -> None:
    client = host.client(b"CONNECT " + b"1" * (CONNECT_LINE_MAX - 8))
    assert client.recv(64) == b"" and host.asked == []


def test_host_hanging_up_during_the_handshake_is_forgotten(host: Host) -> None:
    client = host.client(b"CONNECT 12")
    client.close()
    host.io.run()
    assert host.asked == [] and len(host.io.readers) == 1


def test_guest_connect_reaches_the_socket_named_after_the_port(host: Host, tmp_path: Path) -> None:
    listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    listener.bind(str(tmp_path / "v.sock_5000"))
    listener.listen(1)
    stream = host.backend.connect(5000)
    peer, _ = listener.accept()
    stream.send(b"hello")
    peer.sendall(b"back")
    peer.settimeout(2)
    got = peer.recv(64)
    peer.close()
    listener.close()
    assert got == b"hello" and stream.recv(64) == b"back"


def test_guest_connect_to_a_port_nobody_listens_on_raises_os_error(host: Host) -> None:
    with pytest.raises(OSError):
        host.backend.connect(5001)


def test_stream_with_nothing_to_read_raises_blocking_io_error(host: Host) -> None:
    host.client(b"CONNECT 1\n")
    ((stream, _, _),) = host.asked
    with pytest.raises(BlockingIOError):
        stream.recv(64)


def test_stream_reads_end_of_stream_once_the_host_closes(host: Host) -> None:
    client = host.client(b"CONNECT 1\n")
    ((stream, _, _),) = host.asked
    client.close()
    assert stream.recv(64) == b""


def test_shutdown_write_lets_the_host_read_end_of_stream(host: Host) -> None:
    client = host.client(b"CONNECT 1\n")
    ((stream, _, _),) = host.asked
    stream.shutdown_write()
    stream.shutdown_write()  # again: errors are ignored
    assert client.recv(64) == b""


def test_close_closes_every_stream_and_removes_the_socket_file(host: Host) -> None:
    client = host.client(b"CONNECT 1\n")
    pending = host.client(b"CONN")
    host.backend.close()
    assert client.recv(64) == b"" and pending.recv(64) == b"" and not os.path.exists(host.uds)
    assert host.io.readers == {}


def test_a_stale_socket_file_is_replaced(tmp_path: Path) -> None:
    uds = tmp_path / "v.sock"
    stale = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    stale.bind(str(uds))
    stale.close()
    backend = VsockUds(str(uds), FakeIo())
    client = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    error = client.connect_ex(str(uds))
    client.close()
    backend.close()
    assert error == 0


def test_a_directory_that_does_not_exist_fails_with_os_error(tmp_path: Path) -> None:
    with pytest.raises(OSError):
        VsockUds(str(tmp_path / "missing" / "v.sock"), FakeIo())


@pytest.mark.parametrize(
    ("line", "port"), [(b"CONNECT 0\n", 0), (b"CONNECT 4294967295\nrest", 0xFFFF_FFFF), (b"CONNECT -1\n", None)]
)
def test_parse_connect_takes_only_a_port_in_range(line: bytes, port: int | None) -> None:
    assert parse_connect(line) == port
