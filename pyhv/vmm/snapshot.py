"""Snapshots: a whole machine in one file, restored without reading its memory.

File format (version 1), all integers little-endian::

    offset 0      header (72 bytes)
                    magic "PYHVSNAP", u32 version, u32 header size,
                    u64 memory offset, u64 memory length,
                    u64 state offset, u64 state length,
                    sha256 of the header (with this field zeroed) and the state
    offset 4096   guest memory: every RAM range in guest-physical order, each a
                  whole number of pages, at file offset = memory offset + the
                  sizes of the ranges before it.  Pages that were never touched
                  are holes (the file is sparse).
    then          the state: UTF-8 JSON of plain values -- the machine's
                  domain's description, each vCPU (registers, special registers, FPU and
                  XSAVE, XCRs, MSRs, LAPIC, pending events, MP state, debug
                  registers), the in-kernel PIC, IOAPIC and PIT, the guest clock,
                  every device's ``state()``, and a CRC-32 of each extent of
                  memory that was written.

Restore maps each RAM range MAP_PRIVATE from the file: nothing is read until
the guest touches a page, so restore time does not grow with guest size, and
guest writes never reach the file.  Everything but the memory contents is
checked before a vCPU is created: size, magic, version, the checksum, and
every value of the state (a snapshot is untrusted input).  The memory CRCs are
checked on request (:meth:`Snapshot.verify_memory`), since that reads it all.

A confined VMM (pyhv/jail/) sees no directory to make a temporary in: it
writes in place through a descriptor opened for ``PATH`` before it was
confined (``pyhv run --jail --snapshot-on-signal PATH``), emptied first and
given its header last, so a save cut short is refused by restore.  Any other
path is refused there in one line.

A save writes to a new temporary file in the target's directory (created
O_EXCL|O_NOFOLLOW, so it can be nobody else's file) and, once complete (and,
by default, on disk), links it into place only if ``PATH`` does not exist: a
save never replaces a file that is not ours.  With ``force``, an existing
``PATH`` that is a pyhv snapshot (a regular file starting with the magic) is
replaced by a rename, so it is never half overwritten and a machine restored
from ``PATH`` can be saved to ``PATH`` again; anything else is refused.
"""

from __future__ import annotations

import errno
import hashlib
import json
import os
import stat
import struct
import time
import zlib
from typing import TYPE_CHECKING, Any, NamedTuple

from .._sys import kvm_h as h
from .._sys.files import handed
from ..errors import PyhvError
from ..memory import PAGE_SIZE, GuestMemory, Region, x86_ram_layout
from ..model import Description, DescriptionError, check_serial, from_plain, to_plain

if TYPE_CHECKING:
    from .machine import Machine

MAGIC = b"PYHVSNAP"
VERSION = 2  # 2: the state carries the domain's whole description
HEADER = struct.Struct("<8sIIQQQQ32s")
MEMORY_OFFSET = 4096
#: memory is scanned and written in chunks of this size; untouched chunks stay holes
CHUNK = 256 << 10
#: a CRC covers at most this much memory
EXTENT_MAX = 64 << 20
MAX_STATE = 64 << 20
FORMAT = "pyhv-machine"
IRQCHIPS = (h.KVM_IRQCHIP_PIC_MASTER, h.KVM_IRQCHIP_PIC_SLAVE, h.KVM_IRQCHIP_IOAPIC)
IRQCHIP_SIZE = 512
PIT_SIZE = h.sizeof(h.kvm_pit_state2)


class SnapshotError(PyhvError):
    """A snapshot that cannot be restored (truncated, corrupt, incompatible) or saved."""

    exit_status = 2


class SaveInfo(NamedTuple):
    path: str
    size: int  # apparent file size
    allocated: int  # bytes the file takes on disk (holes excluded)
    memory_written: int
    seconds: float


# --- machine state (everything but memory contents) --------------------------------------


