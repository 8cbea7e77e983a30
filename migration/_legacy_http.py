"""``HttpLegacyBackend``: the router's ``LegacyBackend`` over the HTTP face of the legacy service.

The Node sample service serves it (``bridge/node/bin/legacy-http.js``, see ``bridge/node/README.md``):
JSON endpoints for the legacy operations, with the tap attached (its writes reach the store through
the bridge) and the reverse sync imported (the store's writes reach it).

Errors are the store's own, so the router treats both sides alike:

* transport failures (connection refused or reset, timeouts other than a long-poll's own), 5xx and
  unreadable answers -> ``BackendError`` (what legacy fallback and retries key on);
* 404 -> ``AssessmentNotFound(id)``; 409 -> ``InvalidTransition(id, STATE, transition)``;
  400 -> ``ValidationError(field, reason)``; a long-poll that ends unfinished (408) -> ``WaitTimeout``.

httpx is imported when the backend is created, so ``import assessment_store.migration`` works without it.
"""

from __future__ import annotations

import math
from datetime import UTC, datetime
from types import TracebackType
from typing import TYPE_CHECKING, Any
from urllib.parse import quote

from assessment_store.core import (
    JSON,
    Assessment,
    AssessmentNotFound,
    BackendError,
    InvalidTransition,
    ValidationError,
    WaitTimeout,
)

from assessment_store.bridge import convert_legacy_state

if TYPE_CHECKING:
    import httpx

__all__ = ["HttpLegacyBackend", "LegacyUnavailable", "assessment_from_legacy_record"]

# The legacy service names transitions by its own verbs; the store's InvalidTransition uses these.
_TRANSITIONS = {"start": "start", "update_progress": "update_progress", "complete": "complete", "fail": "fail",
                "cancel": "cancel", "create": "create"}


class LegacyUnavailable(BackendError):
    """The legacy service could not be reached or answered nonsense (``.url``, ``.status`` when it answered)."""

    def __init__(self, message: str, *, url: str, status: int | None = None) -> None:
        self.url = url
        self.status = status
        super().__init__(message)


def _parse_time(value: object) -> datetime:
    if isinstance(value, str):
        try:
            return datetime.fromisoformat(value.replace("Z", "+00:00"))
        except ValueError:
            pass
    return datetime.now(UTC)


def assessment_from_legacy_record(record: dict[str, Any]) -> Assessment:
    """An ``Assessment`` from the legacy record the HTTP face answers (export fields + ``version``)."""
    aid = record.get("assessmentId")
    status = record.get("status")
    state = convert_legacy_state(status) if isinstance(status, str) else None
    if not isinstance(aid, str) or state is None:
        raise ValueError(f"not a legacy record: assessmentId={aid!r}, status={status!r}")
    created = _parse_time(record.get("timestamp"))
    updated = _parse_time(record.get("updatedAt"))
    progress = record.get("progress")
    duration = record.get("duration")
    version = record.get("version")
    message = record.get("message")
    error = record.get("error")
    return Assessment(
        assessment_id=aid,
        state=state,
        version=version if isinstance(version, int) else 0,
        progress=int(progress) if isinstance(progress, int | float) and math.isfinite(progress) else 0,
        message=message if isinstance(message, str) else None,
        created_at=created,
        updated_at=updated,
        request_data=record.get("request"),
        result_data=record.get("result"),
        error_message=error if isinstance(error, str) else None,
        duration=int(duration) if isinstance(duration, int | float) and math.isfinite(duration) else None,
        finished_at=updated if state.terminal else None,
    )


