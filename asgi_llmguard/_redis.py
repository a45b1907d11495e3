"""One Redis client policy for every shared store: rate limits, budgets, cooldowns, health.

URLs:

- ``redis://[user:password@]host:port/db``: one server;
- ``rediss://...``: the same over TLS;
- ``unix:///path/to/redis.sock?db=0``: a local socket;
- ``redis+cluster://host:port`` (``rediss+cluster://`` over TLS): a Redis Cluster, found
  from any one of its nodes (`redis.asyncio.cluster.RedisCluster`).

TLS options come as keyword arguments or as the URL's query parameters redis-py reads
(``?ssl_ca_certs=/etc/redis/ca.pem&ssl_certfile=...&ssl_keyfile=...&ssl_cert_reqs=required``);
those in the URL win.

Every client gets the same policy: ``timeout`` bounds connecting, each read and write, and (for a
single server) waiting for a free pooled connection; at most ``max_connections`` per process (per
node for a cluster); one immediate retry, no backoff (see `redis_client`).
"""

from __future__ import annotations

import urllib.parse
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from asgi_llmguard.errors import ConfigurationError

if TYPE_CHECKING:
    import redis.asyncio
    import redis.asyncio.cluster

__all__ = [
    "REDIS_SCHEMES",
    "TLS_OPTIONS",
    "RedisTarget",
    "is_cluster",
    "parse_redis_url",
    "redis_client",
    "split_tls",
]

#: The schemes `redis_client` takes (``async+`` in front is accepted too, as ``limits`` spells
#: them) and whether each is a cluster.
REDIS_SCHEMES = {
    "redis": False,
    "rediss": False,
    "unix": False,
    "redis+unix": False,
    "redis+cluster": True,
    "rediss+cluster": True,
}


@dataclass(frozen=True, slots=True)
class RedisTarget:
    #: The URL redis-py takes: ``async+`` and ``+cluster`` removed.
    url: str
    #: Where the server is, for logs and ``repr``: scheme, host, port and db, never a password.
    where: str
    cluster: bool
    tls: bool


def parse_redis_url(url: str) -> RedisTarget:
    """Check ``url`` names a Redis server or cluster; raises `ConfigurationError` if not."""
    if not isinstance(url, str):
        raise ConfigurationError(f"a Redis URL must be a string, not {type(url).__name__}")
    parsed = urllib.parse.urlsplit(url)
    full = parsed.scheme.lower()
    scheme = full.removeprefix("async+")
    if scheme not in REDIS_SCHEMES:
        raise ConfigurationError(
            f"not a Redis URL (redis://, rediss://, unix://, redis+cluster://, "
            f"rediss+cluster://): a {scheme or 'scheme-less'} URI"
        )
    cluster = REDIS_SCHEMES[scheme]
    plain = scheme.removesuffix("+cluster")
    if plain == "redis+unix":
        plain = "unix"
    rest = url.split("://", 1)[1] if "://" in url else ""
    if plain == "unix":
        return RedisTarget(f"unix://{rest}", f"unix://{parsed.path}", False, False)
    try:
        host = parsed.hostname or "localhost"
        port = parsed.port or 6379
    except ValueError:
        raise ConfigurationError("the Redis URL has an invalid port") from None
    where = f"{scheme}://{host}:{port}{'' if cluster else parsed.path or ''}"
    return RedisTarget(f"{plain}://{rest}", where, cluster, plain == "rediss")


