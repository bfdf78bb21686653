"""Why a machine stopped, as plain values."""

from __future__ import annotations

import enum
from typing import NamedTuple


class StopKind(enum.Enum):
    DEBUG_EXIT = "debug-exit"  # guest wrote the debug-exit port
    POWEROFF = "poweroff"  # guest powered off
    RESET = "reset"  # guest asked for a reboot
    HOST = "host"  # the host asked (signal, API)
    CRASH = "crash"  # triple fault, internal error, entry failure
    ERROR = "error"  # pyhv itself failed (an ioctl, a device)


class Stop(NamedTuple):
    kind: StopKind
    status: int = 0
    detail: str = ""
