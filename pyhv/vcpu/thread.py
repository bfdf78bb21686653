"""A vCPU thread: sits in KVM_RUN and turns exits into device accesses.

Run-state machine, driven by requests from other threads::

    created --start--> running --pause--> paused --resume--> running
                          |                  |
                          +-------stop-------+------> stopped

Another thread asks for a change by setting the request and *kicking* the vCPU:
it sets ``kvm_run.immediate_exit`` and then sends the thread SIGUSR1.  If the
thread is inside KVM_RUN the signal makes the ioctl return EINTR; if it is
anywhere else, the flag makes its next KVM_RUN return EINTR at once, so no
kick is lost (Documentation/virt/kvm/api.rst, KVM_CAP_IMMEDIATE_EXIT).

The loop below decodes port and MMIO exits inline with struct: it runs once
per guest exit and every attribute lookup shows in the per-exit cost.
"""

from __future__ import annotations

import errno
import os
import signal
import struct
import sys
import threading
from collections.abc import Callable
from typing import TYPE_CHECKING

from .._sys import kvm_h as h
from .._sys.ioctl import fast_ioctl, get_errno
from .._sys.libc import set_thread_name
from ..devices.bus import ALL_ONES, MmioBus, PioBus
from ..errors import KvmError, PyhvError
from ..kvm import Vcpu
from .report import format_registers
from .state import Stop, StopKind

if TYPE_CHECKING:
    from ..kvm.exits import Exit
    from .registers import Registers

KICK_SIGNAL = signal.SIGUSR1

#: called first on each vCPU thread ("vcpu") and I/O thread ("io") with its kind:
#: a confined process narrows those threads' seccomp filters here (pyhv/jail/policy.py)
on_thread_start: Callable[[str], None] | None = None

_PIO_FMT = {1: "<B", 2: "<H", 4: "<I"}
_EXIT = h.KVM_RUN_OFF_EXIT
_REASON = struct.Struct("<I")  # kvm_run.exit_reason
_IO = struct.Struct("<BBHIQ")  # kvm_run.io: direction, size, port, count, data_offset
_MMIO = struct.Struct("<Q8sIB")  # kvm_run.mmio: phys_addr, data, len, is_write
_MMIO_DATA = _EXIT + 8


def install_kick_handler() -> None:
    """SIGUSR1 must have a handler (any) so that a kick interrupts KVM_RUN
    instead of killing the process.  Call from the main thread."""
    if signal.getsignal(KICK_SIGNAL) in (signal.SIG_DFL, None):
        signal.signal(KICK_SIGNAL, lambda signum, frame: None)


