"""A GDB remote stub: ``pyhv run --gdb unix:PATH`` or ``--gdb tcp:HOST:PORT`` (``,wait``
to hold the guest before its first instruction until GDB attaches).

One GDB at a time.  Threads: ``gdb-accept`` accepts connections; each
connection is served on its own ``gdb`` thread, the only one that drives the
:class:`~pyhv.debug.target.DebugTarget`.  Every vCPU is a GDB thread (id =
index + 1), all-stop: when one stops all are paused.  ``vCont`` with a step
action steps that vCPU alone.  Memory addresses are guest-virtual, translated
through the page tables of the thread chosen with ``Hg``.  Whatever GDB (or
anything on the socket) sends, a bad packet gets a NAK or an ``E`` reply; the
VMM carries on.  Closing the connection detaches, as ``D`` does: breakpoints
are removed and the guest runs on.
"""

from __future__ import annotations

import select
import socket
import sys
import threading
import time
from collections.abc import Callable
from typing import Any

from ..backends.unixsock import close_listener, listen_unix
from ..errors import MemoryAccessError, PyhvError, UsageError
from . import rsp, x86
from .target import SIGTRAP, DebugTarget, StopEvent

#: Z/z types
_HW_KINDS = {1: "exec", 2: "write", 3: "read", 4: "access"}


def parse_address(spec: str) -> tuple[str, Any, bool]:
    """``unix:PATH`` or ``tcp:HOST:PORT``, optionally ``,wait``: (family, address, wait)."""
    text, _, flag = spec.partition(",")
    if flag not in ("", "wait"):
        raise UsageError(f"--gdb {spec}: unknown flag {flag!r} (only ,wait)")
    kind, _, rest = text.partition(":")
    if kind == "unix" and rest:
        return "unix", rest, bool(flag)
    if kind == "tcp":
        host, _, port = rest.rpartition(":")
        if host and port.isdigit() and 0 < int(port) < 65536:
            return "tcp", (host, int(port)), bool(flag)
    raise UsageError(f"--gdb {spec}: expected unix:PATH or tcp:HOST:PORT")


def _say(text: str) -> None:
    print(f"pyhv: gdb: {text}", file=sys.stderr, flush=True)


def listen(spec: str) -> socket.socket:
    """A socket listening on ``spec``: ``unix:PATH`` (a stale socket there is replaced,
    never another file) or ``tcp:HOST:PORT``.  Raises OSError (UsageError for a bad spec)."""
    family, address, _ = parse_address(spec)
    if family == "unix":
        return listen_unix(address, 1)
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM | socket.SOCK_CLOEXEC)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind(address)
        sock.listen(1)
    except OSError:
        sock.close()
        raise
    return sock


class Server:
    """Listens on ``spec``; serves GDB against the machine ``get_machine()`` returns."""

    def __init__(
        self, spec: str, get_machine: Callable[[], Any], kill: Callable[[], None],
        listener: socket.socket | None = None,
    ) -> None:
        """``listener``: a socket already listening on ``spec``'s address, made by whoever
        may (pyhvd for a confined domain, which can neither bind on the host's file
        system nor reach its network); it stays the maker's to unlink."""
        family, address, self.wait = parse_address(spec)
        self.get_machine = get_machine
        self.kill = kill
        self._path = address if family == "unix" and listener is None else None
        self.address: Any = address
        try:
            if listener is not None:
                self.sock = listener
                self.address = address if family == "unix" else listener.getsockname()
            else:
                self.sock = listen(spec)
                if family == "tcp":
                    self.address = self.sock.getsockname()
        except OSError as e:
            raise UsageError(f"--gdb {spec}: cannot listen: {e.strerror or e}") from None
        self._closed = False
        self._busy = threading.Lock()
        self._thread = threading.Thread(target=self._accept, name="gdb-accept", daemon=True)
        self._thread.start()

    def _accept(self) -> None:
        while not self._closed:
            try:
                conn, _ = self.sock.accept()
            except OSError:
                return
            if not self._busy.acquire(blocking=False):
                conn.close()  # one debugger at a time
                continue
            threading.Thread(target=self._serve, args=(conn,), name="gdb", daemon=True).start()

    def _serve(self, conn: socket.socket) -> None:
        try:
            machine = None
            deadline = time.monotonic() + 30
            while machine is None and time.monotonic() < deadline and not self._closed:
                machine = self.get_machine()
                if machine is None or not machine.vcpus:
                    machine = None
                    time.sleep(0.02)
            if machine is None:
                return
            Session(conn, DebugTarget(machine), self.kill).run()
        except Exception as e:  # noqa: BLE001 - a stub bug ends the session, never the VMM
            _say(f"session ended: {e!r}")
        finally:
            conn.close()
            self._busy.release()

    @property
    def remote(self) -> str:
        """What GDB's ``target remote`` takes: the socket's path, or HOST:PORT."""
        return self.address if isinstance(self.address, str) else "%s:%d" % tuple(self.address[:2])

    def close(self) -> None:
        self._closed = True
        close_listener(self.sock, self._path)


