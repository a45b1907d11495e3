"""Request ids through a served gateway with the real SDK: the gateway's own id is each request's
identity in the ledger, the capture records and the access log; the caller's ``x-request-id`` is
echoed, sent upstream and recorded beside it, and can never merge or overwrite a record."""

from __future__ import annotations

import logging
import sqlite3
import time

import openai
import orjson
import pytest

from asgi_llmguard import (
    SQLiteCaptureSink,
    SQLiteSink,
    Upstream,
    UsagePipeline,
    build_stack,
)
from asgi_llmguard.context import GATEWAY_REQUEST_ID_HEADER
from asgi_llmguard.testing import FakeProvider, serve

UPSTREAM_KEY = "sk-upstream-request-ids"
CALLER_ID = "trace-same-every-time"


def _wait_rows(path, sql: str, count: int, timeout: float = 5.0) -> list[tuple]:
    deadline = time.monotonic() + timeout
    rows: list[tuple] = []
    while time.monotonic() < deadline:
        if path.exists():
            with sqlite3.connect(path) as db:
                try:
                    rows = db.execute(sql).fetchall()
                except sqlite3.OperationalError:
                    rows = []  # the table comes with the first batch
            if len(rows) >= count:
                return rows
        time.sleep(0.02)
    raise AssertionError(f"{len(rows)} rows in {path.name}, expected {count}")


def test_a_repeated_caller_id_never_merges_records(tmp_path, caplog):
    caplog.set_level(logging.INFO, logger="asgi_llmguard.access")
    fake = FakeProvider(api_key=UPSTREAM_KEY)
    ledger = tmp_path / "ledger.sqlite3"
    captures = tmp_path / "captures.sqlite3"
    pipeline = UsagePipeline([SQLiteSink(str(ledger))], spill_path=str(tmp_path / "spill"))
    with serve(fake) as upstream:
        app = build_stack(
            upstreams=[Upstream("openai", f"{upstream.url}/v1", api_key=UPSTREAM_KEY)],
            pipeline=pipeline,
            capture={"sink": SQLiteCaptureSink(captures), "routes": {"chat.completions"}},
        )
        with serve(app) as server:
            client = openai.OpenAI(base_url=f"{server.url}/v1", api_key="any", max_retries=0)
            raws = [
                client.chat.completions.with_raw_response.create(
                    model="gpt-4o-mini",
                    messages=[{"role": "user", "content": f"call {n}"}],
                    extra_headers={"x-request-id": CALLER_ID},
                )
                for n in range(3)
            ]
            ours = [raw.headers[GATEWAY_REQUEST_ID_HEADER] for raw in raws]
            rows = _wait_rows(
                ledger,
                "SELECT request_id, client_request_id, outcome FROM usage_events",
                3,
            )
            captured = _wait_rows(
                captures, "SELECT request_id, client_request_id, record FROM captures", 3
            )

    # Every response: the caller's id echoed once, the gateway's own id in its own header.
    assert [raw.headers.get_list("x-request-id") for raw in raws] == [[CALLER_ID]] * 3
    assert len(set(ours)) == 3
    assert all(rid.startswith("req_") for rid in ours)
    # The upstream saw the caller's id, so the caller's traces still connect.
    assert [r.header("x-request-id") for r in fake.requests] == [CALLER_ID] * 3
    # Three ledger rows, keyed by the gateway's ids, each carrying the caller's.
    assert sorted(rows) == sorted((rid, CALLER_ID, "ok") for rid in ours)
    # Three capture records, none replaced by the next.
    assert sorted((r[0], r[1]) for r in captured) == sorted((rid, CALLER_ID) for rid in ours)
    for request_id, client_id, record in captured:
        decoded = orjson.loads(record)
        assert (decoded["request_id"], decoded["client_request_id"]) == (request_id, client_id)
    # Three access lines, each naming both ids.
    lines = [
        orjson.loads(r.getMessage()) for r in caplog.records if r.name == "asgi_llmguard.access"
    ]
    assert sorted((line["request_id"], line["client_request_id"]) for line in lines) == sorted(
        (rid, CALLER_ID) for rid in ours
    )


def test_without_a_caller_id_the_gateways_id_is_returned_in_both_headers(tmp_path):
    fake = FakeProvider(api_key=UPSTREAM_KEY)
    ledger = tmp_path / "ledger.sqlite3"
    pipeline = UsagePipeline([SQLiteSink(str(ledger))], spill_path=str(tmp_path / "spill"))
    with serve(fake) as upstream:
        app = build_stack(
            upstreams=[Upstream("openai", f"{upstream.url}/v1", api_key=UPSTREAM_KEY)],
            pipeline=pipeline,
        )
        with serve(app) as server:
            client = openai.OpenAI(base_url=f"{server.url}/v1", api_key="any", max_retries=0)
            raw = client.chat.completions.with_raw_response.create(
                model="gpt-4o-mini", messages=[{"role": "user", "content": "hi"}]
            )
            rows = _wait_rows(ledger, "SELECT request_id, client_request_id FROM usage_events", 1)
    ours = raw.headers[GATEWAY_REQUEST_ID_HEADER]
    assert raw.headers.get_list("x-request-id") == [ours]
    assert fake.requests[-1].header("x-request-id") == ours
    assert rows == [(ours, None)]


@pytest.mark.parametrize("trust", [True, False])
def test_a_caller_cannot_choose_the_gateways_id(tmp_path, trust):
    """A caller sending the gateway's own header gets a fresh id all the same."""
    fake = FakeProvider(api_key=UPSTREAM_KEY)
    with serve(fake) as upstream:
        app = build_stack(
            upstreams=[Upstream("openai", f"{upstream.url}/v1", api_key=UPSTREAM_KEY)],
            access_log={"trust_request_id": trust},
        )
        with serve(app) as server:
            client = openai.OpenAI(base_url=f"{server.url}/v1", api_key="any", max_retries=0)
            raw = client.chat.completions.with_raw_response.create(
                model="gpt-4o-mini",
                messages=[{"role": "user", "content": "hi"}],
                extra_headers={GATEWAY_REQUEST_ID_HEADER: "req_chosen", "x-request-id": "mine"},
            )
    assert raw.headers.get_list(GATEWAY_REQUEST_ID_HEADER) != ["req_chosen"]
    assert len(raw.headers.get_list(GATEWAY_REQUEST_ID_HEADER)) == 1
    expected = "mine" if trust else raw.headers[GATEWAY_REQUEST_ID_HEADER]
    assert raw.headers.get_list("x-request-id") == [expected]
