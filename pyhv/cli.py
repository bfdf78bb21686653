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

from .cmdline import Option, parse, parse_host_port, read_migration_key
from .errors import PyhvError, UsageError

if TYPE_CHECKING:
    from .backends.console import Console
    from .model import Description


RUN_OPTIONS = [
    Option("--kernel", "bzImage, ELF (vmlinux, PVH) or Multiboot kernel (required without --config)", "K"),
    Option("--config", "boot the domain a TOML file describes (schema: pyhv/model/__init__.py); "
           "options given as well override its values", "FILE"),
    Option("--firmware", "a BIOS ROM (SeaBIOS's bios.bin) run from the reset vector instead of a kernel; "
           "its debug port 0x402 and COM1 go to --serial", "FILE"),
    Option("--initrd", "initial ramdisk", "I"),
    Option("--cmdline", "kernel command line", "C"),
    Option("--memory", "guest memory (default 256M)", "SIZE"),
    Option("--vcpus", "number of virtual CPUs (default 1)", "N"),
    Option("--boot", "boot protocol (default: from the image)", "PROTO", None, ("auto", "linux", "pvh", "multiboot")),
    Option("--debug-exit", "isa-debug-exit port at 0xf4: a guest write of V ends pyhv with status V & 0xff "
           "(=pyhv, the default) or (V << 1) | 1 as QEMU does (=qemu)", "[=pyhv|qemu]", bare="pyhv"),
    Option("--disk", "virtio-blk disk: PATH[,ro][,serial=S][,cache=writeback|none][,ops=LIMIT][,bw=LIMIT] (repeatable)", "SPEC", repeat=True),
    Option("--net", "virtio-net on a TAP: tap=NAME[,mac=M][,bridge=BR][,rx-ops|rx-bw|tx-ops|tx-bw=LIMIT] (repeatable; created if missing)", "SPEC", repeat=True),
    Option("--vsock", "virtio-vsock: cid=N,uds=PATH (host side: Firecracker's unix-socket convention)", "SPEC"),
    Option("--fw-cfg", "a fw_cfg file: name=NAME,file=PATH or name=NAME,string=TEXT (repeatable; "
           "names under opt/)", "SPEC", repeat=True),
    Option("--fs", "virtio-fs: tag=TAG,socket=PATH (a vhost-user back end) or tag=TAG,path=DIR (pyhv runs "
           "virtiofsd on DIR) (repeatable)", "SPEC", repeat=True),
    Option("--balloon", "a virtio-balloon device (the host can take memory back)"),
    Option("--rng", "a virtio-rng device fed by the host's getrandom()"),
    Option("--transport", "how virtio devices attach: pci (default) or mmio (virtio-mmio windows, "
           "added to the command line as virtio_mmio.device=)", "KIND"),
    Option("--no-vmgenid", "no VM Generation ID device (by default the guest gets one, new at boot and restore)"),
    Option("--serial", "COM1: stdio (default), file:PATH or none", "DEST"),
    Option("--on-reboot", "what a guest reboot does (default restart)", "ACTION", None, ("destroy", "restart")),
    Option("--on-poweroff", "what a guest power-off does (default destroy)", "ACTION", None, ("destroy", "restart")),
    Option("--on-crash", "what a guest crash does (default destroy; preserve keeps it until a signal)", "ACTION",
           None, ("destroy", "restart", "preserve")),
    Option("--progress", "print port 0x80 progress codes with times at exit"),
    Option("--control", "a unix socket taking JSON requests while the guest runs (docs: pyhv/vmm/control.py)", "PATH"),
    Option("--gdb", "serve the GDB remote protocol on unix:PATH or tcp:HOST:PORT; ,wait holds the guest "
           "until GDB attaches (docs/INTROSPECTION.md)", "ADDR"),
    Option("--jail", "confine the VMM: its own namespaces and root directory, an unprivileged uid, no "
           "capabilities (README: Confinement)"),
    Option("--jail-report", "with --jail (implied): print what the confined VMM can still reach, then run"),
    Option("--restore", "boot the machine a snapshot file holds, where it was saved (no --kernel/--config)", "FILE"),
    Option("--verify", "with --restore: read all of the snapshot's memory and check its CRCs before running"),
    Option("--snapshot-on-signal", "on SIGUSR2, save the running machine to FILE and carry on", "FILE"),
    Option("--incoming", "wait for a live migration on HOST:PORT and run the machine it brings", "HOST:PORT"),
    Option("--migration-key", "file holding the key migrations are authenticated with (16+ bytes)", "FILE"),
]

#: what may go with --restore or --incoming: the machine itself comes from elsewhere
RESTORE_OPTIONS = {"restore", "verify", "incoming", "migration_key", "snapshot_on_signal", "serial", "progress",
                   "control", "gdb", "jail", "jail_report"}

IMAGE_BUILD_OPTIONS = [
    Option("--dir", "where the images go (default $XDG_CACHE_HOME/pyhv/images/default)", "DIR"),
    Option("--force", "build again even when the cache holds the images"),
]

