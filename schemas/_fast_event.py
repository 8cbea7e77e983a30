"""A hand-written reader and writer of one schema of ``assessment_event.avsc``: the hot paths of the
projector (which decodes every event) and of the processor (which encodes every event).

``fastavro.schemaless_reader`` interprets the schema on every call (reading the value through a
file object, building a dict, then ``EventCodec`` builds the ``Event`` from it); a rebuild decodes
every event of the log, and that was a third of its CPU. This reads the Avro binary encoding of the
one schema whose fingerprint is ``FINGERPRINT`` straight into an ``Event``. Likewise its writer:
``fastavro.schemaless_writer`` took 14.5 µs for an event (with the dict ``EventCodec`` built for
it), a quarter of the processor's CPU per command in a drain (py-spy); ``write_event`` takes 6.

It is only ever a shortcut, never a second definition of the format:

* it runs only for records whose writer fingerprint is ``FINGERPRINT`` (the current file's when
  this was written; a changed schema file has another fingerprint, and its records take the
  fastavro path until this reader is brought up to date: tests/test_codec_fast.py says so);
* anything it does not read cleanly (truncated bytes, a bad union branch, invalid UTF-8, JSON text
  that does not parse, a value the model refuses) makes the caller decode the record again with
  fastavro, whose result or error (``CodecError``) is the answer: corrupt records are reported in
  the same words either way;
* the writer writes only what it can write exactly as fastavro would (aware datetimes, ints of the
  Python type within their Avro range, real booleans and strings); for anything else it returns
  None and the caller encodes with fastavro, whose bytes or error are the answer;
* tests/test_codec_fast.py checks both against fastavro on generated events of every payload type.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from typing import Any

from assessment_store.core import (
    exact_fast_loads,
    Cancelled,
    Completed,
    Created,
    Event,
    EventSource,
    Failed,
    Payload,
    ProgressUpdated,
    Retried,
    Started,
    slot_constructor,
)

from ._avro import json_text

__all__ = ["FINGERPRINT", "read_event", "write_event"]

FINGERPRINT = "fa18698b794fe37c"
"""The writer schema this reader implements (hex of the 8 little-endian fingerprint bytes)."""

_new_event = slot_constructor(Event)
_progress_updated = slot_constructor(ProgressUpdated)  # the most frequent payload: 0.37 -> 0.17 µs
_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)  # timestamp-micros, as fastavro reads it
_SOURCES = {s.value: s for s in EventSource}
# The request and result documents: orjson where it reads them as json does (core/_json.py), else
# json; anything the fast one refuses makes the whole record take the fastavro path (ValueError).
_loads: Callable[[bytes], Any] = exact_fast_loads() or (lambda raw: json.loads(raw.decode()))


class _Unread(Exception):
    """The bytes are not what this reader expects: let fastavro decide."""


def _long(b: bytes, pos: int) -> tuple[int, int]:
    """A zigzag varint at ``pos``: (value, next position)."""
    byte = b[pos]
    pos += 1
    if byte < 0x80:  # one byte: lengths, union branches and small numbers, most of what is read
        return (byte >> 1) ^ -(byte & 1), pos
    n = byte & 0x7F
    shift = 7
    while byte & 0x80:
        byte = b[pos]
        pos += 1
        n |= (byte & 0x7F) << shift
        shift += 7
    if n >> 64:
        raise _Unread  # more than a long holds (corrupt bytes): fastavro reads it its own way
    return (n >> 1) ^ -(n & 1), pos


def _string(b: bytes, pos: int) -> tuple[str, int]:
    n = b[pos]
    if n < 0x80 and not n & 1:  # a length below 64, in one byte
        end = pos + 1 + (n >> 1)
        if end > len(b):
            raise _Unread
        return b[pos + 1:end].decode(), end
    n, pos = _long(b, pos)
    end = pos + n
    if n < 0 or end > len(b):
        raise _Unread
    return b[pos:end].decode(), end


def _bytes(b: bytes, pos: int) -> tuple[bytes, int]:
    """A string's UTF-8 bytes, undecoded (for the JSON reader, which checks them itself)."""
    n, pos = _long(b, pos)
    end = pos + n
    if n < 0 or end > len(b):
        raise _Unread
    return b[pos:end], end


def _opt_string(b: bytes, pos: int) -> tuple[str | None, int]:
    branch, pos = _long(b, pos)
    if branch == 0:
        return None, pos
    if branch == 1:
        return _string(b, pos)
    raise _Unread


def _opt_long(b: bytes, pos: int) -> tuple[int | None, int]:
    branch, pos = _long(b, pos)
    if branch == 0:
        return None, pos
    if branch == 1:
        return _long(b, pos)
    raise _Unread


def _int(b: bytes, pos: int) -> tuple[int, int]:
    n, pos = _long(b, pos)
    if not -(2**31) <= n < 2**31:
        raise _Unread  # an Avro int; fastavro has its say on anything wider
    return n, pos


