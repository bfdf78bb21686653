"""The Firecracker front end without a guest: request checking, the translation into
the machine description, and the API's answers (no /dev/kvm)."""

from __future__ import annotations

import json
import os
import pathlib
import subprocess
import sys
from typing import Any

import pytest

from pyhv.firecracker import config as fc
from pyhv.firecracker.log import Log
from pyhv.firecracker.server import Server
from pyhv.firecracker.vmm import Microvm
from pyhv.model import MiB

from ..conftest import ROOT
from ..fcapi import UnixConnection


@pytest.fixture
def files(tmp_path: pathlib.Path) -> dict[str, str]:
    out = {}
    for name in ("vmlinux", "initrd", "root.img", "data.img"):
        (tmp_path / name).write_bytes(b"\0" * 4096)
        out[name] = str(tmp_path / name)
    return out


def _vm(tmp_path: pathlib.Path) -> Microvm:
    log = Log("test-vm")
    log.configure(log_path=str(tmp_path / "log"))
    return Microvm("test-vm", log)


def _configured(files: dict[str, str]) -> fc.FcConfig:
    cfg = fc.put_boot_source(fc.FcConfig(), {"kernel_image_path": files["vmlinux"], "boot_args": "console=ttyS0",
                                             "initrd_path": files["initrd"]})
    cfg = fc.put_machine_config(cfg, {"vcpu_count": 2, "mem_size_mib": 256})
    cfg = fc.put_drive(cfg, "data", {"drive_id": "data", "path_on_host": files["data.img"], "is_root_device": False,
                                     "is_read_only": True, "rate_limiter": {
                                         "ops": {"size": 100, "refill_time": 1000, "one_time_burst": 10},
                                         "bandwidth": {"size": 0, "refill_time": 0}}})
    cfg = fc.put_drive(cfg, "rootfs", {"drive_id": "rootfs", "path_on_host": files["root.img"], "is_root_device": True})
    cfg = fc.put_network_interface(cfg, "eth0", {"iface_id": "eth0", "host_dev_name": "tap0",
                                                 "guest_mac": "06:00:ac:10:00:02",
                                                 "rx_rate_limiter": {"bandwidth": {"size": 1000, "refill_time": 10}}})
    cfg = fc.put_vsock(cfg, {"guest_cid": 3, "uds_path": "/tmp/v.sock"})
    cfg = fc.put_entropy(cfg, {})
    return fc.put_balloon(cfg, {"amount_mib": 64, "deflate_on_oom": False})


def test_configuration_translates_into_the_plain_form(files: dict[str, str]) -> None:
    plain = fc.to_plain(_configured(files), "vm-1")
    assert plain == {
        "name": "vm-1", "kernel": files["vmlinux"], "initrd": files["initrd"],
        "cmdline": "console=ttyS0 root=/dev/vda rw", "memory": 256, "vcpus": 2,
        "on_poweroff": "destroy", "on_reboot": "destroy", "on_crash": "destroy", "serial": "stdio",
        "balloon": True, "rng": True, "transport": "mmio",
        "disks": [{"path": files["root.img"], "readonly": False, "serial": "rootfs", "cache": "writeback",
                   "rate_limit": None},
                  {"path": files["data.img"], "readonly": True, "serial": "data", "cache": "writeback",
                   "rate_limit": {"ops": {"size": 100, "refill_ms": 1000, "burst": 10}}}],
        "nics": [{"tap": "tap0", "mac": "06:00:ac:10:00:02", "rx_rate_limit": {"bandwidth": {
            "size": 1000, "refill_ms": 10, "burst": 0}}, "tx_rate_limit": None}],
        "vsock": {"cid": 3, "uds": "/tmp/v.sock"},
    }


def test_describe_gives_the_model_description(files: dict[str, str]) -> None:
    d = fc.describe(_configured(files), "vm-1")
    assert (d.memory, d.vcpus, d.disks[0].path, d.nics[0].tap, d.lifecycle.on_reboot) == (
        256 * MiB, 2, files["root.img"], "tap0", "destroy")


