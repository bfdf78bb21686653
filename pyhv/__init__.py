"""pyhv: a virtual machine monitor and toolstack on Linux KVM."""

__version__ = "0.1.0"
