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
