"""Avro schemas of the store's records (``*.avsc`` beside this file) and their codecs."""

from ._avro import SCHEMA_DIR, Headers
from ._codec import CONTENT_TYPE, EventCodec
from ._commands import CommandCodec, OutcomeCodec

__all__ = ["CONTENT_TYPE", "SCHEMA_DIR", "CommandCodec", "EventCodec", "Headers", "OutcomeCodec"]
