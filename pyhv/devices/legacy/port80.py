"""Port 0x80 POST/progress codes, recorded with the time they arrived.

Firmware and kernels write progress codes here; pyhv keeps each with its
arrival time (nanoseconds since the machine started) for boot-time analysis.
"""

from __future__ import annotations

import time

PORT = 0x80
MAX_RECORDS = 4096


class ProgressCodes:
    def __init__(self) -> None:
        self.start_ns = time.monotonic_ns()
        self.records: list[tuple[int, int]] = []
        self.last = 0

    def read(self, offset: int, size: int) -> int:
        return self.last

    def write(self, offset: int, size: int, value: int) -> None:
        self.last = value & 0xFF
        if len(self.records) < MAX_RECORDS:
            self.records.append((time.monotonic_ns() - self.start_ns, self.last))
