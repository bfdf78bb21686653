"""The machine description: one model, one check, one serialisation, every syntax."""

from __future__ import annotations

import json
import textwrap
import tomllib
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from pyhv import model
from pyhv.cli import RUN_OPTIONS, parse
from pyhv.errors import UsageError
from pyhv.model import DescriptionError, Disk, files, from_plain, options, to_plain
from pyhv.vmm.snapshot import SnapshotError, description_from_state

MiB = 1 << 20
MINIMAL = {"name": "web1", "kernel": "guests/build/probe.elf"}


def test_documented_example_parses() -> None:
    doc = model.__doc__ or ""
    example = textwrap.dedent(doc.split("The plain form is the TOML/JSON schema::", 1)[1].split("A problem is")[0])
    d = from_plain(tomllib.loads(example))
    assert (d.name, d.vcpus, d.maxmem, d.lifecycle.on_crash, d.sched.weight) == ("web1", 2, 512 * MiB, "destroy", 256)
    assert d.disks[0] == Disk("/var/lib/pyhv/web1.img", False, "web1-root", "writeback",
                              model.RateLimit(model.Bucket(52428800, 1000), model.Bucket(1000, 1000)))
    assert d.nics[0].bridge == "br0" and d.vsock == model.Vsock(3, "/run/pyhv/web1.vsock")
    assert (d.nics[0].rx_rate_limit, d.nics[0].tx_rate_limit) == (model.RateLimit(model.Bucket(12500000, 1000)), None)


@pytest.mark.parametrize("limit,message", [
    ({"ops": {"size": 0, "refill_ms": 1000}}, "disks[0].rate_limit.ops.size: must be an integer between 1 and"),
    ({"ops": {"size": 10}}, "disks[0].rate_limit.ops: a bucket needs size and refill_ms"),
    ({"bandwidth": {"size": 10, "refill_ms": 0}}, "disks[0].rate_limit.bandwidth.refill_ms: must be an integer"),
    ({"ops": {"size": 10, "refill_ms": 5, "burst": -1}}, "disks[0].rate_limit.ops.burst: must be an integer"),
    ({"iops": {"size": 10, "refill_ms": 5}}, "disks[0].rate_limit.iops: unknown key (known: bandwidth, ops)"),
    ({"ops": {"size": 10, "refill_ms": 5, "rate": 1}}, "disks[0].rate_limit.ops.rate: unknown key"),
])
def test_bad_rate_limits_name_the_key(limit: Any, message: str) -> None:
    with pytest.raises(DescriptionError) as e:
        from_plain({**MINIMAL, "disks": [{"path": "/x.img", "rate_limit": limit}]})
    assert str(e.value).startswith(message)


def test_rate_limits_round_trip_through_the_plain_form() -> None:
    limit = {"ops": {"size": 100, "refill_ms": 1000, "burst": 50}}
    d = from_plain({**MINIMAL, "disks": [{"path": "/x.img", "rate_limit": limit}],
                    "nics": [{"tap": "t0", "tx_rate_limit": {"bandwidth": {"size": 1000, "refill_ms": 10}}}]})
    plain = to_plain(d)
    assert (plain["disks"][0]["rate_limit"], from_plain(plain)) == (limit, d)


def test_minimal_description_gets_one_set_of_defaults() -> None:
    d = from_plain(dict(MINIMAL))
    assert (d.memory, d.maxmem, d.vcpus, d.serial) == (256 * MiB, 256 * MiB, 1, "stdio")
    assert d.lifecycle == model.Lifecycle(on_poweroff="destroy", on_reboot="restart", on_crash="destroy")


def test_memory_as_a_number_is_mib() -> None:
    assert from_plain(MINIMAL | {"memory": 512}).memory == 512 * MiB


@pytest.mark.parametrize(
    "text,size",
    [("256M", 256 * MiB), ("1G", 1024 * MiB), ("512", 512 * MiB), ("65536k", 64 * MiB), ("2GiB", 2048 * MiB)],
)
def test_sizes_parse_with_units(text: str, size: int) -> None:
    assert model.parse_size(text, ("memory",)) == size


