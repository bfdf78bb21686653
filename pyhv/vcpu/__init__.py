"""vCPU threads: the run loop, its run-state machine and exit dispatch."""

from .state import Stop, StopKind
from .thread import VcpuThread

__all__ = ["Stop", "StopKind", "VcpuThread"]
