"""The providers' documented routes are known routes: forwarded with the upstream credential,
recorded under their operation at no cost, subject to a key's `endpoints` list, and never in need
of a ``passthrough`` setting. Unknown spellings of them stay unknown."""

from __future__ import annotations

import json
import sqlite3
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import anthropic
import httpx
import openai
import pytest

from asgi_llmguard import (
    KeyPolicy,
    MemoryBudgetStore,
    SQLiteSink,
    StaticKey,
    StaticKeyStore,
    Upstream,
    UsagePipeline,
    build_stack,
    hash_key,
)
from asgi_llmguard.routes import Route, RouteNotFound, classify
from asgi_llmguard.testing import serve

OPENAI_UPSTREAM_KEY = "sk-openai-upstream-route-table"
ANTHROPIC_UPSTREAM_KEY = "sk-ant-upstream-route-table"
FULL_KEY = "sk-llmg-full-0123456789abcdefghijklmnopqrstuvwxyz"
LISTING_KEY = "sk-llmg-listing-0123456789abcdefghijklmnopqrstuvwx"
MODEL_KEY = "sk-llmg-models-0123456789abcdefghijklmnopqrstuvwxy"


class RecordingUpstream:
    """A provider stand-in that records each request and answers a minimal JSON object that the
    SDKs accept for any of these routes (a list page, an object, a deletion)."""

    def __init__(self) -> None:
        self.requests: list[tuple[str, str, dict[str, str]]] = []

    async def __call__(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] == "lifespan":
            while (await receive())["type"] != "lifespan.shutdown":
                await send({"type": "lifespan.startup.complete"})
            await send({"type": "lifespan.shutdown.complete"})
            return
        more = True
        while more:
            more = (await receive()).get("more_body", False)
        headers = {k.decode("latin-1"): v.decode("latin-1") for k, v in scope["headers"]}
        self.requests.append((scope["method"], scope["path"], headers))
        body = json.dumps(
            {
                "id": "obj_1",
                "object": "list",
                "data": [],
                "has_more": False,
                "first_id": None,
                "last_id": None,
                "deleted": True,
            }
        ).encode()
        await send(
            {
                "type": "http.response.start",
                "status": 200,
                "headers": [(b"content-type", b"application/json")],
            }
        )
        await send({"type": "http.response.body", "body": body})


def _key(key: str, key_id: str, **limits: Any) -> StaticKey:
    return StaticKey(KeyPolicy(key_id=key_id, **limits), key_hash=hash_key(key))


@pytest.fixture
def gateway(tmp_path: Path) -> Iterator[tuple[str, RecordingUpstream, RecordingUpstream, Path]]:
    oa, an = RecordingUpstream(), RecordingUpstream()
    keys = StaticKeyStore(
        [
            _key(FULL_KEY, "full"),
            _key(LISTING_KEY, "listing", endpoints=("vector_stores.list",)),
            _key(MODEL_KEY, "models", models=("gpt-4o*",)),
        ]
    )
    ledger = tmp_path / "ledger.sqlite3"
    pipeline = UsagePipeline([SQLiteSink(str(ledger))], spill_path=str(tmp_path / "spill"))
    with serve(oa) as oa_server, serve(an) as an_server:
        app = build_stack(
            upstreams=[
                Upstream("openai", f"{oa_server.url}/v1", api_key=OPENAI_UPSTREAM_KEY),
                Upstream("anthropic", an_server.url, api_key=ANTHROPIC_UPSTREAM_KEY),
            ],
            keys=keys,
            usage={"budgets": MemoryBudgetStore()},
            pipeline=pipeline,
        )
        with serve(app) as server:
            yield server.url, oa, an, ledger


def _openai(url: str, key: str = FULL_KEY) -> openai.OpenAI:
    return openai.OpenAI(base_url=f"{url}/v1", api_key=key, max_retries=0)


def _rows(ledger: Path, count: int) -> list[tuple[str, str, int]]:
    deadline = time.monotonic() + 5
    rows: list[tuple[str, str, int]] = []
    while time.monotonic() < deadline:
        if ledger.exists():
            with sqlite3.connect(ledger) as db:
                if db.execute("SELECT 1 FROM sqlite_master WHERE name = 'usage_events'").fetchone():
                    rows = db.execute(
                        "SELECT key_id, endpoint, cost_nanos FROM usage_events ORDER BY started_at"
                    ).fetchall()
        if len(rows) >= count:
            break
        time.sleep(0.05)
    return rows


