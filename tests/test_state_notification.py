"""An accepted command returns the stored row its reply notification carried (no read), identical to
a read of the projection, and reads it when the row is too large for a notification; only the
channel a command names is notified."""

from __future__ import annotations

import asyncio
import json
from datetime import UTC, datetime

import pytest

from assessment_store import AssessmentStore, Settings
from assessment_store.core import CommandEnvelope, Create, EventSource, new_id
from assessment_store.projections import connect
from assessment_store.streams import REPLY_CHANNEL_PREFIX, CommandSender
from assessment_store.testing import eventually

pytestmark = pytest.mark.stack

# JSON that jsonb stores in a normal form of its own: keys reordered, numbers rewritten (1e23 is an
# integer to jsonb, -0.0 a zero), escapes, and an integer a float cannot hold.
_ODD_REQUEST = {"zz": 1, "a": [1e23, -0.0, 1.5e-7, 9007199254740993], "m": "line\nbreak | \u00e9\u2603",
                "nested": {"b": None, "a": True, "": {}}}


def _shown(a: object) -> str:
    return json.dumps(a.to_json())  # type: ignore[attr-defined] - key order and number forms included


async def test_an_accepted_command_returns_the_stored_row_without_a_read(store: AssessmentStore) -> None:
    """The state an accepted command returns came with its notification and equals a read, key order too."""
    before = (store.stats.states_notified, store.stats.states_read)
    aid = await store.create_assessment(_ODD_REQUEST)
    # A free-form command id holding the payload's separators: it is the payload's last field.
    returned = await store.update_progress(aid, 40, "a | b\nc", command_id=f"cmd|{new_id()}\n|7")
    read = await store.get_state(aid)
    assert returned == read
    assert _shown(returned) == _shown(read)
    assert returned.request_data == read.request_data and list(returned.request_data) == list(read.request_data)
    assert (store.stats.states_notified, store.stats.states_read) == (before[0] + 2, before[1])


async def test_a_state_too_large_for_a_notification_is_read(store: AssessmentStore) -> None:
    """A row of 8000 bytes or more is not notified (NOTIFY refuses it): the client reads it instead."""
    before = (store.stats.states_notified, store.stats.states_read)
    aid = await store.create_assessment({"blob": "x" * 9000})
    returned = await store.update_progress(aid, 10)
    assert returned == await store.get_state(aid)
    assert returned.request_data == {"blob": "x" * 9000}
    assert (store.stats.states_notified, store.stats.states_read) == (before[0], before[1] + 2)


async def test_a_reply_channel_named_in_a_command_gets_the_row_and_nothing_else_does(
        store: AssessmentStore, stack_settings: Settings) -> None:
    """The projector notifies the channel a command's reply-to header names, and ignores a header that is no channel's name."""
    mine = REPLY_CHANNEL_PREFIX + "0123456789abcdef"
    heard: asyncio.Queue[str] = asyncio.Queue()
    conn = await connect(stack_settings)
    sender = CommandSender(stack_settings)
    try:
        await conn.add_listener(mine, lambda *args: heard.put_nowait(args[-1]))
        good, bad = new_id(), new_id()
        for aid, reply_to in ((good, mine), (bad, 'x"; SELECT pg_sleep(10); --')):
            await sender.send(CommandEnvelope(Create(assessment_id=aid, command_id=f"c-{aid}", request={"r": aid}),
                                              datetime.now(UTC), EventSource.STORE), reply_to=reply_to)
        payload = await asyncio.wait_for(heard.get(), 30)
        row, _, tail = payload.partition("\n")
        assert json.loads(row)["assessment_id"] == good and tail == f"1|c-{good}"
        # The other command is folded all the same; its header named no channel, so nothing was sent.
        assert (await eventually(lambda: store.find_state(bad), lambda a: a is not None, timeout_s=30,
                                 what="the second command folded")) is not None
        assert heard.empty()
    finally:
        await sender.stop()
        await conn.close()
