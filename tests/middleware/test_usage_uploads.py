"""Uploads through real sockets: the openai SDK -> gateway (uvicorn) -> fake upstream.

Transcriptions, translations, image edits and variations are ``multipart/form-data``: the model
comes from the form, and each answer is charged in the unit the provider bills (minutes of audio,
images, audio and text tokens). The fake's rules (one second of audio per 1,000 bytes of file,
one audio token per 100 bytes) make the expected numbers follow from what is uploaded.
"""

from __future__ import annotations

import asyncio
import io
import sqlite3
import time
from collections.abc import Iterator

import httpx
import openai
import pytest

from asgi_llmguard.middleware.size_limit import SizeLimitMiddleware
from asgi_llmguard.testing import FakeProvider, RunningServer, serve
from asgi_llmguard.tokens import TokenUsage
from asgi_llmguard.usage.budgets import MemoryBudgetStore
from asgi_llmguard.usage.events import UsageEvent
from asgi_llmguard.usage.pricing import ModelPrice, PriceTable
from asgi_llmguard.usage.sinks.sqlite import SQLiteSink
from tests.middleware.test_usage import KEY, Collector, _stack

SHIPPED = PriceTable.default()


@pytest.fixture(scope="module")
def fake_server() -> Iterator[tuple[FakeProvider, RunningServer]]:
    fake = FakeProvider(api_key=KEY)
    with serve(fake) as server:
        yield fake, server


class Gateway:
    def __init__(self, url: str, events: Collector, fake: FakeProvider) -> None:
        self.url = url
        self.events = events
        self.fake = fake

    def client(self) -> openai.OpenAI:
        return openai.OpenAI(base_url=f"{self.url}/v1", api_key="c", max_retries=0)

    def one(self) -> UsageEvent:
        (event,) = self.events.wait(1)
        time.sleep(0.05)
        assert len(self.events.events) == 1, self.events.events
        return event


def _gateway(fake_server, **usage_kwargs) -> Iterator[Gateway]:
    fake, upstream = fake_server
    fake.reset()
    events = Collector()
    usage_kwargs.setdefault("prices", SHIPPED)
    app = _stack(upstream.url, events, **usage_kwargs)
    with serve(SizeLimitMiddleware(app, max_body_bytes=300_000)) as server:
        yield Gateway(server.url, events, fake)


@pytest.fixture
def gateway(fake_server) -> Iterator[Gateway]:
    yield from _gateway(fake_server)


def audio(size: int) -> tuple[str, io.BytesIO]:
    return ("speech.mp3", io.BytesIO(b"\xff" * size))


def png(size: int = 300) -> tuple[str, io.BytesIO]:
    return ("cat.png", io.BytesIO(b"\x89PNG" + b"\x00" * (size - 4)))


def usd(amount: float) -> int:
    return round(amount * 1e9)


def test_whisper_json_is_charged_from_its_usage_seconds(gateway):
    result = gateway.client().audio.transcriptions.create(model="whisper-1", file=audio(45_500))
    assert result.usage is not None
    assert result.usage.type == "duration"
    e = gateway.one()
    # 45.5 s of audio, reported as 46 whole seconds in usage (the fake rounds up).
    assert (e.units, e.unit, e.estimated) == (46 / 60, "minute", False)
    assert (e.input_tokens, e.output_tokens) == (0, 0)
    assert e.cost_nanos == usd(0.006 * 46 / 60)


def test_whisper_is_charged_per_minute_of_the_duration_reported(gateway):
    result = gateway.client().audio.transcriptions.create(
        model="whisper-1", file=audio(90_000), response_format="verbose_json"
    )
    assert result.duration == 90.0  # 90,000 bytes: 90 s by the fake's rule
    e = gateway.one()
    assert (e.model, e.endpoint, e.outcome, e.estimated) == (
        "whisper-1",
        "audio.transcriptions",
        "ok",
        False,
    )
    assert (e.units, e.unit) == (1.5, "minute")
    assert e.cost_nanos == usd(1.5 * 0.006)
    assert (e.input_tokens, e.output_tokens) == (0, 0)


