"""Prometheus metrics, scraped from a real gateway (uvicorn, the openai SDK, the fake upstream).

The counts asserted are those of the requests each test sends; token totals follow the fake
provider's documented rule (a token is a word), costs the shipped price table.
"""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import httpx
import openai
import pytest
from prometheus_client.multiprocess import MultiProcessCollector
from prometheus_client.parser import text_string_to_metric_families

from asgi_llmguard import (
    Budget,
    ConfigurationError,
    KeyPolicy,
    MemoryBudgetStore,
    MetricsMiddleware,
    ModelPrice,
    PoolLimits,
    PriceTable,
    RateLimit,
    SQLiteSink,
    StaticKey,
    StaticKeyStore,
    TokenUsage,
    Upstream,
    UsagePipeline,
    build_stack,
    hash_key,
)
from asgi_llmguard.config import load_config, stack_kwargs
from asgi_llmguard.testing import FakeProvider, serve, wait_until
from tests.test_cli import SCRIPT, _env, _free_port, _wait_for_port

CALLER_KEY = "sk-llmg-metrics-caller-0123456789abcdef"
BROKE_KEY = "sk-llmg-metrics-broke-0123456789abcdef"
UPSTREAM_KEY = "sk-upstream-metrics-secret"
REPLY = "Counted, word by word, by the metrics test."
REPLY_TOKENS = FakeProvider.count_tokens(REPLY)

Samples = dict[tuple[str, frozenset[tuple[str, str]]], float]


def scrape(url: str) -> Samples:
    """One scrape on a fresh connection, parsed by prometheus_client's own parser."""
    with httpx.Client() as client:
        response = client.get(f"{url}/metrics")
    assert response.status_code == 200
    assert response.headers["content-type"].startswith("text/plain")
    samples: Samples = {}
    for family in text_string_to_metric_families(response.text):
        for sample in family.samples:
            samples[(sample.name, frozenset(sample.labels.items()))] = sample.value
    return samples


def total(samples: Samples, name: str, **labels: str) -> float:
    """The sum of ``name`` over every series whose labels include ``labels``."""
    want = set(labels.items())
    return sum(v for (n, lbl), v in samples.items() if n == name and want <= lbl)


def label_values(samples: Samples, name: str, label: str) -> set[str]:
    return {dict(lbl)[label] for (n, lbl), _ in samples.items() if n == name and label in dict(lbl)}


def _chat(client: openai.OpenAI, text: str, model: str = "gpt-4o-mini", **kw: object) -> object:
    return client.chat.completions.create(
        model=model, messages=[{"role": "user", "content": text}], **kw
    )


# ------------------------------------------------------------------------ one process, every layer


@pytest.fixture(params=["pipeline", "no-pipeline"])
def gateway(request, tmp_path) -> Iterator[tuple[str, object]]:
    keys = StaticKeyStore(
        [
            StaticKey(
                KeyPolicy(key_id="team-a", rate_limits=(RateLimit("5/minute"),)),
                key_hash=hash_key(CALLER_KEY),
            ),
            StaticKey(
                KeyPolicy(key_id="broke", budget=Budget(total=0.000001)),
                key_hash=hash_key(BROKE_KEY),
            ),
        ]
    )
    pipeline = None
    if request.param == "pipeline":
        pipeline = UsagePipeline(
            [SQLiteSink(str(tmp_path / "ledger.sqlite3"))], spill_path=str(tmp_path / "spill")
        )
    with serve(FakeProvider(api_key=UPSTREAM_KEY, reply=REPLY)) as upstream:
        app = build_stack(
            upstreams=[Upstream("openai", f"{upstream.url}/v1", api_key=UPSTREAM_KEY)],
            keys=keys,
            usage={"budgets": MemoryBudgetStore()},
            pipeline=pipeline,
            health={},
            metrics={"refresh_interval": 0.05},
        )
        with serve(app) as server:
            yield server.url, pipeline


