"""The ``pyhv`` command.

Exit status: what the guest asked for (debug-exit value; 0 for power-off), 1
when the guest crashed or an operation failed, 2 for bad usage or bad input
(configuration, kernel or disk images), 128+N when stopped by signal N.
"""

from __future__ import annotations

import signal
import sys
from collections.abc import Sequence
from types import SimpleNamespace
from typing import TYPE_CHECKING, Any

from .errors import PyhvError, UsageError

if TYPE_CHECKING:
    from .backends.console import Console
    from .vmm import MachineConfig


class Option:
    """One ``--name [VALUE]`` option of a command."""

    def __init__(
        self, name: str, help: str, metavar: str = "", default: object = None,
        choices: tuple[str, ...] = (), required: bool = False, repeat: bool = False,
    ) -> None:
        self.name = name
        self.help = help
        self.metavar = metavar  # empty: a flag without a value
        self.default = False if not metavar else default
        self.choices = choices
        self.required = required
        self.repeat = repeat  # may be given several times: a list of values
        if repeat:
            self.default = []

    @property
    def dest(self) -> str:
        return self.name.lstrip("-").replace("-", "_")


# A small parser instead of argparse: `pyhv run` is the domain start-up path and
# argparse (with the shutil, locale and gettext it pulls in) costs milliseconds.
RUN_OPTIONS = [
    Option("--kernel", "bzImage, ELF (vmlinux, PVH) or Multiboot kernel (required without --config)", "K"),
    Option("--config", "boot the domain a TOML configuration file describes (docs: pyhv/toolstack/domconfig.py)", "FILE"),
    Option("--initrd", "initial ramdisk", "I"),
    Option("--cmdline", "kernel command line", "C", ""),
    Option("--memory", "guest memory (default 256M)", "SIZE", "256M"),
    Option("--vcpus", "number of virtual CPUs (default 1)", "N", "1"),
    Option("--boot", "boot protocol (default: from the image)", "PROTO", "auto", ("auto", "linux", "pvh", "multiboot")),
    Option("--debug-exit", "isa-debug-exit port at 0xf4: the guest's value becomes pyhv's exit status"),
    Option("--disk", "virtio-blk disk: PATH[,ro][,serial=S] (repeatable)", "SPEC", repeat=True),
    Option("--net", "virtio-net on a TAP: tap=NAME[,mac=M][,bridge=BR] (repeatable; created if missing)", "SPEC", repeat=True),
    Option("--vsock", "virtio-vsock: cid=N,uds=PATH (host side: Firecracker's unix-socket convention)", "SPEC"),
    Option("--balloon", "a virtio-balloon device (the host can take memory back)"),
    Option("--rng", "a virtio-rng device fed by the host's getrandom()"),
    Option("--serial", "COM1: stdio (default), file:PATH or none", "DEST", "stdio"),
    Option("--on-reboot", "what a guest reboot does (default restart)", "ACTION", "restart", ("destroy", "restart")),
    Option("--on-poweroff", "what a guest power-off does (default destroy)", "ACTION", "destroy", ("destroy", "restart")),
    Option("--progress", "print port 0x80 progress codes with times at exit"),
    Option("--control", "a unix socket taking commands while the guest runs (balloon SIZE, info)", "PATH"),
    Option("--restore", "boot the machine a snapshot file holds, where it was saved (no --kernel/--config)", "FILE"),
    Option("--verify", "with --restore: read all of the snapshot's memory and check its CRCs before running"),
    Option("--snapshot-on-signal", "on SIGUSR2, save the running machine to FILE and carry on", "FILE"),
    Option("--incoming", "wait for a live migration on HOST:PORT and run the machine it brings", "HOST:PORT"),
    Option("--migration-key", "file holding the key migrations are authenticated with (16+ bytes)", "FILE"),
]

#: what may go with --restore or --incoming: the machine itself comes from elsewhere
RESTORE_OPTIONS = {"restore", "verify", "incoming", "migration_key", "snapshot_on_signal", "serial", "progress",
                   "control"}

