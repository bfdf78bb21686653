"""fw_cfg: the port interface, the DMA interface and the guest's hostile values."""

from __future__ import annotations

import json
import os
import struct
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from pyhv.boot import acpi, aml
from pyhv.boot.layout import e820_map
from pyhv.devices.legacy import fw_cfg as f
from pyhv.devices.state import DeviceStateError
from pyhv.errors import UsageError
from pyhv.model import FW_CFG_DATA_MAX as MAX_DATA

from .virtio_fakes import FakeGuestRam

RAM = 1 << 20
DESC = 0x1000  # where the tests put a DMA descriptor
BUF = 0x2000  # and the buffer it points at
USER = b"hello from the host\n" * 3


def _device(ram: FakeGuestRam | None = None) -> tuple[f.FwCfg, FakeGuestRam]:
    ram = ram or FakeGuestRam(RAM)
    files = [("opt/test", USER), (f.E820_FILE, f.e820_file(e820_map([(0, RAM)]))), (f.BOOTORDER_FILE, b"")]
    return f.FwCfg(ram, ram_size=RAM, nb_cpus=2, max_cpus=2, files=files), ram


def _port_read(dev: f.FwCfg, key: int, n: int) -> bytes:
    dev.ports.write(0, 2, key)
    return bytes(dev.ports.read(1, 1) for _ in range(n))


def _dma(dev: f.FwCfg, ram: FakeGuestRam, control: int, length: int, address: int = BUF, at: int = DESC) -> int:
    """One DMA request the way a driver makes it: descriptor, high half, low half; the control word after."""
    ram.scribble(at, f.DESCRIPTOR.pack(control, length, address))
    high, low = at >> 32, at & 0xFFFF_FFFF
    dev.dma.write(0, 4, struct.unpack("<I", struct.pack(">I", high))[0])
    dev.dma.write(4, 4, struct.unpack("<I", struct.pack(">I", low))[0])
    return int(struct.unpack(">I", ram.read(at, 4))[0]) if ram.contains(at, 4) else -1


def _select(key: int) -> int:
    return key << 16 | f.DMA_CTL_SELECT


# --- the port interface -------------------------------------------------------------------------


def test_signature_id_and_cpu_counts_read_through_the_ports() -> None:
    dev, _ = _device()
    assert _port_read(dev, f.KEY_SIGNATURE, 4) == b"QEMU"
    assert _port_read(dev, f.KEY_ID, 4) == struct.pack("<I", f.ID_TRADITIONAL | f.ID_DMA)
    assert _port_read(dev, f.KEY_NB_CPUS, 2) == _port_read(dev, f.KEY_MAX_CPUS, 2) == b"\x02\x00"
    assert _port_read(dev, f.KEY_RAM_SIZE, 8) == struct.pack("<Q", RAM)
    assert _port_read(dev, f.KEY_UUID, 16) == bytes(16)


def test_reads_past_an_items_end_return_zeros_and_stay_there() -> None:
    dev, _ = _device()
    assert _port_read(dev, f.KEY_SIGNATURE, 8) == b"QEMU\0\0\0\0"
    assert dev.offset == 4


def test_selector_without_an_item_reads_zeros() -> None:
    dev, _ = _device()
    assert _port_read(dev, 0x1234, 4) == _port_read(dev, f.KEY_INVALID, 4) == bytes(4)


def test_write_channel_bit_is_ignored_in_lookups() -> None:
    dev, _ = _device()
    assert _port_read(dev, f.KEY_WRITE_CHANNEL | f.KEY_SIGNATURE, 4) == b"QEMU"


def test_selecting_again_starts_the_item_over() -> None:
    dev, _ = _device()
    _port_read(dev, f.KEY_SIGNATURE, 2)
    assert _port_read(dev, f.KEY_SIGNATURE, 4) == b"QEMU"


def test_data_writes_and_wide_reads_change_nothing() -> None:
    dev, _ = _device()
    dev.ports.write(0, 2, f.KEY_SIGNATURE)
    dev.ports.write(1, 1, 0x55)
    assert dev.ports.read(0, 2) == 0xFFFF and dev.ports.read(1, 4) == 0xFFFF_FFFF
    assert bytes(dev.ports.read(0, 1) for _ in range(4)) == b"QEMU"  # a byte read at 0x510 is data too


