"""Reading JSON fast without reading it differently.

orjson parses a document in a fraction of ``json.loads``'s time, and the hot readers (the
projector's event reader, the processor's snapshot loader) parse one or more per record. But it does
not always give the same value: an integer outside [-2**63, 2**64) comes back as a float (rounded),
where ``json.loads`` keeps it exact. It refuses what ``json`` accepts in other places (NaN,
Infinity, a lone surrogate escape, a number beyond the float range), which is harmless: the caller
falls back. So the fast reader here takes orjson's answer only when the text has no run of 19 or
more digits (every integer outside those bounds has at least 19); any other document, and anything
orjson refuses, is read by ``json``, which decides.

orjson is imported inside the functions: the client's base install, which imports this package, has
no orjson (the server extra brings it).
"""

from __future__ import annotations

import json
from collections.abc import Callable
from typing import Any

__all__ = ["exact_fast_loads", "json_loads"]

# Digits to "0", everything else to " ": a run of 19 digits is then a plain substring search. Two
# C passes over the bytes; a regex (``[0-9]{19}``) took 13 times as long, more than orjson's parse.
_DIGITS_ONLY = bytes(0x30 if 0x30 <= b <= 0x39 else 0x20 for b in range(256))
_RUN_OF_19 = b"0" * 19


def exact_fast_loads() -> Callable[[bytes], Any] | None:
    """orjson's ``loads`` where its value is ``json.loads``'s, raising ``ValueError`` for every
    other document (a run of 19+ digits, or one orjson refuses); None without orjson. For readers
    that have a slower path of their own to fall back to (``schemas/_fast_event.py``)."""
    try:
        import orjson
    except ImportError:
        return None
    fast, digits_only, run = orjson.loads, _DIGITS_ONLY, _RUN_OF_19

    def loads(raw: bytes) -> Any:
        if run in raw.translate(digits_only):
            raise ValueError("a run of 19 or more digits: read by json, not orjson")
        return fast(raw)  # orjson.JSONDecodeError is a ValueError

    return loads


def json_loads() -> Callable[[bytes], Any]:
    """``json.loads`` of UTF-8 bytes, through orjson when it is installed and gives the same value."""
    fast = exact_fast_loads()
    if fast is None:
        return json.loads

    def loads(raw: bytes) -> Any:
        try:
            return fast(raw)
        except ValueError:
            return json.loads(raw)

    return loads
