"""The builder: the one place that wires memory, devices, vCPUs and backends.

Order matters on KVM (see docs/ARCHITECTURE.md): memory slots are registered
before the in-kernel interrupt controller is created, because registering them
afterwards costs milliseconds per slot.
"""

from __future__ import annotations

import sys
from collections.abc import Callable, Mapping
from typing import Any, Protocol

from .._sys.files import open_handed
from ..backends.console import Console, open_console
from ..boot import acpi, load_kernel
from ..boot.layout import MPTABLE_ADDR
from ..boot.mptable import mptable
from ..devices import vmgenid
from ..devices.bus import MmioBus, PioBus
from ..devices.virtio.device import VirtioDevice
from ..devices.virtio.pci import VirtioPci
from ..devices.legacy import acpi_pm, debug_exit, debugcon, fw_cfg, i8042, port80, reset_ports, rtc, uart
from ..errors import UsageError
from ..kvm import Kvm
from ..memory import GuestMemory
from ..model import FW_CFG_DATA_MAX, Description, debug_exit_status, default_mac, parse_mac, vhost_user_devices
from ..vcpu import Stop, StopKind, VcpuThread

from .devices import Devices
from .cpu import apply_entry_state, setup_cpuid, setup_msrs, supported_entries
from .iothread import IoThread
from .machine import Closeable, Machine
from .mmio import MmioWiring
from .pci import PciWiring

class RestoreSource(Protocol):
    """Where a restored machine comes from: a snapshot file or a migration stream."""

    description: Description
    state: dict[str, Any]  # checked by snapshot.check_state
    vcpu_states: list[Any]
    #: True: the machine runs again from a saved point (a snapshot), so it gets a
    #: new VM generation ID; False: the same machine moved (live migration)
    new_generation: bool

    def take_memory(self) -> GuestMemory: ...


