"""A ``python -m pyhv firecracker`` process for the integration tests."""

from __future__ import annotations

import os
import pathlib
import re
import socket
import subprocess
import sys
import time

from ..conftest import ROOT
from .probe import Run


#: the probe's last line, whole (a pattern for :meth:`Firecracker.wait_for`)
RESULT = r"probe: result=\w+\r?\n"


class Firecracker:
    """One ``python -m pyhv firecracker --api-sock S`` process; its stdout (the guest's
    console) goes to a file."""

    def __init__(self, tmp: pathlib.Path, name: str, *args: str) -> None:
        self.sock = str(tmp / f"{name}.sock")
        self.console = tmp / f"{name}.console"
        self.errors = tmp / f"{name}.stderr"
        env = dict(os.environ, PYTHONPATH=str(ROOT))
        with open(self.console, "w") as out, open(self.errors, "w") as err:
            self.process = subprocess.Popen(
                [sys.executable, "-m", "pyhv", "firecracker", "--api-sock", self.sock, "--id", name, *args],
                stdin=subprocess.DEVNULL, stdout=out, stderr=err, env=env,
            )
        deadline = time.monotonic() + 10
        while not self.listening() and time.monotonic() < deadline:
            time.sleep(0.02)

    def listening(self) -> bool:
        """Whether the API socket takes connections (it exists a moment before it listens)."""
        with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as s:
            try:
                s.connect(self.sock)
            except OSError:
                return False
        return True

    def text(self) -> str:
        return self.console.read_text()

    def wait_for(self, pattern: str, timeout: float = 30.0) -> str:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            text = self.text()
            if re.search(pattern, text):
                return text
            time.sleep(0.02)
        raise AssertionError(f"{pattern!r} not seen in {timeout}s:\n{self.text()}\nstderr:\n{self.errors.read_text()}")

    def ticks(self) -> list[int]:
        return [int(f["n"]) for f in Run(0, self.text(), "").lines() if "n" in f and "ms" in f]

    def close(self) -> int:
        if self.process.poll() is None:
            self.process.terminate()
        return self.process.wait(timeout=30)
