"""A Multiboot kernel loaded below 1 MiB (guests/mbstub) under pyhv and under QEMU:
what the kernel printed about its loader (magic, command line) and how it ended."""

from __future__ import annotations

import shlex
import subprocess

import pytest

from ..conftest import ROOT
from .probe import pyhv

pytestmark = pytest.mark.kvm

MBSTUB = ROOT / "guests" / "build" / "mbstub.bin"
ARGS = 'console=ttyS0 quoted="a b" back\\slash'


def _line(text: str) -> dict[str, str]:
    """The ``mbstub: key=value ...`` line as a dict, quoted values unescaped (under QEMU
    the line follows SeaBIOS's last words on the same line)."""
    (line,) = [x.partition("mbstub: ")[2] for x in text.splitlines() if "mbstub: " in x]
    fields = dict(token.partition("=")[::2] for token in shlex.split(line))
    fields["cmdline"] = fields["cmdline"].encode().decode("unicode_escape")  # \xHH as the stub writes them
    return fields


@pytest.mark.parametrize("args", [ARGS, ""])
def test_multiboot_kernel_at_64k_gets_its_path_then_the_arguments(args: str) -> None:
    run = pyhv("run", "--kernel", str(MBSTUB), "--cmdline", args, "--debug-exit")
    line = _line(run.stdout)
    assert (line["magic"], int(line["entry"], 16) < 0x100000) == ("ok", True), run.stderr
    assert line["cmdline"] == f"{MBSTUB} {args}" and run.status == 0


def test_multiboot_command_line_and_debug_exit_status_are_qemus() -> None:
    ours = pyhv("run", "--kernel", str(MBSTUB), "--cmdline", ARGS, "--debug-exit=qemu")
    qemu = subprocess.run(
        ["qemu-system-x86_64", "-enable-kvm", "-M", "pc", "-m", "128M", "-nographic", "-no-reboot",
         "-kernel", str(MBSTUB), "-append", ARGS, "-device", "isa-debug-exit,iobase=0xf4,iosize=0x04"],
        capture_output=True, text=True, timeout=120, stdin=subprocess.DEVNULL, check=False,
    )
    assert _line(ours.stdout)["cmdline"] == _line(qemu.stdout)["cmdline"]
    assert ours.status == qemu.returncode, (ours.stderr, qemu.stderr)