IMAGE_BUILD_OPTIONS = [
    Option("--dir", "where the images go (default $XDG_CACHE_HOME/pyhv/images/default)", "DIR"),
    Option("--force", "build again even when the cache holds the images"),
]

COMMANDS = {
    "run": ("boot one VM in the foreground", RUN_OPTIONS),
    "image build": (
        "build the default Linux guest from Debian packages: kernel, initramfs, root disk (needs apt)",
        IMAGE_BUILD_OPTIONS,
    ),
}


def usage(command: str | None = None) -> str:
    if command is None:
        from .toolstack.xl import VERBS

        lines = ["usage: pyhv COMMAND [OPTIONS]", "", "commands:"]
        lines += [f"  {name:14s} {text}" for name, (text, _) in COMMANDS.items()]
        lines += ["", "domain commands (through pyhvd; --socket PATH or PYHV_SOCKET names its socket):"]
        lines += [f"  {name:14s} {text.partition(': ')[2] or text}" for name, (text, _) in VERBS.items()]
        lines.append("\n`pyhv COMMAND --help` describes a command's options.")
        return "\n".join(lines)
    text, options = COMMANDS[command]
    lines = [f"usage: pyhv {command} [OPTIONS]", "", text, "", "options:"]
    for o in options:
        head = f"{o.name} {o.metavar}".strip()
        choices = f" ({'|'.join(o.choices)})" if o.choices else ""
        lines.append(f"  {head:22s} {o.help}{choices}")
    return "\n".join(lines)


def parse(argv: Sequence[str], options: list[Option]) -> SimpleNamespace:
    """``--name VALUE``, ``--name=VALUE`` and flags; UsageError on anything else."""
    by_name = {o.name: o for o in options}
    values: dict[str, object] = {o.dest: [] if o.repeat else o.default for o in options}
    args = list(argv)
    while args:
        arg = args.pop(0)
        name, eq, value = arg.partition("=")
        option = by_name.get(name)
        if option is None:
            raise UsageError(f"unknown option {name!r} (see --help)")
        if not option.metavar:
            if eq:
                raise UsageError(f"{name} takes no value")
            values[option.dest] = True
            continue
        if not eq:
            if not args:
                raise UsageError(f"{name} needs a value ({option.metavar})")
            value = args.pop(0)
        if option.choices and value not in option.choices:
            raise UsageError(f"{name} {value!r}: expected one of {', '.join(option.choices)}")
        if option.repeat:
            values[option.dest].append(value)  # type: ignore[attr-defined]
        else:
            values[option.dest] = value
    for o in options:
        if o.required and values[o.dest] is None:
            raise UsageError(f"{o.name} is required")
    return SimpleNamespace(**values)


def _run(args: SimpleNamespace) -> int:
    from .backends.console import open_console

    if args.incoming:
        return _run_incoming(args)
    snapshot = None
    if args.restore:
        snapshot = _open_snapshot(args)
        config = snapshot.config
    else:
        config = _config_from_file(args) if args.config else _config_from_options(args)
    try:
        console = open_console(config.serial)
        try:
            return _run_machine(config, console, args.progress, snapshot, args.snapshot_on_signal,
                                control=args.control)
        finally:
            console.close()
    finally:
        if snapshot is not None:
            snapshot.close()


def _only_restore_options(args: SimpleNamespace, what: str) -> None:
    defaults = {o.dest: ([] if o.repeat else o.default) for o in RUN_OPTIONS}
    extra = [name for name, value in vars(args).items() if name not in RESTORE_OPTIONS and value != defaults[name]]
    if args.restore and args.incoming:
        extra.insert(0, "incoming")
    if extra:
        flag = "--" + extra[0].replace("_", "-")
        raise UsageError(f"{what}: {flag} cannot be given with it")


def _open_snapshot(args: SimpleNamespace) -> Any:
    from .vmm.snapshot import Snapshot

    _only_restore_options(args, "--restore takes the machine from the snapshot")
    snapshot = Snapshot(args.restore, serial=args.serial)
    if args.verify:
        try:
            snapshot.verify_memory()
        except BaseException:
            snapshot.close()
            raise
    return snapshot


