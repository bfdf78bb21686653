"""What the nested test host (L1, tests/nested/l1.py) runs: ``drive.py test`` or ``drive.py bench``.

``test``: pyhv boots the default guest (L2) and this script types at its
serial console like a user would, one check at a time.  Everything L2 prints
is echoed as ``L2| ...``; this script's own lines start with ``drive:``.  The
test on the outer host asserts on the ``L2|`` lines.

``bench``: start-to-init times of pyhv and QEMU on the same kernel and
initramfs (bench/linux_boot.py reads the ``bench:`` lines).

Runs under L1's bare Python (``python3.11 -S``): standard library only.
"""

from __future__ import annotations

import fcntl
import json
import os
import select
import signal
import socket
import struct
import subprocess
import sys
import threading
import time

L2 = "/l2"
HOST_IP, GUEST_IP = "10.0.2.2", "10.0.2.15"
TAP = "tap0"
VSOCK_UDS = "/tmp/l2.vsock"
VSOCK_PORT = 5000
CONTROL = "/tmp/l2.control"
VCPUS = 2
BOOT_TIMEOUT = 240.0
T0 = time.monotonic()


def say(text: str) -> None:
    print(f"drive: [{time.monotonic() - T0:7.2f}] {text}", flush=True)


class Console:
    """pyhv's serial console through pipes: what L2 prints, what we type."""

    def __init__(self, proc: subprocess.Popen[bytes]) -> None:
        assert proc.stdout is not None and proc.stdin is not None
        self.proc = proc
        self.fd = proc.stdout.fileno()
        self.buf = ""  # received and not yet consumed by expect()
        self.line = b""  # the line being received, printed once complete
        self.eof = False
        self.count = 0

    def pump(self, timeout: float) -> None:
        ready, _, _ = select.select([self.fd], [], [], timeout)
        if not ready:
            return
        data = os.read(self.fd, 65536)
        if not data:
            self.eof = True
            return
        text = data.decode(errors="replace").replace("\r", "").replace("\x1b[6n", "")
        self.buf += text
        *lines, rest = (self.line + data).split(b"\n")
        self.line = rest
        for raw in lines:
            line = raw.decode(errors="replace").replace("\r", "").replace("\x1b[6n", "")
            print(f"L2| {line}", flush=True)

    def expect(self, text: str, timeout: float = 60.0) -> str:
        """Wait until ``text`` has been printed; the output up to it (consumed)."""
        deadline = time.monotonic() + timeout
        while text not in self.buf:
            if self.eof or time.monotonic() > deadline:
                raise TimeoutError(f"no {text!r} from L2 within {timeout:.0f} s")
            self.pump(min(1.0, max(0.0, deadline - time.monotonic())))
        cut = self.buf.index(text) + len(text)
        out, self.buf = self.buf[:cut], self.buf[cut:]
        return out

    def type(self, line: str) -> None:
        assert self.proc.stdin is not None
        self.proc.stdin.write(line.encode() + b"\n")
        self.proc.stdin.flush()

    def run(self, command: str, timeout: float = 60.0) -> str:
        """Type ``command`` at the shell and wait for it to finish; its output."""
        self.count += 1
        say(f"command {self.count}: {command}")
        # the shell expands the marker; the echoed command line shows it unexpanded
        self.type(f"echo @@begin-$(({self.count} * 1)); {command}; echo @@done-$(({self.count} * 1))-$?")
        out = self.expect(f"@@done-{self.count}-", timeout)
        status = self.expect("\n", 5)
        say(f"command {self.count} -> status {status.strip()}")
        return out


def make_tap() -> None:
    """A persistent TAP with HOST_IP, so the guest has L1 to ping (and it survives the guest's reboot)."""
    tunsetiff, tunsetpersist = 0x400454CA, 0x400454CB
    fd = os.open("/dev/net/tun", os.O_RDWR)
    fcntl.ioctl(fd, tunsetiff, struct.pack("16sH22x", TAP.encode(), 0x0002 | 0x1000 | 0x4000))
    fcntl.ioctl(fd, tunsetpersist, 1)
    os.close(fd)
    subprocess.run(["ip", "addr", "add", f"{HOST_IP}/24", "dev", TAP], check=True)
    subprocess.run(["ip", "link", "set", TAP, "up"], check=True)


def vsock_echo_server() -> None:
    """The L1 end of the guest's vsock connections to host port VSOCK_PORT (pyhv: PATH_PORT)."""
    path = f"{VSOCK_UDS}_{VSOCK_PORT}"
    srv = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    srv.bind(path)
    srv.listen(4)

    def serve() -> None:
        while True:
            conn, _ = srv.accept()
            with conn:
                data = conn.recv(4096)
                say(f"vsock server got {data!r}, echoing")
                conn.sendall(data)

    threading.Thread(target=serve, daemon=True).start()


def control(request: dict) -> dict:
    """One request on pyhv run's control socket (one JSON line each way)."""
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as s:
        s.connect(CONTROL)
        s.sendall(json.dumps(request).encode() + b"\n")
        return json.loads(s.makefile().readline())


def pyhv_command(extra: list[str], cmdline: str) -> list[str]:
    return [sys.executable, "-S", "-X", "faulthandler", "-m", "pyhv", "run", "--kernel", f"{L2}/vmlinuz", "--initrd", f"{L2}/initrd.img",
            "--cmdline", cmdline, *extra]


