"""The hand-written reader and writer of the current event schema (schemas/_fast_event.py) and reader of the
current command schema (schemas/_fast_command.py) agree with fastavro."""

from __future__ import annotations

import re
from datetime import UTC, datetime, timedelta
from unittest import mock

import fastavro

from hypothesis import given, settings
from hypothesis import strategies as st

from assessment_store.core import (
    Cancel, Cancelled, Command, CommandEnvelope, Complete, Completed, Create, Created, Event, EventSource,
    ExpireDeadline, Fail, Failed, Payload, ProgressUpdated, Retried, Retry, Start, Started, UpdateProgress,
)
from assessment_store.schemas import CommandCodec, EventCodec

FAST = EventCodec()
SLOW = EventCodec()
SLOW._fast_prefix = None  # the fastavro path only: the reference

_json = st.recursive(
    st.none() | st.booleans() | st.integers(-(2**70), 2**70) | st.floats(allow_nan=False, allow_infinity=False)
    | st.text(),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner, max_size=4),
    max_leaves=12,
)
_text = st.text(max_size=300)
_opt_text = st.none() | _text
_long = st.none() | st.integers(-(2**63), 2**63 - 1)
_int = st.integers(-(2**31), 2**31 - 1)
_payloads: st.SearchStrategy[Payload] = st.one_of(
    st.builds(Created, _json, _long, st.none() | _int),
    st.builds(Started, _opt_text),
    st.builds(ProgressUpdated, _int, _opt_text),
    st.builds(Completed, _json, _long),
    st.builds(Failed, _text, st.booleans(), _long),
    st.builds(Cancelled, _opt_text),
    st.builds(Retried, _int),
)
_times = st.datetimes(min_value=datetime(1, 1, 2), max_value=datetime(9999, 12, 30), timezones=st.just(UTC))
_events = st.builds(
    Event, _text, st.integers(-(2**63), 2**63 - 1), _payloads, _times, _times, st.sampled_from(list(EventSource)),
    st.uuids().map(str), _opt_text, _opt_text,
)


def _outcome(codec: EventCodec | CommandCodec, value: bytes) -> object:
    try:
        return codec.decode(value, [])
    except Exception as e:  # noqa: BLE001 - compared, whatever it is
        # fastavro names its reader object with its address ("<_io.BytesIO object at 0x...>"),
        # which differs between any two decodes: the words are compared, not the address.
        return (type(e), re.sub(r" at 0x[0-9a-f]+", "", str(e)))


def test_the_current_schema_takes_the_fast_path() -> None:
    """The reader was written for the current schema file: a changed file needs the reader brought up to date."""
    assert FAST.fast_path, "assessment_event.avsc changed: update schemas/_fast_event.py (reader and FINGERPRINT)"


@settings(max_examples=400, deadline=None)
@given(_events)
def test_reads_every_event_as_fastavro_does(event: Event) -> None:
    """Generated events of every payload type decode to the same Event by hand as through fastavro."""
    value, headers = FAST.encode(event)
    assert FAST.decode(value, headers) == SLOW.decode(value, headers) == event


@settings(max_examples=400, deadline=None)
@given(_events)
def test_writes_every_event_as_fastavro_does(event: Event) -> None:
    """Generated events of every payload type encode by hand (fastavro's writer never called) to fastavro's bytes and headers."""
    expected = SLOW.encode(event)
    with mock.patch.object(fastavro, "schemaless_writer", side_effect=AssertionError("fastavro called")):
        assert FAST.encode(event) == expected


def test_values_the_writer_leaves_to_fastavro_get_its_answer() -> None:
    """A naive datetime, a bool or a too-wide int where Avro wants an int, a non-string: fastavro encodes or refuses them, as before."""
    at = datetime(2026, 1, 2, tzinfo=UTC)
    odd = [
        Event("a", 1, Started(), datetime(2026, 1, 2), at),  # naive
        Event("a", True, Started(), at, at),  # type: ignore[arg-type]  # a bool for a long
        Event("a", 1, ProgressUpdated(2**40), at, at),  # beyond an Avro int
        Event("a", 1, Failed("e", 1), at, at),  # type: ignore[arg-type]  # an int for a boolean
        Event("a", 1, Started(7), at, at),  # type: ignore[arg-type]  # not a string
        Event("a", 1, Created({"x": float("nan")}), at, at),  # JSON text cannot hold it
    ]
    for event in odd:
        assert _encoded(FAST, event) == _encoded(SLOW, event)


def _encoded(codec: EventCodec, event: Event) -> object:
    try:
        return codec.encode(event)
    except Exception as e:  # noqa: BLE001 - compared, whatever it is
        return (type(e), str(e))


