"""SeaBIOS (Debian's bios.bin) run by pyhv from the reset vector: what the firmware printed
on its debug port about the machine pyhv gave it, and the ACPI tables it installed in
guest memory from pyhv's etc/table-loader."""

from __future__ import annotations

import os
import select
import signal
import struct
import subprocess
import sys
import time
from pathlib import Path

import pytest

from pyhv.memory import GuestMemory
from pyhv.model import describe
from pyhv.vmm import build

from ..conftest import ROOT

pytestmark = pytest.mark.kvm

SEABIOS = Path("/usr/share/seabios/bios.bin")
MiB = 1 << 20


def _firmware_output(*args: str, until: str, timeout: float = 180) -> list[str]:
    """pyhv's console lines up to the end of the first holding ``until`` (the firmware then
    waits for a boot device for ever: pyhv is stopped by a signal)."""
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    p = subprocess.Popen([sys.executable, "-m", "pyhv", "run", "--firmware", str(SEABIOS), *args],
                         stdout=subprocess.PIPE, stderr=subprocess.PIPE, stdin=subprocess.DEVNULL, env=env)
    assert p.stdout is not None
    text, deadline = b"", time.monotonic() + timeout
    try:
        while b"\n" not in text.partition(until.encode())[2] and time.monotonic() < deadline:  # its whole line
            if select.select([p.stdout], [], [], 1.0)[0]:
                chunk = os.read(p.stdout.fileno(), 65536)
                if not chunk:
                    break
                text += chunk
        p.send_signal(signal.SIGTERM)
        p.wait(timeout=20)
    finally:
        p.kill()
        p.wait()
    return text.decode(errors="replace").splitlines()


def test_seabios_prints_its_banner_and_finds_fw_cfg_memory_and_cpus() -> None:
    lines = _firmware_output("--memory", "128M", "--vcpus", "2", until="No bootable device")
    assert any(line.startswith("SeaBIOS (version ") for line in lines), lines
    assert {"Running on KVM", "Found QEMU fw_cfg", "QEMU fw_cfg DMA interface supported"} <= set(lines)
    # the memory map it read from etc/e820: conventional memory, then RAM from 1 MiB to the top
    assert f"qemu/e820: addr 0x0000000000100000 len {128 * MiB - MiB:#018x} [RAM]" in lines
    assert "Found 2 cpu(s) max supported 2 cpu(s)" in lines
    assert any(line.startswith("No bootable device.") for line in lines)


BOOTSECTOR = ROOT / "guests" / "build" / "bootsector.bin"


@pytest.mark.parametrize("rom", ["bios.bin", "bios-256k.bin"])
def test_seabios_boots_a_boot_sector_from_a_virtio_blk_disk_and_resumes_it_after_a_warm_reset(tmp_path: Path, rom: str) -> None:
    disk = tmp_path / "disk.img"
    disk.write_bytes(BOOTSECTOR.read_bytes().ljust(1 << 20, b"\0"))
    p = subprocess.run([sys.executable, "-m", "pyhv", "run", "--firmware", str(SEABIOS.with_name(rom)),
                        "--disk", str(disk), "--debug-exit=qemu"], capture_output=True, text=True,
                       env=dict(os.environ, PYTHONPATH=str(ROOT)), timeout=300, stdin=subprocess.DEVNULL, check=False)
    lines = p.stdout.splitlines()
    # SeaBIOS found the disk on PCI (its BAR where SeaBIOS put it), read sector 0 and jumped to it
    assert "Booting from Hard Disk..." in lines and "Booting from 0000:7c00" in lines, p.stdout + p.stderr
    boot = [line for line in lines if line.startswith("bootsector: ")]
    # the sector asked for a warm reset (CMOS 0x0F = 0x0A, resume through 40:67, reset via 0xCF9);
    # RAM and CMOS survived it, and SeaBIOS read the byte and jumped back into the sector
    assert boot == ["bootsector: loaded drive=0x80", "bootsector: warm reset shutdown=0x0a", "bootsector: resumed"]
    assert "In resume (status=10)" in lines
    assert p.returncode == (0x21 << 1) | 1  # the boot sector's debug-exit value, QEMU's mapping


def _table(memory: GuestMemory, addr: int) -> bytes:
    """The ACPI table at ``addr``, as long as its header says."""
    return memory.read(addr, struct.unpack("<I", memory.read(addr + 4, 4))[0])


def test_seabios_installs_pyhvs_acpi_tables_from_the_table_loader(tmp_path: Path) -> None:
    log = tmp_path / "console"
    machine = build(describe(firmware=str(SEABIOS), memory="128M", serial=f"file:{log}"))
    try:
        machine.start()
        deadline = time.monotonic() + 180
        while b"No bootable device" not in log.read_bytes() and time.monotonic() < deadline:
            time.sleep(0.2)
        machine.pause()
        fseg = bytes(machine.memory.read(0xE0000, 0x20000))
        at = next(i for i in range(0, len(fseg), 16) if fseg[i : i + 8] == b"RSD PTR ")  # where an OS looks
        rsdp = fseg[at : at + 36]
        xsdt = _table(machine.memory, struct.unpack_from("<Q", rsdp, 24)[0])
        tables = [_table(machine.memory, a) for a in struct.unpack_from(f"<{(len(xsdt) - 36) // 8}Q", xsdt, 36)]
        fadt = next(t for t in tables if t[:4] == b"FACP")
        dsdt = _table(machine.memory, struct.unpack_from("<Q", fadt, 0x8C)[0])
    finally:
        machine.close()
    assert (rsdp[9:15], rsdp[15], sum(rsdp[:20]) % 256, sum(rsdp) % 256) == (b"PYHV  ", 2, 0, 0)
    assert sorted(t[:4] for t in tables) == [b"APIC", b"FACP", b"MCFG"]
    assert all(sum(t) % 256 == 0 and t[10:16] == b"PYHV  " for t in (xsdt, dsdt, *tables)) and dsdt[:4] == b"DSDT"


def test_firmware_that_is_not_a_rom_image_is_refused_in_one_line(tmp_path: Path) -> None:
    bad = tmp_path / "rom"
    bad.write_bytes(b"\x90" * 1000)
    p = subprocess.run([sys.executable, "-m", "pyhv", "run", "--firmware", str(bad)], capture_output=True, text=True,
                       env=dict(os.environ, PYTHONPATH=str(ROOT)), timeout=60, check=False)
    assert p.returncode == 2 and p.stderr.splitlines() == [
        f"pyhv: {bad}: a firmware image is a whole number of 64 KiB, at most 16 MiB (this one is 1000 bytes)"]