def test_requests_tokens_cost_and_rejections_are_counted_exactly(gateway):
    url, pipeline = gateway
    client = openai.OpenAI(base_url=f"{url}/v1", api_key=CALLER_KEY, max_retries=0)
    prompts = ["one two three", "four five", "six", "seven eight nine ten"]
    for text in prompts[:3]:
        _chat(client, text)
    chunks = list(_chat(client, prompts[3], stream=True))
    assert "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    prompts.append("eleven")
    _chat(client, prompts[4])
    with pytest.raises(openai.RateLimitError):  # the sixth within the minute
        _chat(client, "too many")
    with pytest.raises(openai.RateLimitError) as refused:  # the budget, not a rate limit
        _chat(openai.OpenAI(base_url=f"{url}/v1", api_key=BROKE_KEY, max_retries=0), "x")
    assert refused.value.code == "insufficient_quota"
    with pytest.raises(openai.AuthenticationError):
        _chat(openai.OpenAI(base_url=f"{url}/v1", api_key="sk-wrong", max_retries=0), "x")
    for _ in range(2):
        assert httpx.post(f"{url}/v1/nope").status_code == 404
    assert httpx.get(f"{url}/healthz").status_code == 200  # probes are not counted

    # Tokens and cost come from the usage events, emitted once the answer is out: wait for them.
    want_in = sum(FakeProvider.count_tokens(p) for p in prompts)
    want_out = REPLY_TOKENS * len(prompts)
    wait_until(
        lambda: total(scrape(url), "llmguard_tokens_total", direction="output") >= want_out,
        timeout=10,
    )
    s = scrape(url)

    chat = {"endpoint": "chat.completions", "provider": "openai"}
    assert total(s, "llmguard_requests_total", **chat, model="gpt-4o-mini", status="200") == 5
    assert total(s, "llmguard_requests_total", status="429") == 2
    assert total(s, "llmguard_requests_total", **chat, status="401") == 1
    assert total(s, "llmguard_requests_total", endpoint="unknown", status="404") == 2
    assert total(s, "llmguard_requests_total") == 10
    assert total(s, "llmguard_rate_limit_rejections_total", layer="rate_limit") == 1
    assert total(s, "llmguard_rate_limit_rejections_total", layer="concurrency") == 0
    assert total(s, "llmguard_budget_rejections_total", key_id="broke") == 1
    assert total(s, "llmguard_budget_rejections_total") == 1

    tokens = {"key_id": "team-a", "model": "gpt-4o-mini"}
    assert total(s, "llmguard_tokens_total", **tokens, direction="input") == want_in
    assert total(s, "llmguard_tokens_total", **tokens, direction="output") == want_out
    assert total(s, "llmguard_tokens_total") == want_in + want_out
    price = PriceTable.default().resolve("gpt-4o-mini")
    assert price is not None
    want_cost = sum(
        price.cost_nanos(TokenUsage(FakeProvider.count_tokens(p), REPLY_TOKENS)) for p in prompts
    )
    assert total(s, "llmguard_cost_usd_total", **tokens) == pytest.approx(want_cost / 1e9)

    # Latencies only for the answers that came from the upstream: the five served ones.
    route = {**chat, "model": "gpt-4o-mini"}
    assert total(s, "llmguard_upstream_latency_seconds_count", **route) == 5
    assert total(s, "llmguard_upstream_ttfb_seconds_count", **route) == 5
    assert total(s, "llmguard_upstream_latency_seconds_count") == 5
    assert total(s, "llmguard_pool_connections_in_use") == 0
    assert total(s, "llmguard_cooldowns_active") == 0
    if pipeline is not None:
        wait_until(lambda: total(scrape(url), "llmguard_usage_queue_depth") == 0, timeout=5)
        assert total(s, "llmguard_usage_events_dropped_total") == 0
    # Keys never appear, only their ids.
    text = httpx.get(f"{url}/metrics").text
    assert CALLER_KEY not in text
    assert UPSTREAM_KEY not in text


def test_caller_chosen_model_names_do_not_grow_the_label_set():
    with serve(FakeProvider(reply=REPLY)) as upstream:
        app = build_stack(
            upstreams=[Upstream("openai", f"{upstream.url}/v1", api_key="k")],
            usage={"missing_price": ModelPrice(input=1.0, output=1.0)},
            metrics={"max_models": 3, "models": ["house-model"]},
        )
        with serve(app) as server:
            client = openai.OpenAI(base_url=f"{server.url}/v1", api_key="k", max_retries=0)
            for i in range(8):
                _chat(client, "hi", model=f"custom-{i}")
            _chat(client, "hi", model="gpt-4o-mini")  # priced: a label of its own
            _chat(client, "hi", model="house-model")  # configured: a label of its own
            wait_until(
                lambda: (
                    total(scrape(server.url), "llmguard_tokens_total", direction="output")
                    >= 10 * REPLY_TOKENS
                ),
                timeout=10,
            )
            s = scrape(server.url)
    expected = {"custom-0", "custom-1", "custom-2", "other", "gpt-4o-mini", "house-model"}
    assert label_values(s, "llmguard_requests_total", "model") == expected
    assert label_values(s, "llmguard_tokens_total", "model") == expected
    assert total(s, "llmguard_requests_total", model="other") == 5
    assert total(s, "llmguard_requests_total", model="custom-1") == 1
    assert total(s, "llmguard_requests_total") == 10
    assert total(s, "llmguard_tokens_total", model="other", direction="output") == 5 * REPLY_TOKENS


