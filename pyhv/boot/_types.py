"""The guest memory interface the loaders write into."""

from __future__ import annotations

from typing import Protocol


class GuestRam(Protocol):
    """Guest-physical memory as the loaders see it.

    ``write`` and ``read`` raise :class:`pyhv.errors.MemoryAccessError` for an
    access outside RAM; ``ram_ranges`` lists the RAM ranges as sorted
    ``(start, size)`` pairs, e.g. ``[(0, 3 GiB), (4 GiB, 1 GiB)]``.
    """

    def write(self, gpa: int, data: bytes) -> None: ...

    def read(self, gpa: int, size: int) -> bytes: ...

    def ram_ranges(self) -> list[tuple[int, int]]: ...
