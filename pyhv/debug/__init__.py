"""Debugging and introspection of a running machine.

``rsp`` is the GDB remote protocol's framing (pure), ``x86`` the register
layout GDB expects (pure), ``target`` stops, steps and breaks the vCPUs of a
:class:`~pyhv.vmm.machine.Machine` through KVM_SET_GUEST_DEBUG, ``gdbstub``
serves GDB on a socket (``pyhv run --gdb``), and ``trace`` counts or traces a
machine's port and MMIO accesses.  None of it is imported unless used.
"""