def test_the_scrape_answers_and_counts_shed_requests_under_overload():
    with serve(FakeProvider(reply=REPLY)) as upstream:
        app = build_stack(
            upstreams=[Upstream("openai", f"{upstream.url}/v1", api_key="k")],
            limits=PoolLimits(max_per_host=10),
            overload={"max_in_flight": 1},
            metrics={},
        )
        with serve(app) as server:
            client = openai.OpenAI(base_url=f"{server.url}/v1", api_key="k", max_retries=0)
            # A slow stream holds the only slot while the next request arrives.
            stream = _chat(
                client,
                "hold",
                stream=True,
                extra_headers={"x-fake-chunk-delay": "0.2", "x-fake-chunks": "50"},
            )
            try:
                with pytest.raises(openai.InternalServerError) as shed:
                    _chat(client, "shed")
                assert shed.value.status_code == 503
                s = scrape(server.url)
            finally:
                stream.close()
    assert total(s, "llmguard_overload_shed_total") == 1
    assert total(s, "llmguard_requests_total", status="503") == 1
    # The stream still in flight: its upstream connection is in use, and it is not counted yet.
    assert total(s, "llmguard_pool_connections_in_use") == 1
    assert total(s, "llmguard_requests_total") == 1


# ----------------------------------------------------------------------------- configuration


def test_without_prometheus_client_enabling_says_what_to_install(monkeypatch):
    monkeypatch.setitem(sys.modules, "prometheus_client", None)
    monkeypatch.delitem(sys.modules, "asgi_llmguard.middleware._prometheus", raising=False)
    with pytest.raises(ConfigurationError, match=r"pip install 'asgi-llmguard\[metrics\]'"):
        MetricsMiddleware(FakeProvider())


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"path": "metrics"}, "path must start with '/'"),
        ({"max_models": -1}, "max_models must be an integer >= 0"),
        ({"models": "gpt-4o"}, "models must be a list"),
        ({"refresh_interval": 0}, "refresh_interval must be > 0"),
        ({"latency_buckets": [1.0, 0.5]}, "latency_buckets must be increasing"),
        ({"exclude_paths": ["/metrics"]}, "exclude_paths"),
        ({"sources": {"queue": lambda: 1}}, "unknown metric sources"),
    ],
)
def test_bad_options_are_refused_with_a_message(kwargs, message):
    with pytest.raises(ConfigurationError, match=message):
        MetricsMiddleware(FakeProvider(), **kwargs)


def test_config_section_maps_onto_the_middleware(tmp_path):
    path = tmp_path / "llmguard.toml"
    path.write_text('[metrics]\npath = "/internal/metrics"\nmodels = ["m1"]\nmax_models = 7\n')
    config = load_config(path)
    upstreams = [Upstream("openai", "http://127.0.0.1:9/v1", api_key="k")]
    assert stack_kwargs(config, upstreams)["metrics"] == {
        "path": "/internal/metrics",
        "models": ["m1"],
        "max_models": 7,
    }
    assert stack_kwargs(load_config(None), upstreams)["metrics"] is None
    path.write_text("[metrics]\nenabled = false\n")
    assert stack_kwargs(load_config(path), upstreams)["metrics"] is None


# ------------------------------------------------------------------ the CLI with several workers


def _metrics_dirs(tmp: Path) -> list[Path]:
    return sorted(tmp.glob("llmguard-metrics-*"))


def _connections_by_pid(directory: Path) -> dict[int, float]:
    """Each worker's own share of the pool gauge, read from its file (no scrape involved)."""
    shares = {}
    for path in directory.glob("gauge_livesum_*.db"):
        try:
            families = MultiProcessCollector.merge([str(path)], accumulate=False)
        except FileNotFoundError:
            continue
        for family in families:
            for sample in family.samples:
                if sample.name == "llmguard_pool_connections_in_use":
                    shares[int(path.stem.rsplit("_", 1)[1])] = sample.value
    return shares


