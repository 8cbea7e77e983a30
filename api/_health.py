"""The open probes: /livez (the process answers), /readyz (Kafka and PostgreSQL answer) and
/healthz (the store's counts). No token: orchestrators and load balancers call them."""

from __future__ import annotations

import asyncio
from typing import Annotated, Any

from fastapi import APIRouter, Depends, Request

from assessment_store.client import AssessmentStore

from ._openapi import problems
from ._problems import problem
from ._state import StoreDep

__all__ = ["Readiness", "router"]

router = APIRouter(tags=["health"])


class Readiness:
    """The last readiness checks, reused for ``ttl_s``: frequent probes must not load the backends."""

    def __init__(self, ttl_s: float = 1.0) -> None:
        self._ttl_s = ttl_s
        self._until = 0.0
        self._checks: dict[str, str] = {}

    async def checks(self, store: AssessmentStore) -> dict[str, str]:
        loop = asyncio.get_running_loop()
        if loop.time() >= self._until:
            self._checks = await store.readiness()
            self._until = loop.time() + self._ttl_s
        return self._checks


def _readiness(request: Request) -> Readiness:
    readiness: Readiness = request.app.state.readiness
    return readiness


@router.get("/livez")
async def livez() -> dict[str, str]:
    """Liveness: the process answers. No I/O, so an orchestrator never restarts the API for an
    outage of Kafka or PostgreSQL (open: no token)."""
    return {"status": "ok"}


@router.get("/readyz", responses=problems(503, why={503: "Kafka or PostgreSQL not ready: `checks` names which "
                                                         "(Retry-After: 1)"}))
async def readyz(store: StoreDep, readiness: Annotated[Readiness, Depends(_readiness)]) -> Any:
    """Readiness: PostgreSQL answers a query and Kafka a metadata request (each within 3 s; results
    reused for 1 s, so probes cannot load the backends). 503 names what is not ready (open: no token)."""
    checks = await readiness.checks(store)
    failing = {k: v for k, v in checks.items() if v != "ok"}
    if failing:
        resp = problem(503, "Not ready", "; ".join(f"{k}: {v}" for k, v in failing.items()), checks=checks,
                       retriable=True)
        resp.headers["Retry-After"] = "1"
        return resp
    return {"status": "ready", "checks": checks}


@router.get("/healthz", responses=problems(503, why={503: "PostgreSQL is unavailable (the counts come from it); "
                                                          "Retry-After when retrying may succeed"}))
async def healthz(store: StoreDep) -> dict[str, Any]:
    """Liveness plus the store's counts per state (open: no token; counts name no assessment)."""
    return {"status": "ok", "counts": {k.value: v for k, v in (await store.count_by_state()).items()}}