def test_devices_are_virtio_mmio_as_firecracker_s_unless_pci_is_enabled(files: dict[str, str]) -> None:
    assert fc.describe(_configured(files)).transport == "mmio"
    assert fc.describe(_configured(files), transport="pci").transport == "pci"


@pytest.mark.parametrize("transport,warned", [("mmio", False), ("pci", True)])
def test_pci_off_in_boot_args_is_a_problem_only_with_pci_enabled(
    tmp_path: pathlib.Path, files: dict[str, str], transport: str, warned: bool
) -> None:
    log = Log("test-vm")
    log.configure(log_path=str(tmp_path / "log"))
    vm = Microvm("test-vm", log, transport)

    status, _ = vm.handle("PUT", "/boot-source", {"kernel_image_path": files["vmlinux"], "boot_args": "pci=off"})

    assert (status, "pci=off" in (tmp_path / "log").read_text()) == (204, warned)


def test_root_drive_with_partuuid_and_read_only_adds_that_root(files: dict[str, str]) -> None:
    cfg = fc.put_boot_source(fc.FcConfig(), {"kernel_image_path": files["vmlinux"], "boot_args": "quiet"})
    cfg = fc.put_drive(cfg, "r", {"drive_id": "r", "path_on_host": files["root.img"], "is_root_device": True,
                                  "is_read_only": True, "partuuid": "abcd-01"})
    assert fc.cmdline(cfg) == "quiet root=PARTUUID=abcd-01 ro"


def test_boot_args_absent_gives_the_default_without_pci_off(files: dict[str, str]) -> None:
    cfg = fc.put_boot_source(fc.FcConfig(), {"kernel_image_path": files["vmlinux"]})
    assert fc.cmdline(cfg) == fc.DEFAULT_BOOT_ARGS and "pci=off" not in fc.cmdline(cfg)


@pytest.mark.parametrize(
    "change,message",
    [
        (lambda c, f: fc.put_machine_config(c, {"vcpu_count": 33, "mem_size_mib": 128}),
         "machine-config.vcpu_count: must be between 1 and 32"),
        (lambda c, f: fc.put_machine_config(c, {"vcpu_count": 1, "mem_size_mib": 8}),
         "machine-config.mem_size_mib: 8 MiB: must be between 16 MiB and 1 TiB"),
        (lambda c, f: fc.put_machine_config(c, {"vcpu_count": 1}), "machine-config: missing field 'mem_size_mib'"),
        (lambda c, f: fc.put_machine_config(c, {"vcpu_count": "2", "mem_size_mib": 128}),
         "machine-config.vcpu_count: must be an integer"),
        (lambda c, f: fc.put_machine_config(c, {"vcpu_count": 1, "mem_size_mib": 128, "huge_pages": "2M"}),
         "huge pages are not supported"),
        (lambda c, f: fc.put_boot_source(c, {"kernel_image_path": "/nonexistent/vmlinux"}),
         "boot-source.kernel_image_path: cannot open '/nonexistent/vmlinux'"),
        (lambda c, f: fc.put_boot_source(c, {"kernel_image_path": f["vmlinux"], "bogus": 1}),
         "boot-source: unknown field 'bogus'"),
        (lambda c, f: fc.put_drive(c, "d", {"drive_id": "d", "path_on_host": f["data.img"], "is_root_device": False,
                                            "cache_type": "None"}), "drives[d].cache_type: must be Unsafe or Writeback"),
        (lambda c, f: fc.put_drive(c, "d", {"drive_id": "d", "is_root_device": False, "socket": "/s"}),
         "vhost-user block devices are not supported"),
        (lambda c, f: fc.put_drive(c, "d", {"drive_id": "d", "path_on_host": f["data.img"], "is_root_device": False,
                                            "rate_limiter": {"bandwidth": {"size": 1}}}),
         "drives[d].rate_limiter.bandwidth: missing field 'refill_time'"),
        (lambda c, f: fc.put_drive(c, "d", {"drive_id": "d", "path_on_host": f["data.img"], "is_root_device": False,
                                            "rate_limiter": {"ops": {"size": 1 << 63, "refill_time": 1}}}),
         "drives[d].rate_limiter.ops.size: must be an integer between 1 and"),
        (lambda c, f: fc.put_network_interface(c, "eth0", {"iface_id": "eth0", "host_dev_name": "t", "tx_rate_limiter": {
            "ops": {"size": 5, "refill_time": 1 << 40}}}),
         "network-interfaces[eth0].tx_rate_limiter.ops.refill_time: must be an integer between 1 and 3600000"),
        (lambda c, f: fc.put_network_interface(c, "eth0", {"iface_id": "eth0", "host_dev_name": "x" * 16}),
         "network-interfaces[eth0].host_dev_name: interface names are 1-15 characters"),
        (lambda c, f: fc.put_network_interface(c, "eth0", {"iface_id": "eth0", "host_dev_name": "t",
                                                           "guest_mac": "01:00:00:00:00:01"}),
         "network-interfaces[eth0].guest_mac: 01:00:00:00:00:01 is a multicast address"),
        (lambda c, f: fc.put_vsock(c, {"guest_cid": 2, "uds_path": "/tmp/v"}), "vsock.guest_cid: must be an integer"),
        (lambda c, f: fc.put_vsock(c, {"guest_cid": 3, "uds_path": "/" + "v" * 100}),
         "vsock.uds_path: socket path longer than 90 bytes"),
        (lambda c, f: fc.put_balloon(c, {"amount_mib": 120, "deflate_on_oom": False}),
         "balloon.amount_mib: 120 MiB would leave the guest less than 16 MiB"),
    ],
)
def test_bad_resource_names_the_firecracker_field(files: dict[str, str], change: Any, message: str) -> None:
    with pytest.raises(fc.Fault) as e:
        change(fc.FcConfig(), files)
    assert message in str(e.value)


