"""The default Linux guest under pyhv, end to end, inside a nested host.

This host's KVM cannot run a Linux kernel; an L1 Linux under QEMU's TCG with
emulated AMD SVM can (tests/nested/l1.py).  Inside it pyhv boots the default
guest (``pyhv image build``) as L2 with two vCPUs, a virtio-blk root disk,
virtio-net on a TAP, vsock, rng and a balloon, and drive.py types at its
console.  Every assertion here is on what L2 itself printed (``L2|`` lines),
or on pyhv's own exit.  The whole run is kept in build/nested/last-run.log.

Needs qemu-system-x86_64, apt-get/dpkg-deb, gcc (static glibc), mkfs.ext4
and debugfs: scripts/setup installs them.  Select with ``-m nested``.
"""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import warnings

import pytest

from . import l1
from .drive import VCPUS

pytestmark = pytest.mark.nested

RUN_TIMEOUT = 420  # a whole run takes 1.5-2 minutes


#: what pyhv prints when a vCPU triple-faults in the state a reset leaves it in
RESET_STATE_TRIPLE_FAULT = "cs=0xf000 (base=0xffff0000"


class Run:
    def __init__(self, log: str) -> None:
        self.log = log
        self.lines = log.splitlines()
        self.l2 = [line[4:] for line in self.lines if line.startswith("L2| ")]
        self.commands = dict(re.findall(r"^drive: \[[ 0-9.]+\] command (\d+): (.*)$", log, re.M))

    def outputs(self, command: str) -> list[tuple[list[str], int]]:
        """What L2 printed each time ``command`` was typed at its shell, and the status it reported."""
        numbers = [n for n, c in self.commands.items() if c == command]
        assert numbers, f"drive.py never typed {command!r}; see build/nested/last-run.log"
        return [self._output(n, command) for n in numbers]

    def output(self, command: str) -> tuple[list[str], int]:
        (out,) = self.outputs(command)
        return out

    def _output(self, n: str, command: str) -> tuple[list[str], int]:
        begin = [i for i, line in enumerate(self.l2) if line == f"@@begin-{n}"]
        ends = [i for i, line in enumerate(self.l2) if re.fullmatch(rf"@@done-{n}-\d+", line)]
        assert begin and ends, f"L2 never ran {command!r} to its end; see build/nested/last-run.log"
        return self.l2[begin[0] + 1 : ends[0]], int(self.l2[ends[0]].rsplit("-", 1)[1])


@pytest.fixture(scope="module")
def run() -> Run:
    assert shutil.which("qemu-system-x86_64"), "qemu-system-x86_64 is missing: run scripts/setup"
    kernel, initrd = l1.build()
    for attempt in (1, 2):
        try:
            p = subprocess.run(l1.qemu_command(kernel, initrd, "test"), stdin=subprocess.DEVNULL,
                               capture_output=True, text=True, timeout=RUN_TIMEOUT, check=False)
            log = p.stdout + p.stderr
        except subprocess.TimeoutExpired as e:  # the emulated L1 stopped making progress
            out = [b.decode(errors="replace") if isinstance(b, bytes) else (b or "") for b in (e.stdout, e.stderr)]
            log = "".join(out) + f"\nnested: L1 did not finish within {RUN_TIMEOUT} s\n"
        (l1.BUILD / "last-run.log").write_text(log)
        print(log)
        if attempt == 1 and (RESET_STATE_TRIPLE_FAULT in log or "L1 did not finish" in log):
            # L2 was put back in the architectural reset state (CS base 0xffff0000) by
            # nothing it asked for, and faulted there (about once in seven runs of this
            # emulated nesting), or the emulated L1 stopped making progress (seen once).
            # Say so loudly and judge a second run; a second such run fails the tests.
            (l1.BUILD / "first-run-reset-fault.log").write_text(log)
            warnings.warn("nested: the first run hung or L2 triple-faulted in the reset state "
                          "(build/nested/first-run-reset-fault.log); judged a second run", stacklevel=1)
            continue
        break
    return Run(log)


def test_l2_runs_the_debian_cloud_kernel(run: Run) -> None:
    kernel = json.loads((l1.BUILD / "l2" / "provenance.json").read_text())["kernel"]

    assert run.output("uname -r") == ([kernel], 0)


def test_l2_sees_every_configured_vcpu(run: Run) -> None:
    assert run.output("nproc") == ([str(VCPUS)], 0)


def test_l2_keeps_time_with_kvm_clock(run: Run) -> None:
    assert run.output("cat /sys/devices/system/clocksource/clocksource0/current_clocksource") == (["kvm-clock"], 0)


def test_each_virtio_device_in_l2_interrupts_through_msix(run: Run) -> None:
    vectors, status = run.output("awk '/PCI-MSI/ {print $NF}' /proc/interrupts")
    devices = {v.split("-")[0] for v in vectors}

    assert status == 0 and devices == {f"virtio{i}" for i in range(5)}  # blk, net, rng, balloon, vsock
    assert all(f"{d}-config" in vectors for d in devices) and {"virtio0-req.0", "virtio1-input.0"} <= set(vectors)


def test_l2_pings_l1_over_virtio_net(run: Run) -> None:
    lines, status = run.output("ping -c 3 -W 5 10.0.2.2")

    assert status == 0 and "3 packets transmitted, 3 packets received, 0% packet loss" in lines


def test_l2_gets_its_text_echoed_back_over_vsock(run: Run) -> None:
    assert run.output("vsock-echo 2 5000 hello-over-vsock") == (["vsock-echo: reply hello-over-vsock"], 0)


def test_l2_reads_random_bytes_from_virtio_rng(run: Run) -> None:
    lines, status = run.output(
        "cat /sys/class/misc/hw_random/rng_current; head -c 16 /dev/hwrng | od -An -tx1 | tr -d ' '"
    )

    assert status == 0 and lines[0] == "virtio_rng.0" and re.fullmatch(r"[0-9a-f]{32}", lines[1])


def test_balloon_takes_64_mib_from_l2(run: Run) -> None:
    (before, _), (after, _) = run.outputs("grep MemFree /proc/meminfo")
    freed_kib = int(before[0].split()[1]) - int(after[0].split()[1])

    assert freed_kib >= 56 * 1024  # the balloon asked for 64 MiB; the guest allocates a little meanwhile


def test_file_written_to_the_disk_is_there_after_a_guest_reboot(run: Run) -> None:
    written = run.output("echo written-before-reboot-$((6 * 7)) > /root/persist.txt; sync; cat /root/persist.txt")
    read_back = run.output("cat /root/persist.txt")
    rebooted = run.log.index("pyhv: guest rebooted; restarting")

    assert written == read_back == (["written-before-reboot-42"], 0)
    assert run.log.index("written-before-reboot-42") < rebooted < run.log.rindex("L2| written-before-reboot-42")
    assert run.l2.count("pyhv-guest: ready, 2 cpus, root /dev/vda") == 2


def test_guest_poweroff_ends_pyhv_with_status_0(run: Run) -> None:
    assert any(line.endswith("reboot: Power down") for line in run.l2)
    assert re.search(r"^drive: \[[ 0-9.]+\] pyhv exited with status 0$", run.log, re.M)