def test_two_workers_share_one_count_whichever_answers_the_scrape(tmp_path):
    tmp = tmp_path / "tmp"
    tmp.mkdir()
    with serve(FakeProvider(api_key=UPSTREAM_KEY, reply=REPLY)) as upstream:
        port = _free_port()
        config = tmp_path / "llmguard.toml"
        config.write_text(
            f"""
[server]
port = {port}

[[upstreams]]
provider = "openai"
base_url = "{upstream.url}/v1"
api_key_env = "METRICS_UPSTREAM_KEY"

[forward.limits]
max_per_host = 10

[usage]
sinks = ["sqlite:///{tmp_path}/ledger.sqlite3"]
spill_path = "{tmp_path}/spill"

[metrics]
refresh_interval = 0.1
"""
        )
        env = _env(METRICS_UPSTREAM_KEY=UPSTREAM_KEY, TMPDIR=str(tmp))
        env.pop("PROMETHEUS_MULTIPROC_DIR", None)
        proc = subprocess.Popen(
            [SCRIPT, "serve", "--config", str(config), "--workers", "2"],
            cwd=tmp_path,
            env=env,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        try:
            _wait_for_port(port, proc, timeout=30)
            url = f"http://127.0.0.1:{port}"
            _check_two_workers(url, tmp)
        finally:
            proc.send_signal(signal.SIGINT)
            _, err = proc.communicate(timeout=30)
    assert proc.returncode == 0, err
    assert UPSTREAM_KEY not in err
    assert _metrics_dirs(tmp) == []  # the serve command removed its directory


def _check_two_workers(url: str, tmp: Path) -> None:
    # Requests on fresh connections until both workers have answered some (the request id's
    # prefix is per process).
    workers: set[str] = set()
    sent = 0
    while len(workers) < 2 or sent < 8:
        assert sent < 200, "the kernel never handed a connection to the second worker"
        client = openai.OpenAI(base_url=f"{url}/v1", api_key="c", max_retries=0)
        raw = client.chat.completions.with_raw_response.create(
            model="gpt-4o-mini", messages=[{"role": "user", "content": "a b"}]
        )
        client.close()
        workers.add(raw.headers["x-request-id"][:20])
        sent += 1

    # Both workers write to the directory the serve command made for them.
    (directory,) = _metrics_dirs(tmp)
    assert len({p.name for p in directory.glob("counter_*.db")}) == 2

    # Every scrape, on a fresh connection to whichever worker, sees every request.
    for _ in range(6):
        s = scrape(url)
        assert total(s, "llmguard_requests_total", status="200") == sent
        assert total(s, "llmguard_upstream_latency_seconds_count") == sent
    wait_until(
        lambda: (
            total(scrape(url), "llmguard_tokens_total", direction="output") >= sent * REPLY_TOKENS
        ),
        timeout=10,
    )
    for _ in range(4):
        s = scrape(url)
        assert total(s, "llmguard_tokens_total", direction="input") == sent * 2
        assert total(s, "llmguard_tokens_total", direction="output") == sent * REPLY_TOKENS

    # A gauge: one stream in flight in one worker. That worker writes its share in the
    # background (seen in the files before any scrape), and every scrape sums the shares.
    client = openai.OpenAI(base_url=f"{url}/v1", api_key="c", max_retries=0)
    stream = client.chat.completions.create(
        model="gpt-4o-mini",
        messages=[{"role": "user", "content": "slow"}],
        stream=True,
        extra_headers={"x-fake-chunk-delay": "0.1", "x-fake-chunks": "100"},
    )
    try:
        wait_until(lambda: 1 in _connections_by_pid(directory).values(), timeout=5)
        for _ in range(6):
            assert total(scrape(url), "llmguard_pool_connections_in_use") == 1
        # The worker holding it dies without shutting down: its share is dropped, its counts kept.
        (pid,) = [p for p, n in _connections_by_pid(directory).items() if n == 1]
        os.kill(pid, signal.SIGKILL)
        wait_until(lambda: total(scrape(url), "llmguard_pool_connections_in_use") == 0, timeout=10)
        assert total(scrape(url), "llmguard_requests_total", status="200") == sent
    finally:
        with contextlib.suppress(openai.APIError, httpx.HTTPError):
            stream.close()
        client.close()
    assert "PROMETHEUS_MULTIPROC_DIR" not in os.environ  # the test process was left alone
