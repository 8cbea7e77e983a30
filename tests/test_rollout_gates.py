"""The rollout's gates, anti-flap, soak accounting and the fold of its decisions (migration/_gates.py,
migration/_rollout.py); pure, no services."""

from __future__ import annotations

from assessment_store.migration import (
    LATENCY_BUCKETS_MS,
    Decision,
    GateThresholds,
    GateTracker,
    HealthReading,
    Level,
    RolloutEvent,
    RolloutPlan,
    RolloutState,
    WindowObservation,
    evaluate_window,
    fleet_window,
    fold,
    p95_ms,
    parse_duration,
)

T = GateThresholds(min_calls=100, min_compared=20)


def _obs(instance: str, start: float = 0.0, *, calls: int = 100, errors: int = 0, failures: int = 0,
         latency_ms: float = 10, compared: int = 0, mismatched: int = 0) -> WindowObservation:
    latency = [0] * len(LATENCY_BUCKETS_MS)
    latency[next(i for i, b in enumerate(LATENCY_BUCKETS_MS) if latency_ms <= b)] = calls
    return WindowObservation(instance, start, 1.0, calls, errors, failures, tuple(latency), compared, mismatched)


def _level(*obs: WindowObservation, health: HealthReading | None = None) -> Level:
    return evaluate_window(fleet_window(0.0, 1.0, obs), T, health).level


def test_fleet_window_adds_instances_and_p95_is_the_bucket_bound() -> None:
    """Two instances' windows add up; p95 is the upper bound of the bucket holding the 95th percentile."""
    w = fleet_window(0.0, 1.0, [_obs("a", calls=90, latency_ms=10), _obs("b", calls=10, latency_ms=4000),
                                _obs("c", start=1.0, calls=500)])
    assert (w.instances, w.calls) == (2, 100)
    assert w.p95_s == 5.0  # 10 % of the calls took 4 s: the 95th percentile is in the (3 s, 5 s] bucket
    assert p95_ms([0] * len(LATENCY_BUCKETS_MS)) is None


def test_each_gate_drives_its_level() -> None:
    """Error rate holds above 5 % and rolls back above 10 %; p95 holds above 5 s and rolls back above 10 s;
    failure rate above 5 % and mismatch rate above 1 % roll back; an unhealthy probe rolls back."""
    assert _level(_obs("a")) is Level.PASS
    assert _level(_obs("a", errors=6)) is Level.HOLD
    assert _level(_obs("a", errors=11)) is Level.ROLLBACK
    assert _level(_obs("a", latency_ms=7000)) is Level.HOLD
    assert _level(_obs("a", latency_ms=15000)) is Level.ROLLBACK
    assert _level(_obs("a", failures=6)) is Level.ROLLBACK
    assert _level(_obs("a", compared=100, mismatched=2)) is Level.ROLLBACK
    assert _level(_obs("a", compared=100, mismatched=1)) is Level.PASS
    assert _level(_obs("a", compared=10, mismatched=5)) is Level.PASS  # too few comparisons to read
    assert _level(_obs("a"), health=HealthReading(False, "lag STALL")) is Level.ROLLBACK


def test_thin_window_is_inconclusive_unless_unhealthy() -> None:
    """Below min_calls a window is inconclusive even with every call failing; an unhealthy probe still fails it."""
    assert _level(_obs("a", calls=99, errors=99)) is Level.INCONCLUSIVE
    assert _level(_obs("a", calls=99), health=HealthReading(False)) is Level.ROLLBACK


def _window(level: Level, i: int) -> WindowObservation:
    kw = {Level.PASS: {}, Level.HOLD: {"errors": 6}, Level.ROLLBACK: {"errors": 50}, Level.INCONCLUSIVE: {"calls": 1}}
    return _obs("a", float(i), **kw[level])  # type: ignore[arg-type]


def _decisions(tracker: GateTracker, levels: list[Level]) -> list[Decision]:
    out = []
    for i, lv in enumerate(levels):
        ev = evaluate_window(fleet_window(float(i), 1.0, [_window(lv, i)]), T)
        assert ev.level is lv
        out.append(tracker.feed(ev))
    return out


P, H, R, I = Level.PASS, Level.HOLD, Level.ROLLBACK, Level.INCONCLUSIVE


def test_single_bad_window_does_not_roll_back() -> None:
    """Anti-flap: one or two rollback-level windows between passing ones decide nothing; three in a row roll back."""
    t = GateTracker(T, soak_s=100)
    assert Decision.ROLLBACK not in _decisions(t, [P, R, P, R, R, P, R])
    t = GateTracker(T, soak_s=100)
    assert _decisions(t, [P, R, R, R])[-1] is Decision.ROLLBACK


def test_inconclusive_windows_neither_extend_nor_break_a_streak_nor_soak() -> None:
    """Thin windows in between: R, I, R, I, R still rolls back; only passing windows count towards the soak."""
    t = GateTracker(T, soak_s=100)
    assert _decisions(t, [R, I, R, I, R])[-1] is Decision.ROLLBACK
    t = GateTracker(T, soak_s=3)
    assert _decisions(t, [I, I, I, I, P, I, P]) == [Decision.NONE] * 7 and t.passed_s == 2
    assert _decisions(t, [P])[-1] is Decision.ADVANCE


def test_hold_after_two_windows_then_clear_and_soak_starts_over() -> None:
    """Two HOLD-level windows hold (once); a passing window clears the hold; the soak counts from there."""
    t = GateTracker(T, soak_s=2)
    assert _decisions(t, [P, H, H, H, P]) == [Decision.NONE, Decision.NONE, Decision.HOLD, Decision.NONE, Decision.CLEAR]
    assert t.passed_s == 1
    assert _decisions(t, [P])[-1] is Decision.ADVANCE


def _ev(type_: str, at: float, **kw: object) -> RolloutEvent:
    return RolloutEvent(type_, kw.pop("rollout_id", "r1"), at, "test", **kw)  # type: ignore[arg-type]


def test_fold_never_moves_twice_and_fences_a_deposed_controller() -> None:
    """A repeated advance from the same step is folded once; a decision of an epoch below the latest lease is ignored."""
    plan = RolloutPlan(steps=(10, 50, 100), first_soak_s=1, soak_s=1, window_s=1, grace_s=0)
    s = RolloutState()
    for ev in [_ev("lease", 0, epoch=1), _ev("start", 1, epoch=1, plan=plan),
               _ev("advance", 5, epoch=1, step=1, from_step=0), _ev("advance", 6, epoch=1, step=1, from_step=0),
               _ev("lease", 7, epoch=2), _ev("advance", 8, epoch=1, step=2, from_step=1)]:
        s = fold(s, ev)
    assert (s.status, s.step, s.step_started_s, s.epoch, s.fenced) == ("running", 1, 5, 2, 1)
    s = fold(s, _ev("command", 9, command="pause", command_id="c1"))
    assert [e.command for e in s.pending] == ["pause"]
    s = fold(s, _ev("pause", 10, epoch=2, command_id="c1"))
    assert (s.status, s.pending) == ("paused", ())
    s = fold(s, _ev("rollback", 11))  # an operator's rollback: no epoch, never fenced
    assert s.terminal and s.status == "rolled_back"


def test_parse_duration() -> None:
    """24h, 30m, 10s, 250ms and plain seconds parse; nonsense does not."""
    assert [parse_duration(t) for t in ("24h", "30m", "10s", "250ms", "1.5")] == [86400, 1800, 10, 0.25, 1.5]
    try:
        parse_duration("soon")
    except ValueError:
        return
    raise AssertionError("'soon' parsed")
