"""The admin operations: keys, budgets, rate-limit state, cooldowns, usage queries, reload.

Each handler takes a parsed `Request` and returns ``(status, JSON-able payload)``, or raises
`AdminError` with the status and message the caller should see. They work on the stack's own
objects (key store, budget store, limiter, forwarder), so they see exactly the state the gateway
enforces: in-memory state of this process, or the shared Redis/PostgreSQL state of every replica.
"""

from __future__ import annotations

import inspect
import logging
import time
from collections.abc import Awaitable, Callable
from typing import Any

import msgspec

from asgi_llmguard.admin._request import MAX_ID, AdminError, Request, not_configured
from asgi_llmguard.admin.usage import UsageQueries
from asgi_llmguard.errors import ConfigurationError
from asgi_llmguard.keys.base import KeyExists, KeyStore, WritableKeyStore, issue_key
from asgi_llmguard.keys.cache import CachedKeyStore
from asgi_llmguard.keys.hashing import DEFAULT_PREFIX
from asgi_llmguard.keys.static import StaticKeyStore
from asgi_llmguard.middleware.ratelimit import RateLimitMiddleware
from asgi_llmguard.policy import KeyPolicy
from asgi_llmguard.ratelimit.base import StoreUnavailable
from asgi_llmguard.usage.budgets import BudgetStore, BudgetStoreError

logger = logging.getLogger("asgi_llmguard.admin")

_MAX_MODELS = 100


def _innermost(store: KeyStore) -> KeyStore:
    while isinstance(store, CachedKeyStore):
        store = store.store
    return store


def _usd(nanos: int) -> float:
    return nanos / 1e9


