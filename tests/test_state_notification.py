"""An accepted command returns the stored row its notification carried (no read), identical to a
read of the projection, and reads it when the row is too large for a notification."""

from __future__ import annotations

import json

import pytest

from assessment_store import AssessmentStore
from assessment_store.core import new_id

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
