"""vhost-user back ends of pyhv's own: a process per device, ended with the machine.

Debian's QEMU 7.2 ships the two pyhv uses:

* virtiofsd (``/usr/lib/qemu/virtiofsd``, package qemu-system-common;
  ``PYHV_VIRTIOFSD`` names another) serves one host directory to a virtio-fs
  device (``fs = [{tag, path}]``).  Sandbox: ``-o sandbox=namespace``
  (virtiofsd's default, named here so a change of default cannot loosen it):
  virtiofsd enters new mount, PID and network namespaces and pivot_roots into
  the shared directory, so a FUSE request cannot reach a host file outside
  it, even through ``..`` or a symbolic link the guest plants.  That needs
  root (CAP_SYS_ADMIN), as pyhv itself does for /dev/kvm here; ``chroot`` is
  virtiofsd's weaker choice for containers and is not used.

* qemu-storage-daemon (package qemu-utils or qemu-system-common;
  ``PYHV_STORAGE_DAEMON``) serves a copy-on-write disk (``disks = [{path,
  base}]``) as a vhost-user-blk export: a qcow2 overlay at ``path`` over the
  raw image ``base``, which it opens read-only, so any number of machines
  share one base.  pyhv creates a missing overlay with ``qemu-img create -f
  qcow2 -F raw -b BASE`` (QEMU's own tool writes QEMU's format) and refuses an
  existing one whose backing file is not ``base``.

Each process runs in its own process group (a terminal's Ctrl-C reaches pyhv,
which ends it in order) but in pyhv's session: with the scheduler's
autogroups (``/proc/sys/kernel/sched_autogroup_enabled``) a session is one
group sharing CPU time with the others, and a back end in a session of its
own was measured 3-5 times slower under load (bench/fs.py) than one in the
VMM's, as QEMU runs it.  Each listens on a socket in a private directory
(mode 0700) that pyhv made; pyhv waits for the socket and connects as its only front end.
:meth:`Daemon.close` (the machine's close) ends the process, and if pyhv dies
first the back end sees its socket close and exits.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import tempfile
import time
from collections.abc import Callable

from ..errors import UsageError

VIRTIOFSD = ("PYHV_VIRTIOFSD", "/usr/lib/qemu/virtiofsd", "qemu-system-common")
STORAGE_DAEMON = ("PYHV_STORAGE_DAEMON", "/usr/bin/qemu-storage-daemon", "qemu-utils")
QEMU_IMG = ("PYHV_QEMU_IMG", "/usr/bin/qemu-img", "qemu-utils")
#: how long a back end gets to create its socket
START_TIMEOUT = 10.0


def _program(which: tuple[str, str, str], key: str) -> str:
    variable, default, package = which
    program = os.environ.get(variable) or default
    if not os.access(program, os.X_OK):
        raise UsageError(f"{key}: {program} is not there (apt-get install {package}, or set {variable})")
    return program


def _qemu_value(text: str) -> str:
    """A value inside a QEMU option string: commas are doubled."""
    return text.replace(",", ",,")


class Daemon:
    """A running back end; :attr:`socket` is where its vhost-user socket listens.
    ``argv(socket)`` is its command line."""

    def __init__(self, argv: Callable[[str], list[str]], key: str, what: str) -> None:
        self._dir = tempfile.mkdtemp(prefix="pyhv-vhost-user-")  # 0700: no one else reaches the socket
        self.socket = os.path.join(self._dir, "vhost-user.sock")
        command = argv(self.socket)
        try:
            self.process = subprocess.Popen(command, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                                            process_group=0)
        except OSError as e:
            shutil.rmtree(self._dir, ignore_errors=True)
            raise UsageError(f"{key}: cannot start {command[0]}: {e.strerror}") from None
        deadline = time.monotonic() + START_TIMEOUT
        while not os.path.exists(self.socket):
            status = self.process.poll()
            if status is not None or time.monotonic() > deadline:
                self.close()
                why = f"exited with status {status}" if status is not None else "did not create its socket"
                raise UsageError(f"{key}: {what} {why}")
            time.sleep(0.005)

    def close(self) -> None:
        if self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(5)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        shutil.rmtree(self._dir, ignore_errors=True)


def virtiofsd(directory: str, key: str) -> Daemon:
    """virtiofsd serving ``directory`` (``key`` names it in errors)."""
    if not os.path.isdir(directory):
        raise UsageError(f"{key} {directory}: not a directory")
    program = _program(VIRTIOFSD, key)
    return Daemon(lambda socket: [program, f"--socket-path={socket}", "-o", f"source={directory}",
                                  "-o", "sandbox=namespace", "-o", "cache=auto", "-o", "log_level=err"],
                  key, f"virtiofsd on {directory}")


def storage_daemon(overlay: str, base: str, readonly: bool, direct: bool, key: str) -> Daemon:
    """qemu-storage-daemon exporting the qcow2 ``overlay`` over raw ``base`` as vhost-user-blk."""
    if not os.path.isfile(base):
        raise UsageError(f"{key}.base {base}: not a regular file")
    base = os.path.abspath(base)
    program = _program(STORAGE_DAEMON, key)
    if not os.path.lexists(overlay):
        _create_overlay(overlay, base, key)
    else:
        _check_overlay(overlay, base, key)
    cache = ",cache.direct=on" if direct else ""
    writable = "off" if readonly else "on"
    return Daemon(lambda socket: [
        program,
        "--blockdev", f"driver=file,node-name=base-file,filename={_qemu_value(base)},read-only=on",
        "--blockdev", "driver=raw,node-name=base,file=base-file,read-only=on",
        "--blockdev", f"driver=file,node-name=overlay-file,filename={_qemu_value(overlay)}{cache}"
                      f",read-only={'on' if readonly else 'off'}",
        "--blockdev", f"driver=qcow2,node-name=disk,file=overlay-file,backing=base,read-only={'on' if readonly else 'off'}",
        "--export", f"type=vhost-user-blk,id=disk,node-name=disk,addr.type=unix,addr.path={_qemu_value(socket)}"
                    f",writable={writable}",
    ], key, f"qemu-storage-daemon on {overlay}")


def _create_overlay(overlay: str, base: str, key: str) -> None:
    qemu_img = _program(QEMU_IMG, key)
    done = subprocess.run([qemu_img, "create", "-q", "-f", "qcow2", "-F", "raw", "-b", base, overlay],
                          capture_output=True, text=True, check=False)
    if done.returncode:
        lines = (done.stderr.strip() or f"status {done.returncode}").splitlines()
        raise UsageError(f"{key}.path {overlay}: cannot create the overlay: {lines[-1]}")


def _check_overlay(overlay: str, base: str, key: str) -> None:
    """An existing overlay must be qcow2 with ``base`` as its backing file."""
    qemu_img = _program(QEMU_IMG, key)
    done = subprocess.run([qemu_img, "info", "--output=json", "-U", overlay], capture_output=True, text=True,
                          check=False)
    try:
        info = json.loads(done.stdout) if done.returncode == 0 else {}
    except ValueError:
        info = {}
    if info.get("format") != "qcow2":
        raise UsageError(f"{key}.path {overlay}: not a qcow2 image")
    backing = info.get("full-backing-filename") or info.get("backing-filename") or ""
    if os.path.abspath(os.path.join(os.path.dirname(overlay), backing)) != base:
        raise UsageError(f"{key}.path {overlay}: its backing file is {backing or 'none'}, not {base}")
