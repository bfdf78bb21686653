"""virtio-rng (virtio 1.2, 5.4): the host's getrandom() into guest buffers.

One request queue; every chain's writable buffers are filled completely.  A
chain with no writable buffer is the driver's mistake: it is returned used
with nothing written.
"""

from __future__ import annotations

import os
from typing import Any

from .device import VirtioDevice, buffer_views
from .queue import DescriptorChain, SplitQueue

DEVICE_ID = 4
#: at most this much entropy per request, so one request cannot stall the I/O thread
MAX_REQUEST = 64 * 1024


class Rng(VirtioDevice):
    device_id = DEVICE_ID
    name = "virtio-rng"

    def __init__(self, mem: Any, entropy: Any = os.getrandom) -> None:
        super().__init__(mem, num_queues=1)
        self._entropy = entropy

    def _device_process(self, index: int, queue: SplitQueue) -> bool:
        return self._drain(queue, self._fill)

    def _fill(self, chain: DescriptorChain) -> int:
        length = min(chain.writable_len(), MAX_REQUEST)
        written = 0
        if length:
            data = self._entropy(length)
            for view in buffer_views(self.mem, chain.writable, 0, len(data)):
                view[:] = data[written : written + len(view)]
                written += len(view)
        return written
