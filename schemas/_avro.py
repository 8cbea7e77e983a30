"""Avro records in three wire formats, with the writer schemas a reader can resolve.

Written (one format per process, chosen by ``Settings.schema_registry_url``):

* default: an Avro *single object* (the Avro specification, "Single-object encoding"): the two
  marker bytes ``C3 01``, the 8-byte little-endian CRC-64-AVRO fingerprint of the writer schema's
  Parsing Canonical Form, then the record's binary encoding. Any Avro library decodes it given the
  schema, with no registry and no header;
* with a schema registry: the Confluent wire format, ``00`` + the registry's 4-byte big-endian schema
  id + the binary encoding (``use_registry_id`` switches a codec to it once its schema is registered).

Read, whatever this process writes: both, and the records written before either (schemaless Avro,
the fingerprint as hex text in a ``schema-fingerprint`` header). The first byte tells them apart
(``writer_ref``; the argument that no record of one format looks like another is in docs/events.md):
``C3`` is never the first byte of an old record (its first field is a string whose length, a zigzag
varint, would be negative: ``C3`` has the low bit set), and ``00`` would be an empty first string, which
no record of ours has (ids are non-empty) and which carries the ``schema-fingerprint`` header anyway.

The record's kind stays in the ``type`` header, so ``kcat -J`` users can filter without Avro.

Decoding resolves the writer schema (by fingerprint or registry id) against the current reader
schema, which is what keeps old records readable after a schema gains optional fields. Writer
schemas known here are the current file, every earlier version kept in ``history/``, and any added at
run time from the schemas topic or the registry (``add_writer``); a reference none of them has, or a
writer schema that cannot be resolved into the reader's, raises ``UnresolvableSchema`` (a schema
problem: the record must not be skipped), whereas bytes that do not decode raise a plain
``CodecError`` (a corrupt record).
"""

from __future__ import annotations

import io
import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import fastavro
from fastavro.schema import to_parsing_canonical_form

from assessment_store.core import JSON, CodecError, UnresolvableSchema

from ._compat import incompatibilities

__all__ = [
    "CONFLUENT_MAGIC", "FINGERPRINT_HEADER", "MAGIC", "REGISTRY_REF_PREFIX", "SCHEMA_DIR", "AvroRecordCodec", "Headers",
    "crc64_avro", "json_text", "record_fingerprint", "registry_ref", "writer_ref",
]

SCHEMA_DIR = Path(__file__).resolve().parent
Headers = Sequence[tuple[str, bytes]]

MAGIC = b"\xc3\x01"
"""The single-object encoding's marker (format version 1)."""
FINGERPRINT_HEADER = "schema-fingerprint"
"""Where records written before the single-object encoding name their writer schema (hex text)."""
_PREFIX_LEN = len(MAGIC) + 8
CONFLUENT_MAGIC = 0
"""The first byte of the Confluent wire format (its 4-byte big-endian schema id follows)."""
_CONFLUENT_LEN = 5
REGISTRY_REF_PREFIX = "id:"
"""A writer reference naming a registry schema id (``id:42``); any other reference is a fingerprint."""

_EMPTY = 0xC15D213AA4D7A795


def _table() -> list[int]:
    table = []
    for i in range(256):
        fp = i
        for _ in range(8):
            fp = (fp >> 1) ^ (_EMPTY & -(fp & 1))
        table.append(fp)
    return table


_FP_TABLE = _table()


def crc64_avro(data: bytes) -> int:
    """The CRC-64-AVRO (Rabin) fingerprint of ``data``, as the Avro specification defines it."""
    fp = _EMPTY
    for b in data:
        fp = (fp >> 8) ^ _FP_TABLE[(fp ^ b) & 0xFF]
    return fp


def _fingerprint_bytes(canonical: str) -> bytes:
    """The fingerprint as it sits in a single object: 8 bytes, little-endian."""
    return crc64_avro(canonical.encode()).to_bytes(8, "little")


def registry_ref(schema_id: int) -> str:
    return f"{REGISTRY_REF_PREFIX}{schema_id}"


