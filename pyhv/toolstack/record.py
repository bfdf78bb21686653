"""What pyhvd knows of one domain: its description, where it lives, its process."""

from __future__ import annotations

import os
import subprocess
import time
from typing import Any

from ..errors import PyhvError
from ..model import Description
from ..vmm import control

#: how long a request to one domain may take
CALL_TIMEOUT = 5.0


class Refused(PyhvError):
    """A request pyhvd understood but cannot carry out (the HTTP status says why)."""

    def __init__(self, message: str, http_status: int = 409) -> None:
        super().__init__(message)
        self.http_status = http_status


class DomainRecord:
    def __init__(self, domid: int, description: Description | None, run_dir: str, log_dir: str) -> None:
        self.id = domid
        #: the domain as pyhvd admitted it (None only while a migration is arriving)
        self.description = description
        self.run_dir = run_dir
        self.log_dir = log_dir
        self.pid = 0
        self.start_time = ""  # of the process, from /proc: a recycled pid never matches
        self.pidfd = -1
        self.popen: subprocess.Popen[bytes] | None = None
        self.crashed: str | None = None  # why, when the VMM process died and on_crash=preserve
        self.destroying = False
        self.reaped = False
        self.created = time.time()

    @property
    def name(self) -> str:
        return self.description.name if self.description is not None else ""

    @property
    def control_path(self) -> str:
        return os.path.join(self.run_dir, "control.sock")

    @property
    def console_path(self) -> str:
        return os.path.join(self.run_dir, "console.sock")

    @property
    def console_log(self) -> str:
        return os.path.join(self.log_dir, "console.log")

    def call(self, op: str, timeout: float = CALL_TIMEOUT, fds: tuple[int, ...] = (), **args: Any) -> dict[str, Any]:
        """One request to the domain process (:mod:`pyhv.vmm.runtime` answers it), ``fds`` passed with it."""
        if self.crashed is not None:
            raise Refused(f"domain {self.name} has crashed ({self.crashed}); destroy it")
        try:
            reply = control.call(self.control_path, {"op": op, **args}, timeout, fds)
        except control.ControlError as e:
            if e.transport:
                raise Refused(f"domain {self.name}: {e}", 504 if e.timeout else 409) from None
            raise Refused(str(e), 409) from None
        if op == "info" and self.pid:  # the ids the host knows the VMM and its vCPU threads by
            from .processes import host_threads

            vcpus = reply.get("vcpu", [])
            inner = reply.get("pid")
            reply["pid"], tids = host_threads(self.pid, inner if isinstance(inner, int) else 0,
                                              [v.get("tid", 0) for v in vcpus])
            for v, tid in zip(vcpus, tids, strict=True):
                v["tid"] = tid
        return reply

    def summary(self, info: dict[str, Any] | None) -> dict[str, Any]:
        """What ``list`` shows; ``info`` is the domain's own answer (None: it did not answer)."""
        d = self.description
        assert d is not None
        out = {
            "id": self.id, "name": self.name, "pid": self.pid,
            "memory": d.memory, "maxmem": d.maxmem, "vcpus": d.vcpus,
            "state": "crashed" if self.crashed else "unknown", "cpu_time": 0.0, "created": self.created,
        }
        if info is not None:
            out.update(
                state=info["state"], memory=info["current_memory"], maxmem=info["maxmem"],
                vcpus=info["vcpus"], cpu_time=info["cpu_time"],
            )
        return out
