"""Schemaless Avro with the writer schema named by fingerprint in a header.

The value is schemaless Avro (no container header), so a record costs only its fields; the
writer schema is named by its CRC-64-AVRO fingerprint in the ``schema-fingerprint`` header and
the record's kind in the ``type`` header, so ``kcat -J`` users can filter without Avro.
Decoding resolves the writer schema by fingerprint against the current reader schema, which is
what keeps old records readable after a schema gains optional fields.
"""

from __future__ import annotations

import io
import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import fastavro
from fastavro.schema import fingerprint, to_parsing_canonical_form

from assessment_store.core import JSON, CodecError

__all__ = ["SCHEMA_DIR", "AvroRecordCodec", "Headers", "json_text"]

SCHEMA_DIR = Path(__file__).resolve().parent
Headers = Sequence[tuple[str, bytes]]


def json_text(value: JSON) -> str:
    return json.dumps(value, separators=(",", ":"), ensure_ascii=False, allow_nan=False)


class AvroRecordCodec:
    """Encodes dicts with one schema file; decodes any writer schema it knows."""

    def __init__(self, schema_file: str, content_type: bytes) -> None:
        raw: dict[str, Any] = json.loads((SCHEMA_DIR / schema_file).read_text())
        self.parsed = fastavro.parse_schema(raw)
        self.fingerprint: str = fingerprint(to_parsing_canonical_form(self.parsed), "CRC-64-AVRO")
        # Union branches are chosen by full name: "<namespace>.<RecordName>".
        self.namespace = f"{raw['namespace']}."
        self.content_type = content_type
        # Older writer schemas stay readable: every earlier version of the file is kept in
        # history/<name>.v<N>.avsc, and records written with one are resolved into the current schema
        # (new fields take their defaults). A file may only gain fields with defaults.
        self._writers: dict[str, Any] = {self.fingerprint: self.parsed}
        stem = schema_file.removesuffix(".avsc")
        for old in sorted((SCHEMA_DIR / "history").glob(f"{stem}.v*.avsc")):
            parsed = fastavro.parse_schema(json.loads(old.read_text()))
            self._writers.setdefault(fingerprint(to_parsing_canonical_form(parsed), "CRC-64-AVRO"), parsed)

    def encode(self, record: dict[str, Any], type_name: str) -> tuple[bytes, list[tuple[str, bytes]]]:
        buf = io.BytesIO()
        fastavro.schemaless_writer(buf, self.parsed, record)
        return buf.getvalue(), [
            ("type", type_name.encode()),
            ("schema-fingerprint", self.fingerprint.encode()),
            ("content-type", self.content_type),
        ]

    def decode(self, value: bytes | None, headers: Headers) -> dict[str, Any]:
        if not value:
            raise CodecError("empty record value")
        fp = next((v for k, v in headers if k == "schema-fingerprint"), None)
        if fp is None:
            raise CodecError("missing 'schema-fingerprint' header")
        writer = self._writers.get(fp.decode("ascii", "replace"))
        if writer is None:
            raise CodecError(f"unknown schema fingerprint {fp!r}")
        # Schema resolution costs a third of the decode; skip it when there is nothing to resolve.
        reader = None if writer is self.parsed else self.parsed
        try:
            record: dict[str, Any] = fastavro.schemaless_reader(  # type: ignore[assignment]  # a record schema
                io.BytesIO(value), writer, reader, return_record_name=True
            )
        except (EOFError, ValueError, TypeError, KeyError, IndexError, UnicodeDecodeError) as e:
            raise CodecError(f"{type(e).__name__}: {e}") from e
        return record
