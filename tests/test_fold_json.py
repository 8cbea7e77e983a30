"""The projector's JSON text for jsonb columns stores the values the standard encoder's would."""

from __future__ import annotations

import json
import math

from hypothesis import given, settings
from hypothesis import strategies as st

from assessment_store.projections._projector import _json_std, json_encoder

_json = json_encoder()

_values = st.recursive(
    st.none() | st.booleans() | st.integers(-(2**80), 2**80) | st.floats() | st.text(),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner, max_size=4),
    max_leaves=16,
)


@settings(max_examples=500, deadline=None)
@given(_values)
def test_same_json_value_as_the_standard_encoder(value: object) -> None:
    """Any JSON document (big integers, NaN, surrogates included) encodes to text of the same value, or the same text."""
    fast, std = _json(value), _json_std(value)
    if fast == std:
        return
    assert json.loads(fast) == json.loads(std)


def test_non_finite_numbers_keep_the_standard_text() -> None:
    """NaN and infinities are written as json.dumps writes them, which PostgreSQL refuses (quarantine), never as null."""
    assert _json is not _json_std  # orjson is installed with the server extra
    for v in ({"a": [1, math.nan]}, math.inf, [{"x": -math.inf}]):
        assert _json(v) == _json_std(v)
    assert _json({"s": "\ud800", "n": 2**70}) == _json_std({"s": "\ud800", "n": 2**70})