def test_openai_sdk_calls_reach_the_upstream_and_are_recorded_at_no_cost(gateway):
    url, oa, _, ledger = gateway
    client = _openai(url)
    calls = [
        ("chat.completions.list", lambda: client.chat.completions.list()),
        ("chat.completions.retrieve", lambda: client.chat.completions.retrieve("chatcmpl-1")),
        (
            "chat.completions.update",
            lambda: client.chat.completions.update("chatcmpl-1", metadata={"a": "b"}),
        ),
        ("chat.completions.delete", lambda: client.chat.completions.delete("chatcmpl-1")),
        (
            "chat.completions.messages.list",
            lambda: client.chat.completions.messages.list("chatcmpl-1"),
        ),
        (
            "uploads.create",
            lambda: client.uploads.create(
                bytes=3, filename="a.jsonl", mime_type="text/jsonl", purpose="batch"
            ),
        ),
        ("uploads.parts.create", lambda: client.uploads.parts.create("upload_1", data=b"abc")),
        ("uploads.complete", lambda: client.uploads.complete("upload_1", part_ids=["part_1"])),
        ("uploads.cancel", lambda: client.uploads.cancel("upload_1")),
        ("vector_stores.create", lambda: client.vector_stores.create(name="docs")),
        ("vector_stores.list", lambda: client.vector_stores.list()),
        ("vector_stores.retrieve", lambda: client.vector_stores.retrieve("vs_1")),
        ("vector_stores.update", lambda: client.vector_stores.update("vs_1", name="d")),
        ("vector_stores.delete", lambda: client.vector_stores.delete("vs_1")),
        ("vector_stores.search", lambda: client.vector_stores.search("vs_1", query="q")),
        (
            "vector_stores.files.create",
            lambda: client.vector_stores.files.create("vs_1", file_id="file-1"),
        ),
        ("vector_stores.files.list", lambda: client.vector_stores.files.list("vs_1")),
        (
            "vector_stores.files.content",
            lambda: client.vector_stores.files.content("file-1", vector_store_id="vs_1"),
        ),
        (
            "vector_stores.files.delete",
            lambda: client.vector_stores.files.delete("file-1", vector_store_id="vs_1"),
        ),
        (
            "vector_stores.file_batches.create",
            lambda: client.vector_stores.file_batches.create("vs_1", file_ids=["file-1"]),
        ),
        (
            "vector_stores.file_batches.cancel",
            lambda: client.vector_stores.file_batches.cancel("vsfb_1", vector_store_id="vs_1"),
        ),
        (
            "fine_tuning.jobs.create",
            lambda: client.fine_tuning.jobs.create(model="gpt-4o-mini", training_file="file-1"),
        ),
        ("fine_tuning.jobs.list", lambda: client.fine_tuning.jobs.list()),
        ("fine_tuning.jobs.retrieve", lambda: client.fine_tuning.jobs.retrieve("ftjob-1")),
        ("fine_tuning.jobs.list_events", lambda: client.fine_tuning.jobs.list_events("ftjob-1")),
        ("fine_tuning.jobs.cancel", lambda: client.fine_tuning.jobs.cancel("ftjob-1")),
        ("fine_tuning.jobs.pause", lambda: client.fine_tuning.jobs.pause("ftjob-1")),
        ("fine_tuning.jobs.resume", lambda: client.fine_tuning.jobs.resume("ftjob-1")),
        (
            "fine_tuning.jobs.checkpoints.list",
            lambda: client.fine_tuning.jobs.checkpoints.list("ftjob-1"),
        ),
        (
            "fine_tuning.checkpoints.permissions.create",
            lambda: client.fine_tuning.checkpoints.permissions.create(
                "ft:gpt-4o-mini:org:x:ckpt-1", project_ids=["proj_1"]
            ),
        ),
        (
            "fine_tuning.checkpoints.permissions.delete",
            lambda: client.fine_tuning.checkpoints.permissions.delete(
                "cp_1", fine_tuned_model_checkpoint="ft:gpt-4o-mini:org:x:ckpt-1"
            ),
        ),
        ("models.delete", lambda: client.models.delete("ft:gpt-4o-mini:org:x:1")),
        ("evals.list", lambda: client.evals.list()),
        ("evals.retrieve", lambda: client.evals.retrieve("eval_1")),
        ("evals.delete", lambda: client.evals.delete("eval_1")),
        ("evals.runs.list", lambda: client.evals.runs.list("eval_1")),
        ("evals.runs.retrieve", lambda: client.evals.runs.retrieve("run_1", eval_id="eval_1")),
        ("evals.runs.cancel", lambda: client.evals.runs.cancel("run_1", eval_id="eval_1")),
        (
            "evals.runs.output_items.list",
            lambda: client.evals.runs.output_items.list("run_1", eval_id="eval_1"),
        ),
        ("containers.create", lambda: client.containers.create(name="box")),
        ("containers.list", lambda: client.containers.list()),
        ("containers.delete", lambda: client.containers.delete("cntr_1")),
        ("containers.files.list", lambda: client.containers.files.list("cntr_1")),
        (
            "containers.files.content",
            lambda: client.containers.files.content.retrieve("cfile_1", container_id="cntr_1"),
        ),
        (
            "realtime.client_secrets.create",
            lambda: client.realtime.client_secrets.create(
                session={"type": "realtime", "model": "gpt-realtime"}
            ),
        ),
        ("responses.delete", lambda: client.responses.delete("resp_1")),
        ("files.delete", lambda: client.files.delete("file-1")),
        ("files.content", lambda: client.files.content("file-1")),
    ]
    for _, call in calls:
        call()

    expected = [operation for operation, _ in calls]
    assert len(oa.requests) == len(calls)
    for (method, path, headers), operation in zip(oa.requests, expected, strict=True):
        assert classify(method, path).endpoint.operation == operation, (method, path)
        assert headers["authorization"] == f"Bearer {OPENAI_UPSTREAM_KEY}"
        assert FULL_KEY not in headers.values()

    rows = _rows(ledger, len(calls))
    assert [(key, endpoint) for key, endpoint, _ in rows] == [("full", op) for op in expected]
    assert all(cost == 0 for _, _, cost in rows)


