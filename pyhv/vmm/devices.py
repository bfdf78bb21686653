"""A machine's devices, by kind: the one place they are looked up, saved and put back.

The builder makes every device and hands them here; nothing else keeps a
table of them.  The legacy devices have fixed roles (COM1, the i8042 reset
line, the CMOS clock, port 0x80, the ACPI PM registers, debug-exit, fw_cfg); the
virtio devices sit on PCI, each in its slot, or on MMIO windows, each at its
index, and are found by type.

Their state (:meth:`Devices.state`) is plain values keyed by role, PCI slot
and MMIO index, which is what a snapshot or a migration stream carries;
:meth:`Devices.set_state` checks each part before changing anything.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, TypeVar

from ..devices.state import DeviceStateError, check_keys

if TYPE_CHECKING:
    from ..devices.legacy.acpi_pm import AcpiPm
    from ..devices.legacy.debug_exit import DebugExit
    from ..devices.legacy.fw_cfg import FwCfg
    from ..devices.legacy.i8042 import I8042
    from ..devices.legacy.port80 import ProgressCodes
    from ..devices.legacy.rtc import Rtc
    from ..devices.legacy.uart import Uart
    from ..devices.virtio.balloon import Balloon
    from ..devices.virtio.device import VirtioDevice
    from .mmio import MmioWiring
    from .pci import PciWiring

T = TypeVar("T")

#: the legacy devices whose state a snapshot carries (the others hold none)
STATEFUL = ("com1", "rtc", "i8042", "fw_cfg")
#: roles a snapshot taken before the device existed lacks: left as built
OPTIONAL = ("fw_cfg",)
#: parts a snapshot taken before virtio-MMIO lacks: what they held then (nothing)
EMPTY_BEFORE: dict[str, Any] = {"mmio": {}}


class Devices:
    def __init__(
        self, *, com1: Uart, i8042: I8042, rtc: Rtc, progress: ProgressCodes, acpi_pm: AcpiPm, pci: PciWiring,
        mmio: MmioWiring, fw_cfg: FwCfg, debug_exit: DebugExit | None = None,
    ) -> None:
        self.com1 = com1
        self.i8042 = i8042
        self.rtc = rtc
        self.progress = progress
        self.acpi_pm = acpi_pm
        self.debug_exit = debug_exit
        self.fw_cfg = fw_cfg
        self.pci = pci
        self.mmio = mmio

    # --- lookup ---------------------------------------------------------------------------

    def virtio(self) -> list[tuple[str, VirtioDevice]]:
        """Every virtio device with where it is (``pci3``: PCI slot 3, ``mmio0``: the
        first MMIO window), PCI devices in slot order, then MMIO ones in window order."""
        root = self.pci.root
        pci = sorted(((root.slot_of(t), t.device) for t in self.pci.transports), key=lambda pair: pair[0])
        return [(f"pci{slot}", d) for slot, d in pci] + [(f"mmio{i}", t.device) for i, t in enumerate(self.mmio.transports)]

    def of_type(self, cls: type[T]) -> list[tuple[str, T]]:
        """The virtio devices of one kind (``Blk``, ``Net``, ...), with where they are."""
        return [(place, d) for place, d in self.virtio() if isinstance(d, cls)]

    @property
    def balloon(self) -> Balloon | None:
        from ..devices.virtio.balloon import Balloon

        found = self.of_type(Balloon)
        return found[0][1] if found else None

    # --- state --------------------------------------------------------------------------------

    def state(self) -> dict[str, Any]:
        root = self.pci.root
        return {
            "com1": self.com1.state(), "rtc": self.rtc.state(), "i8042": self.i8042.state(),
            "fw_cfg": self.fw_cfg.state(),
            "pci_root": root.state(),
            "pci": {str(root.slot_of(t)): t.state() for t in self.pci.transports},
            "mmio": {str(i): t.state() for i, t in enumerate(self.mmio.transports)},
        }

    def set_state(self, states: Any) -> None:
        """Put every device back; each checks its part before changing anything."""
        if isinstance(states, dict):  # a snapshot from before fw_cfg: it stays as built
            states = {**dict.fromkeys(OPTIONAL), **EMPTY_BEFORE, **states}
        check_keys(states, {*STATEFUL, "pci_root", "pci", *EMPTY_BEFORE}, "machine devices")
        root = self.pci.root
        slots = _matching("pci", states["pci"], {str(root.slot_of(t)): t for t in self.pci.transports})
        windows = _matching("mmio", states["mmio"], {str(i): t for i, t in enumerate(self.mmio.transports)})
        self.com1.set_state(states["com1"])
        self.rtc.set_state(states["rtc"])
        self.i8042.set_state(states["i8042"])
        if states["fw_cfg"] is not None:
            self.fw_cfg.set_state(states["fw_cfg"])
        root.set_state(states["pci_root"])
        for transport, state in (slots | windows).values():
            transport.set_state(state)
        root.refresh_mappings()

    def close(self) -> None:
        """Release the transports' notify eventfds (after the I/O thread stopped)."""
        self.pci.close()
        self.mmio.close()


def _matching(kind: str, states: Any, transports: dict[str, Any]) -> dict[str, tuple[Any, Any]]:
    """Each transport (by PCI slot or MMIO index) with its saved state; the two sets must match."""
    if not isinstance(states, dict) or set(states) != set(transports):
        raise DeviceStateError(f"{kind} state: devices at {sorted(states) if isinstance(states, dict) else states!r:.60}, "
                               f"this machine has {sorted(transports)}")
    return {f"{kind}{key}": (transport, states[key]) for key, transport in transports.items()}
