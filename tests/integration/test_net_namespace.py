"""ping, from inside a network namespace, reaches a probe guest whose TAP lives there.

pyhv runs inside the namespace (``ip netns exec``), creates its TAP there, and
the namespace gets the host end's address: nothing touches the machine's own
network.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
import time

import pytest

from ..conftest import PROBE, ROOT

pytestmark = pytest.mark.kvm

NS = f"pyhvns{os.getpid()}"
TAP = "nstap0"


def ip(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(["ip", *args], capture_output=True, text=True, check=False)


@pytest.fixture
def netns() -> str:
    assert shutil.which("ip") and shutil.which("ping"), "ip and ping are needed: run scripts/setup"
    assert ip("netns", "add", NS).returncode == 0
    yield NS
    ip("netns", "del", NS)


def test_ping_from_a_namespace_reaches_the_guest(netns: str) -> None:
    guest = subprocess.Popen(
        ["ip", "netns", "exec", netns, sys.executable, "-m", "pyhv", "run", "--kernel", str(PROBE),
         "--cmdline", "probe.test=net probe.n=3 probe.secs=30 probe.ip=10.9.0.2", "--debug-exit",
         "--net", f"tap={TAP}"],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, stdin=subprocess.DEVNULL, text=True,
        env=dict(os.environ, PYTHONPATH=str(ROOT)),
    )
    deadline = time.monotonic() + 15
    while time.monotonic() < deadline and ip("-n", netns, "link", "show", TAP).returncode != 0:
        time.sleep(0.05)
    ip("-n", netns, "addr", "add", "10.9.0.1/24", "dev", TAP)
    ip("-n", netns, "link", "set", "lo", "up")
    ping = subprocess.run(["ip", "netns", "exec", netns, "ping", "-c", "3", "-i", "0.2", "-W", "5", "10.9.0.2"],
                          capture_output=True, text=True, check=False)
    out, _ = guest.communicate(timeout=60)
    replies = re.search(r"icmp_replies=(\d+)", out)
    assert ping.returncode == 0 and " 0% packet loss" in ping.stdout
    assert replies is not None and replies.group(1) == "3" and guest.returncode == 0


def test_tap_handed_over_as_a_file_descriptor_carries_pings(netns: str) -> None:
    # the toolstack's way: it opens the TAP (here inside the namespace) and passes the fd
    opener = (
        "import os, sys; sys.path.insert(0, sys.argv[1]); from pyhv._sys import tun; "
        "fd, name = tun.open_tap('fdtap0', 12); tun.set_link_up(name); os.set_inheritable(fd, True); "
        "os.set_blocking(fd, False); "
        "os.execvp(sys.executable, [sys.executable, '-m', 'pyhv', 'run', '--kernel', sys.argv[2], '--cmdline', "
        "'probe.test=net probe.n=2 probe.secs=30 probe.ip=10.9.0.2', '--debug-exit', '--net', f'fd={fd}'])"
    )
    guest = subprocess.Popen(
        ["ip", "netns", "exec", netns, sys.executable, "-c", opener, str(ROOT), str(PROBE)],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, stdin=subprocess.DEVNULL, text=True,
        env=dict(os.environ, PYTHONPATH=str(ROOT)),
    )
    deadline = time.monotonic() + 15
    while time.monotonic() < deadline and ip("-n", netns, "link", "show", "fdtap0").returncode != 0:
        time.sleep(0.05)
    ip("-n", netns, "addr", "add", "10.9.0.1/24", "dev", "fdtap0")
    ping = subprocess.run(["ip", "netns", "exec", netns, "ping", "-c", "2", "-i", "0.2", "-W", "5", "10.9.0.2"],
                          capture_output=True, text=True, check=False)
    out, err = guest.communicate(timeout=60)
    assert ping.returncode == 0 and "icmp_replies=2" in out and guest.returncode == 0, err
