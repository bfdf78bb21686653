"""A running machine: memory, buses, devices and vCPU threads, and its lifecycle.

Threads: the caller's thread (owns the Machine, calls start/pause/stop/wait),
one thread per vCPU (sits in KVM_RUN; touches its vCPU, the buses and the
devices it reaches through them), and the console input thread (only calls the
UART's ``enqueue``).  The first stop reason recorded wins; recording one asks
every vCPU to stop.
"""

from __future__ import annotations

import threading
from typing import TYPE_CHECKING, Any, Protocol

from ..backends.console import Console
from ..devices.bus import MmioBus, PioBus
from ..devices.legacy.port80 import ProgressCodes
from ..errors import PyhvError
from ..kvm import Kvm, Vm
from ..memory import GuestMemory
from ..model import Description, vhost_user_devices
from ..vcpu import Stop, StopKind, VcpuThread
from ..vcpu.thread import install_kick_handler

if TYPE_CHECKING:
    from ..devices.virtio.balloon import Balloon
    from ..vcpu.cpustate import VcpuState
    from .devices import Devices
    from .iothread import IoThread


class Closeable(Protocol):
    def close(self) -> None: ...


class Machine:
    def __init__(
        self,
        description: Description,
        kvm: Kvm,
        vm: Vm,
        memory: GuestMemory,
        pio: PioBus,
        mmio: MmioBus,
        console: Console,
        devices: Devices,
        io: IoThread,
        backends: list[Closeable],
        owns_console: bool = True,
    ) -> None:
        self.description = description
        self.kvm = kvm
        self.vm = vm
        self.memory = memory
        self.pio = pio
        self.mmio = mmio
        self.console = console
        self.devices = devices
        self.io = io  # device work (virtio queues)
        self.backends = backends  # disk images, TAPs, sockets: closed with the machine
        self.owns_console = owns_console
        self.vcpus: list[VcpuThread] = []
        self._memory_kept = False
        self._stop: Stop | None = None
        self._stopped = threading.Event()
        self._lock = threading.Lock()

    @property
    def balloon(self) -> Balloon | None:
        return self.devices.balloon

    @property
    def progress(self) -> ProgressCodes:
        return self.devices.progress

    def keep_memory(self) -> GuestMemory:
        """The guest RAM, which :meth:`close` then leaves mapped for the caller (a warm
        reset: the next machine is built on it)."""
        self._memory_kept = True
        return self.memory

    def nvram(self) -> tuple[float, bytes]:
        """What survives a reset on a PC: the CMOS clock's battery-backed part (``Rtc.nvram``),
        which the runtime hands to the machine it builds next."""
        return self.devices.rtc.nvram()

    # --- lifecycle ---------------------------------------------------------------

    def start(self) -> None:
        install_kick_handler()
        self.console.set_stopping(False)
        self.io.start()
        for v in self.vcpus:
            v.start()

    def request_stop(self, stop: Stop) -> None:
        """Record why the machine stops (first caller wins) and stop every vCPU.

        Safe from any thread, including a vCPU thread inside an exit handler."""
        with self._lock:
            if self._stop is None:
                self._stop = stop
        self.console.set_stopping(True)
        for v in self.vcpus:
            v.request(VcpuThread.STOPPED)
        if all(v.state == VcpuThread.STOPPED for v in self.vcpus):
            self._stopped.set()

    def _vcpu_stopped(self, stop: Stop | None) -> None:
        if stop is not None:
            self.request_stop(stop)
        elif all(v.state == VcpuThread.STOPPED for v in self.vcpus):
            self._stopped.set()

    def pause(self, timeout: float = 5.0) -> None:
        for v in self.vcpus:
            v.request(VcpuThread.PAUSED)
        for v in self.vcpus:
            v.wait_state(VcpuThread.PAUSED, timeout)

    def resume(self, timeout: float = 5.0) -> None:
        """Let paused vCPUs run again; returns once they do (as pause waits until they stop)."""
        for v in self.vcpus:
            v.request(VcpuThread.RUNNING)
        for v in self.vcpus:
            if v.thread.is_alive():
                v.wait_state(VcpuThread.RUNNING, timeout)

    def vcpu_state(self, index: int) -> VcpuState:
        """The whole state of vCPU ``index``; the machine must be paused or stopped."""
        from ..vcpu.cpustate import read_state

        if not 0 <= index < len(self.vcpus):
            raise PyhvError(f"no vCPU {index} (the machine has {len(self.vcpus)})")
        v = self.vcpus[index]
        if v.state == VcpuThread.RUNNING:
            raise PyhvError(f"vCPU {index} is running: pause the machine first")
        return read_state(v.vcpu)

    def save(
        self, path: str, sync: bool = True, description: Description | None = None, force: bool = False,
        into: int | None = None,
    ) -> Any:
        """Write the whole machine to snapshot file ``path`` (see vmm/snapshot.py);
        an existing ``path`` is replaced only with ``force`` and only if it is a
        pyhv snapshot.

        A running machine is paused for the save (vCPUs and device work) and
        runs on afterwards; a paused or stopped one stays as it is.  Returns a
        SaveInfo (sizes, time)."""
        from .snapshot import SnapshotError, save

        self._refuse_vhost_user("save", SnapshotError)
        with self.quiesced():
            return save(self, path, sync, description, force, into)

    def migrate(self, address: tuple[str, int], key: bytes, **options: Any) -> Any:
        """Live-migrate to ``pyhv run --incoming`` at ``address``; see vmm/migrate.py."""
        from .migrate import MigrationError, migrate

        self._refuse_vhost_user("migrate", MigrationError)
        return migrate(self, address, key, **options)

    def _refuse_vhost_user(self, what: str, error: type[PyhvError]) -> None:
        """A vhost-user device's queues and in-flight requests live in its back end,
        which pyhv cannot save or move yet: such a machine is refused, in one line."""
        devices = vhost_user_devices(self.description)
        if devices:
            raise error(f"cannot {what}: {devices[0]} is a vhost-user device (its state lives in its back end)")

    def quiesced(self) -> Any:
        """A context in which no vCPU runs and no device works (I/O thread held)."""
        import contextlib

        @contextlib.contextmanager
        def held() -> Any:
            running = self.state == VcpuThread.RUNNING
            if running:
                self.pause()
            io_held = self.io.pause()
            try:
                yield
            finally:
                if io_held:
                    self.io.resume()
                if running and self._stop is None:
                    self.resume()

        return held()

    @property
    def state(self) -> str:
        """running, paused, stopped or created (the vCPUs' common state)."""
        states = {v.state for v in self.vcpus}
        for s in (VcpuThread.RUNNING, VcpuThread.PAUSED, VcpuThread.CREATED):
            if s in states:
                return s
        return VcpuThread.STOPPED

    def set_balloon_target(self, size: int) -> None:
        """Ask the guest to give back ``size`` bytes (rounded down to 4 KiB pages)."""
        if self.balloon is None:
            raise PyhvError("this machine has no balloon device (configure balloon=True / --balloon)")
        if not 0 <= size <= self.memory.size:
            raise PyhvError(f"balloon target {size} bytes: must be between 0 and the guest's memory")
        self.balloon.set_target(size >> 12)

    def ctrl_alt_del(self) -> int:
        """Press Ctrl-Alt-Del on the i8042 keyboard (a guest's own reboot); the bytes queued."""
        return self.devices.i8042.ctrl_alt_del()

    def set_rate_limit(self, queue: str, index: int, limit: Any) -> None:
        """A new rate limit (a :class:`pyhv.model.RateLimit`, or None) for disk
        ``index`` (``queue`` "disk") or one direction of NIC ``index`` ("rx", "tx"),
        in force from the next request on."""
        from ..devices.ratelimit import RateLimiter
        from ..devices.virtio.net import RX, TX, Net

        device: Any
        if queue == "disk":
            device = self._blk(index)
        else:
            nics = [d for _, d in self.devices.of_type(Net)]
            if not 0 <= index < len(nics):
                raise PyhvError(f"no NIC {index} (the machine has {len(nics)})")
            device = nics[index]
        which = {"disk": 0, "rx": RX, "tx": TX}[queue]
        device.limit(which, RateLimiter.of(limit), self.io.call_later)

    def _blk(self, index: int) -> Any:
        """The in-process virtio-blk device of disk ``index`` in the description's
        order; disks a vhost-user back end serves have none, so they are skipped
        in the devices' order and refused here."""
        from ..devices.virtio.blk import Blk

        disks = self.description.disks
        if not 0 <= index < len(disks):
            raise PyhvError(f"no disk {index} (the machine has {len(disks)})")
        if disks[index].base or disks[index].vhost_user:
            raise PyhvError(f"disk {index} is served by a vhost-user back end, not by pyhv")
        nth = sum(1 for d in disks[:index] if not (d.base or d.vhost_user))
        return [d for _, d in self.devices.of_type(Blk)][nth]

    def swap_disk(self, index: int, path: str) -> int:
        """Put the image at ``path`` behind virtio-blk disk ``index`` (the
        description's order) while the guest runs; its size in sectors.  The new
        image is opened, checked and locked as at boot before anything changes;
        the old one is closed once no request uses it."""
        from ..backends.block import RawDisk, check_distinct
        from ..devices.virtio.blk import Blk

        blk = self._blk(index)
        check_distinct([d.disk.path for _, d in self.devices.of_type(Blk) if d is not blk] + [path])
        new = RawDisk(path, readonly=blk.disk.readonly, direct=blk.disk.direct)
        old = blk.swap_disk(new)
        self.backends[next(i for i, b in enumerate(self.backends) if b is old)] = new
        old.close()
        return new.sectors

    def wait(self, timeout: float | None = None) -> Stop | None:
        """Wait until every vCPU has stopped; the reason, or None on timeout."""
        if not self._stopped.wait(timeout):
            return None
        for v in self.vcpus:
            v.join()
        return self._stop or Stop(StopKind.DESTROY, 0, "stopped")

    def stop(self) -> Stop:
        self.request_stop(Stop(StopKind.DESTROY, 0, "stopped by the host"))
        stop = self.wait()
        assert stop is not None
        return stop

    def close(self) -> None:
        """Stop if running and release every resource (fds, memory, terminal)."""
        if any(v.state in (VcpuThread.RUNNING, VcpuThread.PAUSED) for v in self.vcpus):
            self.stop()
        self.io.close()
        self.devices.close()
        for backend in self.backends:
            backend.close()
        for v in self.vcpus:
            v.vcpu.close()
        self.vm.close()
        if not self._memory_kept:
            self.memory.close()
        self.kvm.close()
        if self.owns_console:
            self.console.close()