def _fingerprint_header(headers: Headers) -> bytes | None:
    return next((v for k, v in headers if k == FINGERPRINT_HEADER), None)


def writer_ref(value: bytes | None, headers: Headers = ()) -> str | None:
    """What names the writer schema of one record: the fingerprint (hex of the 8 little-endian bytes,
    as on the schemas topic and in the old header) for a single object or an old record, ``id:<n>``
    for a record in the Confluent format (its registry schema id); None when the record names none."""
    if value and value[:2] == MAGIC and len(value) >= _PREFIX_LEN:
        return value[2:_PREFIX_LEN].hex()
    fp = _fingerprint_header(headers)
    if fp is not None:
        return fp.decode("ascii", "replace")
    if value and value[0] == CONFLUENT_MAGIC and len(value) >= _CONFLUENT_LEN:
        return registry_ref(int.from_bytes(value[1:_CONFLUENT_LEN], "big"))
    return None


record_fingerprint = writer_ref
"""The earlier name of ``writer_ref`` (from before the registry's ids)."""


def json_text(value: JSON) -> str:
    return json.dumps(value, separators=(",", ":"), ensure_ascii=False, allow_nan=False)


class AvroRecordCodec:
    """Encodes dicts with one schema file; decodes any writer schema it knows."""

    def __init__(self, schema_file: str, content_type: bytes) -> None:
        self.raw: dict[str, Any] = json.loads((SCHEMA_DIR / schema_file).read_text())
        self.parsed = fastavro.parse_schema(self.raw)
        self.schema_json: str = json.dumps(self.raw, separators=(",", ":"), ensure_ascii=False)
        """The schema as published on the schemas topic and registered with a registry: the file's
        JSON, whose Parsing Canonical Form has the fingerprint (the canonical form alone drops logical
        types, which readers need)."""
        self._prefix = MAGIC + _fingerprint_bytes(to_parsing_canonical_form(self.parsed))
        self.fingerprint: str = self._prefix[2:].hex()
        self.registry_id: int | None = None
        """The registry's id of this schema once ``use_registry_id`` made it the encoding's."""
        # Union branches are chosen by full name: "<namespace>.<RecordName>".
        self.namespace = f"{self.raw['namespace']}."
        self.full_name = self.namespace + self.raw["name"]
        self.content_type = content_type
        self._content_header = ("content-type", content_type)
        self._type_headers: dict[str, tuple[str, bytes]] = {}
        # Older writer schemas stay readable: every earlier version of the file is kept in
        # history/<name>.v<N>.avsc, and records written with one are resolved into the current schema
        # (new fields take their defaults). A file may only gain fields with defaults (docs/events.md).
        self._writers: dict[str, Any] = {self.fingerprint: self.parsed}
        self._by_id: dict[int, Any] = {}
        """registry schema id -> parsed writer schema (the same object as in _writers)"""
        self._unreadable: dict[str, str] = {}
        """writer reference (fingerprint or ``id:<n>``) -> why it cannot be read as the reader schema"""
        stem = schema_file.removesuffix(".avsc")
        for old in sorted((SCHEMA_DIR / "history").glob(f"{stem}.v*.avsc")):
            self.add_writer(old.read_text())

    def knows(self, ref: str) -> bool:
        """Whether a record with this writer reference (``writer_ref``) needs no look-up (readable or
        known bad)."""
        if ref in self._unreadable:
            return True
        if ref.startswith(REGISTRY_REF_PREFIX):
            try:
                return int(ref[len(REGISTRY_REF_PREFIX):]) in self._by_id
            except ValueError:
                return False
        return ref in self._writers

    def add_writer(self, schema_json: str, schema_id: int | None = None) -> str:
        """Make a writer schema known (from history/, the schemas topic, or the registry under
        ``schema_id``); returns its fingerprint. One that cannot be resolved into the reader schema is
        remembered as such, so records written with it raise ``UnresolvableSchema`` with the reason."""
        parsed = fastavro.parse_schema(json.loads(schema_json))
        fp = _fingerprint_bytes(to_parsing_canonical_form(parsed)).hex()
        known = self._writers.get(fp)
        if known is None and fp not in self._unreadable:
            problems = incompatibilities(self.raw, json.loads(schema_json))
            if problems:
                self._unreadable[fp] = "cannot be read as " + self.full_name + ": " + "; ".join(problems)
            else:
                self._writers[fp] = known = parsed
        if schema_id is not None:
            if known is not None:
                # The same parsed object: records of our own schema skip resolution (see decode).
                self._by_id[schema_id] = known
            else:
                self._unreadable[registry_ref(schema_id)] = self._unreadable[fp]
        return fp

    def use_registry_id(self, schema_id: int) -> None:
        """Write the Confluent wire format from now on: this schema is registered under ``schema_id``."""
        if not 0 <= schema_id <= 0xFFFFFFFF:
            raise ValueError(f"a registry schema id is 4 bytes, not {schema_id}")
        self._by_id[schema_id] = self.parsed
        self.registry_id = schema_id
        self._prefix = bytes((CONFLUENT_MAGIC,)) + schema_id.to_bytes(4, "big")

    def hand_prefix(self, fingerprint: str) -> bytes | None:
        """The single-object prefix of records of this codec's schema when that schema's fingerprint
        is ``fingerprint`` (the one a hand reader or writer was written for), else None: a changed
        schema file turns the hand path off (schemas/_fast_event.py)."""
        return MAGIC + bytes.fromhex(fingerprint) if self.fingerprint == fingerprint else None

    def encode(self, record: dict[str, Any], type_name: str) -> tuple[bytes, list[tuple[str, bytes]]]:
        buf = io.BytesIO()
        fastavro.schemaless_writer(buf, self.parsed, record)
        return self.frame(buf.getvalue(), type_name)

    def frame(self, body: bytes, type_name: str) -> tuple[bytes, list[tuple[str, bytes]]]:
        """A record's value and headers around ``body``, its Avro binary encoding with this schema
        (written by fastavro in ``encode``, or by hand: schemas/_fast_event.py)."""
        type_header = self._type_headers.get(type_name)
        if type_header is None:  # one per record type, made once: a few names in all
            type_header = self._type_headers[type_name] = ("type", type_name.encode())
        return self._prefix + body, [type_header, self._content_header]

    def decode(self, value: bytes | None, headers: Headers) -> dict[str, Any]:
        if not value:
            raise CodecError("empty record value")
        # The order of the tests is the one writer_ref and docs/events.md give.
        if value[:2] == MAGIC:
            if len(value) < _PREFIX_LEN:
                raise CodecError("truncated single-object header")
            fp = value[2:_PREFIX_LEN].hex()
            writer = self._writers.get(fp)
            start = _PREFIX_LEN
        elif (raw_fp := _fingerprint_header(headers)) is not None:
            fp = raw_fp.decode("ascii", "replace")
            writer = self._writers.get(fp)
            start = 0
        elif value[0] == CONFLUENT_MAGIC:
            if len(value) < _CONFLUENT_LEN:
                raise CodecError("truncated Confluent header (00 + 4-byte schema id)")
            schema_id = int.from_bytes(value[1:_CONFLUENT_LEN], "big")
            writer = self._by_id.get(schema_id)
            fp = registry_ref(schema_id) if writer is None else ""
            start = _CONFLUENT_LEN
        else:
            raise CodecError("neither a single object (C3 01 ...), a Confluent record (00 + schema id) nor a "
                             "'schema-fingerprint' header")
        if writer is None:
            raise UnresolvableSchema(fp, self._unreadable.get(fp, "unknown writer schema"))
        # Schema resolution costs a third of the decode; skip it when there is nothing to resolve.
        reader = None if writer is self.parsed else self.parsed
        buf = io.BytesIO(value)
        buf.seek(start)
        try:
            record: dict[str, Any] = fastavro.schemaless_reader(  # type: ignore[assignment]  # a record schema
                buf, writer, reader, return_record_name=True
            )
        except (EOFError, ValueError, TypeError, KeyError, IndexError, UnicodeDecodeError) as e:
            raise CodecError(f"{type(e).__name__}: {e}") from e
        return record
