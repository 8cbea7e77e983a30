"""The Confluent wire format and the schema registry client, without Kafka: the three formats told
apart by their first bytes, the client's requests and errors against the in-repo registry (a double
of the Confluent protocol, stack.MiniSchemaRegistry), registration cached per process, and readers
resolving registry ids once, not per record."""

from __future__ import annotations

import copy
import io
import json
import threading
from collections.abc import Iterator
from datetime import UTC, datetime
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import fastavro
import pytest
from aiokafka import TopicPartition
from aiokafka.structs import ConsumerRecord

from assessment_store import Settings
from assessment_store.core import (
    Cancelled, CodecError, Created, Event, SchemaRegistryUnavailable, SchemaRejected, Started, UnresolvableSchema,
)
from assessment_store.schemas import (
    FINGERPRINT_HEADER, SCHEMA_DIR, CommandCodec, EventCodec, OutcomeCodec, writer_ref,
)
from assessment_store.stack import MiniSchemaRegistry
from assessment_store.streams import (
    COMPATIBILITY, SchemaRegistryClient, SchemaResolver, register_writer_schemas, registry_subject,
)

NOW = datetime(2026, 5, 6, 7, 8, 9, tzinfo=UTC)


@pytest.fixture
def registry() -> Iterator[MiniSchemaRegistry]:
    with MiniSchemaRegistry(port=0) as r:
        yield r


def _settings(url: str, **more: Any) -> Settings:
    return Settings(schema_registry_url=url, **more)


def _newer_event_schema() -> dict[str, Any]:
    """The event schema with one more optional field (a newer writer)."""
    newer: dict[str, Any] = copy.deepcopy(json.loads((SCHEMA_DIR / "assessment_event.avsc").read_text()))
    newer["fields"].insert(-1, {"name": "tenant", "type": ["null", "string"], "default": None})
    return newer


def _old_format(codec: EventCodec, ev: Event) -> tuple[bytes, list[tuple[str, bytes]]]:
    """``ev`` as the store wrote it before the single-object encoding: schemaless, fingerprint header."""
    buf = io.BytesIO()
    value, headers = codec.encode(ev)
    record = fastavro.schemaless_reader(io.BytesIO(value[10:]), codec.avro.parsed, return_record_name=True)
    fastavro.schemaless_writer(buf, codec.avro.parsed, record)
    return buf.getvalue(), [*headers, (FINGERPRINT_HEADER, codec.fingerprint.encode())]


def test_the_confluent_format_is_magic_zero_a_big_endian_id_and_the_avro_body() -> None:
    """After use_registry_id, a record is 00 + 4-byte big-endian id + the same Avro body; it decodes to the event."""
    ev = Event("cf-1", 1, Created({"a": 1}, 1000, 2), NOW, NOW, event_id="e-1")
    single = EventCodec()
    confluent = EventCodec()
    confluent.avro.use_registry_id(0x01020304)
    value, headers = confluent.encode(ev)
    assert value[:5] == b"\x00\x01\x02\x03\x04"
    assert value[5:] == single.encode(ev)[0][10:]  # the body does not depend on the framing
    assert FINGERPRINT_HEADER not in dict(headers)
    assert confluent.decode(value, headers) == ev
    assert writer_ref(value, headers) == "id:16909060"


def test_each_format_is_told_apart_by_its_first_bytes() -> None:
    """A single object, a Confluent record and an old header-format record each decode by their own rule."""
    ev = Event("fmt-1", 2, Started("w"), NOW, NOW, event_id="e-2")
    reader = EventCodec()
    reader.avro.use_registry_id(7)  # a reader that knows id 7 is this schema
    writer = EventCodec()
    single = writer.encode(ev)
    old = _old_format(writer, ev)
    writer.avro.use_registry_id(7)
    confluent = writer.encode(ev)
    assert (single[0][:2], confluent[0][:1]) == (b"\xc3\x01", b"\x00")
    assert old[0][0] not in (0x00, 0xC3)
    for value, headers in (single, confluent, old):
        assert reader.decode(value, headers) == ev
    assert writer_ref(*single) == writer_ref(*old) == writer.fingerprint
    assert writer_ref(*confluent) == "id:7"


