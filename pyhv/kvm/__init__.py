"""Safe wrappers over the KVM API: one class per kind of file descriptor.

:class:`Kvm` is ``/dev/kvm``, :class:`Vm` a virtual machine, :class:`Vcpu` a
virtual CPU.  Every ``OSError`` from an ioctl is converted here into
:class:`pyhv.errors.KvmError` naming the ioctl.
"""

from typing import Any

from .system import Kvm
from .vcpu import Vcpu
from .vm import Vm

_EXITS = {
    "DebugExit", "Exit", "FailEntryExit", "HltExit", "InternalErrorExit", "IoExit", "MmioExit", "ShutdownExit",
    "SystemEventExit", "UnknownExit",
}


def __getattr__(name: str) -> Any:
    # Typed exits are for rare exits and the API; importing them lazily keeps
    # them off the domain start-up path.
    if name in _EXITS:
        from . import exits

        return getattr(exits, name)
    raise AttributeError(name)

__all__ = [
    "DebugExit", "Exit", "FailEntryExit", "HltExit", "InternalErrorExit", "IoExit", "Kvm", "MmioExit",
    "ShutdownExit", "SystemEventExit", "UnknownExit", "Vcpu", "Vm",
]