def test_second_root_drive_is_refused(files: dict[str, str]) -> None:
    cfg = fc.put_drive(fc.FcConfig(), "a", {"drive_id": "a", "path_on_host": files["root.img"], "is_root_device": True})
    with pytest.raises(fc.Fault, match="another drive is already the root device"):
        fc.put_drive(cfg, "b", {"drive_id": "b", "path_on_host": files["data.img"], "is_root_device": True})


def test_drive_put_again_replaces_it_in_place(files: dict[str, str]) -> None:
    cfg = fc.put_drive(fc.FcConfig(), "a", {"drive_id": "a", "path_on_host": files["root.img"], "is_root_device": False})
    cfg = fc.put_drive(cfg, "a", {"drive_id": "a", "path_on_host": files["data.img"], "is_root_device": False})
    assert [d["path_on_host"] for d in cfg.drives] == [files["data.img"]]


def test_same_image_twice_is_refused_naming_the_drive(files: dict[str, str]) -> None:
    cfg = fc.put_drive(fc.FcConfig(), "a", {"drive_id": "a", "path_on_host": files["root.img"], "is_root_device": False})
    with pytest.raises(fc.Fault, match=r"drives\[b\].path_on_host: the same image as disks\[0\]"):
        fc.put_drive(cfg, "b", {"drive_id": "b", "path_on_host": files["root.img"], "is_root_device": False})


def test_instance_start_without_boot_source_is_refused() -> None:
    with pytest.raises(fc.Fault, match="no boot source"):
        fc.describe(fc.FcConfig())


def test_config_file_is_applied_resource_by_resource(files: dict[str, str]) -> None:
    cfg, extra = fc.apply_file(fc.FcConfig(), {
        "boot-source": {"kernel_image_path": files["vmlinux"], "boot_args": "x=1"},
        "drives": [{"drive_id": "rootfs", "path_on_host": files["root.img"], "is_root_device": True,
                    "is_read_only": False}],
        "machine-config": {"vcpu_count": 2, "mem_size_mib": 512, "smt": False},
        "network-interfaces": [], "logger": {"level": "Debug"},
    })
    assert (fc.cmdline(cfg), cfg.machine["mem_size_mib"], extra) == ("x=1 root=/dev/vda rw", 512,
                                                                      {"logger": {"level": "Debug"}})