def test() -> int:
    make_tap()
    vsock_echo_server()
    cmd = pyhv_command(
        ["--vcpus", str(VCPUS), "--memory", "256M", "--disk", f"{L2}/rootfs.ext4", "--net", f"tap={TAP}",
         "--vsock", f"cid=3,uds={VSOCK_UDS}", "--rng", "--balloon", "--on-reboot", "restart",
         "--control", CONTROL],
        f"console=ttyS0 quiet root=/dev/vda rw pyhv.ip={GUEST_IP}/24",
    )
    say("starting: " + " ".join(cmd))
    proc = subprocess.Popen(cmd, stdin=subprocess.PIPE, stdout=subprocess.PIPE)
    con = Console(proc)
    try:
        con.expect("pyhv-guest: ready", BOOT_TIMEOUT)
        say("L2 is up")
        con.expect("# ", 30)
        con.run("uname -r")
        con.run("nproc")
        con.run("cat /sys/devices/system/clocksource/clocksource0/current_clocksource")
        con.run("awk '/PCI-MSI/ {print $NF}' /proc/interrupts")
        con.run(f"ping -c 3 -W 5 {HOST_IP}", 60)
        con.run(f"vsock-echo 2 {VSOCK_PORT} hello-over-vsock", 30)
        con.run("cat /sys/class/misc/hw_random/rng_current; head -c 16 /dev/hwrng | od -An -tx1 | tr -d ' '")
        con.run("grep MemFree /proc/meminfo")
        say(f"control: {control({'op': 'mem-set', 'bytes': 192 << 20})}")  # the balloon takes 64 MiB
        deadline = time.monotonic() + 60
        answer = control({"op": "info"})
        while answer.get("balloon", {}).get("actual") != 64 << 20 and time.monotonic() < deadline:
            time.sleep(0.5)
            answer = control({"op": "info"})
        say(f"control: balloon {answer.get('balloon')}")
        con.run("grep MemFree /proc/meminfo")
        say(f"control: {control({'op': 'mem-set', 'bytes': 256 << 20})}")
        con.run("echo written-before-reboot-$((6 * 7)) > /root/persist.txt; sync; cat /root/persist.txt")
        con.type("reboot")
        con.expect("pyhv-guest: ready", BOOT_TIMEOUT)
        say("L2 is up again")
        con.expect("# ", 30)
        con.run("cat /root/persist.txt")
        con.type("poweroff")
        status = proc.wait(120)
        while not con.eof:
            con.pump(1.0)
        say(f"pyhv exited with status {status}")
        return 0 if status == 0 else 1
    except (TimeoutError, subprocess.TimeoutExpired) as e:
        say(f"FAILED: {e}; pyhv's threads:")
        proc.send_signal(signal.SIGABRT)  # faulthandler prints every thread's stack
        time.sleep(3)
        proc.kill()
        proc.wait()
        return 1


INIT_MARKER = b"pyhv-guest: init reached"
BENCH_CMDLINE = "console=ttyS0 quiet"
BENCH_MEMORY = "256M"
BENCH_VCPUS = 2


def bench_commands() -> dict[str, list[str]]:
    """Each VMM on the same kernel, initramfs, command line, memory and vCPUs; no other devices."""
    qemu = ["qemu-system-x86_64", "-enable-kvm", "-cpu", "host", "-m", BENCH_MEMORY, "-smp", str(BENCH_VCPUS),
            "-nodefaults", "-no-user-config", "-display", "none", "-serial", "stdio", "-monitor", "none",
            "-kernel", f"{L2}/vmlinuz", "-initrd", f"{L2}/initrd.img", "-append", BENCH_CMDLINE]
    return {
        "pyhv": [sys.executable, "-S", "-m", "pyhv", "run", "--kernel", f"{L2}/vmlinuz", "--initrd",
                 f"{L2}/initrd.img", "--cmdline", BENCH_CMDLINE, "--memory", BENCH_MEMORY,
                 "--vcpus", str(BENCH_VCPUS), "--serial", "stdio"],
        "qemu-microvm": qemu[:1] + ["-M", "microvm"] + qemu[1:],
        "qemu-pc": qemu[:1] + ["-M", "pc"] + qemu[1:],
    }


def time_to_init(argv: list[str], timeout: float = 120.0) -> float | None:
    """Seconds from spawning the VMM to the guest's init printing its first line."""
    start = time.monotonic()
    proc = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    assert proc.stdout is not None
    seen = b""
    try:
        while time.monotonic() - start < timeout:
            ready, _, _ = select.select([proc.stdout], [], [], 1.0)
            if not ready:
                continue
            data = os.read(proc.stdout.fileno(), 65536)
            if not data:
                break
            seen = (seen + data)[-4096:]
            if INIT_MARKER in seen:
                return time.monotonic() - start
        return None
    finally:
        proc.kill()
        _, err = proc.communicate()
        if err.strip():
            say(f"{argv[0]} stderr: {err.decode(errors='replace').strip()[-300:]}")


def bench(repeats: int) -> int:
    commands = bench_commands()
    for rep in range(repeats):
        names = list(commands)
        names = names[rep % len(names):] + names[:rep % len(names)]  # rotate: noise hits all alike
        for name in names:
            t = time_to_init(commands[name])
            print(f"bench: vmm={name} round={rep} init_s={'failed' if t is None else f'{t:.3f}'}", flush=True)
    return 0


def main() -> int:
    mode = sys.argv[1] if len(sys.argv) > 1 else "test"
    if mode == "test":
        return test()
    if mode.startswith("bench"):
        return bench(int(mode[5:] or 3))
    say(f"unknown mode {mode!r}")
    return 2


if __name__ == "__main__":
    sys.exit(main())
