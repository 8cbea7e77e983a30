"""The lag status rules (monitoring/_status.py), each driven into its state from a window of
observations; pure, no services. Also the Prometheus collector over a hand-made snapshot."""

from __future__ import annotations

from prometheus_client import generate_latest

from assessment_store.monitoring import (
    GroupLag, LagSnapshot, Observation, PartitionLag, Status, Thresholds, TopicPartitionOffsets, evaluate,
    lag_registry, worst,
)

T = Thresholds(err_lag_seconds=300.0, stopped_after_s=60.0)


def _window(*rows: tuple[float, int | None, int], seconds: float | None = None, since: float | None = None,
            owned: bool = False) -> list[Observation]:
    """Observations from (at, committed, lag) rows; the newest carries ``seconds``."""
    obs = [Observation(at, c, lag, None, since, owned) for at, c, lag in rows]
    last = obs[-1]
    obs[-1] = Observation(last.at, last.committed, last.lag, seconds, last.committed_since, last.owned)
    return obs


def test_caught_up_is_ok() -> None:
    """A partition whose lag is 0 is OK."""
    assert evaluate(_window((0, 10, 0), (5, 12, 0)), T).status is Status.OK


def test_a_zero_lag_anywhere_in_the_window_is_ok() -> None:
    """A backlog, even a growing one, after a zero lag within the window is OK (Burrow's first rule)."""
    assert evaluate(_window((0, 10, 0), (5, 10, 3), (10, 11, 6)), T).status is Status.OK


def test_growing_lag_is_warn() -> None:
    """Lag never decreasing and higher at the end, offsets moving, below the seconds threshold: WARN."""
    v = evaluate(_window((0, 10, 2), (5, 12, 2), (10, 14, 5), seconds=20.0), T)
    assert v.status is Status.WARN and "2 -> 5" in v.reason


def test_steady_or_shrinking_lag_is_ok() -> None:
    """A backlog that holds steady or shrinks while offsets move is OK."""
    assert evaluate(_window((0, 10, 5), (5, 15, 5), (10, 20, 5)), T).status is Status.OK
    assert evaluate(_window((0, 10, 9), (5, 15, 7), (10, 20, 3), seconds=1000.0), T).status is Status.OK


def test_a_dip_breaks_the_growth() -> None:
    """A lag that decreased once in the window is not 'growing': OK, not WARN."""
    assert evaluate(_window((0, 10, 2), (5, 12, 1), (10, 14, 5)), T).status is Status.OK


def test_old_backlog_not_shrinking_is_err() -> None:
    """Oldest unconsumed record older than the threshold and lag not shrinking: ERR."""
    v = evaluate(_window((0, 10, 2), (5, 12, 2), (10, 14, 5), seconds=301.0), T)
    assert v.status is Status.ERR and "301 s" in v.reason


def test_a_single_old_observation_is_err() -> None:
    """One observation of a partition far behind (a one-shot `lag`) is ERR at once."""
    assert evaluate(_window((0, 10, 5), seconds=3600.0), T).status is Status.ERR
    assert evaluate(_window((0, 10, 5), seconds=299.0), T).status is Status.OK


def test_unmoved_offset_without_a_member_is_stop() -> None:
    """Offset unmoved for the threshold, lag in every observation, nobody owns the partition: STOP."""
    v = evaluate(_window((0, 10, 3), (30, 10, 4), (61, 10, 5), since=0.0), T)
    assert v.status is Status.STOP and "no member" in v.reason


def test_unmoved_offset_with_a_live_member_is_stall() -> None:
    """The same, but a live member owns the partition: STALL (there, yet not progressing)."""
    v = evaluate(_window((0, 10, 3), (30, 10, 4), (61, 10, 5), since=0.0, owned=True), T)
    assert v.status is Status.STALL


def test_recommitting_the_same_offset_is_stall() -> None:
    """A commit time that moves while the offset does not (the source records commit times): STALL."""
    window = [Observation(0, 10, 3, None, -100.0), Observation(30, 10, 3, None, -100.0),
              Observation(70, 10, 3, None, -5.0)]
    assert evaluate(window, Thresholds(300.0, 60.0)).status is Status.STALL