@pytest.mark.parametrize("text", ["", "M", "12Q", "-5M", "1.5G", "9" * 40])
def test_bad_sizes_name_the_key(text: str) -> None:
    with pytest.raises(DescriptionError) as e:
        model.parse_size(text, ("memory",))
    assert e.value.path == ("memory",)


@pytest.mark.parametrize(
    "extra,message",
    [
        ({"vcpus": 0}, "vcpus: must be an integer between 1 and 255"),
        ({"vcpus": "2"}, "vcpus: must be an integer"),
        ({"memory": "lots"}, "memory: 'lots'"),
        ({"memory": 1}, "memory: 1 MiB: must be between 16 MiB"),
        ({"maxmem": "128M"}, "maxmem: must be at least memory"),
        ({"name": "-bad"}, "name:"),
        ({"name": "12"}, "name:"),
        ({"name": "a\n"}, "name:"),
        ({"colour": "red"}, "colour: unknown key"),
        ({"on_crash": "explode"}, "on_crash: must be one of"),
        ({"on_reboot": "explode"}, "on_reboot: must be one of destroy, restart"),
        ({"serial": "tcp:1"}, "serial: 'tcp:1': expected stdio, none or file:PATH"),
        ({"disks": [{"path": "/d", "size": 3}]}, "disks[0].size: unknown key"),
        ({"disks": [{}]}, "disks[0].path: required"),
        ({"disks": {"path": "/d"}}, "disks: must be an array of tables"),
        ({"disks": [{"path": "/d"}, {"path": "/d"}]}, "disks[1].path: the same image as disks[0]"),
        ({"disks": [{"path": "/d", "serial": "x" * 21}]}, "disks[0].serial: at most 20 printable bytes"),
        ({"disks": [{"path": "/d", "cache": "unsafe"}]}, "disks[0].cache: must be one of writeback, none"),
        ({"disks": [{"path": f"/d{i}"} for i in range(17)]}, "disks: 17 given: at most 16"),
        ({"nics": [{"tap": "t0", "mac": "01:00:00:00:00:00"}]}, "nics[0].mac: 01:00:00:00:00:00 is a multicast"),
        ({"nics": [{"tap": "x" * 16}]}, "nics[0].tap: interface names are 1-15"),
        ({"vsock": {"cid": 2, "uds": "/s"}}, "vsock.cid: must be an integer between 3"),
        ({"vsock": {"cid": 3, "uds": "/" + "s" * 95}}, "vsock.uds: socket path longer than 90 bytes"),
        ({"sched": {"weight": 0}}, "sched.weight: must be an integer between 1"),
        ({"balloon": "yes"}, "balloon: must be true or false"),
        ({"kernel": "a\0b"}, "kernel: must not contain NUL"),
        ({"kernel": "/" + "k" * 200_000}, "kernel: a file name of 200001 bytes: at most 4095"),
        ({"disks": [{"path": "/" + "d" * 5000}]}, "disks[0].path: a file name of 5001 bytes: at most 4095"),
    ],
)
def test_bad_value_names_the_key(extra: dict[str, object], message: str) -> None:
    with pytest.raises(UsageError) as e:
        from_plain(MINIMAL | extra)
    assert message in str(e.value) and "\n" not in str(e.value)


def test_missing_kernel_is_required() -> None:
    with pytest.raises(UsageError, match="kernel: required"):
        from_plain({"name": "a"})


def test_file_that_is_not_toml_names_the_file(tmp_path: Path) -> None:
    path = tmp_path / "bad.toml"
    path.write_text("name = [unclosed")
    with pytest.raises(UsageError, match=f"{path}: not valid TOML"):
        files.load(str(path))


def test_deeply_nested_file_is_refused_in_one_line(tmp_path: Path) -> None:
    path = tmp_path / "deep.toml"
    path.write_text("x = " + "[" * 5000 + "]" * 5000 + "\n")
    with pytest.raises(UsageError, match=f"{path}: arrays or tables nested more than"):
        files.load(str(path))