def capture(machine: Machine) -> dict[str, Any]:
    """The machine's state as plain values; vCPUs paused and the I/O thread held."""
    from ..vcpu.cpustate import read_state
    from ..vcpu.cpustate import to_plain as vcpu_to_plain

    vm = machine.vm
    return {
        "format": FORMAT,
        "description": to_plain(machine.description),
        "vm": {
            "clock": vm.get_clock(),
            "irqchip": [vm.get_irqchip(chip).hex() for chip in IRQCHIPS],
            "pit": vm.get_pit2().hex(),
        },
        "vcpus": [vcpu_to_plain(read_state(v.vcpu)) for v in machine.vcpus],
        "devices": machine.devices.state(),
    }


def description_from_state(plain: Any, serial: str | None = None) -> Description:
    """The description a snapshot or migration stream carries, checked as any other
    (:func:`pyhv.model.from_plain`); ``serial`` says where COM1 goes now."""
    try:
        description = from_plain(plain)
        if serial is not None:
            description = description._replace(serial=check_serial(serial, ("serial",)))
    except DescriptionError as e:
        raise SnapshotError(f"description: {e}") from None
    return description


def check_state(state: Any, memory_length: int | None = None, serial: str | None = None) -> Any:
    """Check the parts of a captured state that need no devices: format, description,
    VM blobs, every vCPU.  Returns (description, vcpu states)."""
    from ..vcpu.cpustate import from_plain as vcpu_from_plain

    keys = {"format", "description", "vm", "vcpus", "devices"} | ({"memory"} if memory_length is not None else set())
    if not isinstance(state, dict) or set(state) != keys:
        raise SnapshotError("state: wrong set of sections")
    if state["format"] != FORMAT:
        raise SnapshotError(f"state: format {state['format']!r:.40}, expected {FORMAT!r}")
    config = description_from_state(state["description"], serial)
    vm = state["vm"]
    if not isinstance(vm, dict) or set(vm) != {"clock", "irqchip", "pit"}:
        raise SnapshotError("state: vm section has the wrong set of keys")
    if isinstance(vm["clock"], bool) or not isinstance(vm["clock"], int) or not 0 <= vm["clock"] < 1 << 64:
        raise SnapshotError("state: guest clock must be a 64-bit count of nanoseconds")
    chips = vm["irqchip"]
    if not isinstance(chips, list) or len(chips) != len(IRQCHIPS):
        raise SnapshotError("state: expected the PIC pair and the IOAPIC")
    for blob, size in [*((c, IRQCHIP_SIZE) for c in chips), (vm["pit"], PIT_SIZE)]:
        if not isinstance(blob, str) or len(blob) != 2 * size:
            raise SnapshotError(f"state: interrupt controller or PIT state must be {size} bytes")
        try:
            bytes.fromhex(blob)
        except ValueError:
            raise SnapshotError("state: interrupt controller or PIT state is not hex") from None
    vcpus = state["vcpus"]
    if not isinstance(vcpus, list) or len(vcpus) != config.vcpus:
        raise SnapshotError(f"state: expected {config.vcpus} vCPUs")
    try:
        checked = [vcpu_from_plain(v) for v in vcpus]
    except PyhvError as e:
        raise SnapshotError(f"state: vCPU: {e}") from None
    if [v.index for v in checked] != list(range(config.vcpus)):
        raise SnapshotError("state: vCPUs out of order")
    return config, checked


def apply_vm_state(machine: Machine, state: dict[str, Any], vcpu_states: list[Any]) -> None:
    """After the devices: interrupt controllers, PIT, every vCPU, then the clock."""
    from ..vcpu.cpustate import write_state

    vm = machine.vm
    for chip, blob in zip(IRQCHIPS, state["vm"]["irqchip"], strict=True):
        vm.set_irqchip(chip, bytes.fromhex(blob))
    vm.set_pit2(bytes.fromhex(state["vm"]["pit"]))
    for thread, vstate in zip(machine.vcpus, vcpu_states, strict=True):
        write_state(thread.vcpu, vstate)
    vm.set_clock(state["vm"]["clock"])


# --- memory ----------------------------------------------------------------------------


def region_offsets(size: int, base: int = MEMORY_OFFSET) -> list[int]:
    offsets, at = [], base
    for _, length in x86_ram_layout(size):
        offsets.append(at)
        at += length
    return offsets


