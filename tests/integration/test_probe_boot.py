"""Boot the probe guest with pyhv and check what the guest itself printed."""

from __future__ import annotations

import pytest

from .probe import run_probe

pytestmark = pytest.mark.kvm

ENTRIES = {"elf64": (), "pvh": ("--boot", "pvh")}


def _checksum(n: int) -> int:
    mask = (1 << 64) - 1
    x, total = 0x9E3779B97F4A7C15, 0
    for _ in range(n):
        x ^= (x << 13) & mask
        x ^= x >> 7
        x ^= (x << 17) & mask
        total = (total + x) & mask
    return total


@pytest.mark.parametrize("entry", ENTRIES)
def test_hello_prints_from_ring3_and_passes(entry: str) -> None:
    run = run_probe("probe.test=hello", *ENTRIES[entry])
    assert run.line("boot")["entry"] == entry
    assert run.line("hello")["cpl"] == "3"
    assert run.line("result")["result"] == "pass" and run.status == 0


@pytest.mark.parametrize("entry", ENTRIES)
def test_boot_line_echoes_the_command_line(entry: str) -> None:
    run = run_probe("probe.test=hello extra=1", *ENTRIES[entry])
    assert run.line("boot")["cmdline"] == "probe.test=hello extra=1"


@pytest.mark.parametrize("entry", ENTRIES)
def test_fault_is_reported_as_gp_and_exits_3(entry: str) -> None:
    run = run_probe("probe.test=fault", *ENTRIES[entry])
    assert run.line("exception")["vector"] == "13"
    assert run.line("result")["result"] == "fail" and run.status == 3


@pytest.mark.parametrize("entry", ENTRIES)
def test_pio_workload_counts_its_writes(entry: str) -> None:
    run = run_probe("probe.test=pio probe.n=5000", *ENTRIES[entry])
    assert run.line("pio")["n"] == "5000" and run.status == 0


@pytest.mark.parametrize("entry", ENTRIES)
def test_mmio_workload_counts_its_writes(entry: str) -> None:
    run = run_probe("probe.test=mmio probe.n=5000", *ENTRIES[entry])
    assert run.line("mmio")["n"] == "5000" and run.status == 0


@pytest.mark.parametrize("entry", ENTRIES)
def test_cpu_checksum_matches_host_computation(entry: str) -> None:
    run = run_probe("probe.test=cpu probe.n=100000", *ENTRIES[entry])
    assert int(run.line("cpu")["checksum"], 16) == _checksum(100000) and run.status == 0


def test_unknown_test_fails_with_status_1() -> None:
    run = run_probe("probe.test=nonesuch")
    assert run.line("error")["error"] == "unknown test nonesuch" and run.status == 1