def test_huge_file_is_refused_in_one_line(tmp_path: Path) -> None:
    path = tmp_path / "huge.toml"
    path.write_text('cmdline = "' + "x" * (2 << 20) + '"\n')
    with pytest.raises(UsageError, match="larger than 1 MiB"):
        files.load(str(path))


def test_error_from_a_file_names_file_and_key(tmp_path: Path) -> None:
    path = tmp_path / "d.toml"
    path.write_text('name = "a"\nkernel = "k"\nvcpus = 999\n')
    with pytest.raises(UsageError, match=f"{path}: vcpus: must be an integer"):
        files.load(str(path))


def test_cli_disk_spec_with_options_parses() -> None:
    assert options.disk("/tmp/d.img,ro,serial=abc,cache=none") == {
        "path": "/tmp/d.img", "readonly": True, "serial": "abc", "cache": "none",
    }


@pytest.mark.parametrize("spec", ["", ",ro", "/d,rw", "/d,serial", "/d,cache=none,cache=none"])
def test_bad_cli_disk_syntax_is_a_usage_error(spec: str) -> None:
    with pytest.raises(UsageError, match="--disk"):
        options.disk(spec)


def test_net_fd_is_a_host_resource_not_part_of_the_description(tmp_path: Path) -> None:
    with open(tmp_path / "f", "w") as f:
        fd = f.fileno()
        plain, taps, _ = options.plain_from_options({"kernel": "k", "net": [f"fd={fd},mac=52:54:00:00:00:09"]})
        description = from_plain(plain)
    assert taps == {0: fd} and description.nics == (model.Nic(f"fd{fd}", "52:54:00:00:00:09", ""),)


# --- every resource through every syntax ------------------------------------------------------
#
# Each case is one domain said four ways: `pyhv run` options, a TOML file, the
# API's JSON body, and a snapshot's (or migration stream's) description.  The
# four must give the same description, or fail with the same key and message.

