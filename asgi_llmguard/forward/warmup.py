"""Warm-up of secondary credentials: start their providers' quota windows before traffic moves.

Providers meter quotas in rolling windows that start with a credential's first request. While
fill-first routing keeps the primary credential busy, the secondaries' windows have not started;
when the primary cools down, all traffic lands on a secondary whose whole window is still ahead.
A tiny request to each secondary, now and then, starts its window early, so the windows stagger.

`Warmer` decides *whether* to warm and runs the request in the background; what to send is the
caller's (`ForwardingApp` builds a one-token request). The rules, each guarded by a test:

- the TTL of a (provider, credential) pair is checked before anything is spawned, so heavy traffic
  inside the TTL creates no task at all;
- at most one warm-up is in flight per provider;
- the TTL belongs to the credential: warming one credential does not mark another as warm;
- only a 2xx answer counts as warmed; any other answer or an error releases the reservation so
  the next request may try again;
- each warm-up has its own timeout and runs detached from the request that triggered it: a client
  that disconnects does not cancel it;
- the map of TTLs is pruned as entries expire and capped, so it cannot grow without bound.

Which requests may trigger a warm-up (never read-only routes such as ``count_tokens``, never
pinned sessions) is decided by the forwarder before it calls `Warmer.maybe_warm`.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable

from asgi_llmguard.context import Attempt, RequestContext
from asgi_llmguard.forward.engines import Engine, UpstreamConnectError, UpstreamError
from asgi_llmguard.forward.headers import request_headers
from asgi_llmguard.forward.router import WarmupPolicy
from asgi_llmguard.forward.target import Target
from asgi_llmguard.providers import OWNERS
from asgi_llmguard.providers.aws_auth import AwsCredentialsError
from asgi_llmguard.providers.google_auth import GoogleCredentialsError
from asgi_llmguard.providers.metering import usage_from_json
from asgi_llmguard.routes import Api, classify

logger = logging.getLogger("asgi_llmguard.forward")

Probe = Callable[[], Awaitable[bool]]


class Warmer:
    """Background warm-ups with per-credential TTLs and one in flight per provider."""

    def __init__(
        self, policy: WarmupPolicy | None = None, *, clock: Callable[[], float] = time.monotonic
    ) -> None:
        self.policy = policy if policy is not None else WarmupPolicy()
        self._clock = clock
        #: (provider, credential) -> monotonic time until which it counts as warm. A pending
        #: warm-up holds its entry as a reservation until it ends.
        self._warm: dict[tuple[str, str], float] = {}
        self._in_flight: dict[str, asyncio.Task[None]] = {}
        #: Warm-up tasks started and answers that counted, for operators and tests.
        self.started = 0
        self.succeeded = 0
        self.failed = 0

    def is_warm(self, provider: str, credential: str) -> bool:
        expires = self._warm.get((provider, credential))
        return expires is not None and expires > self._clock()

    def maybe_warm(self, provider: str, credential: str, probe: Probe) -> bool:
        """Start ``probe`` in the background unless the credential is warm, reserved, or its
        provider already has a warm-up in flight. Returns whether a task was started.

        ``probe`` returns ``True`` when the upstream answered 2xx. It is only called when a task
        is started, so building the request costs nothing inside the TTL.
        """
        key = (provider, credential)
        now = self._clock()
        expires = self._warm.get(key)
        if expires is not None and expires > now:
            return False
        if provider in self._in_flight:
            return False
        # Starts are rare (once per TTL per credential at most), so pruning here is cheap.
        warm = self._warm
        self._prune(now)
        if len(warm) >= self.policy.max_entries:
            return False
        # Reserve for the timeout plus the TTL: the entry is rewritten when the probe ends.
        warm[key] = now + self.policy.timeout + self.policy.ttl
        task = asyncio.get_running_loop().create_task(self._run(key, probe))
        self._in_flight[provider] = task
        self.started += 1
        return True

    async def _run(self, key: tuple[str, str], probe: Probe) -> None:
        ok = False
        try:
            async with asyncio.timeout(self.policy.timeout):
                ok = await probe()
        except TimeoutError:
            logger.info("warm-up of %s timed out", key[1])
        except asyncio.CancelledError:
            raise
        except Exception:
            logger.warning("warm-up of %s failed", key[1], exc_info=True)
        finally:
            self._in_flight.pop(key[0], None)
            if ok:
                self.succeeded += 1
                self._warm[key] = self._clock() + self.policy.ttl
            else:
                self.failed += 1
                self._warm.pop(key, None)

    def _prune(self, now: float) -> None:
        expired = [key for key, expires in self._warm.items() if expires <= now]
        for key in expired:
            del self._warm[key]

    def __len__(self) -> int:
        """Entries in the TTL map (expired ones included until pruned)."""
        return len(self._warm)

    def in_flight(self) -> int:
        return len(self._in_flight)

    async def wait(self) -> None:
        """Wait for the warm-ups in flight (tests, shutdown)."""
        tasks = list(self._in_flight.values())
        if tasks:
            await asyncio.gather(*tasks, return_exceptions=True)

    async def aclose(self) -> None:
        tasks = list(self._in_flight.values())
        for task in tasks:
            task.cancel()
        if tasks:
            await asyncio.gather(*tasks, return_exceptions=True)
        self._in_flight.clear()


async def warm_request(
    engine: Engine,
    target: Target,
    credential_id: str,
    api: Api,
    model: str,
    policy: WarmupPolicy,
    listener: Callable[[Attempt, Api, str], None] | None,
) -> bool:
    """One tiny request to ``target`` for ``model``; ``True`` when it answered 2xx. The attempt
    goes to ``listener`` (the usage ledger records it as ``warmup``)."""
    provider = target.provider
    # A provider whose paths name where the upstream serves (Vertex AI's project and location)
    # builds the request for the upstream; the others' requests are the same for every one.
    for_upstream = getattr(provider, "warmup_for", None)
    if for_upstream is not None:
        built = for_upstream(target.upstream, api, model, policy.max_tokens, policy.prompt)
        if built is None:
            # Nothing to send it: counted as warm, so it is not tried on every request.
            logger.info("warm-up of %s skipped: no project is known for it", credential_id)
            return True
        path, body = built
    else:
        path, body = OWNERS[api].warmup(api, model, policy.max_tokens, policy.prompt)
    ctx = RequestContext("POST", path)
    ctx.request_id = "warmup_" + ctx.request_id.removeprefix("req_")
    ctx.body = body
    url = provider.target(target.upstream, ctx, b"")
    headers = request_headers(
        [(b"content-type", b"application/json")], target.drop, target.defaults, target.static
    )
    headers.append(("x-request-id", ctx.request_id))
    started_at = time.time()
    began = time.perf_counter()
    status = 0
    error: str | None = None
    usage = None
    try:
        if target.signs:
            try:
                url = provider.sign(target.upstream, "POST", url, headers, body)
            except (GoogleCredentialsError, AwsCredentialsError) as exc:
                raise UpstreamConnectError(str(exc), "credential") from None
        resp = await engine.send("POST", url, headers, ctx.body)
        try:
            status = resp.status
            data = await resp.read_all()
        finally:
            await resp.aclose()
        if 200 <= status < 300:
            endpoint = classify("POST", path).endpoint
            usage = usage_from_json(endpoint, data)[0]
    except UpstreamError as exc:
        error = exc.kind
    finally:
        if listener is not None:
            attempt = Attempt(
                credential_id,
                model,
                status=status,
                error=error,
                started_at=started_at,
                latency=time.perf_counter() - began,
                usage=usage,
                request_id=ctx.request_id,
            )
            attempt_request = ctx.request_id
            try:
                listener(attempt, api, OWNERS[api].warmup_operation(api))
            except Exception:
                logger.exception("warm-up listener failed for %s", attempt_request)
    return 200 <= status < 300
