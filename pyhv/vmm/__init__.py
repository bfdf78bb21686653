"""The machine: its configuration, the builder that wires it, its lifecycle."""

from .builder import build
from .config import MachineConfig
from .machine import Machine

__all__ = ["Machine", "MachineConfig", "build"]
