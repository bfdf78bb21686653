"""fw_cfg as the probe guest sees it: the port and DMA interfaces, user files, hostile DMA."""

from __future__ import annotations

from pathlib import Path

import pytest

from ..conftest import PROBE
from .probe import pyhv, run_probe

pytestmark = pytest.mark.kvm

HOSTILE = ("buffer_outside_ram", "huge_length", "address_wraps", "write_read_only", "error_bit_given",
           "descriptor_past_ram_end", "buffer_past_ram_end")


def _escaped(data: bytes) -> str:
    """The probe's quoting: printable ASCII as is, the rest (and quotes, backslashes) as \\xHH."""
    return "".join(chr(b) if 0x20 <= b <= 0x7E and b not in b'"\\' else f"\\x{b:02x}" for b in data)


@pytest.fixture
def user_file(tmp_path: Path) -> tuple[Path, bytes]:
    data = b"from the host, with, commas\nand \"quotes\"\x00\xff"
    path = tmp_path / "blob"
    path.write_bytes(data)
    return path, data


@pytest.mark.parametrize("entry", [(), ("--boot", "pvh")], ids=["elf64", "pvh"])
def test_probe_reads_cpus_directory_and_user_files_and_survives_hostile_dma(
    entry: tuple[str, ...], user_file: tuple[Path, bytes]
) -> None:
    path, data = user_file
    run = run_probe("probe.test=fwcfg", "--vcpus", "2", "--memory", "128M", *entry,
                    "--fw-cfg", f"name=opt/org.pyhv/blob,file={path}", "--fw-cfg", "name=opt/s,string=a,b=c")
    head = run.line("signature")
    assert (head["signature"], head["dma_signature"], head["id"]) == ("QEMU", "QEMU CFG", "0x3")
    assert (head["nb_cpus"], head["max_cpus"], head["ram_size"]) == ("2", "2", str(128 << 20))
    files = {f["file"]: f for f in run.lines() if "file" in f}
    assert sorted(files) == ["bootorder", "etc/acpi/rsdp", "etc/acpi/tables", "etc/e820", "etc/table-loader",
                             "etc/vmgenid_addr", "opt/org.pyhv/blob", "opt/s"]
    assert files["opt/org.pyhv/blob"]["size"] == str(len(data)) and files["bootorder"]["size"] == "0"
    assert files["etc/vmgenid_addr"]["size"] == "8"
    reads = {f["read"]: f for f in run.lines() if "read" in f}
    assert reads["opt/org.pyhv/blob"]["text"] == _escaped(data) and reads["opt/s"]["text"] == "a,b=c"
    assert all(f["dma_match"] == "1" and f["control"] == "0x0" for f in reads.values())
    cases = {f["case"]: f for f in run.lines() if "case" in f}
    assert all(cases[name]["error"] == "1" and cases[name]["ok"] == "1" for name in HOSTILE)
    assert cases["descriptor_outside_ram"]["ok"] == "1"
    summary = run.line("cases_ok")
    assert (summary["cases_ok"], summary["after"]) == (summary["cases"], "ok")
    assert run.lines()[-1] == {"result": "pass"} and run.status == 0


@pytest.mark.parametrize("entry", [(), ("--boot", "pvh")], ids=["elf64", "pvh"])
def test_probe_finds_its_command_line_in_the_cmdline_key_and_good_tables_through_the_table_loader(
    entry: tuple[str, ...]
) -> None:
    cmdline = 'probe.test=fwcfg quoted="a b"'
    run = run_probe(cmdline, "--vcpus", "2", "--memory", "64M", *entry)
    key = run.line("cmdline_size")
    assert (key["cmdline_addr"], key["cmdline_size"], key["cmdline_match"]) == ("0x20000", str(len(cmdline) + 1), "1")
    loader = run.line("loader_commands")
    assert (loader["bad"], loader["allocate"], loader["rsdp_ok"], loader["xsdt_ok"], loader["dsdt_ok"]) == (
        "0", "2", "1", "1", "1")
    tables = loader["tables"].split(",")
    assert sorted(tables) == ["APIC", "FACP", "MCFG"] and loader["tables_ok"] == str(len(tables))
    # every table and the RSDP checksummed, every pointer (FADT's two to the DSDT, the XSDT's, the RSDP's) patched
    assert (loader["add_checksum"], loader["add_pointer"]) == (str(len(tables) + 2 + 2), str(2 + len(tables) + 1))
    assert run.lines()[-1] == {"result": "pass"} and run.status == 0


def test_one_vcpu_is_what_the_probe_counts() -> None:
    run = run_probe("probe.test=fwcfg")
    assert (run.line("nb_cpus")["nb_cpus"], run.status) == ("1", 0)


def test_missing_user_file_fails_the_run_in_one_line_naming_the_key(tmp_path: Path) -> None:
    run = pyhv("run", "--kernel", str(PROBE), "--fw-cfg", f"name=opt/x,file={tmp_path}/none")
    assert run.status == 2
    assert run.stderr.strip().splitlines() == [f"pyhv: fw_cfg[0].file {tmp_path}/none: cannot read: No such file or directory"]
