"""VM Generation ID: 16 bytes in guest memory that change when the machine runs
again from a saved point.

The interface is Microsoft's "Virtual Machine Generation ID" specification, as
QEMU (``-device vmgenid``) and Firecracker provide it and Linux reads it
(``drivers/virt/vmgenid.c``): an ACPI device in the DSDT with ``_HID``
"VMGENCTR" and ``_CID`` "VM_GEN_COUNTER", whose ``ADDR`` method returns a
package of two integers, the low and the high 32 bits of the guest-physical
address of a 16-byte GUID.  Linux maps those bytes, mixes them into its
random pool at boot, and again when the device notifies ``0x80``; a guest
that compares them with what it saw before knows it is a copy (a restored
snapshot, a clone) and must not reuse what should be unique (random state,
session keys, leases).

In pyhv the GUID sits at the fixed address :data:`ADDR`, in a page of the BIOS
area that the e820 map reports reserved (``boot/layout.py``); the same address
is also the fw_cfg file :data:`FW_CFG_FILE` (8 bytes, little endian), so a
guest can find it without an AML interpreter (QEMU's file of that name holds
the same value, written there by its firmware; here pyhv writes it and it is
read-only).  The builder writes a fresh random GUID when a machine boots and
when a snapshot is restored, before any vCPU runs; a live migration moves the
same machine and keeps it.  The change is not signalled: this hardware-reduced
machine has no SCI or Generic Event Device to carry the ``Notify(0x80)``, so a
guest sees a new generation when it reads the GUID (at its boot, or when it
polls), not the moment a clone starts.

Being part of the model (``vmgenid``, default on), the device costs one
reserved page and one DSDT node; guests without a driver ignore it.
"""

from __future__ import annotations

import os
import struct
from typing import Protocol

from ..boot import aml
from ..boot.layout import VMGENID_ADDR

ADDR = VMGENID_ADDR
SIZE = 16
HID = "VMGENCTR"
CID = "VM_GEN_COUNTER"
FW_CFG_FILE = "etc/vmgenid_addr"
_RETURN_OP = 0xA4


class _Ram(Protocol):
    def write(self, gpa: int, data: bytes) -> None: ...


def acpi_device(addr: int = ADDR) -> bytes:
    """The DSDT node: ``Device (VGEN)`` with _HID, _CID and ``Method (ADDR) { Return (Package { lo, hi }) }``."""
    return aml.device(
        "VGEN",
        aml.name("_HID", aml.string(HID)),
        aml.name("_CID", aml.string(CID)),
        aml.name("_DDN", aml.string(CID)),
        aml.method("ADDR", 0, bytes([_RETURN_OP]) + aml.package(aml.integer(addr & 0xFFFF_FFFF),
                                                                aml.integer(addr >> 32))),
    )


def fw_cfg_file(addr: int = ADDR) -> bytes:
    """The contents of :data:`FW_CFG_FILE`: the GUID's address, 8 bytes little endian."""
    return struct.pack("<Q", addr)


def new_generation(mem: _Ram, addr: int = ADDR) -> bytes:
    """Write a fresh random GUID (RFC 4122 version 4) at ``addr``; the 16 bytes written."""
    guid = bytearray(os.urandom(SIZE))
    guid[7] = guid[7] & 0x0F | 0x40  # version 4 (the third field is little endian in the GUID layout)
    guid[8] = guid[8] & 0x3F | 0x80  # RFC 4122 variant
    mem.write(addr, bytes(guid))
    return bytes(guid)