def test_upstream_sees_the_documented_method_and_path(gateway):
    url, oa, _, _ = gateway
    client = _openai(url)
    client.vector_stores.files.content("file-1", vector_store_id="vs_1")
    client.fine_tuning.checkpoints.permissions.delete(
        "cp_1", fine_tuned_model_checkpoint="ft:gpt-4o-mini:org:x:ckpt-1"
    )
    client.uploads.parts.create("upload_1", data=b"abc")
    client.chat.completions.list()
    client.realtime.client_secrets.create(session={"type": "realtime", "model": "gpt-realtime"})
    assert [(m, p) for m, p, _ in oa.requests] == [
        ("GET", "/v1/vector_stores/vs_1/files/file-1/content"),
        ("DELETE", "/v1/fine_tuning/checkpoints/ft:gpt-4o-mini:org:x:ckpt-1/permissions/cp_1"),
        ("POST", "/v1/uploads/upload_1/parts"),
        ("GET", "/v1/chat/completions"),
        ("POST", "/v1/realtime/client_secrets"),
    ]


def test_anthropic_skills_go_to_the_anthropic_upstream(gateway):
    url, oa, an, ledger = gateway
    client = anthropic.Anthropic(base_url=url, api_key=FULL_KEY, max_retries=0)
    client.beta.skills.list()
    client.beta.skills.retrieve("skill_1")
    client.beta.skills.versions.list("skill_1")
    client.beta.skills.versions.delete("1759178010641129", skill_id="skill_1")
    client.beta.skills.delete("skill_1")
    assert oa.requests == []
    assert [(m, p) for m, p, _ in an.requests] == [
        ("GET", "/v1/skills"),
        ("GET", "/v1/skills/skill_1"),
        ("GET", "/v1/skills/skill_1/versions"),
        ("DELETE", "/v1/skills/skill_1/versions/1759178010641129"),
        ("DELETE", "/v1/skills/skill_1"),
    ]
    assert all(h["x-api-key"] == ANTHROPIC_UPSTREAM_KEY for _, _, h in an.requests)
    rows = _rows(ledger, 5)
    assert [endpoint for _, endpoint, _ in rows] == [
        "skills.list",
        "skills.retrieve",
        "skills.versions.list",
        "skills.versions.delete",
        "skills.delete",
    ]