COMMANDS = {
    "run": ("boot one VM in the foreground", RUN_OPTIONS),
    "firecracker": ("a Firecracker-compatible VMM: its API socket and options (`pyhv firecracker --help`)", []),
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
        head = f"{o.name}{o.metavar}" if o.bare else f"{o.name} {o.metavar}".strip()
        choices = f" ({'|'.join(o.choices)})" if o.choices else ""
        lines.append(f"  {head:22s} {o.help}{choices}")
    return "\n".join(lines)


def _run(args: SimpleNamespace) -> int:
    if args.incoming:
        return _run_incoming(args)
    snapshot = None
    if args.restore:
        snapshot = _open_snapshot(args)
        description = snapshot.description
        taps: dict[int, int] = {}
    else:
        description, taps = describe_run(args)
    return _run_domain(description, args, snapshot=snapshot, taps=taps)


def describe_run(args: SimpleNamespace) -> tuple[Description, dict[int, int]]:
    """The description ``pyhv run``'s options give (over ``--config``'s file, if
    one is named), and the TAP descriptors handed over with ``--net fd=N``."""
    from .model import options

    plain, taps, given = options.plain_from_options(vars(args))
    if args.config:
        from .model import files

        data = files.load_mapping(args.config)
        data.update(plain)
        plain = data
    elif "kernel" not in plain and "firmware" not in plain:
        raise UsageError("--kernel is required (or --firmware FILE, or --config FILE)")
    return options.describe(plain, given, args.config or ""), taps


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
    snapshot = Snapshot(args.restore, serial=args.serial or "stdio")  # COM1 goes where this run says
    if args.verify:
        try:
            snapshot.verify_memory()
        except BaseException:
            snapshot.close()
            raise
    return snapshot


def _run_incoming(args: SimpleNamespace) -> int:
    """``--incoming``: receive one migration, then run the machine as ``run`` does."""
    from .backends.console import open_console
    from .vmm import migrate

    _only_restore_options(args, "--incoming takes the machine from the migration stream")
    if args.jail or args.jail_report:
        raise UsageError("--jail cannot go with --incoming: a confined VMM has no network to receive on")
    if args.verify:
        raise UsageError("--verify goes with --restore")
    host, port = parse_host_port(args.incoming, "--incoming")
    key = read_migration_key(args.migration_key)
    server = migrate.listen(host, port)
    console = open_console(args.serial or "stdio")
    caught: list[int] = []

    def on_signal(signum: int, frame: object) -> None:
        caught.append(signum)

    old = {s: signal.signal(s, on_signal) for s in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP)}
    try:
        print(f"pyhv: waiting for a migration on {host}:{server.getsockname()[1]}", file=sys.stderr, flush=True)
        machine = migrate.receive(server, key, console=console, should_stop=lambda: bool(caught))
    except BaseException:
        console.close()
        raise
    finally:
        server.close()
        for s, handler in old.items():
            signal.signal(s, handler)
    if machine is None:
        console.close()
        print(f"pyhv: stopped by {signal.Signals(caught[0]).name}", file=sys.stderr)
        return 128 + caught[0]
    print("pyhv: migration received; running", file=sys.stderr, flush=True)
    return _run_domain(machine.description, args, first=machine, console=console)


def _image_build(args: SimpleNamespace) -> int:
    from .toolstack.image import build_command

    return build_command(args.dir, args.force)


