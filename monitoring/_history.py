"""The dashboard's in-memory history: one time axis and any number of named series, each a
fixed-size ring of doubles (``array('d')``, 8 bytes a point) aligned on the axis. Memory is
allocated once per series and never grows: a day at 10 s is 8,640 points, 69 KB a series; the
number of series is capped, and a series with no value left in the ring is dropped."""

from __future__ import annotations

import math
from array import array
from collections.abc import Iterable, Mapping

__all__ = ["History"]

_NAN = math.nan


class History:
    def __init__(self, capacity: int, *, max_series: int = 2000) -> None:
        if capacity < 1:
            raise ValueError("capacity must be at least 1")
        self.capacity = capacity
        self.max_series = max_series
        self._times = array("d", [_NAN]) * capacity
        self._series: dict[str, array[float]] = {}
        self._last_seen: dict[str, int] = {}
        """series -> the sequence number of the newest point it has a value at."""
        self._seq = 0
        """Points appended so far; the next one goes to ``_seq % capacity``."""
        self.dropped_series = 0
        """Series refused because ``max_series`` was reached (a sign of a label explosion)."""

    def __len__(self) -> int:
        return min(self._seq, self.capacity)

    @property
    def series_names(self) -> list[str]:
        return sorted(self._series)

    def append(self, at: float, values: Mapping[str, float | None]) -> None:
        """One point in time: every series gets its value (NaN for those not in ``values``)."""
        slot = self._seq % self.capacity
        self._times[slot] = at
        for ring in self._series.values():
            ring[slot] = _NAN
        for name, value in values.items():
            if value is None or not math.isfinite(value):
                continue
            if name not in self._series:
                if len(self._series) >= self.max_series:
                    self.dropped_series += 1
                    continue
                self._series[name] = array("d", [_NAN]) * self.capacity
            self._series[name][slot] = value
            self._last_seen[name] = self._seq
        self._seq += 1
        # A series whose every point has left the ring is gone (a deleted group, a topic's partition).
        oldest = self._seq - self.capacity
        for name in [n for n, seen in self._last_seen.items() if seen < oldest]:
            del self._series[name], self._last_seen[name]

    def _order(self, since: float | None) -> list[int]:
        n = len(self)
        first = self._seq - n
        slots = [(first + i) % self.capacity for i in range(n)]
        if since is not None:
            slots = [s for s in slots if self._times[s] >= since]
        return slots

    def export(self, *, since: float | None = None, names: Iterable[str] | None = None,
               prefix: str | None = None, exclude_prefix: str | None = None) -> dict[str, object]:
        """``{"t": [...], "series": {name: [value or None, ...]}}``, oldest first, for the page's
        charts (uPlot's column layout: one x array and one y array per series, nulls as gaps)."""
        slots = self._order(since)
        wanted = self._series.keys() if names is None else [n for n in names if n in self._series]
        if prefix is not None:
            wanted = [n for n in wanted if n.startswith(prefix)]
        if exclude_prefix is not None:
            wanted = [n for n in wanted if not n.startswith(exclude_prefix)]
        series: dict[str, list[float | None]] = {}
        for name in wanted:
            ring = self._series[name]
            values = [None if math.isnan(v := ring[s]) else _round(v) for s in slots]
            if any(v is not None for v in values):
                series[name] = values
        return {"t": [round(self._times[s], 3) for s in slots], "series": series}


def _round(v: float) -> float:
    # Six significant figures is more than a chart shows, and halves the JSON of a day.
    return float(f"{v:.6g}")
