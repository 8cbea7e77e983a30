"""Avro schemas of the store's records (``*.avsc`` beside this file) and their codecs."""

from ._avro import (
    CONFLUENT_MAGIC, FINGERPRINT_HEADER, MAGIC, REGISTRY_REF_PREFIX, SCHEMA_DIR, AvroRecordCodec, Headers, crc64_avro,
    record_fingerprint, registry_ref, writer_ref,
)
from ._codec import CONTENT_TYPE, EventCodec
from ._commands import CommandCodec, OutcomeCodec
from ._compat import incompatibilities

__all__ = [
    "CONFLUENT_MAGIC", "REGISTRY_REF_PREFIX", "registry_ref", "writer_ref",
    "CONTENT_TYPE", "FINGERPRINT_HEADER", "MAGIC", "SCHEMA_DIR", "AvroRecordCodec", "CommandCodec", "EventCodec",
    "Headers", "OutcomeCodec", "crc64_avro", "incompatibilities", "record_fingerprint",
]
