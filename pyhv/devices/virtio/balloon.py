"""virtio-balloon (virtio 1.2, 5.5): the host takes memory back from a running guest.

The host sets a target (``num_pages``, in 4 KiB pages) and the guest follows:
it hands page frame numbers to the inflate queue, which pyhv releases to the
host (MADV_DONTNEED, or a hole punched in memfd-backed RAM), and takes pages
back through the deflate queue, which needs nothing from the host (they fault
in again on first touch).  The guest reports how far it got in ``actual``.

Every page frame number is checked to be inside guest RAM before its page is
released; a bad one fails that request (it is skipped and counted), not the
device.  With VIRTIO_BALLOON_F_STATS_VQ the guest sends memory statistics: the
device keeps the buffer and returns it when it wants fresh numbers.
"""

from __future__ import annotations

import struct
import sys
from typing import Any

from .device import VirtioDevice
from .queue import DescriptorChain, SplitQueue

DEVICE_ID = 5
INFLATE, DEFLATE, STATS = 0, 1, 2
PAGE_SHIFT = 12
PAGE_SIZE = 1 << PAGE_SHIFT

VIRTIO_BALLOON_F_MUST_TELL_HOST = 0
VIRTIO_BALLOON_F_STATS_VQ = 1
VIRTIO_BALLOON_F_DEFLATE_ON_OOM = 2

#: statistics tags (5.5.6.3)
STAT_NAMES = {
    0: "swap_in", 1: "swap_out", 2: "major_faults", 3: "minor_faults", 4: "free_memory",
    5: "total_memory", 6: "available_memory", 7: "disk_caches", 8: "hugetlb_allocations",
    9: "hugetlb_failures",
}
_STAT = struct.Struct("<HQ")
#: PFNs per request pyhv accepts (Linux sends at most 256)
MAX_PFNS = 4096


class Balloon(VirtioDevice):
    device_id = DEVICE_ID
    name = "virtio-balloon"

    def __init__(self, mem: Any, deflate_on_oom: bool = True) -> None:
        super().__init__(mem, num_queues=3)
        self.deflate_on_oom = deflate_on_oom
        self.target_pages = 0
        self.actual_pages = 0
        self.inflated = 0  # pages released to the host and not yet deflated
        self.bad_pfns = 0
        self.stats: dict[str, int] = {}
        self._stats_chain: DescriptorChain | None = None

    def device_features(self) -> int:
        bits = (1 << VIRTIO_BALLOON_F_STATS_VQ) | (1 << VIRTIO_BALLOON_F_MUST_TELL_HOST)
        if self.deflate_on_oom:
            bits |= 1 << VIRTIO_BALLOON_F_DEFLATE_ON_OOM
        return bits

    # --- host side ----------------------------------------------------------------

    def set_target(self, pages: int) -> None:
        """Ask the guest to hold ``pages`` 4 KiB pages in the balloon."""
        if pages < 0 or pages > 0xFFFF_FFFF:
            raise ValueError(f"balloon target {pages} pages is out of range")
        with self.lock:
            self.target_pages = pages
        self.config_changed()

    def request_stats(self) -> None:
        """Give the stats buffer back so the guest refreshes the numbers."""
        with self.lock:
            chain, self._stats_chain = self._stats_chain, None
            if chain is None:
                return
            q = self.queues[STATS]
            q.push_used(chain, 0)
            signal = q.should_notify()
        if signal:
            self.interrupt(STATS)

    # --- configuration space --------------------------------------------------------

    def config_bytes(self) -> bytes:
        # struct virtio_balloon_config: num_pages, actual (free_page_hint_cmd_id, poison_val unused)
        return struct.pack("<II", self.target_pages, self.actual_pages)

    def write_config(self, offset: int, size: int, value: int) -> None:
        if offset == 4 and size == 4:
            self.actual_pages = value & 0xFFFF_FFFF

    # --- state ----------------------------------------------------------------------

    def _device_state(self) -> Any:
        # A statistics buffer the device holds is carried as its head index, so
        # the restored device can still give it back (request_stats).
        held = self._stats_chain
        return {
            "target_pages": self.target_pages, "actual_pages": self.actual_pages, "inflated": self.inflated,
            "stats_head": None if held is None else held.head,
        }

    def _device_check_state(self, state: Any) -> Any:
        from ..state import check_keys, int_field

        keys = ("target_pages", "actual_pages", "inflated", "stats_head")
        st = check_keys(state, keys, self.name)
        pages = min(self.mem.size // PAGE_SIZE if hasattr(self.mem, "size") else 0xFFFF_FFFF, 0xFFFF_FFFF)
        counts = tuple(int_field(st, k, pages, self.name) for k in keys[:3])
        head = None if st["stats_head"] is None else int_field(st, "stats_head", self.queues[STATS].max_size - 1, self.name)
        return (*counts, head)

    def _device_set_state(self, checked: Any) -> None:
        self.target_pages, self.actual_pages, self.inflated, head = checked
        q = self.queues[STATS]
        self._stats_chain = None if head is None or not q.active else DescriptorChain(head, [], [], q.generation)

    # --- queues ---------------------------------------------------------------------

    def _device_reset(self) -> None:
        self._stats_chain = None
        self.actual_pages = 0

    def _device_process(self, index: int, queue: SplitQueue) -> bool:
        if index == STATS:
            while (chain := queue.pop()) is not None:
                self._read_stats(chain)
                self._stats_chain = chain  # kept until the host wants new numbers
            return False
        inflate = index == INFLATE
        return self._drain(queue, lambda chain: self._pages(chain, inflate))

    def _pages(self, chain: DescriptorChain, inflate: bool) -> int:
        length = min(chain.readable_len(), 4 * MAX_PFNS)
        data = chain.read_all(self.mem, length)
        for (pfn,) in struct.iter_unpack("<I", data[: length - length % 4]):
            gpa = pfn << PAGE_SHIFT
            if not self.mem.contains(gpa, PAGE_SIZE):
                self._bad_pfn(pfn)
                continue
            if inflate:
                self.mem.discard(gpa, PAGE_SIZE)
                self.inflated += 1
            else:
                self.inflated = max(0, self.inflated - 1)
        return 0

    def _bad_pfn(self, pfn: int) -> None:
        self.bad_pfns += 1
        if self.bad_pfns == 1:
            print(f"pyhv: {self.name}: page frame {pfn:#x} is outside guest RAM; ignored", file=sys.stderr)

    def _read_stats(self, chain: DescriptorChain) -> None:
        data = chain.read_all(self.mem, _STAT.size * 64)
        stats = {}
        for tag, value in _STAT.iter_unpack(data[: len(data) - len(data) % _STAT.size]):
            stats[STAT_NAMES.get(tag, f"tag{tag}")] = value
        self.stats = stats
