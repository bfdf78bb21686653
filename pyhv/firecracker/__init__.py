"""pyhv as a Firecracker replacement: Firecracker's command line and REST API,
translated into pyhv's machine description and run by pyhv's VMM runtime.

- :mod:`.config`: the pre-boot configuration in Firecracker's shape, each
  resource checked, and its one translation into :mod:`pyhv.model`'s plain form;
- :mod:`.vmm`: the microVM behind the API (pre-boot requests, InstanceStart,
  then the runtime's control requests);
- :mod:`.server`: HTTP/1.1 on the API's unix socket;
- :mod:`.command`: the ``firecracker`` / ``pyhv-firecracker`` command;
- :mod:`.log`: the log, as Firecracker's is configured.

This package is a front end only: every lifecycle decision is
:class:`pyhv.vmm.runtime.Runtime`'s.
"""

from .command import main, shim_main

__all__ = ["main", "shim_main"]
