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


# --- the same tables through fw_cfg, as firmware installs them ------------------------------------


def _run_loader(files: dict[str, bytes], loader: bytes, fseg: int, high: int) -> dict[str, tuple[int, bytearray]]:
    """What SeaBIOS does with etc/table-loader: ALLOCATE (FSEG at ``fseg``, HIGH at ``high``),
    ADD_POINTER, ADD_CHECKSUM, in order; file name -> (address, bytes)."""
    placed: dict[str, tuple[int, bytearray]] = {}
    for at in range(0, len(loader), acpi.LOADER_ENTRY_SIZE):
        entry = loader[at : at + acpi.LOADER_ENTRY_SIZE]
        command = struct.unpack_from("<I", entry)[0]
        name = entry[4:60].rstrip(b"\0").decode()
        if command == acpi.LOADER_ALLOCATE:
            align, zone = struct.unpack_from("<IB", entry, 60)
            addr = fseg if zone == acpi.LOADER_ZONE_FSEG else high
            assert addr % align == 0
            placed[name] = (addr, bytearray(files[name]))
        elif command == acpi.LOADER_ADD_POINTER:
            src = entry[60:116].rstrip(b"\0").decode()
            offset, size = struct.unpack_from("<IB", entry, 116)
            field = placed[name][1]
            value = int.from_bytes(field[offset : offset + size], "little") + placed[src][0]
            field[offset : offset + size] = value.to_bytes(size, "little")
        else:
            assert command == acpi.LOADER_ADD_CHECKSUM
            offset, start, length = struct.unpack_from("<III", entry, 60)
            data = placed[name][1]
            data[offset] = (data[offset] - sum(data[start : start + length])) & 0xFF
    return placed


def test_table_loader_run_by_firmware_gives_the_tables_pyhv_writes_itself() -> None:
    extra = [("MCFG", acpi.sdt(b"MCFG", 1, bytes(44)))]
    files = acpi.loader_files([0, 1], [acpi.rtc_device(0x70, 8)], extra)
    direct = acpi.build_tables([0, 1], [acpi.rtc_device(0x70, 8)], extra, base=0xE0000)

    placed = _run_loader({"etc/acpi/tables": files.tables, "etc/acpi/rsdp": files.rsdp}, files.loader,
                         fseg=0xE0000, high=0xE0040)

    assert placed["etc/acpi/rsdp"] == (0xE0000, bytearray(direct.blobs[0xE0000]))
    assert all(placed["etc/acpi/tables"][1][addr - 0xE0040 : addr - 0xE0040 + len(blob)] == blob
               for addr, blob in direct.blobs.items() if addr != 0xE0000)


def test_table_loader_checksums_hold_wherever_firmware_puts_the_files() -> None:
    files = acpi.loader_files([0], [], [])

    placed = _run_loader({"etc/acpi/tables": files.tables, "etc/acpi/rsdp": files.rsdp}, files.loader,
                         fseg=0xF5A30, high=0x7FFE_0000)

    rsdp_addr, rsdp = placed["etc/acpi/rsdp"]
    base, tables = placed["etc/acpi/tables"]
    xsdt_at = struct.unpack_from("<Q", rsdp, 24)[0] - base
    xsdt = tables[xsdt_at : xsdt_at + struct.unpack_from("<I", tables, xsdt_at + 4)[0]]
    entries = [struct.unpack_from("<Q", xsdt, 36 + 8 * i)[0] - base for i in range((len(xsdt) - 36) // 8)]
    lengths = {at: struct.unpack_from("<I", tables, at + 4)[0] for at in entries}
    assert sum(rsdp[:20]) % 256 == sum(rsdp) % 256 == 0 and sum(xsdt) % 256 == 0
    assert [bytes(tables[at : at + 4]) for at in entries] == [b"FACP", b"APIC"]
    assert all(sum(tables[at : at + lengths[at]]) % 256 == 0 for at in entries)