def _run_domain(
    description: Description, args: SimpleNamespace, snapshot: Any = None, first: Any = None,
    taps: dict[int, int] | None = None, console: Console | None = None,
) -> int:
    """Run one domain in the foreground through the VMM runtime, as pyhvd runs each of its own.

    SIGINT, SIGTERM and SIGHUP destroy it (exit status 128+N), even while the
    guest is rebooting.  With ``--snapshot-on-signal``, SIGUSR2 saves the
    running machine there (and it runs on); with ``--control``, requests are
    served on that socket."""
    from .backends.console import open_console
    from .vcpu import StopKind
    from .vmm.runtime import Runtime

    taps = dict(taps or {})
    control_sock = None
    try:
        if console is None:
            console = open_console(description.serial)
        if args.jail or args.jail_report:
            status, control_sock = _enter_jail(description, args, console, snapshot, taps)
            if status is not None:  # the supervisor: the confined child ran the domain
                console.close()
                if snapshot is not None:
                    snapshot.close()
                return status
    except BaseException:
        if snapshot is not None:
            snapshot.close()
        if console is not None:
            console.close()
        raise
    save_to = args.snapshot_on_signal

    def progress(machine: Any) -> None:
        if args.progress:
            for t_ns, code in machine.progress.records:
                print(f"pyhv: progress {code:#04x} at {t_ns / 1e6:.3f} ms", file=sys.stderr)

    restored = snapshot.path if snapshot is not None else None

    def ready(reply: dict[str, Any]) -> None:
        if not reply.get("ok"):
            print(f"pyhv: {reply.get('error')}", file=sys.stderr, flush=True)
        elif restored is not None:
            print(f"pyhv: restored {restored}; running", file=sys.stderr, flush=True)

    gdb_wait = bool(args.gdb) and args.gdb.endswith(",wait")
    runtime = Runtime(description, console, taps=taps, on_ready=ready, on_machine_end=progress, paused=gdb_wait)
    runtime.confined = bool(args.jail or args.jail_report)

    def on_signal(signum: int, frame: object) -> None:
        runtime.stop(StopKind.DESTROY, 128 + signum, f"stopped by {signal.Signals(signum).name}")

    def on_save(signum: int, frame: object) -> None:
        machine = runtime.machine
        if machine is None or save_to is None:
            return
        try:
            info = machine.save(save_to, description=runtime.description, force=True)  # its own earlier snapshot
        except PyhvError as e:
            print(f"pyhv: snapshot not saved: {e}", file=sys.stderr, flush=True)
            return
        print(f"pyhv: saved snapshot {save_to} ({info.memory_written >> 20} MiB of memory written, "
              f"{info.seconds * 1000:.1f} ms)", file=sys.stderr, flush=True)

    server = None
    old: dict[int, Any] = {}
    try:
        if args.control:
            server = _control_server(args.control, runtime, control_sock)
        if args.gdb:
            where = runtime.start_gdb(args.gdb)
            print(f"pyhv: gdb: listening on {where}" + (" (the guest waits for it)" if gdb_wait else ""),
                  file=sys.stderr, flush=True)
        old = {s: signal.signal(s, on_signal) for s in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP)}
        if save_to:
            old[signal.SIGUSR2] = signal.signal(signal.SIGUSR2, on_save)
        ending = runtime.run(snapshot=snapshot, first=first)
    finally:
        for s, handler in old.items():
            signal.signal(s, handler)
        if server is not None:
            server.close()
        runtime.stop_gdb()
        console.close()
    if ending.reason == StopKind.DESTROY.value and ending.status >= 128:
        print(f"pyhv: {ending.detail}", file=sys.stderr)
    elif ending.reason == StopKind.RESET.value:
        print("pyhv: guest rebooted (on_reboot=destroy)", file=sys.stderr)
    return ending.status


def _control_server(path: str, runtime: Any, sock: Any = None) -> Any:
    from .vmm.control import Server

    return Server(path, runtime.handle, sock=sock if sock is not None else _listen_control(path))


def _listen_control(path: str) -> Any:
    import os

    from .backends.unixsock import listen_unix

    if os.path.isdir(path):
        raise UsageError(f"--control {path}: is a directory")
    try:
        return listen_unix(path, 64)
    except OSError as e:
        raise UsageError(f"--control {path}: cannot listen: {e.strerror or e}") from None


def _enter_jail(
    description: Description, args: SimpleNamespace, console: Console, snapshot: Any, taps: dict[int, int],
) -> tuple[int | None, Any]:
    """``--jail``: open what the domain needs from the host, then confine
    (pyhv/jail/enter.py).  In the supervisor: (the confined child's exit
    status, None); in the confined child: (None, the control socket, if any)."""
    import os

    from .jail import enter, plan

    if args.gdb:
        raise UsageError("--gdb cannot go with --jail: the stub would listen outside the jail")
    if os.geteuid() != 0:
        raise UsageError("--jail needs root (it makes namespaces, device nodes and drops to another uid)")
    jail_id = f"run-{os.getpid()}"
    root = os.path.join(enter.jail_dir(os.environ.get("PYHV_RUN_DIR", "/run/pyhv"), jail_id), "root")
    try:
        p = plan.plan(description, root, os.getpid() % plan.DEFAULT_COUNT, plan.RUN_FIRST_ID)
    except plan.JailError as e:
        raise UsageError(f"--jail: {e}") from None
    hand = enter.hand_over(p)
    if args.snapshot_on_signal:  # written in place through this descriptor (vmm/snapshot.py)
        from .vmm.snapshot import open_target

        enter.hand(args.snapshot_on_signal, open_target(args.snapshot_on_signal))
    if description.nics:
        from .backends.tap import Tap

        for i, nic in enumerate(description.nics):  # made here: a confined VMM may not make TAPs
            if i not in taps:
                taps[i] = Tap(nic.tap, bridge=nic.bridge).fd
                hand.append(taps[i])
    control_sock = _listen_control(args.control) if args.control else None
    keep = console.fds() + list(taps.values()) + ([snapshot.fd] if snapshot is not None else [])
    if control_sock is not None:
        hand.append(control_sock.fileno())
    cleanup = list(p.sockets) + ([args.control] if args.control else [])
    status = enter.enter(p, jail_id, keep, hand, cleanup)
    if status is not None:  # the supervisor closed what it handed to the child
        if control_sock is not None:
            control_sock.detach()
        if args.snapshot_on_signal:
            enter.remove_if_empty(args.snapshot_on_signal)  # made for a save that never came
    if status is None and args.jail_report:
        print(enter.report(), file=sys.stderr, flush=True)
    return status, control_sock


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
        if command == "firecracker":  # Firecracker's command line and API over pyhv
            from .firecracker import main as firecracker_main

            return firecracker_main(rest)
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
