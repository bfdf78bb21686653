#!/usr/bin/env python3
"""Boot the probe guest through pyhv's Python API and count its port writes by port.

    PYTHONPATH=. python3 docs/examples/count_ports.py [guests/build/probe.elf] [N]

The probe's ``pio`` workload writes N bytes to port 0xb00; its console lines go
to COM1 (0x3f8..0x3ff) and it ends by writing to the debug-exit port (0xf4).
Nothing in pyhv changes: an IoTrace hook sees each access.
"""

from __future__ import annotations

import collections
import os
import sys
import tempfile
import threading

from pyhv.debug.trace import Access, IoTrace
from pyhv.model import describe
from pyhv.vmm import build


def main(argv: list[str]) -> int:
    kernel = argv[1] if len(argv) > 1 else "guests/build/probe.elf"
    n = int(argv[2]) if len(argv) > 2 else 1000
    writes: collections.Counter[int] = collections.Counter()
    names: dict[int, str] = {}
    lock = threading.Lock()  # hooks run on the vCPU threads

    def on_port(access: Access) -> None:
        if access.is_write:
            with lock:
                writes[access.addr] += 1
                names[access.addr] = access.device

    with tempfile.TemporaryDirectory() as tmp:
        console = os.path.join(tmp, "console")
        machine = build(describe(kernel=kernel, cmdline=f"probe.test=pio probe.n={n}",
                                 serial=f"file:{console}", debug_exit=True))
        try:
            with IoTrace(machine, on_port=on_port):
                machine.start()
                stop = machine.wait(60)
        finally:
            machine.close()
        with open(console) as f:
            result = [line for line in f if "result=" in line]
    print(f"guest: {result[-1].strip() if result else '(no result line)'}; stop: {stop}")
    for port, count in sorted(writes.items()):
        print(f"port {port:#06x} {names[port] or '(unclaimed)':>16}: {count} writes")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
