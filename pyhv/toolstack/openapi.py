"""The OpenAPI 3.0 document of pyhvd's API (served at ``/openapi.json``).

``docs/openapi.json`` is this document, committed; a test keeps the two equal
and checks that every route in :func:`pyhv.toolstack.api.routes` is described.
Regenerate with ``python -m pyhv.toolstack.openapi > docs/openapi.json``.
"""

from __future__ import annotations

import json
from typing import Any

from .. import __version__
from ..model import MAX_CLONES, json_schema


#: the domain description's plain form, from the model that checks it
DOMAIN_CONFIG: dict[str, Any] = json_schema()

SCHEMAS: dict[str, Any] = {
    "Error": {"type": "object", "required": ["error"], "properties": {"error": {"type": "string"}}},
    "DomainConfig": DOMAIN_CONFIG,
    "CreateRequest": {"type": "object", "additionalProperties": False, "required": ["config"], "properties": {
        "config": {"$ref": "#/components/schemas/DomainConfig"}, "paused": {"type": "boolean"}}},
    "Created": {"type": "object", "properties": {
        "id": {"type": "integer"}, "name": {"type": "string"}, "pid": {"type": "integer"}}},
    "DomainSummary": {"type": "object", "properties": {
        "id": {"type": "integer"}, "name": {"type": "string"}, "pid": {"type": "integer"},
        "memory": {"type": "integer", "description": "bytes, less what the balloon holds"},
        "maxmem": {"type": "integer"}, "vcpus": {"type": "integer"},
        "state": {"type": "string", "enum": ["running", "blocked", "paused", "shutdown", "crashed", "dying",
                                             "starting", "unknown"]},
        "cpu_time": {"type": "number", "description": "seconds of host CPU"},
        "created": {"type": "number"}}},
    "Vcpu": {"type": "object", "properties": {
        "index": {"type": "integer"}, "tid": {"type": "integer"}, "state": {"type": "string"},
        "host_state": {"type": "string"}, "cpu_ns": {"type": "integer"}, "cpu": {"type": "integer"},
        "affinity": {"type": "array", "items": {"type": "integer"}},
        "exits": {"type": "object", "additionalProperties": {"type": "integer"}}}},
    "MemoryRequest": {"type": "object", "additionalProperties": False, "required": ["target"],
                      "properties": {"target": {"type": "integer", "minimum": 0}}},
    "MaxmemRequest": {"type": "object", "additionalProperties": False, "required": ["maxmem"],
                      "properties": {"maxmem": {"type": "integer", "minimum": 0}}},
    "AffinityRequest": {"type": "object", "additionalProperties": False, "required": ["cpus"], "properties": {
        "cpus": {"type": "array", "minItems": 1, "items": {"type": "integer", "minimum": 0, "maximum": 4095}}}},
    "Empty": {"type": "object", "additionalProperties": False},
    "GdbRequest": {"type": "object", "additionalProperties": False, "properties": {
        "listen": {"type": "string", "pattern": "^tcp:", "description": "tcp:HOST:PORT; without it the stub "
                   "listens on a unix socket in the domain's run directory"}}},
    "GdbStub": {"type": "object", "properties": {
        "address": {"type": "string", "description": "what GDB's target remote takes: a socket path or HOST:PORT"},
        "stopped": {"type": "boolean"}}},
    "SaveRequest": {"type": "object", "additionalProperties": False, "required": ["path"], "properties": {
        "path": {"type": "string", "description": "absolute file name of the snapshot, in pyhvd's snapshot "
                 "directory (pyhvd --snapshot-dir); an existing file is refused"},
        "then": {"type": "string", "enum": ["destroy", "continue", "pause"]},
        "force": {"type": "boolean", "description": "replace an existing file if it is a pyhv snapshot"}}},
    "Saved": {"type": "object", "properties": {"path": {"type": "string"}, "bytes": {"type": "integer"},
                                                "seconds": {"type": "number"}}},
    "RestoreRequest": {"type": "object", "additionalProperties": False, "required": ["path"], "properties": {
        "path": {"type": "string", "description": "absolute file name of the snapshot, in pyhvd's snapshot "
                 "directory (pyhvd --snapshot-dir)"},
        "paused": {"type": "boolean"}, "name": {"type": "string"},
        "verify": {"type": "boolean", "description": "check every memory CRC before the domain runs (reads the "
                   "whole snapshot)"}}},
    "CloneRequest": {"type": "object", "additionalProperties": False, "required": ["path", "count"], "properties": {
        "path": {"type": "string", "description": "absolute file name of the snapshot, in pyhvd's snapshot "
                 "directory (pyhvd --snapshot-dir)"},
        "count": {"type": "integer", "minimum": 1, "maximum": MAX_CLONES},
        "name": {"type": "string", "description": "the clones are named NAME-1 ... NAME-count (default: the "
                 "saved domain's name)"},
        "paused": {"type": "boolean"},
        "verify": {"type": "boolean", "description": "check every memory CRC once, before the first clone runs"}}},
    "Clones": {"type": "object", "properties": {"domains": {"type": "array", "items": {"$ref": "#/components/schemas/Created"}}}},
    "MigrateRequest": {"type": "object", "additionalProperties": False, "required": ["host", "port"], "properties": {
        "host": {"type": "string"}, "port": {"type": "integer", "minimum": 1, "maximum": 65535}}},
    "Migrated": {"type": "object", "properties": {"seconds": {"type": "number"}, "downtime": {"type": "number"},
                                                   "rounds": {"type": "integer"}}},
    "SchedParams": DOMAIN_CONFIG["properties"]["sched"],
    "CtxAllow": {"type": "object", "additionalProperties": False, "required": ["ctx_allow_ms"],
                 "properties": {"ctx_allow_ms": {"type": "integer", "minimum": 1, "maximum": 10000}}},
    "DomainSched": {"type": "object", "description": "a domain's BVT parameters and, when scheduled, per vCPU "
                    "its actual and effective virtual time (avt_ns, evt_ns) and share of its pool CPU"},
    "Sched": {"type": "object", "properties": {
        "enabled": {"type": "boolean"}, "pool": {"type": "array", "items": {"type": "integer"}},
        "ctx_allow_ms": {"type": "integer"}, "dispatcher_cpu_seconds": {"type": "number"},
        "domains": {"type": "array", "items": {"$ref": "#/components/schemas/DomainSched"}}}},
}


