"""Files in pyhvd's run and state directories, never opened through a symbolic link.

Root processes open what lives in ``RUN_DIR/domains/ID/`` and
``STATE_DIR/domains/NAME/`` (domain.json, pid, status.json, crashed.json,
console.log, vmm.log).  A symbolic link planted under one of those names
(``console.log -> /etc/passwd``) must never be followed: every open here is
``O_NOFOLLOW | O_CLOEXEC`` (O_NOFOLLOW covers the last component; the
directories are pyhvd's own, 0700, and checked when made).  A file replaced
whole is written to a temporary of a fresh random name, created
``O_EXCL | O_NOFOLLOW`` in the same directory, and renamed over the name:
rename(2) replaces a symbolic link itself, never what it points to, and no
fixed temporary name (``status.json.tmp``) is ever opened, so none planted
there can be followed either.
"""

from __future__ import annotations

import errno
import os


class NotFollowed(OSError):
    """``path`` is a symbolic link, which is not followed."""

    def __init__(self, path: str) -> None:
        super().__init__(errno.ELOOP, "is a symbolic link (not followed)", path)

    def __str__(self) -> str:
        return f"{self.filename}: {self.strerror}"


def open_nofollow(path: str, flags: int, mode: int = 0o600) -> int:
    """``os.open`` that refuses a symbolic link at ``path`` (NotFollowed, an OSError)."""
    try:
        return os.open(path, flags | os.O_NOFOLLOW | os.O_CLOEXEC, mode)
    except OSError as e:
        if e.errno == errno.ELOOP:
            raise NotFollowed(path) from None
        raise


def read_file(path: str, limit: int = 1 << 20) -> bytes:
    """At most ``limit`` bytes of ``path``; OSError (NotFollowed for a symbolic link)."""
    fd = open_nofollow(path, os.O_RDONLY)
    try:
        chunks, left = [], limit
        while left > 0:
            chunk = os.read(fd, min(left, 1 << 16))
            if not chunk:
                break
            chunks.append(chunk)
            left -= len(chunk)
        return b"".join(chunks)
    finally:
        os.close(fd)


def replace_file(path: str, data: bytes, mode: int = 0o600) -> None:
    """Write ``path`` whole or not at all: a new temporary beside it, renamed over it."""
    directory, name = os.path.split(path)
    tmp = os.path.join(directory, f".{name}.{os.urandom(6).hex()}.tmp")
    fd = open_nofollow(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, mode)
    try:
        try:
            view = memoryview(data)
            while view:
                view = view[os.write(fd, view):]
        finally:
            os.close(fd)
        os.replace(tmp, path)
    except BaseException:
        try:
            os.unlink(tmp)
        except OSError:
            pass
        raise


# --- descriptors handed over to a confined process -----------------------------------
#
# A confined domain process (pyhv/jail/) sees none of the host's files: before
# it is confined, whoever starts it opens the images the description names
# (kernel, initrd, disks, fw_cfg files) and the unix sockets it listens on,
# and records each descriptor here under the name it was opened by.  The
# builder keeps asking for names; :func:`open_handed` answers with a fresh
# duplicate (so every machine of a restarting domain gets its own, and closes
# it) and only opens the name itself when nothing was handed over.

#: (path, O_DIRECT?) -> descriptor opened before the process was confined
HANDED: dict[tuple[str, bool], int] = {}


def open_handed(path: str, flags: int, mode: int = 0o666) -> int:
    """A descriptor for ``path``: a duplicate of the one handed over (read from its
    start), else ``os.open(path, flags, mode)``.  Raises OSError."""
    fd = HANDED.get((path, bool(flags & os.O_DIRECT)))
    if fd is None:
        return os.open(path, flags, mode)
    new = os.dup(fd)
    try:
        os.lseek(new, 0, os.SEEK_SET)
    except OSError:
        pass  # a socket: no position
    return new


def handed(path: str) -> int | None:
    """A duplicate of the descriptor handed over for ``path`` (a socket), or None."""
    fd = HANDED.get((path, False))
    return None if fd is None else os.dup(fd)
