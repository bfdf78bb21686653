"""Confinement of a domain process (README: Confinement).

- :mod:`.plan`: the pure plan of a domain's jail from its description;
- :mod:`.enter`: carrying it out (descriptors handed over, a PID namespace and a
  fork, namespaces, pivot_root, ids, capabilities, seccomp), the supervisor;
- :mod:`.policy`: the seccomp policy, per thread kind;
- :mod:`.jailer`: Firecracker's jailer command line over the same steps;
- :mod:`.breakout`: break-out attempts for the tests (PYHV_TEST_BREAKOUT only).
"""
