"""Avro schemas of the store's records (``*.avsc`` beside this file) and their codecs."""

from ._avro import FINGERPRINT_HEADER, MAGIC, SCHEMA_DIR, AvroRecordCodec, Headers, crc64_avro, record_fingerprint
from ._codec import CONTENT_TYPE, EventCodec
from ._commands import CommandCodec, OutcomeCodec
from ._compat import incompatibilities

__all__ = [
    "CONTENT_TYPE", "FINGERPRINT_HEADER", "MAGIC", "SCHEMA_DIR", "AvroRecordCodec", "CommandCodec", "EventCodec",
    "Headers", "OutcomeCodec", "crc64_avro", "incompatibilities", "record_fingerprint",
]
