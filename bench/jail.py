#!/usr/bin/env python3
"""What confinement costs: ``pyhv run`` against ``pyhv run --jail`` on the probe.

Run from the repository root, as root:

    python bench/jail.py [--repeats 5] [--n 200000] [--n-small 1000]

Two figures, each the median over ``--repeats`` rounds, the two runs of a
round interleaved (order rotated) so host noise hits both alike:

* create to first guest output: spawning ``pyhv run`` to the first byte the
  probe's ``hello`` prints (the jail adds hand-over, the fork, namespaces,
  pivot_root, the id change and the seccomp filter);
* per-exit cost: port-I/O exits (``probe.test=pio``, ring 0 as bench/exits.py by default), as
  bench/exits.py measures them, ``(wall(n) - wall(n_small)) / (n - n_small)``.
  Per exit the jailed VMM differs only by its seccomp filter (one KVM_RUN
  ioctl per exit runs through it), so this is the filter's cost.

The machinery (spawning, timing, checking the pass line) is bench/exits.py's.
Only ratios within one run mean anything: the host is shared.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from exits import EXPECTED_RC, PROBE_ELF, run_vmm, vmm_command  # noqa: E402

CONFIGS = {"plain": [], "jail": ["--jail"]}


def command(config: str, cmdline: str) -> tuple[list[str], dict[str, str] | None]:
    cmd, env = vmm_command("pyhv", PROBE_ELF, cmdline)
    return cmd + CONFIGS[config], env


def measure(args: argparse.Namespace) -> dict[str, dict[str, list[float]]]:
    samples: dict[str, dict[str, list[float]]] = {c: {"startup": [], "exit": []} for c in CONFIGS}
    names = list(CONFIGS)
    for rep in range(args.repeats):
        order = names[rep % 2:] + names[:rep % 2]
        for config in order:
            cmd, env = command(config, "probe.test=hello")
            r = run_vmm(cmd, env, EXPECTED_RC["pyhv"], args.timeout)
            if not r.ok or r.first_output is None:
                raise SystemExit(f"{config}: hello failed: {r.reason}")
            samples[config]["startup"].append(r.first_output * 1e3)
        for config in order:
            walls = []
            for n in (args.n_small, args.n):
                cmd, env = command(config, f"probe.test=pio probe.n={n} probe.ring=0")
                r = run_vmm(cmd, env, EXPECTED_RC["pyhv"], args.timeout)
                if not r.ok:
                    raise SystemExit(f"{config}: pio probe.n={n} failed: {r.reason}")
                walls.append(r.wall)
            samples[config]["exit"].append((walls[1] - walls[0]) / (args.n - args.n_small) * 1e6)
        print(f"round {rep + 1}: " + ", ".join(
            f"{c} {samples[c]['startup'][-1]:.1f} ms, {samples[c]['exit'][-1]:.2f} us/exit" for c in order),
            file=sys.stderr)
    return samples


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--repeats", type=int, default=5)
    p.add_argument("--n", type=int, default=200000)
    p.add_argument("--n-small", type=int, default=1000)
    p.add_argument("--timeout", type=float, default=300)
    args = p.parse_args(argv)
    if os.geteuid() != 0:
        print("bench/jail.py: --jail needs root", file=sys.stderr)
        return 2
    if not PROBE_ELF.is_file():
        print(f"bench/jail.py: no {PROBE_ELF}: run make -C guests", file=sys.stderr)
        return 2
    s = measure(args)
    med = {c: {k: statistics.median(v) for k, v in s[c].items()} for c in s}
    print(f"pyhv run vs pyhv run --jail, probe, median of {args.repeats}")
    print(f"{'':28s} {'plain':>10s} {'--jail':>10s} {'jail/plain':>11s}")
    print(f"{'create to first output, ms':28s} {med['plain']['startup']:10.1f} {med['jail']['startup']:10.1f} "
          f"{med['jail']['startup'] / med['plain']['startup']:11.2f}")
    print(f"{'port-I/O exit, us':28s} {med['plain']['exit']:10.2f} {med['jail']['exit']:10.2f} "
          f"{med['jail']['exit'] / med['plain']['exit']:11.2f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