CASES: list[tuple[list[str], str]] = [
    (["--kernel", "/k"], 'kernel = "/k"'),
    (["--kernel", "/k", "--initrd", "/i", "--cmdline", "a=b c", "--boot", "pvh"],
     'kernel = "/k"\ninitrd = "/i"\ncmdline = "a=b c"\nboot = "pvh"'),
    (["--kernel", "/k", "--memory", "1G", "--vcpus", "4"], 'kernel = "/k"\nmemory = "1G"\nvcpus = 4'),
    (["--kernel", "/k", "--on-reboot", "destroy", "--on-poweroff", "restart", "--on-crash", "preserve"],
     'kernel = "/k"\non_reboot = "destroy"\non_poweroff = "restart"\non_crash = "preserve"'),
    (["--kernel", "/k", "--serial", "file:/tmp/log", "--debug-exit"],
     'kernel = "/k"\nserial = "file:/tmp/log"\ndebug_exit = true'),
    (["--firmware", "/usr/share/seabios/bios.bin", "--memory", "128M"],
     'firmware = "/usr/share/seabios/bios.bin"\nmemory = "128M"'),
    (["--kernel", "/k", "--debug-exit=pyhv"], 'kernel = "/k"\ndebug_exit = "pyhv"'),
    (["--kernel", "/k", "--debug-exit=qemu"], 'kernel = "/k"\ndebug_exit = "qemu"'),
    (["--kernel", "/k", "--debug-exit=off"], 'kernel = "/k"\ndebug_exit = false'),
    (["--kernel", "/k", "--disk", "/a.img,ro,serial=s1", "--disk", "/b.img,cache=none"],
     'kernel = "/k"\n[[disks]]\npath = "/a.img"\nreadonly = true\nserial = "s1"\n'
     '[[disks]]\npath = "/b.img"\ncache = "none"'),
    (["--kernel", "/k", "--net", "tap=t0,mac=52:54:00:12:34:56,bridge=br0"],
     'kernel = "/k"\n[[nics]]\ntap = "t0"\nmac = "52:54:00:12:34:56"\nbridge = "br0"'),
    (["--kernel", "/k", "--vsock", "cid=7,uds=/run/v.sock", "--rng", "--balloon"],
     'kernel = "/k"\nrng = true\nballoon = true\n[vsock]\ncid = 7\nuds = "/run/v.sock"'),
    (["--kernel", "/k", "--fw-cfg", "name=opt/a,file=/etc/a,b", "--fw-cfg", "name=opt/b,string=x=1,y=2"],
     'kernel = "/k"\n[[fw_cfg]]\nname = "opt/a"\nfile = "/etc/a,b"\n[[fw_cfg]]\nname = "opt/b"\nstring = "x=1,y=2"'),
    (["--kernel", "/k", "--fw-cfg", "name=opt/empty,string="], 'kernel = "/k"\n[[fw_cfg]]\nname = "opt/empty"\nstring = ""'),
    (["--kernel", "/k", "--transport", "mmio", "--rng", "--disk", "/a.img"],
     'kernel = "/k"\ntransport = "mmio"\nrng = true\n[[disks]]\npath = "/a.img"'),
    (["--kernel", "/k", "--transport", "pci"], 'kernel = "/k"\ntransport = "pci"'),
    # the same mistakes
    (["--kernel", "/k", "--transport", "isa"], 'kernel = "/k"\ntransport = "isa"'),
    (["--kernel", "/k", "--rng", "--balloon", *[a for i in range(14) for a in ("--disk", f"/d{i}")], "--transport", "mmio"],
     'kernel = "/k"\ntransport = "mmio"\nrng = true\nballoon = true\n' + "".join(f'[[disks]]\npath = "/d{i}"\n' for i in range(14))),
    (["--kernel", "/k", "--vcpus", "0"], 'kernel = "/k"\nvcpus = 0'),
    (["--kernel", "/k", "--memory", "8M"], 'kernel = "/k"\nmemory = "8M"'),
    (["--kernel", "/k", "--serial", "tcp:1"], 'kernel = "/k"\nserial = "tcp:1"'),
    (["--kernel", "/k", "--disk", "/a,serial=" + "x" * 21], 'kernel = "/k"\n[[disks]]\npath = "/a"\nserial = "' + "x" * 21 + '"'),
    (["--kernel", "/k", "--disk", "/a,cache=unsafe"], 'kernel = "/k"\n[[disks]]\npath = "/a"\ncache = "unsafe"'),
    (["--kernel", "/k", "--disk", "/a", "--disk", "/a"], 'kernel = "/k"\n[[disks]]\npath = "/a"\n[[disks]]\npath = "/a"'),
    (["--kernel", "/k", "--net", "tap=" + "t" * 16], 'kernel = "/k"\n[[nics]]\ntap = "' + "t" * 16 + '"'),
    (["--kernel", "/k", "--net", "tap=t0,mac=01:02:03:04:05:06"], 'kernel = "/k"\n[[nics]]\ntap = "t0"\nmac = "01:02:03:04:05:06"'),
    (["--kernel", "/k", "--fw-cfg", "name=opt/" + "n" * 52 + ",string=s"],
     'kernel = "/k"\n[[fw_cfg]]\nname = "opt/' + "n" * 52 + '"\nstring = "s"'),
    (["--kernel", "/k", "--fw-cfg", "name=opt/\x01,string=s"], 'kernel = "/k"\n[[fw_cfg]]\nname = "opt/\\u0001"\nstring = "s"'),
    (["--kernel", "/k", "--fw-cfg", "name=etc/e820,file=/f"], 'kernel = "/k"\n[[fw_cfg]]\nname = "etc/e820"\nfile = "/f"'),
    (["--kernel", "/k", "--fw-cfg", "name=bootorder,string=x"], 'kernel = "/k"\n[[fw_cfg]]\nname = "bootorder"\nstring = "x"'),
    (["--kernel", "/k", "--fw-cfg", "name=opt/a,file="], 'kernel = "/k"\n[[fw_cfg]]\nname = "opt/a"\nfile = ""'),
    (["--kernel", "/k", "--fw-cfg", "name=opt/a,string=1", "--fw-cfg", "name=opt/a,string=2"],
     'kernel = "/k"\n[[fw_cfg]]\nname = "opt/a"\nstring = "1"\n[[fw_cfg]]\nname = "opt/a"\nstring = "2"'),
    (["--kernel", "/k", "--disk", "base=/b,overlay=/o,ro,cache=none"],
     'kernel = "/k"\n[[disks]]\npath = "/o"\nbase = "/b"\nreadonly = true\ncache = "none"'),
    (["--kernel", "/k", "--disk", "vhost-user=/s"], 'kernel = "/k"\n[[disks]]\nvhost_user = "/s"'),
    (["--kernel", "/k", "--disk", "vhost-user=/s,ro"], 'kernel = "/k"\n[[disks]]\nvhost_user = "/s"\nreadonly = true'),
    (["--kernel", "/k", "--disk", "vhost-user=/s,overlay=/o"], 'kernel = "/k"\n[[disks]]\nvhost_user = "/s"\npath = "/o"'),
    (["--kernel", "/k", "--disk", "base=/o,overlay=/o"], 'kernel = "/k"\n[[disks]]\npath = "/o"\nbase = "/o"'),
    (["--kernel", "/k", "--disk", "base=/b,overlay=/o,serial=x"], 'kernel = "/k"\n[[disks]]\npath = "/o"\nbase = "/b"\nserial = "x"'),
    (["--kernel", "/k", "--disk", "base=/b"], 'kernel = "/k"\n[[disks]]\nbase = "/b"'),
    (["--kernel", "/k", "--fs", "tag=t,path=/srv"], 'kernel = "/k"\n[[fs]]\ntag = "t"\npath = "/srv"'),
    (["--kernel", "/k", "--fs", "tag=t,socket=/s"], 'kernel = "/k"\n[[fs]]\ntag = "t"\nsocket = "/s"'),
    (["--kernel", "/k", "--fs", "tag=t,socket=/s,path=/d"], 'kernel = "/k"\n[[fs]]\ntag = "t"\nsocket = "/s"\npath = "/d"'),
    (["--kernel", "/k", "--fs", "tag=" + "t" * 37 + ",path=/d"], 'kernel = "/k"\n[[fs]]\ntag = "' + "t" * 37 + '"\npath = "/d"'),
    (["--kernel", "/k", "--fs", "tag=t,socket=/" + "s" * 107], 'kernel = "/k"\n[[fs]]\ntag = "t"\nsocket = "/' + "s" * 107 + '"'),
    (["--kernel", "/k", "--fs", "tag=t,path=/a", "--fs", "tag=t,path=/b"],
     'kernel = "/k"\n[[fs]]\ntag = "t"\npath = "/a"\n[[fs]]\ntag = "t"\npath = "/b"'),
    (["--kernel", "/k", "--vsock", "cid=2,uds=/v"], 'kernel = "/k"\n[vsock]\ncid = 2\nuds = "/v"'),
    (["--kernel", "/k", "--debug-exit=isa"], 'kernel = "/k"\ndebug_exit = "isa"'),
    (["--firmware", "/f", "--kernel", "/k"], 'firmware = "/f"\nkernel = "/k"'),
    (["--firmware", "/f", "--cmdline", "x"], 'firmware = "/f"\ncmdline = "x"'),
    (["--kernel", "/k", "--vsock", "cid=3,uds=/" + "v" * 100], 'kernel = "/k"\n[vsock]\ncid = 3\nuds = "/' + "v" * 100 + '"'),
]