def test_config_file_with_mmds_is_refused(files: dict[str, str]) -> None:
    with pytest.raises(fc.Fault, match="mmds-config: not supported"):
        fc.apply_file(fc.FcConfig(), {"boot-source": {"kernel_image_path": files["vmlinux"]},
                                      "mmds-config": {"network_interfaces": ["eth0"]}})


def test_snapshot_description_comes_back_as_firecracker_resources(files: dict[str, str]) -> None:
    back = fc.from_description(fc.describe(_configured(files)))
    assert ([d["drive_id"] for d in back.drives], back.machine["mem_size_mib"], back.vsock, back.entropy) == (
        ["rootfs", "data"], 256, {"guest_cid": 3, "uds_path": "/tmp/v.sock"}, {})


# --- the API's answers ------------------------------------------------------------------------------


def test_get_root_describes_a_microvm_not_started(tmp_path: pathlib.Path) -> None:
    assert _vm(tmp_path).handle("GET", "/", None) == (200, {
        "id": "test-vm", "state": "Not started", "vmm_version": "1.10.1 (pyhv 0.1.0)", "app_name": "Firecracker"})


def test_get_version_answers_the_firecracker_version(tmp_path: pathlib.Path) -> None:
    assert _vm(tmp_path).handle("GET", "/version", None) == (200, {"firecracker_version": "1.10.1"})


def test_put_machine_config_answers_204_and_get_shows_it(tmp_path: pathlib.Path) -> None:
    vm = _vm(tmp_path)
    put = vm.handle("PUT", "/machine-config", {"vcpu_count": 2, "mem_size_mib": 512, "track_dirty_pages": True})
    patch = vm.handle("PATCH", "/machine-config", {"mem_size_mib": 1024})
    assert (put, patch, vm.handle("GET", "/machine-config", None)) == ((204, None), (204, None), (200, {
        "vcpu_count": 2, "mem_size_mib": 1024, "smt": False, "track_dirty_pages": True, "huge_pages": "None"}))


def test_bad_request_is_400_with_one_line_and_changes_nothing(tmp_path: pathlib.Path) -> None:
    vm = _vm(tmp_path)
    vm.handle("PUT", "/machine-config", {"vcpu_count": 2, "mem_size_mib": 512})
    status, body = vm.handle("PATCH", "/machine-config", {"vcpu_count": 64, "mem_size_mib": 128})
    assert (status, body, vm.config.machine["mem_size_mib"]) == (
        400, {"fault_message": "machine-config.vcpu_count: must be between 1 and 32"}, 512)


@pytest.mark.parametrize("method,path,body", [
    ("PATCH", "/vm", {"state": "Paused"}),
    ("PUT", "/snapshot/create", {"snapshot_path": "/tmp/s", "mem_file_path": "/tmp/m"}),
])
def test_post_boot_requests_are_refused_before_boot(tmp_path: pathlib.Path, method: str, path: str, body: Any) -> None:
    status, reply = _vm(tmp_path).handle(method, path, body)
    assert (status, "not supported before the microVM has started" in reply["fault_message"]) == (400, True)


def test_pre_boot_requests_are_refused_after_boot(tmp_path: pathlib.Path, files: dict[str, str]) -> None:
    vm = _vm(tmp_path)
    vm.booted = True
    status, reply = vm.handle("PUT", "/boot-source", {"kernel_image_path": files["vmlinux"]})
    assert (status, reply) == (400, {"fault_message": "boot-source: not supported after the microVM has started"})


