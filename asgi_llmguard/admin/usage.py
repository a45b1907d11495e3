"""The usage-query handlers: totals, time buckets and top keys from the ledger."""

from __future__ import annotations

import time
from typing import Any, Literal, cast

from asgi_llmguard.admin._request import AdminError, Request, not_configured, parse_time
from asgi_llmguard.usage.query import Bucket, UsageFilter, query_usage, top_keys
from asgi_llmguard.usage.report import LedgerError, parse_by, parse_since


class UsageQueries:
    """``GET /usage`` and ``GET /usage/top-keys`` over the ledger at ``ledger`` (a URL)."""

    def __init__(self, ledger: str | None) -> None:
        self.ledger = ledger

    def _filter(self, request: Request) -> UsageFilter:
        now = time.time()
        start_text, end_text, since = request.arg("start"), request.arg("end"), request.arg("since")
        end = parse_time(end_text, "end") if end_text else None
        if start_text:
            start = parse_time(start_text, "start")
        else:
            try:
                window = parse_since(since or "24h").total_seconds()
            except ValueError as exc:
                raise AdminError(400, str(exc)) from None
            start = (end or now) - window
        if end is not None and end <= start:
            raise AdminError(400, "end must be after start.")
        return UsageFilter(start, end, key_id=request.arg("key"), model=request.arg("model"))

    def _ledger(self) -> str:
        if self.ledger is None:
            raise not_configured("SQLite or PostgreSQL usage ledger")
        return self.ledger

    async def usage(self, request: Request) -> tuple[int, Any]:
        ledger = self._ledger()
        filt = self._filter(request)
        try:
            by = parse_by(request.arg("by") or "none")
        except ValueError as exc:
            raise AdminError(400, str(exc)) from None
        bucket = request.arg("bucket")
        if bucket not in (None, "hour", "day"):
            raise AdminError(400, "bucket must be 'hour' or 'day'.")
        try:
            total = await query_usage(ledger, filt)
            rows = (
                await query_usage(ledger, filt, by=by, bucket=cast(Bucket | None, bucket))
                if by or bucket
                else []
            )
        except LedgerError as exc:
            raise AdminError(409, str(exc), code="ledger_unavailable") from None
        return 200, {
            "start": filt.start,
            "end": filt.end,
            "key": filt.key_id,
            "model": filt.model,
            "bucket": bucket,
            "by": by,
            "total": total[0].as_dict(()),
            "rows": [row.as_dict(by) for row in rows],
        }

    async def top_keys(self, request: Request) -> tuple[int, Any]:
        ledger = self._ledger()
        filt = self._filter(request)
        try:
            limit = int(request.arg("limit") or 10)
        except ValueError:
            raise AdminError(400, "limit must be an integer.") from None
        if not 1 <= limit <= 1000:
            raise AdminError(400, "limit must be between 1 and 1000.")
        try:
            rows = await top_keys(ledger, filt, limit)
        except LedgerError as exc:
            raise AdminError(409, str(exc), code="ledger_unavailable") from None
        by: list[Literal["key"]] = ["key"]
        return 200, {"start": filt.start, "end": filt.end, "keys": [r.as_dict(by) for r in rows]}