def _outcome(fn: Any) -> Any:
    try:
        return fn()
    except DescriptionError as e:
        return ("error", e.path, e.message)


@pytest.mark.parametrize("argv,toml", CASES)
def test_every_syntax_gives_the_same_description_or_the_same_error(argv: list[str], toml: str) -> None:
    args = parse(argv, RUN_OPTIONS)
    plain, _, given = options.plain_from_options(vars(args))
    from_cli = _outcome(lambda: from_plain(plain))
    from_toml = _outcome(lambda: from_plain(tomllib.loads(toml)))
    from_json = _outcome(lambda: from_plain(json.loads(json.dumps(tomllib.loads(toml)))))
    assert from_cli == from_toml == from_json
    if isinstance(from_cli, tuple) and from_cli[0] == "error":
        with pytest.raises(UsageError) as cli_error:
            options.describe(plain, given)
        carrier = argv[-1] if argv[-1].startswith("--") else argv[-2]  # --option=VALUE or --option VALUE
        assert cli_error.value.args[0].startswith(carrier) and from_cli[2] in str(cli_error.value)
        with pytest.raises(SnapshotError) as snap_error:
            description_from_state(tomllib.loads(toml))
        assert str(snap_error.value) == f"description: {model.key_name(from_cli[1])}: {from_cli[2]}"
    else:
        assert description_from_state(json.loads(json.dumps(to_plain(from_cli)))) == from_cli


