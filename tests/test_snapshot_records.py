"""Loading a processor snapshot from its records (read_snapshot): terminal chunks, older markers, cut-short writes."""

from __future__ import annotations

from datetime import UTC, datetime

from assessment_store.core import Assessment, State
from assessment_store.streams._snapshot import (  # the record format under test
    Checkpoint, SnapshotScan, checkpoint_key, encode_checkpoint, encode_marker, encode_state, encode_terminals,
    read_snapshot, state_key, terminal_chunk_key,
)

AT = datetime(2026, 1, 1, tzinfo=UTC)


def _live(aid: str, version: int) -> Assessment:
    return Assessment(assessment_id=aid, state=State.PROCESSING, version=version, progress=10, message=None,
                      created_at=AT, updated_at=AT, request_data={"i": 1})


def _scan(records: list[tuple[bytes, bytes | None]]) -> SnapshotScan:
    scan = SnapshotScan()
    scan.values[checkpoint_key(1)] = encode_checkpoint(Checkpoint(1, 10, 0, 0))
    for key, value in records:
        scan.values[key] = value
    return scan


def test_terminal_chunk_wins_over_an_earlier_live_record() -> None:
    """An assessment in a terminal chunk whose a: record was not yet deleted loads as finished, and is reported as having an a: record."""
    scan = _scan([(state_key("x"), encode_state(_live("x", 2))), (state_key("y"), encode_state(_live("y", 3))),
                  (terminal_chunk_key(0), encode_terminals([("x", State.COMPLETED, 4), ("z", State.CANCELLED, 2)]))])
    loaded, reason, _ = read_snapshot(scan)
    assert loaded is not None, reason
    assert loaded.terminal == {"x": (State.COMPLETED, 4), "z": (State.CANCELLED, 2)}
    assert set(loaded.states) == {"y"}
    assert loaded.terminal_chunks == {0: ["x", "z"]}
    assert scan.state_records == {"x", "y"}


def test_older_marker_and_tombstones() -> None:
    """An older format's a: terminal marker still loads as finished; a deleted a: record or chunk loads as nothing."""
    scan = _scan([(state_key("m"), encode_marker(State.COMPLETED, 3)), (state_key("gone"), None),
                  (terminal_chunk_key(5), None)])
    loaded, reason, _ = read_snapshot(scan)
    assert loaded is not None, reason
    assert loaded.terminal == {"m": (State.COMPLETED, 3)} and loaded.states == {}
    assert loaded.terminal_chunks == {} and scan.state_records == {"m"}
    assert scan.next_terminal_chunk == 6 and scan.terminal_chunk_seqs == []


def test_malformed_terminal_chunk_is_never_used() -> None:
    """A terminal chunk with a live state, a bad version or no entries makes the snapshot unusable (full rebuild), naming the entry."""
    for raw in (b'{"v": 1, "t": {"PROCESSING": [["a"], [2]]}}', b'{"v": 1, "t": {"COMPLETED": [["a"], ["2"]]}}',
                b'{"v": 1, "t": {}}', b'{"v": 1, "t": {"COMPLETED": [["a", "b"], [2]]}}',
                b'{"v": 1, "t": {"COMPLETED": [["a"], [true]]}}', b'{"v": 1, "t": [["a", "COMPLETED", 2]]}'):
        loaded, reason, why = read_snapshot(_scan([(terminal_chunk_key(0), raw)]))
        assert loaded is None and reason == "undecodable", raw
        assert "terminal chunk" in why