def test_dma_register_reads_as_its_signature() -> None:
    dev, _ = _device()
    assert struct.pack("<I", dev.dma.read(0, 4)) + struct.pack("<I", dev.dma.read(4, 4)) == b"QEMU CFG"
    assert struct.pack("<Q", dev.dma.read(0, 8)) == b"QEMU CFG" and dev.dma.read(7, 2) == ord("G")


# --- the directory and the files ------------------------------------------------------------------


def _directory(dev: f.FwCfg) -> list[tuple[int, int, str]]:
    count = struct.unpack(">I", _port_read(dev, f.KEY_FILE_DIR, 4))[0]
    raw = _port_read(dev, f.KEY_FILE_DIR, 4 + 64 * count)[4:]
    out = []
    for i in range(count):
        size, select, reserved, name = struct.unpack(">IHH56s", raw[64 * i : 64 * i + 64])
        assert reserved == 0 and name.rstrip(b"\0").find(b"\0") < 0
        out.append((size, select, name.rstrip(b"\0").decode()))
    return out


def test_directory_lists_every_file_sorted_by_name_with_size_and_key() -> None:
    dev, _ = _device()
    assert _directory(dev) == [
        (0, 0x20, "bootorder"), (40, 0x21, "etc/e820"), (len(USER), 0x22, "opt/test"),  # e820: RAM, BIOS area
    ]


def test_files_read_back_by_their_directory_key() -> None:
    dev, _ = _device()
    assert _port_read(dev, dev.key_of("opt/test"), len(USER)) == USER
    assert _port_read(dev, dev.key_of("etc/e820"), 20) == struct.pack("<QQI", 0, 0x9FC00, 1)
    assert dev.item(dev.key_of("bootorder")) == b""


def test_e820_file_holds_the_map_the_guest_boots_with() -> None:
    ranges = [(0, 3 << 30), (4 << 30, 1 << 30)]
    blob = f.e820_file(e820_map(ranges))
    assert [struct.unpack_from("<QQI", blob, i) for i in range(0, len(blob), 20)] == [
        (e.addr, e.size, e.type) for e in e820_map(ranges)
    ]


@pytest.mark.parametrize("files", [
    [("a", b""), ("a", b"x")], [("x" * 56, b"")], [("", b"")], [("é", b"")],
])
def test_bad_file_tables_are_wiring_errors(files: list[tuple[str, bytes]]) -> None:
    with pytest.raises(ValueError):
        f.FwCfg(FakeGuestRam(RAM), ram_size=RAM, nb_cpus=1, max_cpus=1, files=files)


def test_acpi_node_is_qemu0002_with_the_port_range() -> None:
    node = acpi.fw_cfg_device(f.ACPI_HID, f.PORT_BASE, f.ACPI_IO_LENGTH)
    assert aml.string("QEMU0002") in node and aml.io_port(0x510, 0x0C) in node


# --- DMA: every control combination ----------------------------------------------------------------


def test_dma_select_and_read_copies_the_item_and_reports_success() -> None:
    dev, ram = _device()
    assert _dma(dev, ram, _select(dev.key_of("opt/test")) | f.DMA_CTL_READ, len(USER)) == 0
    assert ram.read(BUF, len(USER)) == USER and dev.offset == len(USER) and dev.dma_high == 0


def test_dma_read_past_the_end_fills_zeros() -> None:
    dev, ram = _device()
    ram.scribble(BUF, b"\xaa" * 16)
    assert _dma(dev, ram, _select(f.KEY_SIGNATURE) | f.DMA_CTL_READ, 16) == 0
    assert ram.read(BUF, 16) == b"QEMU" + bytes(12)


def test_dma_read_of_a_selector_without_an_item_fills_zeros() -> None:
    dev, ram = _device()
    ram.scribble(BUF, b"\xaa" * 8)
    assert _dma(dev, ram, _select(0x3FFF) | f.DMA_CTL_READ, 8) == 0
    assert ram.read(BUF, 8) == bytes(8)


