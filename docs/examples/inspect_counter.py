#!/usr/bin/env python3
"""Pause the probe's ``counter`` workload, look at its registers and read its counter
through the guest's own page tables.

    PYTHONPATH=. python3 docs/examples/inspect_counter.py [guests/build/probe.elf]
"""

from __future__ import annotations

import os
import sys
import tempfile
import time

from pyhv.model import describe
from pyhv.vmm import build

COUNTER_VA = 0x1FF000  # where the workload counts (identity mapped)


def main(argv: list[str]) -> int:
    kernel = argv[1] if len(argv) > 1 else "guests/build/probe.elf"
    with tempfile.TemporaryDirectory() as tmp:
        console = os.path.join(tmp, "console")
        machine = build(describe(kernel=kernel, cmdline="probe.test=counter", serial=f"file:{console}"))
        try:
            machine.start()
            while "addr=" not in open(console).read():
                time.sleep(0.01)
            time.sleep(0.1)
            machine.pause()
            regs = machine.vcpus[0].registers()
            gpa = machine.memory.translate(regs.cr3, COUNTER_VA, regs.la57)
            first = int.from_bytes(machine.memory.read_virtual(regs.cr3, COUNTER_VA, 8, regs.la57), "little")
            machine.resume()
            time.sleep(0.1)
            machine.pause()
            second = int.from_bytes(machine.memory.read_virtual(regs.cr3, COUNTER_VA, 8, regs.la57), "little")
        finally:
            machine.close()
    print(f"rip={regs.rip:#x} cpl={regs.cpl} cr3={regs.cr3:#x} paging={regs.paging} la57={regs.la57}")
    print(f"counter at virtual {COUNTER_VA:#x} = physical {gpa:#x}: {first} then {second}")
    return 0 if second > first else 1


if __name__ == "__main__":
    sys.exit(main(sys.argv))