def _swap_in_use() -> bool:
    """With swap, a page mincore() calls absent may hold data: scan instead."""
    try:
        with open("/proc/swaps") as f:
            return len(f.read().splitlines()) > 1
    except OSError:
        return True


_RESIDENT = bytes(i & 1 for i in range(256))


def touched_chunks(memory: GuestMemory, region: Region, chunk: int = CHUNK) -> list[bool] | None:
    """For anonymous memory: which chunks have a page in memory (the others are
    all zeros, never touched).  None when that cannot be told cheaply."""
    if region.file_backed or region.fd >= 0 or _swap_in_use():
        return None
    vec = memory.resident_pages(region).translate(_RESIDENT)
    per = chunk // PAGE_SIZE
    return [b"\x01" in vec[i : i + per] for i in range(0, len(vec), per)]


def write_memory(memory: GuestMemory, fd: int, base: int = MEMORY_OFFSET) -> tuple[list[list[int]], int]:
    """Write every RAM range at its file offset, leaving untouched or all-zero
    chunks as holes; returns the written extents as [offset, length, crc32] and
    the bytes written."""
    extents: list[list[int]] = []
    written = 0
    zero = bytes(CHUNK)
    for region, offset in zip(memory.regions, region_offsets(memory.size, base), strict=True):
        touched = touched_chunks(memory, region)
        view = region.view
        for n, start in enumerate(range(0, region.size, CHUNK)):
            data = view[start : start + CHUNK]
            if touched is not None:
                if not touched[n]:
                    continue
            elif data == zero[: len(data)]:
                continue
            at = offset + start
            _pwrite_all(fd, data, at)
            written += len(data)
            last = extents[-1] if extents else None
            if last is not None and last[0] + last[1] == at and last[1] + len(data) <= EXTENT_MAX:
                last[1] += len(data)
                last[2] = zlib.crc32(data, last[2])
            else:
                extents.append([at, len(data), zlib.crc32(data)])
    return extents, written


# --- the file ----------------------------------------------------------------------------


def save(
    machine: Machine, path: str, sync: bool = True, description: Description | None = None, force: bool = False,
    into: int | None = None,
) -> SaveInfo:
    """Write ``machine`` (paused, I/O thread held: see :meth:`Machine.save`) to ``path``;
    ``description``, when given, is the domain as it is now (memory limits or
    scheduling changed since it was built) and is kept instead of the machine's.
    An existing ``path`` is refused unless ``force`` and it is a pyhv snapshot.
    ``into``: write in place through this descriptor (closed here) instead,
    which whoever opened it names (:func:`open_temporary`)."""
    t0 = time.perf_counter()
    fd = into if into is not None else handed(path)  # a confined VMM writes through descriptors (pyhv/jail/)
    tmp = None
    if fd is None:
        _check_target(path, force)
    state = capture(machine)
    if description is not None:
        state["description"] = to_plain(description)
    if fd is None:
        tmp, fd = open_temporary(path, force, checked=True)
    try:
        mem_len = machine.memory.size
        # In place (handed over), the file is emptied first and the header that
        # makes it a snapshot is written last: a save cut short leaves no file
        # a restore would take.
        os.ftruncate(fd, 0)
        os.ftruncate(fd, MEMORY_OFFSET + mem_len)
        extents, written = write_memory(machine.memory, fd)
        state["memory"] = {"extents": extents}
        blob = json.dumps(state, separators=(",", ":")).encode()
        state_offset = MEMORY_OFFSET + mem_len
        _pwrite_all(fd, blob, state_offset)
        _pwrite_all(fd, _header(mem_len, state_offset, blob), 0)
        if sync:
            os.fsync(fd)
        st = os.fstat(fd)
        if tmp is not None:
            put_in_place(tmp, path, force)
    except OSError as e:
        if tmp is not None:
            _unlink(tmp)
        raise SnapshotError(f"cannot write snapshot {path}: {e.strerror}") from None
    except BaseException:
        if tmp is not None:
            _unlink(tmp)
        raise
    finally:
        os.close(fd)
    return SaveInfo(path, st.st_size, st.st_blocks * 512, written, time.perf_counter() - t0)