def test_a_keys_endpoint_list_applies_to_the_new_routes(gateway):
    url, oa, _, _ = gateway
    client = _openai(url, LISTING_KEY)
    client.vector_stores.list()
    with pytest.raises(openai.PermissionDeniedError) as refused:
        client.vector_stores.create(name="docs")
    assert "vector_stores.create" in refused.value.message
    assert [(m, p) for m, p, _ in oa.requests] == [("GET", "/v1/vector_stores")]


def test_a_model_restricted_key_may_not_start_unmetered_model_work(gateway):
    url, oa, _, _ = gateway
    client = _openai(url, MODEL_KEY)
    client.vector_stores.create(name="docs")  # reaches no model: allowed
    with pytest.raises(openai.PermissionDeniedError):
        client.fine_tuning.jobs.create(model="gpt-3.5-turbo", training_file="file-1")
    with pytest.raises(openai.PermissionDeniedError):
        client.realtime.client_secrets.create(session={"type": "realtime", "model": "gpt-realtime"})
    assert [(m, p) for m, p, _ in oa.requests] == [("POST", "/v1/vector_stores")]


@pytest.mark.parametrize(
    ("method", "path"),
    [
        ("POST", "/v1/vector_stores/"),
        ("GET", "/v1/fine_tuning/jobs/"),
        ("GET", "/v1/chat/completions/chatcmpl-1/"),
        ("POST", "/v1//vector_stores"),
        ("GET", "/v1/Vector_stores"),
    ],
)
def test_near_misses_are_unknown_routes(gateway, method, path):
    url, oa, _, _ = gateway
    answer = httpx.request(method, f"{url}{path}", headers={"authorization": f"Bearer {FULL_KEY}"})
    assert answer.status_code == 404
    assert oa.requests == []


