import pytest

from pyhv.errors import MemoryAccessError, PyhvError
from pyhv.memory import GiB, GuestMemory, MiB, x86_ram_layout


def test_small_guest_is_one_low_range() -> None:
    assert x86_ram_layout(256 * MiB) == [(0, 256 * MiB)]


def test_large_guest_splits_around_the_mmio_hole() -> None:
    assert x86_ram_layout(5 * GiB) == [(0, 3 * GiB), (4 * GiB, 2 * GiB)]


def test_unaligned_size_is_refused() -> None:
    with pytest.raises(PyhvError):
        x86_ram_layout(MiB + 1)


@pytest.fixture
def mem() -> GuestMemory:
    m = GuestMemory(16 * MiB)
    yield m
    m.close()


def test_write_then_read_returns_the_bytes(mem: GuestMemory) -> None:
    mem.write(0x1234, b"pyhv")
    assert mem.read(0x1234, 4) == b"pyhv"


def test_write_past_the_end_raises_and_writes_nothing(mem: GuestMemory) -> None:
    mem.write(16 * MiB - 2, b"\0\0")
    with pytest.raises(MemoryAccessError):
        mem.write(16 * MiB - 2, b"abc")
    assert mem.read(16 * MiB - 2, 2) == b"\0\0"


def test_negative_address_is_refused(mem: GuestMemory) -> None:
    with pytest.raises(MemoryAccessError):
        mem.read(-1, 1)


def test_access_in_the_mmio_hole_is_refused() -> None:
    m = GuestMemory(4 * GiB)
    try:
        with pytest.raises(MemoryAccessError):
            m.read(3 * GiB + 16, 4)
    finally:
        m.close()


def test_access_straddling_two_regions_is_refused() -> None:
    m = GuestMemory(4 * GiB)
    try:
        assert not m.contains(3 * GiB - 2, 4)
    finally:
        m.close()


def test_memfd_backing_reads_back_what_was_written() -> None:
    m = GuestMemory(16 * MiB, memfd=True)
    try:
        m.write(0, b"x" * 10)
        assert m.read(0, 10) == b"x" * 10
    finally:
        m.close()


def test_host_address_is_inside_the_mapping(mem: GuestMemory) -> None:
    assert mem.host_address(0x1000) == mem.regions[0].host_addr + 0x1000


def test_access_after_close_is_a_memory_access_error() -> None:
    m = GuestMemory(16 * MiB)
    m.close()
    with pytest.raises(MemoryAccessError):
        m.read(0, 4)


class _Slots:
    def __init__(self) -> None:
        self.slots: list[tuple[int, int, int, int]] = []

    def set_user_memory_region(self, slot: int, gpa: int, size: int, host: int, flags: int = 0) -> None:
        self.slots.append((slot, gpa, size, flags))


def test_rom_is_registered_read_only_after_the_ram_and_is_not_ram() -> None:
    mem = GuestMemory(64 * MiB)
    try:
        mem.add_rom(4 * GiB - 0x20000, b"\xea" * 0x20000)
        vm = _Slots()
        mem.register(vm)
        assert vm.slots == [(0, 0, 64 * MiB, 0), (1, 4 * GiB - 0x20000, 0x20000, 2)]  # KVM_MEM_READONLY
        assert not mem.contains(4 * GiB - 0x20000) and bytes(mem.roms[0].view[:2]) == b"\xea\xea"
    finally:
        mem.close()


@pytest.mark.parametrize("gpa,size", [(32 * MiB, 0x1000), (4 * GiB - 0x1800, 0x1000), (4 * GiB - 0x1000, 0x800)])
def test_rom_over_ram_or_not_page_aligned_is_refused(gpa: int, size: int) -> None:
    mem = GuestMemory(64 * MiB)
    try:
        with pytest.raises(PyhvError, match="ROM at"):
            mem.add_rom(gpa, bytes(size))
    finally:
        mem.close()