class Session:
    def __init__(self, conn: socket.socket, target: DebugTarget, kill: Callable[[], None]) -> None:
        self.conn = conn
        self.target = target
        self.kill = kill
        self.reader = rsp.Reader()
        self.ack = True
        self.g_thread = 0  # vCPU index for registers and memory
        self.c_thread = -1  # for s/c: -1 all
        self.last_stop = StopEvent(0, SIGTRAP, "")
        self.last_sent = b""
        self.swbreak = self.hwbreak = False
        self.done = False

    # --- I/O ---------------------------------------------------------------------------

    def send(self, payload: bytes) -> None:
        self.last_sent = rsp.frame(payload)
        self.conn.sendall(self.last_sent)

    def run(self) -> None:
        self.target.attach()
        _say(f"attached ({len(self.target.vcpus)} vCPU(s), stopped)")
        try:
            while not self.done:
                data = self.conn.recv(65536)
                if not data:
                    break
                self.on_bytes(data)
        finally:
            if not self.target.ended():
                self.target.detach()
                _say("detached; the guest runs on")
            self.target.close()

    def on_bytes(self, data: bytes) -> None:
        for event in self.reader.feed(data):
            if self.done:
                return
            if isinstance(event, rsp.BadPacket):
                _say(f"bad packet: {event.reason}")
                if self.ack:
                    self.conn.sendall(b"-")
            elif isinstance(event, rsp.Ack):
                if not event.ok and self.last_sent:
                    self.conn.sendall(self.last_sent)
            elif isinstance(event, rsp.Packet):
                if self.ack:
                    self.conn.sendall(b"+")
                self.packet(event.payload)

    def packet(self, payload: bytes) -> None:
        try:
            reply = self.dispatch(payload)
        except (ValueError, IndexError, KeyError) as e:
            _say(f"malformed packet {payload[:40]!r}: {e}")
            reply = b"E01"
        except (MemoryAccessError, PyhvError) as e:
            _say(f"{payload[:1].decode('latin-1')}: {e}")
            reply = b"E0e"
        if reply is not None:
            self.send(reply)
        if payload == b"QStartNoAckMode":
            self.ack = False

    # --- packets -------------------------------------------------------------------------

    def dispatch(self, p: bytes) -> bytes | None:
        t = self.target
        if p == b"?":
            return self.stop_reply(self.last_stop)
        if p.startswith(b"qSupported"):
            features = p.partition(b":")[2].split(b";")
            self.swbreak, self.hwbreak = b"swbreak+" in features, b"hwbreak+" in features
            return (b"PacketSize=%x;qXfer:features:read+;QStartNoAckMode+;swbreak+;hwbreak+;vContSupported+"
                    % rsp.PACKET_SIZE)
        if p == b"QStartNoAckMode":
            return b"OK"
        if p.startswith(b"qXfer:features:read:"):
            annex, _, span = p[len(b"qXfer:features:read:"):].partition(b":")
            if annex != b"target.xml":
                return b"E00"
            offset, length = (int(x, 16) for x in span.split(b","))
            xml = x86.target_xml().encode()
            chunk = xml[offset:offset + min(length, rsp.PACKET_SIZE // 2)]
            return (b"m" if offset + len(chunk) < len(xml) else b"l") + rsp.escape(chunk)
        if p == b"qfThreadInfo":
            return b"m" + b",".join(b"%x" % (i + 1) for i in range(len(t.vcpus)))
        if p == b"qsThreadInfo":
            return b"l"
        if p == b"qC":
            return b"QC%x" % (self.g_thread + 1)
        if p == b"qAttached":
            return b"1"
        if p.startswith(b"qThreadExtraInfo,"):
            i = self.thread(p.split(b",")[1])
            return f"vCPU {i} ({t.vcpus[i].state})".encode().hex().encode()
        if p[:1] == b"H":
            i = self.thread(p[2:], allow_all=True)
            if p[1:2] == b"g":
                self.g_thread = max(i, 0)
            else:
                self.c_thread = i
            return b"OK"
        if p[:1] == b"T":
            self.thread(p[1:])
            return b"OK"
        if p == b"g":
            return b"".join(x86.values(t.registers(self.g_thread))).hex().encode()
        if p[:1] == b"G":
            t.set_registers(self.g_thread, x86.with_values(t.registers(self.g_thread), bytes.fromhex(p[1:].decode())))
            return b"OK"
        if p[:1] == b"p":
            n = int(p[1:], 16)
            if not 0 <= n < len(x86.REGISTERS):
                return b"E00"
            return x86.values(t.registers(self.g_thread))[n].hex().encode()
        if p[:1] == b"P":
            number, _, value = p[1:].partition(b"=")
            t.set_registers(self.g_thread, x86.with_value(t.registers(self.g_thread), int(number, 16),
                                                          bytes.fromhex(value.decode())))
            return b"OK"
        if p[:1] == b"m":
            addr, length = (int(x, 16) for x in p[1:].split(b","))
            return t.read_memory(self.g_thread, addr, min(length, rsp.PACKET_SIZE // 2 - 8)).hex().encode()
        if p[:1] == b"M":
            head, _, data = p[1:].partition(b":")
            addr, length = (int(x, 16) for x in head.split(b","))
            raw = bytes.fromhex(data.decode())
            if len(raw) != length:
                raise ValueError("length does not match the data")
            t.write_memory(self.g_thread, addr, raw)
            return b"OK"
        if p[:1] == b"X":
            head, _, raw = p[1:].partition(b":")
            addr, length = (int(x, 16) for x in head.split(b","))
            if len(raw) != length:
                raise ValueError("length does not match the data")
            if length:
                t.write_memory(self.g_thread, addr, raw)
            return b"OK"
        if p[:1] in (b"Z", b"z"):
            kind_s, addr_s, size_s = p[1:].split(b",")[:3]
            kind, addr, size = int(kind_s), int(addr_s, 16), int(size_s.split(b";")[0], 16)
            if kind == 0:
                if p[:1] == b"Z":
                    t.insert_sw(self.g_thread, addr)
                else:
                    t.remove_sw(addr)
                return b"OK"
            if kind in _HW_KINDS:
                if p[:1] == b"Z":
                    t.insert_hw(addr, _HW_KINDS[kind], size)
                else:
                    t.remove_hw(addr, _HW_KINDS[kind], size)
                return b"OK"
            return b""
        if p[:1] in (b"c", b"C"):
            return self.resume(None)
        if p[:1] in (b"s", b"S"):
            return self.resume(self.c_thread if self.c_thread >= 0 else self.g_thread)
        if p == b"vCont?":
            return b"vCont;c;C;s;S"
        if p.startswith(b"vCont;"):
            step = None
            for action in p[len(b"vCont;"):].split(b";"):
                op, _, tid = action.partition(b":")
                if op[:1] in (b"s", b"S"):
                    step = self.thread(tid) if tid else self.g_thread
                    break
            return self.resume(step)
        if p[:1] == b"D":
            self.send(b"OK")
            self.done = True
            return None
        if p[:1] == b"k":
            _say("kill: the debugger ends the domain")
            self.target.detach()
            self.kill()
            self.done = True
            return None
        return b""  # not supported: GDB falls back or says so

    def thread(self, text: bytes, allow_all: bool = False) -> int:
        """A vCPU index from a GDB thread id (``-1``: all, ``0``: any)."""
        if text in (b"-1", b"0") and allow_all:
            return -1 if text == b"-1" else 0
        if text == b"0":
            return 0
        n = int(text, 16)
        if not 1 <= n <= len(self.target.vcpus):
            raise ValueError(f"no thread {text!r}")
        return n - 1

    def stop_reply(self, e: StopEvent) -> bytes:
        reason = e.reason
        if (reason == "swbreak:;" and not self.swbreak) or (reason == "hwbreak:;" and not self.hwbreak):
            reason = ""
        return b"T%02xthread:%x;%s" % (e.signal, e.vcpu + 1, reason.encode())

    # --- running -------------------------------------------------------------------------

    def resume(self, step: int | None) -> bytes | None:
        """Let the guest run until a vCPU stops, GDB interrupts, or the machine ends."""
        t = self.target
        if t.ended():
            return b"W00"
        t.resume(step)
        while True:
            watched: list[Any] = [self.conn, t.wake_fd]
            ready = select.select(watched, [], [], 0.25)[0]
            if t.wake_fd in ready:
                event = t.take_event()
                if event is not None:
                    t.pause_all()
                    return self.finish(event)
            if self.conn in ready:
                data = self.conn.recv(4096)
                if not data:
                    self.done = True
                    return None
                for ev in self.reader.feed(data):
                    if isinstance(ev, rsp.Interrupt):
                        return self.finish(t.interrupt(self.g_thread))
            if not ready and t.ended():
                _say("the guest stopped while running under the debugger")
                self.done = True
                return b"W00"

    def finish(self, event: StopEvent) -> bytes:
        self.last_stop = event
        self.g_thread = event.vcpu
        return self.stop_reply(event)
