"""Fuzz pyhvd's API from its OpenAPI document.

For every documented operation hypothesis sends bodies drawn from the
operation's schema, the same with one field broken (a wrong type, an unknown
key), and arbitrary JSON or bytes.  Whatever arrives, pyhvd must answer with a
documented status and a JSON error line, never a 500, and must keep serving;
the one domain under test must survive every request that is not meant to
stop it.
"""

from __future__ import annotations

import http.client
import json
import socket
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from pyhv.toolstack.openapi import document

from .pyhvd import Daemon, daemon_fixture

pytestmark = pytest.mark.kvm

DOC = document()
SCHEMAS = DOC["components"]["schemas"]
# operations that stop or freeze a domain get only names that do not exist
STOPPING = {("delete", "/domains/{dom}"), ("post", "/domains/{dom}/shutdown"),
            ("post", "/domains/{dom}/reboot"), ("post", "/domains/{dom}/pause"),
            ("post", "/domains/{dom}/save"), ("post", "/domains/{dom}/migrate")}
OPERATIONS = [(m, p, op) for p, item in DOC["paths"].items() for m, op in item.items() if m != "parameters"]


def from_schema(schema: dict[str, Any], depth: int = 0) -> st.SearchStrategy[Any]:
    if "$ref" in schema:
        return from_schema(SCHEMAS[schema["$ref"].rsplit("/", 1)[1]], depth)
    if "oneOf" in schema:
        return st.one_of([from_schema(s, depth) for s in schema["oneOf"]])
    if "enum" in schema:
        return st.sampled_from(schema["enum"])
    kind = schema.get("type")
    if kind == "integer":
        return st.integers(schema.get("minimum", -(2**63)), schema.get("maximum", 2**63))
    if kind == "number":
        return st.floats(allow_nan=False)
    if kind == "boolean":
        return st.booleans()
    if kind == "string":
        return st.text(max_size=30)
    if kind == "array":
        return st.lists(from_schema(schema.get("items", {}), depth + 1), min_size=schema.get("minItems", 0),
                        max_size=4)
    if kind == "object" and depth < 3:
        props = schema.get("properties", {})
        required = set(schema.get("required", []))
        return st.fixed_dictionaries(
            {k: from_schema(v, depth + 1) for k, v in props.items() if k in required},
            optional={k: from_schema(v, depth + 1) for k, v in props.items() if k not in required},
        )
    return st.none()


JSON = st.recursive(st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(max_size=10),
                    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=8), inner, max_size=3),
                    max_leaves=8)


@st.composite
def broken(draw: st.DrawFn, schema: dict[str, Any]) -> Any:
    """A body from the schema with one thing wrong."""
    body = draw(from_schema(schema))
    if not isinstance(body, dict) or draw(st.booleans()):
        body = dict(body) if isinstance(body, dict) else {}
        body[draw(st.text(min_size=1, max_size=8))] = draw(JSON)
        return body
    if body:
        key = draw(st.sampled_from(sorted(body)))
        body[key] = draw(JSON)
    return body


@st.composite
def requests(draw: st.DrawFn) -> tuple[str, str, bytes | None, set[str]]:
    method, template, op = draw(st.sampled_from(OPERATIONS))
    names = ["nosuch", "9999", "%2e%2e", "a" * 70]
    if (method, template) not in STOPPING:
        names.append("fuzz")
    path = template.replace("{dom}", draw(st.sampled_from(names)))
    path = path.replace("{vcpu}", draw(st.sampled_from(["0", "all", "7", "9999"])))
    path = path.replace("{index}", draw(st.sampled_from(["0", "12"])))
    schema = op.get("requestBody", {}).get("content", {}).get("application/json", {}).get("schema")
    kinds = ["json", "bytes"] + (["schema", "broken"] if schema else [])
    kind = draw(st.sampled_from(kinds))
    if kind == "schema":
        body: bytes | None = json.dumps(draw(from_schema(schema))).encode()
    elif kind == "broken":
        body = json.dumps(draw(broken(schema))).encode()
    elif kind == "json":
        body = json.dumps(draw(JSON)).encode()
    else:
        body = draw(st.binary(max_size=40))
    allowed = set(op["responses"]) | {"404", "405"}
    return method.upper(), path, body, allowed


def send(sock_path: str, method: str, path: str, body: bytes | None) -> tuple[int, bytes]:
    conn = http.client.HTTPConnection("pyhvd", timeout=30)
    conn.sock = socket.socket(socket.AF_UNIX)
    conn.sock.settimeout(30)
    conn.sock.connect(sock_path)
    try:
        conn.request(method, path, body=body, headers={"Content-Type": "application/json"})
        response = conn.getresponse()
        return response.status, response.read()
    finally:
        conn.close()


@pytest.fixture(scope="module")
def daemon(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Daemon]:
    tmp: Path = tmp_path_factory.mktemp("fuzz")
    for d in daemon_fixture(tmp):
        assert d.pyhv("create", str(d.config("fuzz", "hello"))).returncode == 0
        yield d


@settings(max_examples=250, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture,
                                                                   HealthCheck.too_slow])
@given(request=requests())
def test_api_answers_every_request_with_a_documented_status(daemon: Daemon, request: tuple) -> None:
    method, path, body, allowed = request
    status, raw = send(daemon.socket, method, path, body)
    assert status != 500, (method, path, body, raw)
    assert str(status) in allowed, (method, path, body, status, raw)
    if status >= 400:
        reply = json.loads(raw)
        assert isinstance(reply["error"], str) and reply["error"] and "\n" not in reply["error"]
    assert daemon.proc is not None and daemon.proc.poll() is None
    names = [d["name"] for d in json.loads(send(daemon.socket, "GET", "/domains", None)[1])]
    assert "fuzz" in names
