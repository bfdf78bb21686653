"""The one place ioctl failures become pyhv errors."""

from __future__ import annotations

from typing import Any

from .._sys.ioctl import ioctl, ioctl_ulong
from ..errors import KvmError


def call(fd: int, name: str, request: int, arg: Any = 0) -> int:
    """``ioctl(fd, request, arg)``; an OSError becomes KvmError(name)."""
    try:
        if isinstance(arg, int):
            if arg > 0x7FFF_FFFF:
                return ioctl_ulong(fd, request, arg)
            return ioctl(fd, request, arg)
        return ioctl(fd, request, arg, True)
    except OSError as e:
        raise KvmError(name, e) from None
