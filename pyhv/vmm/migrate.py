"""Live migration of a machine to another pyhv over TCP.

The source keeps running while its memory is copied (pre-copy): a first pass
sends every page the guest has touched, then each round sends the pages
written since the round before, read from KVM's dirty log
(KVM_MEM_LOG_DIRTY_PAGES, KVM_GET_DIRTY_LOG), until what is left is small or
stops shrinking.  Then the source pauses (vCPUs and device work), sends the
last dirty pages -- the guest's, and those devices wrote, which KVM does not
log -- and the machine state (the same plain values a snapshot holds), and
the two sides hand the guest over (below).

Stream: after a handshake, frames of ``u8 type, u32 length, payload,
HMAC-SHA256`` over ``u64 sequence number, type, length, payload`` under a
session key derived from the shared key and a random nonce from each side.
A stranger without the key cannot start a migration into a destination or
inject, reorder or replay frames; the stream is not encrypted.  Everything
the destination receives is checked: page frames must lie in guest RAM, the
state goes through the same checks as a snapshot's.

The hand-over: at most one side ever runs the guest
----------------------------------------------------

Two machines running one guest (split brain) is the one outcome worse than
a failed migration: both write the same disks, both answer on the same
network address.  So the hand-over is a two-phase commit in which the source
decides and the destination only obeys::

    source (paused)                       destination
      DONE  ----------------------------->  builds the machine, keeps it paused
            <-----------------------------  BUILT    (prepared: "I can run it")
      GO    ----------------------------->  (the commit)  starts the guest
            <-----------------------------  RESUMED  (the acknowledgement)

The commit point is the source's GO: once every byte of that frame has been
handed to the kernel (``Channel.send`` returned), the source has stopped the
guest for good and never resumes it, whatever happens afterwards.  A send
that raised is not a commit: the destination can only act on a whole,
authenticated GO frame, and a frame whose bytes did not all leave cannot
become one.  The destination never runs the guest without holding GO.  Hence,
for each message lost (a one-way stall until a side's timeout) or the
connection dropping at each point:

====================================  ===================================  ====================================
what goes wrong                       source                               destination
====================================  ===================================  ====================================
anything before BUILT arrives         not committed: resumes, runs on      never started: discards its machine
  (a refusal, a failed build, BUILT   (MigrationError "runs on here")
  lost, the connection dropping)
the connection drops as GO is sent    the send raised, not committed:      no GO: discards its machine
  (the send fails)                    resumes, runs on
GO lost (sent, never arrives; or      committed: kept stopped, the         no GO before its timeout or the end
  lost with the connection)           domain ends "migration outcome       of the connection: discards its
                                      unknown" (HandoverUnknown)           machine, says it was not started
GO arrives, then the connection       committed: kept stopped, outcome     holds GO: runs the guest
  drops, or RESUMED is lost           unknown (it is in fact running)      (RESUMED is sent if it can be)
GO arrives, but starting fails        committed: kept stopped (FAIL says   sends FAIL, discards its machine
                                      why; the guest runs nowhere)
====================================  ===================================  ====================================

So "never both" holds in every row, at the price of the rows where neither
runs: a guest kept stopped on the source with a one-line reason, for the
operator who can see whether the destination runs it.  That price cannot be
avoided on one TCP connection: TCP already retransmits, so a frame is lost
only with the connection, and once the connection is gone the destination
cannot ask again and the source cannot tell "GO lost" from "RESUMED lost"
(the Two Generals' problem).  Asking again over a new connection, or
resuming the source when the destination answers an authenticated "never
started", is left for later; neither would change who may run when.

Tests reach every row through :class:`Fault`: a channel given faults drops
its own frames of one kind (and every later one: a stalled direction) or cuts
the connection before or after one, with no network tricks.
"""

from __future__ import annotations

import errno
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


class PeerFailed(MigrationError):
    """The other side sent FAIL: it gave up, and says why."""


class HandoverUnknown(PyhvError):
    """The source committed (sent GO) but did not hear the destination run the
    guest: the machine is stopped here for good and is not resumed."""