class Operations:
    """The handlers, over the stack's parts (any of which may be ``None``)."""

    def __init__(
        self,
        *,
        keys: KeyStore | None,
        budgets: BudgetStore | None,
        rate_limit: RateLimitMiddleware | None,
        forwarder: object | None,
        ledger: str | None,
        reload: Callable[[], Awaitable[object]] | None,
    ) -> None:
        self.keys = keys
        self.budgets = budgets
        self.rate_limit = rate_limit
        self.forwarder = forwarder
        self.ledger = ledger
        self.usage = UsageQueries(ledger)
        self._reload = reload

    # -- keys --------------------------------------------------------------------------------

    def _writable(self) -> WritableKeyStore:
        if self.keys is None:
            raise not_configured("key store (the gateway is open)")
        inner = _innermost(self.keys)
        if not isinstance(inner, WritableKeyStore) or not isinstance(self.keys, WritableKeyStore):
            raise AdminError(
                405,
                "The key store is read-only (keys from the config file): add or remove [[keys]] "
                "and reload, or configure a SQLite/PostgreSQL key store (auth.store).",
                code="read_only_key_store",
            )
        return self.keys

    async def _policies(self) -> list[tuple[KeyPolicy, dict[str, Any]]]:
        """Every key's policy with its record fields (dates, revocation)."""
        if self.keys is None:
            raise not_configured("key store (the gateway is open)")
        inner = _innermost(self.keys)
        if isinstance(inner, StaticKeyStore):
            return [
                (p, {"created_at": None, "revoked_at": None, "source": "config"})
                for p in inner.policies()
            ]
        if isinstance(inner, WritableKeyStore):
            return [
                (
                    r.policy,
                    {"created_at": r.created_at, "revoked_at": r.revoked_at, "source": "store"},
                )
                for r in await inner.list()
            ]
        raise AdminError(409, "This key store cannot list its keys.", code="not_listable")

    async def _policy(self, key_id: str) -> KeyPolicy:
        for policy, fields in await self._policies():
            if policy.key_id == key_id and fields["revoked_at"] is None and not policy.revoked:
                return policy
        raise AdminError(404, f"No active key with id {key_id!r}.", code="key_not_found")

    async def list_keys(self, request: Request) -> tuple[int, Any]:
        active = request.arg("active") in ("1", "true", "yes")
        rows = []
        for policy, fields in await self._policies():
            revoked = fields["revoked_at"] is not None or policy.revoked
            if active and revoked:
                continue
            rows.append(
                {
                    "key_id": policy.key_id,
                    "name": policy.name,
                    **fields,
                    "revoked": revoked,
                    "policy": policy,
                }
            )
        return 200, {"keys": rows}

    async def create_key(self, request: Request) -> tuple[int, Any]:
        store = self._writable()
        fields = request.json()
        name = fields.pop("name", None)
        prefix = fields.pop("prefix", DEFAULT_PREFIX)
        if name is not None and not (isinstance(name, str) and 0 < len(name) <= MAX_ID):
            raise AdminError(400, "name must be a non-empty string.")
        if not (isinstance(prefix, str) and prefix.isascii() and len(prefix) <= 32):
            raise AdminError(400, "prefix must be a short ASCII string.")
        try:
            issued = await issue_key(store, name=name, prefix=prefix, **fields)
        except ConfigurationError as exc:
            raise AdminError(400, str(exc), code="invalid_policy") from None
        except KeyExists as exc:
            raise AdminError(409, str(exc), code="key_exists") from None
        logger.info("admin API: created key %s", issued.key_id)
        record = issued.record
        return 201, {
            "key_id": issued.key_id,
            "key": issued.key,
            "name": record.name,
            "created_at": record.created_at,
            "policy": record.policy,
        }

    async def revoke_key(self, request: Request) -> tuple[int, Any]:
        store = self._writable()
        key_id = request.params[0]
        if not await store.revoke(key_id):
            raise AdminError(404, f"No active key with id {key_id!r}.", code="key_not_found")
        logger.info("admin API: revoked key %s", key_id)
        return 200, {"key_id": key_id, "revoked": True}

    # -- budgets -----------------------------------------------------------------------------

    async def show_budget(self, request: Request) -> tuple[int, Any]:
        key_id = request.params[0]
        if self.budgets is None:
            raise not_configured("budget store (the usage layer is off)")
        policy = await self._policy(key_id)
        subject = f"key:{key_id}"
        periods: dict[str, Any] = {}
        if policy.budget is not None:
            try:
                usage = await self.budgets.spent(subject, policy.budget)
            except BudgetStoreError:
                raise AdminError(
                    503, "The budget store is unavailable.", code="store_error"
                ) from None
            for name, period in usage.items():
                data = msgspec.structs.asdict(period)
                for field in ("limit", "spent", "reserved", "remaining"):
                    data[f"{field}_usd"] = _usd(data[f"{field}_nanos"])
                periods[name] = data
        return 200, {
            "key_id": key_id,
            "subject": subject,
            "budget": policy.budget,
            "periods": periods,
        }

    async def reset_budget(self, request: Request) -> tuple[int, Any]:
        key_id = request.params[0]
        if self.budgets is None:
            raise not_configured("budget store (the usage layer is off)")
        subject = f"key:{key_id}"
        try:
            await self.budgets.reset(subject)
        except BudgetStoreError:
            raise AdminError(503, "The budget store is unavailable.", code="store_error") from None
        logger.info("admin API: reset the budget of key %s", key_id)
        return 200, {"key_id": key_id, "subject": subject, "reset": True}

    # -- rate limits -------------------------------------------------------------------------

    def _models(self, request: Request, body: dict[str, Any] | None = None) -> list[str]:
        models = list(request.query.get("model", []))
        if body is not None:
            extra = body.get("models", [])
            if not isinstance(extra, list) or not all(isinstance(m, str) for m in extra):
                raise AdminError(400, "models must be a list of model names.")
            models += extra
        if len(models) > _MAX_MODELS:
            raise AdminError(400, f"At most {_MAX_MODELS} models at once.")
        return list(dict.fromkeys(models))

    def _limiter(self) -> RateLimitMiddleware:
        if self.rate_limit is None:
            raise not_configured("rate-limit layer")
        return self.rate_limit

    async def show_ratelimit(self, request: Request) -> tuple[int, Any]:
        layer = self._limiter()
        policy = await self._policy(request.params[0])
        buckets = []
        try:
            for lim, bucket, model in layer.key_buckets(policy, self._models(request)):
                decision = await layer.limiter.peek(bucket, lim)
                buckets.append(
                    {
                        "limit": lim.spec.limit,
                        "kind": lim.kind,
                        "per": lim.per,
                        "model": model,
                        "amount": decision.limit,
                        "remaining": decision.remaining,
                        "reset_after": round(decision.reset_after, 3),
                        "allowed": decision.allowed,
                    }
                )
        except StoreUnavailable:
            raise AdminError(
                503, "The rate-limit store is unavailable.", code="store_error"
            ) from None
        return 200, {
            "key_id": policy.key_id,
            "algorithm": layer.limiter.algorithm,
            "buckets": buckets,
        }

    async def reset_ratelimit(self, request: Request) -> tuple[int, Any]:
        layer = self._limiter()
        key_id = request.params[0]
        policy = await self._policy(key_id)
        limiter = layer.limiter
        buckets = layer.key_buckets(policy, self._models(request, request.json()))
        try:
            for lim, bucket, _ in buckets:
                await limiter.reset(bucket, lim)
            # Per-model buckets of models nobody named: engines that can list them drop them.
            forgotten = await limiter.forget(layer.key_bucket_prefix(policy.key_id))
        except StoreUnavailable:
            raise AdminError(
                503, "The rate-limit store is unavailable.", code="store_error"
            ) from None
        except NotImplementedError:
            raise AdminError(501, "This rate-limit engine cannot reset buckets.") from None
        logger.info("admin API: reset the rate limits of key %s", key_id)
        return 200, {"key_id": key_id, "reset": len(buckets), "forgotten": forgotten}

    # -- cooldowns and breakers --------------------------------------------------------------

    async def list_cooldowns(self, request: Request) -> tuple[int, Any]:
        cooldowns = getattr(self.forwarder, "cooldowns", None)
        breaker = getattr(self.forwarder, "breaker", None)
        now = time.time()
        items = []
        for c in cooldowns.snapshot() if cooldowns is not None else ():
            until = float(c.until)
            items.append(
                {
                    "credential_id": c.credential_id,
                    "model": c.model,
                    "until": until,
                    "remaining": max(0.0, round(until - now, 3)),
                    "reason": c.reason,
                    "failures": c.failures,
                }
            )
        return 200, {
            "cooldowns": items,
            "breakers": dict(breaker.snapshot()) if breaker is not None else {},
            "cooldowns_enabled": cooldowns is not None,
            "breaker_enabled": breaker is not None,
        }

    async def reset_cooldowns(self, request: Request) -> tuple[int, Any]:
        body = request.json()
        for name in ("credential_id", "model", "upstream"):
            value = body.get(name)
            if value is not None and not (isinstance(value, str) and len(value) <= MAX_ID):
                raise AdminError(400, f"{name} must be a string.")
        cooldowns = getattr(self.forwarder, "cooldowns", None)
        breaker = getattr(self.forwarder, "breaker", None)
        cleared = opened = 0
        if cooldowns is not None:
            cleared = int(
                await cooldowns.reset(
                    credential_id=body.get("credential_id"), model=body.get("model")
                )
            )
        if breaker is not None and body.get("model") is None:
            result = breaker.reset(body.get("upstream", body.get("credential_id")))
            opened = int(await result if inspect.isawaitable(result) else result)
        logger.info("admin API: reset %d cooldowns and %d breakers", cleared, opened)
        return 200, {"cooldowns_reset": cleared, "breakers_reset": opened}

    # -- reload ------------------------------------------------------------------------------

    async def reload(self, request: Request) -> tuple[int, Any]:
        if self._reload is None:
            raise AdminError(501, "This gateway cannot reload its configuration.", code="no_reload")
        try:
            result = await self._reload()
        except ConfigurationError as exc:
            raise AdminError(400, f"The new configuration was refused: {exc}") from None
        logger.info("admin API: configuration reloaded")
        summary = result if isinstance(result, dict | list | str | int | float | bool) else None
        return 200, {"reloaded": True, "result": summary}
