"""What a machine is made of, as validated plain values."""

from __future__ import annotations

from ..errors import UsageError
from ..memory import PAGE_SIZE, MiB

MIN_MEMORY = 16 * MiB
MAX_MEMORY = 1 << 40
MAX_VCPUS = 255  # xAPIC IDs are 8 bits; 0xff is the broadcast ID
BOOT_PROTOCOLS = ("auto", "linux", "pvh", "multiboot")
ON_REBOOT = ("destroy", "restart")
ON_POWEROFF = ("destroy", "restart")

_UNITS = {"": MiB, "k": 1 << 10, "m": MiB, "g": 1 << 30, "t": 1 << 40}


def parse_size(text: str, what: str = "memory") -> int:
    """``256M``, ``1G``, ``512`` (MiB), ``65536k``; case-insensitive, optional trailing B/iB."""
    s = text.strip().lower()
    for suffix in ("ib", "b"):
        if s.endswith(suffix) and len(s) > len(suffix) and not s[-len(suffix) - 1].isdigit():
            s = s[: -len(suffix)]
            break
    unit = s[-1:] if s[-1:] in _UNITS and not s[-1:].isdigit() else ""
    number = s[: len(s) - len(unit)]
    if not number.isdigit():
        raise UsageError(f"{what} {text!r}: expected a size such as 256M or 2G")
    return int(number) * _UNITS[unit]


class MachineConfig:
    """Validated on construction; treat as read-only afterwards."""

    def __init__(
        self,
        kernel: str,
        initrd: str | None = None,
        cmdline: str = "",
        memory: int = 256 * MiB,
        vcpus: int = 1,
        debug_exit: bool = False,
        serial: str = "stdio",
        boot: str = "auto",
        on_reboot: str = "destroy",
        on_poweroff: str = "destroy",
    ) -> None:
        self.kernel = kernel
        self.initrd = initrd
        self.cmdline = cmdline
        self.memory = memory
        self.vcpus = vcpus
        self.debug_exit = debug_exit
        self.serial = serial
        self.boot = boot
        self.on_reboot = on_reboot
        self.on_poweroff = on_poweroff
        self._validate()

    def __repr__(self) -> str:
        return f"MachineConfig({', '.join(f'{k}={v!r}' for k, v in vars(self).items())})"

    def _validate(self) -> None:
        if not MIN_MEMORY <= self.memory <= MAX_MEMORY:
            raise UsageError(f"memory {self.memory // MiB} MiB: must be between 16 MiB and 1 TiB")
        if self.memory % PAGE_SIZE:
            raise UsageError("memory must be a multiple of 4 KiB")
        if not 1 <= self.vcpus <= MAX_VCPUS:
            raise UsageError(f"vcpus {self.vcpus}: must be between 1 and {MAX_VCPUS}")
        if self.boot not in BOOT_PROTOCOLS:
            raise UsageError(f"boot {self.boot!r}: expected one of {', '.join(BOOT_PROTOCOLS)}")
        if self.on_reboot not in ON_REBOOT:
            raise UsageError(f"on_reboot {self.on_reboot!r}: expected one of {', '.join(ON_REBOOT)}")
        if self.on_poweroff not in ON_POWEROFF:
            raise UsageError(f"on_poweroff {self.on_poweroff!r}: expected one of {', '.join(ON_POWEROFF)}")
