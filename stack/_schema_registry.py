"""A minimal Confluent-compatible schema registry: a test double of the *protocol*, not a registry
to run a deployment on.

Apicurio Registry (the registry the store is meant to run beside, through its Confluent-compatible
API ``/apis/ccompat/v7``) cannot be built from the Maven artifacts this project can fetch: several of
its own runtime modules (``apicurio-registry-schema-util-*``, ``-contracts-rules``, ``-config-*``) are
not published there for the versions that are (docs/events.md, "The local schema registry"). So the
local stack's ``schema-registry`` service is this: the subset of Confluent's REST API the store uses,
with Confluent's semantics, so the store's client, its writers and readers are exercised over real
HTTP against the same requests and answers a real registry gives:

* ``POST /subjects/{subject}/versions`` ``{"schema", "schemaType"?}``: 200 ``{"id"}``; the same schema
  (by Parsing Canonical Form) again returns its id, under any subject; 409 (``error_code`` 409) when
  incompatible with the subject's versions under its mode; 422 (42201) when not an Avro schema;
* ``GET /schemas/ids/{id}``: ``{"schema"}``, 404 (40403);
* ``GET /subjects``; ``GET /subjects/{subject}/versions``: ``[1, ...]``, 404 (40401);
  ``GET /subjects/{subject}/versions/{version|latest}``: ``{"subject", "version", "id", "schema"}``;
* ``GET``/``PUT /config`` and ``/config/{subject}``: ``{"compatibilityLevel"}`` / ``{"compatibility"}``
  (NONE, BACKWARD, FORWARD, FULL, each also ``_TRANSITIVE``; default BACKWARD, as Confluent's);
  a subject without its own mode: 404 (40408).

Compatibility is judged with ``schemas.incompatibilities`` (the Avro resolution rules, the same check
the store's own schema tests use). Requests are limited to 1 MB. What it does not do: other schema
types, references, deletes, modes, contexts, authentication. State lives in memory and, given a
``state_file``, in that JSON file (rewritten on each change), so a restarted registry keeps its ids.
"""

from __future__ import annotations

import json
import os
import re
import sys
import threading
from http import HTTPStatus
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import fastavro
from fastavro.schema import to_parsing_canonical_form

from assessment_store.schemas import incompatibilities

from ._prometheus import _DebianDaemon

__all__ = ["MiniSchemaRegistry", "SchemaRegistryService"]

_MAX_BODY = 1_000_000
_LEVELS = {"NONE", "BACKWARD", "BACKWARD_TRANSITIVE", "FORWARD", "FORWARD_TRANSITIVE", "FULL", "FULL_TRANSITIVE"}
_CONTENT_TYPE = "application/vnd.schemaregistry.v1+json"


class _Refused(Exception):
    def __init__(self, status: int, error_code: int, message: str) -> None:
        super().__init__(message)
        self.status, self.error_code, self.message = status, error_code, message


