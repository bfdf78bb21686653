"""QEMU's ``isa-debugcon``: a byte written to port 0x402 is output, and a read
answers 0xE9, which is how firmware (SeaBIOS) knows its debug output is heard.
pyhv puts it on the machine when it runs firmware, with the output going where
COM1's goes."""

from __future__ import annotations

from collections.abc import Callable

PORT = 0x402
READBACK = 0xE9


class DebugCon:
    def __init__(self, output: Callable[[bytes], None]) -> None:
        self._output = output

    def read(self, offset: int, size: int) -> int:
        return READBACK

    def write(self, offset: int, size: int, value: int) -> None:
        self._output(value.to_bytes(size, "little")[:1])
