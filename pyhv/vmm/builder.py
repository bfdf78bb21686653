"""The builder: the one place that wires memory, devices, vCPUs and backends.

Order matters on KVM (see docs/ARCHITECTURE.md): memory slots are registered
before the in-kernel interrupt controller is created, because registering them
afterwards costs milliseconds per slot.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, Protocol

from ..backends.console import Console, open_console
from ..boot import acpi, load_kernel
from ..devices.bus import MmioBus, PioBus
from ..devices.legacy import acpi_pm, debug_exit, i8042, port80, rtc, uart
from ..errors import UsageError
from ..kvm import Kvm
from ..memory import GuestMemory
from ..vcpu import Stop, StopKind, VcpuThread
from .config import MachineConfig, default_mac, parse_mac

if TYPE_CHECKING:
    from ..devices.virtio.balloon import Balloon
    from ..devices.virtio.net import Net
    from ..devices.virtio.vsock import Vsock
from .cpu import apply_entry_state, setup_cpuid, setup_msrs, supported_entries
from .iothread import IoThread
from .machine import Closeable, Machine
from .pci import PciWiring

class RestoreSource(Protocol):
    """Where a restored machine comes from: a snapshot file or a migration stream."""

    config: MachineConfig
    state: dict[str, Any]  # checked by snapshot.check_state
    vcpu_states: list[Any]

    def take_memory(self) -> GuestMemory: ...


def build(
    config: MachineConfig, kvm: Kvm | None = None, console: Console | None = None,
    restore: RestoreSource | None = None,
) -> Machine:
    """Create a machine ready to start; on any error release what was made.

    A ``console`` passed in stays the caller's (it outlives restarts); without
    one the machine opens ``config.serial`` and closes it with itself.  With
    ``restore`` the machine is the one it describes (``config`` should be its
    ``config``): memory comes from it instead of a kernel, and devices, vCPUs,
    interrupt controllers and the clock take its state before anything runs."""
    owns_console = console is None
    console = console or open_console(config.serial)
    vm = memory = machine = None
    backends: list[Closeable] = []  # what the machine closes
    wiring = PciWiring()
    try:
        # Images are checked and loaded before /dev/kvm is touched: bad input
        # fails the same way on any machine, and fails fast.
        memory = restore.take_memory() if restore is not None else GuestMemory(config.memory)
        def deliver(address: int, data: int) -> None:
            # devices are made before the VM; interrupts only flow once it exists
            assert vm is not None
            vm.signal_msi(address, data)

        nets, balloon, vsock = _virtio_devices(config, memory, wiring, deliver, backends)
        entry = None
        if restore is None:
            pci_devices, pci_tables = wiring.acpi()
            tables = acpi.build_tables(list(range(config.vcpus)), _acpi_devices() + pci_devices, pci_tables)
            tables.write(memory)
            entry = load_kernel(
                memory,
                config.kernel,
                config.initrd,
                config.cmdline,
                protocol=config.boot,
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
        machine = Machine(config, kvm, vm, memory, pio, mmio, console, progress, owns_console)
        machine.io = IoThread()
        machine.pci = wiring
        machine.backends = backends
        machine.balloon = balloon
        wiring.attach(vm, pio, mmio, machine.io)
        for net in nets:
            net.watch_rx = _rx_watcher(machine.io, net)
        if vsock is not None:
            vsock.watch = machine.io.watch
        machine.devices.update({f"pci{wiring.root.slot_of(t)}": t.device for t in wiring.transports})

        com1 = uart.Uart(console.write, irq=lambda level: vm.irq_line(uart.COM1_IRQ, int(level)))
        pio.insert(uart.COM1_BASE, 8, com1, "com1")
        kbc = i8042.I8042(reset=lambda: machine.request_stop(Stop(StopKind.RESET, 0, "guest reset")))
        pio.insert(i8042.DATA_PORT, 1, kbc.data, "i8042-data")
        pio.insert(i8042.COMMAND_PORT, 1, kbc.command, "i8042-command")
        pio.insert(port80.PORT, 1, progress, "port80")
        pm = acpi_pm.AcpiPm(
            poweroff=lambda: machine.request_stop(Stop(StopKind.POWEROFF, 0, "guest powered off")),
            reset=lambda: machine.request_stop(Stop(StopKind.RESET, 0, "guest reset")),
        )
        for port, register, name in pm.ports():
            pio.insert(port, 1, register, name)
        ram = memory.ram_ranges()
        clock = rtc.Rtc(mem_below_4g=ram[0][1], mem_above_4g=sum(size for _, size in ram[1:]))
        pio.insert(rtc.INDEX_PORT, 1, clock.index_port, "rtc-index")
        pio.insert(rtc.DATA_PORT, 1, clock.data_port, "rtc-data")
        machine.devices.update(com1=com1, i8042=kbc, port80=progress, acpi_pm=pm, rtc=clock)
        if config.debug_exit:
            dbg = debug_exit.DebugExit(
                lambda value: machine.request_stop(
                    Stop(StopKind.DEBUG_EXIT, value & 0xFF, f"guest wrote {value:#x} to debug-exit")
                )
            )
            pio.insert(debug_exit.DEFAULT_BASE, debug_exit.LENGTH, dbg, "debug-exit")
            machine.devices["debug-exit"] = dbg

        supported = supported_entries(kvm.supported_cpuid())
        for index in range(config.vcpus):
            vcpu = vm.create_vcpu(index)
            setup_cpuid(vcpu, supported, config.vcpus)
            if entry is not None:
                setup_msrs(vcpu)
                if index == 0:
                    apply_entry_state(vcpu, entry)
            machine.vcpus.append(VcpuThread(vcpu, pio, mmio, machine._vcpu_stopped))
        if restore is not None:
            from .snapshot import apply_device_states, apply_vm_state

            apply_device_states(machine, restore.state["devices"])
            apply_vm_state(machine, restore.state, restore.vcpu_states)
            for transport in wiring.transports:
                machine.io.call_soon(transport.device.after_restore)  # runs once the machine starts
        console.start_input(
            com1.enqueue, lambda: machine.request_stop(Stop(StopKind.HOST, 0, "console escape"))
        )
        return machine
    except BaseException:
        if machine is not None:
            machine.close()
        else:
            wiring.close()
            for resource in (*backends, memory, vm, kvm, console if owns_console else None):
                if resource is not None:
                    resource.close()
        raise


def _virtio_devices(
    config: MachineConfig, memory: GuestMemory, wiring: PciWiring, deliver: Any, backends: list[Closeable]
) -> tuple[list[Net], Balloon | None, Vsock | None]:
    """Open the backends and put the configured virtio devices on PCI.

    Each device's module is imported only when the machine has one: the
    domain's start-up pays for what it uses.
    """
    from ..devices.virtio.pci import VirtioPci

    nets: list[Net] = []
    if config.disks:
        from ..backends.block import RawDisk, check_distinct
        from ..devices.virtio.blk import Blk

        check_distinct([d.path for d in config.disks])
        for disk_config in config.disks:
            disk = RawDisk(disk_config.path, readonly=disk_config.readonly)
            backends.append(disk)
            wiring.add(VirtioPci(Blk(memory, disk, serial=disk_config.serial), deliver))
    if config.nets:
        from ..backends.tap import Tap
        from ..devices.virtio.net import Net

        for net_config in config.nets:
            tap = Tap(net_config.tap, fd=net_config.fd if net_config.fd >= 0 else None, bridge=net_config.bridge)
            backends.append(tap)
            mac = parse_mac(net_config.mac) if net_config.mac else default_mac(net_config.tap)
            net = Net(memory, tap, mac)
            nets.append(net)
            wiring.add(VirtioPci(net, deliver))
    if config.rng:
        from ..devices.virtio.rng import Rng

        wiring.add(VirtioPci(Rng(memory), deliver))
    balloon = None
    if config.balloon:
        from ..devices.virtio.balloon import Balloon

        balloon = Balloon(memory)
        wiring.add(VirtioPci(balloon, deliver))
    vsock = None
    if config.vsock is not None:
        from ..devices.virtio.vsock import Vsock

        vsock = Vsock(memory, config.vsock.cid, config.vsock.uds)
        try:
            vsock.listen()
        except OSError as e:
            raise UsageError(f"--vsock: cannot listen on {config.vsock.uds}: {e.strerror}") from None
        backends.append(vsock)
        wiring.add(VirtioPci(vsock, deliver))
    return nets, balloon, vsock


def _rx_watcher(io: IoThread, net: Net):  # type: ignore[no-untyped-def]
    def watch(on: bool) -> None:
        if on:
            io.add_reader(net.tap.fd, net.tap_readable)
        else:
            io.remove(net.tap.fd)

    return watch


def _acpi_devices() -> list[bytes]:
    """AML for the DSDT's \\_SB scope: the legacy devices the guest should find."""
    return [acpi.com_device("COM1", 1, uart.COM1_BASE, uart.COM1_IRQ), acpi.rtc_device(rtc.INDEX_PORT, rtc.RTC_IRQ)]