def test_send_ctrl_alt_del_before_boot_is_refused(tmp_path: pathlib.Path) -> None:
    status, reply = _vm(tmp_path).handle("PUT", "/actions", {"action_type": "SendCtrlAltDel"})
    assert (status, reply) == (400, {"fault_message": "SendCtrlAltDel: not supported before the microVM has started"})


def test_snapshot_load_after_configuring_boot_resources_is_refused(tmp_path: pathlib.Path, files: dict[str, str]) -> None:
    vm = _vm(tmp_path)
    vm.handle("PUT", "/boot-source", {"kernel_image_path": files["vmlinux"]})
    status, reply = vm.handle("PUT", "/snapshot/load", {"snapshot_path": "/tmp/s", "mem_file_path": "/tmp/m"})
    assert (status, reply["fault_message"]) == (400, "snapshot/load: not allowed after boot resources were configured")


def test_flush_metrics_writes_one_json_line(tmp_path: pathlib.Path) -> None:
    vm = _vm(tmp_path)
    vm.handle("PUT", "/metrics", {"metrics_path": str(tmp_path / "metrics")})
    reply = vm.handle("PUT", "/actions", {"action_type": "FlushMetrics"})
    line = json.loads((tmp_path / "metrics").read_text())
    assert (reply, sorted(line)) == ((204, None), ["pyhv", "utc_timestamp_ms"])


def test_logger_level_refused_changes_nothing(tmp_path: pathlib.Path) -> None:
    vm = _vm(tmp_path)
    status, reply = vm.handle("PUT", "/logger", {"level": "Loud", "show_level": True})
    assert (status, vm.log.show_level) == (400, False)


# --- over the socket --------------------------------------------------------------------------------


def test_socket_serves_several_requests_on_one_connection(tmp_path: pathlib.Path) -> None:
    path = str(tmp_path / "api.sock")
    server = Server(path, _vm(tmp_path))
    conn = UnixConnection(path)
    try:
        answers = []
        for method, url, body in (("GET", "/", None), ("PUT", "/machine-config", b'{"vcpu_count":1,"mem_size_mib":64}'),
                                  ("PUT", "/entropy", b"{not json"), ("GET", "/version", None)):
            conn.request(method, url, body=body)
            r = conn.getresponse()
            answers.append((r.status, r.read()[:40]))
    finally:
        conn.close()
        server.close()
    assert answers == [(200, b'{"id": "test-vm", "state": "Not started"'), (204, b""),
                       (400, b'{"fault_message": "the request body is n'), (200, b'{"firecracker_version": "1.10.1"}')]
    assert not os.path.exists(path)


def test_existing_socket_path_is_not_taken_over(tmp_path: pathlib.Path) -> None:
    (tmp_path / "api.sock").write_text("")
    with pytest.raises(Exception, match="already exists"):
        Server(str(tmp_path / "api.sock"), _vm(tmp_path))


def _command(*args: str, env: dict[str, str] | None = None, script: str = "") -> subprocess.CompletedProcess[str]:
    full = dict(os.environ, PYTHONPATH=str(ROOT), **(env or {}))
    cmd = [sys.executable, "-c", script] if script else [sys.executable, "-m", "pyhv", "firecracker"]
    return subprocess.run([*cmd, *args], capture_output=True, text=True, env=full, stdin=subprocess.DEVNULL,
                          timeout=30, check=False)


def test_version_prints_firecracker_first_then_pyhv() -> None:
    p = _command("--version")
    assert (p.returncode, p.stdout.splitlines()) == (0, ["Firecracker v1.10.1",
                                                         "pyhv 0.1.0 (Firecracker-compatible front end)"])


def test_no_api_without_config_file_is_a_usage_error() -> None:
    p = _command("--no-api")
    assert (p.returncode, "--no-api needs --config-file" in p.stderr) == (2, True)


def test_bad_config_file_fails_before_serving(tmp_path: pathlib.Path) -> None:
    (tmp_path / "vm.json").write_text(json.dumps({"boot-source": {"kernel_image_path": "/nonexistent"}}))
    p = _command("--api-sock", str(tmp_path / "s"), "--config-file", str(tmp_path / "vm.json"))
    assert (p.returncode, "boot-source.kernel_image_path: cannot open" in p.stderr,
            (tmp_path / "s").exists()) == (2, True, False)