def test_dma_read_continues_from_the_port_offset() -> None:
    dev, ram = _device()
    _port_read(dev, f.KEY_SIGNATURE, 1)
    assert _dma(dev, ram, f.DMA_CTL_READ, 3) == 0 and ram.read(BUF, 3) == b"EMU"


def test_dma_skip_moves_the_offset_no_further_than_the_end() -> None:
    dev, ram = _device()
    assert _dma(dev, ram, _select(dev.key_of("opt/test")) | f.DMA_CTL_SKIP, 6) == 0
    assert _port_read_rest(dev, 5) == USER[6:11]
    assert _dma(dev, ram, f.DMA_CTL_SKIP, 0xFFFF_FFFF) == 0 and dev.offset == len(USER)


def _port_read_rest(dev: f.FwCfg, n: int) -> bytes:
    return bytes(dev.ports.read(1, 1) for _ in range(n))


def test_dma_select_alone_selects() -> None:
    dev, ram = _device()
    assert _dma(dev, ram, _select(f.KEY_NB_CPUS), 0) == 0
    assert _port_read_rest(dev, 2) == b"\x02\x00"


@pytest.mark.parametrize("extra", [0, f.DMA_CTL_SELECT])
def test_dma_write_to_a_read_only_item_fails_and_changes_nothing(extra: int) -> None:
    dev, ram = _device()
    key = dev.key_of("opt/test")
    dev.select(key)
    ram.scribble(BUF, b"X" * 8)
    assert _dma(dev, ram, key << 16 | extra | f.DMA_CTL_WRITE, 8) == f.DMA_CTL_ERROR
    assert _port_read(dev, key, len(USER)) == USER


def test_read_wins_over_write_and_skip_as_in_qemu() -> None:
    dev, ram = _device()
    control = _select(f.KEY_SIGNATURE) | f.DMA_CTL_READ | f.DMA_CTL_WRITE | f.DMA_CTL_SKIP
    assert _dma(dev, ram, control, 4) == 0 and ram.read(BUF, 4) == b"QEMU"


def test_write_wins_over_skip() -> None:
    dev, ram = _device()
    assert _dma(dev, ram, _select(f.KEY_SIGNATURE) | f.DMA_CTL_WRITE | f.DMA_CTL_SKIP, 4) == f.DMA_CTL_ERROR
    assert dev.offset == 0


def test_error_bit_set_by_the_guest_fails_the_request_before_it_selects() -> None:
    dev, ram = _device()
    assert _dma(dev, ram, _select(f.KEY_ID) | f.DMA_CTL_ERROR | f.DMA_CTL_READ, 4) == f.DMA_CTL_ERROR
    assert dev.selector == f.KEY_SIGNATURE and ram.read(BUF, 4) == bytes(4)


def test_zero_length_requests_succeed_whatever_they_ask() -> None:
    dev, ram = _device()
    for op in (f.DMA_CTL_READ, f.DMA_CTL_WRITE, f.DMA_CTL_SKIP, 0):
        assert _dma(dev, ram, _select(f.KEY_SIGNATURE) | op, 0, address=1 << 63) == 0


def test_one_64bit_write_starts_a_transfer_too() -> None:
    dev, ram = _device()
    ram.scribble(DESC, f.DESCRIPTOR.pack(_select(f.KEY_SIGNATURE) | f.DMA_CTL_READ, 4, BUF))
    dev.dma.write(0, 8, struct.unpack("<Q", struct.pack(">Q", DESC))[0])
    assert ram.read(DESC, 4) == bytes(4) and ram.read(BUF, 4) == b"QEMU"


def test_high_half_alone_starts_nothing_and_is_cleared_by_the_transfer() -> None:
    dev, ram = _device(FakeGuestRam(RAM, base=1 << 32))
    at = (1 << 32) + DESC
    assert _dma(dev, ram, _select(f.KEY_SIGNATURE) | f.DMA_CTL_READ, 4, address=(1 << 32) + BUF, at=at) == 0
    assert ram.read((1 << 32) + BUF, 4) == b"QEMU" and dev.dma_high == 0


# --- DMA: hostile values ------------------------------------------------------------------------------


