"""Why a machine stopped, as plain values.

The kind is what control flow looks at; ``detail`` is for people (logs,
error messages) and is never compared.
"""

from __future__ import annotations

import enum
from typing import NamedTuple


class StopKind(enum.Enum):
    # the guest's doing
    DEBUG_EXIT = "debug-exit"  # guest wrote the debug-exit port: end with its status
    POWEROFF = "poweroff"  # guest powered off
    RESET = "reset"  # guest asked for a reboot
    CRASH = "crash"  # triple fault, internal error, entry failure
    ERROR = "error"  # pyhv itself failed (an ioctl, a device)
    # the host's
    DESTROY = "destroy"  # pulled the plug: a signal, the API, the console escape
    SHUTDOWN = "shutdown"  # asked to shut down
    REBOOT = "reboot"  # asked to reboot: boots again whatever on_reboot says
    SAVED = "saved"  # saved to a file and ended: the domain lives on there
    MIGRATED = "migrated"  # moved to another host: the domain lives on there


#: stops asked for by the host rather than caused by the guest
HOST_KINDS = frozenset({StopKind.DESTROY, StopKind.SHUTDOWN, StopKind.REBOOT, StopKind.SAVED, StopKind.MIGRATED})


class Stop(NamedTuple):
    kind: StopKind
    status: int = 0
    detail: str = ""