def _opt_int(b: bytes, pos: int) -> tuple[int | None, int]:
    branch, pos = _long(b, pos)
    if branch == 0:
        return None, pos
    if branch == 1:
        return _int(b, pos)
    raise _Unread


_UNCLEAN = (_Unread, IndexError, ValueError, TypeError, KeyError, OverflowError, UnicodeDecodeError, RecursionError)
"""What a hand reader meets in bytes it cannot read cleanly: the caller lets fastavro decode them."""


def read_event(b: bytes, pos: int) -> Event | None:
    """The event encoded at ``b[pos:]`` with the ``FINGERPRINT`` schema, or None when the bytes
    are anything but a clean read (the caller then decodes them with fastavro)."""
    try:
        return _read(b, pos)
    except _UNCLEAN:
        return None


def _read(b: bytes, pos: int) -> Event:
    event_id, pos = _string(b, pos)
    assessment_id, pos = _string(b, pos)
    version, pos = _long(b, pos)
    _type, pos = _string(b, pos)  # the payload branch names the type; this copy is for readers without Avro
    occurred, pos = _long(b, pos)
    recorded, pos = _long(b, pos)
    source, pos = _string(b, pos)
    correlation_id, pos = _opt_string(b, pos)
    causation_id, pos = _opt_string(b, pos)
    branch, pos = _long(b, pos)
    payload: Payload
    # Branches in the order of the payload union in assessment_event.avsc.
    if branch == 0:
        request, pos = _bytes(b, pos)
        timeout, pos = _opt_long(b, pos)
        max_retries, pos = _opt_int(b, pos)
        payload = Created(_loads(request), timeout, max_retries)
    elif branch == 1:
        worker, pos = _opt_string(b, pos)
        payload = Started(worker)
    elif branch == 2:
        progress, pos = _int(b, pos)
        message, pos = _opt_string(b, pos)
        payload = _progress_updated(progress, message)
    elif branch == 3:
        result, pos = _bytes(b, pos)
        duration, pos = _opt_long(b, pos)
        payload = Completed(_loads(result), duration)
    elif branch == 4:
        error, pos = _string(b, pos)
        if b[pos] > 1:
            raise _Unread  # a boolean is one byte, 0 or 1
        retryable = b[pos] == 1
        duration, pos = _opt_long(b, pos + 1)
        payload = Failed(error, retryable, duration)
    elif branch == 5:
        reason, pos = _opt_string(b, pos)
        payload = Cancelled(reason)
    elif branch == 6:
        retry_count, pos = _int(b, pos)
        payload = Retried(retry_count)
    else:
        raise _Unread
    occurred_at = _instant(occurred)
    # Often the same instant: one datetime for both (immutable, so sharing it is safe). Else the
    # processor's clock read, one per batch of commands: the last one made is kept.
    if recorded == occurred:
        recorded_at = occurred_at
    else:
        last = _last_recorded
        recorded_at = last[1] if last[0] == recorded else _remember_recorded(recorded)
    # Every field, in Event's field order, without its __init__ (core/_model.py slot_constructor:
    # half the cost); the tests compare every field with fastavro's reading.
    return _new_event(assessment_id, version, payload, occurred_at, recorded_at, _SOURCES[source], event_id,
                      correlation_id, causation_id)


def _instant(n: int) -> datetime:
    """The datetime of timestamp-micros ``n``, as fastavro makes it. ``timedelta``'s positional
    microseconds: its keyword, through a compiled call, cost a third more (0.62 against 0.42 µs)."""
    return _EPOCH + timedelta(0, 0, n)


_last_recorded: tuple[int, datetime] = (-1 << 64, _EPOCH)


def _remember_recorded(n: int) -> datetime:
    global _last_recorded
    _last_recorded = (n, _instant(n))
    return _last_recorded[1]


# --- the writer ----------------------------------------------------------------------------

_LONG_MIN, _LONG_MAX = -(2**63), 2**63 - 1
_INT_MIN, _INT_MAX = -(2**31), 2**31 - 1
# One byte per small zigzag value: lengths below 64, versions, progress, union branches.
_SMALL = [bytes(((n << 1) ^ (n >> 63),)) for n in range(64)]


class _Unwritten(Exception):
    """A value this writer does not write exactly as fastavro would: let fastavro encode it."""


def _w_long(n: int) -> bytes:
    if type(n) is not int or not _LONG_MIN <= n <= _LONG_MAX:
        raise _Unwritten  # a bool, or beyond Avro's long: fastavro has its say
    if 0 <= n < 64:
        return _SMALL[n]
    z = (n << 1) ^ (n >> 63)
    if z >= 1 << 21:
        # The timestamps (two per event, 8 varint bytes each): their low 21 bits are the first three
        # bytes, each with its continuation bit (more follow), and the bytes of the bits above change
        # only every second or so, so the last ones written are kept. 0.8 against 1.2 µs.
        high = z >> 21
        cached = _last_high
        if cached[0] != high:
            cached = _remember_high(high)
        # One int's three bytes, not a tuple's (0.18 against 0.28 µs, compiled).
        low = (z & 0x7F) | 0x80 | (((z >> 7) & 0x7F) | 0x80) << 8 | (((z >> 14) & 0x7F) | 0x80) << 16
        return low.to_bytes(3, "little") + cached[1]
    return _varint(z)


