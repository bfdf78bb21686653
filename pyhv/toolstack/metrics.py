"""Per-domain counters in the Prometheus text format (``GET /metrics``)."""

from __future__ import annotations

from typing import Any

from .registry import DomainRecord

# name, type, help
FAMILIES = [
    ("pyhv_domains", "gauge", "Domains pyhvd knows, by state."),
    ("pyhv_domain_cpu_seconds_total", "counter", "CPU time of the domain's VMM process."),
    ("pyhv_domain_memory_bytes", "gauge", "Guest memory less what the balloon holds."),
    ("pyhv_vcpu_cpu_seconds_total", "counter", "CPU time of one vCPU thread."),
    ("pyhv_vcpu_exits_total", "counter", "VM exits that reached the VMM, by reason."),
    ("pyhv_vcpu_bvt_avt_seconds", "gauge", "BVT actual virtual time of a vCPU (CPU seconds at weight 1)."),
    ("pyhv_vcpu_bvt_evt_seconds", "gauge", "BVT effective virtual time of a vCPU (actual less any warp)."),
    ("pyhv_vcpu_bvt_share", "gauge", "A vCPU's share of the CPU time its pool CPU gave vCPUs."),
    ("pyhv_disk_read_bytes_total", "counter", "Bytes the guest read from a virtio-blk disk."),
    ("pyhv_disk_write_bytes_total", "counter", "Bytes the guest wrote to a virtio-blk disk."),
    ("pyhv_net_rx_bytes_total", "counter", "Bytes delivered to the guest by a virtio-net device."),
    ("pyhv_net_tx_bytes_total", "counter", "Bytes the guest sent through a virtio-net device."),
    ("pyhv_net_rx_dropped_total", "counter", "Frames for the guest dropped by a virtio-net device."),
    ("pyhv_net_tx_dropped_total", "counter", "Frames from the guest dropped by a virtio-net device."),
]


def _labels(**labels: object) -> str:
    def esc(v: object) -> str:
        return str(v).replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n")

    return "{" + ",".join(f'{k}="{esc(v)}"' for k, v in labels.items()) + "}"


def prometheus(
    records: list[DomainRecord], metrics: list[dict[str, Any] | None], infos: list[dict[str, Any] | None],
    bvt: dict[str, list[dict[str, Any]]] | None = None,
) -> str:
    samples: dict[str, list[str]] = {name: [] for name, _, _ in FAMILIES}
    states: dict[str, int] = {}
    for record, m, info in zip(records, metrics, infos, strict=True):
        state = record.summary(info)["state"]
        states[state] = states.get(state, 0) + 1
        dom = {"domain": record.name, "id": record.id}
        for v in (bvt or {}).get(str(record.id), []):
            labels = _labels(**dom, vcpu=v["vcpu"])
            samples["pyhv_vcpu_bvt_avt_seconds"].append(f"{labels} {v['avt_ns'] / 1e9:.9f}")
            samples["pyhv_vcpu_bvt_evt_seconds"].append(f"{labels} {v['evt_ns'] / 1e9:.9f}")
            samples["pyhv_vcpu_bvt_share"].append(f"{labels} {v['share']:.6f}")
        if info is not None:
            samples["pyhv_domain_memory_bytes"].append(f"{_labels(**dom)} {info['current_memory']}")
        if m is None:
            continue
        samples["pyhv_domain_cpu_seconds_total"].append(f"{_labels(**dom)} {m['cpu_time']:.6f}")
        for v in m["vcpu"]:
            samples["pyhv_vcpu_cpu_seconds_total"].append(f"{_labels(**dom, vcpu=v['index'])} {v['cpu_ns'] / 1e9:.6f}")
            for reason, n in v["exits"].items():
                samples["pyhv_vcpu_exits_total"].append(f"{_labels(**dom, vcpu=v['index'], reason=reason)} {n}")
        for d in m["disks"]:
            samples["pyhv_disk_read_bytes_total"].append(f"{_labels(**dom, device=d['device'])} {d['read_bytes']}")
            samples["pyhv_disk_write_bytes_total"].append(f"{_labels(**dom, device=d['device'])} {d['write_bytes']}")
        for n in m["nics"]:
            for key in ("rx_bytes", "tx_bytes", "rx_dropped", "tx_dropped"):
                samples[f"pyhv_net_{key}_total"].append(f"{_labels(**dom, device=n['device'])} {n[key]}")
    samples["pyhv_domains"] = [f"{_labels(state=s)} {n}" for s, n in sorted(states.items())]
    lines = []
    for name, kind, text in FAMILIES:
        lines += [f"# HELP {name} {text}", f"# TYPE {name} {kind}"]
        lines += [f"{name}{sample}" for sample in samples[name]]
    return "\n".join(lines) + "\n"
