"""Command-line pieces shared by pyhv's commands: a small option parser, and
the values several commands take (migration keys, HOST:PORT).

A small parser instead of argparse: `pyhv run` is the domain start-up path, and
argparse (with the shutil, locale and gettext it pulls in) costs milliseconds.
This module sits below every front end (``cli.py``, ``toolstack/``,
``firecracker/``), so none of them imports another for these.
"""

from __future__ import annotations

from collections.abc import Sequence
from types import SimpleNamespace

from .errors import UsageError


class Option:
    """One ``--name [VALUE]`` option of a command."""

    def __init__(
        self, name: str, help: str, metavar: str = "", default: object = None,
        choices: tuple[str, ...] = (), required: bool = False, repeat: bool = False, bare: str = "",
    ) -> None:
        self.name = name
        self.help = help
        self.metavar = metavar  # empty: a flag without a value
        self.default = False if not metavar else default
        # with ``bare``, the value may be left out (``--name`` means ``--name=BARE``); given,
        # it is only ever the ``--name=VALUE`` form, so the next argument is never taken
        self.bare = bare
        self.choices = choices
        self.required = required
        self.repeat = repeat  # may be given several times: a list of values
        if repeat:
            self.default = []

    @property
    def dest(self) -> str:
        return self.name.lstrip("-").replace("-", "_")


def parse(argv: Sequence[str], options: list[Option]) -> SimpleNamespace:
    """``--name VALUE``, ``--name=VALUE``, flags and ``--name[=VALUE]``; UsageError on anything else."""
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
        if not eq and option.bare:
            value = option.bare
        elif not eq:
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
