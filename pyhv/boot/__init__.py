"""Kernel loaders: put a kernel, initrd and command line into guest RAM.

:func:`load_kernel` recognises the image, loads it with the matching boot
protocol and returns the :class:`~pyhv.boot.x86.EntryState` the boot vCPU
starts from.  Supported protocols:

``linux``
    Linux x86 "64-bit Boot Protocol": a bzImage (protocol 2.12+), or an
    uncompressed ELF64 ``vmlinux`` (:mod:`pyhv.boot.linux`).
``pvh``
    Xen PVH direct boot of an ELF32/ELF64 with the PHYS32_ENTRY note
    (:mod:`pyhv.boot.pvh`).
``multiboot``
    Multiboot 0.6.96, a.out kludge or ELF (:mod:`pyhv.boot.multiboot`).

With ``protocol="auto"`` the image decides, in this order: a bzImage
("HdrS") boots as Linux; an ELF64 boots as Linux unless it carries a
Multiboot header (then Multiboot); an ELF32 with the PVH note boots PVH;
anything else with a Multiboot header boots Multiboot.

Only the standard library is used here; the loaders reach guest memory
through the :class:`GuestRam` protocol.  Every problem with an image is a
:class:`pyhv.errors.ImageError` naming the file.
"""

from __future__ import annotations

from pyhv.boot import elf, linux, multiboot, pvh
from pyhv.boot._common import read_image
from pyhv.boot._types import GuestRam
from pyhv.boot.x86 import EntryState, Segment
from pyhv.errors import ImageError, UsageError

__all__ = ["PROTOCOLS", "EntryState", "GuestRam", "Segment", "detect_protocol", "load_kernel"]

#: values accepted for ``load_kernel(protocol=...)``
PROTOCOLS = ("auto", "linux", "pvh", "multiboot")


def detect_protocol(path: str, data: bytes) -> str:
    """The protocol ``"linux"``, ``"pvh"`` or ``"multiboot"`` that suits *data*."""
    if linux.is_bzimage(data):
        return "linux"
    if elf.is_elf(data):
        image = elf.parse_elf(path, data)
        has_multiboot = multiboot.find_multiboot_header(path, data) is not None
        if image.bits == 64:
            return "multiboot" if has_multiboot else "linux"
        if image.pvh_entry(path) is not None:
            return "pvh"
        if has_multiboot:
            return "multiboot"
        raise ImageError(path, "32-bit ELF kernel has neither a PVH entry note nor a Multiboot header")
    if multiboot.find_multiboot_header(path, data) is not None:
        return "multiboot"
    raise ImageError(path, "not a kernel image: expected bzImage, ELF or Multiboot")


def load_kernel(
    mem: GuestRam,
    kernel: str,
    initrd: str | None,
    cmdline: str,
    protocol: str = "auto",
    rsdp: int = 0,
) -> EntryState:
    """Load *kernel* (and *initrd*) into *mem* and return the boot vCPU's entry state.

    *protocol* is one of :data:`PROTOCOLS`; a forced protocol the image does
    not support is an ImageError.  *rsdp* is the guest-physical address of
    the ACPI RSDP, or 0 for none.  Raises :class:`ImageError` for any
    problem with the kernel or initrd file and :class:`UsageError` for an
    unknown *protocol*.
    """
    if protocol not in PROTOCOLS:
        raise UsageError(f"unknown boot protocol {protocol!r}: expected one of {', '.join(PROTOCOLS)}")
    data = read_image(kernel)
    if not data:
        raise ImageError(kernel, "file is empty")
    chosen = detect_protocol(kernel, data) if protocol == "auto" else protocol
    if chosen == "linux":
        return linux.load_linux(mem, kernel, data, initrd, cmdline, rsdp)
    if chosen == "pvh":
        if not elf.is_elf(data):
            raise ImageError(kernel, "PVH boot needs an ELF kernel with a PVH entry note")
        return pvh.load_pvh(mem, kernel, data, initrd, cmdline, rsdp)
    return multiboot.load_multiboot(mem, kernel, data, initrd, cmdline, rsdp)