# Every documented route, as the providers' API references list them.
DOCUMENTED_OPENAI = [
    # Chat Completions (stored completions)
    ("POST", "/v1/chat/completions"),
    ("GET", "/v1/chat/completions"),
    ("GET", "/v1/chat/completions/chatcmpl-1"),
    ("POST", "/v1/chat/completions/chatcmpl-1"),
    ("DELETE", "/v1/chat/completions/chatcmpl-1"),
    ("GET", "/v1/chat/completions/chatcmpl-1/messages"),
    # Responses
    ("POST", "/v1/responses"),
    ("GET", "/v1/responses/resp_1"),
    ("DELETE", "/v1/responses/resp_1"),
    ("POST", "/v1/responses/resp_1/cancel"),
    ("GET", "/v1/responses/resp_1/input_items"),
    ("POST", "/v1/responses/input_tokens"),
    ("POST", "/v1/responses/compact"),
    # Files
    ("GET", "/v1/files"),
    ("POST", "/v1/files"),
    ("GET", "/v1/files/file-1"),
    ("DELETE", "/v1/files/file-1"),
    ("GET", "/v1/files/file-1/content"),
    # Models
    ("GET", "/v1/models"),
    ("GET", "/v1/models/gpt-4o"),
    ("DELETE", "/v1/models/ft:gpt-4o-mini:org:x:1"),
    # Moderations, audio
    ("POST", "/v1/moderations"),
    ("POST", "/v1/audio/speech"),
    ("POST", "/v1/audio/voices"),
    ("DELETE", "/v1/audio/voices/voice_1"),
    ("GET", "/v1/audio/voice_consents"),
    ("POST", "/v1/audio/voice_consents"),
    ("GET", "/v1/audio/voice_consents/cons_1"),
    ("POST", "/v1/audio/voice_consents/cons_1"),
    ("DELETE", "/v1/audio/voice_consents/cons_1"),
    # Uploads
    ("POST", "/v1/uploads"),
    ("POST", "/v1/uploads/upload_1/parts"),
    ("POST", "/v1/uploads/upload_1/complete"),
    ("POST", "/v1/uploads/upload_1/cancel"),
    # Vector stores
    ("GET", "/v1/vector_stores"),
    ("POST", "/v1/vector_stores"),
    ("GET", "/v1/vector_stores/vs_1"),
    ("POST", "/v1/vector_stores/vs_1"),
    ("DELETE", "/v1/vector_stores/vs_1"),
    ("POST", "/v1/vector_stores/vs_1/search"),
    ("GET", "/v1/vector_stores/vs_1/files"),
    ("POST", "/v1/vector_stores/vs_1/files"),
    ("GET", "/v1/vector_stores/vs_1/files/file-1"),
    ("POST", "/v1/vector_stores/vs_1/files/file-1"),
    ("DELETE", "/v1/vector_stores/vs_1/files/file-1"),
    ("GET", "/v1/vector_stores/vs_1/files/file-1/content"),
    ("POST", "/v1/vector_stores/vs_1/file_batches"),
    ("GET", "/v1/vector_stores/vs_1/file_batches/vsfb_1"),
    ("POST", "/v1/vector_stores/vs_1/file_batches/vsfb_1/cancel"),
    ("GET", "/v1/vector_stores/vs_1/file_batches/vsfb_1/files"),
    # Fine-tuning
    ("POST", "/v1/fine_tuning/jobs"),
    ("GET", "/v1/fine_tuning/jobs"),
    ("GET", "/v1/fine_tuning/jobs/ftjob-1"),
    ("POST", "/v1/fine_tuning/jobs/ftjob-1/cancel"),
    ("POST", "/v1/fine_tuning/jobs/ftjob-1/pause"),
    ("POST", "/v1/fine_tuning/jobs/ftjob-1/resume"),
    ("GET", "/v1/fine_tuning/jobs/ftjob-1/events"),
    ("GET", "/v1/fine_tuning/jobs/ftjob-1/checkpoints"),
    ("GET", "/v1/fine_tuning/checkpoints/ft:gpt-4o-mini:org:x:ckpt-1/permissions"),
    ("POST", "/v1/fine_tuning/checkpoints/ft:gpt-4o-mini:org:x:ckpt-1/permissions"),
    ("DELETE", "/v1/fine_tuning/checkpoints/ft:gpt-4o-mini:org:x:ckpt-1/permissions/cp_1"),
    ("POST", "/v1/fine_tuning/alpha/graders/run"),
    ("POST", "/v1/fine_tuning/alpha/graders/validate"),
    # Evals
    ("GET", "/v1/evals"),
    ("POST", "/v1/evals"),
    ("GET", "/v1/evals/eval_1"),
    ("POST", "/v1/evals/eval_1"),
    ("DELETE", "/v1/evals/eval_1"),
    ("GET", "/v1/evals/eval_1/runs"),
    ("POST", "/v1/evals/eval_1/runs"),
    ("GET", "/v1/evals/eval_1/runs/run_1"),
    ("POST", "/v1/evals/eval_1/runs/run_1"),
    ("DELETE", "/v1/evals/eval_1/runs/run_1"),
    ("POST", "/v1/evals/eval_1/runs/run_1/cancel"),
    ("GET", "/v1/evals/eval_1/runs/run_1/output_items"),
    ("GET", "/v1/evals/eval_1/runs/run_1/output_items/oi_1"),
    # Containers
    ("GET", "/v1/containers"),
    ("POST", "/v1/containers"),
    ("GET", "/v1/containers/cntr_1"),
    ("DELETE", "/v1/containers/cntr_1"),
    ("GET", "/v1/containers/cntr_1/files"),
    ("POST", "/v1/containers/cntr_1/files"),
    ("GET", "/v1/containers/cntr_1/files/cfile_1"),
    ("DELETE", "/v1/containers/cntr_1/files/cfile_1"),
    ("GET", "/v1/containers/cntr_1/files/cfile_1/content"),
    # Realtime (HTTP)
    ("POST", "/v1/realtime/client_secrets"),
    ("POST", "/v1/realtime/sessions"),
    ("POST", "/v1/realtime/transcription_sessions"),
    ("POST", "/v1/realtime/calls"),
    ("POST", "/v1/realtime/calls/rtc_1/accept"),
    ("POST", "/v1/realtime/calls/rtc_1/hangup"),
    ("POST", "/v1/realtime/calls/rtc_1/refer"),
    ("POST", "/v1/realtime/calls/rtc_1/reject"),
    # Skills
    ("GET", "/v1/skills"),
    ("POST", "/v1/skills"),
    ("GET", "/v1/skills/skill_1"),
    ("POST", "/v1/skills/skill_1"),
    ("DELETE", "/v1/skills/skill_1"),
    ("GET", "/v1/skills/skill_1/content"),
    ("GET", "/v1/skills/skill_1/versions"),
    ("POST", "/v1/skills/skill_1/versions"),
    ("GET", "/v1/skills/skill_1/versions/2"),
    ("DELETE", "/v1/skills/skill_1/versions/2"),
    ("GET", "/v1/skills/skill_1/versions/2/content"),
]

