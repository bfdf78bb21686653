"""The toolstack's pure parts: overrides, CPU lists, state flags, OpenAPI, metrics text."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest

from pyhv.errors import UsageError
from pyhv import model
from pyhv.model import files
from pyhv.toolstack import api, openapi, xl
from pyhv.toolstack.metrics import prometheus
from pyhv.toolstack.registry import DomainRecord

ROOT = Path(__file__).resolve().parent.parent.parent


def test_overrides_are_toml_values_or_plain_strings() -> None:
    config = {"name": "a", "kernel": "k"}
    files.apply_override(config, "vcpus=2")
    files.apply_override(config, "balloon=true")
    files.apply_override(config, "cmdline=probe.test=counter probe.n=3")
    files.apply_override(config, "sched.weight=512")
    files.apply_override(config, 'name="quoted"')
    assert config == {"name": "quoted", "kernel": "k", "vcpus": 2, "balloon": True,
                      "cmdline": "probe.test=counter probe.n=3", "sched": {"weight": 512}}
    with pytest.raises(UsageError, match="key=value"):
        files.apply_override(config, "novalue")
    with pytest.raises(UsageError, match="not a table"):
        files.apply_override(config, "vcpus.x=1")


def test_paths_are_made_absolute() -> None:
    d = model.from_plain({"kernel": "k/vmlinuz", "initrd": "/abs/i", "disks": [{"path": "d.img"}], "vsock": {"uds": "v.sock"}})
    d = model.with_absolute_paths(d, "/base")
    assert model.paths(d) == [("kernel", "/base/k/vmlinuz"), ("initrd", "/abs/i"), ("disks[0].path", "/base/d.img"),
                              ("vsock.uds", "/base/v.sock")]


@pytest.mark.parametrize("text, cpus", [("0", [0]), ("0-2,5", [0, 1, 2, 5]), ("3,1-1", [1, 3])])
def test_cpu_lists(text: str, cpus: list[int]) -> None:
    assert xl.parse_cpus(text) == cpus
    assert xl.parse_cpus(xl._cpus(cpus)) == cpus


@pytest.mark.parametrize("text", ["", "a", "2-1", "1-", "-1", "0-99999"])
def test_bad_cpu_lists(text: str) -> None:
    with pytest.raises(UsageError):
        xl.parse_cpus(text)


def test_state_columns_are_xls() -> None:
    assert xl._state("running") == "r-----"
    assert xl._state("paused") == "--p---"
    assert xl._state("crashed") == "----c-"
    assert xl._state("unknown") == "unknown"


def test_verb_arguments() -> None:
    args = xl.Args(["f.toml", "-p", "vcpus=2", "--bytes", "10"], {"-p", "-c"}, {"--bytes"})
    assert args.positional == ["f.toml", "vcpus=2"] and args.flags == {"-p"} and args.values == {"--bytes": "10"}
    with pytest.raises(UsageError, match="unknown option"):
        xl.Args(["-x"], {"-p"})
    with pytest.raises(UsageError, match="expected"):
        xl.Args([], set()).want(1, 1, "pause DOMAIN")


def test_committed_openapi_document_is_current() -> None:
    committed = json.loads((ROOT / "docs" / "openapi.json").read_text())
    assert committed == json.loads(json.dumps(openapi.document()))


def test_every_route_is_documented_and_every_documented_path_is_served() -> None:
    served = set()
    for method, pattern, _ in api.routes(api.Api.__new__(api.Api)):
        path = pattern.pattern.strip("^$").replace("\\", "")
        path = re.sub(r"\(\?P<(\w+)>[^)]*\)", r"{\1}", path)
        served.add((method.lower(), path))
    documented = {(m, p) for p, methods in openapi.document()["paths"].items() for m in methods if m != "parameters"}
    assert served == documented


def test_prometheus_text() -> None:
    record = DomainRecord(7, model.from_plain({"name": "we.ird", "kernel": "/k"}), "/nonexistent", "/nonexistent")
    info = {"state": "running", "current_memory": 1 << 20, "maxmem": 1 << 20, "vcpus": 1, "cpu_time": 1.5}
    metrics = {"cpu_time": 1.5, "vcpu": [{"index": 0, "cpu_ns": 2_000_000_000, "exits": {"io": 3, "mmio": 1, "other": 0}}],
               "disks": [{"device": "pci1", "read_bytes": 10, "write_bytes": 20}], "nics": []}
    text = prometheus([record], [metrics], [info])
    assert 'pyhv_vcpu_cpu_seconds_total{domain="we.ird",id="7",vcpu="0"} 2.000000' in text
    assert 'pyhv_vcpu_exits_total{domain="we.ird",id="7",vcpu="0",reason="io"} 3' in text
    assert 'pyhv_disk_write_bytes_total{domain="we.ird",id="7",device="pci1"} 20' in text
    assert 'pyhv_domains{state="running"} 1' in text
    for line in text.splitlines():
        assert line.startswith("#") or re.match(r"^[a-z_]+(\{.*\})? [0-9.]+$", line), line


def test_host_threads_keep_an_unconfined_vmms_ids_and_never_pass_on_a_namespaces_ids() -> None:
    import os

    from pyhv.toolstack.processes import host_threads

    assert host_threads(os.getpid(), os.getpid(), [11, 12]) == (os.getpid(), [11, 12])
    # a confined VMM (it names itself 1) whose threads cannot be found: unknown, not 1 and 2
    assert host_threads(os.getpid(), 1, [1, 2]) == (os.getpid(), [0, 0])
