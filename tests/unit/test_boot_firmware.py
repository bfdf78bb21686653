"""The kernel items a firmware's Linux loader reads from fw_cfg, as QEMU fills them."""

from __future__ import annotations

import struct
from pathlib import Path

import pytest

from pyhv.boot import firmware, linux
from pyhv.devices.legacy import fw_cfg as f
from pyhv.errors import ImageError

from .fakes import BzSpec, build_bzimage
from .virtio_fakes import FakeGuestRam

MiB = 1 << 20


def test_bzimage_gets_setup_kernel_initrd_and_cmdline_at_qemus_addresses(tmp_path: Path) -> None:
    image = build_bzimage(BzSpec(payload=b"\x90" * 0x1000))
    (tmp_path / "bz").write_bytes(image)
    (tmp_path / "rd").write_bytes(b"R" * 5000)

    items = firmware.kernel_items(str(tmp_path / "bz"), str(tmp_path / "rd"), "console=ttyS0", 256 * MiB)

    setup_addr, setup = items.setup
    initrd_addr, initrd = items.initrd
    assert (setup_addr, len(setup), items.kernel) == (0x10000, 5 * 512, (0x100000, image[5 * 512 :]))
    assert items.cmdline == (0x20000, b"console=ttyS0\0") and initrd == b"R" * 5000
    assert initrd_addr == (256 * MiB - firmware.ACPI_DATA_SIZE - 1 - 5000) & ~0xFFF
    assert (setup[linux.OFF_TYPE_OF_LOADER], setup[linux.OFF_LOADFLAGS] & linux.CAN_USE_HEAP) == (0xB0, 0x80)
    assert struct.unpack_from("<I", setup, linux.OFF_CMD_LINE_PTR)[0] == 0x20000
    assert struct.unpack_from("<H", setup, linux.OFF_HEAP_END_PTR)[0] == 0x20000 - 0x10000 - 0x200
    assert struct.unpack_from("<II", setup, linux.OFF_RAMDISK_IMAGE) == (initrd_addr, 5000)


def test_initrd_below_initrd_addr_max_when_ram_is_larger(tmp_path: Path) -> None:
    (tmp_path / "bz").write_bytes(build_bzimage(BzSpec(initrd_addr_max=0x3FFFFFF)))
    (tmp_path / "rd").write_bytes(b"R" * 4096)

    items = firmware.kernel_items(str(tmp_path / "bz"), str(tmp_path / "rd"), "", 1024 * MiB)

    assert items.initrd[0] == 0x3FFFFFF - 4096 & ~0xFFF


def test_other_kernels_get_the_command_line_only(tmp_path: Path) -> None:
    (tmp_path / "k").write_bytes(b"\x7fELF" + bytes(60))

    items = firmware.kernel_items(str(tmp_path / "k"), None, "a b", 256 * MiB)

    assert items == firmware.KernelItems(cmdline=(0x20000, b"a b\0"))


def test_initrd_that_cannot_fit_names_the_file(tmp_path: Path) -> None:
    (tmp_path / "bz").write_bytes(build_bzimage(BzSpec()))
    (tmp_path / "rd").write_bytes(b"R" * (20 * MiB))

    with pytest.raises(ImageError, match=r"rd: initrd of 20971520 bytes does not fit below"):
        firmware.kernel_items(str(tmp_path / "bz"), str(tmp_path / "rd"), "", 16 * MiB)


def test_fw_cfg_serves_the_kernel_items_read_only() -> None:
    ram = FakeGuestRam(1 << 20)
    dev = f.FwCfg(ram, ram_size=1 << 20, nb_cpus=1, max_cpus=1,
                  kernel=firmware.KernelItems(cmdline=(0x20000, b"x=1\0"), kernel=(0x100000, b"K" * 10))._asdict())

    def read(key: int, n: int) -> bytes:
        dev.ports.write(0, 2, key)
        return bytes(dev.ports.read(1, 1) for _ in range(n))

    assert (read(f.KEY_CMDLINE_ADDR, 4), read(f.KEY_CMDLINE_SIZE, 4), read(f.KEY_CMDLINE_DATA, 4)) == (
        struct.pack("<I", 0x20000), struct.pack("<I", 4), b"x=1\0")
    assert (read(f.KEY_KERNEL_SIZE, 4), read(f.KEY_KERNEL_DATA, 10)) == (struct.pack("<I", 10), b"K" * 10)
    assert dev.item(f.KEY_SETUP_SIZE) is None and dev.item(f.KEY_INITRD_DATA) is None
    ram.scribble(0x1000, f.DESCRIPTOR.pack(f.KEY_CMDLINE_DATA << 16 | f.DMA_CTL_SELECT | f.DMA_CTL_WRITE, 4, 0x2000))
    dev.write_dma(0, 8, int.from_bytes((0x1000).to_bytes(8, "big"), "little"))
    assert (struct.unpack(">I", ram.read(0x1000, 4))[0], read(f.KEY_CMDLINE_DATA, 4)) == (f.DMA_CTL_ERROR, b"x=1\0")


@pytest.mark.parametrize("size,rom_addr,low_addr", [(0x10000, 0xFFFF0000, 0xF0000), (0x20000, 0xFFFE0000, 0xE0000),
                                                    (0x40000, 0xFFFC0000, 0xE0000)])
def test_rom_sits_below_4gib_and_its_last_128k_below_1mib(tmp_path: Path, size: int, rom_addr: int,
                                                        low_addr: int) -> None:
    rom = bytes(i & 0xFF for i in range(size))
    (tmp_path / "bios").write_bytes(rom)

    image = firmware.read_firmware(str(tmp_path / "bios"))

    assert (image.rom_addr, image.rom, image.low_addr) == (rom_addr, rom, low_addr)
    assert image.low == rom[-(0x100000 - low_addr):]


@pytest.mark.parametrize("size", [0, 0x1000, 0x10001, 17 * MiB])
def test_rom_that_is_not_whole_64k_blocks_or_too_large_is_refused(tmp_path: Path, size: int) -> None:
    (tmp_path / "bios").write_bytes(bytes(size))

    with pytest.raises(ImageError, match=f"whole number of 64 KiB, at most 16 MiB \\(this one is {size} bytes\\)"):
        firmware.read_firmware(str(tmp_path / "bios"))