def test_descriptor_outside_ram_fails_without_touching_memory() -> None:
    dev, ram = _device()
    ram.log = []
    assert _dma(dev, ram, 0, 0, at=0xD000_0000) == -1
    assert [kind for kind, _, _ in ram.log] == [] and dev.dma_high == 0
    assert _port_read(dev, f.KEY_SIGNATURE, 4) == b"QEMU"


def test_descriptor_straddling_the_end_of_ram_gets_the_error_in_its_control_word() -> None:
    dev, ram = _device()
    at = RAM - 8
    ram.scribble(at, struct.pack(">II", _select(f.KEY_SIGNATURE) | f.DMA_CTL_READ, 4))
    dev.dma.write(4, 4, struct.unpack("<I", struct.pack(">I", at))[0])
    assert struct.unpack(">I", ram.read(at, 4))[0] == f.DMA_CTL_ERROR and ram.violations == 0


@pytest.mark.parametrize("address,length", [
    (0xD000_0000, 4),  # in the MMIO hole
    (RAM - 2, 4),  # runs off the end of RAM
    (BUF, 0xFFFF_FFFF),  # huge
    ((1 << 64) - 2, 4),  # wraps around 64 bits
])
def test_read_into_a_buffer_outside_ram_fails_and_writes_nothing(address: int, length: int) -> None:
    dev, ram = _device()
    ram.scribble(BUF, b"\xaa" * 16)
    ram.scribble(RAM - 16, b"\xbb" * 16)
    assert _dma(dev, ram, _select(f.KEY_SIGNATURE) | f.DMA_CTL_READ, length, address=address) == f.DMA_CTL_ERROR
    assert ram.read(BUF, 16) == b"\xaa" * 16 and ram.read(RAM - 16, 16) == b"\xbb" * 16
    assert dev.offset == 0 and ram.violations == 0


