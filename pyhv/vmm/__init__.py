"""The machine: the builder that wires it, its lifecycle, snapshots and migration."""

from .builder import build, restore
from .machine import Machine

__all__ = ["Machine", "build", "restore"]
