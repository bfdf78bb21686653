"""``/dev/kvm``: the system file descriptor."""

from __future__ import annotations

import os
from typing import TYPE_CHECKING

from .._sys import kvm_h as h
from ..errors import KvmError, PyhvError
from ._call import call

if TYPE_CHECKING:
    from .vm import Vm


class Kvm:
    """An open ``/dev/kvm``."""

    def __init__(self, path: str = "/dev/kvm", fd: int | None = None) -> None:
        if fd is None:
            try:
                fd = os.open(path, os.O_RDWR | os.O_CLOEXEC)
            except OSError as e:
                raise PyhvError(f"{path}: cannot open: {e.strerror}") from None
        self.fd = fd
        version = call(self.fd, "KVM_GET_API_VERSION", h.KVM_GET_API_VERSION)
        if version != h.KVM_API_VERSION:
            os.close(self.fd)
            raise PyhvError(f"{path}: KVM API version {version}, pyhv needs {h.KVM_API_VERSION}")
        self.vcpu_mmap_size = call(self.fd, "KVM_GET_VCPU_MMAP_SIZE", h.KVM_GET_VCPU_MMAP_SIZE)

    def check_extension(self, cap: int) -> int:
        return call(self.fd, "KVM_CHECK_EXTENSION", h.KVM_CHECK_EXTENSION, cap)

    def create_vm(self) -> Vm:
        from .vm import Vm

        fd = call(self.fd, "KVM_CREATE_VM", h.KVM_CREATE_VM, 0)
        return Vm(self, fd)

    def supported_cpuid(self) -> list[h.kvm_cpuid_entry2]:
        """KVM_GET_SUPPORTED_CPUID, growing the buffer until it fits."""
        nent = 64
        while True:
            buf = h.cpuid_buffer(nent)
            try:
                call(self.fd, "KVM_GET_SUPPORTED_CPUID", h.KVM_GET_SUPPORTED_CPUID, buf)
            except KvmError as e:
                if e.errno == 7 and nent < 4096:  # E2BIG
                    nent *= 2
                    continue
                raise
            return [buf.entries[i] for i in range(buf.nent)]  # type: ignore[attr-defined]

    def close(self) -> None:
        if self.fd >= 0:
            os.close(self.fd)
            self.fd = -1