def build(
    config: Description, kvm: Kvm | None = None, console: Console | None = None,
    restore: RestoreSource | None = None, taps: Mapping[int, int] | None = None,
    nvram: tuple[float, bytes] | None = None, vcpu_prefix: str = "vcpu", warm: GuestMemory | None = None,
) -> Machine:
    """Create a machine ready to start; on any error release what was made.

    A ``console`` passed in stays the caller's (it outlives restarts); without
    one the machine opens ``config.serial`` and closes it with itself.  With
    ``restore`` the machine is the one it describes (``config`` should be its
    ``description``): memory comes from it instead of a kernel, and devices, vCPUs,
    interrupt controllers and the clock take its state before anything runs.
    ``taps`` hands over open TAP descriptors (NIC index -> fd), which the
    machine then owns and closes; other NICs open their TAP by name.  ``nvram``
    is the CMOS clock's battery-backed part of the machine this one replaces
    after a guest reset (``Rtc.nvram``), and ``warm`` its RAM when it ran firmware
    (``Machine.keep_memory``): a reset keeps RAM on a PC; the machine owns it now.  vCPU N's thread is named ``vcpu_prefix``
    + N (``vcpuN``, what pyhvd's dispatcher looks for, unless the front end says
    otherwise)."""
    if restore is not None and vhost_user_devices(config):
        raise UsageError(f"cannot restore: {vhost_user_devices(config)[0]} is a vhost-user device (not restorable yet)")
    owns_console = console is None
    console = console or open_console(config.serial)
    vm = memory = machine = io = None
    backends: list[Closeable] = []  # what the machine closes
    wiring, mmio_wiring = PciWiring(firmware=bool(config.payload.firmware)), MmioWiring()
    try:
        io = IoThread()  # devices and backends register readiness with it as they are made
        # Images are checked and loaded before /dev/kvm is touched: bad input
        # fails the same way on any machine, and fails fast.
        if restore is not None:
            memory = restore.take_memory()
        elif warm is not None:  # a firmware machine's RAM, kept over a guest reset
            memory = warm
        else:
            # vhost-user back ends map guest RAM themselves: it must be shared memory they can get a descriptor for
            memory = GuestMemory(config.memory, memfd=bool(vhost_user_devices(config)))
        # devices are made before the VM; interrupts only flow once it exists
        def deliver(address: int, data: int) -> None:
            assert vm is not None
            vm.signal_msi(address, data)

        def irq_line(gsi: int, level: bool) -> None:
            assert vm is not None
            vm.irq_line(gsi, int(level))

        def place(device: VirtioDevice) -> None:  # the description's one transport for every device
            if config.transport == "mmio":
                mmio_wiring.add(device, irq_line)
            else:
                wiring.add(VirtioPci(device, deliver))

        _virtio_devices(config, memory, place, backends, io, taps or {})
        pci_devices, pci_tables = wiring.acpi()
        apic_ids = list(range(config.vcpus))
        acpi_inputs = (apic_ids, _acpi_devices(config) + pci_devices, pci_tables)
        # the guest finds MMIO devices on its command line; the description keeps the user's
        cmdline = " ".join(part for part in (config.payload.cmdline, mmio_wiring.cmdline()) if part)
        firmware_config = _fw_cfg(config, memory, acpi.loader_files(*acpi_inputs), cmdline)
        entry = None
        if _has_vmgenid(config) and (restore is None or restore.new_generation):
            vmgenid.new_generation(memory)  # before any vCPU runs
        if config.payload.firmware:
            _firmware(config.payload.firmware, memory, fresh=restore is None and warm is None)
        elif restore is None:
            tables = acpi.build_tables(*acpi_inputs)
            tables.write(memory)
            # the same CPUs and lines for a guest booted with acpi=off; the MMIO devices' lines are level
            memory.write(MPTABLE_ADDR, mptable(apic_ids, [gsi for _, gsi, _ in mmio_wiring.windows()]))
            entry = load_kernel(
                memory,
                config.payload.kernel,
                config.payload.initrd or None,
                cmdline,
                protocol=config.payload.boot,
                rsdp=tables.rsdp_addr,
            )
        kvm = kvm or Kvm()
        vm = kvm.create_vm()
        vm.set_tss_addr()
        memory.register(vm)
        vm.create_irqchip()
        vm.create_pit2()

        pio, mmio = PioBus(), MmioBus()
        progress = port80.ProgressCodes()
        wiring.attach(vm, pio, mmio, io)
        mmio_wiring.attach(vm, mmio, io)

        def stop(kind: StopKind, status: int, detail: str) -> None:
            # the legacy devices' outputs stop the machine made below (they fire only once it runs)
            assert machine is not None
            machine.request_stop(Stop(kind, status, detail))

        def guest_reset() -> None:  # the i8042's reset line, port 0x92, 0xCF9 and the ACPI reset register
            stop(StopKind.RESET, 0, "guest reset")

        com1 = uart.Uart(console.write, irq=lambda level: vm.irq_line(uart.COM1_IRQ, int(level)))
        pio.insert(uart.COM1_BASE, 8, com1, "com1")
        kbc = i8042.I8042(reset=guest_reset, irq=lambda level: vm.irq_line(i8042.KEYBOARD_IRQ, level))
        pio.insert(i8042.DATA_PORT, 1, kbc.data, "i8042-data")
        pio.insert(i8042.COMMAND_PORT, 1, kbc.command, "i8042-command")
        pio.insert(port80.PORT, 1, progress, "port80")
        pio.insert(reset_ports.PORT_A, 1, reset_ports.SystemControlPortA(guest_reset), "port-a")
        wiring.root.config_io.reset = guest_reset  # 0xCF9, inside the PCI configuration ports
        pm = acpi_pm.AcpiPm(
            poweroff=lambda: stop(StopKind.POWEROFF, 0, "guest powered off"),
            reset=guest_reset,
        )
        for port, register, name in pm.ports():
            pio.insert(port, 1, register, name)
        ram = memory.ram_ranges()
        clock = rtc.Rtc(mem_below_4g=ram[0][1], mem_above_4g=sum(size for _, size in ram[1:]), nvram=nvram,
                        cpus=config.vcpus)
        pio.insert(rtc.INDEX_PORT, 1, clock.index_port, "rtc-index")
        pio.insert(rtc.DATA_PORT, 1, clock.data_port, "rtc-data")
        pio.insert(fw_cfg.PORT_BASE, fw_cfg.PORT_LENGTH, firmware_config.ports, "fw_cfg")
        pio.insert(fw_cfg.DMA_BASE, fw_cfg.DMA_LENGTH, firmware_config.dma, "fw_cfg-dma")
        if config.payload.firmware:  # its debug output (SeaBIOS prints there) goes with COM1's
            pio.insert(debugcon.PORT, 1, debugcon.DebugCon(console.write), "debugcon")
        dbg = None
        if config.debug_exit != "off":
            dbg = debug_exit.DebugExit(lambda value: stop(
                StopKind.DEBUG_EXIT, debug_exit_status(config.debug_exit, value), f"guest wrote {value:#x} to debug-exit"
            ))
            pio.insert(debug_exit.DEFAULT_BASE, debug_exit.LENGTH, dbg, "debug-exit")
        devices = Devices(com1=com1, i8042=kbc, rtc=clock, progress=progress, acpi_pm=pm, pci=wiring, mmio=mmio_wiring,
                          debug_exit=dbg, fw_cfg=firmware_config)
        machine = Machine(config, kvm, vm, memory, pio, mmio, console, devices, io, backends, owns_console)

        supported = supported_entries(kvm.supported_cpuid())
        for index in range(config.vcpus):
            vcpu = vm.create_vcpu(index)
            setup_cpuid(vcpu, supported, config.vcpus)
            if entry is not None:
                setup_msrs(vcpu)
                if index == 0:
                    apply_entry_state(vcpu, entry)
            machine.vcpus.append(VcpuThread(vcpu, pio, mmio, machine._vcpu_stopped, vcpu_prefix))
        if restore is not None:
            from .snapshot import apply_vm_state

            devices.set_state(restore.state["devices"])
            apply_vm_state(machine, restore.state, restore.vcpu_states)
            for _, device in devices.virtio():
                io.call_soon(device.after_restore)  # runs once the machine starts
        console.start_input(
            com1.enqueue, lambda: machine.request_stop(Stop(StopKind.DESTROY, 0, "console escape"))
        )
        return machine
    except BaseException:
        if machine is not None:
            machine.close()
        else:
            wiring.close()
            mmio_wiring.close()
            for resource in (io, *backends, memory, vm, kvm, console if owns_console else None):
                if resource is not None:
                    resource.close()
        raise