def test_api_admission_gives_the_description_a_file_gives(tmp_path: Path) -> None:
    from pyhv.toolstack.registry import Refused, Registry

    registry = Registry(str(tmp_path / "run"), str(tmp_path / "state"), log=lambda _: None)
    plain = {"name": "a", "kernel": "/k", "disks": [{"path": "/d", "serial": "x" * 21}]}
    with pytest.raises(Refused) as e:
        registry.admit_plain(plain)
    assert (e.value.http_status, str(e.value)) == (400, "disks[0].serial: at most 20 printable bytes")
    assert registry.admit_plain({"name": "a", "kernel": "/k"}) == from_plain({"name": "a", "kernel": "/k"})


def test_api_refuses_relative_paths_and_a_missing_name(tmp_path: Path) -> None:
    from pyhv.toolstack.registry import Refused, Registry

    registry = Registry(str(tmp_path / "run"), str(tmp_path / "state"), log=lambda _: None)
    with pytest.raises(Refused, match="disks\\[0\\].path: must be an absolute path"):
        registry.admit_plain({"name": "a", "kernel": "/k", "disks": [{"path": "d.img"}]})
    with pytest.raises(Refused, match="name: required"):
        registry.admit_plain({"kernel": "/k"})


def test_json_schema_uses_the_models_limits() -> None:
    schema = model.json_schema()
    disk = schema["properties"]["disks"]["items"]["properties"]
    assert set(schema["properties"]) == set(model.TOP_KEYS)
    assert set(disk) == set(model.DISK_KEYS) and disk["serial"]["maxLength"] == model.DISK_SERIAL_MAX
    assert disk["cache"]["enum"] == list(model.DISK_CACHE)
    assert set(disk) == set(model.DISK_KEYS)
    fs = schema["properties"]["fs"]["items"]["properties"]
    assert set(fs) == set(model.FS_KEYS) and fs["tag"]["maxLength"] == model.FS_TAG_MAX
    entry = schema["properties"]["fw_cfg"]["items"]
    assert set(entry["properties"]) == set(model.FW_CFG_KEYS) and entry["properties"]["name"]["maxLength"] == 55


@pytest.mark.parametrize("entry,key,message", [
    ({"name": "opt/a", "file": "/f", "string": "s"}, ("fw_cfg", 0), "exactly one of file and string"),
    ({"name": "opt/a"}, ("fw_cfg", 0), "exactly one of file and string"),
    ({"file": "/f"}, ("fw_cfg", 0, "name"), "required"),
    ({"name": "opt/a", "string": 5}, ("fw_cfg", 0, "string"), "must be a string"),
    ({"name": "opt/é", "string": "s"}, ("fw_cfg", 0, "name"), "1-55 printable ASCII characters"),
    ({"name": "opt/a", "data": "s"}, ("fw_cfg", 0, "data"), "unknown key (known: file, name, string)"),
])
def test_bad_fw_cfg_entry_names_the_key(entry: dict[str, object], key: tuple[object, ...], message: str) -> None:
    with pytest.raises(DescriptionError) as e:
        from_plain({**MINIMAL, "fw_cfg": [entry]})
    assert (e.value.path, e.value.message) == (key, message)


def test_too_many_fw_cfg_entries_are_refused() -> None:
    entries = [{"name": f"opt/{i}", "string": ""} for i in range(model.MAX_FW_CFG + 1)]
    with pytest.raises(DescriptionError, match="at most 16"):
        from_plain({**MINIMAL, "fw_cfg": entries})


