"""Domain processes: starting one, hearing that it runs, noticing that it ended.

A domain process is ``python -S -m pyhv domain RUN_DIR`` in its own session
(so it outlives pyhvd), with stdin closed and its output in the domain's
``vmm.log``.  It tells pyhvd once, on a socketpair named by ``PYHV_READY_FD``,
that its guest runs or why it could not start (:mod:`pyhv.toolstack.domain`);
a domain arriving by live migration first asks, on the same channel, to be
admitted.  :class:`Monitor` waits on every process's pidfd in one thread and
hands each exit to a short-lived thread of its own, so a restart never holds
up the others.
"""

from __future__ import annotations

import os
import select
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Sequence
from typing import Any

from .._sys.files import open_nofollow
from ..vmm import control
from .record import DomainRecord

#: how long a new domain may take to boot its machine
START_TIMEOUT = 60.0
_PACKAGE_PARENT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def spawn(run_dir: str, log_dir: str, pass_fds: Sequence[int], env: dict[str, str]) -> tuple[subprocess.Popen[bytes], socket.socket]:
    """Start a domain process for ``run_dir``; returns it and pyhvd's end of its
    readiness channel.  Raises OSError."""
    # never through a symbolic link planted in the log directory (NotFollowed)
    out = open_nofollow(os.path.join(log_dir, "vmm.log"), os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o640)
    ours, theirs = socket.socketpair()
    env = dict(os.environ, **env, PYHV_READY_FD=str(theirs.fileno()), PYTHONPATH=_PACKAGE_PARENT)
    try:
        popen = subprocess.Popen(
            [sys.executable, "-S", "-m", "pyhv", "domain", run_dir],
            stdin=subprocess.DEVNULL, stdout=out, stderr=subprocess.STDOUT,
            start_new_session=True, pass_fds=(theirs.fileno(), *pass_fds), env=env, cwd="/",
        )
    except BaseException:
        ours.close()
        raise
    finally:
        theirs.close()
        os.close(out)
    return popen, ours


def read_ready(fd: int, timeout: float) -> dict[str, Any]:
    """The domain process's next word on the readiness channel, as a reply."""
    reply = control.read_message(fd, timeout)
    if reply == "timeout":
        return {"ok": False, "error": f"the domain did not start within {timeout:g} s"}
    if reply == "closed":
        return {"ok": False, "error": "the domain process ended while starting (see its vmm.log)"}
    if isinstance(reply, str):
        return {"ok": False, "error": "garbled start-up message"}
    return reply


def start_time(pid: int) -> str:
    """The process's start time (field 22 of /proc/PID/stat); "" if it is gone or a zombie."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            fields = f.read().rsplit(")", 1)[1].split()
    except (OSError, IndexError):
        return ""
    return fields[19] if len(fields) > 19 and fields[0] != "Z" else ""


def host_threads(pid: int, inner_pid: int, tids: list[int]) -> tuple[int, list[int]]:
    """The process and thread ids the host knows a domain's VMM and its threads by
    (``pid``: the process pyhvd started; ``inner_pid`` and ``tids``: as the VMM
    names itself and its threads in its ``info`` answer).

    An unconfined VMM's ids are the host's already (it names itself ``pid``).  A
    confined domain's VMM (pyhv/jail/) is the one child of the process pyhvd
    started, pid 1 of a PID namespace of its own; each of its threads' ``NSpid``
    line says both ids (the host's first, the namespace's last).  A thread that
    cannot be found (it ended while we looked) is 0, never the namespace's id:
    that number names some other task on the host, and the BVT dispatcher must
    never pin or re-class it."""
    if inner_pid == pid:
        return pid, tids
    unknown = [0] * len(tids)
    try:
        with open(f"/proc/{pid}/task/{pid}/children") as f:
            children = f.read().split()
    except OSError:
        return pid, unknown
    if len(children) != 1:
        return pid, unknown
    vmm = int(children[0])
    ids: dict[int, int] = {}
    try:
        tasks = os.listdir(f"/proc/{vmm}/task")
    except OSError:
        return pid, unknown
    for task in tasks:
        try:  # a thread may end while we read (the control thread answering info, for one)
            with open(f"/proc/{vmm}/task/{task}/status") as f:
                for line in f:
                    if line.startswith("NSpid:"):
                        host, *_, inner = (int(x) for x in line.split()[1:])
                        ids[inner] = host
        except (OSError, ValueError):
            continue
    return vmm, [ids.get(t, 0) for t in tids]


def is_alive(record: DomainRecord) -> bool:
    """Whether the record's process still runs (never fooled by a recycled pid)."""
    return bool(record.pid) and start_time(record.pid) == record.start_time


def kill(record: DomainRecord) -> None:
    if is_alive(record):
        try:
            os.kill(record.pid, 9)
        except ProcessLookupError:
            pass


def wait_gone(record: DomainRecord, timeout: float) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if record.popen is not None:
            if record.popen.poll() is not None:
                return True
        elif start_time(record.pid) != record.start_time:
            return True
        time.sleep(0.02)
    return False


class Monitor:
    """Calls ``on_exit(record)`` (on a thread of its own) when a watched process ends."""

    def __init__(self, on_exit: Callable[[DomainRecord], None]) -> None:
        self._on_exit = on_exit
        self._epoll = select.epoll()
        self._by_fd: dict[int, DomainRecord] = {}
        self._lock = threading.Lock()
        self._closed = False
        self._thread = threading.Thread(target=self._watch, name="monitor", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def watch(self, record: DomainRecord) -> None:
        try:
            fd = os.pidfd_open(record.pid)
        except OSError:  # already gone
            self._ended(record)
            return
        with self._lock:
            record.pidfd = fd
            self._by_fd[fd] = record
            self._epoll.register(fd, select.EPOLLIN)

    def forget(self, record: DomainRecord) -> None:
        with self._lock:
            if record.pidfd < 0:
                return
            self._by_fd.pop(record.pidfd, None)
            try:
                self._epoll.unregister(record.pidfd)
            except OSError:
                pass
            os.close(record.pidfd)
            record.pidfd = -1

    def _watch(self) -> None:
        while not self._closed:
            try:
                events = self._epoll.poll(0.5)
            except OSError:
                return
            for fd, _ in events:
                with self._lock:
                    record = self._by_fd.get(fd)
                if record is not None:
                    self.forget(record)
                    self._ended(record)

    def _ended(self, record: DomainRecord) -> None:
        # exits are handled off this thread: a restart must not block the others
        threading.Thread(target=self._on_exit, args=(record,), name="reap", daemon=True).start()

    def close(self) -> None:
        self._closed = True
        if self._thread.is_alive():
            self._thread.join(1.0)
        self._epoll.close()
