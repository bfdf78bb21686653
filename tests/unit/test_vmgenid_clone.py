"""The VM Generation ID device (its DSDT node, fw_cfg file and GUIDs) and the
descriptions of snapshot clones."""

from __future__ import annotations

import shutil
import struct
import subprocess
from pathlib import Path

import pytest

from pyhv import model
from pyhv.boot import acpi
from pyhv.devices import vmgenid
from pyhv.model import DescriptionError

from .fakes import FakeRam, MiB

SAVED = model.describe(name="web", kernel="/k", nics=[{"tap": "web0", "bridge": "br0"}, {"tap": "web1"}],
                       vsock={"cid": 5, "uds": "/run/web.vsock"}, disks=[{"path": "/img", "readonly": True}])


def test_new_generation_writes_a_random_version_4_guid_at_the_address() -> None:
    ram = FakeRam.of_size(16 * MiB)

    first, second = vmgenid.new_generation(ram), vmgenid.new_generation(ram)

    assert ram.read(vmgenid.ADDR, vmgenid.SIZE) == second != first
    assert second[7] >> 4 == 4 and second[8] >> 6 == 2


def test_fw_cfg_file_holds_the_address_little_endian() -> None:
    assert struct.unpack("<Q", vmgenid.fw_cfg_file()) == (vmgenid.ADDR,)
    assert vmgenid.ADDR % 8 == 0 and vmgenid.ADDR + vmgenid.SIZE <= acpi.ACPI_BASE


IASL = shutil.which("iasl")


@pytest.mark.skipif(IASL is None, reason="iasl (acpica-tools) not installed; scripts/setup installs it")
def test_iasl_reads_the_device_ids_and_the_addr_method(tmp_path: Path) -> None:
    tables = acpi.build_tables([0], [vmgenid.acpi_device(0x1_2345_6000)])
    (tmp_path / "dsdt.dat").write_bytes(tables.blobs[tables.tables["DSDT"]])

    subprocess.run([IASL, "-d", "dsdt.dat"], cwd=tmp_path, capture_output=True, check=True)

    dsl = " ".join((tmp_path / "dsdt.dsl").read_text().split())
    assert 'Name (_HID, "VMGENCTR")' in dsl and 'Name (_CID, "VM_GEN_COUNTER")' in dsl
    assert "Method (ADDR, 0, NotSerialized) { Return (Package (0x02) { 0x23456000, One }) }" in dsl


def test_clones_get_names_taps_macs_and_vsock_of_their_own() -> None:
    clones = [model.clone(SAVED, i, "web") for i in (1, 2, 3)]

    assert [c.name for c in clones] == ["web-1", "web-2", "web-3"]
    assert [c.nics[0].tap for c in clones] == ["web0-1", "web0-2", "web0-3"] and clones[0].nics[0].bridge == "br0"
    macs = [model.parse_mac(n.mac) for c in clones for n in c.nics]
    assert len(set(macs)) == 6 and all(m[0] & 3 == 2 for m in macs)  # unicast, locally administered
    assert [c.vsock for c in clones] == [model.Vsock(5 + i, f"/run/web.vsock-{i}") for i in (1, 2, 3)]
    assert all(model.from_plain(model.to_plain(c)) == c for c in clones)
    assert all(c._replace(name="web", nics=SAVED.nics, vsock=SAVED.vsock) == SAVED for c in clones)


@pytest.mark.parametrize("changes, key", [
    ({"disks": (model.Disk("/img"),)}, "disks[0].path: a writable disk cannot be shared by clones"),
    ({"nics": (model.Nic("fifteen-chars-x"),)}, "nics[0].tap: fifteen-chars-x-1: a clone's interface name"),
    ({"vsock": model.Vsock(model.VSOCK_CID_MAX, "/v")}, "vsock.cid: clone 1 would have CID"),
    ({"vsock": model.Vsock(3, "/" + "v" * (model.VSOCK_UDS_MAX - 1))}, "vsock.uds: "),
])
def test_a_clone_that_cannot_have_its_own_resources_is_refused_naming_the_key(
        changes: dict[str, object], key: str) -> None:
    with pytest.raises(DescriptionError, match=key.replace("[", r"\[").replace("]", r"\]")):
        model.clone(SAVED._replace(**changes), 1, "web")  # type: ignore[arg-type]


def test_vmgenid_is_on_by_default_and_round_trips() -> None:
    assert model.describe(kernel="/k").vmgenid is True
    off = model.describe(kernel="/k", vmgenid=False)
    assert model.from_plain(model.to_plain(off)) == off