def open_temporary(path: str, force: bool, checked: bool = False) -> tuple[str, int]:
    """A new temporary file beside ``path`` (created O_EXCL|O_NOFOLLOW) for a save
    that :func:`put_in_place` names ``path`` once complete: its name and descriptor.
    ``path`` is checked first (unless ``checked``).  Raises SnapshotError."""
    if not checked:
        _check_target(path, force)
    tmp = os.path.join(os.path.dirname(path), f".{os.path.basename(path)}.{os.urandom(6).hex()}.tmp")
    try:
        return tmp, os.open(tmp, os.O_RDWR | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC, 0o600)
    except OSError as e:
        raise SnapshotError(f"cannot create {tmp}: {e.strerror}") from None


def discard_temporary(tmp: str) -> None:
    _unlink(tmp)


def open_target(path: str) -> int:
    """A descriptor a confined VMM saves ``path`` through (see the module's words):
    ``path`` is made, or must be an earlier pyhv snapshot.  Raises SnapshotError."""
    _check_target(path, True)
    try:
        return os.open(path, os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC, 0o600)
    except OSError as e:
        raise SnapshotError(f"cannot save to {path}: {e.strerror}") from None


def _check_target(path: str, force: bool) -> None:
    """Refuse to save over anything but (with ``force``) an earlier pyhv snapshot."""
    try:
        st = os.lstat(path)
    except FileNotFoundError:
        return
    except OSError as e:
        raise SnapshotError(f"cannot save to {path}: {e.strerror}") from None
    if not stat.S_ISREG(st.st_mode):
        raise SnapshotError(f"cannot save to {path}: not a regular file")
    if not force:
        raise SnapshotError(f"cannot save to {path}: it exists (force replaces an earlier pyhv snapshot)")
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC)
    except OSError as e:
        raise SnapshotError(f"cannot save to {path}: {e.strerror}") from None
    try:
        magic = os.pread(fd, len(MAGIC), 0) if stat.S_ISREG(os.fstat(fd).st_mode) else b""
    finally:
        os.close(fd)
    if magic != MAGIC:
        raise SnapshotError(f"cannot save to {path}: it exists and is not a pyhv snapshot")


def put_in_place(tmp: str, path: str, force: bool) -> None:
    """Give the finished snapshot its name: a hard link fails if ``path`` appeared
    meanwhile (no overwrite); with ``force``, a rename over the checked snapshot."""
    if force:
        _check_target(path, force)
        os.rename(tmp, path)
        return
    try:
        os.link(tmp, path)
    except FileExistsError:
        raise SnapshotError(f"cannot save to {path}: it exists (force replaces an earlier pyhv snapshot)") from None
    _unlink(tmp)


def _header(mem_len: int, state_offset: int, blob: bytes) -> bytes:
    head = HEADER.pack(MAGIC, VERSION, HEADER.size, MEMORY_OFFSET, mem_len, state_offset, len(blob), bytes(32))
    digest = hashlib.sha256(head + blob).digest()
    return HEADER.pack(MAGIC, VERSION, HEADER.size, MEMORY_OFFSET, mem_len, state_offset, len(blob), digest)


def _pwrite_all(fd: int, data: bytes | memoryview, offset: int) -> None:
    view = memoryview(data)
    while view:
        n = os.pwrite(fd, view, offset)
        view, offset = view[n:], offset + n


def _unlink(path: str) -> None:
    try:
        os.unlink(path)
    except OSError:
        pass


