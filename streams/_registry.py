"""A client of a Confluent-compatible schema registry: the subset of its REST protocol the store uses.

Writers (``publish_schemas``) register each writer schema under the subject ``<topic>-value`` (the
TopicNameStrategy every Confluent-format tool assumes), set the subject's compatibility mode to
``COMPATIBILITY`` and take the id the registry answers: once per process and schema, cached here, never
per record. Readers (``streams.SchemaResolver``) fetch the schema of an id they do not know with
``GET /schemas/ids/{id}``; the codecs keep what they learned.

Requests are plain HTTP with the standard library (the base install is the client only: no HTTP
library), in a worker thread so the event loop never blocks on the registry. Every answer is read up
to ``schema_registry_max_response_bytes``; anything longer, not JSON, a 5xx or no answer at all is
``SchemaRegistryUnavailable`` (retriable). A writer never falls back to the single-object format when
the registry is unreachable: the write fails with that error, so every record a writer of a
registry-configured deployment produced can be looked up by id (docs/events.md).

Endpoints used (Confluent's API; Apicurio serves them under ``/apis/ccompat/v7``):

* ``POST /subjects/{subject}/versions`` ``{"schema": "<json>", "schemaType": "AVRO"}`` -> ``{"id": n}``;
  409 when incompatible, 422 when invalid (``SchemaRejected``);
* ``PUT /config/{subject}`` ``{"compatibility": "FULL_TRANSITIVE"}``;
* ``GET /config/{subject}`` -> ``{"compatibilityLevel": ...}``;
* ``GET /schemas/ids/{id}`` -> ``{"schema": "<json>"}``; 404 when no schema has the id;
* ``GET /subjects/{subject}/versions`` -> ``[1, 2, ...]``.
"""

from __future__ import annotations

import asyncio
import base64
import json
import logging
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Mapping
from typing import Any

from assessment_store.core import SchemaRegistryUnavailable, SchemaRejected, Settings
from assessment_store.schemas import AvroRecordCodec

__all__ = ["COMPATIBILITY", "SchemaRegistryClient", "register_writer_schemas", "registry_subject"]

log = logging.getLogger("assessment_store.schemas")

COMPATIBILITY = "FULL_TRANSITIVE"
"""The mode set on every subject the store writes: each new version must read, and be read by, every
earlier one (docs/events.md, "Compatibility rules", says why not BACKWARD_TRANSITIVE)."""

_CONTENT_TYPE = "application/vnd.schemaregistry.v1+json"

# (registry url, subject, fingerprint) -> schema id: the registrations of this process.
_registered: dict[tuple[str, str, str], int] = {}


def registry_subject(topic: str) -> str:
    """The TopicNameStrategy subject of a topic's record values."""
    return f"{topic}-value"