#: the one-line reason a committed source gives when it did not hear RESUMED
UNKNOWN = "migration outcome unknown: the destination may be running it; not resumed here"


class Fault(NamedTuple):
    """A test's fault on the frames a channel sends: the ``nth`` frame of type
    ``kind`` (1: the first) is

    - ``drop``: silently not sent, nor anything after it (a stalled
      direction: the peer hears nothing more until a timeout);
    - ``lose``: not sent, and the connection is cut (lost with it; the sender
      believes it went);
    - ``cut``: not sent: the connection is cut and the send fails;
    - ``after``: sent, then the connection is cut."""

    kind: int
    action: str
    nth: int = 1


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

    def __init__(self, sock: socket.socket, key: bytes, faults: tuple[Fault, ...] = ()) -> None:
        self.sock = sock
        self.key = key
        self.send_seq = 0
        self.recv_seq = 0
        self.sent = 0
        self.faults = faults
        self._counts: dict[int, int] = {}
        self._stalled = False

    def _mac(self, seq: int, head: bytes, *parts: bytes | memoryview) -> bytes:
        mac = hmac.new(self.key, SEQ.pack(seq) + head, hashlib.sha256)
        for part in parts:
            mac.update(part)
        return mac.digest()

    def send(self, kind: int, *parts: bytes | memoryview) -> None:
        length = sum(len(p) for p in parts)
        action = self._fault(kind) if self.faults else ""
        if action in ("drop", "lose") or self._stalled:
            self._stalled = action != "lose"
            if action == "lose":
                self._cut()
            return
        if action == "cut":
            self._cut()
            raise ConnectionResetError(errno.ECONNRESET, "connection cut (injected fault)")
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
        if action == "after":
            self._cut()

    def _fault(self, kind: int) -> str:
        n = self._counts[kind] = self._counts.get(kind, 0) + 1
        return next((f.action for f in self.faults if f.kind == kind and f.nth == n), "")

    def _cut(self) -> None:
        try:
            self.sock.shutdown(socket.SHUT_RDWR)
        except OSError:
            pass

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
            raise PeerFailed(f"the other side gave up: {text}")

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


def _handshake_source(sock: socket.socket, key: bytes, faults: tuple[Fault, ...] = ()) -> Channel:
    nonce = os.urandom(NONCE)
    sock.sendall(MAGIC + nonce)
    reply = recv_exact(sock, len(MAGIC) + NONCE)
    if reply[: len(MAGIC)] != MAGIC:
        raise MigrationError("the other side is not a pyhv migration receiver")
    return Channel(sock, derive_key(key, nonce, reply[len(MAGIC) :]), faults)