class VcpuThread:
    RUNNING = "running"
    PAUSED = "paused"
    STOPPED = "stopped"
    CREATED = "created"

    def __init__(
        self,
        vcpu: Vcpu,
        pio: PioBus,
        mmio: MmioBus,
        on_stop: Callable[[Stop | None], None],
        name_prefix: str = "vcpu",
    ) -> None:
        self.vcpu = vcpu
        #: the host thread's name: pyhvd's BVT dispatcher finds ``vcpuN``, Firecracker's
        #: tools (Kata) ``fc_vcpu N``; the front end says which
        self.name = f"{name_prefix}{vcpu.index}"
        self.pio = pio
        self.mmio = mmio
        self.on_stop = on_stop
        self.state = self.CREATED
        # exits by kind, counted live: [port I/O, MMIO, other]; read by metrics
        self.counts = [0, 0, 0]
        self.tid = 0  # the host thread id, once running (CPU time, affinity)
        self._cond = threading.Condition()
        self._want: str | None = None  # requested state
        self._failed_devices: set[str] = set()
        #: set by an attached debugger (pyhv/debug/target.py): sees the exits the
        #: loop does not handle itself (never port or MMIO exits), on this thread;
        #: True means it dealt with the exit and the loop carries on
        self.debugger: Callable[[VcpuThread, Exit], bool] | None = None
        self.thread = threading.Thread(target=self._main, name=self.name, daemon=True)

    # --- requests from other threads -------------------------------------------

    def start(self) -> None:
        self.state = self.RUNNING
        self.thread.start()

    def kick(self) -> None:
        self.vcpu.set_immediate_exit(True)
        ident = self.thread.ident
        if ident is not None and self.thread.is_alive():
            try:
                signal.pthread_kill(ident, KICK_SIGNAL)
            except ProcessLookupError:
                pass

    def request(self, state: str) -> None:
        with self._cond:
            if self.state == self.STOPPED or self._want == self.STOPPED:
                return  # a stop, once asked for, is not taken back
            self._want = state
            self._cond.notify_all()
        self.kick()

    def registers(self) -> Registers:
        """This vCPU's registers (pyhv/vcpu/registers.py); it must not be running."""
        from .registers import read_registers

        if self.state == self.RUNNING:
            raise PyhvError(f"vCPU {self.vcpu.index} is running: pause the machine first")
        return read_registers(self.vcpu)

    def wait_state(self, state: str, timeout: float | None = None) -> bool:
        with self._cond:
            return self._cond.wait_for(lambda: self.state in (state, self.STOPPED), timeout)

    def join(self, timeout: float | None = None) -> None:
        if self.thread.ident is not None:
            self.thread.join(timeout)

    # --- the thread --------------------------------------------------------------

    @property
    def exits(self) -> int:
        return sum(self.counts)

    def _main(self) -> None:
        self.tid = threading.get_native_id()
        set_thread_name(self.name)      # how a host scheduler finds vCPU threads
        signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGINT, signal.SIGTERM, signal.SIGCHLD})
        try:
            if on_thread_start is not None:
                on_thread_start("vcpu")
            stop = self._loop()
        except PyhvError as e:
            stop = Stop(StopKind.ERROR, 1, f"vcpu{self.vcpu.index}: {e}")
        except Exception as e:  # noqa: BLE001 - a bug in pyhv: report it, do not hang the machine
            stop = Stop(StopKind.ERROR, 1, f"vcpu{self.vcpu.index}: internal error: {e!r}")
        with self._cond:
            self.state = self.STOPPED
            self._cond.notify_all()
        self.on_stop(stop)

    def _service_requests(self) -> bool:
        """Handle a pending request after a kick; False means stop the loop."""
        with self._cond:
            while True:
                want = self._want
                if want == self.STOPPED:
                    return False
                if want == self.PAUSED:
                    self.state = self.PAUSED
                    self._cond.notify_all()
                    self._cond.wait_for(lambda: self._want != self.PAUSED)
                    continue
                self._want = None
                self.state = self.RUNNING
                self._cond.notify_all()
                self.vcpu.set_immediate_exit(False)
                return True

    def _loop(self) -> Stop | None:
        fd = self.vcpu.fd
        run = self.vcpu.run_page
        table = self.pio.table
        mmio_find = self.mmio.find
        unpack_from = struct.unpack_from
        pack_into = struct.pack_into
        reason_unpack = _REASON.unpack_from
        io_unpack = _IO.unpack_from
        mmio_unpack = _MMIO.unpack_from
        pio_fmt = _PIO_FMT
        KVM_RUN = h.KVM_RUN
        EXIT_IO = h.KVM_EXIT_IO
        EXIT_MMIO = h.KVM_EXIT_MMIO
        counts = self.counts
        while True:
            if fast_ioctl(fd, KVM_RUN, 0) < 0:
                err = get_errno()
                if err == errno.EAGAIN:
                    # An AP waiting for INIT/SIPI just got one: KVM wants
                    # KVM_RUN called again to start it.
                    continue
                if err != errno.EINTR:
                    raise KvmError("KVM_RUN", OSError(err, os.strerror(err)))
                if not self._service_requests():
                    return None
                continue
            (reason,) = reason_unpack(run, 8)
            if reason == EXIT_IO:
                counts[0] += 1
                is_out, size, port, count, offset = io_unpack(run, _EXIT)
                entry = table.get(port)
                if entry is None and is_out:
                    continue  # a write nobody claims is dropped: nothing to decode
                fmt = pio_fmt.get(size)
                if fmt is None or offset + size * count > len(run):
                    continue  # KVM never does this; don't trust it blindly either
                if entry is None:
                    if not is_out:
                        for i in range(count):
                            pack_into(fmt, run, offset + i * size, ALL_ONES[size])
                    continue
                device, base = entry
                try:
                    if is_out:
                        for i in range(count):
                            device.write(port - base, size, unpack_from(fmt, run, offset + i * size)[0])
                    else:
                        for i in range(count):
                            pack_into(fmt, run, offset + i * size, device.read(port - base, size) & ALL_ONES[size])
                except Exception as e:  # noqa: BLE001 - a device failing on guest input fails that access
                    self._device_failed(f"port {port:#x}", e)
            elif reason == EXIT_MMIO:
                counts[1] += 1
                addr, data, length, is_write = mmio_unpack(run, _EXIT)
                r = mmio_find(addr)
                if r is None or not 0 < length <= 8:
                    if not is_write:
                        run[_MMIO_DATA : _MMIO_DATA + 8] = b"\xff" * 8  # unclaimed: all ones
                    continue
                try:
                    if is_write:
                        r.device.write(addr - r.base, length, int.from_bytes(data[:length], "little"))
                    else:
                        value = r.device.read(addr - r.base, length) & ((1 << (8 * length)) - 1)
                        run[_MMIO_DATA : _MMIO_DATA + length] = value.to_bytes(length, "little")
                except Exception as e:  # noqa: BLE001 - a device failing on guest input fails that access
                    self._device_failed(f"MMIO {addr:#x}", e)
            else:
                counts[2] += 1
                stop = self._other_exit()
                if stop is not None:
                    return stop

    def _device_failed(self, where: str, e: Exception) -> None:
        """A device raised while serving the guest: fail that access, keep the VM."""
        if where not in self._failed_devices:
            self._failed_devices.add(where)
            print(f"pyhv: device at {where} failed: {e}", file=sys.stderr)

    def _other_exit(self) -> Stop | None:
        """Everything but port and MMIO exits: turn them into a stop or carry on."""
        from ..kvm.exits import InternalErrorExit, decode

        exit = decode(self.vcpu.run_page)
        debugger = self.debugger
        if debugger is not None and exit.reason != h.KVM_EXIT_INTR and debugger(self, exit):
            return None
        if exit.reason == h.KVM_EXIT_HLT:
            # Without an in-kernel irqchip nothing can wake a halted CPU.
            return self._crash("guest halted with no way to wake it (hlt)")
        if exit.reason == h.KVM_EXIT_SHUTDOWN:
            return self._crash("triple fault (KVM_EXIT_SHUTDOWN)")
        if isinstance(exit, InternalErrorExit):
            data = " ".join(f"{d:#x}" for d in exit.data)
            return self._crash(f"KVM internal error: {exit.description}" + (f" [{data}]" if data else ""))
        if exit.reason == h.KVM_EXIT_FAIL_ENTRY:
            return self._crash(f"VM entry failed ({exit})")
        if exit.reason == h.KVM_EXIT_SYSTEM_EVENT:
            kind = getattr(exit, "type", 0)
            if kind == h.KVM_SYSTEM_EVENT_RESET:
                return Stop(StopKind.RESET, 0, "guest reset")
            if kind == h.KVM_SYSTEM_EVENT_SHUTDOWN:
                return Stop(StopKind.POWEROFF, 0, "guest powered off")
            return self._crash(f"system event {kind}")
        if exit.reason == h.KVM_EXIT_INTR:
            return None
        return self._crash(f"unexpected exit: {exit.name}")

    def _crash(self, what: str) -> Stop:
        try:
            regs = format_registers(self.vcpu.get_regs(), self.vcpu.get_sregs())
        except PyhvError as e:
            regs = f"  (registers unavailable: {e})"
        return Stop(StopKind.CRASH, 1, f"vcpu{self.vcpu.index}: {what}\n{regs}")
