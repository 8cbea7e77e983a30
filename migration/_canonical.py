"""The canonical form of an assessment that the legacy side and the store both hash (docs/migration.md).

One definition, three implementations that must agree byte for byte: this module, the Node legacy
service's ``bridge/node/src/canonical.js``, and PostgreSQL's ``jsonb_build_array(...)::text`` in
``assessment_store.projections.bucket_checksums``. ``migration/canonical_vectors.json`` pins them: the
Python and the Node tests both check every vector, and a stack test checks PostgreSQL.

The comparison is made in the legacy representation (the legacy side cannot compute the store's),
as the jsonb text of::

    [assessmentId, status, progress, message, request, result, error, timestampS, updatedAtS, duration]

* ``status`` lower case (the store's PENDING is legacy's ``pending``);
* the two times as whole epoch seconds, rounded down: the bridge stamps the store's events with the
  tap's emission time (``emittedAt``), a millisecond or a few after legacy's own ``timestamp`` and
  ``updatedAt``, so the sides agree to the second, not to the millisecond (``_compare`` reports a
  time that differs by a second or more);
* ``duration`` only for ``completed`` and ``failed``, else null: the store records no duration for a
  cancellation (``Cancelled`` carries none), while legacy measures one;
* jsonb's text rules: object keys ordered by UTF-8 length then bytes, ``", "`` and ``": "``
  separators, strings escaped as JSON (control characters as lower-case ``\\u00XX``, nothing else),
  numbers as plain decimals without exponent.

Row hash: the first 16 hex digits of md5(canonical text) as an unsigned 64-bit integer. Bucket of an
id among ``n``: the first 8 hex digits of md5(id) as an unsigned 32-bit integer, mod ``n``. A bucket's
checksum: the sum of its rows' hashes mod 2**64 (order-free, and unlike XOR a duplicated row changes it).
"""

from __future__ import annotations

import hashlib
import json
import math
import re
from collections.abc import Mapping
from datetime import UTC, datetime, timedelta

from assessment_store.core import JSON, Assessment

__all__ = [
    "CANONICAL_FIELDS", "TWO_64", "bucket_of", "canonical_legacy", "canonical_store", "epoch_ms", "epoch_s", "id_hash",
    "jsonb_text", "plain_number", "row_hash",
]

TWO_64 = 1 << 64
CANONICAL_FIELDS = ("assessmentId", "status", "progress", "message", "request", "result", "error",
                    "timestamp", "updatedAt", "duration")
"""The legacy record's fields, in canonical order (the times become epoch seconds)."""
_WITH_DURATION = frozenset({"completed", "failed"})
_EXPONENT = re.compile(r"^(-?)(\d+)(?:\.(\d+))?e([+-]\d+)$")
_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
_MS = timedelta(milliseconds=1)


def plain_number(value: int | float) -> str:
    """A number as PostgreSQL's numeric prints it: a plain decimal, never an exponent.

    Floats go through ``repr`` (the shortest text that reads back the same float), which is the
    digits JavaScript prints too; only the exponent notation of either is expanded."""
    if isinstance(value, int):
        return str(value)
    if not math.isfinite(value):
        return "null"
    if value == 0:
        return "0.0"  # json writes 0.0 or -0.0; PostgreSQL's numeric has no negative zero
    text = repr(value)
    if text.endswith(".0"):
        # repr(2.0) is "2.0"; JSON.stringify(2.0) is "2". A store value written by Python as 2.0 stays
        # "2.0" in jsonb, so that one case differs from legacy: the checksum sees a difference and the
        # field comparison (which treats 2.0 and 2 as equal) reports none. Kept as jsonb prints it here.
        return text
    m = _EXPONENT.match(text.replace("e+0", "e+").replace("e-0", "e-"))
    if m is None:
        return text
    sign, whole, frac, exp = m.group(1), m.group(2), m.group(3) or "", int(m.group(4))
    digits = whole + frac
    point = len(whole) + exp
    if point <= 0:
        plain = "0." + "0" * -point + digits
    elif point >= len(digits):
        plain = digits + "0" * (point - len(digits))
    else:
        plain = digits[:point] + "." + digits[point:]
    return sign + plain


def _key_order(key: str) -> tuple[int, bytes]:
    raw = key.encode()
    return len(raw), raw


def jsonb_text(value: JSON) -> str:
    """``value`` as PostgreSQL prints it after a jsonb round trip. Iterative depth is bounded by the
    store's own limit on documents (64 levels), so plain recursion is safe here."""
    if value is None:
        return "null"
    if value is True:
        return "true"
    if value is False:
        return "false"
    if isinstance(value, int | float):
        return plain_number(value)
    if isinstance(value, str):
        return json.dumps(value, ensure_ascii=False)
    if isinstance(value, list | tuple):
        return "[" + ", ".join(jsonb_text(v) for v in value) + "]"
    if isinstance(value, Mapping):
        keys = sorted(value, key=_key_order)
        return "{" + ", ".join(f"{json.dumps(k, ensure_ascii=False)}: {jsonb_text(value[k])}" for k in keys) + "}"
    return "null"


def epoch_ms(value: object) -> int | None:
    """An ISO-8601 time (or a datetime) as epoch milliseconds rounded down; None when unreadable.
    A time without an offset is taken as UTC."""
    if isinstance(value, str):
        try:
            value = datetime.fromisoformat(value.replace("Z", "+00:00"))
        except ValueError:
            return None
    if not isinstance(value, datetime):
        return None
    if value.tzinfo is None:
        value = value.replace(tzinfo=UTC)
    return (value - _EPOCH) // _MS


def epoch_s(value: object) -> int | None:
    """Whole epoch seconds, rounded down (the canonical form's resolution of times)."""
    ms = epoch_ms(value)
    return None if ms is None else ms // 1000


def _legacy_values(record: Mapping[str, JSON]) -> list[JSON]:
    status = record.get("status")
    status = status.lower() if isinstance(status, str) else None
    return [
        record.get("assessmentId"), status, record.get("progress"), record.get("message"), record.get("request"),
        record.get("result"), record.get("error"), epoch_s(record.get("timestamp")),
        epoch_s(record.get("updatedAt")), record.get("duration") if status in _WITH_DURATION else None,
    ]


def canonical_legacy(record: Mapping[str, JSON]) -> str:
    """The canonical text of a legacy record (an export line's fields; any may be missing)."""
    return jsonb_text(_legacy_values(record))


def canonical_store(a: Assessment) -> str:
    """The canonical text of a store assessment: what PostgreSQL computes for its row."""
    status = a.state.value.lower()
    return jsonb_text([
        a.assessment_id, status, a.progress, a.message, a.request_data, a.result_data, a.error_message,
        epoch_s(a.created_at), epoch_s(a.updated_at), a.duration if status in _WITH_DURATION else None,
    ])


def _md5(text: str) -> str:
    return hashlib.md5(text.encode(), usedforsecurity=False).hexdigest()


def row_hash(canonical: str) -> int:
    return int(_md5(canonical)[:16], 16)


def id_hash(assessment_id: str) -> int:
    return int(_md5(assessment_id)[:8], 16)


def bucket_of(assessment_id: str, buckets: int) -> int:
    return id_hash(assessment_id) % buckets
