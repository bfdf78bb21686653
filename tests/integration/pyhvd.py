"""Run a private pyhvd (its own run and state directories) for a test."""

from __future__ import annotations

import json
import os
import shlex
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from pyhv.toolstack.client import Client

from ..conftest import PROBE, ROOT


class Daemon:
    def __init__(self, tmp: Path, *args: str) -> None:
        self.tmp = tmp
        self.args = args
        self.run_dir = tmp / "run"
        self.state_dir = tmp / "state"
        self.socket = str(self.run_dir / "pyhvd.sock")
        #: where the API may save and restore snapshots (pyhvd's default --snapshot-dir)
        self.snapshots = self.state_dir / "snapshots"
        self.env = dict(os.environ, PYTHONPATH=str(ROOT), PYHV_RUN_DIR=str(self.run_dir),
                        PYHV_STATE_DIR=str(self.state_dir), PYHV_SOCKET=self.socket)
        self.proc: subprocess.Popen[bytes] | None = None
        self.client = Client(self.socket, timeout=60)

    def start(self) -> None:
        log = open(self.tmp / "pyhvd.log", "ab")
        self.proc = subprocess.Popen(
            [sys.executable, "-c", "import sys; from pyhv.toolstack.daemon import main; sys.exit(main())",
             *self.args],
            env=self.env, stdout=log, stderr=log, stdin=subprocess.DEVNULL,
        )
        log.close()
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline:
            try:
                self.client.get("/version")
                return
            except Exception:  # noqa: BLE001 - not up yet
                assert self.proc.poll() is None, f"pyhvd exited: {self.log()}"
                time.sleep(0.05)
        raise AssertionError(f"pyhvd did not start: {self.log()}")

    def kill(self, sig: int = signal.SIGKILL) -> None:
        assert self.proc is not None
        self.proc.send_signal(sig)
        self.proc.wait(10)
        self.proc = None

    def log(self) -> str:
        try:
            return (self.tmp / "pyhvd.log").read_text()
        except OSError:
            return ""

    def pyhv(self, *args: str, timeout: float = 90, input: str | None = None) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [sys.executable, "-m", "pyhv", *args], env=self.env, capture_output=True, text=True,
            timeout=timeout, input=input, stdin=None if input is not None else subprocess.DEVNULL, check=False,
        )

    def config(self, name: str, test: str = "hello", **extra: Any) -> Path:
        """A probe domain's TOML file."""
        values = {"name": name, "kernel": str(PROBE), "cmdline": f"probe.test={test}", "memory": 32, **extra}
        lines = [f"{key} = {_toml(value)}" for key, value in values.items()]
        path = self.tmp / f"{name}.toml"
        path.write_text("\n".join(lines) + "\n")
        return path

    def config_dict(self, name: str, test: str = "hello", **extra: Any) -> dict[str, Any]:
        return {"name": name, "kernel": str(PROBE), "cmdline": f"probe.test={test}", "memory": 32, **extra}

    def console_log(self, name: str) -> str:
        try:
            return (self.state_dir / "domains" / name / "console.log").read_text()
        except FileNotFoundError:
            return ""

    def ticks(self, name: str) -> list[int]:
        """The n of every ``probe: tick n=K`` line the domain's guest printed."""
        return ticks_in(self.console_log(name))

    def domains(self) -> dict[str, dict[str, Any]]:
        """``pyhv list --json``, by name."""
        r = self.pyhv("list", "--json")
        assert r.returncode == 0, r.stderr
        return {x["name"]: x for x in json.loads(r.stdout)}

    def ticks_reach(self, name: str, n: int, timeout: float = 30) -> list[int]:
        """Wait until the domain's ticker printed tick ``n``; all its ticks so far."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            ticks = self.ticks(name)
            if ticks and ticks[-1] >= n:
                return ticks
            time.sleep(0.05)
        raise AssertionError(f"{name} never reached tick {n}:\n{self.console_log(name)}")

    def wait_for(self, name: str, text: str, timeout: float = 30) -> str:
        """The console log once the guest printed ``text`` and the rest of its line."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            log = self.console_log(name)
            at = log.find(text)
            if at >= 0 and "\n" in log[at:]:
                return log
            time.sleep(0.05)
        raise AssertionError(f"{name}'s guest never printed {text!r}; it printed:\n{self.console_log(name)}")

    def pids(self) -> list[int]:
        out = []
        for pid_file in self.run_dir.glob("domains/*/pid"):
            try:
                out.append(int(pid_file.read_text().split()[0]))
            except (OSError, ValueError, IndexError):
                pass
        return out

    def cleanup(self) -> None:
        if self.proc is not None:
            self.proc.terminate()
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
        for pid in self.pids():
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass


def ticks_in(text: str) -> list[int]:
    """The n of every whole ``probe: tick n=K`` line in a console log (the guest
    may be half-way through writing the last one)."""
    out = []
    for line in text.split("\n")[:-1]:
        if line.startswith("probe: tick "):
            fields = dict(t.partition("=")[::2] for t in shlex.split(line[len("probe: tick "):]))
            out.append(int(fields["n"]))
    return out


def _toml(value: Any) -> str:
    """A TOML value: inline tables and arrays, JSON-quoted strings."""
    if isinstance(value, dict):
        return "{" + ", ".join(f"{k} = {_toml(v)}" for k, v in value.items()) + "}"
    if isinstance(value, list):
        return "[" + ", ".join(_toml(v) for v in value) + "]"
    return json.dumps(value)


def daemon_fixture(tmp_path: Path, *args: str) -> Iterator[Daemon]:
    d = Daemon(tmp_path, *args)
    d.start()
    try:
        yield d
    finally:
        d.cleanup()


def vmm_pid(pid: int) -> int:
    """The process running a domain's machine: the domain process itself, or the
    confined VMM it supervises (its one child, pyhv/jail/enter.py)."""
    with open(f"/proc/{pid}/task/{pid}/children") as f:
        children = f.read().split()
    return int(children[0]) if len(children) == 1 else pid
