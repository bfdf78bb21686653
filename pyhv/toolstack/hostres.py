"""Host resources pyhvd gives its domains: TAPs joined to bridges, and the RAM there is.

TAPs are opened (and joined to their bridges, through pyroute2) here in the
toolstack, as Xen's vif scripts do in dom0; the domain process gets the open
descriptors and never needs the privilege to make them.
"""

from __future__ import annotations

from typing import Any

from ..errors import PyhvError
from ..model import Description
from .record import Refused


def open_taps(description: Description) -> list[Any]:
    """Each NIC's TAP, open and on its bridge; on failure none is left open."""
    from ..backends.tap import Tap

    taps: list[Any] = []
    try:
        for nic in description.nics:
            taps.append(Tap(nic.tap, bridge=nic.bridge))
    except PyhvError as e:
        for t in taps:
            t.close()
        raise Refused(str(e), 409) from None
    return taps


def host_memory() -> int:
    """The host's RAM in bytes (MemTotal); 0 if /proc/meminfo cannot tell."""
    try:
        with open("/proc/meminfo") as f:
            for line in f:
                if line.startswith("MemTotal:"):
                    return int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        pass
    return 0
