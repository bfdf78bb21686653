"""What the ACPI tables must say about the PCI root.

* MCFG (PCI Firmware 3.x, 4.1.2): one allocation for segment 0, bus 0, at
  the ECAM base.  Linux uses ECAM only when the region is reserved, either as
  E820_RESERVED in the memory map or in the _CRS of a PNP0C02 "motherboard
  resources" device: :func:`ecam_reservation_device` provides the latter.
* The DSDT root bridge (:func:`root_bridge_device`): _HID PNP0A08 (PCI
  Express), _CID PNP0A03 (PCI), _SEG/_BBN/_UID 0 and a _CRS holding the bus
  range, the configuration ports 0xCF8-0xCFF and the MMIO windows BARs may
  live in.  There is no I/O window: devices have memory BARs only.
"""

from __future__ import annotations

import struct
from typing import TYPE_CHECKING, NamedTuple

from ...boot import acpi, aml
from . import aml_res
from .root import CONFIG_ADDRESS_PORT, CONFIG_IO_LENGTH, ECAM_BUS_END, ECAM_BUS_START, ECAM_SIZE

if TYPE_CHECKING:
    from .root import PciRoot


class PciAcpiInfo(NamedTuple):
    segment: int
    ecam_base: int
    ecam_size: int
    bus_start: int
    bus_end: int
    #: (first port, count) of the configuration mechanism #1 registers
    config_ports: tuple[int, int]
    #: (base, size) of the MMIO window below 4 GiB
    mmio32_window: tuple[int, int]
    #: (base, size) of the MMIO window above 4 GiB, if any
    mmio64_window: tuple[int, int] | None


def acpi_info(root: PciRoot) -> PciAcpiInfo:
    return PciAcpiInfo(
        segment=0,
        ecam_base=root.ecam_base,
        ecam_size=ECAM_SIZE,
        bus_start=ECAM_BUS_START,
        bus_end=ECAM_BUS_END,
        config_ports=(CONFIG_ADDRESS_PORT, CONFIG_IO_LENGTH),
        mmio32_window=root.mmio32_window,
        mmio64_window=root.mmio64_window,
    )


def mcfg_body(info: PciAcpiInfo) -> bytes:
    """The MCFG table after its 36-byte header: 8 reserved bytes, one allocation."""
    return bytes(8) + struct.pack("<QHBBI", info.ecam_base, info.segment, info.bus_start, info.bus_end, 0)


def mcfg(info: PciAcpiInfo) -> bytes:
    """The whole MCFG table, checksummed."""
    return acpi.sdt(b"MCFG", 1, mcfg_body(info))


def root_bridge_device(info: PciAcpiInfo, name: str = "PCI0") -> bytes:
    """AML Device for the host bridge, to go in the \\_SB scope."""
    port, count = info.config_ports
    resources = [
        aml_res.word_bus_number(info.bus_start, info.bus_end),
        aml.io_port(port, count),
        aml_res.dword_memory(*info.mmio32_window),
    ]
    if info.mmio64_window is not None:
        resources.append(aml_res.qword_memory(*info.mmio64_window))
    return aml.device(
        name,
        aml.name("_HID", aml.eisa_id("PNP0A08")),
        aml.name("_CID", aml.eisa_id("PNP0A03")),
        aml.name("_SEG", aml.integer(info.segment)),
        aml.name("_BBN", aml.integer(info.bus_start)),
        aml.name("_UID", aml.integer(info.segment)),
        aml.name("_CRS", aml.resource_template(*resources)),
    )


def ecam_reservation_device(info: PciAcpiInfo, name: str = "PRES") -> bytes:
    """AML Device (PNP0C02) whose _CRS reserves the ECAM window, for the \\_SB scope."""
    return aml.device(
        name,
        aml.name("_HID", aml.eisa_id("PNP0C02")),
        aml.name("_UID", aml.integer(1)),
        aml.name("_CRS", aml.resource_template(aml.memory32_fixed(info.ecam_base, info.ecam_size))),
    )