def test_unmoved_offset_not_yet_for_long_enough_is_not_stop() -> None:
    """An offset unmoved for less than the threshold is judged by the lag rules, here WARN."""
    v = evaluate(_window((0, 10, 3), (30, 10, 4), (59, 10, 5), since=0.0), T)
    assert v.status is Status.WARN


def test_unknown_commit_time_counts_from_the_window_start() -> None:
    """Without a known commit time, the offset has been unmoved at least since the window's first observation."""
    assert evaluate(_window((0, None, 3), (61, None, 3)), T).status is Status.STOP
    assert evaluate(_window((0, None, 3), (59, None, 3)), T).status is Status.OK


def test_a_stuck_partition_that_caught_up_once_is_not_stop() -> None:
    """STOP needs a lag in every observation: a zero in the window keeps it OK."""
    assert evaluate(_window((0, 10, 0), (30, 10, 4), (70, 10, 5), since=0.0), T).status is Status.OK


def test_committed_offset_going_back_is_rewind() -> None:
    """A committed offset lower than the one before it: REWIND, whatever the lag does."""
    v = evaluate(_window((0, 10, 0), (5, 12, 0), (10, 3, 9)), T)
    assert v.status is Status.REWIND and "12 to 3" in v.reason


def test_group_status_is_the_worst_partition() -> None:
    """Statuses rank OK < REWIND < WARN < ERR < STALL < STOP; a group takes its worst; none is OK."""
    assert [s.code for s in Status] == [0, 1, 2, 3, 4, 5]
    assert worst([Status.OK, Status.STALL, Status.WARN]) is Status.STALL
    assert worst([Status.REWIND, Status.OK]) is Status.REWIND
    assert worst([]) is Status.OK


def _partition(topic: str, p: int, committed: int | None, lag: int, seconds: float | None,
               status: Status = Status.OK) -> PartitionLag:
    return PartitionLag(topic, p, committed, 0, (committed or 0) + lag, lag, seconds, None, False, True, 0.0, None,
                        status, "")


def test_collector_exposes_kafka_exporter_names_and_one_hot_status() -> None:
    """The collector serves kafka_exporter's lag/offset names and a one-hot status per group, stale figures included."""
    group = GroupLag("g1", "postgres", "Stable", 1, (_partition("t", 0, 7, 3, 12.5, Status.WARN),
                                                     _partition("t", 1, None, 4, None)), Status.WARN)
    snap = LagSnapshot(1000.0, (group,), (TopicPartitionOffsets("t", 0, 0, 10),), reachable=False, stale=True)
    text = generate_latest(lag_registry(lambda: snap)).decode()
    assert 'kafka_consumergroup_lag{consumergroup="g1",partition="0",topic="t"} 3.0' in text
    assert 'kafka_consumergroup_lag{consumergroup="g1",partition="1",topic="t"} 4.0' in text
    assert 'kafka_consumergroup_current_offset{consumergroup="g1",partition="0",topic="t"} 7.0' in text
    assert 'partition="1"' not in text.split("kafka_consumergroup_current_offset", 2)[-1].split("\n# ", 1)[0]
    assert 'kafka_topic_partition_current_offset{partition="0",topic="t"} 10.0' in text
    assert 'assessment_store_consumergroup_lag_seconds{consumergroup="g1",partition="0",topic="t"} 12.5' in text
    assert 'assessment_store_consumergroup_status{consumergroup="g1",status="WARN"} 1.0' in text
    assert 'assessment_store_consumergroup_status{consumergroup="g1",status="OK"} 0.0' in text
    assert 'assessment_store_consumergroup_status_code{consumergroup="g1"} 2.0' in text
    assert 'assessment_store_consumergroup_source{consumergroup="g1",source="postgres"} 1.0' in text
    assert "assessment_store_lag_monitor_up 0.0" in text
