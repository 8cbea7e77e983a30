"""Validation of the migration off legacy: ``assessment-store migrate validate`` (docs/migration.md)."""

from ._canonical import bucket_of, canonical_legacy, canonical_store, jsonb_text, row_hash

__all__ = ["bucket_of", "canonical_legacy", "canonical_store", "jsonb_text", "row_hash"]
