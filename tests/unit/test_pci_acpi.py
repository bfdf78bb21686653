"""ACPI for the PCI root: MCFG, the root bridge's _CRS, the ECAM reservation; iasl reads them back."""

from __future__ import annotations

import shutil
import struct
import subprocess
from pathlib import Path

import pytest

from pyhv.boot import acpi
from pyhv.devices.pci import acpi as pci_acpi
from pyhv.devices.pci import aml_res
from pyhv.devices.pci.root import PciRoot

IASL = shutil.which("iasl")


@pytest.fixture
def info() -> pci_acpi.PciAcpiInfo:
    return pci_acpi.acpi_info(PciRoot((0xC000_0000, 0x2000_0000), mmio64_window=(1 << 36, 1 << 34)))


def test_info_describes_bus_0_ecam_ports_and_windows(info: pci_acpi.PciAcpiInfo) -> None:
    assert info == pci_acpi.PciAcpiInfo(
        0, 0xE000_0000, 1 << 20, 0, 0, (0xCF8, 8), (0xC000_0000, 0x2000_0000), (1 << 36, 1 << 34)
    )


def test_mcfg_has_one_allocation_for_segment_0_bus_0(info: pci_acpi.PciAcpiInfo) -> None:
    table = pci_acpi.mcfg(info)
    assert (table[:4], len(table), struct.unpack_from("<QHBB", table, 44)) == (b"MCFG", 60, (0xE000_0000, 0, 0, 0))


def test_mcfg_sums_to_zero(info: pci_acpi.PciAcpiInfo) -> None:
    assert sum(pci_acpi.mcfg(info)) & 0xFF == 0


def test_word_bus_number_is_16_bytes_with_count() -> None:
    descriptor = aml_res.word_bus_number(0, 3)
    assert (len(descriptor), descriptor[:4], struct.unpack_from("<HHHHH", descriptor, 6)) == (
        16,
        bytes([0x88, 13, 0, 2]),
        (0, 0, 3, 0, 4),
    )


def test_dword_memory_spans_base_to_last_byte() -> None:
    descriptor = aml_res.dword_memory(0xC000_0000, 0x1000)
    assert (len(descriptor), struct.unpack_from("<IIIII", descriptor, 6)) == (
        26,
        (0, 0xC000_0000, 0xC000_0FFF, 0, 0x1000),
    )


def test_qword_memory_is_46_bytes() -> None:
    assert len(aml_res.qword_memory(1 << 40, 1 << 30)) == 46


def test_range_past_32_bits_is_refused_by_dword_memory() -> None:
    with pytest.raises(ValueError):
        aml_res.dword_memory(0xFFFF_F000, 0x2000)


def _disassemble(tmp_path: Path, name: str, blob: bytes) -> str:
    assert IASL is not None
    (tmp_path / f"{name}.dat").write_bytes(blob)
    subprocess.run([IASL, "-d", f"{name}.dat"], cwd=tmp_path, capture_output=True, check=True)
    return (tmp_path / f"{name}.dsl").read_text()


@pytest.mark.skipif(IASL is None, reason="iasl (acpica-tools) not installed; scripts/setup installs it")
def test_iasl_reads_root_bridge_with_bus_ports_and_windows(info: pci_acpi.PciAcpiInfo, tmp_path: Path) -> None:
    dsl = _disassemble(tmp_path, "dsdt", acpi.dsdt([pci_acpi.root_bridge_device(info)]))
    assert all(
        s in dsl
        for s in (
            'EisaId ("PNP0A08")',
            'EisaId ("PNP0A03")',
            "WordBusNumber (ResourceProducer, MinFixed, MaxFixed, PosDecode,",
            "0x0CF8,",
            "DWordMemory (ResourceProducer, PosDecode, MinFixed, MaxFixed, NonCacheable, ReadWrite,",
            "0xDFFFFFFF,",
            "QWordMemory (ResourceProducer, PosDecode, MinFixed, MaxFixed, NonCacheable, ReadWrite,",
            "0x00000013FFFFFFFF,",
        )
    )


@pytest.mark.skipif(IASL is None, reason="iasl (acpica-tools) not installed; scripts/setup installs it")
def test_iasl_reads_ecam_reservation_as_motherboard_resource(info: pci_acpi.PciAcpiInfo, tmp_path: Path) -> None:
    dsl = _disassemble(tmp_path, "dsdt", acpi.dsdt([pci_acpi.ecam_reservation_device(info)]))
    assert 'EisaId ("PNP0C02")' in dsl and "0xE0000000,         // Address Base" in dsl


@pytest.mark.skipif(IASL is None, reason="iasl (acpica-tools) not installed; scripts/setup installs it")
def test_iasl_reads_mcfg_base_and_bus_range(info: pci_acpi.PciAcpiInfo, tmp_path: Path) -> None:
    dsl = _disassemble(tmp_path, "mcfg", pci_acpi.mcfg(info))
    assert all(s in dsl for s in ("Base Address : 00000000E0000000", "Start Bus Number : 00", "End Bus Number : 00"))
