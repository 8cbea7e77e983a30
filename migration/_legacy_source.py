"""The legacy side of a validation: the export endpoints of the legacy service's HTTP face
(``bridge/node/src/export-routes.js``): per-bucket checksums, and the records of chosen buckets."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator, Sequence
from types import TracebackType
from typing import Any

import httpx

from ._legacy_http import LegacyUnavailable

__all__ = ["BUCKETS_PER_REQUEST", "LegacyExport"]

BUCKETS_PER_REQUEST = 512
"""Bucket ids per records request: keeps the query string well under Node's 16 KiB header limit."""


class LegacyExport:
    """``async with LegacyExport(url) as legacy``: checksums and records of the legacy service."""

    def __init__(self, base_url: str, *, timeout_s: float = 300.0) -> None:
        self.base_url = base_url.rstrip("/")
        # A checksum request over a million records takes seconds on the legacy side: a long read timeout.
        self._client = httpx.AsyncClient(base_url=self.base_url, timeout=httpx.Timeout(timeout_s, connect=10.0))

    async def __aenter__(self) -> LegacyExport:
        return self

    async def __aexit__(self, et: type[BaseException] | None, e: BaseException | None, tb: TracebackType | None) -> None:
        await self._client.aclose()

    async def checksums(self, buckets: int, id_prefix: str = "") -> tuple[int, dict[int, tuple[int, int]]]:
        """(records, bucket -> (count, checksum)) over the ids starting with ``id_prefix``."""
        url = f"{self.base_url}/export/checksums"
        try:
            response = await self._client.get("/export/checksums", params={"buckets": buckets, "idPrefix": id_prefix})
        except httpx.HTTPError as e:
            raise LegacyUnavailable(f"legacy GET {url} failed: {type(e).__name__}: {e}", url=url) from e
        body = self._json(response, url)
        try:
            total = int(body["total"])
            sums = {int(b): (int(n), int(str(s), 16)) for b, n, s in body["checksums"]}
        except (KeyError, TypeError, ValueError) as e:
            raise LegacyUnavailable(f"legacy GET {url} answered an unreadable checksum list: {e!r}",
                                    url=url, status=response.status_code) from e
        return total, sums

    async def status_counts(self, id_prefix: str = "") -> tuple[int, dict[str, int]]:
        """(records, status -> records) over the ids starting with ``id_prefix`` (``GET /export/counts``)."""
        url = f"{self.base_url}/export/counts"
        try:
            response = await self._client.get("/export/counts", params={"idPrefix": id_prefix})
        except httpx.HTTPError as e:
            raise LegacyUnavailable(f"legacy GET {url} failed: {type(e).__name__}: {e}", url=url) from e
        body = self._json(response, url)
        try:
            return int(body["total"]), {str(k): int(v) for k, v in body["byStatus"].items()}
        except (KeyError, TypeError, ValueError, AttributeError) as e:
            raise LegacyUnavailable(f"legacy GET {url} answered unreadable counts: {e!r}",
                                    url=url, status=response.status_code) from e

    async def records(self, buckets: int, bucket_ids: Sequence[int] | None,
                      id_prefix: str = "") -> AsyncIterator[dict[str, Any]]:
        """The export records of ``bucket_ids`` (every record when None), streamed."""
        chunks: list[Sequence[int] | None] = (
            [None] if bucket_ids is None
            else [bucket_ids[i:i + BUCKETS_PER_REQUEST] for i in range(0, len(bucket_ids), BUCKETS_PER_REQUEST)])
        url = f"{self.base_url}/export"
        for chunk in chunks:
            params: dict[str, str | int] = {"buckets": buckets, "idPrefix": id_prefix}
            if chunk is not None:
                params["bucket"] = ",".join(map(str, chunk))
            try:
                async with self._client.stream("GET", "/export", params=params) as response:
                    if response.status_code != 200:
                        await response.aread()
                        raise LegacyUnavailable(f"legacy GET {url} answered {response.status_code}: "
                                                f"{response.text[:500]}", url=url, status=response.status_code)
                    async for line in response.aiter_lines():
                        if not line.strip():
                            continue
                        try:
                            record = json.loads(line)
                        except ValueError as e:
                            raise LegacyUnavailable(f"legacy GET {url} streamed a line that is not JSON: "
                                                    f"{line[:200]!r}", url=url) from e
                        if isinstance(record, dict):
                            yield record
            except httpx.HTTPError as e:
                raise LegacyUnavailable(f"legacy GET {url} failed: {type(e).__name__}: {e}", url=url) from e

    @staticmethod
    def _json(response: httpx.Response, url: str) -> dict[str, Any]:
        try:
            body = response.json()
        except ValueError:
            body = None
        if response.status_code != 200 or not isinstance(body, dict):
            raise LegacyUnavailable(f"legacy GET {url} answered {response.status_code}: {response.text[:500]}",
                                    url=url, status=response.status_code)
        return body
