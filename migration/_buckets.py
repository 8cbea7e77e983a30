"""Sticky percentage routing, bit-for-bit the same as the Node tap's ``src/routing.js``.

The algorithm is a cross-language contract, checked by both test suites against
``bridge/routing_vectors.json``; changing either side breaks it:

    h         = SHA-256 of the UTF-8 bytes of f"{salt}:{key}"
    bucket    = (first 8 bytes of h as an unsigned big-endian 64-bit integer) mod 10000
    threshold = round(percentage * 100), halves rounded up (JavaScript ``Math.round`` of the double)
    route     = bucket < threshold

Sticky: the same key and salt always get the same answer, and raising the percentage only adds
buckets, so a key once routed to the store stays there as a rollout grows.
"""

from __future__ import annotations

import hashlib
import math
from decimal import ROUND_HALF_UP, Decimal

from assessment_store.core import ValidationError

__all__ = ["BUCKETS", "bucket", "route_to_store", "threshold"]

BUCKETS = 10_000
"""Number of buckets: a percentage has a resolution of 100 / BUCKETS = 0.01 %."""


def _utf8(value: str, name: str) -> bytes:
    if not isinstance(value, str):
        raise ValidationError(name, f"must be a string, got {type(value).__name__}")
    try:
        return value.encode("utf-8")
    except UnicodeEncodeError as e:
        # A lone surrogate has no UTF-8 encoding; Node refuses it too (isWellFormed), so
        # neither side can silently route a key the other cannot.
        raise ValidationError(name, "contains a lone surrogate and has no UTF-8 encoding") from e


def bucket(key: str, salt: str) -> int:
    """The bucket of ``key`` under ``salt``, an integer in [0, 10000)."""
    # Encode each part separately so the error names the offending argument; the hash input is
    # still exactly the UTF-8 bytes of f"{salt}:{key}".
    data = _utf8(salt, "salt") + b":" + _utf8(key, "key")
    digest = hashlib.sha256(data).digest()
    return int.from_bytes(digest[:8], "big", signed=False) % BUCKETS


def threshold(percentage: float) -> int:
    """Buckets (out of 10000) routed to the store: round(percentage * 100), halves up.

    ``percentage * 100`` is computed as an IEEE-754 double first, exactly like JavaScript, and
    only then rounded exactly with Decimal; Python's ``round()`` rounds halves to even and would
    disagree with ``Math.round`` at ties such as 0.125 % (12.5 -> 13).
    """
    if isinstance(percentage, bool) or not isinstance(percentage, (int, float)):
        raise ValidationError("percentage", f"must be a number, got {type(percentage).__name__}")
    if not math.isfinite(percentage) or not 0 <= percentage <= 100:
        raise ValidationError("percentage", f"must be a finite number in [0, 100], got {percentage!r}")
    return int(Decimal(percentage * 100).quantize(Decimal(1), ROUND_HALF_UP))


def route_to_store(key: str, percentage: float, salt: str) -> bool:
    """Whether ``key`` goes to the AssessmentStore at ``percentage`` (0-100, 0.01 resolution)."""
    limit = threshold(percentage)
    return bucket(key, salt) < limit
