"""What every admin handler shares: the parsed `Request` and the `AdminError` it may raise."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any
from urllib.parse import parse_qsl, unquote

import msgspec

from asgi_llmguard.types import Scope

#: The longest path parameter (a key id, a credential name) accepted.
MAX_ID = 256


class AdminError(Exception):
    """An admin call's failure as the caller sees it: status, message, error type and code."""

    def __init__(
        self, status: int, message: str, type: str | None = None, code: str | None = None
    ) -> None:
        super().__init__(message)
        self.status = status
        self.message = message
        self.type = type or ("invalid_request_error" if status < 500 else "server_error")
        self.code = code


@dataclass(frozen=True, slots=True)
class Request:
    """What a handler needs of an admin request: path parameters, query and JSON body."""

    params: tuple[str, ...]
    query: dict[str, list[str]]
    body: bytes

    @classmethod
    def make(cls, scope: Scope, groups: Sequence[str], body: bytes) -> Request:
        params = tuple(unquote(g) for g in groups)
        if any(len(p) > MAX_ID for p in params):
            raise AdminError(400, "A path parameter is too long.")
        query: dict[str, list[str]] = {}
        raw = scope.get("query_string", b"").decode("latin-1")
        for name, value in parse_qsl(raw, keep_blank_values=False):
            query.setdefault(name, []).append(value)
        return cls(params, query, body)

    def arg(self, name: str) -> str | None:
        values = self.query.get(name)
        return values[-1] if values else None

    def json(self) -> dict[str, Any]:
        if not self.body.strip():
            return {}
        try:
            data = msgspec.json.decode(self.body)
        except msgspec.DecodeError:
            raise AdminError(400, "The request body is not valid JSON.") from None
        if not isinstance(data, dict):
            raise AdminError(400, "The request body must be a JSON object.")
        return data


def not_configured(what: str) -> AdminError:
    return AdminError(409, f"This gateway has no {what}.", code="not_configured")


def parse_time(text: str, name: str) -> float:
    """Seconds since the epoch, or an ISO 8601 time (UTC unless it says otherwise)."""
    try:
        return float(text)
    except ValueError:
        pass
    try:
        moment = datetime.fromisoformat(text.replace("Z", "+00:00"))
    except ValueError:
        raise AdminError(400, f"{name} must be epoch seconds or an ISO 8601 time.") from None
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=UTC)
    return moment.timestamp()
