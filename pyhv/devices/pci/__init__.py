"""PCI: config spaces, MSI-X, and bus 0 behind a host bridge.

* :mod:`.config` -- one function's 4 KiB config space with writable masks, BARs and capabilities
* :mod:`.msix` -- the MSI-X capability, vector table and pending bits
* :mod:`.device` -- :class:`PciDevice`, what a transport implements, and :class:`BarWindow`
* :mod:`.root` -- :class:`PciRoot`: slots, mechanism #1 and ECAM access, BAR placement
* :mod:`.acpi` -- MCFG and the DSDT root bridge for the ACPI tables
"""

from .config import MEM32, MEM64, Bar, PciConfigSpace
from .device import BarWindow, PciDevice
from .msix import MsixCapability, MsixTable
from .root import BarRegion, PciConfigIo, PciConfigMmio, PciError, PciRoot

__all__ = [
    "MEM32",
    "MEM64",
    "Bar",
    "BarRegion",
    "BarWindow",
    "MsixCapability",
    "MsixTable",
    "PciConfigIo",
    "PciConfigMmio",
    "PciConfigSpace",
    "PciDevice",
    "PciError",
    "PciRoot",
]