def test_large_read_is_copied_in_chunks_within_ram() -> None:
    big = bytes(range(256)) * ((3 << 20) // 256 + 1)
    ram = FakeGuestRam(8 << 20)
    dev = f.FwCfg(ram, ram_size=8 << 20, nb_cpus=1, max_cpus=1, files=[("opt/big", big)])
    assert _dma(dev, ram, _select(dev.key_of("opt/big")) | f.DMA_CTL_READ, len(big) + 100, address=1 << 20) == 0
    assert ram.read(1 << 20, len(big)) == big and ram.read((1 << 20) + len(big), 100) == bytes(100)


@settings(max_examples=200, deadline=None)
@given(
    ops=st.lists(st.one_of(
        st.tuples(st.just("port"), st.integers(0, 1), st.sampled_from([1, 2, 4]), st.integers(0, 0xFFFF_FFFF)),
        st.tuples(st.just("dma"), st.integers(0, 7), st.sampled_from([1, 2, 4, 8]), st.integers(0, (1 << 64) - 1)),
        st.tuples(st.just("desc"), st.integers(0, 0xFFFF_FFFF), st.integers(0, 0xFFFF_FFFF),
                  st.one_of(st.integers(0, RAM + 64), st.integers(0, (1 << 64) - 1))),
    ), max_size=12),
)
def test_hostile_registers_and_descriptors_never_fail_the_vmm(ops: list[tuple[str, int, int, int]]) -> None:
    dev, ram = _device()
    for kind, a, b, c in ops:
        if kind == "port":
            dev.ports.write(a, b, c & ((1 << (8 * b)) - 1))
            dev.ports.read(a, b)
        elif kind == "dma":
            dev.dma.write(a, b, c & ((1 << (8 * b)) - 1))
            dev.dma.read(a, b)
        else:
            result = _dma(dev, ram, a, b, address=c)
            assert result in (0, f.DMA_CTL_ERROR)
    assert ram.violations == 0
    item = dev.item(dev.selector)
    assert 0 <= dev.offset <= (len(item) if item is not None else 0)
    fresh, _ = _device()
    fresh.set_state(json.loads(json.dumps(dev.state())))
    assert fresh.state() == dev.state()


# --- state ---------------------------------------------------------------------------------------------


def test_state_round_trips_mid_item_and_mid_address() -> None:
    dev, _ = _device()
    _port_read(dev, dev.key_of("opt/test"), 5)
    dev.dma.write(0, 4, 0x1234_5678)
    fresh, _ = _device()
    fresh.set_state(json.loads(json.dumps(dev.state())))
    assert fresh.state() == dev.state() and _port_read_rest(fresh, 3) == USER[5:8]


@pytest.mark.parametrize("bad", [
    {"selector": 0x22, "offset": len(USER) + 1, "dma_high": 0},
    {"selector": 0x1234, "offset": 1, "dma_high": 0},
    {"selector": 0x10000, "offset": 0, "dma_high": 0},
    {"selector": 0, "offset": 0, "dma_high": 1 << 32},
    {"selector": 0, "offset": 0},
    {"selector": True, "offset": 0, "dma_high": 0},
])
def test_bad_state_is_refused_and_changes_nothing(bad: dict[str, object]) -> None:
    dev, _ = _device()
    before = dev.state()
    with pytest.raises(DeviceStateError):
        dev.set_state(bad)
    assert dev.state() == before


# --- user entries: host files read when the machine is built ------------------------------------------


def test_user_file_is_read_whole(tmp_path: Path) -> None:
    from pyhv.vmm.builder import _read_fw_cfg_file

    (tmp_path / "blob").write_bytes(USER)
    assert _read_fw_cfg_file("fw_cfg[0].file", str(tmp_path / "blob")) == USER


def _too_large(path: Path) -> None:
    with open(path, "wb") as f:
        f.truncate(MAX_DATA + 1)


@pytest.mark.parametrize("make,message", [
    (lambda p: None, "cannot read: No such file or directory"),
    (Path.mkdir, "not a regular file"),
    (os.mkfifo, "not a regular file"),
    (_too_large, "larger than 16 MiB"),
])
def test_unusable_user_file_is_one_line_naming_the_key(
    tmp_path: Path, make: Callable[[Path], object], message: str
) -> None:
    from pyhv.vmm.builder import _read_fw_cfg_file

    path = tmp_path / "f"
    make(path)
    with pytest.raises(UsageError) as e:
        _read_fw_cfg_file("fw_cfg[2].file", str(path))
    assert str(e.value) == f"fw_cfg[2].file {path}: {message}"


# --- the machine's devices: fw_cfg in snapshots -------------------------------------------------------


def _machine_devices(mmio: Any = None) -> Any:
    """A machine's devices without a VM: fw_cfg with one file, no PCI devices, and ``mmio``'s
    (an empty MmioWiring by default)."""
    from pyhv.devices.legacy.acpi_pm import AcpiPm
    from pyhv.devices.legacy.i8042 import I8042
    from pyhv.devices.legacy.port80 import ProgressCodes
    from pyhv.devices.legacy.rtc import Rtc
    from pyhv.devices.legacy.uart import Uart
    from pyhv.vmm.devices import Devices
    from pyhv.vmm.mmio import MmioWiring
    from pyhv.vmm.pci import PciWiring

    dev, _ = _device()
    return Devices(com1=Uart(lambda data: None), i8042=I8042(lambda: None), rtc=Rtc(clock=lambda: 1e9),
                   progress=ProgressCodes(), acpi_pm=AcpiPm(lambda: None, lambda: None), pci=PciWiring(),
                   mmio=mmio or MmioWiring(), fw_cfg=dev)


def test_machine_state_carries_fw_cfg_into_a_fresh_machine() -> None:
    devices = _machine_devices()
    _port_read(devices.fw_cfg, devices.fw_cfg.key_of("opt/test"), 3)
    fresh = _machine_devices()
    fresh.set_state(json.loads(json.dumps(devices.state())))
    assert fresh.fw_cfg.state() == devices.fw_cfg.state() == {"selector": 0x22, "offset": 3, "dma_high": 0}


def test_machine_state_from_before_fw_cfg_leaves_it_as_built() -> None:
    old = _machine_devices().state()
    del old["fw_cfg"]
    fresh = _machine_devices()
    fresh.set_state(old)
    assert fresh.fw_cfg.state() == {"selector": 0, "offset": 0, "dma_high": 0}
