"""Sticky routing (``migration._buckets``): the shared vectors, stickiness and distribution. Pure, no stack."""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

import pytest

from assessment_store import ValidationError
from assessment_store.migration import bucket, route_to_store
from assessment_store.migration._buckets import threshold

VECTORS_FILE = Path(__file__).resolve().parent.parent / "bridge" / "routing_vectors.json"


def _vectors() -> list[dict[str, Any]]:
    vectors: list[dict[str, Any]] = json.loads(VECTORS_FILE.read_text(encoding="utf-8"))["vectors"]
    return vectors


def test_every_shared_vector_matches() -> None:
    """Every vector of routing_vectors.json (also checked by the Node suite) gives the same bucket and decision."""
    vectors = _vectors()
    assert len(vectors) >= 300
    mismatches = [
        v for v in vectors
        if bucket(v["key"], v["salt"]) != v["bucket"]
        or route_to_store(v["key"], v["percentage"], v["salt"]) != v["routeToStore"]
    ]
    assert mismatches == []


@pytest.mark.parametrize(
    ("percentage", "expected"),
    [(0, 0), (0.005, 1), (0.01, 1), (0.125, 13), (12.34, 1234), (12.345, 1235), (30, 3000), (99.995, 10000),
     (99.99, 9999), (100, 10000)],
)
def test_threshold_rounds_halves_up_like_javascript(percentage: float, expected: int) -> None:
    """round(percentage * 100) rounds ties up, as JavaScript Math.round does (Python's round() would not)."""
    assert threshold(percentage) == expected


@pytest.mark.parametrize("bad", [-0.01, 100.01, 150, math.inf, -math.inf, math.nan])
def test_out_of_range_percentage_is_refused(bad: float) -> None:
    """A percentage outside [0, 100] or not finite raises ValidationError naming 'percentage'."""
    with pytest.raises(ValidationError) as info:
        route_to_store("a", bad, "s")
    assert info.value.field == "percentage"


def test_non_number_percentage_is_refused() -> None:
    """A percentage that is not a number (a string, a bool) is refused, naming 'percentage'."""
    for bad in ("30", True, None):
        with pytest.raises(ValidationError) as info:
            route_to_store("a", bad, "s")  # type: ignore[arg-type]
        assert info.value.field == "percentage"


def test_lone_surrogate_key_is_refused() -> None:
    """A key with a lone surrogate has no UTF-8 bytes: refused, naming 'key' (Node refuses it too)."""
    with pytest.raises(ValidationError) as info:
        bucket("\ud800", "s")
    assert info.value.field == "key"


def test_routing_is_sticky_and_monotonic_over_the_rollout_steps() -> None:
    """The same key always gets the same side, and a key routed at p % stays routed at every higher step."""
    steps = [1, 5, 10, 25, 50, 75, 90, 95, 99, 100]
    for i in range(5000):
        key = f"assessment-{i}"
        decisions = [route_to_store(key, p, "rollout-2024") for p in steps]
        assert decisions == [route_to_store(key, p, "rollout-2024") for p in steps]
        first = decisions.index(True) if True in decisions else len(decisions)
        assert decisions == [False] * first + [True] * (len(decisions) - first)


@pytest.mark.parametrize("target", [30, 5, 50, 99])
def test_distribution_within_one_percent(target: float) -> None:
    """Over 100,000 keys the share routed to the store is within +/-1 point of the target."""
    n = 100_000
    routed = sum(route_to_store(f"key-{i}", target, "dist-salt") for i in range(n))
    assert abs(routed / n * 100 - target) <= 1.0


def test_salt_reshuffles_the_keys() -> None:
    """A different salt routes a different set of keys at the same percentage."""
    keys = [f"k{i}" for i in range(2000)]
    a = {k for k in keys if route_to_store(k, 30, "salt-a")}
    b = {k for k in keys if route_to_store(k, 30, "salt-b")}
    assert a != b
