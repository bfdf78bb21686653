"""Several vCPUs, ACPI tables, the LAPIC timer and ACPI power-off, as the
probe guest sees them (guests/README.md describes its workloads)."""

from __future__ import annotations

import functools

import pytest

from ..conftest import PROBE
from .probe import pyhv, run_probe

pytestmark = pytest.mark.kvm

ENTRIES = {"elf64": (), "pvh": ("--boot", "pvh")}


@functools.cache
def _checksum(n: int) -> int:
    mask = (1 << 64) - 1
    x, total = 0x9E3779B97F4A7C15, 0
    for _ in range(n):
        x ^= (x << 13) & mask
        x ^= x >> 7
        x ^= (x << 17) & mask
        total = (total + x) & mask
    return total


def _lines(run, tag: str, key: str) -> dict[int, dict[str, str]]:
    """The ``probe: <tag> cpu=I ...`` lines that have *key*, by CPU index."""
    out = {}
    for fields in run.lines():
        if tag in fields and "cpu" in fields and key in fields:
            out[int(fields["cpu"])] = fields
    return out


# -- smp -----------------------------------------------------------------------


@pytest.mark.parametrize("vcpus", [1, 2, 4, 8])
def test_smp_brings_up_every_vcpu_and_each_computes_its_checksum(vcpus: int) -> None:
    run = run_probe("probe.test=smp", "--vcpus", str(vcpus), timeout=120)
    summary = run.line("cpus_online")
    assert summary["cpus_online"] == str(vcpus), run.stdout
    assert summary["expected"] == str(vcpus)
    cpus = _lines(run, "smp", "checksum")
    assert sorted(cpus) == list(range(vcpus)), run.stdout
    for index, fields in cpus.items():
        assert fields["apic_id"] == str(index)
        assert int(fields["checksum"], 16) == _checksum(100000 * (index + 1)), fields
    assert run.line("result")["result"] == "pass" and run.status == 0


def test_smp_works_through_the_pvh_entry_too() -> None:
    run = run_probe("probe.test=smp", "--vcpus", "2", "--boot", "pvh", timeout=120)
    assert run.line("cpus_online")["cpus_online"] == "2", run.stdout
    assert run.line("result")["result"] == "pass" and run.status == 0


# -- acpi ----------------------------------------------------------------------


@pytest.mark.parametrize("entry", ENTRIES)
@pytest.mark.parametrize("vcpus", [1, 4])
def test_acpi_tables_have_good_checksums_and_describe_the_machine(entry: str, vcpus: int) -> None:
    run = run_probe("probe.test=acpi", "--vcpus", str(vcpus), *ENTRIES[entry])
    rsdp = run.line("rsdp")
    assert rsdp["checksum"] == "ok" and rsdp["revision"] == "2", run.stdout
    assert rsdp["source"] == ("pvh" if entry == "pvh" else "zeropage")

    tables = [f for f in run.lines() if "table" in f]
    signatures = {f["table"] for f in tables}
    assert {"XSDT", "FACP", "APIC", "DSDT"} <= signatures, run.stdout
    assert all(f["checksum"] == "ok" for f in tables), run.stdout

    madt = run.line("cpus")
    assert madt["cpus"] == str(vcpus)
    assert madt["apic_ids"] == ",".join(str(i) for i in range(vcpus))
    assert int(madt["ioapic"], 16) == 0xFEC00000 and madt["ioapic_gsi_base"] == "0"
    assert int(madt["lapic"], 16) == 0xFEE00000

    fadt = run.line("fadt")
    assert fadt["hw_reduced"] == "1"
    assert fadt["sleep_control"] == "io:0x3c0"
    assert fadt["reset"] == "io:0x3c4/0x1"
    assert run.line("result")["result"] == "pass" and run.status == 0


def test_acpi_madt_has_the_irq0_override_and_the_lapic_nmi() -> None:
    run = run_probe("probe.test=acpi")
    overrides = [f for f in run.lines() if "iso" in f]
    assert {"iso": "", "acpi": "", "irq": "0", "gsi": "2", "flags": "0x0"} in overrides, run.stdout
    nmi = run.line("lapic_nmi")
    assert nmi["lint"] == "1"


# -- timer ---------------------------------------------------------------------


@pytest.mark.parametrize("vcpus", [1, 2])
def test_lapic_timer_ticks_on_every_vcpu(vcpus: int) -> None:
    run = run_probe("probe.test=timer probe.n=20", "--vcpus", str(vcpus), timeout=120)
    expected_period = int(run.line("period_tsc_expected")["period_tsc_expected"])
    cpus = _lines(run, "timer", "ticks")
    assert sorted(cpus) == list(range(vcpus)), run.stdout
    for fields in cpus.values():
        assert int(fields["ticks"]) >= 20
        # About 10 ms per tick; loose bounds, the host may be busy.
        assert expected_period / 2 < int(fields["period_tsc"]) < expected_period * 2, fields
    assert run.line("cpus_online")["cpus_online"] == str(vcpus)
    assert run.line("result")["result"] == "pass" and run.status == 0


# -- poweroff ------------------------------------------------------------------


@pytest.mark.parametrize("entry", ENTRIES)
def test_acpi_poweroff_stops_pyhv_with_status_0(entry: str) -> None:
    # No --debug-exit: only the ACPI sleep control register can end the run.
    run = pyhv("run", "--kernel", str(PROBE), "--cmdline", "probe.test=poweroff", *ENTRIES[entry])
    poweroff = run.line("poweroff")
    assert poweroff["via"] == "sleep_control" and poweroff["slp_typ"] == "5", run.stdout
    assert "error" not in run.stdout and "result=" not in run.stdout, run.stdout
    assert run.status == 0, run.stderr


# -- ring-0 exit loops ---------------------------------------------------------


@pytest.mark.parametrize("test", ["pio", "mmio"])
def test_exit_loops_run_in_ring0_on_request(test: str) -> None:
    run = run_probe(f"probe.test={test} probe.n=2000 probe.ring=0")
    fields = run.line(test)
    assert fields["n"] == "2000" and fields["ring"] == "0"
    assert run.line("result")["result"] == "pass" and run.status == 0


@pytest.mark.parametrize("test", ["pio", "mmio"])
def test_exit_loops_default_to_ring3(test: str) -> None:
    run = run_probe(f"probe.test={test} probe.n=100")
    assert run.line(test)["ring"] == "3"


# -- the MP table (guests booted with acpi=off) ------------------------------------


@pytest.mark.parametrize("vcpus", [1, 3])
def test_mp_table_found_by_scanning_the_bios_area_lists_every_vcpu(vcpus: int) -> None:
    run = run_probe("probe.test=mptable", "--vcpus", str(vcpus))
    mp = run.line("mptable")
    assert run.line("result")["result"] == "pass" and run.status == 0, run.stdout + run.stderr
    assert (mp["found"], mp["spec"], mp["cpus"], mp["bsp"]) == ("bios", "4", str(vcpus), "0"), mp
    assert (mp["ioapics"], mp["ioapic_addr"], mp["isa"], mp["io_interrupts"]) == ("1", "0xfec00000", "1", "23"), mp