def test_bad_cli_fw_cfg_syntax_is_a_usage_error() -> None:
    for spec in ("opt/a,file=/f", "name=opt/a", "name=opt/a,data=x", "string=s,name=opt/a"):
        with pytest.raises(UsageError, match="--fw-cfg"):
            options.fw_cfg(spec)


def test_fw_cfg_files_are_paths_the_description_names_and_made_absolute() -> None:
    d = from_plain({**MINIMAL, "fw_cfg": [{"name": "opt/a", "file": "a.bin"}, {"name": "opt/b", "string": "x"}]})
    assert ("fw_cfg[0].file", "a.bin") in model.paths(d) and len(model.paths(d)) == 2
    assert model.with_absolute_paths(d, "/base").fw_cfg == (
        model.FwCfgEntry("opt/a", file="/base/a.bin"), model.FwCfgEntry("opt/b", string="x"),
    )


def test_fw_cfg_limits_are_the_devices() -> None:
    from pyhv.devices.legacy import fw_cfg

    assert model.FW_CFG_NAME_MAX == fw_cfg.FILE_NAME_MAX
    assert set(fw_cfg.OWN_FILES) <= {*model.FW_CFG_OWN_NAMES, "etc/e820"}


@pytest.mark.parametrize("mapping,value,status", [
    ("pyhv", 0, 0), ("pyhv", 1, 1), ("pyhv", 0x1FF, 0xFF), ("qemu", 0, 1), ("qemu", 1, 3), ("qemu", 0x21, 0x43),
    ("qemu", 0x80, 1),
])
def test_debug_exit_status_is_the_low_byte_or_qemus_mapping(mapping: str, value: int, status: int) -> None:
    assert model.debug_exit_status(mapping, value) == status


def test_disk_serial_limit_is_the_devices() -> None:
    from pyhv.devices.virtio.blk import VIRTIO_BLK_ID_BYTES

    assert model.DISK_SERIAL_MAX == VIRTIO_BLK_ID_BYTES


names = st.from_regex(r"[A-Za-z][A-Za-z0-9_.-]{0,20}", fullmatch=True)
paths = st.from_regex(r"/[a-z0-9/._-]{1,40}", fullmatch=True)


@st.composite
def descriptions(draw: Any) -> dict[str, Any]:
    plain: dict[str, Any] = {"name": draw(names), "kernel": draw(paths)}
    plain["memory"] = draw(st.integers(16, 4096))
    plain["vcpus"] = draw(st.integers(1, 255))
    plain["on_crash"] = draw(st.sampled_from(model.ON_CRASH))
    plain["debug_exit"] = draw(st.sampled_from((*model.DEBUG_EXIT_MAPPINGS, True, False)))
    if draw(st.booleans()):
        plain["firmware"] = plain.pop("kernel")
    disks = draw(st.lists(paths, max_size=4, unique=True))
    plain["disks"] = [{"path": p, "readonly": draw(st.booleans()), "cache": draw(st.sampled_from(model.DISK_CACHE)),
                       "serial": draw(st.text("abc123-", max_size=20))} for p in disks]
    plain["nics"] = [{"tap": t} for t in draw(st.lists(st.from_regex(r"[a-z][a-z0-9]{0,14}", fullmatch=True), max_size=3))]
    if draw(st.booleans()):
        plain["vsock"] = {"cid": draw(st.integers(3, 0xFFFF_FFFE)), "uds": draw(paths)}
    fw_names = draw(st.lists(st.from_regex(r"opt/[ -~]{1,51}", fullmatch=True), max_size=3, unique=True))
    plain["fw_cfg"] = [{"name": n, "file": draw(paths)} if draw(st.booleans()) else {"name": n, "string": draw(st.text(st.characters(blacklist_characters="\0", blacklist_categories=("Cs",))))}
                       for n in fw_names]
    plain["sched"] = {"weight": draw(st.integers(1, 65535))}
    return plain


@settings(max_examples=200, deadline=None)
@given(descriptions())
def test_plain_form_round_trips(plain: dict[str, Any]) -> None:
    d = from_plain(plain)
    assert from_plain(json.loads(json.dumps(to_plain(d)))) == d