DOCUMENTED_ANTHROPIC = [
    ("POST", "/v1/messages"),
    ("POST", "/v1/messages/count_tokens"),
    ("GET", "/v1/messages/batches"),
    ("POST", "/v1/messages/batches"),
    ("GET", "/v1/messages/batches/msgbatch_1"),
    ("DELETE", "/v1/messages/batches/msgbatch_1"),
    ("POST", "/v1/messages/batches/msgbatch_1/cancel"),
    ("GET", "/v1/messages/batches/msgbatch_1/results"),
    ("GET", "/v1/models"),
    ("GET", "/v1/models/claude-sonnet-4-5"),
    ("GET", "/v1/files"),
    ("POST", "/v1/files"),
    ("GET", "/v1/files/file_1"),
    ("DELETE", "/v1/files/file_1"),
    ("GET", "/v1/files/file_1/content"),
    ("GET", "/v1/skills"),
    ("POST", "/v1/skills"),
    ("GET", "/v1/skills/skill_1"),
    ("DELETE", "/v1/skills/skill_1"),
    ("GET", "/v1/skills/skill_1/versions"),
    ("POST", "/v1/skills/skill_1/versions"),
    ("GET", "/v1/skills/skill_1/versions/1759178010641129"),
    ("DELETE", "/v1/skills/skill_1/versions/1759178010641129"),
    ("GET", "/v1/skills/skill_1/versions/1759178010641129/content"),
]


def _known(route: Route, api: str) -> None:
    endpoint = route.endpoint
    assert endpoint.operation != "passthrough"
    assert endpoint.api == api


@pytest.mark.parametrize(("method", "path"), DOCUMENTED_OPENAI)
def test_every_documented_openai_route_is_known(method, path):
    route = classify(method, path)
    _known(route, "openai")
    if method == "GET":
        assert route.endpoint.read_only


@pytest.mark.parametrize(("method", "path"), DOCUMENTED_ANTHROPIC)
def test_every_documented_anthropic_route_is_known(method, path):
    _known(classify(method, path, anthropic=True), "anthropic")


def test_documented_routes_have_distinct_operations():
    seen: dict[str, tuple[str, str]] = {}
    for method, path in DOCUMENTED_OPENAI:
        operation = classify(method, path).endpoint.operation
        if operation == "evals.runs.cancel":
            continue  # both documented spellings of the same call
        assert operation not in seen, (operation, seen.get(operation), (method, path))
        seen[operation] = (method, path)


def test_only_token_metered_routes_are_billable():
    billable = {
        classify(m, p).endpoint.operation
        for m, p in DOCUMENTED_OPENAI
        if classify(m, p).endpoint.billable
    }
    assert billable == {
        "chat.completions",
        "responses",
        "responses.compact",
        "audio.speech",
    }


@pytest.mark.parametrize(
    "path",
    ["/v1/vector_stores/", "/v1/vector_stores/vs_1/files/", "/v1/evals/e/runs/r/x", "/v1/skills/"],
)
def test_near_misses_do_not_classify(path):
    with pytest.raises(RouteNotFound):
        classify("GET", path)