@settings(max_examples=150, deadline=None)
@given(_events, st.data())
def test_corrupt_bytes_give_fastavros_answer(event: Event, data: st.DataObject) -> None:
    """Truncated or altered records give exactly what fastavro gives: the same event, or the same error."""
    _assert_corruptions_agree(FAST, SLOW, FAST.encode(event)[0], data)


def _assert_corruptions_agree(fast: EventCodec | CommandCodec, slow: EventCodec | CommandCodec, value: bytes,
                              data: st.DataObject) -> None:
    """``value`` cut short at a drawn place, and with one drawn byte altered: both codecs give the same outcome."""
    cut = data.draw(st.integers(10, len(value)))
    assert _outcome(fast, value[:cut]) == _outcome(slow, value[:cut])
    at = data.draw(st.integers(10, len(value) - 1))
    byte = data.draw(st.integers(0, 255))
    altered = value[:at] + bytes([byte]) + value[at + 1:]
    assert _outcome(fast, altered) == _outcome(slow, altered)


def test_timestamps_far_from_the_epoch() -> None:
    """Micro-second timestamps before 1970 and far after it read the same as fastavro's."""
    for at in (datetime(1, 1, 2, tzinfo=UTC), datetime(1969, 12, 31, 23, 59, 59, 999999, tzinfo=UTC),
               datetime(9999, 12, 30, tzinfo=UTC) + timedelta(microseconds=1)):
        value, headers = FAST.encode(Event("a", 1, Started(None), at, at))
        assert FAST.decode(value, headers) == SLOW.decode(value, headers)


def test_integers_beyond_64_bits_stay_exact_integers() -> None:
    """A document integer outside orjson's exact range decodes as the same int (type and value) as fastavro's."""
    doc = {"big": 2**64, "neg": -(2**63) - 1, "huge": 2**70 + 1, "ok": 2**63 - 1, "long text": "1" * 25}
    value, headers = FAST.encode(Event("a", 1, Created(doc, None, None), datetime(2026, 1, 1, tzinfo=UTC),
                                       datetime(2026, 1, 1, tzinfo=UTC)))
    got = FAST.decode(value, headers).payload
    assert isinstance(got, Created)
    assert got.request == doc
    assert all(type(got.request[k]) is type(v) for k, v in doc.items())


# --- commands (schemas/_fast_command.py) ---------------------------------------------------

FAST_COMMANDS = CommandCodec()
SLOW_COMMANDS = CommandCodec()
SLOW_COMMANDS._fast_prefix = None  # the fastavro path only: the reference

_ids = {"assessment_id": _text, "command_id": _text, "expected_version": _long,
        "correlation_id": _opt_text}
_commands: st.SearchStrategy[Command] = st.one_of(
    st.builds(Create, request=_json, processing_timeout_ms=_long, max_retries=st.none() | _int, **_ids),
    st.builds(Start, worker=_opt_text, **_ids),
    st.builds(UpdateProgress, progress=_int, message=_opt_text, **_ids),
    st.builds(Complete, result=_json, duration_ms=_long, **_ids),
    st.builds(Fail, error=_text, retryable=st.booleans(), duration_ms=_long, **_ids),
    st.builds(Cancel, reason=_opt_text, **_ids),
    st.builds(Retry, **_ids),
    st.builds(ExpireDeadline, started_at=_times, timeout_ms=st.integers(-(2**63), 2**63 - 1), **_ids),
)
_envelopes = st.builds(CommandEnvelope, _commands, _times, st.sampled_from(list(EventSource)), st.none() | _times)


def test_the_current_command_schema_takes_the_fast_path() -> None:
    """The command reader is written for the current command schema (a changed schema file must update it)."""
    assert FAST_COMMANDS.fast_path, "assessment_command.avsc changed: update schemas/_fast_command.py (FINGERPRINT)"


@settings(max_examples=400, deadline=None)
@given(_envelopes)
def test_reads_every_command_as_fastavro_does(env: CommandEnvelope) -> None:
    """Generated commands of every type decode by hand (fastavro's reader never called) to what fastavro's reading gives."""
    value, headers = FAST_COMMANDS.encode(env)
    expected = SLOW_COMMANDS.decode(value, headers)
    with mock.patch.object(fastavro, "schemaless_reader", side_effect=AssertionError("fastavro called")):
        assert FAST_COMMANDS.decode(value, headers) == expected == env


@settings(max_examples=150, deadline=None)
@given(_envelopes, st.data())
def test_corrupt_command_bytes_give_fastavros_answer(env: CommandEnvelope, data: st.DataObject) -> None:
    """Truncated or altered command records give exactly what fastavro gives: the same command, or the same error."""
    _assert_corruptions_agree(FAST_COMMANDS, SLOW_COMMANDS, FAST_COMMANDS.encode(env)[0], data)
