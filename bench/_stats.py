"""Summaries of latency samples shared by the benchmarks."""

from __future__ import annotations


def percentile(samples: list[float], q: float) -> float:
    """The sample at quantile ``q`` (0-1) of ``samples``: nearest rank, no interpolation."""
    s = sorted(samples)
    return s[min(len(s) - 1, int(q * len(s)))]
