"""Safe wrappers over the KVM API: one class per kind of file descriptor.

:class:`Kvm` is ``/dev/kvm``, :class:`Vm` a virtual machine, :class:`Vcpu` a
virtual CPU.  Every ``OSError`` from an ioctl is converted here into
:class:`pyhv.errors.KvmError` naming the ioctl.
"""

from .exits import (
    Exit,
    FailEntryExit,
    HltExit,
    InternalErrorExit,
    IoExit,
    MmioExit,
    ShutdownExit,
    SystemEventExit,
    UnknownExit,
)
from .system import Kvm
from .vcpu import Vcpu
from .vm import Vm

__all__ = [
    "Exit", "FailEntryExit", "HltExit", "InternalErrorExit", "IoExit", "Kvm", "MmioExit",
    "ShutdownExit", "SystemEventExit", "UnknownExit", "Vcpu", "Vm",
]
