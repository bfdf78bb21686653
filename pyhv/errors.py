"""pyhv's error hierarchy.

Every failure that reaches a user is a :class:`PyhvError`.  Lower layers convert
what they see (``OSError`` from an ioctl, a malformed image) at their boundary,
so the CLI can print one line and exit with the error's status without a
traceback.
"""

from __future__ import annotations


class PyhvError(Exception):
    """Base of every error pyhv reports to a user."""

    #: process exit status the CLI uses for this error
    exit_status = 1


class UsageError(PyhvError):
    """Bad command line or configuration value."""

    exit_status = 2


class ImageError(PyhvError):
    """A kernel, initrd or other image is unusable (missing, truncated, wrong format, too big)."""

    exit_status = 2

    def __init__(self, path: str, problem: str) -> None:
        super().__init__(f"{path}: {problem}")
        self.path = path
        self.problem = problem


class KvmError(PyhvError):
    """An ioctl on /dev/kvm, a VM or a vCPU failed."""

    def __init__(self, ioctl: str, err: OSError) -> None:
        detail = err.strerror or str(err)
        super().__init__(f"{ioctl} failed: {detail} (errno {err.errno})")
        self.ioctl = ioctl
        self.errno = err.errno


class MemoryAccessError(PyhvError):
    """A guest-physical access fell outside guest RAM."""

