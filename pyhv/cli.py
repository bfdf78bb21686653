"""The ``pyhv`` command.

Exit status: what the guest asked for (debug-exit value; 0 for power-off), 1
when the guest crashed or an operation failed, 2 for bad usage or bad input
(configuration, kernel or disk images), 128+N when stopped by signal N.
"""

from __future__ import annotations

import argparse
import signal
import sys
from typing import Sequence

from .errors import PyhvError, UsageError


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> None:  # type: ignore[override]
        raise UsageError(message)


def _parser() -> argparse.ArgumentParser:
    p = _Parser(prog="pyhv", description="pyhv: a virtual machine monitor on Linux KVM")
    sub = p.add_subparsers(dest="command", metavar="COMMAND", parser_class=_Parser)
    sub.required = True
    run = sub.add_parser("run", help="boot one VM in the foreground")
    run.add_argument("--kernel", required=True, help="bzImage, ELF (vmlinux, PVH) or Multiboot kernel")
    run.add_argument("--initrd", help="initial ramdisk")
    run.add_argument("--cmdline", default="", help="kernel command line")
    run.add_argument("--memory", default="256M", help="guest memory (default 256M)")
    run.add_argument("--vcpus", default="1", help="number of virtual CPUs (default 1)")
    run.add_argument("--debug-exit", action="store_true", help="isa-debug-exit port at 0xf4: the guest's value becomes pyhv's exit status")
    run.add_argument("--serial", default="stdio", help="COM1: stdio (default), file:PATH or none")
    run.add_argument("--boot", default="auto", choices=("auto", "linux", "pvh", "multiboot"), help="boot protocol (default: from the image)")
    run.add_argument("--on-reboot", default="destroy", choices=("destroy", "restart"), help="what a guest reboot does")
    run.add_argument("--progress", action="store_true", help="print port 0x80 progress codes with times at exit")
    return p


def _run(args: argparse.Namespace) -> int:
    from .memory import MiB
    from .vcpu import StopKind
    from .vmm import MachineConfig, build
    from .vmm.config import parse_size

    try:
        vcpus = int(args.vcpus)
    except ValueError:
        raise UsageError(f"--vcpus {args.vcpus!r}: expected a number") from None
    config = MachineConfig(
        kernel=args.kernel,
        initrd=args.initrd,
        cmdline=args.cmdline,
        memory=parse_size(args.memory, "--memory"),
        vcpus=vcpus,
        debug_exit=args.debug_exit,
        serial=args.serial,
        boot=args.boot,
        on_reboot=args.on_reboot,
    )
    del MiB
    while True:
        machine = build(config)
        caught: list[int] = []

        def on_signal(signum: int, frame: object) -> None:
            caught.append(signum)
            from .vcpu import Stop

            machine.request_stop(Stop(StopKind.HOST, 128 + signum, f"stopped by {signal.Signals(signum).name}"))

        old = {s: signal.signal(s, on_signal) for s in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP)}
        try:
            machine.start()
            stop = None
            while stop is None:
                stop = machine.wait(0.5)
        finally:
            machine.close()
            for s, handler in old.items():
                signal.signal(s, handler)
        if args.progress:
            for t_ns, code in machine.progress.records:
                print(f"pyhv: progress {code:#04x} at {t_ns / 1e6:.3f} ms", file=sys.stderr)
        if stop.kind is StopKind.RESET and config.on_reboot == "restart":
            continue
        if stop.kind in (StopKind.CRASH, StopKind.ERROR):
            print(f"pyhv: {stop.detail}", file=sys.stderr)
        elif stop.kind is StopKind.HOST and caught:
            print(f"pyhv: {stop.detail}", file=sys.stderr)
        elif stop.kind is StopKind.RESET:
            print("pyhv: guest rebooted (on_reboot=destroy)", file=sys.stderr)
        return stop.status


def main(argv: Sequence[str] | None = None) -> int:
    try:
        args = _parser().parse_args(argv)
        if args.command == "run":
            return _run(args)
        raise UsageError(f"unknown command {args.command}")
    except PyhvError as e:
        print(f"pyhv: {e}", file=sys.stderr)
        return e.exit_status
    except KeyboardInterrupt:
        return 130
