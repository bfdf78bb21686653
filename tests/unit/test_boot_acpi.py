"""ACPI tables: checksums, layout, and (where iasl is installed) that ACPICA's
own disassembler accepts them and reads back what pyhv meant."""

from __future__ import annotations

import shutil
import struct
import subprocess
from pathlib import Path

import pytest

from pyhv.boot import acpi, aml


@pytest.fixture
def tables() -> acpi.AcpiTables:
    return acpi.build_tables([0, 1, 2, 3], [acpi.com_device("COM1", 1, 0x3F8, 4), acpi.rtc_device(0x70, 8)])


def _table(tables: acpi.AcpiTables, sig: str) -> bytes:
    return tables.blobs[tables.tables[sig]]


def test_every_table_sums_to_zero(tables: acpi.AcpiTables) -> None:
    assert [sum(blob) & 0xFF for blob in tables.blobs.values()] == [0] * len(tables.blobs)


def test_rsdp_first_20_bytes_sum_to_zero_and_point_at_xsdt(tables: acpi.AcpiTables) -> None:
    rsdp = tables.blobs[tables.rsdp_addr]
    assert sum(rsdp[:20]) & 0xFF == 0 and struct.unpack_from("<Q", rsdp, 24)[0] == tables.tables["XSDT"]


def test_xsdt_lists_fadt_and_madt(tables: acpi.AcpiTables) -> None:
    xsdt = _table(tables, "XSDT")
    assert list(struct.unpack_from("<QQ", xsdt, 36)) == [tables.tables["FACP"], tables.tables["APIC"]]


def test_madt_has_one_enabled_lapic_per_cpu(tables: acpi.AcpiTables) -> None:
    madt = _table(tables, "APIC")
    entries, pos = [], 44
    while pos < len(madt):
        kind, length = madt[pos], madt[pos + 1]
        if kind == 0:
            entries.append((madt[pos + 3], struct.unpack_from("<I", madt, pos + 4)[0]))
        pos += length
    assert entries == [(0, 1), (1, 1), (2, 1), (3, 1)]


def test_fadt_is_hardware_reduced_with_sleep_control_port(tables: acpi.AcpiTables) -> None:
    fadt = _table(tables, "FACP")
    flags = struct.unpack_from("<I", fadt, 0x70)[0]
    space, _, _, _, port = struct.unpack_from("<BBBBQ", fadt, 0xF4)
    assert flags & acpi.FADT_HW_REDUCED_ACPI and (space, port) == (acpi.GAS_SYSTEM_IO, acpi.SLEEP_CONTROL_PORT)


def test_tables_stay_inside_the_bios_area(tables: acpi.AcpiTables) -> None:
    assert all(acpi.ACPI_BASE <= a and a + len(b) <= acpi.ACPI_LIMIT for a, b in tables.blobs.items())


@pytest.mark.parametrize("length", [0, 62, 63, 4000, 5000, 1 << 20])
def test_pkg_length_encodes_its_own_size(length: int) -> None:
    enc = aml.pkg_length(length)
    lead = enc[0]
    decoded = lead & 0x3F if len(enc) == 1 else (lead & 0x0F) | sum(b << (4 + 8 * i) for i, b in enumerate(enc[1:]))
    assert decoded == length + len(enc) and (lead >> 6) == len(enc) - 1


def test_eisa_id_matches_the_compiled_macro() -> None:
    assert aml.eisa_id("PNP0501") == bytes([aml.DWORD_PREFIX]) + (0x0105D041).to_bytes(4, "little")


def test_bad_name_segment_is_refused() -> None:
    with pytest.raises(ValueError):
        aml.name_string("\\_SB.toolong")


IASL = shutil.which("iasl")


@pytest.mark.skipif(IASL is None, reason="iasl (acpica-tools) not installed; scripts/setup installs it")
def test_iasl_disassembles_dsdt_with_com1_rtc_and_s5(tables: acpi.AcpiTables, tmp_path: Path) -> None:
    (tmp_path / "dsdt.dat").write_bytes(_table(tables, "DSDT"))
    subprocess.run([IASL, "-d", "dsdt.dat"], cwd=tmp_path, capture_output=True, check=True)
    dsl = (tmp_path / "dsdt.dsl").read_text()
    assert all(s in dsl for s in ('EisaId ("PNP0501")', 'EisaId ("PNP0B00")', "0x03F8", "Name (\\_S5"))


@pytest.mark.skipif(IASL is None, reason="iasl (acpica-tools) not installed; scripts/setup installs it")
def test_iasl_reads_fadt_sleep_and_reset_registers(tables: acpi.AcpiTables, tmp_path: Path) -> None:
    (tmp_path / "facp.dat").write_bytes(_table(tables, "FACP"))
    subprocess.run([IASL, "-d", "facp.dat"], cwd=tmp_path, capture_output=True, check=True)
    dsl = (tmp_path / "facp.dsl").read_text()
    assert "Hardware Reduced (V5) : 1" in dsl and "Sleep Control Register" in dsl and "00000000000003C0" in dsl


def test_bios_reset_vector_writes_the_fadt_reset_value_to_the_reset_port(tables: acpi.AcpiTables) -> None:
    from tests.unit.fakes import FakeRam, MiB

    ram = FakeRam.of_size(16 * MiB)

    tables.write(ram)

    code = ram.read(0xFFFF0, 10)
    fadt = _table(tables, "FACP")
    reset_port = struct.unpack_from("<Q", fadt, 0x74 + 4)[0]
    assert code[:6] == bytes([0xB0, fadt[0x80], 0xBA]) + struct.pack("<H", reset_port) + b"\xee"
    assert code[6:10] == b"\xfa\xf4\xeb\xfd"  # cli; hlt; jmp back to the hlt