def redis_client(
    url: str | RedisTarget,
    *,
    timeout: float,
    max_connections: int = 64,
    ssl_ca_certs: str | None = None,
    ssl_certfile: str | None = None,
    ssl_keyfile: str | None = None,
    ssl_cert_reqs: str | None = None,
) -> redis.asyncio.Redis | redis.asyncio.cluster.RedisCluster:
    """A client for ``url`` over a bounded pool, with short timeouts and one immediate retry.

    redis-py retries three times with backoff by default: that would turn a 0.25 s budget into
    seconds. One immediate retry still rides over a pooled connection that went stale while
    Redis restarted. For a single server, waiting for a free pooled connection is bounded by the
    same timeout (the blocking pool), so a burst of traffic queues briefly instead of opening a
    connection per request, and a slow Redis cannot pile them up. Nothing connects until the
    first command.
    """
    target = url if isinstance(url, RedisTarget) else parse_redis_url(url)
    try:
        import redis.asyncio
        import redis.asyncio.cluster
        from redis.asyncio.retry import Retry
        from redis.backoff import NoBackoff
    except ImportError:  # pragma: no cover - the redis extra
        raise ConfigurationError(
            "Redis stores need redis-py: pip install 'asgi-llmguard[redis]'"
        ) from None
    options: dict[str, Any] = {
        "socket_timeout": timeout,
        "socket_connect_timeout": timeout,
        "retry": Retry(NoBackoff(), 1),
        "max_connections": max_connections,
    }
    tls = {
        "ssl_ca_certs": ssl_ca_certs,
        "ssl_certfile": ssl_certfile,
        "ssl_keyfile": ssl_keyfile,
        "ssl_cert_reqs": ssl_cert_reqs,
    }
    given = {name: value for name, value in tls.items() if value is not None}
    if given and not target.tls:
        raise ConfigurationError(
            f"{', '.join(sorted(given))} need a TLS URL (rediss://), not {target.where}"
        )
    options.update(given)
    try:
        if target.cluster:
            return redis.asyncio.cluster.RedisCluster.from_url(target.url, **options)
        pool = redis.asyncio.BlockingConnectionPool.from_url(target.url, timeout=timeout, **options)
    except (ValueError, TypeError):
        raise ConfigurationError(f"invalid Redis URL for {target.where}") from None
    except Exception as exc:  # redis-py's own configuration errors (RedisClusterException)
        raise ConfigurationError(f"invalid Redis URL for {target.where}: {exc}") from None
    return redis.asyncio.Redis.from_pool(pool)


#: The TLS keyword arguments of `redis_client`.
TLS_OPTIONS = ("ssl_ca_certs", "ssl_certfile", "ssl_keyfile", "ssl_cert_reqs")


def split_tls(kwargs: dict[str, Any]) -> tuple[dict[str, str | None], dict[str, Any]]:
    """``kwargs`` as (the TLS options of `redis_client`, the rest)."""
    tls = {name: kwargs[name] for name in TLS_OPTIONS if name in kwargs}
    return tls, {name: value for name, value in kwargs.items() if name not in tls}


def is_cluster(client: Any) -> bool:
    """Whether ``client`` is a `redis.asyncio.cluster.RedisCluster` (its keys must share a hash
    slot when one script touches several)."""
    try:
        from redis.asyncio.cluster import RedisCluster
    except ImportError:  # pragma: no cover - the redis extra
        return False
    return isinstance(client, RedisCluster)


async def warm_up(client: Any, *, within: float, where: str) -> None:
    """Learn a cluster's slot map before the first request needs it (a store's ``start``).

    On a single server there is nothing to learn: connections open on first use. On a cluster
    the first command would otherwise fetch the slot map within the store's timeout (0.25 s for
    rate limits), and on a cold start across a network that can be the first request's refusal.
    A cluster that cannot be reached now is logged, not raised: the store connects on first use
    and its own failure policy applies then, as it does for any outage.
    """
    if not is_cluster(client):
        return
    import asyncio
    import logging

    try:
        await asyncio.wait_for(client.initialize(), timeout=max(within, 5.0))
    except Exception as exc:  # any failure: the store works lazily, as before
        logging.getLogger("asgi_llmguard").warning(
            "could not reach the Redis Cluster at %s at start (%s); connecting on first use",
            where,
            type(exc).__name__,
        )