class HttpLegacyBackend:
    """The legacy side of ``MigrationRouter``, over HTTP. ``async with HttpLegacyBackend(url) as legacy``.

    ``timeout_s`` bounds each ordinary call; a ``wait_for_completion`` call gets its own wait plus
    ``timeout_s``. ``client`` lets the caller bring a configured ``httpx.AsyncClient`` (then it is
    not closed here).
    """

    def __init__(self, base_url: str, *, timeout_s: float = 10.0, max_connections: int = 100,
                 client: httpx.AsyncClient | None = None) -> None:
        import httpx

        self._httpx = httpx
        self.base_url = base_url.rstrip("/")
        self.timeout_s = timeout_s
        self._own_client = client is None
        self._client = client or httpx.AsyncClient(
            base_url=self.base_url, timeout=timeout_s,
            limits=httpx.Limits(max_connections=max_connections, max_keepalive_connections=max_connections),
        )

    async def aclose(self) -> None:
        if self._own_client:
            await self._client.aclose()

    async def __aenter__(self) -> HttpLegacyBackend:
        return self

    async def __aexit__(self, et: type[BaseException] | None, e: BaseException | None,
                        tb: TracebackType | None) -> None:
        await self.aclose()

    # --- the LegacyBackend protocol ------------------------------------------------------------

    async def create_assessment(self, request: JSON, *, assessment_id: str) -> str:
        body = await self._call("POST", "/assessments", assessment_id, "create",
                                json={"request": request, "assessmentId": assessment_id})
        created = body.get("assessmentId")
        if not isinstance(created, str):
            raise LegacyUnavailable(f"legacy create of {assessment_id!r} answered no assessmentId: {body!r}",
                                    url=f"{self.base_url}/assessments")
        return created

    async def start_assessment(self, assessment_id: str) -> Assessment:
        return await self._transition(assessment_id, "start", None)

    async def update_progress(self, assessment_id: str, progress: int, message: str | None = None) -> Assessment:
        return await self._transition(assessment_id, "progress", {"progress": progress, "message": message},
                                      transition="update_progress")

    async def complete_assessment(self, assessment_id: str, result: JSON, *,
                                  duration_ms: int | None = None) -> Assessment:
        # duration_ms travels along; the legacy service measures and keeps its own duration.
        return await self._transition(assessment_id, "complete", {"result": result, "durationMs": duration_ms})

    async def fail_assessment(self, assessment_id: str, error: str) -> Assessment:
        return await self._transition(assessment_id, "fail", {"error": error})

    async def cancel_assessment(self, assessment_id: str) -> Assessment:
        return await self._transition(assessment_id, "cancel", None)

    async def get_state(self, assessment_id: str) -> Assessment:
        return self._assessment(await self._call("GET", self._path(assessment_id), assessment_id, "get"))

    async def find_state(self, assessment_id: str) -> Assessment | None:
        """Like ``get_state``, ``None`` when legacy does not know the id."""
        try:
            return await self.get_state(assessment_id)
        except AssessmentNotFound:
            return None

    async def synced_version(self, assessment_id: str) -> int:
        """``storeVersion`` of the legacy record: the store version of the last reverse-synced change
        the service applied; 0 when it applied none or does not know the id."""
        try:
            body = await self._call("GET", self._path(assessment_id), assessment_id, "get")
        except AssessmentNotFound:
            return 0
        version = body.get("storeVersion", 0)
        if isinstance(version, bool) or not isinstance(version, int) or version < 0:
            raise LegacyUnavailable(f"legacy service answered storeVersion={version!r} for {assessment_id!r}",
                                    url=self.base_url)
        return version

    async def wait_for_completion(self, assessment_id: str, timeout: float = 30.0) -> Assessment:
        """Long-poll until COMPLETED, FAILED or CANCELLED; ``WaitTimeout`` after ``timeout`` seconds."""
        ms = max(0, int(timeout * 1000))
        body = await self._call("GET", f"{self._path(assessment_id)}/wait", assessment_id, "wait",
                                params={"timeout": str(ms)}, timeout_s=timeout + self.timeout_s,
                                wait_timeout_s=timeout)
        return self._assessment(body)

    # --- plumbing -------------------------------------------------------------------------------

    @staticmethod
    def _path(assessment_id: str) -> str:
        return f"/assessments/{quote(assessment_id, safe='')}"

    async def _transition(self, assessment_id: str, action: str, body: dict[str, JSON] | None, *,
                          transition: str | None = None) -> Assessment:
        answer = await self._call("POST", f"{self._path(assessment_id)}/{action}", assessment_id,
                                  transition or action, json=body if body is not None else {})
        return self._assessment(answer)

    def _assessment(self, body: dict[str, Any]) -> Assessment:
        try:
            return assessment_from_legacy_record(body)
        except ValueError as e:
            raise LegacyUnavailable(f"legacy service answered an unreadable record: {e}", url=self.base_url) from e

    async def _call(self, method: str, path: str, assessment_id: str, transition: str, *,
                    json: JSON = None, params: dict[str, str] | None = None, timeout_s: float | None = None,
                    wait_timeout_s: float | None = None) -> dict[str, Any]:
        url = f"{self.base_url}{path}"
        httpx = self._httpx
        try:
            response = await self._client.request(
                method, url, json=json if method == "POST" else None, params=params,
                timeout=timeout_s if timeout_s is not None else self.timeout_s,
            )
        except httpx.TimeoutException as e:
            raise LegacyUnavailable(f"legacy {method} {url}: no answer within "
                                    f"{timeout_s if timeout_s is not None else self.timeout_s:g} s ({e!r})",
                                    url=url) from e
        except httpx.HTTPError as e:  # connect refused/reset, protocol errors
            raise LegacyUnavailable(f"legacy {method} {url} failed: {type(e).__name__}: {e}", url=url) from e
        try:
            body = response.json()
        except ValueError:
            body = None
        if not isinstance(body, dict):
            raise LegacyUnavailable(f"legacy {method} {url} answered {response.status_code} without a JSON object",
                                    url=url, status=response.status_code)
        status = response.status_code
        if status < 300:
            return body
        if status == 404 and body.get("error") == "AssessmentNotFound":
            raise AssessmentNotFound(str(body.get("assessmentId", assessment_id)))
        if status == 409:
            legacy_status = body.get("status")
            state = convert_legacy_state(legacy_status) if isinstance(legacy_status, str) else None
            raise InvalidTransition(str(body.get("assessmentId", assessment_id)),
                                    state.value if state is not None else str(legacy_status),
                                    _TRANSITIONS.get(str(body.get("action")), transition))
        if status == 400:
            raise ValidationError(str(body.get("field", "request")), str(body.get("reason", body)))
        if status == 408 and wait_timeout_s is not None:
            raise WaitTimeout(assessment_id, wait_timeout_s)
        raise LegacyUnavailable(f"legacy {method} {url} answered {status}: {body!r}", url=url, status=status)
