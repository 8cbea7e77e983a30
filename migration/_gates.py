"""The rollout's gates: pure functions over fleet-wide windows (docs/migration.md, "Gates").

A fleet window adds up every instance's ``WindowObservation`` of one wall-clock window. Each gate
reads one figure of it and says PASS, HOLD or ROLLBACK; the window's verdict is the worst gate's,
or INCONCLUSIVE when the window has fewer store-routed calls than ``min_calls`` (a thin window
proves nothing either way; only the health probe can still fail it).

``GateTracker`` turns window verdicts into decisions with anti-flap: HOLD after ``hold_windows``
consecutive windows at HOLD or worse, ROLLBACK after ``rollback_windows`` consecutive windows at
ROLLBACK. An INCONCLUSIVE window neither extends nor breaks a streak. A step advances once
passing windows cover its soak time; any conclusive window that does not pass starts that count
over (the soak must be healthy throughout).
"""

from __future__ import annotations

import enum
import math
from collections.abc import Iterable
from typing import Any
from dataclasses import dataclass, field

from assessment_store.core import JSON

from ._observations import LATENCY_BUCKETS_MS, WindowObservation, p95_ms

__all__ = [
    "Decision", "FleetWindow", "GateReading", "GateThresholds", "GateTracker", "HealthReading", "Level",
    "WindowEvaluation", "evaluate_window", "fleet_window",
]


class Level(enum.IntEnum):
    """A gate's or a window's verdict, best to worst (INCONCLUSIVE is outside the order)."""

    PASS = 0
    HOLD = 1
    ROLLBACK = 2
    INCONCLUSIVE = -1

    @property
    def label(self) -> str:
        return self.name.lower()


@dataclass(frozen=True, slots=True)
class GateThresholds:
    """Rates as fractions (0.05 = 5 %), latency in seconds. A rate or p95 *above* a threshold trips it."""

    hold_error_rate: float = 0.05
    hold_p95_s: float = 5.0
    rollback_error_rate: float = 0.10
    rollback_p95_s: float = 10.0
    rollback_failure_rate: float = 0.05
    rollback_mismatch_rate: float = 0.01
    min_calls: int = 100
    """Store-routed calls below which a window is INCONCLUSIVE."""
    min_compared: int = 20
    """Shadow comparisons below which the mismatch gate has no reading (passes)."""
    hold_windows: int = 2
    rollback_windows: int = 3

    def __post_init__(self) -> None:
        for name in ("hold_error_rate", "rollback_error_rate", "rollback_failure_rate", "rollback_mismatch_rate"):
            v = getattr(self, name)
            if not (math.isfinite(v) and 0 <= v <= 1):
                raise ValueError(f"{name} must be a fraction in [0, 1], got {v!r}")
        if not (self.hold_p95_s > 0 and self.rollback_p95_s > 0):
            raise ValueError("p95 thresholds must be > 0")
        if self.min_calls < 1 or self.min_compared < 1 or self.hold_windows < 1 or self.rollback_windows < 1:
            raise ValueError("min_calls, min_compared, hold_windows and rollback_windows must be >= 1")

    def to_json(self) -> dict[str, JSON]:
        return {"holdErrorRate": self.hold_error_rate, "holdP95S": self.hold_p95_s,
                "rollbackErrorRate": self.rollback_error_rate, "rollbackP95S": self.rollback_p95_s,
                "rollbackFailureRate": self.rollback_failure_rate, "rollbackMismatchRate": self.rollback_mismatch_rate,
                "minCalls": self.min_calls, "minCompared": self.min_compared, "holdWindows": self.hold_windows,
                "rollbackWindows": self.rollback_windows}

    @classmethod
    def from_json(cls, doc: dict[str, Any]) -> GateThresholds:
        return cls(
            hold_error_rate=float(doc["holdErrorRate"]), hold_p95_s=float(doc["holdP95S"]),
            rollback_error_rate=float(doc["rollbackErrorRate"]),
            rollback_p95_s=float(doc["rollbackP95S"]),
            rollback_failure_rate=float(doc["rollbackFailureRate"]),
            rollback_mismatch_rate=float(doc["rollbackMismatchRate"]),
            min_calls=int(doc["minCalls"]), min_compared=int(doc["minCompared"]),
            hold_windows=int(doc["holdWindows"]), rollback_windows=int(doc["rollbackWindows"]),
        )


@dataclass(frozen=True, slots=True)
class FleetWindow:
    """Every instance's observations of one window, added up."""

    start: float
    window_s: float
    instances: int = 0
    calls: int = 0
    errors: int = 0
    failures: int = 0
    latency: tuple[int, ...] = tuple(0 for _ in LATENCY_BUCKETS_MS)
    shadow_compared: int = 0
    shadow_mismatched: int = 0
    legacy_calls: int = 0

    @property
    def error_rate(self) -> float | None:
        return self.errors / self.calls if self.calls else None

    @property
    def failure_rate(self) -> float | None:
        return self.failures / self.calls if self.calls else None

    @property
    def p95_s(self) -> float | None:
        ms = p95_ms(self.latency)
        return None if ms is None else ms / 1000

    @property
    def mismatch_rate(self) -> float | None:
        return self.shadow_mismatched / self.shadow_compared if self.shadow_compared else None


