"""The GDB remote serial protocol's framing: packets, checksums, escapes, acks.

Pure: bytes in, events out, so it is tested with scripted input.

A packet is ``$`` payload ``#`` and two hex digits, the payload's byte sum
modulo 256 (GDB manual, "Overview" of the remote protocol).  Inside a payload
``}`` escapes the next byte (sent XOR 0x20; ``#``, ``$``, ``}`` and ``*`` are
always escaped in binary data) and ``*`` run-length encodes: ``X*n`` stands
for X followed by ``ord(n) - 29`` more copies of X.  The checksum covers the
payload as sent, before unescaping.  Outside packets ``+`` and ``-`` acknowledge
a packet (or ask for it again) and a lone 0x03 byte is an interrupt request
(Ctrl-C).  Everything else between packets is noise and is dropped.
"""

from __future__ import annotations

from typing import NamedTuple

#: the largest packet we accept; qSupported tells GDB (PacketSize, in hex)
PACKET_SIZE = 0x4000

ESCAPE = 0x7D  # }
RUN = 0x2A  # *
INTERRUPT = 0x03
_SPECIAL = frozenset(b"#$}*")


class Packet(NamedTuple):
    payload: bytes  # unescaped, run-length expanded


class BadPacket(NamedTuple):
    reason: str  # the sender gets a NAK ('-') and may send it again


class Ack(NamedTuple):
    ok: bool  # '+' or '-'


class Interrupt(NamedTuple):
    pass


Event = Packet | BadPacket | Ack | Interrupt


def checksum(data: bytes) -> int:
    return sum(data) & 0xFF


def escape(data: bytes) -> bytes:
    """Binary data for a packet: ``#$}*`` become ``}`` and the byte XOR 0x20."""
    out = bytearray()
    for b in data:
        if b in _SPECIAL:
            out += bytes((ESCAPE, b ^ 0x20))
        else:
            out.append(b)
    return bytes(out)


def decode(raw: bytes) -> bytes:
    """A payload as sent to its meaning: escapes undone, runs expanded.
    ValueError for a dangling escape or a run with nothing before it."""
    out = bytearray()
    i = 0
    while i < len(raw):
        b = raw[i]
        if b == ESCAPE:
            if i + 1 == len(raw):
                raise ValueError("escape at the end of the packet")
            out.append(raw[i + 1] ^ 0x20)
            i += 2
        elif b == RUN:
            if not out or i + 1 == len(raw):
                raise ValueError("run-length marker without a byte to repeat or a count")
            count = raw[i + 1] - 29
            if count < 0:
                raise ValueError("negative run length")
            out += bytes((out[-1],)) * count
            if len(out) > PACKET_SIZE * 4:
                raise ValueError("run-length expansion too long")
            i += 2
        else:
            out.append(b)
            i += 1
    return bytes(out)


def frame(payload: bytes) -> bytes:
    """``$payload#cc``; the payload must already be escaped where it is binary."""
    return b"$" + payload + b"#" + b"%02x" % checksum(payload)


class Reader:
    """Turns a byte stream into events; keeps a partial packet between feeds."""

    def __init__(self) -> None:
        self._buf = bytearray()
        self._in_packet = False
        self._sum: bytearray | None = None  # checksum digits once '#' was seen

    def feed(self, data: bytes) -> list[Event]:
        events: list[Event] = []
        for b in data:
            if not self._in_packet:
                if b == ord("$"):
                    self._in_packet, self._buf, self._sum = True, bytearray(), None
                elif b == ord("+"):
                    events.append(Ack(True))
                elif b == ord("-"):
                    events.append(Ack(False))
                elif b == INTERRUPT:
                    events.append(Interrupt())
                continue  # noise between packets
            if self._sum is not None:
                self._sum.append(b)
                if len(self._sum) == 2:
                    events.append(self._finish())
                continue
            if b == ord("#"):
                self._sum = bytearray()
            elif b == ord("$"):
                events.append(BadPacket("a new packet began inside a packet"))
                self._buf = bytearray()
            elif len(self._buf) >= PACKET_SIZE:
                events.append(BadPacket(f"packet longer than {PACKET_SIZE} bytes"))
                self._in_packet = False
            else:
                self._buf.append(b)
        return events

    def _finish(self) -> Event:
        raw, digits = bytes(self._buf), bytes(self._sum or b"")
        self._in_packet, self._buf, self._sum = False, bytearray(), None
        try:
            sent = int(digits, 16)
        except ValueError:
            return BadPacket(f"checksum {digits!r} is not hex")
        if sent != checksum(raw):
            return BadPacket(f"checksum {sent:#04x}, computed {checksum(raw):#04x}")
        try:
            return Packet(decode(raw))
        except ValueError as e:
            return BadPacket(str(e))
