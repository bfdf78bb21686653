"""The vhost-user front end against a scripted back end over a real socketpair."""

from __future__ import annotations

import array
import os
import socket
import struct
import threading
from collections.abc import Callable, Iterator

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from pyhv.backends import vhost_user as vu
from pyhv.backends.vhost_user import MemRegion, QueueLayout, VhostUserBackend, VhostUserClient, VhostUserError


class Message:
    def __init__(self, request: int, flags: int, payload: bytes, fds: list[int]) -> None:
        self.request, self.flags, self.payload, self.fds = request, flags, payload, fds


class FakeBackend:
    """The back end's end of the socket: reads each message (with its descriptors)
    and answers with what ``respond`` returns (raw bytes, or None for no reply)."""

    def __init__(self, sock: socket.socket, respond: Callable[[Message], bytes | None]) -> None:
        self.sock = sock
        self.respond = respond
        self.seen: list[Message] = []
        self.thread = threading.Thread(target=self._run, daemon=True)
        self.thread.start()

    def _recv(self, n: int) -> tuple[bytes, list[int]]:
        data, fds = b"", []
        while len(data) < n:
            chunk, anc, _, _ = self.sock.recvmsg(n - len(data), socket.CMSG_SPACE(4 * 8))
            if not chunk:
                raise EOFError
            for _level, _kind, blob in anc:
                a = array.array("i")
                a.frombytes(blob[: len(blob) - len(blob) % 4])
                fds += list(a)
            data += chunk
        return data, fds

    def _run(self) -> None:
        try:
            while True:
                head, fds = self._recv(12)
                request, flags, size = struct.unpack("<III", head)
                payload, more = self._recv(size) if size else (b"", [])
                message = Message(request, flags, payload, fds + more)
                self.seen.append(message)
                reply = self.respond(message)
                if reply is not None:
                    self.sock.sendall(reply)
        except (EOFError, OSError):
            pass


def reply(request: int, payload: bytes, flags: int = vu.VERSION | vu.FLAG_REPLY) -> bytes:
    return struct.pack("<III", request, flags, len(payload)) + payload


def u64(request: int, value: int) -> bytes:
    return reply(request, struct.pack("<Q", value))


VIRTIO_F_VERSION_1 = 1 << 32
FEATURES = VIRTIO_F_VERSION_1 | (1 << vu.F_PROTOCOL_FEATURES) | (1 << 29)


def well_behaved(protocol: int = 1 << vu.PROTOCOL_F_REPLY_ACK) -> Callable[[Message], bytes | None]:
    """A back end like virtiofsd: answers what has a reply, acks NEED_REPLY with 0."""

    def respond(m: Message) -> bytes | None:
        if m.request == vu.GET_FEATURES:
            return u64(m.request, FEATURES)
        if m.request == vu.GET_PROTOCOL_FEATURES:
            return u64(m.request, protocol)
        if m.request == vu.GET_QUEUE_NUM:
            return u64(m.request, 2)
        if m.request == vu.GET_VRING_BASE:
            index, _ = struct.unpack("<II", m.payload)
            return reply(m.request, struct.pack("<II", index, 7))
        if m.request == vu.GET_CONFIG:
            offset, size, flags = struct.unpack_from("<III", m.payload)
            return reply(m.request, struct.pack("<III", offset, size, flags) + bytes(range(size)))
        if m.flags & vu.FLAG_NEED_REPLY:
            return u64(m.request, 0)
        return None

    return respond


@pytest.fixture
def pair() -> Iterator[tuple[socket.socket, socket.socket]]:
    a, b = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
    yield a, b
    a.close()
    b.close()


def client_with(pair: tuple[socket.socket, socket.socket], respond: Callable[[Message], bytes | None]) -> tuple[VhostUserClient, FakeBackend]:
    ours, theirs = pair
    return VhostUserClient(ours, "test"), FakeBackend(theirs, respond)


def test_get_features_returns_the_back_ends_word(pair: tuple[socket.socket, socket.socket]) -> None:
    client, fake = client_with(pair, well_behaved())

    assert client.get_features() == FEATURES
    assert (fake.seen[0].request, fake.seen[0].flags) == (vu.GET_FEATURES, vu.VERSION)


def test_reply_ack_sets_need_reply_once_negotiated(pair: tuple[socket.socket, socket.socket]) -> None:
    client, fake = client_with(pair, well_behaved())

    client.set_protocol_features(1 << vu.PROTOCOL_F_REPLY_ACK)
    client.set_owner()

    assert fake.seen[0].flags & vu.FLAG_NEED_REPLY == 0
    assert fake.seen[1].request == vu.SET_OWNER and fake.seen[1].flags & vu.FLAG_NEED_REPLY


