"""``asgi-llmguard``: serve the gateway, or run the fake upstream.

Together with `asgi_llmguard.config` this is the one place that reads files and the environment.
"""

from __future__ import annotations

import argparse
import contextlib
import importlib.util
import math
import os
import shutil
import sys
import tempfile
from collections.abc import Iterator, Sequence
from typing import Any

from asgi_llmguard.config import (
    GatewayConfig,
    ServerConfig,
    load_config,
    resolve_upstreams,
)
from asgi_llmguard.errors import ConfigurationError
from asgi_llmguard.providers.base import Upstream
from asgi_llmguard.reload import ReloadableGateway

# How `serve` hands its decisions to the app factory, which uvicorn imports in each worker.
ENV_CONFIG = "ASGI_LLMGUARD_CONFIG"
ENV_FAKE_UPSTREAM = "ASGI_LLMGUARD_FAKE_UPSTREAM"
FAKE_UPSTREAM_KEY = "fake-upstream-key"
#: prometheus_client's multiprocess switch: where every worker writes its metric values.
ENV_METRICS_DIR = "PROMETHEUS_MULTIPROC_DIR"
#: Seconds between the end of the gateway's shutdown grace and uvicorn's own deadline.
_DRAIN_MARGIN = 5.0
_LOOPBACK = frozenset({"127.0.0.1", "localhost", "::1", "[::1]"})


def fake_upstreams(url: str) -> list[Upstream]:
    """Upstreams pointing at a running fake provider (see `asgi_llmguard.testing`)."""
    return [
        Upstream("openai", f"{url}/v1", api_key=FAKE_UPSTREAM_KEY, name="fake-openai"),
        Upstream("anthropic", url, api_key=FAKE_UPSTREAM_KEY, name="fake-anthropic"),
        Upstream("gemini", url, api_key=FAKE_UPSTREAM_KEY, name="fake-gemini"),
    ]


def create_app() -> ReloadableGateway:
    """The app factory uvicorn calls in each worker (``--factory asgi_llmguard.cli:create_app``).

    Reads the config file named by ``ASGI_LLMGUARD_CONFIG`` (embedded defaults when unset). In
    the worker, SIGHUP reloads that file and SIGTERM/SIGINT drain the requests in flight within
    ``[server] shutdown_grace`` (see `asgi_llmguard.reload`).
    """
    fake = os.environ.get(ENV_FAKE_UPSTREAM)
    return ReloadableGateway(
        os.environ.get(ENV_CONFIG) or None,
        upstreams=fake_upstreams(fake) if fake else None,
        handle_signals=True,
        tune_gc=True,
    )


def _graceful_timeout(s: ServerConfig) -> int | None:
    """uvicorn's own deadline: a few seconds past the gateway's grace, so the gateway ends its
    streams with a terminal event before uvicorn would cut them."""
    if s.shutdown_grace < 0:
        raise ConfigurationError(f"server.shutdown_grace must be >= 0, not {s.shutdown_grace}")
    if s.timeout_graceful_shutdown is None:
        return None
    return math.ceil(max(s.timeout_graceful_shutdown, s.shutdown_grace + _DRAIN_MARGIN))


@contextlib.contextmanager
def _metrics_dir() -> Iterator[str]:
    """A fresh multiprocess directory for the workers' metrics, removed when serving ends.

    Set in the environment before uvicorn starts the workers, so prometheus_client is in
    multiprocess mode when each of them imports it, and a scrape answered by any worker sums
    all of them. A fresh directory: values left by an earlier run would be counted again.
    """
    path = tempfile.mkdtemp(prefix="llmguard-metrics-")
    os.environ[ENV_METRICS_DIR] = path
    try:
        yield path
    finally:
        os.environ.pop(ENV_METRICS_DIR, None)
        shutil.rmtree(path, ignore_errors=True)


@contextlib.contextmanager
def _fake_upstream(host: str) -> Iterator[str]:
    from asgi_llmguard.testing import FakeProvider, serve

    with serve(FakeProvider(api_key=FAKE_UPSTREAM_KEY), host=host, port=0) as server:
        yield server.url


def _log_config(config: GatewayConfig) -> dict[str, Any]:
    """uvicorn's logging config, plus a handler writing the access-log lines to stdout.

    uvicorn configures only its own loggers; without this the gateway's access lines (INFO) had
    no handler in the served process and were dropped. uvicorn's own access log stays off: this
    line replaces it.
    """
    import copy

    from uvicorn.config import LOGGING_CONFIG

    log_config: dict[str, Any] = copy.deepcopy(LOGGING_CONFIG)
    access = config.access_log
    if access.enabled:
        log_config["formatters"]["llmguard_access"] = {"format": "%(message)s"}
        log_config["handlers"]["llmguard_access"] = {
            "formatter": "llmguard_access",
            "class": "logging.StreamHandler",
            "stream": "ext://sys.stdout",
        }
        log_config["loggers"][access.logger_name or "asgi_llmguard.access"] = {
            "handlers": ["llmguard_access"],
            "level": access.level or "INFO",
            "propagate": False,
        }
    return log_config