def restore(path: str, serial: str | None = None, console: Console | None = None) -> Machine:
    """The machine snapshot ``path`` holds, built and ready to start where it was saved.

    ``serial`` (or a ``console`` the caller keeps) says where COM1 goes
    now; everything else comes from the file, which must stay in place
    while the machine runs (its memory is mapped from it)."""
    from .snapshot import Snapshot

    snapshot = Snapshot(path, serial=serial)
    try:
        return build(snapshot.description, console=console, restore=snapshot)
    finally:
        snapshot.close()


def _virtio_devices(
    config: Description, memory: GuestMemory, place: Callable[[VirtioDevice], None], backends: list[Closeable],
    io: IoThread, taps: Mapping[int, int],
) -> None:
    """Open the backends and make the configured virtio devices, each handed to
    ``place`` (which puts it on the machine's transport), in a fixed order.

    Devices and backends that wait on file descriptors get ``io``.  Each
    device's module is imported only when the machine has one: the domain's
    start-up pays for what it uses.
    """
    from ..devices.ratelimit import RateLimiter

    if config.disks:
        from ..backends.block import RawDisk, check_distinct
        from ..devices.virtio.blk import Blk

        check_distinct([d.path for d in config.disks if d.path])
        for index, disk_config in enumerate(config.disks):
            if disk_config.base or disk_config.vhost_user:
                place(_vhost_user_blk(index, disk_config, memory, backends))  # on PCI: the model says so
                continue
            disk = RawDisk(disk_config.path, readonly=disk_config.readonly, direct=disk_config.cache == "none")
            backends.append(disk)
            blk = Blk(memory, disk, serial=disk_config.serial)
            blk.limit(0, RateLimiter.of(disk_config.rate_limit), io.call_later)
            place(blk)
    if config.nics:
        from ..backends.tap import Tap
        from ..devices.virtio.net import RX, TX, Net

        for index, net_config in enumerate(config.nics):
            fd = taps.get(index)
            tap = Tap(net_config.tap, fd=fd, bridge=net_config.bridge if fd is None else "")
            backends.append(tap)
            mac = parse_mac(net_config.mac) if net_config.mac else default_mac(net_config.tap)
            net = Net(memory, tap, mac, io)
            net.limit(RX, RateLimiter.of(net_config.rx_rate_limit), io.call_later)
            net.limit(TX, RateLimiter.of(net_config.tx_rate_limit), io.call_later)
            place(net)
    if config.rng:
        from ..devices.virtio.rng import Rng

        place(Rng(memory))
    if config.balloon:
        from ..devices.virtio.balloon import Balloon

        place(Balloon(memory))
    if config.vsock is not None:
        from ..backends.vsock_uds import VsockUds
        from ..devices.virtio.vsock import Vsock

        try:
            host = VsockUds(config.vsock.uds, io)
        except OSError as e:
            raise UsageError(f"vsock.uds {config.vsock.uds}: cannot listen: {e.strerror}") from None
        backends.append(host)
        place(Vsock(memory, config.vsock.cid, host, io))
    for index, fs_config in enumerate(config.fs):
        place(_virtio_fs(index, fs_config, memory, backends))