class _State:
    """Schemas by id, subjects' versions (lists of ids) and modes; every method holds the lock."""

    def __init__(self, state_file: Path | None) -> None:
        self.lock = threading.Lock()
        self.state_file = state_file
        self.schemas: dict[int, str] = {}
        self.canonical: dict[str, int] = {}
        self.subjects: dict[str, list[int]] = {}
        self.config: dict[str, str] = {}
        self.default_level = "BACKWARD"
        if state_file is not None and state_file.exists():
            saved = json.loads(state_file.read_text())
            self.schemas = {int(k): v for k, v in saved["schemas"].items()}
            self.subjects = saved["subjects"]
            self.config = saved["config"]
            self.default_level = saved.get("default_level", "BACKWARD")
            self.canonical = {_canonical(text): schema_id for schema_id, text in self.schemas.items()}

    def save(self) -> None:
        if self.state_file is None:
            return
        tmp = self.state_file.with_suffix(".tmp")
        tmp.write_text(json.dumps({"schemas": self.schemas, "subjects": self.subjects, "config": self.config,
                                   "default_level": self.default_level}))
        os.replace(tmp, self.state_file)

    def register(self, subject: str, text: str) -> int:
        try:
            canonical = _canonical(text)
        except (ValueError, TypeError, KeyError, AttributeError) as e:
            raise _Refused(422, 42201, f"Invalid schema: {type(e).__name__}: {e}") from e
        versions = self.subjects.get(subject, [])
        existing = self.canonical.get(canonical)
        if existing is not None and existing in versions:
            return existing
        level = self.config.get(subject, self.default_level)
        problems = self._check(level, versions, text)
        if problems:
            raise _Refused(409, 409, f"Schema being registered is incompatible with an earlier schema for subject "
                                     f"{subject!r} ({level}): {'; '.join(problems)}")
        if existing is None:
            existing = max(self.schemas, default=0) + 1
            self.schemas[existing] = text
            self.canonical[canonical] = existing
        self.subjects.setdefault(subject, []).append(existing)
        self.save()
        return existing

    def _check(self, level: str, versions: list[int], text: str) -> list[str]:
        if level == "NONE" or not versions:
            return []
        against = versions if level.endswith("_TRANSITIVE") else versions[-1:]
        new = json.loads(text)
        problems: list[str] = []
        for schema_id in against:
            old = json.loads(self.schemas[schema_id])
            if level.startswith(("BACKWARD", "FULL")):
                problems += [f"new cannot read id {schema_id}: {p}" for p in incompatibilities(new, old)]
            if level.startswith(("FORWARD", "FULL")):
                problems += [f"id {schema_id} cannot read new: {p}" for p in incompatibilities(old, new)]
        return problems


def _canonical(text: str) -> str:
    return str(to_parsing_canonical_form(fastavro.parse_schema(json.loads(text))))


class MiniSchemaRegistry:
    """``with MiniSchemaRegistry(port=0) as registry: registry.url`` serves in a background thread;
    ``serve_forever`` in the foreground (the stack's ``schema-registry`` process)."""

    def __init__(self, host: str = "127.0.0.1", port: int = 0, state_file: Path | None = None) -> None:
        self.state = _State(state_file)
        self.requests: list[tuple[str, str]] = []
        """(method, path) of every request served, for tests that count round trips"""
        self._server = ThreadingHTTPServer((host, port), _handler(self))
        self._server.daemon_threads = True
        self._thread: threading.Thread | None = None

    @property
    def url(self) -> str:
        host, port = self._server.server_address[:2]
        return f"http://{host!s}:{port}"

    def serve_forever(self) -> None:
        self._server.serve_forever(poll_interval=0.2)

    def start(self) -> MiniSchemaRegistry:
        self._thread = threading.Thread(target=self.serve_forever, name="mini-schema-registry", daemon=True)
        self._thread.start()
        return self

    def close(self) -> None:
        if self._thread is not None:
            self._server.shutdown()
            self._thread.join(timeout=10)
            self._thread = None
        self._server.server_close()

    def __enter__(self) -> MiniSchemaRegistry:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.close()

    # --- the protocol -----------------------------------------------------------------

    def handle(self, method: str, path: str, body: Any) -> tuple[int, Any]:
        self.requests.append((method, path))
        st = self.state
        parts = [p for p in path.split("?", 1)[0].split("/") if p]
        parts = [_unquote(p) for p in parts]
        with st.lock:
            match method, parts:
                case "POST", ["subjects", subject, "versions"]:
                    text = body.get("schema") if isinstance(body, dict) else None
                    kind = body.get("schemaType", "AVRO") if isinstance(body, dict) else "AVRO"
                    if not isinstance(text, str) or kind != "AVRO":
                        raise _Refused(422, 42201, "Invalid schema: an AVRO 'schema' string is required")
                    return 200, {"id": st.register(subject, text)}
                case "GET", ["schemas", "ids", raw_id]:
                    text = st.schemas.get(int(raw_id)) if raw_id.isdigit() else None
                    if text is None:
                        raise _Refused(404, 40403, "Schema not found")
                    return 200, {"schema": text}
                case "GET", ["subjects"]:
                    return 200, sorted(st.subjects)
                case "GET", ["subjects", subject, "versions"]:
                    return 200, list(range(1, len(_versions(st, subject)) + 1))
                case "GET", ["subjects", subject, "versions", version]:
                    ids = _versions(st, subject)
                    n = len(ids) if version == "latest" else int(version) if version.isdigit() else 0
                    if not 1 <= n <= len(ids):
                        raise _Refused(404, 40402, "Version not found")
                    return 200, {"subject": subject, "version": n, "id": ids[n - 1], "schema": st.schemas[ids[n - 1]]}
                case "GET", ["config"]:
                    return 200, {"compatibilityLevel": st.default_level}
                case "GET", ["config", subject]:
                    if subject not in st.config:
                        raise _Refused(404, 40408, f"Subject '{subject}' does not have subject-level compatibility "
                                                   "configured")
                    return 200, {"compatibilityLevel": st.config[subject]}
                case "PUT", ["config", *rest] if len(rest) <= 1:
                    level = body.get("compatibility") if isinstance(body, dict) else None
                    if level not in _LEVELS:
                        raise _Refused(422, 42203, f"Invalid compatibility level {level!r}")
                    if rest:
                        st.config[rest[0]] = str(level)
                    else:
                        st.default_level = str(level)
                    st.save()
                    return 200, {"compatibility": level}
        raise _Refused(404, 404, f"no such endpoint: {method} {path}")


