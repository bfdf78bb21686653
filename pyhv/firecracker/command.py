"""The ``firecracker`` / ``pyhv-firecracker`` command: Firecracker's command line.

``firecracker --api-sock PATH`` serves the API and waits for InstanceStart;
``--config-file FILE`` boots the microVM that file describes right away (with
``--no-api``, without serving the API).  The process ends with its guest.
"""

from __future__ import annotations

import json
import os
import signal
import sys
from collections.abc import Sequence

from .. import __version__
from ..cmdline import Option, parse
from ..errors import PyhvError, UsageError
from . import config as fc
from .log import Log

#: options pyhv takes and cannot honour yet: each is logged once when given
NOT_HONOURED = {
    "boot_timer": "--boot-timer: pyhv has no boot-timer device; boot times are not logged",
    "seccomp_filter": "--seccomp-filter: pyhv's own filter goes on under the jailer; the filter file is not used",
    "no_seccomp": "--no-seccomp: pyhv filters only under the jailer, which leaves its filter off for this",
    "mmds_size_limit": "--mmds-size-limit: pyhv has no MMDS",
    "start_time_us": "--start-time-us: jailer timing is not used",
    "start_time_cpu_us": "--start-time-cpu-us: jailer timing is not used",
    "parent_cpu_time_us": "--parent-cpu-time-us: jailer timing is not used",
}

OPTIONS = [
    Option("--api-sock", "the API's unix socket (default /run/firecracker.socket)", "PATH", "/run/firecracker.socket"),
    Option("--config-file", "boot the microVM this JSON file describes (Firecracker's full-VM configuration)", "FILE"),
    Option("--no-api", "serve no API (needs --config-file)"),
    Option("--id", f"the microVM's id (default {fc.DEFAULT_ID})", "ID", fc.DEFAULT_ID),
    Option("--log-path", "where the log goes (default stderr)", "PATH"),
    Option("--level", "log level: Error, Warning, Info, Debug, Trace, Off", "LEVEL"),
    Option("--show-level", "put the level in each log line"),
    Option("--show-log-origin", "put the source file and line in each log line"),
    Option("--metrics-path", "where FlushMetrics writes", "PATH"),
    Option("--http-api-max-payload-size", "the largest request body, in bytes (default 51200)", "N"),
    Option("--enable-pci", "virtio devices on PCI (default: virtio-MMIO, named on the guest's command line)"),
    Option("--boot-timer", "accepted; not honoured"),
    Option("--no-seccomp", "under pyhv's jailer: no seccomp filter; else accepted"),
    Option("--seccomp-filter", "accepted; not honoured", "FILE"),
    Option("--mmds-size-limit", "accepted; not honoured", "N"),
    Option("--start-time-us", "accepted; not used", "N"),
    Option("--start-time-cpu-us", "accepted; not used", "N"),
    Option("--parent-cpu-time-us", "accepted; not used", "N"),
    Option("--version", "print the Firecracker API version served, then pyhv's"),
]

SHIM_ENV = "PYHV_NO_FIRECRACKER_SHIM"


def usage() -> str:
    lines = ["usage: firecracker [OPTIONS]", "",
             "pyhv's Firecracker-compatible front end: Firecracker's API and options over pyhv's VMM.", "",
             "options:"]
    lines += [f"  {f'{o.name} {o.metavar}'.strip():34s} {o.help}" for o in OPTIONS]
    return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> int:
    """``pyhv-firecracker`` and ``pyhv firecracker``."""
    args_list = list(sys.argv[1:] if argv is None else argv)
    try:
        if "-h" in args_list or "--help" in args_list:
            print(usage())
            return 0
        args = parse(args_list, OPTIONS)
        if args.version:
            print(f"Firecracker v{fc.FIRECRACKER_VERSION}")
            print(f"pyhv {__version__} (Firecracker-compatible front end)")
            return 0
        return _run(args)
    except PyhvError as e:
        print(f"firecracker: {e}", file=sys.stderr)
        return e.exit_status
    except KeyboardInterrupt:
        return 130


def shim_main() -> int:
    """The ``firecracker`` script: the same, unless the host keeps a real Firecracker."""
    if os.environ.get(SHIM_ENV) == "1":
        print(f"firecracker: this is pyhv's Firecracker-compatible front end, turned off by {SHIM_ENV}=1; "
              "run the real Firecracker, or pyhv-firecracker", file=sys.stderr)
        return 1
    return main()


def _run(args: object) -> int:
    from ..backends.console import open_console
    from .server import MAX_PAYLOAD, Server
    from .vmm import Microvm

    a = vars(args)
    log = Log(a["id"])
    try:
        log.configure(log_path=a["log_path"], level=a["level"], show_level=a["show_level"] or None,
                      show_log_origin=a["show_log_origin"] or None)
    except fc.Fault as e:
        raise UsageError(str(e)) from None
    for key, message in NOT_HONOURED.items():
        if a[key]:
            log.once(message)
    if a["no_api"] and not a["config_file"]:
        raise UsageError("--no-api needs --config-file (there would be no way to configure the microVM)")
    max_payload = MAX_PAYLOAD
    if a["http_api_max_payload_size"] is not None:
        if not str(a["http_api_max_payload_size"]).isdigit():
            raise UsageError("--http-api-max-payload-size must be a number of bytes")
        max_payload = int(a["http_api_max_payload_size"])
    microvm = Microvm(a["id"], log, transport="pci" if a["enable_pci"] else "mmio")
    try:
        if a["metrics_path"]:
            microvm.put_metrics({"metrics_path": a["metrics_path"]})
        if a["config_file"]:
            _load_config_file(microvm, a["config_file"])
    except fc.Fault as e:
        raise UsageError(str(e)) from None

    server = None if a["no_api"] else Server(a["api_sock"], microvm, max_payload)
    old = {s: signal.signal(s, lambda signum, frame: microvm.stop(signum))
           for s in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP)}
    try:
        if server is not None:
            log.info(f"API server listening on {a['api_sock']}")
        if a["config_file"]:
            microvm.start_now()
        return microvm.serve(lambda: open_console("stdio"))
    finally:
        for s, handler in old.items():
            signal.signal(s, handler)
        if server is not None:
            server.close()


def _load_config_file(microvm: object, path: str) -> None:
    from .vmm import Microvm

    assert isinstance(microvm, Microvm)
    try:
        with open(path) as f:
            data = json.load(f)
    except OSError as e:
        raise UsageError(f"--config-file {path}: {e.strerror}") from None
    except ValueError as e:
        raise UsageError(f"--config-file {path}: not valid JSON: {e}") from None
    config, extra = fc.apply_file(microvm.config, data)
    if "logger" in extra:
        microvm.put_logger(extra["logger"])
    if "metrics" in extra and not microvm.metrics_path:
        microvm.put_metrics(extra["metrics"])
    microvm.config = config
