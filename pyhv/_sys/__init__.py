"""The kernel ABI: ctypes mirrors of kernel headers, ioctl numbers and libc calls.

This package is the only place in pyhv that imports ``ctypes``, ``fcntl`` or
``mmap``.  Structures carry the kernel's own names (``struct kvm_regs`` is
:class:`kvm_h.kvm_regs` with the same field names) and a test compiles a C
program against the machine's headers to check every size and offset.
"""
