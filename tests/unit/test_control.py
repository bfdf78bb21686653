"""The control socket's commands (``pyhv run --control PATH``), against a stand-in machine."""

from __future__ import annotations

import socket
from pathlib import Path
from types import SimpleNamespace

from pyhv.errors import PyhvError
from pyhv.vmm.control import ControlServer, handle

MiB = 1 << 20


class FakeMachine:
    def __init__(self, balloon: bool = True) -> None:
        self.config = SimpleNamespace(vcpus=2)
        self.memory = SimpleNamespace(size=256 * MiB)
        self.balloon = SimpleNamespace(target_pages=0, actual_pages=0) if balloon else None

    def set_balloon_target(self, size: int) -> None:
        if size > self.memory.size:
            raise PyhvError("balloon target too big")
        self.balloon.target_pages = size >> 12  # type: ignore[union-attr]


def test_balloon_size_sets_the_target_and_reports_it() -> None:
    machine = FakeMachine()

    answer = handle(machine, "balloon 64M\n")  # type: ignore[arg-type]

    assert answer == f"ok target={64 * MiB} actual=0"


def test_errors_are_answered_not_raised() -> None:
    assert handle(FakeMachine(), "balloon 1G").startswith("error ")  # type: ignore[arg-type]
    assert handle(FakeMachine(), "balloon lots").startswith("error ")  # type: ignore[arg-type]
    assert handle(FakeMachine(balloon=False), "balloon").startswith("error ")  # type: ignore[arg-type]
    assert handle(FakeMachine(), "reboot please").startswith("error unknown command")  # type: ignore[arg-type]
    assert handle(None, "info") == "error no machine is running"


def test_server_answers_each_line_on_its_socket(tmp_path: Path) -> None:
    path = str(tmp_path / "control")
    server = ControlServer(path, FakeMachine)  # type: ignore[arg-type]
    try:
        with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as s:
            s.connect(path)
            s.sendall(b"info\n")
            answer = s.makefile().readline()
    finally:
        server.close()

    assert answer == f"ok vcpus=2 memory={256 * MiB}\n"