def _ref(name: str) -> dict[str, Any]:
    return {"$ref": f"#/components/schemas/{name}"}


def _json(schema: dict[str, Any], description: str = "done") -> dict[str, Any]:
    return {"description": description, "content": {"application/json": {"schema": schema}}}


ERRORS = {
    "400": _json(_ref("Error"), "bad request; nothing changed"),
    "404": _json(_ref("Error"), "no such domain"),
    "409": _json(_ref("Error"), "refused in the domain's state"),
    "504": _json(_ref("Error"), "the domain did not answer in time"),
}

# path -> method -> (summary, request schema or None, 2xx status, response schema)
OPERATIONS: dict[str, dict[str, tuple[str, str | None, str, dict[str, Any]]]] = {
    "/openapi.json": {"get": ("this document", None, "200", {"type": "object"})},
    "/version": {"get": ("pyhvd's version and how many domains it runs", None, "200", {"type": "object"})},
    "/metrics": {"get": ("every domain's counters, Prometheus text format", None, "200", {"type": "string"})},
    "/domains": {
        "get": ("list the domains", None, "200", {"type": "array", "items": _ref("DomainSummary")}),
        "post": ("create and start a domain", "CreateRequest", "201", _ref("Created")),
    },
    "/domains/{dom}": {
        "get": ("one domain in detail", None, "200", _ref("DomainSummary")),
        "delete": ("destroy the domain", None, "200", _ref("Empty")),
    },
    "/domains/{dom}/pause": {"post": ("pause every vCPU", "Empty", "200", _ref("Empty"))},
    "/domains/{dom}/unpause": {"post": ("resume every vCPU", "Empty", "200", _ref("Empty"))},
    "/domains/{dom}/shutdown": {"post": ("power the domain off", "Empty", "200", _ref("Empty"))},
    "/domains/{dom}/reboot": {"post": ("reset the domain", "Empty", "200", _ref("Empty"))},
    "/restore": {"post": ("a domain from a snapshot file (checked before anything runs)", "RestoreRequest", "201",
                          _ref("Created"))},
    "/clone": {"post": ("count domains from one snapshot file, each with its own name, VM generation ID, NIC "
                        "TAPs and MACs, vsock socket and CID; memory shared copy-on-write; all or none start",
                        "CloneRequest", "201", _ref("Clones"))},
    "/domains/{dom}/save": {"post": ("save the whole domain to a snapshot file; then destroy (default), "
                                     "continue or pause", "SaveRequest", "200", _ref("Saved"))},
    "/domains/{dom}/migrate": {"post": ("live-migrate to the pyhvd listening at host:port (shared key); the "
                                        "domain runs on here if it fails", "MigrateRequest", "200",
                                        _ref("Migrated"))},
    "/domains/{dom}/memory": {"put": ("balloon the domain to a memory target (bytes)", "MemoryRequest", "200",
                                      _ref("Empty"))},
    "/domains/{dom}/maxmem": {"put": ("the most memory a target may ask for", "MaxmemRequest", "200",
                                      _ref("Empty"))},
    "/domains/{dom}/vcpus": {"get": ("the domain's vCPUs", None, "200", {"type": "array", "items": _ref("Vcpu")})},
    "/domains/{dom}/vcpus/{vcpu}/affinity": {"put": ("confine vCPUs to host CPUs", "AffinityRequest", "200",
                                                     _ref("Empty"))},
    "/domains/{dom}/console": {"get": ("the end of the console log", None, "200", {
        "type": "object", "properties": {"log": {"type": "string"}}})},
    "/domains/{dom}/metrics": {"get": ("the domain's counters", None, "200", {"type": "object"})},
    "/domains/{dom}/gdb": {
        "post": ("start a GDB remote stub in the domain (one at a time)", "GdbRequest", "200", _ref("GdbStub")),
        "delete": ("stop the domain's GDB stub (a debugger still attached is detached)", None, "200",
                   _ref("GdbStub")),
    },
    "/sched": {
        "get": ("the BVT dispatcher and every domain's parameters", None, "200", _ref("Sched")),
        "put": ("set the context-switch allowance", "CtxAllow", "200", _ref("Empty")),
    },
    "/domains/{dom}/sched": {
        "get": ("the domain's BVT parameters and vCPU virtual times", None, "200", _ref("DomainSched")),
        "put": ("change some of the domain's BVT parameters (they apply at once)", "SchedParams", "200",
                _ref("Empty")),
    },
    "/domains/{dom}/disks": {
        "get": ("the domain's disks", None, "200", {"type": "array", "items": {"type": "object"}}),
        "post": ("attach a disk (not supported yet: 501)", "Empty", "200", _ref("Empty")),
    },
    "/domains/{dom}/disks/{index}": {"delete": ("detach a disk (not supported yet: 501)", None, "200",
                                                _ref("Empty"))},
    "/domains/{dom}/nics": {
        "get": ("the domain's network adapters", None, "200", {"type": "array", "items": {"type": "object"}}),
        "post": ("attach an adapter (not supported yet: 501)", "Empty", "200", _ref("Empty")),
    },
    "/domains/{dom}/nics/{index}": {"delete": ("detach an adapter (not supported yet: 501)", None, "200",
                                               _ref("Empty"))},
}

