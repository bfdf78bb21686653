"""pyhvd's domains on disk: the one place that knows the directory layout.

Every domain lives in ``RUN_DIR/domains/ID/``: ``domain.json`` (what pyhvd
asked for: the description's plain form, and how to start it), ``pid`` (the
VMM process and its start time, so a recycled pid is never mistaken for it),
the domain's sockets, ``status.json`` once it ended and ``crashed.json`` when
it is kept after a crash.  Its logs go to ``STATE_DIR/domains/NAME/`` and
outlive it.  ``STATE_DIR/next-domid`` keeps ids from being reused across
pyhvd restarts.  None of these is ever opened through a symbolic link
(:mod:`pyhv._sys.files`): one planted under such a name is refused or
replaced, never followed.
"""

from __future__ import annotations

import json
import os
import shutil
import time
from collections.abc import Iterable
from typing import Any

from .._sys import files
from .._sys.files import NotFollowed

META = "domain.json"


class DomainStore:
    def __init__(self, run_dir: str, state_dir: str) -> None:
        self.run_dir = run_dir
        self.state_dir = state_dir
        self.domains_dir = os.path.join(run_dir, "domains")
        for d in (run_dir, self.domains_dir, state_dir):
            os.makedirs(d, mode=0o700, exist_ok=True)
            os.chmod(d, 0o700)

    # --- ids and places ------------------------------------------------------------------

    def next_id(self, in_use: Iterable[int]) -> int:
        """A domain id never used before, across pyhvd restarts too (raises OSError)."""
        path = os.path.join(self.state_dir, "next-domid")
        try:
            domid = int(files.read_file(path, 64))
        except (OSError, ValueError):
            domid = 1
        domid = max([domid, *[d + 1 for d in in_use]])
        replace_file(path, f"{domid + 1}\n")
        return domid

    def run_dir_of(self, domid: int) -> str:
        return os.path.join(self.domains_dir, str(domid))

    def log_dir_of(self, name: str) -> str:
        return os.path.join(self.state_dir, "domains", name)

    def make_run_dir(self, domid: int) -> str:
        path = self.run_dir_of(domid)
        os.makedirs(path, mode=0o700)
        return path

    def make_log_dir(self, name: str) -> str:
        """The domain's log directory (made if need be); NotFollowed if it is a symbolic link."""
        path = self.log_dir_of(name)
        os.makedirs(path, mode=0o700, exist_ok=True)
        if os.path.islink(path):
            raise NotFollowed(path)
        return path

    def entries(self) -> list[tuple[int | None, str]]:
        """Every directory under RUN_DIR/domains, by id (None: not a domain's), in id order."""
        names = sorted(os.listdir(self.domains_dir), key=lambda e: (len(e), e))
        return [(int(e) if e.isdigit() else None, os.path.join(self.domains_dir, e)) for e in names]

    # --- a domain's files ----------------------------------------------------------------------

    def read_meta(self, run_dir: str) -> dict[str, Any] | None:
        return read_json(os.path.join(run_dir, META))

    def write_meta(self, run_dir: str, meta: dict[str, Any]) -> None:
        write_json(os.path.join(run_dir, META), meta)

    def update_meta(self, run_dir: str, changes: dict[str, Any]) -> None:
        meta = self.read_meta(run_dir)
        if meta is not None:
            self.write_meta(run_dir, {**meta, **changes})

    def write_pid(self, run_dir: str, pid: int, start_time: str) -> None:
        replace_file(os.path.join(run_dir, "pid"), f"{pid} {start_time}\n")

    def read_pid(self, run_dir: str) -> tuple[int, str]:
        """(pid, start time), or (0, "") if there is none."""
        try:
            pid_text, start_time = files.read_file(os.path.join(run_dir, "pid"), 256).decode().split()
            return int(pid_text), start_time
        except (OSError, ValueError):
            return 0, ""

    def read_status(self, run_dir: str) -> dict[str, Any] | None:
        """How the domain process said it ended (None: it ended without saying: killed)."""
        return read_json(os.path.join(run_dir, "status.json"))

    def write_crashed(self, run_dir: str, why: str) -> None:
        write_json(os.path.join(run_dir, "crashed.json"), {"why": why, "time": time.time()})

    def read_crashed(self, run_dir: str) -> str | None:
        crashed = read_json(os.path.join(run_dir, "crashed.json"))
        return None if crashed is None else str(crashed.get("why", "crashed"))

    def remove_run_dir(self, run_dir: str) -> None:
        shutil.rmtree(run_dir, ignore_errors=True)

    def remove_unused_log_dir(self, log_dir: str) -> None:
        """Remove a domain's log directory that a refused create made, if nothing
        in it was written (a failed start's vmm.log says why, and stays)."""
        try:
            entries = [os.path.join(log_dir, e) for e in os.listdir(log_dir)]
            if not all(os.path.isfile(e) and not os.path.islink(e) and os.path.getsize(e) == 0 for e in entries):
                return
            for e in entries:
                os.unlink(e)
            os.rmdir(log_dir)
        except OSError:
            pass


def read_json(path: str) -> dict[str, Any] | None:
    """The object in ``path``; None if there is none (or it is a symbolic link, or not JSON)."""
    try:
        value = json.loads(files.read_file(path, 16 << 20))
    except (OSError, ValueError, RecursionError):
        return None
    return value if isinstance(value, dict) else None


def write_json(path: str, value: dict[str, Any]) -> None:
    replace_file(path, json.dumps(value))


def replace_file(path: str, text: str) -> None:
    """Write ``path`` whole or not at all (a new temporary file renamed over it)."""
    files.replace_file(path, text.encode())