def test_no_old_record_can_start_like_a_newer_format() -> None:
    """An old record's first byte is its first string's zigzag length: never C3 (odd: negative), 00 only when empty."""
    for codec in (EventCodec().avro, CommandCodec().avro, OutcomeCodec().avro):
        assert codec.raw["fields"][0]["type"] == "string"  # the argument rests on this
    for n in range(1, 5000):
        first = io.BytesIO()
        fastavro.schemaless_writer(first, "string", "x" * n)
        assert first.getvalue()[0] not in (0x00, 0xC3), n
    # An empty first field would start with 00, but old records carry the fingerprint header, which wins.
    empty = io.BytesIO()
    fastavro.schemaless_writer(empty, "string", "")
    assert empty.getvalue()[:1] == b"\x00"
    codec = EventCodec()
    value, headers = _old_format(codec, Event("x", 1, Started(), NOW, NOW, event_id=""))
    assert value[:1] == b"\x00" and codec.decode(value, headers).event_id == ""


def test_an_unknown_registry_id_is_unresolvable_and_a_truncated_header_corrupt() -> None:
    """A Confluent record naming an id the reader has not learned raises UnresolvableSchema (id:N); 3 bytes are corrupt."""
    writer = EventCodec()
    writer.avro.use_registry_id(99)
    value, headers = writer.encode(Event("u-1", 1, Started(), NOW, NOW))
    with pytest.raises(UnresolvableSchema) as info:
        EventCodec().decode(value, headers)
    assert info.value.fingerprint == "id:99"
    with pytest.raises(CodecError) as corrupt:
        EventCodec().decode(b"\x00\x00\x01", [])
    assert not isinstance(corrupt.value, UnresolvableSchema)


async def test_the_client_registers_sets_compatibility_and_reads_by_id(registry: MiniSchemaRegistry) -> None:
    """register returns one id per schema (same schema, same id), the mode is kept, GET by id returns the schema."""
    client = SchemaRegistryClient(_settings(registry.url))
    codec = EventCodec().avro
    subject = registry_subject("t.events")
    assert await client.set_compatibility(subject) is True
    first = await client.register(subject, codec.schema_json)
    assert await client.register(subject, codec.schema_json) == first
    assert await client.subject_versions(subject) == [1]
    assert await client.compatibility(subject) == COMPATIBILITY == "FULL_TRANSITIVE"
    assert json.loads(await client.schema_by_id(first) or "null") == codec.raw
    assert await client.schema_by_id(first + 1000) is None
    assert await client.subject_versions("nobody-value") == []
    newer = await client.register(subject, json.dumps(_newer_event_schema()))
    assert newer != first and await client.subject_versions(subject) == [1, 2]


async def test_an_incompatible_schema_is_rejected_under_full_transitive(registry: MiniSchemaRegistry) -> None:
    """A new required field (old readers could not read it... and it cannot read old records) is a 409: SchemaRejected."""
    client = SchemaRegistryClient(_settings(registry.url))
    subject = registry_subject("t2.events")
    await client.set_compatibility(subject)
    await client.register(subject, EventCodec().avro.schema_json)
    broken = _newer_event_schema()
    broken["fields"][-2] = {"name": "tenant", "type": "string"}  # required: no default
    with pytest.raises(SchemaRejected) as info:
        await client.register(subject, json.dumps(broken))
    assert info.value.status == 409 and info.value.subject == subject and not info.value.retriable
    with pytest.raises(SchemaRejected):
        await client.register(subject, '{"type": "record", "name": "X", "fields": [{"name": "a", "type": "nope"}]}')


async def test_an_unreachable_registry_is_a_retriable_named_error() -> None:
    """Nothing listening: SchemaRegistryUnavailable (a BackendError, retriable), naming the URL; no silent fallback."""
    with MiniSchemaRegistry(port=0) as gone:
        url = gone.url
    codec = EventCodec().avro
    with pytest.raises(SchemaRegistryUnavailable) as info:
        await register_writer_schemas(_settings(url, schema_registry_timeout_s=2), {"gone.events": codec})
    assert info.value.retriable and info.value.url == url
    assert codec.registry_id is None and codec.encode  # still the single-object codec, nothing was written


@pytest.fixture
def misbehaving() -> Iterator[tuple[str, dict[str, Any]]]:
    """An HTTP server answering whatever the test puts in ``answer`` (status, body bytes)."""
    answer: dict[str, Any] = {"status": 200, "body": b"{}"}

    class Handler(BaseHTTPRequestHandler):
        def log_message(self, format: str, *args: Any) -> None:  # noqa: A002
            pass

        def _any(self) -> None:
            self.rfile.read(int(self.headers.get("Content-Length") or 0))
            self.send_response(answer["status"])
            self.send_header("Content-Length", str(len(answer["body"])))
            self.end_headers()
            self.wfile.write(answer["body"])

        do_GET = do_POST = do_PUT = _any  # noqa: N815

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}", answer
    finally:
        server.shutdown()
        server.server_close()