def _versions(st: _State, subject: str) -> list[int]:
    ids = st.subjects.get(subject)
    if not ids:
        raise _Refused(404, 40401, f"Subject '{subject}' not found.")
    return ids


def _unquote(part: str) -> str:
    from urllib.parse import unquote
    return unquote(part)


_ALLOWED_PATH = re.compile(r"^/[A-Za-z0-9._~%/\-:?=&]*$")


def _handler(registry: MiniSchemaRegistry) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def log_message(self, format: str, *args: Any) -> None:  # noqa: A002 - the base class's name
            pass  # quiet: a test double

        def _serve(self, method: str) -> None:
            try:
                length = int(self.headers.get("Content-Length") or 0)
                if length > _MAX_BODY:
                    raise _Refused(413, 413, f"request body over {_MAX_BODY} bytes")
                raw = self.rfile.read(length) if length else b""
                if not _ALLOWED_PATH.match(self.path):
                    raise _Refused(404, 404, "no such endpoint")
                try:
                    body = json.loads(raw) if raw else None
                except ValueError as e:
                    raise _Refused(400, 400, f"not JSON: {e}") from e
                status, answer = registry.handle(method, self.path, body)
            except _Refused as e:
                status, answer = e.status, {"error_code": e.error_code, "message": e.message}
            payload = json.dumps(answer).encode()
            self.send_response(HTTPStatus(status))
            self.send_header("Content-Type", _CONTENT_TYPE)
            self.send_header("Content-Length", str(len(payload)))
            self.end_headers()
            self.wfile.write(payload)

        def do_GET(self) -> None:  # noqa: N802 - http.server's names
            self._serve("GET")

        def do_POST(self) -> None:  # noqa: N802
            self._serve("POST")

        def do_PUT(self) -> None:  # noqa: N802
            self._serve("PUT")

    return Handler


class SchemaRegistryService(_DebianDaemon):
    """The stack's opt-in ``schema-registry``: ``MiniSchemaRegistry`` in its own process
    (``assessment-store schema-registry``), on 127.0.0.1:``schema_registry_port``, its state in
    ``<data_dir>/schema-registry/state.json``. Writers use it once ``ASSESSMENT_STORE_SCHEMA_REGISTRY_URL``
    is its ``url`` (``stack up schema-registry`` prints the export)."""

    name = "schema-registry"
    binary = sys.executable

    @property
    def port(self) -> int:
        return self.settings.schema_registry_port

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def _ready_url(self) -> str:
        return f"{self.url}/config"

    def _arguments(self) -> list[str]:
        return ["-m", "assessment_store.cli", "schema-registry", "--host", "127.0.0.1", "--port", str(self.port),
                "--state-file", str(self.home / "state.json")]