def _virtio_fs(index: int, fs_config: Any, memory: GuestMemory, backends: list[Closeable]) -> Any:
    """virtio-fs on a vhost-user back end: one at ``socket``, or a virtiofsd of our own on ``path``.
    Two queues: hiprio and one request queue (virtio 1.2, 5.11.2); the config space is the tag."""
    from ..devices.virtio.vhost_user import FS_DEVICE_ID, fs_config as config_space

    key = f"fs[{index}]"
    socket, wait = fs_config.socket, 0.0
    if fs_config.path:
        from ..backends.daemons import START_TIMEOUT, virtiofsd

        daemon = virtiofsd(fs_config.path, f"{key}.path")
        backends.append(daemon)
        socket, wait = daemon.socket, START_TIMEOUT
    name = f"virtio-fs {fs_config.tag!r}"
    return _vhost_user(key, socket, wait, memory, backends, FS_DEVICE_ID, name, 2, lambda _: config_space(fs_config.tag, 1), 0)


#: virtio-blk features a vhost-user-blk back end may offer the driver (virtio 1.2, 5.2.3):
#: SIZE_MAX, SEG_MAX, GEOMETRY, RO, BLK_SIZE, FLUSH, TOPOLOGY, DISCARD, WRITE_ZEROES.
#: Not MQ (the device has one queue) and not CONFIG_WCE (config writes are not forwarded).
VHOST_USER_BLK_FEATURES = sum(1 << bit for bit in (1, 2, 4, 5, 6, 9, 10, 13, 14))
BLK_CONFIG_SIZE = 60  # struct virtio_blk_config up to write_zeroes_may_unmap and padding


def _vhost_user_blk(index: int, disk: Any, memory: GuestMemory, backends: list[Closeable]) -> Any:
    """vhost-user-blk: a back end at ``vhost_user``, or a qemu-storage-daemon of our own serving
    the qcow2 overlay ``path`` over ``base``.  The config space is the back end's (GET_CONFIG)."""
    key = f"disks[{index}]"
    socket, wait = disk.vhost_user, 0.0
    if disk.base:
        from ..backends.daemons import START_TIMEOUT, storage_daemon

        daemon = storage_daemon(disk.path, disk.base, disk.readonly, disk.cache == "none", key)
        backends.append(daemon)
        socket, wait = daemon.socket, START_TIMEOUT

    def config(backend: Any) -> bytes:
        if not backend.has_config:
            raise UsageError(f"{key}: the back end at {socket} does not offer its configuration (protocol feature CONFIG)")
        return bytes(backend.get_config(BLK_CONFIG_SIZE))

    return _vhost_user(key, socket, wait, memory, backends, 2, f"vhost-user-blk {key}", 1, config,
                       VHOST_USER_BLK_FEATURES)


def _vhost_user(
    key: str, socket: str, wait: float, memory: GuestMemory, backends: list[Closeable], device_id: int, name: str,
    queues: int, config: Any, allowed: int,
) -> Any:
    """A vhost-user device: connect (and hand over the memfd regions), check the back end, make the device."""
    from ..backends.vhost_user import MemRegion, QueueLayout, VhostUserBackend, VhostUserError
    from ..devices.virtio.vhost_user import VhostUser

    regions = [MemRegion(r.gpa, r.size, r.host_addr, r.fd) for r in memory.regions]
    try:
        backend = VhostUserBackend.open(socket, name, regions, queues, memory.host_address, wait)
        backends.append(backend)
        if not backend.features >> 32 & 1:  # VIRTIO_F_VERSION_1: pyhv's transport is modern only
            raise UsageError(f"{key}: the back end at {socket} does not offer VIRTIO_F_VERSION_1")
        space = config(backend)
    except VhostUserError as e:
        raise UsageError(f"{key}: {e}") from None
    return VhostUser(memory, backend, device_id, name, queues, space, allowed, QueueLayout)


def _acpi_devices(config: Description) -> list[bytes]:
    """AML for the DSDT's \\_SB scope: the legacy devices the guest should find."""
    return [acpi.com_device("COM1", 1, uart.COM1_BASE, uart.COM1_IRQ), acpi.rtc_device(rtc.INDEX_PORT, rtc.RTC_IRQ),
            acpi.fw_cfg_device(fw_cfg.ACPI_HID, fw_cfg.PORT_BASE, fw_cfg.ACPI_IO_LENGTH)] + (
            [vmgenid.acpi_device()] if _has_vmgenid(config) else [])


