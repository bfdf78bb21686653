"""PCI enumeration, virtio-blk and virtio-rng as the probe guest sees them, on
the PCI transport and on virtio-MMIO (guests/README.md, "PCI and virtio",
describes the workloads and their lines)."""

from __future__ import annotations

import struct
from pathlib import Path

import pytest

from .probe import Run, run_probe

pytestmark = pytest.mark.kvm

MiB = 1 << 20
SECTOR = 512
DISK_SECTORS = 64 * MiB // SECTOR


def _pattern(sector: int, salt: int) -> bytes:
    """The probe's 512-byte data pattern for (sector, salt)."""
    mask = (1 << 64) - 1
    x = ((2 * sector + 1 + (salt << 56)) * 0x9E3779B97F4A7C15) & mask
    words = []
    for _ in range(SECTOR // 8):
        x ^= (x << 13) & mask
        x ^= x >> 7
        x ^= (x << 17) & mask
        words.append(x)
    return struct.pack("<64Q", *words)


def _disk(tmp_path: Path, name: str = "disk.img", size: int = 64 * MiB) -> Path:
    """A fresh sparse image file."""
    path = tmp_path / name
    with open(path, "wb") as f:
        f.truncate(size)
    return path


def _tagged(run: Run, tag: str, key: str) -> list[dict[str, str]]:
    """Every ``probe: <tag> ...`` line that has ``key``."""
    return [f for f in run.lines() if tag in f and key in f]


def _passed(run: Run) -> bool:
    return run.line("result")["result"] == "pass" and run.status == 0


# -- pci ---------------------------------------------------------------------


def test_pci_lists_the_host_bridge_and_the_virtio_devices(tmp_path: Path) -> None:
    run = run_probe("probe.test=pci", "--disk", str(_disk(tmp_path)), "--rng")
    assert _passed(run), run.stdout + run.stderr
    config = run.line("config")
    assert config["config"] in ("ecam", "cf8")
    functions = _tagged(run, "pci", "vendor")
    assert any(f["class"].startswith("0x0600") for f in functions), run.stdout
    ids = {(f["vendor"], f["device"]) for f in functions}
    assert ("0x1af4", "0x1042") in ids and ("0x1af4", "0x1044") in ids, run.stdout
    # Every memory BAR of a virtio function is usable below 4 GiB.
    virtio = {f["dev"] for f in functions if f["vendor"] == "0x1af4"}
    bars = [f for f in _tagged(run, "pci", "bar") if f["dev"] in virtio and f["type"] != "io"]
    assert bars, run.stdout
    for bar in bars:
        assert bar["assigned"] in ("firmware", "probe"), bar
        assert 0 < int(bar["addr"], 16) < 1 << 32, bar


def test_pci_sees_one_virtio_blk_function_per_disk(tmp_path: Path) -> None:
    run = run_probe(
        "probe.test=pci", "--disk", str(_disk(tmp_path, "a.img")), "--disk", str(_disk(tmp_path, "b.img"))
    )
    assert _passed(run), run.stdout + run.stderr
    blk = [f for f in _tagged(run, "pci", "vendor") if f["device"] == "0x1042"]
    assert len(blk) == 2 and blk[0]["dev"] != blk[1]["dev"], run.stdout


# -- blk ---------------------------------------------------------------------


@pytest.mark.parametrize("features", ["none", "eventidx,indirect"])
@pytest.mark.parametrize("irq", ["poll", "msix"])
def test_blk_writes_reads_back_and_verifies_a_fresh_sparse_image(tmp_path: Path, irq: str, features: str) -> None:
    run = run_probe(
        f"probe.test=blk probe.irq={irq} probe.features={features}", "--disk", str(_disk(tmp_path)), timeout=120
    )
    assert _passed(run), run.stdout + run.stderr
    blk = run.line("capacity")
    assert blk["capacity"] == str(DISK_SECTORS) and blk["ro"] == "0", blk
    assert int(blk["negotiated"], 16) & (1 << 32), "VIRTIO_F_VERSION_1 not negotiated"
    virtio = run.line("device_features")
    assert virtio["irq"] == irq
    for phase in ("seq_write", "seq_read", "rand_write", "rand_read"):
        fields = next(f for f in _tagged(run, "blk", "phase") if f["phase"] == phase)
        assert "error" not in fields and "failed" not in fields, fields
    assert run.line("beyond_capacity")["beyond_capacity"] == "IOERR"
    assert run.line("after_error")["after_error"] == "OK"
    summary = run.line("verified")
    assert int(summary["verified"]) > 2048 and summary["mismatches"] == "0", summary
    if irq == "msix":
        assert int(summary["irqs"]) > 0, summary


def test_blk_flush_and_write_zeroes_when_offered(tmp_path: Path) -> None:
    run = run_probe("probe.test=blk", "--disk", str(_disk(tmp_path)), timeout=120)
    assert _passed(run), run.stdout + run.stderr
    negotiated = int(run.line("capacity")["negotiated"], 16)
    if negotiated & (1 << 9):  # VIRTIO_BLK_F_FLUSH
        assert run.line("flush")["flush"] == "OK"
    if negotiated & (1 << 14):  # VIRTIO_BLK_F_WRITE_ZEROES
        wz = run.line("write_zeroes")
        assert wz["write_zeroes"] == "OK" and wz["zeroed"] == "1", wz
    if negotiated & (1 << 13):  # VIRTIO_BLK_F_DISCARD
        assert run.line("discard")["discard"] == "OK"


@pytest.mark.parametrize("cache", ["writeback", "none"])
def test_blk_pattern_written_by_the_guest_is_in_the_image_file(tmp_path: Path, cache: str) -> None:
    disk = _disk(tmp_path)
    run = run_probe("probe.test=blk", "--disk", f"{disk},cache={cache}", timeout=120)
    assert _passed(run), run.stdout + run.stderr
    pattern = run.line("pattern")
    first, sectors, salt = int(pattern["first"]), int(pattern["sectors"]), int(pattern["salt"])
    assert sectors == 2048
    data = disk.read_bytes()
    assert len(data) == 64 * MiB
    for sector in (first, first + 1, first + 777, first + sectors - 1):
        assert data[sector * SECTOR : (sector + 1) * SECTOR] == _pattern(sector, salt), sector
    bad = [s for s in range(first, first + sectors) if data[s * SECTOR : (s + 1) * SECTOR] != _pattern(s, salt)]
    assert not bad, f"{len(bad)} sectors differ, the first {bad[0]}"
    wz = _tagged(run, "blk", "write_zeroes")
    if wz and wz[0]["write_zeroes"] == "OK":
        start, count = int(wz[0]["sector"]), int(wz[0]["sectors"])
        assert data[start * SECTOR : (start + count) * SECTOR] == bytes(count * SECTOR)


def test_blk_on_a_read_only_disk_refuses_the_write_and_still_reads(tmp_path: Path) -> None:
    disk = _disk(tmp_path)
    before = disk.read_bytes()
    run = run_probe("probe.test=blk", "--disk", f"{disk},ro", timeout=120)
    assert _passed(run), run.stdout + run.stderr
    assert run.line("capacity")["ro"] == "1"
    assert run.line("ro_write")["ro_write"] == "IOERR"
    assert run.line("beyond_capacity")["beyond_capacity"] == "IOERR"
    assert disk.read_bytes() == before


def test_blk_get_id_returns_the_serial(tmp_path: Path) -> None:
    run = run_probe("probe.test=blk probe.n=4", "--disk", f"{_disk(tmp_path)},serial=probe-42", timeout=120)
    assert _passed(run), run.stdout + run.stderr
    get_id = run.line("get_id")
    assert get_id["get_id"] == "OK" and get_id["serial"] == "probe-42", get_id


def test_blk_uses_the_first_of_two_disks(tmp_path: Path) -> None:
    run = run_probe(
        "probe.test=blk probe.n=4",
        "--disk", f"{_disk(tmp_path, 'a.img')},serial=first",
        "--disk", f"{_disk(tmp_path, 'b.img', 16 * MiB)},serial=second",
        timeout=120,
    )
    assert _passed(run), run.stdout + run.stderr
    assert run.line("serial")["serial"] == "first"
    assert run.line("capacity")["capacity"] == str(DISK_SECTORS)


# -- blkbench ----------------------------------------------------------------


@pytest.mark.parametrize("irq", ["poll", "msix"])
def test_blkbench_reports_rates(tmp_path: Path, irq: str) -> None:
    run = run_probe(
        f"probe.test=blkbench probe.mb=8 probe.n=256 probe.irq={irq}", "--disk", str(_disk(tmp_path)), timeout=180
    )
    assert _passed(run), run.stdout + run.stderr
    bench = run.line("seq_write_mbps")
    assert bench["bytes"] == str(8 * MiB) and bench["n"] == "256", bench
    for key in ("seq_write_mbps", "seq_read_mbps", "rand_write_iops", "rand_read_iops", "tsc_hz"):
        assert int(bench[key]) > 0, (key, bench)


# -- rng ---------------------------------------------------------------------


@pytest.mark.parametrize("irq", ["poll", "msix"])
def test_rng_delivers_4096_varied_bytes(irq: str) -> None:
    run = run_probe(f"probe.test=rng probe.irq={irq}", "--rng")
    assert _passed(run), run.stdout + run.stderr
    rng = run.line("distinct")
    assert rng["bytes"] == "4096" and int(rng["distinct"]) > 200, rng


def test_rng_without_a_device_fails_cleanly() -> None:
    run = run_probe("probe.test=rng")
    assert run.line("result")["result"] == "fail" and run.status == 1
    assert "virtio-rng" in run.line("error")["error"]


# -- hostile -----------------------------------------------------------------


@pytest.mark.parametrize("irq", ["poll", "msix"])
def test_hostile_chains_need_a_reset_and_the_device_recovers(tmp_path: Path, irq: str) -> None:
    run = run_probe(f"probe.test=hostile probe.irq={irq}", "--disk", str(_disk(tmp_path)), timeout=120)
    cases = _tagged(run, "hostile", "case")
    names = [f["case"] for f in cases]
    assert names == ["loop", "bad_addr", "zero_len", "long_chain", "indirect_len", "nested_indirect"], run.stdout
    for case in cases:
        assert case["needs_reset"] == "1" and case["completed"] == "0", case
        assert case["recovered"] == "1", case
        if irq == "msix":
            assert int(case["config_irqs"]) >= 1, case
    assert _passed(run), run.stdout + run.stderr


# -- the virtio-MMIO transport -------------------------------------------------------


def test_mmio_windows_named_on_the_command_line_answer_with_magic_version_and_type(tmp_path: Path) -> None:
    run = run_probe("probe.test=rng", "--transport", "mmio", "--disk", str(_disk(tmp_path)), "--rng")
    assert _passed(run), run.stdout + run.stderr
    named = [token.split("=", 1)[1] for token in run.line("cmdline")["cmdline"].split()
             if token.startswith("virtio_mmio.device=")]
    windows = _tagged(run, "virtio-mmio", "magic")
    assert [f"4K@{w['base']}:{w['irq']}" for w in windows] == named and len(named) == 2, run.stdout
    assert [(w["magic"], w["version"], w["device"]) for w in windows] == [("0x74726976", "2", "2"), ("0x74726976", "2", "4")]
    assert len({w["base"] for w in windows}) == len({w["irq"] for w in windows}) == 2, windows


@pytest.mark.parametrize("irq", ["poll", "ioapic"])
def test_rng_over_mmio_delivers_4096_varied_bytes(irq: str) -> None:
    run = run_probe(f"probe.test=rng probe.irq={irq}", "--transport", "mmio", "--rng")
    assert _passed(run), run.stdout + run.stderr
    virtio = run.line("device_features")
    assert (virtio["transport"], virtio["irq"]) == ("mmio", irq), virtio
    rng = run.line("distinct")
    assert rng["bytes"] == "4096" and int(rng["distinct"]) > 200, rng
    if irq == "ioapic":
        assert int(rng["irqs"]) > 0, rng


@pytest.mark.parametrize("features", ["none", "eventidx,indirect"])
@pytest.mark.parametrize("irq", ["poll", "ioapic"])
def test_blk_over_mmio_writes_the_pattern_into_the_image_file_and_reads_it_back(
    tmp_path: Path, irq: str, features: str
) -> None:
    disk = _disk(tmp_path)
    run = run_probe(f"probe.test=blk probe.irq={irq} probe.features={features}", "--transport", "mmio",
                    "--disk", f"{disk},serial=mm-1", timeout=120)
    assert _passed(run), run.stdout + run.stderr
    assert (run.line("device_features")["transport"], run.line("device_features")["irq"]) == ("mmio", irq)
    assert run.line("get_id")["serial"] == "mm-1"
    summary = run.line("verified")
    assert int(summary["verified"]) > 2048 and summary["mismatches"] == "0", summary
    if irq == "ioapic":  # each wait ended on the device's IOAPIC line, acknowledged through InterruptACK
        assert int(summary["irqs"]) > 0, summary
    pattern = run.line("pattern")
    first, sectors, salt = int(pattern["first"]), int(pattern["sectors"]), int(pattern["salt"])
    data = disk.read_bytes()
    bad = [s for s in range(first, first + sectors) if data[s * SECTOR : (s + 1) * SECTOR] != _pattern(s, salt)]
    assert sectors == 2048 and not bad, f"{len(bad)} sectors differ"


def test_hostile_chains_over_mmio_need_a_reset_and_the_device_recovers(tmp_path: Path) -> None:
    run = run_probe("probe.test=hostile", "--transport", "mmio", "--disk", str(_disk(tmp_path)), timeout=120)
    cases = _tagged(run, "hostile", "case")
    assert len(cases) == 6 and all(c["needs_reset"] == c["recovered"] == "1" for c in cases), run.stdout
    assert _passed(run), run.stdout + run.stderr


def test_a_malformed_virtio_mmio_entry_fails_the_probe_cleanly() -> None:
    run = run_probe("probe.test=rng virtio_mmio.device=4K@0xf0000000", "--rng")
    assert run.line("result")["result"] == "fail" and run.status == 1
    assert run.line("error")["error"] == "bad virtio_mmio.device= entry: virtio_mmio.device=4K@0xf0000000"


@pytest.mark.parametrize("transport,irq,message", [
    ("pci", "ioapic", "probe.irq=ioapic: a virtio-PCI device interrupts through MSI-X (probe.irq=msix)"),
    ("mmio", "msix", "probe.irq=msix: a virtio-mmio device interrupts on an IOAPIC line (probe.irq=ioapic)"),
])
def test_an_interrupt_mode_the_transport_lacks_fails_the_probe_cleanly(transport: str, irq: str, message: str) -> None:
    run = run_probe(f"probe.test=rng probe.irq={irq}", "--transport", transport, "--rng")
    assert run.line("result")["result"] == "fail" and run.status == 1
    assert run.line("error")["error"] == message