def test_shim_refuses_to_run_when_the_host_keeps_a_real_firecracker() -> None:
    p = _command("--version", env={"PYHV_NO_FIRECRACKER_SHIM": "1"},
                 script="import sys; from pyhv.firecracker import shim_main; sys.argv[0] = 'firecracker'; "
                        "sys.exit(shim_main())")
    assert (p.returncode, p.stdout, "PYHV_NO_FIRECRACKER_SHIM=1" in p.stderr) == (1, "", True)


class _Runtime:
    """What the microVM asks of the runtime after boot, answered with nothing."""

    def __init__(self) -> None:
        self.requests: list[dict[str, Any]] = []

    def handle(self, request: dict[str, Any]) -> dict[str, Any]:
        self.requests.append(request)
        return {}


def _booted(tmp_path: pathlib.Path, files: dict[str, str]) -> tuple[Microvm, _Runtime]:
    vm = _vm(tmp_path)
    vm.config = _configured(files)
    runtime = _Runtime()
    vm.booted, vm.runtime = True, runtime
    return vm, runtime


def test_patch_drive_after_boot_asks_the_runtime_and_merges_rate_limiter_buckets(
    tmp_path: pathlib.Path, files: dict[str, str],
) -> None:
    vm, runtime = _booted(tmp_path, files)
    status = vm.handle("PATCH", "/drives/data", {"drive_id": "data", "path_on_host": files["vmlinux"],
                                                 "rate_limiter": {"bandwidth": {"size": 4096, "refill_time": 10}}})
    assert (status, runtime.requests) == ((204, None), [
        {"op": "disk-swap", "index": 1, "path": files["vmlinux"]},
        {"op": "rate-limit", "index": 1, "limit": {"ops": {"size": 100, "refill_ms": 1000, "burst": 10},
                                                   "bandwidth": {"size": 4096, "refill_ms": 10, "burst": 0}}},
    ])
    data = [d for d in vm.config.drives if d["drive_id"] == "data"][0]
    assert (data["path_on_host"], sorted(data["rate_limiter"])) == (files["vmlinux"], ["bandwidth", "ops"])


def test_patch_network_interface_after_boot_sets_each_direction(tmp_path: pathlib.Path, files: dict[str, str]) -> None:
    vm, runtime = _booted(tmp_path, files)
    status = vm.handle("PATCH", "/network-interfaces/eth0", {
        "iface_id": "eth0", "rx_rate_limiter": {"bandwidth": {"size": 0, "refill_time": 0}},
        "tx_rate_limiter": {"ops": {"size": 10, "refill_time": 100}}})
    assert (status, runtime.requests) == ((204, None), [
        {"op": "rate-limit", "nic": 0, "direction": "rx", "limit": None},
        {"op": "rate-limit", "nic": 0, "direction": "tx", "limit": {"ops": {"size": 10, "refill_ms": 100, "burst": 0}}},
    ])


@pytest.mark.parametrize("path,body,message", [
    ("/network-interfaces/eth9", {"iface_id": "eth9"}, "network-interfaces[eth9]: no such interface (known: eth0)"),
    ("/network-interfaces/eth0", {"iface_id": "eth0", "host_dev_name": "x"}, "unknown field 'host_dev_name'"),
    ("/drives/data", {"drive_id": "data", "rate_limiter": {"ops": {"size": 1}}}, "missing field 'refill_time'"),
])
def test_bad_patches_after_boot_ask_nothing(tmp_path: pathlib.Path, files: dict[str, str], path: str, body: Any,
                                            message: str) -> None:
    vm, runtime = _booted(tmp_path, files)
    status, reply = vm.handle("PATCH", path, body)
    assert (status, message in reply["fault_message"], runtime.requests) == (400, True, [])