def _banner(config: GatewayConfig, upstreams: Sequence[Upstream], fake: str | None) -> str:
    s = config.server
    base = f"{'https' if s.ssl_certfile else 'http'}://{s.host}:{s.port}"
    lines = [f"asgi-llmguard listening on {base}"]
    if fake:
        lines += [
            "",
            "  No provider key is configured, so the gateway forwards to the built-in FAKE",
            f"  upstream at {fake}: its answers are canned, nothing reaches a real provider.",
            "  Set OPENAI_API_KEY / ANTHROPIC_API_KEY, or add [[upstreams]] to a config file",
            "  passed with --config, to front real providers.",
            "",
        ]
    for upstream in upstreams:
        lines.append(
            f"  upstream {upstream.credential_id}: {upstream.provider} {upstream.base_url}"
        )
    lines += [
        f"  OpenAI SDK:    OpenAI(base_url='{base}/v1', api_key=...)",
        f"  Anthropic SDK: Anthropic(base_url='{base}', api_key=...)",
    ]
    providers = {upstream.provider for upstream in upstreams}
    if "gemini" in providers:
        lines.append(
            f"  Gemini SDK:    genai.Client(api_key=..., http_options={{'base_url': '{base}'}})"
        )
    if "vertex" in providers:
        lines.append(
            f"  Vertex AI:     AnthropicVertex(base_url='{base}/v1', access_token=...), "
            f"genai.Client(vertexai=True, http_options={{'base_url': '{base}'}}, ...)"
        )
    if "bedrock" in providers:
        lines.append(
            f"  Bedrock:       boto3.client('bedrock-runtime', endpoint_url='{base}'), "
            "the key in AWS_BEARER_TOKEN_BEDROCK (boto3 sends it over HTTPS only)"
        )
    return "\n".join(lines)


def _serve(args: argparse.Namespace) -> int:
    try:
        import uvicorn
    except ImportError:
        print("serve needs uvicorn: pip install 'asgi-llmguard[server]'", file=sys.stderr)
        return 2
    config = load_config(args.config)
    s = config.server
    if args.host is not None:
        s.host = args.host
    if args.port is not None:
        s.port = args.port
    if args.workers is not None:
        s.workers = args.workers
    upstreams = resolve_upstreams(config)
    if not config.keys and config.auth.store is None and config.auth.store_env is None:
        if s.host not in _LOOPBACK:
            raise ConfigurationError(
                f"refusing to serve on {s.host} without virtual keys: anyone who can reach it "
                "could spend your provider credits. Configure [[keys]] or [auth] store, or bind "
                "127.0.0.1."
            )
        print(
            "  No virtual keys are configured: every caller on this machine is allowed.",
            file=sys.stderr,
        )
    with contextlib.ExitStack() as stack:
        fake = None
        if not upstreams:
            fake = stack.enter_context(_fake_upstream("127.0.0.1"))
            os.environ[ENV_FAKE_UPSTREAM] = fake
            upstreams = fake_upstreams(fake)
        if args.config:
            os.environ[ENV_CONFIG] = os.path.abspath(args.config)
        if config.metrics is not None and config.metrics.enabled:
            if importlib.util.find_spec("prometheus_client") is None:
                raise ConfigurationError(
                    "[metrics] needs prometheus-client: pip install 'asgi-llmguard[metrics]'"
                )
            if s.workers > 1 and not os.environ.get(ENV_METRICS_DIR):
                stack.enter_context(_metrics_dir())
        print(_banner(config, upstreams, fake), file=sys.stderr, flush=True)
        uvicorn.run(
            "asgi_llmguard.cli:create_app",
            factory=True,
            host=s.host,
            port=s.port,
            workers=s.workers,
            log_level=s.log_level,
            log_config=_log_config(config),
            access_log=False,
            lifespan="on",
            timeout_graceful_shutdown=_graceful_timeout(s),
            ssl_certfile=s.ssl_certfile,
            ssl_keyfile=s.ssl_keyfile,
        )
    return 0


def _mock_upstream(args: argparse.Namespace) -> int:
    import uvicorn

    from asgi_llmguard.testing import FakeProvider

    app = FakeProvider(api_key=args.api_key, latency=args.latency, chunk_delay=args.chunk_delay)
    print(f"fake upstream on http://{args.host}:{args.port}", file=sys.stderr, flush=True)
    uvicorn.run(app, host=args.host, port=args.port, log_level="warning", access_log=False)
    return 0


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="asgi-llmguard", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)

    serve = sub.add_parser("serve", help="run the gateway under uvicorn")
    serve.add_argument("--config", "-c", help="TOML config file (default: embedded defaults)")
    serve.add_argument("--host", help="bind address (default 127.0.0.1)")
    serve.add_argument("--port", type=int, help="port (default 8080)")
    serve.add_argument("--workers", type=int, help="uvicorn worker processes (default 1)")
    serve.set_defaults(func=_serve)

    mock = sub.add_parser("mock-upstream", help="run the fake OpenAI/Anthropic upstream")
    mock.add_argument("--host", default="127.0.0.1")
    mock.add_argument("--port", type=int, default=8090)
    mock.add_argument("--api-key", help="require this key from callers")
    mock.add_argument("--latency", type=float, default=0.0, help="seconds before headers")
    mock.add_argument("--chunk-delay", type=float, default=0.0, help="seconds between chunks")
    mock.set_defaults(func=_mock_upstream)

    from asgi_llmguard.keys.cli import add_keys_parser
    from asgi_llmguard.usage.report import add_usage_parser

    add_keys_parser(sub)
    from asgi_llmguard.admin.cli import add_admin_parsers

    add_admin_parsers(sub, usage=add_usage_parser(sub))
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    try:
        code: int = args.func(args)
    except ConfigurationError as exc:
        print(f"asgi-llmguard: configuration error: {exc}", file=sys.stderr)
        return 2
    return code


if __name__ == "__main__":
    sys.exit(main())