class SchemaRegistryClient:
    """Blocking requests run in a worker thread; one instance per process is enough (it holds no
    connection: every request opens and closes its own)."""

    def __init__(self, settings: Settings) -> None:
        if settings.schema_registry_url is None:
            raise ValueError("no schema registry configured (ASSESSMENT_STORE_SCHEMA_REGISTRY_URL)")
        self.url: str = settings.schema_registry_url
        self.timeout_s = settings.schema_registry_timeout_s
        self.max_bytes = settings.schema_registry_max_response_bytes
        self._auth: str | None = None
        if settings.schema_registry_username is not None:
            password = settings.schema_registry_password.get_secret_value() if settings.schema_registry_password else ""
            token = base64.b64encode(f"{settings.schema_registry_username}:{password}".encode()).decode()
            self._auth = f"Basic {token}"
        self.requests = 0
        """HTTP requests sent (tests check that records cost none)"""

    # --- the protocol ------------------------------------------------------------------

    async def register(self, subject: str, schema_json: str) -> int:
        """The id of ``schema_json`` under ``subject``, registering it as the next version if new."""
        status, body = await self._call("POST", f"/subjects/{_quote(subject)}/versions",
                                        {"schema": schema_json, "schemaType": "AVRO"})
        if status in (409, 422):
            raise SchemaRejected(subject, status, _message(body))
        schema_id = body.get("id") if isinstance(body, dict) else None
        if status != 200 or not isinstance(schema_id, int) or isinstance(schema_id, bool):
            raise self._nonsense(f"registering a schema under {subject!r}", status, body)
        return schema_id

    async def set_compatibility(self, subject: str, level: str = COMPATIBILITY) -> bool:
        """Set the subject's mode; False when the registry keeps modes of existing subjects only
        (Apicurio answers 404 before the first version) and the subject has none yet."""
        status, body = await self._call("PUT", f"/config/{_quote(subject)}", {"compatibility": level})
        if status == 404:
            return False
        if status == 422:
            raise SchemaRejected(subject, status, _message(body))
        if status != 200:
            raise self._nonsense(f"setting the compatibility of {subject!r}", status, body)
        return True

    async def compatibility(self, subject: str) -> str | None:
        """The subject's own mode, None when it has none (the registry's default applies)."""
        status, body = await self._call("GET", f"/config/{_quote(subject)}")
        if status == 404:
            return None
        if status != 200 or not isinstance(body, dict):
            raise self._nonsense(f"reading the compatibility of {subject!r}", status, body)
        level = body.get("compatibilityLevel", body.get("compatibility"))
        return level if isinstance(level, str) else None

    async def schema_by_id(self, schema_id: int) -> str | None:
        """The schema (its JSON text) the registry keeps under ``schema_id``, None when it has none."""
        status, body = await self._call("GET", f"/schemas/ids/{int(schema_id)}")
        if status == 404:
            return None
        schema = body.get("schema") if isinstance(body, dict) else None
        if status != 200 or not isinstance(schema, str):
            raise self._nonsense(f"reading schema id {schema_id}", status, body)
        return schema

    async def subject_versions(self, subject: str) -> list[int]:
        status, body = await self._call("GET", f"/subjects/{_quote(subject)}/versions")
        if status == 404:
            return []
        if status != 200 or not isinstance(body, list) or not all(isinstance(v, int) for v in body):
            raise self._nonsense(f"listing the versions of {subject!r}", status, body)
        return list(body)

    # --- HTTP ---------------------------------------------------------------------------

    def _nonsense(self, what: str, status: int, body: object) -> SchemaRegistryUnavailable:
        return SchemaRegistryUnavailable(self.url, f"{what}: unexpected answer {str(body)[:200]!r}", status)

    async def _call(self, method: str, path: str, payload: object = None) -> tuple[int, Any]:
        self.requests += 1
        return await asyncio.to_thread(self._request, method, path, payload)

    def _request(self, method: str, path: str, payload: object) -> tuple[int, Any]:
        """(status, parsed JSON body) for any answer below 500; anything else raises."""
        data = json.dumps(payload).encode() if payload is not None else None
        headers = {"Accept": f"{_CONTENT_TYPE}, application/json"}
        if data is not None:
            headers["Content-Type"] = _CONTENT_TYPE
        if self._auth is not None:
            headers["Authorization"] = self._auth
        request = urllib.request.Request(self.url + path, data=data, method=method, headers=headers)
        try:
            with urllib.request.urlopen(request, timeout=self.timeout_s) as answer:  # noqa: S310 (http(s) only: Settings)
                status, raw = answer.status, answer.read(self.max_bytes + 1)
        except urllib.error.HTTPError as e:
            status, raw = e.code, e.read(self.max_bytes + 1) if e.fp is not None else b""
        except (OSError, ValueError) as e:  # refused, timed out, DNS, TLS, a malformed answer
            raise SchemaRegistryUnavailable(self.url, f"{method} {path}: {type(e).__name__}: {e}") from e
        if len(raw) > self.max_bytes:
            raise SchemaRegistryUnavailable(self.url, f"{method} {path}: answer longer than {self.max_bytes} bytes",
                                            status)
        if status >= 500:
            raise SchemaRegistryUnavailable(self.url, f"{method} {path}: {raw[:200]!r}", status)
        if status in (401, 403):
            e401 = SchemaRegistryUnavailable(self.url, f"{method} {path}: access refused (check "
                                             "schema_registry_username/password)", status)
            e401.retriable = False
            raise e401
        try:
            return status, json.loads(raw) if raw else None
        except ValueError as e:
            raise SchemaRegistryUnavailable(self.url, f"{method} {path}: not JSON: {raw[:200]!r}", status) from e


def _quote(subject: str) -> str:
    return urllib.parse.quote(subject, safe="")


def _message(body: object) -> str:
    if isinstance(body, dict) and isinstance(body.get("message"), str):
        return str(body["message"])[:1000]
    return str(body)[:1000]


async def register_writer_schemas(settings: Settings, codecs: Mapping[str, AvroRecordCodec],
                                  client: SchemaRegistryClient | None = None) -> None:
    """Register each codec's schema under its topic's subject and switch the codec to the Confluent
    format with the id: before a writer's first record, so every record it writes names an id the
    registry has. Once per process, subject and schema (later calls take the id from the cache)."""
    registry = client or SchemaRegistryClient(settings)
    for topic, codec in codecs.items():
        subject = registry_subject(topic)
        key = (registry.url, subject, codec.fingerprint)
        schema_id = _registered.get(key)
        if schema_id is None:
            # The mode first: the registration below is then checked against it (the subject's earlier
            # versions, if any). Setting the same mode again changes nothing. A registry that keeps modes
            # of existing subjects only gets it right after the first version, which has nothing to
            # be checked against.
            mode_set = await registry.set_compatibility(subject)
            schema_id = await registry.register(subject, codec.schema_json)
            if not mode_set and not await registry.set_compatibility(subject):
                raise SchemaRegistryUnavailable(registry.url, f"cannot set the compatibility of {subject!r}", 404)
            _registered[key] = schema_id
            log.info("writer schema %s registered under %s as id %d (%s)", codec.fingerprint, subject, schema_id,
                     registry.url)
        codec.use_registry_id(schema_id)