def _handshake_destination(sock: socket.socket, key: bytes, faults: tuple[Fault, ...] = ()) -> Channel:
    hello = recv_exact(sock, len(MAGIC) + NONCE)
    if hello[: len(MAGIC)] != MAGIC:
        raise MigrationError("the connection is not a pyhv migration stream")
    nonce = os.urandom(NONCE)
    sock.sendall(MAGIC + nonce)
    return Channel(sock, derive_key(key, hello[len(MAGIC) :], nonce), faults)


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
    faults: tuple[Fault, ...] = (),
    connection: socket.socket | None = None,
) -> MigrationStats:
    """Move the running ``machine`` to the receiver at ``address``; on success it is stopped here.
    ``connection``: already connected there (pyhvd connects for a confined
    domain, which has no network of its own).

    Pre-copy rounds go on until the memory still dirty could be sent in
    ``max_downtime`` seconds at the rate measured so far, for at most
    ``max_rounds`` rounds, and stop early when three rounds in a row did not
    shrink it (a guest dirtying memory faster than it can be sent).

    MigrationError: the migration did not happen and the machine runs on
    here.  HandoverUnknown: the source committed but did not hear that the
    destination runs the guest; the machine is stopped here (its stop says
    why) and is never resumed.  ``faults`` is for tests (:class:`Fault`)."""
    t0 = time.perf_counter()
    if len(key) < 16:
        raise MigrationError("the migration key must be at least 16 bytes")
    try:
        if connection is not None:
            sock = connection
            sock.settimeout(timeout)
        else:
            sock = socket.create_connection(address, timeout=timeout)
    except OSError as e:
        raise MigrationError(f"cannot connect to {address[0]}:{address[1]}: {e.strerror or e}") from None
    log = DirtyLog(machine)
    logging = False
    memory = machine.memory
    handed: list[Any] = []  # disks whose locks the destination may take
    ch: Channel | None = None
    try:
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 4 << 20)
        ch = _handshake_source(sock, key, faults)
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
            ch.expect(BUILT, 0)  # the destination is prepared; until GO has gone, we may still run on
            ch.send(GO)  # the commit: from here on the guest is never resumed here
            handed.clear()  # the destination's disks now
            machine.io.stop()  # no device work here either, ever again
            stop = Stop(StopKind.MIGRATED, 1, UNKNOWN)
            try:
                stop = _await_resumed(ch)
            finally:
                machine.request_stop(stop)  # the first stop wins: quiesced() does not resume
            resumed = time.perf_counter()
        machine.wait(10)  # returns with the vCPUs stopped here
        if stop.status:
            raise HandoverUnknown(stop.detail)
        return MigrationStats(resumed - t0, resumed - paused, rounds, ch.sent, final)
    except (OSError, MigrationError) as e:
        detail = e.strerror if isinstance(e, OSError) and e.strerror else str(e) or type(e).__name__
        if ch is not None:
            try:  # tell the destination not to wait for a GO that will not come
                ch.send(FAIL, detail.encode()[:500])
            except OSError:
                pass
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


def _await_resumed(ch: Channel) -> Stop:
    """After GO: how the machine stopped here ends, by what the destination says."""
    try:
        ch.expect(RESUMED, 0)
    except PeerFailed as e:  # it could not start it, or gave up waiting for GO
        return Stop(StopKind.MIGRATED, 1, f"migration failed after the commit ({e}); not resumed here")
    except MigrationError as e:
        return Stop(StopKind.MIGRATED, 1, f"{UNKNOWN} ({e})")
    except OSError as e:
        return Stop(StopKind.MIGRATED, 1, f"{UNKNOWN} ({e.strerror or e})")
    return Stop(StopKind.MIGRATED, 0, "migrated to another host")


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

    #: the same machine, moved: it keeps its VM generation ID
    new_generation = False

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


def _await_go(ch: Channel) -> None:
    """The source's commit, or MigrationError saying the machine was not started."""
    try:
        ch.expect(GO, 0)
    except PeerFailed as e:
        raise PeerFailed(f"the source gave up before its commit ({str(e).removeprefix('the other side gave up: ')}); "
                         "the machine was not started here") from None
    except (OSError, MigrationError) as e:
        detail = e.strerror if isinstance(e, OSError) and e.strerror else str(e) or type(e).__name__
        raise MigrationError(f"the source's commit (GO) did not arrive ({detail}); "
                             "the machine was not started here") from None


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
    timeout: float = 60.0, claim: Any = None, faults: tuple[Fault, ...] = (),
) -> Machine | None:
    """Run the destination side on one accepted connection; the machine, started.

    None if the peer failed the handshake (a stranger: nothing happened).
    ``claim(description)`` is called with the domain's description (checked)
    before anything is built; it returns the console to use and the
    description to build the machine from, or raises MigrationError to refuse
    the domain, and the source then runs on.  The machine is started only
    once the source's GO (its commit) is here; without it (lost, the
    connection gone, ``timeout`` seconds of silence) MigrationError says it
    was not started.  ``faults`` is for tests (:class:`Fault`)."""
    from .builder import build

    sock.settimeout(timeout)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4 << 20)
    try:
        ch = _handshake_destination(sock, key, faults)
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
            ch.send(BUILT)  # prepared: built, held paused until the source commits
            _await_go(ch)
            machine.start()
        except BaseException:
            machine.close()
            raise
        try:  # the guest runs here now, whether or not the source hears it
            ch.send(RESUMED)
        except OSError:
            pass
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
