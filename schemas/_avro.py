"""Avro single-object encoding, with the writer schemas a reader can resolve.

A value is one Avro *single object* (the Avro specification, "Single-object encoding"): the two
marker bytes ``C3 01``, the 8-byte little-endian CRC-64-AVRO fingerprint of the writer schema's
Parsing Canonical Form, then the record's binary encoding. Any Avro library decodes it given the
schema, with no registry and no header. The record's kind stays in the ``type`` header, so
``kcat -J`` users can filter without Avro.

Records written before this format (schemaless Avro, the fingerprint as hex text in a
``schema-fingerprint`` header) stay readable: the reader takes that path when the value does not
start with the marker. No old record can start with it: each of the three schemas begins with a
string, whose length is a zigzag varint, and ``C3 01`` would be the negative length -98.

Decoding resolves the writer schema (by fingerprint) against the current reader schema, which is
what keeps old records readable after a schema gains optional fields. Writer schemas known here
are the current file, every earlier version kept in ``history/``, and any added at run time from
the schemas topic (``add_writer``); a fingerprint none of them has, or a writer schema that cannot
be resolved into the reader's, raises ``UnresolvableSchema`` (a schema problem: the record must not
be skipped), whereas bytes that do not decode raise a plain ``CodecError`` (a corrupt record).
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
    "FINGERPRINT_HEADER", "MAGIC", "SCHEMA_DIR", "AvroRecordCodec", "Headers", "crc64_avro", "json_text",
    "record_fingerprint",
]

SCHEMA_DIR = Path(__file__).resolve().parent
Headers = Sequence[tuple[str, bytes]]

MAGIC = b"\xc3\x01"
"""The single-object encoding's marker (format version 1)."""
FINGERPRINT_HEADER = "schema-fingerprint"
"""Where records written before the single-object encoding name their writer schema (hex text)."""
_PREFIX_LEN = len(MAGIC) + 8

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


def record_fingerprint(value: bytes | None, headers: Headers = ()) -> str | None:
    """The writer schema's fingerprint of one record (hex of the 8 little-endian bytes, as on the
    schemas topic and in the old header), or None when the record names none."""
    if value and value[:2] == MAGIC and len(value) >= _PREFIX_LEN:
        return value[2:_PREFIX_LEN].hex()
    fp = next((v for k, v in headers if k == FINGERPRINT_HEADER), None)
    return fp.decode("ascii", "replace") if fp is not None else None


def json_text(value: JSON) -> str:
    return json.dumps(value, separators=(",", ":"), ensure_ascii=False, allow_nan=False)


class AvroRecordCodec:
    """Encodes dicts with one schema file; decodes any writer schema it knows."""

    def __init__(self, schema_file: str, content_type: bytes) -> None:
        self.raw: dict[str, Any] = json.loads((SCHEMA_DIR / schema_file).read_text())
        self.parsed = fastavro.parse_schema(self.raw)
        self.schema_json: str = json.dumps(self.raw, separators=(",", ":"), ensure_ascii=False)
        """The schema as published on the schemas topic: the file's JSON, whose Parsing Canonical
        Form has the fingerprint (the canonical form alone drops logical types, which readers need)."""
        self._prefix = MAGIC + _fingerprint_bytes(to_parsing_canonical_form(self.parsed))
        self.fingerprint: str = self._prefix[2:].hex()
        # Union branches are chosen by full name: "<namespace>.<RecordName>".
        self.namespace = f"{self.raw['namespace']}."
        self.full_name = self.namespace + self.raw["name"]
        self.content_type = content_type
        # Older writer schemas stay readable: every earlier version of the file is kept in
        # history/<name>.v<N>.avsc, and records written with one are resolved into the current schema
        # (new fields take their defaults). A file may only gain fields with defaults (docs/events.md).
        self._writers: dict[str, Any] = {self.fingerprint: self.parsed}
        self._unreadable: dict[str, str] = {}
        stem = schema_file.removesuffix(".avsc")
        for old in sorted((SCHEMA_DIR / "history").glob(f"{stem}.v*.avsc")):
            self.add_writer(old.read_text())

    def knows(self, fp: str) -> bool:
        """Whether a record with this writer fingerprint needs no look-up (readable or known bad)."""
        return fp in self._writers or fp in self._unreadable

    def add_writer(self, schema_json: str) -> str:
        """Make a writer schema known (from history/ or the schemas topic); returns its fingerprint.
        One that cannot be resolved into the reader schema is remembered as such, so records
        written with it raise ``UnresolvableSchema`` with the reason."""
        parsed = fastavro.parse_schema(json.loads(schema_json))
        fp = _fingerprint_bytes(to_parsing_canonical_form(parsed)).hex()
        if fp in self._writers:
            return fp
        problems = incompatibilities(self.raw, json.loads(schema_json))
        if problems:
            self._unreadable[fp] = "cannot be read as " + self.full_name + ": " + "; ".join(problems)
        else:
            self._writers[fp] = parsed
        return fp

    def encode(self, record: dict[str, Any], type_name: str) -> tuple[bytes, list[tuple[str, bytes]]]:
        buf = io.BytesIO()
        buf.write(self._prefix)
        fastavro.schemaless_writer(buf, self.parsed, record)
        return buf.getvalue(), [("type", type_name.encode()), ("content-type", self.content_type)]

    def decode(self, value: bytes | None, headers: Headers) -> dict[str, Any]:
        if not value:
            raise CodecError("empty record value")
        if value[:2] == MAGIC:
            if len(value) < _PREFIX_LEN:
                raise CodecError("truncated single-object header")
            fp = value[2:_PREFIX_LEN].hex()
            start = _PREFIX_LEN
        else:
            raw_fp = next((v for k, v in headers if k == FINGERPRINT_HEADER), None)
            if raw_fp is None:
                raise CodecError("neither a single object (C3 01 ...) nor a 'schema-fingerprint' header")
            fp = raw_fp.decode("ascii", "replace")
            start = 0
        writer = self._writers.get(fp)
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