def test_nonzero_ack_is_a_refusal(pair: tuple[socket.socket, socket.socket]) -> None:
    client, _ = client_with(pair, lambda m: u64(m.request, 1) if m.flags & vu.FLAG_NEED_REPLY else None)
    client.protocol_features = 1 << vu.PROTOCOL_F_REPLY_ACK

    with pytest.raises(VhostUserError, match="SET_OWNER refused"):
        client.set_owner()


def test_set_mem_table_passes_each_regions_descriptor(pair: tuple[socket.socket, socket.socket]) -> None:
    client, fake = client_with(pair, well_behaved())
    fds = [os.memfd_create("a"), os.memfd_create("b")]
    regions = [MemRegion(0, 0x1000, 0x7000_0000, fds[0]), MemRegion(1 << 32, 0x2000, 0x7100_0000, fds[1])]

    client.set_mem_table(regions)
    client.get_features()  # the table has no reply: wait for something that has one

    m = fake.seen[0]
    assert m.request == vu.SET_MEM_TABLE and len(m.fds) == 2
    assert struct.unpack_from("<II", m.payload) == (2, 0)
    assert struct.unpack_from("<QQQQ", m.payload, 8 + 32) == (1 << 32, 0x2000, 0x7100_0000, 0)
    assert all(os.fstat(ours).st_ino == os.fstat(theirs).st_ino for ours, theirs in zip(fds, m.fds, strict=True))
    for fd in fds + m.fds:
        os.close(fd)


def test_vring_fd_without_descriptor_sets_the_nofd_bit(pair: tuple[socket.socket, socket.socket]) -> None:
    client, fake = client_with(pair, well_behaved())

    client.set_vring_err(1, None)
    client.get_features()

    assert struct.unpack("<Q", fake.seen[0].payload)[0] == 1 | vu.VRING_NOFD and fake.seen[0].fds == []


@pytest.mark.parametrize(
    "bad, problem",
    [
        (u64(vu.SET_FEATURES, FEATURES), "reply is for request 2"),
        (u64(vu.GET_FEATURES, FEATURES)[:4] + struct.pack("<I", vu.VERSION) + u64(vu.GET_FEATURES, 0)[8:], "flags"),
        (u64(vu.GET_FEATURES, FEATURES)[:4] + struct.pack("<I", 2 | vu.FLAG_REPLY) + u64(vu.GET_FEATURES, 0)[8:],
         "flags"),
        (reply(vu.GET_FEATURES, b"\0" * 4), "reply of 4 bytes"),
        (reply(vu.GET_FEATURES, b"\0" * 0x10000), "reply of 65536 bytes"),
        (b"\1\0\0", "closed the connection"),
    ],
    ids=["wrong-request", "no-reply-flag", "bad-version", "short", "huge", "truncated"],
)
def test_malformed_reply_fails_with_one_error(
    pair: tuple[socket.socket, socket.socket], bad: bytes, problem: str
) -> None:
    ours, theirs = pair
    client = VhostUserClient(ours, "test")
    theirs.sendall(bad)
    if problem == "closed the connection":
        theirs.shutdown(socket.SHUT_WR)

    with pytest.raises(VhostUserError, match=problem):
        client.get_features()
    with pytest.raises(VhostUserError):  # and the client stays broken: nothing more is sent
        client.get_features()


def test_missing_reply_times_out(pair: tuple[socket.socket, socket.socket], monkeypatch: pytest.MonkeyPatch) -> None:
    ours, _ = pair
    client = VhostUserClient(ours, "test")
    ours.settimeout(0.05)

    with pytest.raises(VhostUserError, match="no reply"):
        client.get_features()


def test_descriptors_in_a_reply_are_closed(pair: tuple[socket.socket, socket.socket]) -> None:
    ours, theirs = pair
    client = VhostUserClient(ours, "test")
    planted = os.memfd_create("planted")
    theirs.sendmsg([u64(vu.GET_FEATURES, FEATURES)], [(socket.SOL_SOCKET, socket.SCM_RIGHTS, array.array("i", [planted]).tobytes())])
    before = set(os.listdir("/proc/self/fd"))

    assert client.get_features() == FEATURES
    assert set(os.listdir("/proc/self/fd")) <= before
    os.close(planted)


def test_get_vring_base_for_another_ring_is_refused(pair: tuple[socket.socket, socket.socket]) -> None:
    client, _ = client_with(pair, lambda m: reply(m.request, struct.pack("<II", 5, 0)))

    with pytest.raises(VhostUserError, match="ring 5"):
        client.get_vring_base(0)


def test_get_config_returns_the_space(pair: tuple[socket.socket, socket.socket]) -> None:
    client, _ = client_with(pair, well_behaved())

    assert client.get_config(40) == bytes(range(40))