class Snapshot:
    """An opened, checked snapshot file: its description and state, and the
    file that guest memory is mapped from."""

    #: a machine restored from a file runs again from a saved point: a new VM generation ID
    new_generation = True

    def __init__(self, path: str, serial: str | None = None) -> None:
        self.path = path
        try:
            # O_NONBLOCK: a FIFO must not hang the open; O_NOFOLLOW: the file named, not where a link points
            self.fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | os.O_NOFOLLOW | os.O_CLOEXEC)
        except OSError as e:
            why = "a symbolic link, not a regular file" if e.errno == errno.ELOOP else e.strerror
            raise SnapshotError(f"cannot open snapshot {path}: {why}") from None
        try:
            if not stat.S_ISREG(os.fstat(self.fd).st_mode):
                raise SnapshotError(f"cannot open snapshot {path}: not a regular file")
            self._check(serial)
        except BaseException:
            self.close()
            raise

    def _fail(self, problem: str) -> SnapshotError:
        return SnapshotError(f"{self.path}: {problem}")

    def _check(self, serial: str | None) -> None:
        size = os.fstat(self.fd).st_size
        if size < HEADER.size:
            raise self._fail(f"truncated ({size} bytes): not a complete pyhv snapshot")
        head = os.pread(self.fd, HEADER.size, 0)
        magic, version, header_size, mem_off, mem_len, state_off, state_len, digest = HEADER.unpack(head)
        if magic != MAGIC:
            raise self._fail("not a pyhv snapshot (bad magic)")
        if version != VERSION or header_size != HEADER.size:
            raise self._fail(f"snapshot format version {version}; this pyhv reads version {VERSION}")
        if mem_off != MEMORY_OFFSET or state_off != mem_off + mem_len or state_len > MAX_STATE:
            raise self._fail("corrupt header (inconsistent section offsets)")
        if size < state_off + state_len:
            raise self._fail(f"truncated: {size} bytes, the header says {state_off + state_len}")
        if size > state_off + state_len:
            raise self._fail("corrupt: data after the end of the snapshot")
        blob = os.pread(self.fd, state_len, state_off)
        zeroed = head[: HEADER.size - 32] + bytes(32)
        if hashlib.sha256(zeroed + blob).digest() != digest:
            raise self._fail("checksum mismatch: the snapshot is corrupt")
        try:
            state = json.loads(blob)
        except (ValueError, RecursionError):
            raise self._fail("corrupt state (not JSON)") from None
        try:
            self.description, self.vcpu_states = check_state(state, mem_len, serial)
        except SnapshotError as e:
            raise self._fail(str(e)) from None
        if self.description.memory != mem_len:
            raise self._fail(f"memory section is {mem_len} bytes, the machine has {self.description.memory}")
        self.extents = _check_extents(state["memory"], mem_len, self._fail)
        self.state = state

    def take_memory(self) -> GuestMemory:
        """Guest RAM mapped copy-on-write from the file (nothing read yet)."""
        return GuestMemory.from_file(self.description.memory, self.fd, region_offsets(self.description.memory))

    def verify_memory(self) -> None:
        """Read every written extent and check its CRC (reads the whole memory section)."""
        for offset, length, crc in self.extents:
            got, at = 0, offset
            while at < offset + length:
                data = os.pread(self.fd, min(EXTENT_MAX, offset + length - at), at)
                if not data:
                    raise self._fail(f"truncated memory at offset {at:#x}")
                got = zlib.crc32(data, got)
                at += len(data)
            if got != crc:
                raise self._fail(f"memory at file offset {offset:#x} is corrupt (CRC mismatch)")

    def close(self) -> None:
        if self.fd >= 0:
            os.close(self.fd)
            self.fd = -1


def _check_extents(memory: Any, mem_len: int, fail: Any) -> list[tuple[int, int, int]]:
    if not isinstance(memory, dict) or set(memory) != {"extents"} or not isinstance(memory["extents"], list):
        raise fail("state: memory section malformed")
    out = []
    end = MEMORY_OFFSET + mem_len
    for e in memory["extents"]:
        if (
            not isinstance(e, list) or len(e) != 3
            or not all(isinstance(x, int) and not isinstance(x, bool) for x in e)
            or not MEMORY_OFFSET <= e[0] <= end or not 0 < e[1] <= end - e[0] or not 0 <= e[2] < 1 << 32
        ):
            raise fail("state: memory extent malformed")
        out.append((e[0], e[1], e[2]))
    return out
