"""Drive a Firecracker API socket with a PyPI Firecracker client's ``Api`` class.

Run by the client's own interpreter (each client lives in its own environment:
both install the top-level package ``firecracker``)::

    PYTHON fc_client.py SOCKET '[["put", "boot", {...}], ["get", "describe"], ...]'

prints one line ``RESULT [...]``: for each step ``{"status": N, "json": ...}``
or ``{"error": "..."}`` (the client's APIError).  Importing the client prints a
warning about a missing /usr/local/bin/firecracker; that is the client's own
check and does not matter to its Api class.
"""

from __future__ import annotations

import json
import sys
from typing import Any

from firecracker import Api  # the client's public API
from firecracker.exceptions import APIError


def main() -> None:
    sock, steps = sys.argv[1], json.loads(sys.argv[2])
    api = Api(sock)
    out: list[dict[str, Any]] = []
    try:
        for method, resource, *rest in steps:
            kwargs = rest[0] if rest else {}
            try:
                res = getattr(getattr(api, resource), method)(**kwargs)
            except APIError as e:
                out.append({"error": str(e)})
                continue
            body = res.json() if res.content else None
            out.append({"status": res.status_code, "json": body})
    finally:
        api.close()
    print("RESULT " + json.dumps(out), flush=True)


if __name__ == "__main__":
    main()
