"""A virtiofsd of pyhv's own, serving one host directory to one virtio-fs device.

Debian's QEMU 7.2 ships a C virtiofsd (``/usr/lib/qemu/virtiofsd``, package
qemu-system-common; ``PYHV_VIRTIOFSD`` names another).  pyhv starts it with the
directory as ``-o source=DIR`` and a vhost-user socket in a private directory
(mode 0700) of its own, waits for the socket, and connects as its only front
end.  The process is pyhv's: :meth:`Virtiofsd.close` (the machine's close)
ends it, and if pyhv dies first, virtiofsd sees its socket close and exits.

Sandbox: ``-o sandbox=namespace`` (virtiofsd's default, named here so a
change of default cannot loosen it): virtiofsd enters new mount, PID and
network namespaces and pivot_roots into the shared directory, so a FUSE
request cannot reach a host file outside it, even through ``..`` or a
symbolic link the guest plants.  That needs root (CAP_SYS_ADMIN), as pyhv
itself does for /dev/kvm here; ``chroot`` is virtiofsd's weaker choice for
containers and is not used.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import tempfile
import time

from ..errors import UsageError

DEFAULT = "/usr/lib/qemu/virtiofsd"
#: how long virtiofsd gets to create its socket
START_TIMEOUT = 10.0


def executable() -> str:
    return os.environ.get("PYHV_VIRTIOFSD") or DEFAULT


class Virtiofsd:
    """A running virtiofsd; :attr:`socket` is where its vhost-user socket listens."""

    def __init__(self, directory: str, key: str) -> None:
        if not os.path.isdir(directory):
            raise UsageError(f"{key} {directory}: not a directory")
        program = executable()
        if not os.access(program, os.X_OK):
            raise UsageError(f"{key}: {program} is not there (apt-get install qemu-system-common, or set PYHV_VIRTIOFSD)")
        self._dir = tempfile.mkdtemp(prefix="pyhv-virtiofsd-")  # 0700: no one else reaches the socket
        self.socket = os.path.join(self._dir, "vhost-user.sock")
        try:
            self.process = subprocess.Popen(
                [program, f"--socket-path={self.socket}", "-o", f"source={directory}", "-o", "sandbox=namespace",
                 "-o", "cache=auto", "-o", "log_level=err"],
                stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=None, start_new_session=True,
            )
        except OSError as e:
            shutil.rmtree(self._dir, ignore_errors=True)
            raise UsageError(f"{key}: cannot start {program}: {e.strerror}") from None
        deadline = time.monotonic() + START_TIMEOUT
        while not os.path.exists(self.socket):
            status = self.process.poll()
            if status is not None or time.monotonic() > deadline:
                self.close()
                why = f"exited with status {status}" if status is not None else "did not create its socket"
                raise UsageError(f"{key} {directory}: virtiofsd {why}")
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