# The SDK marks this endpoint deprecated; it is still served and billed.
@pytest.mark.filterwarnings("ignore::DeprecationWarning")
def test_translation_is_charged_per_minute_too(gateway):
    gateway.client().audio.translations.create(
        model="whisper-1", file=audio(30_000), response_format="verbose_json"
    )
    e = gateway.one()
    assert (e.endpoint, e.units, e.unit) == ("audio.translations", 0.5, "minute")
    assert e.cost_nanos == usd(0.5 * 0.006)


def test_plain_text_transcript_is_charged_an_estimate_from_the_upload_size(gateway):
    text = gateway.client().audio.transcriptions.create(
        model="whisper-1", file=audio(250_000), response_format="text"
    )
    assert text.strip() == "Hello from the fake provider."
    e = gateway.one()
    # No duration in a plain-text answer: one minute per megabyte uploaded, flagged.
    assert e.estimated
    assert e.unit == "minute"
    assert 0.25 < e.units < 0.26
    price = SHIPPED.resolve("whisper-1")
    assert price is not None
    assert e.cost_nanos == price.cost_nanos(TokenUsage(), units=e.units, unit="minute")
    assert e.cost_nanos > 0


def test_token_billed_plain_text_transcript_is_estimated_from_the_minutes(gateway):
    text = gateway.client().audio.transcriptions.create(
        model="gpt-4o-transcribe", file=audio(120_000), response_format="text"
    )
    assert text.strip() == "Hello from the fake provider."
    e = gateway.one()
    # No usage in a plain-text answer: ~0.12 minutes of upload at 1,000 audio tokens a minute,
    # and the 30-byte transcript at 4 bytes a token; never the audio bytes as text tokens.
    assert e.estimated
    assert 120 < e.input_tokens <= 122
    assert e.output_tokens == 7
    assert e.cost_nanos == e.input_tokens * 6000 + 7 * 10_000


def test_gpt_4o_transcribe_is_charged_by_audio_and_text_tokens(gateway):
    result = gateway.client().audio.transcriptions.create(
        model="gpt-4o-transcribe", file=audio(5_000), prompt="two words"
    )
    assert result.usage is not None
    assert result.usage.type == "tokens"
    e = gateway.one()
    # 50 audio tokens at $6/M, 2 text tokens at $2.50/M, 5 output tokens at $10/M.
    assert (e.input_tokens, e.output_tokens) == (52, 5)
    assert e.cost_nanos == 50 * 6000 + 2 * 2500 + 5 * 10_000
    assert (e.units, e.unit, e.estimated) == (0.0, None, False)


def test_streamed_transcription_is_charged_by_the_tokens_of_its_done_event(gateway):
    stream = gateway.client().audio.transcriptions.create(
        model="gpt-4o-mini-transcribe", file=audio(10_000), stream=True
    )
    events = list(stream)
    assert [e.type for e in events][-1] == "transcript.text.done"
    assert "".join(e.delta for e in events if e.type == "transcript.text.delta") == (
        "Hello from the fake provider."
    )
    e = gateway.one()
    # 100 audio tokens at $3/M, 5 output tokens at $5/M: from the upstream, not estimated.
    assert (e.input_tokens, e.output_tokens, e.stream, e.estimated) == (100, 5, True, False)
    assert e.cost_nanos == 100 * 3000 + 5 * 5000


def test_image_edit_is_charged_per_image(gateway):
    result = gateway.client().images.edit(model="dall-e-2", image=png(), prompt="a hat", n=2)
    assert len(result.data or []) == 2
    e = gateway.one()
    assert (e.endpoint, e.units, e.unit, e.estimated) == ("images.edits", 2.0, "image", False)
    assert e.cost_nanos == usd(2 * 0.02)


# The SDK marks this endpoint deprecated; it is still served and billed.
@pytest.mark.filterwarnings("ignore::DeprecationWarning")
def test_image_variation_is_charged_per_image(gateway):
    result = gateway.client().images.create_variation(
        model="dall-e-2", image=png(), n=2, response_format="b64_json"
    )
    assert len(result.data or []) == 2
    e = gateway.one()
    assert (e.endpoint, e.units, e.unit) == ("images.variations", 2.0, "image")
    assert e.cost_nanos == usd(2 * 0.02)