def read_migration_key(path: str | None) -> bytes:
    if not path:
        raise UsageError("--migration-key FILE is required: migrations are authenticated with a shared key")
    try:
        with open(path, "rb") as f:
            key = f.read(4096).strip()
    except OSError as e:
        raise UsageError(f"--migration-key {path}: {e.strerror}") from None
    if len(key) < 16:
        raise UsageError(f"--migration-key {path}: the key must be at least 16 bytes")
    return key


def parse_host_port(text: str, what: str) -> tuple[str, int]:
    host, sep, port = text.rpartition(":")
    if not sep or not host or not port.isdigit() or not 0 <= int(port) <= 65535:
        raise UsageError(f"{what} {text!r}: expected HOST:PORT")
    return host.strip("[]"), int(port)


def _run_incoming(args: SimpleNamespace) -> int:
    """``--incoming``: receive one migration, then run the machine as ``run`` does."""
    from .backends.console import open_console
    from .vmm import migrate

    _only_restore_options(args, "--incoming takes the machine from the migration stream")
    if args.verify:
        raise UsageError("--verify goes with --restore")
    host, port = parse_host_port(args.incoming, "--incoming")
    key = read_migration_key(args.migration_key)
    server = migrate.listen(host, port)
    console = open_console(args.serial)
    try:
        print(f"pyhv: waiting for a migration on {host}:{server.getsockname()[1]}", file=sys.stderr, flush=True)

        def incoming(should_stop: Any) -> Any:
            return migrate.receive(server, key, console=console, should_stop=should_stop)

        return _run_machine(None, console, args.progress, None, args.snapshot_on_signal, first=incoming,
                            control=args.control)
    finally:
        server.close()
        console.close()


def _image_build(args: SimpleNamespace) -> int:
    from .toolstack.image import build_command

    return build_command(args.dir, args.force)


def _config_from_file(args: SimpleNamespace) -> "MachineConfig":
    """The machine a configuration file describes; --debug-exit and --serial still apply."""
    from .toolstack import domconfig
    from .vmm import MachineConfig

    if args.kernel:
        raise UsageError("--config and --kernel: give one or the other")
    machine = domconfig.load(args.config).machine
    settings = {k: v for k, v in vars(machine).items() if not k.startswith("_")}
    settings["debug_exit"] = args.debug_exit or machine.debug_exit
    settings["serial"] = args.serial
    return MachineConfig(**settings)


def _config_from_options(args: SimpleNamespace) -> "MachineConfig":
    from .vmm import MachineConfig
    from .vmm.config import parse_disk, parse_net, parse_size, parse_vsock

    if not args.kernel:
        raise UsageError("--kernel is required (or --config FILE)")
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
        on_poweroff=args.on_poweroff,
        disks=[parse_disk(d) for d in args.disk],
        rng=args.rng,
        nets=[parse_net(n) for n in args.net],
        balloon=args.balloon,
        vsock=parse_vsock(args.vsock) if args.vsock else None,
    )
    return config