async def test_oversized_non_json_and_server_errors_are_unavailable(misbehaving: tuple[str, dict[str, Any]]) -> None:
    """An answer over the size limit, one that is not JSON, and a 5xx are SchemaRegistryUnavailable, with the status."""
    url, answer = misbehaving
    client = SchemaRegistryClient(_settings(url, schema_registry_max_response_bytes=4096))
    answer.update(status=200, body=b'{"schema": "' + b"x" * 5000 + b'"}')
    with pytest.raises(SchemaRegistryUnavailable, match="longer than 4096"):
        await client.schema_by_id(1)
    answer.update(status=200, body=b"<html>proxy</html>")
    with pytest.raises(SchemaRegistryUnavailable, match="not JSON"):
        await client.schema_by_id(1)
    answer.update(status=503, body=b"busy")
    with pytest.raises(SchemaRegistryUnavailable) as info:
        await client.register("s-value", "{}")
    assert info.value.status == 503 and info.value.retriable
    answer.update(status=200, body=b'{"id": "seven"}')
    with pytest.raises(SchemaRegistryUnavailable, match="unexpected answer"):
        await client.register("s-value", "{}")
    answer.update(status=401, body=b"{}")
    with pytest.raises(SchemaRegistryUnavailable) as denied:
        await client.schema_by_id(1)
    assert not denied.value.retriable


async def test_registration_costs_requests_once_per_process_and_schema(registry: MiniSchemaRegistry) -> None:
    """Writers register at start (mode + schema), switch to the Confluent format, and never ask again for that schema."""
    settings = _settings(registry.url)
    events, outcomes = EventCodec(), OutcomeCodec()
    await register_writer_schemas(settings, {"once.events": events.avro, "once.outcomes": outcomes.avro})
    first = list(registry.requests)
    assert sorted(first) == sorted([("PUT", "/config/once.events-value"), ("POST", "/subjects/once.events-value/versions"),
                                    ("PUT", "/config/once.outcomes-value"),
                                    ("POST", "/subjects/once.outcomes-value/versions")])
    # Another writer of the same process (a second codec object): the id comes from the cache.
    again = EventCodec()
    await register_writer_schemas(settings, {"once.events": again.avro})
    assert registry.requests == first
    assert again.avro.registry_id == events.avro.registry_id is not None
    for i in range(100):
        value, _ = again.encode(Event(f"n-{i}", 1, Cancelled("r"), NOW, NOW))
        assert value[0] == 0 and int.from_bytes(value[1:5], "big") == again.avro.registry_id
    assert registry.requests == first  # records cost no request


def _rec(value: bytes, offset: int) -> ConsumerRecord[bytes, bytes]:
    return ConsumerRecord("r.events", 0, offset, 0, 0, b"k", value, None, 1, len(value), [("type", b"x")])


async def test_a_reader_resolves_a_newer_writers_id_once_not_per_record(registry: MiniSchemaRegistry) -> None:
    """Records of a newer writer (unknown id) cost one GET /schemas/ids per id; they then decode with the new field dropped."""
    settings = _settings(registry.url)
    client = SchemaRegistryClient(settings)
    newer = _newer_event_schema()
    newer_id = await client.register("r.events-value", json.dumps(newer))
    parsed = fastavro.parse_schema(newer)
    reader = EventCodec()
    body = fastavro.schemaless_reader(io.BytesIO(reader.encode(Event("r-1", 1, Created({"k": 1}), NOW, NOW))[0][10:]),
                                      reader.avro.parsed, return_record_name=True)
    assert isinstance(body, dict)
    values = []
    for i in range(50):
        buf = io.BytesIO()
        buf.write(b"\x00" + newer_id.to_bytes(4, "big"))
        fastavro.schemaless_writer(buf, parsed, {**body, "assessment_id": f"r-{i}", "tenant": "t-1"})
        values.append(buf.getvalue())
    resolver = SchemaResolver(settings, "projector", [reader.avro], registry=client)
    records = {TopicPartition("r.events", 0): [_rec(v, i) for i, v in enumerate(values)]}
    with pytest.raises(UnresolvableSchema):
        reader.decode(values[0], [])
    before = client.requests
    assert await resolver.learn(records) is True
    assert await resolver.learn(records) is False
    assert client.requests - before == 1 and resolver.registry_lookups == 1 and resolver.lookups == 0
    decoded = [reader.decode(v, []) for v in values]
    assert [e.assessment_id for e in decoded] == [f"r-{i}" for i in range(50)]
    assert decoded[0].payload == Created({"k": 1})


