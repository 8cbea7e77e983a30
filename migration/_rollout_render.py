"""The rollout for people: one progress line per decision, and ``migrate status``."""

from __future__ import annotations

import re
import time
from typing import Any
from datetime import UTC, datetime

from rich.console import Console
from rich.table import Table


from ._phase import MigrationPhase
from ._rollout import RolloutEvent, RolloutState

__all__ = ["event_line", "parse_duration", "render_phase", "render_status"]

_UNITS = {"ms": 0.001, "s": 1.0, "m": 60.0, "h": 3600.0, "d": 86400.0}
_DURATION = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*(ms|s|m|h|d)?\s*$")


def parse_duration(text: str) -> float:
    """``"24h"``, ``"90m"``, ``"2s"``, ``"1.5"`` (seconds) -> seconds; ``ValueError`` otherwise."""
    m = _DURATION.match(text)
    if m is None:
        raise ValueError(f"not a duration: {text!r} (use e.g. 24h, 30m, 10s)")
    return float(m.group(1)) * _UNITS[m.group(2) or "s"]


def _pct(v: Any) -> str:
    return "-" if v is None else f"{float(v) * 100:.1f} %"


def _reading(r: dict[str, Any]) -> str:
    at = datetime.fromtimestamp(float(r["windowStart"]), UTC).strftime("%H:%M:%S")
    p95 = r.get("p95S")
    return (f"[{at} {r['verdict']}] calls {r['calls']} err {_pct(r.get('errorRate'))} "
            f"fail {_pct(r.get('failureRate'))} p95 {'-' if p95 is None else f'{float(p95):g} s'} "
            f"mismatch {_pct(r.get('mismatchRate'))}"
            + ("" if not r.get("health") else f" health {'ok' if r['health']['healthy'] else 'NOT OK'}"))


def event_line(ev: RolloutEvent) -> str:
    """One line per decision: time, what, where, why, and the last reading it was taken on."""
    at = datetime.fromtimestamp(ev.at_s, UTC).strftime("%H:%M:%S")
    where = "" if ev.percentage is None else f" step {ev.step} ({ev.percentage:g} %)"
    line = f"{at} {ev.type.upper()}{where}"
    if ev.command:
        line += f" {ev.command}"
    if ev.reason:
        line += f": {ev.reason}"
    if ev.readings:
        line += f" | {_reading(ev.readings[-1])}"
    return line


def render_status(state: RolloutState, console: Console, *, now_s: float | None = None) -> None:
    now_s = time.time() if now_s is None else now_s
    if state.status is None or state.plan is None:
        console.print("no rollout has started (`assessment-store migrate rollout`)")
        return
    plan = state.plan
    console.print(f"rollout [bold]{state.rollout_id}[/]: [bold]{state.status}[/], step {state.step + 1} of "
                  f"{len(plan.steps)} at [bold]{state.percentage:g} %[/] for {now_s - state.step_started_s:.0f} s "
                  f"(soak {plan.soak_for(state.step):g} s), controller epoch {state.epoch}", highlight=False)
    if state.pending:
        console.print("pending commands: " + ", ".join(str(e.command) for e in state.pending))
    table = Table("at", "decision", "step", "reason", "last reading", show_lines=False)
    for ev in [e for e in state.events if e.type not in ("command", "lease")][-10:]:
        table.add_row(datetime.fromtimestamp(ev.at_s, UTC).strftime("%Y-%m-%d %H:%M:%S"), ev.type,
                      "" if ev.percentage is None else f"{ev.step} ({ev.percentage:g} %)", ev.reason,
                      _reading(ev.readings[-1]) if ev.readings else "")
    console.print(table)


def render_phase(phase: MigrationPhase, console: Console) -> None:
    """The phase line, the latest validation and the reverse sync's lag (above the rollout's status)."""
    console.print(f"phase: [bold]{phase.phase}[/] ({phase.reason})", highlight=False)
    f = phase.flags
    console.print(f"flags: store {'on' if f.enable_assessment_store else 'off'}, {f.migration_percentage:g} %, dual mode "
                  f"{'on' if f.enable_dual_mode else 'off'}, fallback {'on' if f.enable_legacy_fallback else 'off'}",
                  highlight=False)
    v = phase.validation
    if v is None:
        console.print("latest validation: none (`assessment-store migrate validate`)")
    else:
        found = ", ".join(f"{k} {n}" for k, n in sorted(v.totals.items()) if n) or "no findings"
        console.print(f"latest validation: run {v.run_id} [bold]{v.verdict.value}[/] at "
                      f"{v.finished_at.isoformat(timespec='seconds')}: legacy {v.legacy_count:,}, store "
                      f"{v.store_count:,}, {found}", highlight=False)
    if phase.reverse_sync is not None:
        console.print(phase.reverse_sync.describe(), highlight=False)
    else:
        console.print(f"reverse sync: unknown ({phase.reverse_sync_error})", highlight=False)
