import struct

from pyhv._sys import kvm_h as h
from pyhv.kvm.exits import DebugExit, InternalErrorExit, IoExit, MmioExit, decode


def _page(reason: int, body: bytes) -> bytearray:
    page = bytearray(4096)
    struct.pack_into("<I", page, h.KVM_RUN_OFF_EXIT_REASON, reason)
    page[h.KVM_RUN_OFF_EXIT : h.KVM_RUN_OFF_EXIT + len(body)] = body
    return page


def test_io_exit_decodes_port_and_direction() -> None:
    page = _page(h.KVM_EXIT_IO, struct.pack("<BBHIQ", 1, 1, 0x3F8, 1, 0x1000))
    assert decode(page) == IoExit(h.KVM_EXIT_IO, 0x3F8, 1, True, 1, 0x1000)


def test_mmio_exit_clamps_a_bogus_length() -> None:
    page = _page(h.KVM_EXIT_MMIO, struct.pack("<Q8sIB", 0xD0000000, b"abcdefgh", 99, 1))
    exit = decode(page)
    assert isinstance(exit, MmioExit) and exit.size == 8 and exit.data == b"abcdefgh"


def test_internal_error_keeps_at_most_sixteen_data_words() -> None:
    page = _page(h.KVM_EXIT_INTERNAL_ERROR, struct.pack("<II", 1, 1000) + bytes(128))
    exit = decode(page)
    assert isinstance(exit, InternalErrorExit) and len(exit.data) == 16
    assert exit.description == "emulation failure"


def test_debug_exit_decodes_vector_pc_and_dr6() -> None:
    page = _page(h.KVM_EXIT_DEBUG, struct.pack("<IIQQQ", 1, 0, 0x101000, 0xFFFF0FF1, 0x401))
    assert decode(page) == DebugExit(h.KVM_EXIT_DEBUG, 1, 0x101000, 0xFFFF0FF1, 0x401)
