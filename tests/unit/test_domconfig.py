"""Domain configuration files: valid ones become machine configs, bad ones name the key."""

from __future__ import annotations

import textwrap
from pathlib import Path

import pytest

from pyhv.errors import UsageError
from pyhv.memory import MiB
from pyhv.toolstack import domconfig

MINIMAL = {"name": "web1", "kernel": "guests/build/probe.elf"}


def test_documented_example_parses(tmp_path: Path) -> None:
    doc = domconfig.__doc__ or ""
    example = textwrap.dedent(doc.split("Example::", 1)[1].split('"""')[0])
    path = tmp_path / "web1.toml"
    path.write_text(example)
    cfg = domconfig.load(str(path))
    assert (cfg.name, cfg.machine.vcpus, cfg.maxmem, cfg.on_crash, cfg.sched.weight) == ("web1", 2, 512 * MiB, "destroy", 256)
    assert cfg.machine.disks[0].serial == "web1-root" and cfg.machine.nets[0].bridge == "br0" and cfg.machine.vsock is not None


def test_minimal_config_gets_defaults() -> None:
    cfg = domconfig.parse(dict(MINIMAL))
    assert (cfg.machine.memory, cfg.machine.vcpus, cfg.maxmem, cfg.machine.on_reboot) == (256 * MiB, 1, 256 * MiB, "restart")


def test_memory_as_a_number_is_mib() -> None:
    assert domconfig.parse(MINIMAL | {"memory": 512}).machine.memory == 512 * MiB


@pytest.mark.parametrize(
    "extra,message",
    [
        ({"vcpus": 0}, "vcpus: must be an integer between 1 and 255"),
        ({"vcpus": "2"}, "vcpus: must be an integer"),
        ({"memory": "lots"}, "memory 'lots'"),
        ({"maxmem": "128M"}, "maxmem: must be at least memory"),
        ({"name": "-bad"}, "name:"),
        ({"colour": "red"}, "colour: unknown key"),
        ({"on_crash": "explode"}, "on_crash: must be one of"),
        ({"disks": [{"path": "/d", "size": 3}]}, "disks[0].size: unknown key"),
        ({"disks": [{}]}, "disks[0].path: required"),
        ({"disks": {"path": "/d"}}, "disks: must be an array of tables"),
        ({"nics": [{"tap": "t0", "mac": "01:00:00:00:00:00"}]}, "nics[0].mac: 01:00:00:00:00:00 is a multicast"),
        ({"nics": [{"tap": "x" * 16}]}, "nics[0].tap: interface names are 1-15"),
        ({"vsock": {"cid": 2, "uds": "/s"}}, "vsock.cid: must be an integer between 3"),
        ({"sched": {"weight": 0}}, "sched.weight: must be an integer between 1"),
        ({"balloon": "yes"}, "balloon: must be true or false"),
    ],
)
def test_bad_value_names_the_key(extra: dict[str, object], message: str) -> None:
    with pytest.raises(UsageError) as e:
        domconfig.parse(MINIMAL | extra)
    assert message in str(e.value)


def test_missing_kernel_is_required() -> None:
    with pytest.raises(UsageError, match="kernel: required"):
        domconfig.parse({"name": "a"})


def test_file_that_is_not_toml_names_the_file(tmp_path: Path) -> None:
    path = tmp_path / "bad.toml"
    path.write_text("name = [unclosed")
    with pytest.raises(UsageError, match=f"{path}: not valid TOML"):
        domconfig.load(str(path))


def test_error_from_a_file_names_file_and_key(tmp_path: Path) -> None:
    path = tmp_path / "d.toml"
    path.write_text('name = "a"\nkernel = "k"\nvcpus = 999\n')
    with pytest.raises(UsageError, match=f"{path}: vcpus: must be an integer"):
        domconfig.load(str(path))
