"""The builder: the one place that wires memory, devices, vCPUs and backends.

Order matters on KVM (see docs/ARCHITECTURE.md): memory slots are registered
before the in-kernel interrupt controller is created, because registering them
afterwards costs milliseconds per slot.
"""

from __future__ import annotations

from ..backends.console import open_console
from ..boot import load_kernel
from ..devices.bus import MmioBus, PioBus
from ..devices.legacy import debug_exit, i8042, port80, uart
from ..errors import PyhvError
from ..kvm import Kvm
from ..memory import GuestMemory
from ..vcpu import Stop, StopKind, VcpuThread
from .config import MachineConfig
from .cpu import apply_entry_state, setup_cpuid
from .machine import Machine

_BOOT_PROTOCOL = {"auto": "auto", "linux": "linux", "pvh": "pvh", "multiboot": "multiboot"}


def build(config: MachineConfig, kvm: Kvm | None = None) -> Machine:
    """Create a machine ready to start; on any error release what was made."""
    console = open_console(config.serial)
    vm = memory = machine = None
    try:
        # Images are checked and loaded before /dev/kvm is touched: bad input
        # fails the same way on any machine, and fails fast.
        memory = GuestMemory(config.memory)
        entry = load_kernel(
            memory, config.kernel, config.initrd, config.cmdline, protocol=_BOOT_PROTOCOL[config.boot]
        )
        kvm = kvm or Kvm()
        vm = kvm.create_vm()
        vm.set_tss_addr()
        memory.register(vm)
        vm.create_irqchip()

        pio, mmio = PioBus(), MmioBus()
        progress = port80.ProgressCodes()
        machine = Machine(config, kvm, vm, memory, pio, mmio, console, progress)

        com1 = uart.Uart(console.write, irq=lambda level: vm.irq_line(uart.COM1_IRQ, int(level)))
        pio.insert(uart.COM1_BASE, 8, com1, "com1")
        kbc = i8042.I8042(reset=lambda: machine.request_stop(Stop(StopKind.RESET, 0, "guest reset")))
        pio.insert(i8042.DATA_PORT, 1, kbc.data, "i8042-data")
        pio.insert(i8042.COMMAND_PORT, 1, kbc.command, "i8042-command")
        pio.insert(port80.PORT, 1, progress, "port80")
        machine.devices.update(com1=com1, i8042=kbc, port80=progress)
        if config.debug_exit:
            dbg = debug_exit.DebugExit(
                lambda value: machine.request_stop(
                    Stop(StopKind.DEBUG_EXIT, value & 0xFF, f"guest wrote {value:#x} to debug-exit")
                )
            )
            pio.insert(debug_exit.DEFAULT_BASE, debug_exit.LENGTH, dbg, "debug-exit")
            machine.devices["debug-exit"] = dbg

        for index in range(config.vcpus):
            vcpu = vm.create_vcpu(index)
            setup_cpuid(kvm, vcpu)
            if index == 0:
                apply_entry_state(vcpu, entry)
            machine.vcpus.append(VcpuThread(vcpu, pio, mmio, machine._vcpu_stopped))
        console.start_input(
            com1.enqueue, lambda: machine.request_stop(Stop(StopKind.HOST, 0, "console escape"))
        )
        return machine
    except BaseException:
        if machine is not None:
            machine.close()
        else:
            for resource in (memory, vm, kvm, console):
                if resource is not None:
                    resource.close()
        raise


__all__ = ["build", "PyhvError"]