def _run_machine(
    config: MachineConfig | None, console: Console, progress: bool, snapshot: Any = None,
    save_to: str | None = None, first: Any = None, control: str | None = None,
) -> int:
    """Boot (or restore ``snapshot``), and boot again while the guest reboots (or
    powers off) into a restart.

    SIGINT, SIGTERM and SIGHUP stop whichever machine is running and end the
    loop, even when they arrive while the guest is rebooting.  With ``save_to``,
    SIGUSR2 saves the running machine there (and it runs on)."""
    from .vcpu import Stop, StopKind
    from .vmm import Machine, build

    current: list[Machine] = []
    caught: list[int] = []

    def on_signal(signum: int, frame: object) -> None:
        caught.append(signum)
        for machine in current:
            machine.request_stop(Stop(StopKind.HOST, 128 + signum, f"stopped by {signal.Signals(signum).name}"))

    server = None
    if control:
        from .vmm.control import ControlServer

        server = ControlServer(control, lambda: current[0] if current else None)

    def on_save(signum: int, frame: object) -> None:
        for machine in current:
            assert save_to is not None
            try:
                info = machine.save(save_to, force=True)  # its own earlier snapshot
            except PyhvError as e:
                print(f"pyhv: snapshot not saved: {e}", file=sys.stderr, flush=True)
                continue
            print(f"pyhv: saved snapshot {save_to} ({info.memory_written >> 20} MiB of memory written, "
                  f"{info.seconds * 1000:.1f} ms)", file=sys.stderr, flush=True)

    old = {s: signal.signal(s, on_signal) for s in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP)}
    if save_to:
        old[signal.SIGUSR2] = signal.signal(signal.SIGUSR2, on_save)
    try:
        first_machine = first is not None
        while not caught:
            if first is not None:  # the machine comes from a migration
                machine = first(lambda: bool(caught))
                if machine is None:
                    break
                first = None
                config = machine.config
            else:
                assert config is not None
                machine = build(config, console=console, restore=snapshot)
            announce = ("migration received" if first_machine else
                        f"restored {snapshot.path}" if snapshot is not None else None)
            first_machine = False
            snapshot = None  # a restart after a reboot boots afresh
            current[:] = [machine]
            try:
                if caught:  # a signal arrived while the machine was being built
                    break
                if machine.state == "created":  # a migrated machine is already running
                    machine.start()
                if announce:
                    print(f"pyhv: {announce}; running", file=sys.stderr, flush=True)
                    announce = None
                stop = None
                while stop is None:
                    stop = machine.wait(0.5)
            finally:
                current.clear()
                machine.close()
            if progress:
                for t_ns, code in machine.progress.records:
                    print(f"pyhv: progress {code:#04x} at {t_ns / 1e6:.3f} ms", file=sys.stderr)
            if caught:
                break
            if stop.kind is StopKind.RESET and config.on_reboot == "restart":
                print("pyhv: guest rebooted; restarting (on_reboot=restart)", file=sys.stderr)
                continue
            if stop.kind is StopKind.POWEROFF and config.on_poweroff == "restart":
                print("pyhv: guest powered off; restarting (on_poweroff=restart)", file=sys.stderr)
                continue
            if stop.kind in (StopKind.CRASH, StopKind.ERROR):
                print(f"pyhv: {stop.detail}", file=sys.stderr)
            elif stop.kind is StopKind.RESET:
                print("pyhv: guest rebooted (on_reboot=destroy)", file=sys.stderr)
            return stop.status
        signum = caught[0]
        print(f"pyhv: stopped by {signal.Signals(signum).name}", file=sys.stderr)
        return 128 + signum
    finally:
        for s, handler in old.items():
            signal.signal(s, handler)
        if server is not None:
            server.close()


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    try:
        if not argv:
            print(usage(), file=sys.stderr)
            return UsageError.exit_status
        if argv[0] in ("-h", "--help", "help"):
            print(usage())
            return 0
        command, rest = argv[0], argv[1:]
        if command == "domain":  # a domain's VMM process, started by pyhvd
            from .toolstack.domain import main as domain_main

            return domain_main(rest)
        if " ".join(argv[:2]) in COMMANDS:  # two-word commands: "image build"
            command, rest = " ".join(argv[:2]), argv[2:]
        if command not in COMMANDS:
            from .toolstack.xl import VERBS, run

            if command in VERBS:
                if "-h" in rest or "--help" in rest:
                    print(f"usage: pyhv {VERBS[command][0]}")
                    return 0
                return run(command, rest)
            if command == "image":
                raise UsageError(f"unknown command {' '.join(argv[:2])!r} (see pyhv --help)")
            raise UsageError(f"unknown command {command!r} (see pyhv --help)")
        if "-h" in rest or "--help" in rest:
            print(usage(command))
            return 0
        args = parse(rest, COMMANDS[command][1])
        return _image_build(args) if command == "image build" else _run(args)
    except PyhvError as e:
        print(f"pyhv: {e}", file=sys.stderr)
        return e.exit_status
    except KeyboardInterrupt:
        return 130
