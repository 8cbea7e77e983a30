"""CPU time per process of a local stack, read from /proc, for figures like "CPU-ms per command".

A benchmark takes a ``CpuSnapshot`` before and after the work it times; the difference per role
(kafka, postgres, processor, projector, this process) divided by the units of work done is the cost
per unit that survives a bigger machine, unlike a rate or a latency measured on a shared one.

PostgreSQL is a postmaster plus one backend per connection: its figure is the sum over the
postmaster and every live child, plus the children already reaped (the postmaster's ``cutime`` /
``cstime``), so a backend that ends between the two snapshots is still counted.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path

from assessment_store.stack import Stack

_TICK = os.sysconf("SC_CLK_TCK")


def _stat(pid: int) -> tuple[int, float, float] | None:
    """(ppid, own CPU s, reaped children's CPU s) of ``pid``, None if it is gone."""
    try:
        raw = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    # The command name (field 2) may hold spaces and parentheses: split after its closing one.
    fields = raw.rsplit(")", 1)[1].split()
    ppid, utime, stime, cutime, cstime = int(fields[1]), *(int(f) for f in fields[11:15])
    return ppid, (utime + stime) / _TICK, (cutime + cstime) / _TICK


def _children(parent: int) -> list[int]:
    out = []
    for proc in Path("/proc").iterdir():
        if proc.name.isdigit():
            st = _stat(int(proc.name))
            if st is not None and st[0] == parent:
                out.append(int(proc.name))
    return out


def process_cpu_s(pid: int | None, *, with_children: bool = False) -> float:
    """CPU seconds (user + system) ``pid`` has used; with its children, live and reaped."""
    if pid is None:
        return 0.0
    st = _stat(pid)
    if st is None:
        return 0.0
    total = st[1]
    if with_children:
        total += st[2] + sum((s[1] if (s := _stat(c)) else 0.0) for c in _children(pid))
    return total


@dataclass(frozen=True)
class CpuSnapshot:
    """Cumulative CPU seconds per role at one moment."""

    seconds: dict[str, float] = field(default_factory=dict)

    @classmethod
    def take(cls, stack: Stack, roles: tuple[str, ...] = ("kafka", "postgres", "processor", "projector")) -> CpuSnapshot:
        pids = {s.name: s.pid for s in stack.status()}
        seconds = {role: process_cpu_s(pids.get(role), with_children=role == "postgres") for role in roles}
        seconds["this process"] = process_cpu_s(os.getpid())
        return cls(seconds)

    def minus(self, earlier: CpuSnapshot) -> dict[str, float]:
        """CPU seconds per role spent between ``earlier`` and this snapshot (a restarted process: its own)."""
        spent = {}
        for role, now in self.seconds.items():
            before = earlier.seconds.get(role, 0.0)
            spent[role] = now - before if now >= before else now
        return spent


def per_unit_ms(spent: dict[str, float], units: int) -> dict[str, float]:
    """CPU milliseconds per unit of work for each role, and their ``total``."""
    out = {role: s * 1000 / units for role, s in spent.items()}
    out["total"] = sum(out.values())
    return out