def test_image_generations_are_charged_per_image_or_by_tokens(gateway):
    client = gateway.client()
    client.images.generate(model="dall-e-2", prompt="a cat", n=3)
    client.images.generate(model="gpt-image-1", prompt="a cat", n=2)
    dall_e, gpt_image = gateway.events.wait(2)
    assert (dall_e.endpoint, dall_e.units, dall_e.unit) == ("images.generations", 3.0, "image")
    assert dall_e.cost_nanos == usd(3 * 0.02)
    # gpt-image-1 reports tokens: 2 prompt words, 100 output tokens per image (the fake's rule).
    assert (gpt_image.input_tokens, gpt_image.output_tokens) == (2, 200)
    assert (gpt_image.units, gpt_image.unit, gpt_image.estimated) == (2.0, "image", False)
    assert gpt_image.cost_nanos == 2 * 10_000 + 200 * 40_000


def test_a_budget_reserves_the_images_asked_for(fake_server):
    for gateway in _gateway(fake_server, budgets=MemoryBudgetStore()):
        poor = openai.OpenAI(
            base_url=f"{gateway.url}/v1",
            api_key="c",
            max_retries=0,
            default_headers={"x-test-key": "poor"},  # a $0.10 budget
        )
        # Ten images at $0.02 cannot fit in $0.10: refused before the upstream.
        with pytest.raises(openai.RateLimitError) as info:
            poor.images.edit(model="dall-e-2", image=png(), prompt="x", n=10)
        assert info.value.code == "insufficient_quota"
        assert len(gateway.fake.requests) == 0
        # Four fit, and are charged.
        poor.images.edit(model="dall-e-2", image=png(), prompt="x", n=4)
        charged = gateway.events.wait(2)[-1]
        assert (charged.key_id, charged.units, charged.cost_nanos) == ("poor", 4.0, usd(0.08))


def test_default_price_applies_to_an_unknown_upload_model(fake_server):
    default = ModelPrice(input=1.0, output=1.0, per_image=0.5, per_minute=0.25)
    for gateway in _gateway(fake_server, missing_price=default):
        gateway.client().images.edit(model="mystery-painter", image=png(), prompt="x", n=2)
        e = gateway.one()
        assert (e.model, e.units, e.unit) == ("mystery-painter", 2.0, "image")
        assert e.cost_nanos == usd(2 * 0.5)


def test_unknown_upload_model_is_refused_by_name_when_unpriced(gateway):
    with pytest.raises(openai.BadRequestError) as info:
        gateway.client().audio.transcriptions.create(model="mystery-ear", file=audio(1000))
    assert info.value.code == "model_not_priced"
    assert "mystery-ear" in str(info.value)
    assert len(gateway.fake.requests) == 0


def test_malformed_form_is_400_in_openai_shape(gateway):
    with httpx.Client() as http:
        bad = http.post(
            f"{gateway.url}/v1/audio/transcriptions",
            headers={"content-type": "multipart/form-data; boundary=abc"},
            content=b"--abc\r\nno-colon-here\r\n\r\nwhisper-1\r\n--abc--\r\n",
        )
        no_boundary = http.post(
            f"{gateway.url}/v1/images/edits",
            headers={"content-type": "multipart/form-data"},
            content=b"--abc\r\n",
        )
    for response in (bad, no_boundary):
        assert response.status_code == 400
        error = response.json()["error"]
        assert error["type"] == "invalid_request_error"
        assert "multipart" in error["message"]
    assert len(gateway.fake.requests) == 0


def test_upload_over_the_size_limit_is_413(gateway):
    with pytest.raises(openai.APIStatusError) as info:
        gateway.client().audio.transcriptions.create(model="whisper-1", file=audio(400_000))
    assert info.value.status_code == 413
    assert len(gateway.fake.requests) == 0


def test_ledger_rows_carry_units(gateway, tmp_path):
    gateway.client().images.edit(model="dall-e-2", image=png(), prompt="x", n=2)
    event = gateway.one()
    sink = SQLiteSink(str(tmp_path / "ledger.db"))

    async def store() -> None:
        await sink.write([event])
        await sink.aclose()

    asyncio.run(store())
    with sqlite3.connect(tmp_path / "ledger.db") as db:
        row = db.execute("SELECT endpoint, units, unit, cost_nanos FROM usage_events").fetchone()
    assert row == ("images.edits", 2.0, "image", usd(2 * 0.02))