PARAMETERS = {
    "dom": {"description": "domain id or name", "schema": {"type": "string"}},
    "vcpu": {"description": "vCPU index or all", "schema": {"type": "string", "pattern": "^(all|[0-9]{1,4})$"}},
    "index": {"description": "device index", "schema": {"type": "integer", "minimum": 0, "maximum": 9999}},
}


def document() -> dict[str, Any]:
    paths: dict[str, Any] = {}
    for path, methods in OPERATIONS.items():
        item: dict[str, Any] = {}
        params = [{"name": p, "in": "path", "required": True, **PARAMETERS[p]}
                  for p in PARAMETERS if "{" + p + "}" in path]
        if params:
            item["parameters"] = params
        for method, (summary, request, status, response) in methods.items():
            op: dict[str, Any] = {"summary": summary, "responses": {status: _json(response)}}
            op["responses"]["400"] = ERRORS["400"]  # any request can be malformed (e.g. a body that is not JSON)
            op["responses"]["413"] = _json(_ref("Error"), "the request body is larger than 1 MiB")
            op["responses"]["503"] = _json(_ref("Error"), "pyhvd cannot serve it now (too many connections, or "
                                           "out of a resource such as disk space); nothing changed")
            if "{dom}" in path:
                op["responses"].update(ERRORS)
            if path in ("/restore", "/clone", "/domains/{dom}/save"):
                op["responses"]["403"] = _json(_ref("Error"), "the path is outside pyhvd's snapshot directory")
            if "not supported" in summary:
                op["responses"]["501"] = _json(_ref("Error"), "not supported yet")
            if path == "/domains/{dom}/console":
                op["parameters"] = [{"name": "bytes", "in": "query", "required": False,
                                     "schema": {"type": "integer", "minimum": 1, "maximum": 8388608}}]
            if request:
                op["requestBody"] = {"required": True,
                                     "content": {"application/json": {"schema": _ref(request)}}}
            item[method] = op
        paths[path] = item
    return {
        "openapi": "3.0.3",
        "info": {"title": "pyhvd", "version": __version__,
                 "description": "The pyhv control domain: JSON over HTTP/1.1 on a unix socket."},
        "paths": paths,
        "components": {"schemas": SCHEMAS},
    }


if __name__ == "__main__":
    print(json.dumps(document(), indent=2))