def fleet_window(start: float, window_s: float, observations: Iterable[WindowObservation]) -> FleetWindow:
    obs = [o for o in observations if o.start == start]
    latency = [0] * len(LATENCY_BUCKETS_MS)
    for o in obs:
        for i, n in enumerate(o.latency):
            latency[i] += n
    return FleetWindow(
        start=start, window_s=window_s, instances=len({o.instance for o in obs}), calls=sum(o.calls for o in obs),
        errors=sum(o.errors for o in obs), failures=sum(o.failures for o in obs), latency=tuple(latency),
        shadow_compared=sum(o.shadow_compared for o in obs), shadow_mismatched=sum(o.shadow_mismatched for o in obs),
        legacy_calls=sum(o.legacy_calls for o in obs))


@dataclass(frozen=True, slots=True)
class HealthReading:
    """What a health probe says: ``healthy`` false trips the health gate (ROLLBACK level)."""

    healthy: bool
    detail: str = ""


@dataclass(frozen=True, slots=True)
class GateReading:
    gate: str
    value: float | None
    hold: float | None
    rollback: float | None
    level: Level

    def to_json(self) -> dict[str, JSON]:
        return {"gate": self.gate, "value": None if self.value is None or math.isinf(self.value) else self.value,
                "hold": self.hold, "rollback": self.rollback, "verdict": self.level.label}


@dataclass(frozen=True, slots=True)
class WindowEvaluation:
    window: FleetWindow
    level: Level
    gates: tuple[GateReading, ...]
    health: HealthReading | None = None

    def to_json(self) -> dict[str, JSON]:
        w = self.window
        p95 = w.p95_s
        return {"windowStart": w.start, "windowS": w.window_s, "instances": w.instances, "calls": w.calls,
                "errors": w.errors, "failures": w.failures, "errorRate": w.error_rate, "failureRate": w.failure_rate,
                "p95S": None if p95 is None or math.isinf(p95) else p95, "shadowCompared": w.shadow_compared,
                "mismatchRate": w.mismatch_rate, "legacyCalls": w.legacy_calls, "verdict": self.level.label,
                "gates": [g.to_json() for g in self.gates],
                "health": None if self.health is None else {"healthy": self.health.healthy, "detail": self.health.detail}}


def _gate(name: str, value: float | None, hold: float | None, rollback: float | None) -> GateReading:
    if value is None:
        return GateReading(name, None, hold, rollback, Level.PASS)
    if rollback is not None and value > rollback:
        return GateReading(name, value, hold, rollback, Level.ROLLBACK)
    if hold is not None and value > hold:
        return GateReading(name, value, hold, rollback, Level.HOLD)
    return GateReading(name, value, hold, rollback, Level.PASS)


def evaluate_window(window: FleetWindow, t: GateThresholds, health: HealthReading | None = None) -> WindowEvaluation:
    """The gates of one fleet window (pure)."""
    mismatch = window.mismatch_rate if window.shadow_compared >= t.min_compared else None
    gates = [
        _gate("error_rate", window.error_rate, t.hold_error_rate, t.rollback_error_rate),
        _gate("p95", window.p95_s, t.hold_p95_s, t.rollback_p95_s),
        _gate("failure_rate", window.failure_rate, None, t.rollback_failure_rate),
        _gate("mismatch_rate", mismatch, None, t.rollback_mismatch_rate),
    ]
    if health is not None:
        gates.append(GateReading("health", 1.0 if health.healthy else 0.0, None, None,
                                 Level.PASS if health.healthy else Level.ROLLBACK))
    health_bad = health is not None and not health.healthy
    if window.calls < t.min_calls:
        # Thin: the rates mean nothing, but an unhealthy system is unhealthy at any traffic.
        level = Level.ROLLBACK if health_bad else Level.INCONCLUSIVE
    else:
        level = max((g.level for g in gates), default=Level.PASS)
    return WindowEvaluation(window, level, tuple(gates), health)


class Decision(enum.Enum):
    NONE = "none"
    HOLD = "hold"
    CLEAR = "clear"
    """a HOLD is over: a window passed again"""
    ADVANCE = "advance"
    ROLLBACK = "rollback"


@dataclass(slots=True)
class GateTracker:
    """Anti-flap and soak accounting within one step (reset at every step)."""

    thresholds: GateThresholds
    soak_s: float
    hold_streak: int = 0
    rollback_streak: int = 0
    passed_s: float = 0.0
    held: bool = False
    counts: dict[str, int] = field(default_factory=dict)

    def feed(self, ev: WindowEvaluation) -> Decision:
        """Account one window (in time order); the decision it leads to."""
        self.counts[ev.level.label] = self.counts.get(ev.level.label, 0) + 1
        t = self.thresholds
        if ev.level is Level.INCONCLUSIVE:
            return Decision.NONE
        if ev.level is Level.PASS:
            self.hold_streak = self.rollback_streak = 0
            self.passed_s += ev.window.window_s
            if self.held:
                self.held = False
                return Decision.CLEAR if self.passed_s < self.soak_s else Decision.ADVANCE
            return Decision.ADVANCE if self.passed_s >= self.soak_s else Decision.NONE
        self.passed_s = 0.0
        self.hold_streak += 1
        self.rollback_streak = self.rollback_streak + 1 if ev.level is Level.ROLLBACK else 0
        if self.rollback_streak >= t.rollback_windows:
            return Decision.ROLLBACK
        if self.hold_streak >= t.hold_windows and not self.held:
            self.held = True
            return Decision.HOLD
        return Decision.NONE
