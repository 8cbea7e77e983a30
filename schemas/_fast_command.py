"""A hand-written reader of one writer schema of ``assessment_command.avsc``: the processor's hot path.

``fastavro.schemaless_reader`` took a seventh of the processor's CPU in a drain of commands (py-spy),
interpreting the schema on every call and building a dict that ``CommandCodec`` then turned into the
command. This reads the Avro binary encoding of the one schema whose fingerprint is ``FINGERPRINT``
straight into a ``CommandEnvelope``, under the same rules as the event reader (schemas/_fast_event.py):
only records of that fingerprint; anything not read cleanly (truncated bytes, a bad union branch,
invalid UTF-8, JSON text that does not parse) makes the caller decode the record with fastavro, whose
result or error is the answer; the commands are equal to what ``CommandCodec.decode``'s constructor
calls build, filled through their slots (``core.slot_constructor``: the frozen ``__init__``s, with
their keyword dict, cost a command and its envelope about a microsecond more);
tests/test_codec_fast.py checks it against fastavro on generated commands.
"""

from __future__ import annotations

import json
from datetime import datetime

from assessment_store.core import (
    Cancel,
    Command,
    CommandEnvelope,
    Complete,
    Create,
    ExpireDeadline,
    Fail,
    Retry,
    Start,
    UpdateProgress,
    slot_constructor,
)

from ._fast_event import _SOURCES, _UNCLEAN, _Unread, _instant, _int, _long, _opt_int, _opt_long, _opt_string, _string

__all__ = ["FINGERPRINT", "read_command"]

FINGERPRINT = "3f5995599dc7302b"
"""The writer schema this reader implements (hex of the 8 little-endian fingerprint bytes)."""


# Every field, positionally in field order (common ones first: assessment_id, command_id,
# expected_version, correlation_id); none of these classes has a __post_init__ to skip.
_create = slot_constructor(Create)
_start = slot_constructor(Start)
_update_progress = slot_constructor(UpdateProgress)
_complete = slot_constructor(Complete)
_fail = slot_constructor(Fail)
_cancel = slot_constructor(Cancel)
_retry = slot_constructor(Retry)
_expire_deadline = slot_constructor(ExpireDeadline)
_envelope = slot_constructor(CommandEnvelope)


def read_command(b: bytes, pos: int) -> CommandEnvelope | None:
    """The command encoded at ``b[pos:]`` with the ``FINGERPRINT`` schema, or None when the bytes are
    anything but a clean read (the caller then decodes them with fastavro)."""
    try:
        return _read(b, pos)
    except _UNCLEAN:
        return None


def _micros(b: bytes, pos: int) -> tuple[datetime, int]:
    n, pos = _long(b, pos)
    return _instant(n), pos


def _read(b: bytes, pos: int) -> CommandEnvelope:
    command_id, pos = _string(b, pos)
    assessment_id, pos = _string(b, pos)
    _type, pos = _string(b, pos)  # the body branch names the type; this copy is for readers without Avro
    expected_version, pos = _opt_long(b, pos)
    issued_at, pos = _micros(b, pos)
    source, pos = _string(b, pos)
    correlation_id, pos = _opt_string(b, pos)
    branch, pos = _long(b, pos)
    occurred_at: datetime | None
    if branch == 0:
        occurred_at = None
    elif branch == 1:
        occurred_at, pos = _micros(b, pos)
    else:
        raise _Unread
    branch, pos = _long(b, pos)
    command: Command
    # Branches in the order of the body union in assessment_command.avsc; values as in
    # schemas/_commands.py's _body_from_avro.
    if branch == 2:
        progress, pos = _int(b, pos)
        message, pos = _opt_string(b, pos)
        command = _update_progress(assessment_id, command_id, expected_version, correlation_id, progress, message)
    elif branch == 0:
        request, pos = _string(b, pos)
        timeout, pos = _opt_long(b, pos)
        max_retries, pos = _opt_int(b, pos)
        command = _create(assessment_id, command_id, expected_version, correlation_id, json.loads(request), timeout,
                          max_retries)
    elif branch == 1:
        worker, pos = _opt_string(b, pos)
        command = _start(assessment_id, command_id, expected_version, correlation_id, worker)
    elif branch == 3:
        result, pos = _string(b, pos)
        duration, pos = _opt_long(b, pos)
        command = _complete(assessment_id, command_id, expected_version, correlation_id, json.loads(result), duration)
    elif branch == 4:
        error, pos = _string(b, pos)
        if b[pos] > 1:
            raise _Unread  # a boolean is one byte, 0 or 1
        retryable = b[pos] == 1
        duration, pos = _opt_long(b, pos + 1)
        command = _fail(assessment_id, command_id, expected_version, correlation_id, error, retryable, duration)
    elif branch == 5:
        reason, pos = _opt_string(b, pos)
        command = _cancel(assessment_id, command_id, expected_version, correlation_id, reason)
    elif branch == 6:
        command = _retry(assessment_id, command_id, expected_version, correlation_id)
    elif branch == 7:
        started_at, pos = _micros(b, pos)
        timeout_ms, pos = _long(b, pos)
        command = _expire_deadline(assessment_id, command_id, expected_version, correlation_id, started_at, timeout_ms)
    else:
        raise _Unread
    # An unknown source is a KeyError here (fastavro's path then refuses it in its own words).
    return _envelope(command, issued_at, _SOURCES[source], occurred_at)