def test_backend_start_sends_rings_in_the_front_ends_addresses(pair: tuple[socket.socket, socket.socket]) -> None:
    ours, theirs = pair
    fake = FakeBackend(theirs, well_behaved(1 << vu.PROTOCOL_F_REPLY_ACK | 1 << vu.PROTOCOL_F_MQ))
    memfd = os.memfd_create("ram")
    backend = VhostUserBackend(VhostUserClient(ours, "test"), [MemRegion(0, 1 << 20, 0x7F00_0000_0000, memfd)], 2,
                               lambda gpa, size: 0x7F00_0000_0000 + gpa)
    kick, call = os.eventfd(0), os.eventfd(0)
    backend.set_queue_fds(1, kick, call)

    backend.start(VIRTIO_F_VERSION_1, [QueueLayout(ring=1, size=64, desc=0x1000, avail=0x2000, used=0x3000)])
    bases = backend.stop()

    requests = [m.request for m in fake.seen]
    assert requests[:5] == [vu.GET_FEATURES, vu.GET_PROTOCOL_FEATURES, vu.SET_PROTOCOL_FEATURES, vu.SET_OWNER,
                            vu.GET_QUEUE_NUM]
    features = next(m for m in fake.seen if m.request == vu.SET_FEATURES)
    assert struct.unpack("<Q", features.payload)[0] == VIRTIO_F_VERSION_1 | 1 << vu.F_PROTOCOL_FEATURES
    addr = next(m for m in fake.seen if m.request == vu.SET_VRING_ADDR)
    assert struct.unpack("<IIQQQQ", addr.payload) == (1, 0, 0x7F00_0000_1000, 0x7F00_0000_3000, 0x7F00_0000_2000, 0)
    assert [m.request for m in fake.seen if m.request in (vu.SET_VRING_KICK, vu.SET_VRING_CALL)] == [
        vu.SET_VRING_KICK, vu.SET_VRING_CALL]
    assert next(m for m in fake.seen if m.request == vu.SET_VRING_ENABLE).payload == struct.pack("<II", 1, 1)
    assert bases == {1: 7}
    for fd in (memfd, kick, call, *[fd for m in fake.seen for fd in m.fds]):
        os.close(fd)


def test_backend_with_too_few_queues_is_refused(pair: tuple[socket.socket, socket.socket]) -> None:
    ours, theirs = pair
    FakeBackend(theirs, well_behaved(1 << vu.PROTOCOL_F_MQ))

    with pytest.raises(VhostUserError, match="serves 2 queues, the device needs 3"):
        VhostUserBackend(VhostUserClient(ours, "test"), [], 3, lambda gpa, size: gpa)


def test_idle_check_reports_a_closed_back_end(pair: tuple[socket.socket, socket.socket]) -> None:
    ours, theirs = pair
    FakeBackend(theirs, well_behaved(0))
    backend = VhostUserBackend(VhostUserClient(ours, "test"), [], 2, lambda gpa, size: gpa)
    assert backend.idle_check() is None

    theirs.shutdown(socket.SHUT_RDWR)

    assert backend.idle_check() == "the back end closed the connection"


def test_connect_to_nothing_is_one_error(tmp_path: os.PathLike[str]) -> None:
    with pytest.raises(VhostUserError, match="cannot connect"):
        VhostUserClient.connect(os.path.join(tmp_path, "none.sock"), "test")

REQUESTS = [(vu.GET_FEATURES, lambda c: c.get_features()), (vu.GET_VRING_BASE, lambda c: c.get_vring_base(1)),
            (vu.GET_CONFIG, lambda c: c.get_config(8)), (vu.SET_OWNER, lambda c: c.set_owner())]


@settings(max_examples=300, deadline=None)
@given(which=st.integers(0, len(REQUESTS) - 1), head=st.tuples(st.integers(0, 40), st.integers(0, 0xFFFF_FFFF),
                                                               st.integers(0, 0x2_0000)),
       body=st.binary(max_size=300), well_formed_head=st.booleans())
def test_any_reply_is_a_result_or_one_vhost_user_error(which: int, head: tuple[int, int, int], body: bytes,
                                                        well_formed_head: bool) -> None:
    request, call = REQUESTS[which]
    code, flags, size = head
    if well_formed_head:  # right request and flags, so the size and payload checks are reached
        code, flags, size = request, vu.VERSION | vu.FLAG_REPLY, len(body)
    ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        client = VhostUserClient(ours, "fuzz")
        client.protocol_features = 1 << vu.PROTOCOL_F_REPLY_ACK
        ours.settimeout(0.05)
        theirs.sendall(struct.pack("<III", code, flags, size) + body)
        theirs.shutdown(socket.SHUT_WR)
        try:
            call(client)
        except VhostUserError as e:
            assert str(e).startswith("fuzz: ") and "\n" not in str(e)
    finally:
        ours.close()
        theirs.close()
