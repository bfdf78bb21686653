"""The seccomp policy of a confined VMM, tried in forked children (no root needed:
no_new_privs lets any process filter itself)."""

from __future__ import annotations

import errno
import os
import signal
import socket
from collections.abc import Callable

from pyhv._sys import kvm_h, privs, tun
from pyhv.jail import policy


def _in_child(body: Callable[[], int]) -> int:
    """Run ``body`` in a forked child under the baseline filter; its exit status, or -signal."""
    pid = os.fork()
    if pid == 0:
        try:
            privs.set_no_new_privs()
            policy.install_baseline(os.getpid())
            os._exit(body())
        except BaseException:  # noqa: BLE001 - any failure is the status
            os._exit(99)
    _, status = os.waitpid(pid, 0)
    return -os.WTERMSIG(status) if os.WIFSIGNALED(status) else os.WEXITSTATUS(status)


def test_ioctl_requests_are_kvm_s_and_the_few_others_but_never_tun_setiff() -> None:
    requests = policy.ioctl_requests()
    assert kvm_h.KVM_RUN in requests and kvm_h.KVM_CREATE_VM in requests and tun.TUNSETOFFLOAD in requests
    assert tun.TUNSETIFF not in requests


def test_unix_sockets_are_allowed_and_an_inet_socket_kills_the_process() -> None:
    def unix() -> int:
        socket.socket(socket.AF_UNIX, socket.SOCK_STREAM).close()
        return 7

    assert _in_child(unix) == 7
    assert _in_child(lambda: socket.socket(socket.AF_INET).fileno() and 0) == -signal.SIGSYS


def test_execve_and_an_executable_mapping_kill_the_process() -> None:
    assert _in_child(lambda: os.execv("/bin/true", ["true"]) or 0) == -signal.SIGSYS
    import mmap

    assert _in_child(lambda: len(mmap.mmap(-1, 4096, prot=mmap.PROT_READ | mmap.PROT_EXEC))) == -signal.SIGSYS
    assert _in_child(lambda: len(mmap.mmap(-1, 4096))) == 4096 % 256


def test_threads_start_and_a_vcpu_thread_narrowed_cannot_open_files() -> None:
    import threading

    def body() -> int:
        out: list[int] = []

        def vcpu() -> None:
            policy.narrow("vcpu")
            try:
                os.open("/", os.O_RDONLY)
                out.append(0)
            except PermissionError as e:
                out.append(e.errno)

        t = threading.Thread(target=vcpu)
        t.start()
        t.join()
        fd = os.open("/", os.O_RDONLY)  # the main thread still may
        os.close(fd)
        return out[0]

    assert _in_child(body) == errno.EPERM


def test_preload_imports_every_module_the_vmm_imports_lazily() -> None:
    """A confined VMM cannot read a module after pivot_root: every import inside a
    function of the packages a domain process runs must be done by preload()."""
    import ast
    import importlib.util
    import subprocess
    import sys
    from pathlib import Path

    root = Path(policy.__file__).resolve().parent.parent
    front_end_only = {"model/files.py", "model/options.py"}  # pyhv run's option and file parsing
    wanted: set[str] = set()
    for top in ("vmm", "vcpu", "devices", "backends", "kvm", "boot", "_sys", "model", "debug", "jail"):
        for path in (root / top).rglob("*.py"):
            if str(path.relative_to(root)) in front_end_only or path.name == "breakout.py":
                continue
            package = ".".join(("pyhv", *path.relative_to(root).parts[:-1]))  # what relative imports start from
            for fn in ast.walk(ast.parse(path.read_text())):
                if not isinstance(fn, (ast.FunctionDef, ast.AsyncFunctionDef)):
                    continue
                for node in ast.walk(fn):
                    if isinstance(node, ast.Import):
                        wanted.update(a.name for a in node.names)
                    elif isinstance(node, ast.ImportFrom):
                        name = "." * node.level + (node.module or "")
                        wanted.add(importlib.util.resolve_name(name, package) if node.level else name)
    wanted -= {"pyroute2", "pyhv.jail.breakout"}  # bridges are joined, a test's break-out imported, before
    code = ("import sys; from pyhv.jail import enter; enter.preload(); "
            f"print(sorted(m for m in {sorted(wanted)!r} if m not in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True,
                         env={"PYTHONPATH": str(root.parent)}).stdout
    assert out.strip() == "[]"