def _has_vmgenid(config: Description) -> bool:
    """The VM Generation ID's page is below 1 MiB, which firmware uses as it likes:
    pyhv places one only when it loads the kernel itself."""
    return config.vmgenid and not config.payload.firmware


def _firmware(path: str, memory: GuestMemory, fresh: bool) -> None:
    """A BIOS ROM at the top of the first 4 GiB and (on a ``fresh`` boot; a restored
    machine, or one whose RAM was kept over a reset, has it in its RAM, as shadow RAM
    keeps it on a PC) its last 128 KiB below 1 MiB; the boot vCPU starts at the reset
    vector, where KVM's reset state has it (boot/firmware.py)."""
    from ..boot.firmware import read_firmware

    image = read_firmware(path)
    if not memory.roms:  # RAM kept over a reset keeps its ROM too
        memory.add_rom(image.rom_addr, image.rom)
    if fresh:
        memory.write(image.low_addr, image.low)


def _fw_cfg(
    config: Description, memory: GuestMemory, tables: acpi.LoaderFiles, cmdline: str
) -> fw_cfg.FwCfg:
    """fw_cfg with the machine's facts and files: the e820 map the guest gets, an empty
    boot order, the ACPI tables with QEMU's linker/loader commands, the command line
    the guest boots with (FW_CFG_CMDLINE_*), and the description's entries (host files
    read now).

    QEMU also gives the kernel, its setup code and the initrd (``boot/firmware.py``
    builds those items) because its firmware loads them; pyhv loads the kernel
    itself and ``--firmware`` boots from the guest's disks, so nothing here reads
    them, and reading the images twice would cost every boot their size in time
    and memory."""
    from ..boot.firmware import KernelItems
    from ..boot.layout import CMDLINE_ADDR, e820_map

    ram = memory.ram_ranges()
    files = [(fw_cfg.E820_FILE, fw_cfg.e820_file(e820_map(ram))), (fw_cfg.BOOTORDER_FILE, b""),
             (fw_cfg.ACPI_TABLES_FILE, tables.tables), (fw_cfg.ACPI_RSDP_FILE, tables.rsdp),
             (fw_cfg.TABLE_LOADER_FILE, tables.loader)]
    if _has_vmgenid(config):
        files.append((vmgenid.FW_CFG_FILE, vmgenid.fw_cfg_file()))
    for i, entry in enumerate(config.fw_cfg):
        if not entry.name.startswith("opt/"):  # QEMU warns too: firmware may use such a name
            print(f"pyhv: warning: fw_cfg[{i}].name {entry.name!r}: names outside opt/ may clash", file=sys.stderr)
        data = _read_fw_cfg_file(f"fw_cfg[{i}].file", entry.file) if entry.file else entry.string.encode()
        files.append((entry.name, data))
    kernel = None
    if not config.payload.firmware:
        kernel = KernelItems(cmdline=(CMDLINE_ADDR, cmdline.encode("utf-8", "surrogateescape") + b"\0"))
    return fw_cfg.FwCfg(memory, ram_size=config.memory, nb_cpus=config.vcpus, max_cpus=config.vcpus, files=files,
                        kernel=kernel._asdict() if kernel else None)


def _read_fw_cfg_file(key: str, path: str) -> bytes:
    """A regular file of at most FW_CFG_DATA_MAX bytes; else one line naming the key."""
    import os
    import stat

    try:
        fd = open_handed(path, os.O_RDONLY | os.O_NONBLOCK | os.O_CLOEXEC)  # a FIFO must not hang the build
    except OSError as e:
        raise UsageError(f"{key} {path}: cannot read: {e.strerror}") from None
    try:
        if not stat.S_ISREG(os.fstat(fd).st_mode):
            raise UsageError(f"{key} {path}: not a regular file")
        with open(fd, "rb", closefd=False) as f:
            data = f.read(FW_CFG_DATA_MAX + 1)
    except OSError as e:
        raise UsageError(f"{key} {path}: cannot read: {e.strerror}") from None
    finally:
        os.close(fd)
    if len(data) > FW_CFG_DATA_MAX:
        raise UsageError(f"{key} {path}: larger than {FW_CFG_DATA_MAX // (1 << 20)} MiB")
    return data

