"""Live migration of a machine to another pyhv over TCP.

The source keeps running while its memory is copied (pre-copy): a first pass
sends every page the guest has touched, then each round sends the pages
written since the round before, read from KVM's dirty log
(KVM_MEM_LOG_DIRTY_PAGES, KVM_GET_DIRTY_LOG), until what is left is small or
stops shrinking.  Then the source pauses (vCPUs and device work), sends the
last dirty pages -- the guest's, and those devices wrote, which KVM does not
log -- and the machine state (the same plain values a snapshot holds).  The
destination builds the machine, and on GO starts it and answers RESUMED;
only then does the source stop.  Any failure before RESUMED -- the
destination refusing, dying, a broken or timed-out connection -- resumes the
source where it was, with dirty logging off, and raises MigrationError.

Stream: after a handshake, frames of ``u8 type, u32 length, payload,
HMAC-SHA256`` over ``u64 sequence number, type, length, payload`` under a
session key derived from the shared key and a random nonce from each side.
A stranger without the key cannot start a migration into a destination or
inject, reorder or replay frames; the stream is not encrypted.  Everything
the destination receives is checked: page frames must lie in guest RAM, the
state goes through the same checks as a snapshot's.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import os
import re
import socket
import struct
import sys
import time
from typing import TYPE_CHECKING, Any, NamedTuple

from .._sys import kvm_h as h
from .._sys.libc import buffer_address
from ..errors import PyhvError
from ..memory import PAGE_SIZE, GuestMemory
from ..vcpu import Stop, StopKind
from ..model import Description, to_plain
from .snapshot import CHUNK, capture, check_state, description_from_state, touched_chunks

if TYPE_CHECKING:
    from .machine import Machine

MAGIC = b"PYHVMIG1"
NONCE = 32
TAG = 32
FRAME = struct.Struct("<BI")
SEQ = struct.Struct("<Q")
PAGES_HEAD = struct.Struct("<Q")

CONFIG, READY, PAGES, STATE, DONE, BUILT, GO, RESUMED, FAIL = range(1, 10)
NAMES = {CONFIG: "CONFIG", READY: "READY", PAGES: "PAGES", STATE: "STATE", DONE: "DONE", BUILT: "BUILT",
         GO: "GO", RESUMED: "RESUMED", FAIL: "FAIL"}
#: the largest frame either side accepts
MAX_FRAME = 64 << 20
#: bytes of pages in one PAGES frame, at most
PAGES_MAX = 1 << 20
#: the dirty log is read in granules of one bitmap byte: 8 pages
GRANULE = 8 * PAGE_SIZE


class MigrationError(PyhvError):
    """The migration did not happen; the source machine runs on."""


class MigrationStats(NamedTuple):
    total_seconds: float
    downtime_seconds: float  # source paused until the destination said RESUMED
    rounds: int  # pre-copy rounds after the first full pass
    bytes_sent: int
    final_bytes: int  # memory sent while paused


def derive_key(key: bytes, nonce_src: bytes, nonce_dst: bytes) -> bytes:
    return hmac.new(key, b"pyhv-migrate-v1" + nonce_src + nonce_dst, hashlib.sha256).digest()


class Channel:
    """An authenticated frame stream on a connected socket."""

    def __init__(self, sock: socket.socket, key: bytes) -> None:
        self.sock = sock
        self.key = key
        self.send_seq = 0
        self.recv_seq = 0
        self.sent = 0

    def _mac(self, seq: int, head: bytes, *parts: bytes | memoryview) -> bytes:
        mac = hmac.new(self.key, SEQ.pack(seq) + head, hashlib.sha256)
        for part in parts:
            mac.update(part)
        return mac.digest()

    def send(self, kind: int, *parts: bytes | memoryview) -> None:
        length = sum(len(p) for p in parts)
        head = FRAME.pack(kind, length)
        tag = self._mac(self.send_seq, head, *parts)
        self.send_seq += 1
        buffers = [memoryview(b).cast("B") for b in (head, *parts, tag)]
        while buffers:  # one sendmsg per frame, unless the socket takes less
            n = self.sock.sendmsg(buffers)
            while buffers and n >= len(buffers[0]):
                n -= len(buffers[0])
                buffers.pop(0)
            if buffers and n:
                buffers[0] = buffers[0][n:]
        self.sent += len(head) + length + TAG

    def recv_head(self, limit: int = MAX_FRAME) -> tuple[int, int, bytes]:
        head = recv_exact(self.sock, FRAME.size)
        kind, length = FRAME.unpack(head)
        if kind not in NAMES or length > (max(limit, 512) if kind == FAIL else limit):  # FAIL says why
            raise MigrationError(f"bad frame (type {kind}, {length} bytes)")
        return kind, length, head

    def check_tag(self, kind: int, head: bytes, *parts: bytes | memoryview) -> None:
        tag = recv_exact(self.sock, TAG)
        if not hmac.compare_digest(tag, self._mac(self.recv_seq, head, *parts)):
            raise MigrationError("a frame failed authentication (wrong key or tampered stream)")
        self.recv_seq += 1
        if kind == FAIL:
            text = b"".join(bytes(p) for p in parts).decode(errors="replace")[:200]
            raise MigrationError(f"the other side gave up: {text}")

    def recv(self, limit: int = MAX_FRAME) -> tuple[int, bytes]:
        kind, length, head = self.recv_head(limit)
        payload = recv_exact(self.sock, length)
        self.check_tag(kind, head, payload)
        return kind, payload

    def expect(self, kind: int, limit: int = MAX_FRAME) -> bytes:
        got, payload = self.recv(limit)
        if got != kind:
            raise MigrationError(f"expected {NAMES[kind]}, got {NAMES[got]}")
        return payload


def recv_exact(sock: socket.socket, n: int) -> bytes:
    buf = bytearray(n)
    recv_into(sock, memoryview(buf))
    return bytes(buf)


def recv_into(sock: socket.socket, view: memoryview) -> None:
    got, n = 0, len(view)
    while got < n:
        k = sock.recv_into(view[got:])
        if k == 0:
            raise MigrationError("connection closed by the other side")
        got += k


def _handshake_source(sock: socket.socket, key: bytes) -> Channel:
    nonce = os.urandom(NONCE)
    sock.sendall(MAGIC + nonce)
    reply = recv_exact(sock, len(MAGIC) + NONCE)
    if reply[: len(MAGIC)] != MAGIC:
        raise MigrationError("the other side is not a pyhv migration receiver")
    return Channel(sock, derive_key(key, nonce, reply[len(MAGIC) :]))


def _handshake_destination(sock: socket.socket, key: bytes) -> Channel:
    hello = recv_exact(sock, len(MAGIC) + NONCE)
    if hello[: len(MAGIC)] != MAGIC:
        raise MigrationError("the connection is not a pyhv migration stream")
    nonce = os.urandom(NONCE)
    sock.sendall(MAGIC + nonce)
    return Channel(sock, derive_key(key, hello[len(MAGIC) :], nonce))


# --- source -------------------------------------------------------------------------------


class DirtyLog:
    """KVM's dirty page log over every memory slot of a machine."""

    def __init__(self, machine: Machine) -> None:
        self.machine = machine
        self.bitmaps = [bytearray((r.size // PAGE_SIZE + 63) // 64 * 8) for r in machine.memory.regions]

    def start(self) -> None:
        self.machine.memory.register(self.machine.vm, flags=h.KVM_MEM_LOG_DIRTY_PAGES)
        self.collect()  # start from a clean log

    def stop(self) -> None:
        self.machine.memory.register(self.machine.vm, flags=0)

    def collect(self) -> list[tuple[int, int]]:
        """(gpa, length) runs of granules written since the last call."""
        runs: list[tuple[int, int]] = []
        for slot, (region, bitmap) in enumerate(zip(self.machine.memory.regions, self.bitmaps, strict=True)):
            self.machine.vm.get_dirty_log(slot, buffer_address(bitmap))
            for m in re.finditer(rb"[^\x00]+", bitmap):
                start = region.gpa + m.start() * GRANULE
                end = min(region.gpa + m.end() * GRANULE, region.end)
                runs.append((start, end - start))
        return runs


def _touched_runs(memory: GuestMemory) -> list[tuple[int, int]]:
    """(gpa, length) of every chunk the first pass sends: all of RAM but what was never touched."""
    runs: list[tuple[int, int]] = []
    for region in memory.regions:
        touched = touched_chunks(memory, region)
        for n, start in enumerate(range(0, region.size, CHUNK)):
            if touched is None or touched[n]:
                length = min(CHUNK, region.size - start)
                if runs and runs[-1][0] + runs[-1][1] == region.gpa + start:
                    runs[-1] = (runs[-1][0], runs[-1][1] + length)
                else:
                    runs.append((region.gpa + start, length))
    return runs


def _page_runs(pages: set[int]) -> list[tuple[int, int]]:
    runs: list[tuple[int, int]] = []
    for page in sorted(pages):
        gpa = page * PAGE_SIZE
        if runs and runs[-1][0] + runs[-1][1] == gpa:
            runs[-1] = (runs[-1][0], runs[-1][1] + PAGE_SIZE)
        else:
            runs.append((gpa, PAGE_SIZE))
    return runs


def _ring_pages(machine: Machine) -> set[int]:
    """Pages of every active used ring: devices write them through views taken at activation."""
    pages: set[int] = set()
    for _, device in machine.devices.virtio():
        for q in device.queues:
            if q.active:
                gpa, length = q.used_ring_span()
                pages.update(range(gpa >> 12, ((gpa + length - 1) >> 12) + 1))
    return pages


def _send_runs(ch: Channel, memory: GuestMemory, runs: list[tuple[int, int]]) -> int:
    sent = 0
    for gpa, length in runs:
        done = 0
        while done < length:
            n = min(PAGES_MAX, length - done)
            if not memory.contains(gpa + done, n):  # a run may only straddle regions in the log's rounding
                n = PAGE_SIZE
                if not memory.contains(gpa + done, n):
                    done += n
                    continue
            # a copy: the guest may be writing these pages while they go out,
            # and the tag must cover exactly what is sent
            data = bytes(memory.region_view(gpa + done, n))
            ch.send(PAGES, PAGES_HEAD.pack(gpa + done), data)
            done += n
            sent += n
    return sent


def migrate(
    machine: Machine,
    address: tuple[str, int],
    key: bytes,
    *,
    max_downtime: float = 0.3,
    max_rounds: int = 30,
    timeout: float = 60.0,
    description: Description | None = None,
) -> MigrationStats:
    """Move the running ``machine`` to the receiver at ``address``; on success it is stopped here.

    Pre-copy rounds go on until the memory still dirty could be sent in
    ``max_downtime`` seconds at the rate measured so far, for at most
    ``max_rounds`` rounds, and stop early when three rounds in a row did not
    shrink it (a guest dirtying memory faster than it can be sent)."""
    t0 = time.perf_counter()
    if len(key) < 16:
        raise MigrationError("the migration key must be at least 16 bytes")
    try:
        sock = socket.create_connection(address, timeout=timeout)
    except OSError as e:
        raise MigrationError(f"cannot connect to {address[0]}:{address[1]}: {e.strerror or e}") from None
    log = DirtyLog(machine)
    logging = False
    memory = machine.memory
    handed: list[Any] = []  # disks whose locks the destination may take
    try:
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 4 << 20)
        ch = _handshake_source(sock, key)
        # the domain's description, as it is now (``description``) or as it was built
        announced = to_plain(description or machine.description)
        ch.send(CONFIG, json.dumps(announced).encode())
        ch.expect(READY, 0)
        log.start()
        logging = True
        memory.track(True)
        started = time.perf_counter()
        sent = _send_runs(ch, memory, _touched_runs(memory))
        rate = sent / max(time.perf_counter() - started, 1e-6)  # bytes per second
        rounds, growing, last = 0, 0, None
        pending = log.collect()  # found dirty, not sent yet
        while rounds < max_rounds:
            dirty = sum(n for _, n in pending)
            growing = growing + 1 if last is not None and dirty >= last else 0
            if dirty / rate <= max_downtime or growing >= 3:
                break
            started = time.perf_counter()
            sent = _send_runs(ch, memory, pending)
            rate = sent / max(time.perf_counter() - started, 1e-6)
            last = dirty
            rounds += 1
            pending = log.collect()
        with machine.quiesced():
            paused = time.perf_counter()
            if machine.state == "stopped":
                raise MigrationError("the machine stopped while its memory was being copied")
            runs = pending + log.collect()
            device_pages = memory.track(False) | _ring_pages(machine)
            final = _send_runs(ch, memory, runs) + _send_runs(ch, memory, _page_runs(device_pages))
            ch.send(STATE, json.dumps(capture(machine), separators=(",", ":")).encode())
            _hand_over_disks(machine, handed)  # the destination locks them when it builds
            ch.send(DONE)
            ch.expect(BUILT, 0)
            ch.send(GO)
            ch.expect(RESUMED, 0)
            handed.clear()
            resumed = time.perf_counter()
            machine.request_stop(Stop(StopKind.MIGRATED, 0, "migrated to another host"))
            machine.wait(10)  # returns with the vCPUs stopped here
        return MigrationStats(resumed - t0, resumed - paused, rounds, ch.sent, final)
    except (OSError, MigrationError) as e:
        detail = e.strerror if isinstance(e, OSError) and e.strerror else str(e) or type(e).__name__
        raise MigrationError(f"migration to {address[0]}:{address[1]} failed, the machine runs on here: {detail}") from None
    finally:
        _take_back_disks(handed)
        memory.track(False)
        if logging and machine.state != "stopped":
            try:
                log.stop()
            except PyhvError:
                pass
        sock.close()


def _hand_over_disks(machine: Machine, handed: list[Any]) -> None:
    """Flush and unlock the machine's disk images (vCPUs and I/O are held), so
    that a destination on this host or on shared storage can lock them; each
    goes into ``handed`` first, to be taken back if the migration fails."""
    from ..backends.block import RawDisk

    for disk in [b for b in machine.backends if isinstance(b, RawDisk)]:
        disk.flush()
        handed.append(disk)
        disk.unlock()


def _take_back_disks(disks: list[Any]) -> None:
    """The migration failed after the hand-over: the machine runs on here, with its locks."""
    for disk in disks:
        try:
            disk.relock()
        except PyhvError as e:
            print(f"pyhv: after a failed migration: {e}", file=sys.stderr, flush=True)


# --- destination -------------------------------------------------------------------------


class Incoming:
    """What a migration stream brought: a RestoreSource for the builder."""

    def __init__(self, description: Description, memory: GuestMemory, state: dict[str, Any],
                 vcpu_states: list[Any]) -> None:
        self.description = description
        self._memory: GuestMemory | None = memory
        self.state = state
        self.vcpu_states = vcpu_states

    def take_memory(self) -> GuestMemory:
        memory, self._memory = self._memory, None
        assert memory is not None
        return memory

    def close(self) -> None:
        if self._memory is not None:
            self._memory.close()
            self._memory = None


def listen(host: str, port: int) -> socket.socket:
    try:
        server = socket.create_server((host, port), reuse_port=False)
    except OSError as e:
        raise MigrationError(f"cannot listen on {host}:{port}: {e.strerror or e}") from None
    return server


def receive(
    server: socket.socket, key: bytes, *, serial: str | None = None, console: Any = None,
    timeout: float = 60.0, should_stop: Any = None,
) -> Machine | None:
    """Accept one migration on ``server`` and return the machine, started.

    Connections that fail the handshake or authentication are dropped and the
    next one is awaited; once a source authenticated, any failure raises
    MigrationError and nothing of the machine is left.  ``console`` (kept by
    the caller) or ``serial`` says where the guest's COM1 goes.  None when
    ``should_stop()`` turned true while waiting for a source."""
    if len(key) < 16:
        raise MigrationError("the migration key must be at least 16 bytes")
    server.settimeout(0.25)
    while True:
        if should_stop is not None and should_stop():
            return None
        try:
            sock, _ = server.accept()
        except TimeoutError:
            continue
        machine = receive_connection(sock, key, serial=serial, console=console, timeout=timeout)
        if machine is not None:
            return machine


def receive_connection(
    sock: socket.socket, key: bytes, *, serial: str | None = None, console: Any = None,
    timeout: float = 60.0, claim: Any = None,
) -> Machine | None:
    """Run the destination side on one accepted connection; the machine, started.

    None if the peer failed the handshake (a stranger: nothing happened).
    ``claim(description)`` is called with the domain's description (checked)
    before anything is built; it returns the console to use and the
    description to build the machine from, or raises MigrationError to refuse
    the domain, and the source then runs on."""
    from .builder import build

    sock.settimeout(timeout)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4 << 20)
    try:
        ch = _handshake_destination(sock, key)
        raw = ch.expect(CONFIG, 1 << 20)
    except (OSError, MigrationError):
        sock.close()
        return None  # not our source
    incoming = None
    try:
        try:
            announced = json.loads(raw)
        except (ValueError, RecursionError):
            raise MigrationError("configuration is not JSON") from None
        try:
            config = description_from_state(announced, serial)
        except PyhvError as e:
            raise MigrationError(f"the domain's {e}") from None
        built = config
        if claim is not None:
            console, built = claim(config)
        memory = GuestMemory(config.memory)
        incoming = Incoming(config, memory, {}, [])
        ch.send(READY)
        while True:
            kind, length, head = ch.recv_head()
            if kind == PAGES:
                # Straight into guest memory, then the tag: a frame that fails
                # it ends the migration and this machine never runs.
                size = length - PAGES_HEAD.size
                if size < PAGE_SIZE or size % PAGE_SIZE or size > PAGES_MAX:
                    raise MigrationError("malformed page frame")
                where = recv_exact(sock, PAGES_HEAD.size)
                (gpa,) = PAGES_HEAD.unpack(where)
                if gpa % PAGE_SIZE or not memory.contains(gpa, size):
                    raise MigrationError(f"page frame at {gpa:#x} is outside guest RAM")
                view = memory.region_view(gpa, size)
                recv_into(sock, view)
                ch.check_tag(kind, head, where, view)
                continue
            payload = recv_exact(sock, length)
            ch.check_tag(kind, head, payload)
            if kind == STATE:
                try:
                    state = json.loads(payload)
                except (ValueError, RecursionError):
                    raise MigrationError("machine state is not JSON") from None
                _, vcpus = check_state(state)
                if state.get("description") != announced:
                    raise MigrationError("machine state does not match the announced configuration")
                incoming.state, incoming.vcpu_states = state, vcpus
            elif kind == DONE:
                if not incoming.state:
                    raise MigrationError("stream ended without the machine state")
                break
            else:
                raise MigrationError(f"unexpected {NAMES[kind]} frame")
        machine = build(built, console=console, restore=incoming)
        try:
            ch.send(BUILT)
            ch.expect(GO, 0)
            machine.start()
            ch.send(RESUMED)
        except BaseException:
            machine.close()
            raise
        return machine
    except (OSError, PyhvError) as e:
        try:
            ch.send(FAIL, str(e).encode()[:500])
        except OSError:
            pass
        if isinstance(e, MigrationError):
            raise
        detail = e.strerror if isinstance(e, OSError) and e.strerror else str(e)
        raise MigrationError(f"incoming migration failed: {detail}") from None
    finally:
        if incoming is not None:
            incoming.close()
        sock.close()