def _varint(z: int) -> bytes:
    out = bytearray()
    while z >= 0x80:
        out.append((z & 0x7F) | 0x80)
        z >>= 7
    out.append(z)
    return bytes(out)


_last_high: tuple[int, bytes] = (-1, b"")


def _remember_high(high: int) -> tuple[int, bytes]:
    global _last_high
    _last_high = (high, _varint(high))
    return _last_high


def _w_int(n: int) -> bytes:
    if type(n) is not int or not _INT_MIN <= n <= _INT_MAX:
        raise _Unwritten
    return _w_long(n)


def _w_string(s: str) -> bytes:
    if type(s) is not str:
        raise _Unwritten
    b = s.encode()  # a lone surrogate raises: fastavro reports it
    return _w_long(len(b)) + b


def _w_opt_string(s: str | None) -> bytes:
    return b"\x00" if s is None else b"\x02" + _w_string(s)


def _w_opt_long(n: int | None) -> bytes:
    return b"\x00" if n is None else b"\x02" + _w_long(n)


def _w_opt_int(n: int | None) -> bytes:
    return b"\x00" if n is None else b"\x02" + _w_int(n)


def _w_micros(dt: datetime) -> bytes:
    if type(dt) is not datetime or dt.tzinfo is None:
        raise _Unwritten  # fastavro's own rules for naive datetimes and dates
    d = dt - _EPOCH  # timestamp-micros, computed as fastavro does: exact, no float
    return _w_long((d.days * 86_400 + d.seconds) * 1_000_000 + d.microseconds)


_last_written: tuple[datetime, bytes] = (_EPOCH, _w_micros(_EPOCH))


def _w_recorded(dt: datetime) -> bytes:
    """``_w_micros`` of an event's recorded_at: the processor's clock read, one object for a whole
    batch of commands, so the bytes of the last one written are kept (by identity: a datetime is
    immutable, and an equal one in another zone or fold would be another object)."""
    global _last_written
    last = _last_written
    if last[0] is dt:
        return last[1]
    written = _w_micros(dt)
    _last_written = (dt, written)
    return written


def write_event(ev: Event) -> tuple[bytes, str] | None:
    """``ev``'s Avro binary encoding with the ``FINGERPRINT`` schema and its payload type's name, or
    None when a value is one this writer leaves to fastavro (module docstring)."""
    try:
        return _write(ev)
    except (_Unwritten, AttributeError, TypeError, ValueError, OverflowError, UnicodeEncodeError, KeyError):
        return None


def _write(ev: Event) -> tuple[bytes, str]:
    p = ev.payload
    # Branches in the order of the payload union in assessment_event.avsc (as _read reads them).
    if type(p) is ProgressUpdated:
        name, body = "ProgressUpdated", b"\x04" + _w_int(p.progress) + _w_opt_string(p.message)
    elif type(p) is Created:
        name, body = "AssessmentCreated", (b"\x00" + _w_string(json_text(p.request))
                                           + _w_opt_long(p.processing_timeout_ms) + _w_opt_int(p.max_retries))
    elif type(p) is Started:
        name, body = "AssessmentStarted", b"\x02" + _w_opt_string(p.worker)
    elif type(p) is Completed:
        name, body = "AssessmentCompleted", b"\x06" + _w_string(json_text(p.result)) + _w_opt_long(p.duration_ms)
    elif type(p) is Failed:
        if type(p.retryable) is not bool:
            raise _Unwritten
        name, body = "AssessmentFailed", (b"\x08" + _w_string(p.error) + (b"\x01" if p.retryable else b"\x00")
                                          + _w_opt_long(p.duration_ms))
    elif type(p) is Cancelled:
        name, body = "AssessmentCancelled", b"\x0a" + _w_opt_string(p.reason)
    elif type(p) is Retried:
        name, body = "AssessmentRetried", b"\x0c" + _w_int(p.retry_count)
    else:
        raise _Unwritten
    source = ev.source
    if type(source) is not EventSource:
        raise _Unwritten
    occurred = _w_micros(ev.occurred_at)
    # Usually the same instant (the processor decides at once): its bytes once.
    recorded = occurred if ev.recorded_at is ev.occurred_at else _w_recorded(ev.recorded_at)
    return b"".join((
        _w_string(ev.event_id), _w_string(ev.assessment_id), _w_long(ev.version), _w_string(name),
        occurred, recorded, _w_string(source.value),
        _w_opt_string(ev.correlation_id), _w_opt_string(ev.causation_id), body,
    )), name