def test_firmware_replaces_the_kernel_in_the_plain_form_and_the_paths() -> None:
    d = from_plain({"firmware": "/usr/share/seabios/bios.bin"})
    assert d.payload == model.Payload(kernel="", firmware="/usr/share/seabios/bios.bin")
    assert "kernel" not in to_plain(d) and model.paths(d)[0] == ("firmware", "/usr/share/seabios/bios.bin")


def test_neither_kernel_nor_firmware_is_refused() -> None:
    with pytest.raises(DescriptionError, match="kernel"):
        from_plain({"memory": "64M"})


def test_disk_and_net_options_carry_rate_limits() -> None:
    d = options.disk("/x.img,ops=100/1000+20,bw=1048576/500")
    nic, _ = options.net("tap=t0,rx-bw=1000/10,tx-ops=5/100")
    assert d["rate_limit"] == {"ops": {"size": 100, "refill_ms": 1000, "burst": 20},
                               "bandwidth": {"size": 1048576, "refill_ms": 500, "burst": 0}}
    assert (nic["rx_rate_limit"], nic["tx_rate_limit"]) == (
        {"bandwidth": {"size": 1000, "refill_ms": 10, "burst": 0}}, {"ops": {"size": 5, "refill_ms": 100, "burst": 0}})


@pytest.mark.parametrize("spec", ["/x.img,ops=100", "/x.img,ops=a/b", "/x.img,ops=1/2,ops=3/4", "/x.img,bw=1/2+"])
def test_bad_rate_limit_options_are_usage_errors(spec: str) -> None:
    with pytest.raises(UsageError, match="expected SIZE/REFILL_MS"):
        options.disk(spec)


@pytest.mark.parametrize("entry,key,message", [
    ({"tag": "t"}, ("fs", 0), "exactly one of socket (a running back end) and path (a directory to share)"),
    ({"tag": "", "path": "/d"}, ("fs", 0, "tag"), "1-36 printable bytes"),
    ({"tag": "a\nb", "path": "/d"}, ("fs", 0, "tag"), "1-36 printable bytes"),
    ({"path": "/d"}, ("fs", 0, "tag"), "required"),
    ({"tag": "t", "dir": "/d"}, ("fs", 0, "dir"), "unknown key (known: path, socket, tag)"),
])
def test_bad_fs_entry_names_the_key(entry: dict[str, object], key: tuple[object, ...], message: str) -> None:
    with pytest.raises(DescriptionError) as e:
        from_plain({**MINIMAL, "fs": [entry]})
    assert (e.value.path, e.value.message) == (key, message)


def test_bad_fs_option_syntax_is_a_usage_error() -> None:
    with pytest.raises(UsageError, match="expected tag=TAG,socket=PATH or tag=TAG,path=DIR"):
        options.fs("tag=t,dir=/d")


def test_a_machine_with_a_vhost_user_device_names_it() -> None:
    d = from_plain({**MINIMAL, "fs": [{"tag": "share", "path": "/srv"}]})

    assert model.vhost_user_devices(d) == ["fs[0] (virtio-fs 'share')"]
    assert model.vhost_user_devices(from_plain(MINIMAL)) == []
    cow = from_plain({**MINIMAL, "disks": [{"path": "/raw"}, {"path": "/o.qcow2", "base": "/b"}, {"vhost_user": "/s"}]})
    assert model.vhost_user_devices(cow) == ["disks[1] (vhost-user-blk)", "disks[2] (vhost-user-blk)"]


def test_a_lone_surrogate_is_refused_in_one_line() -> None:
    with pytest.raises(DescriptionError, match="fw_cfg\\[0\\].string: must be valid Unicode"):
        from_plain(json.loads('{"kernel": "/k", "fw_cfg": [{"name": "opt/a", "string": "\\ud800"}]}'))


def test_vhost_user_devices_need_the_pci_transport() -> None:
    with pytest.raises(DescriptionError) as e:
        from_plain({**MINIMAL, "transport": "mmio", "disks": [{"vhost_user": "/s"}], "fs": [{"tag": "t", "path": "/d"}]})

    assert e.value.path == ("transport",) and "are on PCI only" in e.value.message
