"""Bad input to ``pyhv run`` gives one line on stderr and exit status 2."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

from ..conftest import ROOT


def pyhv(*args: str) -> subprocess.CompletedProcess[str]:
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    return subprocess.run(
        [sys.executable, "-m", "pyhv", *args], capture_output=True, text=True, env=env,
        stdin=subprocess.DEVNULL, timeout=30, check=False,
    )


@pytest.mark.parametrize(
    "args,message",
    [
        (["run", "--kernel", "/etc/hostname"], "/etc/hostname: "),
        (["run", "--kernel", "/nonexistent/vmlinuz"], "/nonexistent/vmlinuz: "),
        (["run", "--kernel", "/etc"], "/etc: "),
        (["run", "--kernel", "/etc/hostname", "--memory", "lots"], "--memory 'lots'"),
        (["run", "--kernel", "/etc/hostname", "--vcpus", "0"], "--vcpus '0': must be an integer between 1 and 255"),
        (["run", "--kernel", "k", "--disk", "/d,serial=" + "x" * 21], "serial: at most 20 printable bytes"),
        (["run", "--kernel", "k", "--vsock", "cid=3,uds=/" + "v" * 100], "uds: socket path longer than 90 bytes"),
        (["run", "--kernel", "k", "--disk", "/d,cache=unsafe"], "cache: must be one of writeback, none"),
        (["run", "--kernel", "/etc/hostname", "--serial", "tcp:1"], "--serial 'tcp:1'"),
        (["run"], "--kernel"),
        (["frobnicate"], "unknown command 'frobnicate'"),
        (["run", "--kernel"], "--kernel needs a value"),
        (["run", "--kernel", "k", "--debug-exit=1"], "--debug-exit=1: must be one of off, pyhv, qemu"),
        (["run", "--kernel", "k", "--boot", "uefi"], "--boot 'uefi'"),
        (["run", "--kernel", "k", "--bogus"], "unknown option '--bogus'"),
    ],
)
def test_bad_input_prints_one_line_and_exits_2(args: list[str], message: str) -> None:
    p = pyhv(*args)
    assert (p.returncode, p.stdout) == (2, "")
    assert p.stderr.count("\n") == 1 and p.stderr.startswith("pyhv: ") and message in p.stderr


def test_empty_kernel_file_is_refused(tmp_path: os.PathLike[str]) -> None:
    empty = os.path.join(tmp_path, "empty")
    open(empty, "wb").close()
    p = pyhv("run", "--kernel", empty)
    assert p.returncode == 2 and p.stderr.startswith(f"pyhv: {empty}: ") and "Traceback" not in p.stderr


def test_run_help_lists_every_option_and_exits_0() -> None:
    p = pyhv("run", "--help")
    assert p.returncode == 0 and all(opt in p.stdout for opt in ("--kernel", "--serial", "--on-reboot"))


def test_option_equals_form_is_accepted() -> None:
    from pyhv.cli import RUN_OPTIONS, parse

    args = parse(["--kernel=k", "--memory=1G", "--debug-exit"], RUN_OPTIONS)
    assert (args.kernel, args.memory, args.debug_exit, args.vcpus) == ("k", "1G", "pyhv", None)


def test_debug_exit_value_comes_only_with_equals_and_the_next_argument_stays_an_option() -> None:
    from pyhv.cli import RUN_OPTIONS, parse

    args = parse(["--debug-exit", "--kernel", "k"], RUN_OPTIONS), parse(["--debug-exit=qemu", "--kernel=k"], RUN_OPTIONS)
    assert [(a.debug_exit, a.kernel) for a in args] == [("pyhv", "k"), ("qemu", "k")]


def test_options_given_with_config_override_the_file(tmp_path: os.PathLike[str]) -> None:
    from pyhv.cli import RUN_OPTIONS, describe_run, parse

    path = os.path.join(tmp_path, "d.toml")
    with open(path, "w") as f:
        f.write('name = "a"\nkernel = "k"\nvcpus = 2\nmemory = "64M"\n')
    description, _ = describe_run(parse(["--config", path, "--memory", "128M", "--kernel", "k2"], RUN_OPTIONS))
    assert (description.payload.kernel, description.vcpus, description.memory) == ("k2", 2, 128 << 20)


def test_config_with_a_bad_key_names_file_and_key(tmp_path: os.PathLike[str]) -> None:
    path = os.path.join(tmp_path, "d.toml")
    with open(path, "w") as f:
        f.write('name = "a"\nkernel = "k"\nvcpus = 0\n')
    p = pyhv("run", "--config", path)
    assert p.returncode == 2 and p.stderr.count("\n") == 1 and f"{path}: vcpus:" in p.stderr