async def test_an_id_the_registry_lacks_or_cannot_serve_waits_for_retry_s(registry: MiniSchemaRegistry) -> None:
    """An id the registry does not have is asked again only after retry_s; an unreachable registry is not an error here."""
    settings = _settings(registry.url)
    resolver = SchemaResolver(settings, "processor", [EventCodec().avro], retry_s=60)
    records = {TopicPartition("r.events", 0): [_rec(b"\x00\x00\x00\x30\x39rest", 0)]}
    assert await resolver.learn(records) is False
    assert await resolver.learn(records) is False
    assert resolver.registry_lookups == 1
    with MiniSchemaRegistry(port=0) as gone:
        url = gone.url
    offline = SchemaResolver(_settings(url, schema_registry_timeout_s=1), "processor", [EventCodec().avro])
    assert await offline.learn(records) is False  # logged; the record stays unresolvable, nothing raised


async def test_without_a_registry_a_confluent_record_names_where_to_configure_one() -> None:
    """No registry configured: an id cannot be looked up; the resolver says which setting is missing."""
    resolver = SchemaResolver(Settings(), "reverse-sync", [EventCodec().avro])
    assert resolver.registry is None
    assert "ASSESSMENT_STORE_SCHEMA_REGISTRY_URL" in resolver.where()
    assert await resolver.learn({TopicPartition("r.events", 0): [_rec(b"\x00\x00\x00\x00\x05x", 0)]}) is False


def test_the_registry_url_setting_is_checked() -> None:
    """http(s) only, no credentials in it, the trailing slash dropped, empty means none."""
    assert Settings(schema_registry_url="http://h:1/apis/ccompat/v7/").schema_registry_url == "http://h:1/apis/ccompat/v7"
    assert Settings(schema_registry_url="").schema_registry_url is None
    for bad in ("ftp://h/x", "http://u:p@h:1"):
        with pytest.raises(ValueError):
            Settings(schema_registry_url=bad)


def test_the_mini_registry_keeps_its_ids_across_a_restart(tmp_path: Any) -> None:
    """With a state file, a restarted registry serves the same id for the same schema (records name ids forever)."""
    import urllib.request

    state = tmp_path / "state.json"
    body = json.dumps({"schema": EventCodec().avro.schema_json}).encode()

    def post(url: str) -> int:
        req = urllib.request.Request(url + "/subjects/k.events-value/versions", data=body, method="POST",
                                     headers={"Content-Type": "application/json"})
        with urllib.request.urlopen(req, timeout=5) as answer:  # noqa: S310
            return int(json.loads(answer.read())["id"])

    with MiniSchemaRegistry(port=0, state_file=state) as first:
        schema_id = post(first.url)
    with MiniSchemaRegistry(port=0, state_file=state) as second:
        assert post(second.url) == schema_id
        assert second.requests == [("POST", "/subjects/k.events-value/versions")]


async def test_the_stack_runs_the_schema_registry_as_an_opt_in_service(tmp_path: Any) -> None:
    """`stack up schema-registry` starts a process that writers can register with; `stack down` leaves none."""
    import os

    from assessment_store.stack import Stack
    from assessment_store.testing import isolated_settings

    base = int(os.environ.get("ASSESSMENT_STORE_TEST_PORT_BASE", "29092"))
    settings = isolated_settings(tmp_path / "data", port_base=base)
    stack = Stack(settings)
    assert "schema-registry" not in stack.default_services()
    try:
        assert stack.up(["schema-registry"], log=lambda _m: None) == {"schema-registry": True}
        status = stack.schema_registry.status()
        assert status.running and status.address == f"http://127.0.0.1:{settings.schema_registry_port}"
        codec = EventCodec().avro
        await register_writer_schemas(_settings(status.address), {"svc.events": codec})
        assert codec.registry_id is not None
        assert (tmp_path / "data" / "schema-registry" / "state.json").exists()
    finally:
        stack.down(["schema-registry"], log=lambda _m: None)
    assert stack.schema_registry.pid() is None
