import os
import pathlib
import subprocess

import pytest

ROOT = pathlib.Path(__file__).resolve().parent.parent
PROBE = ROOT / "guests" / "build" / "probe.elf"


def symbol(name: str, elf: pathlib.Path = PROBE) -> int:
    """The address of the global symbol ``name`` in an ELF file (``nm``)."""
    out = subprocess.run(["nm", str(elf)], capture_output=True, text=True, check=True).stdout
    (addr,) = [line.split()[0] for line in out.splitlines() if line.endswith(f" {name}")]
    return int(addr, 16)


def kvm_usable() -> bool:
    return os.access("/dev/kvm", os.R_OK | os.W_OK)


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """Guest-booting tests need /dev/kvm; where it is missing they fail loudly
    unless PYHV_NO_KVM=1 says this machine is known to lack it."""
    if kvm_usable() or os.environ.get("PYHV_NO_KVM") != "1":
        return
    skip = pytest.mark.skip(reason="PYHV_NO_KVM=1: no /dev/kvm on this machine")
    for item in items:
        if "kvm" in item.keywords:
            item.add_marker(skip)
