"""Avro schemas of the store's events (``*.avsc`` beside this file) and their codec."""

from ._codec import CONTENT_TYPE, SCHEMA_DIR, EventCodec, Headers

__all__ = ["CONTENT_TYPE", "SCHEMA_DIR", "EventCodec", "Headers"]
