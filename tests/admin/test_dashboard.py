"""The dashboard in a real headless Chromium, driven over the DevTools protocol.

A real gateway serves LLM traffic from the ``openai`` SDK (two keys, two models) into a SQLite
ledger; Chromium loads the dashboard, the admin key is typed into the page, and the totals the
page renders must equal the ledger's. A screenshot is saved under the test's tmp dir and, when
``LLMGUARD_ARTIFACTS`` is set, there too.
"""

from __future__ import annotations

import base64
import contextlib
import itertools
import json
import os
import shutil
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import openai
import pytest

from tests.admin.conftest import ADMIN_KEY, Running

CHROMIUM_FLAGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--remote-debugging-port=0",
    "--remote-debugging-address=127.0.0.1",
]


def _chromium() -> str:
    for name in ("chromium", "chromium-browser", "google-chrome"):
        path = shutil.which(name)
        if path:
            return path
    message = "Chromium is not installed (apt-get install chromium)"
    if os.environ.get("CI"):
        pytest.fail(f"{message}, and CI is set: the dashboard test must not skip", pytrace=False)
    pytest.skip(message)


class DevTools:
    """A minimal Chrome DevTools Protocol client over one page's websocket."""

    def __init__(self, url: str) -> None:
        from websockets.sync.client import connect

        self._stack = contextlib.ExitStack()
        self._ws = self._stack.enter_context(
            connect(url, max_size=64 * 1024 * 1024, open_timeout=10)
        )
        self._ids = itertools.count(1)

    def call(self, method: str, **params: Any) -> dict[str, Any]:
        ident = next(self._ids)
        self._ws.send(json.dumps({"id": ident, "method": method, "params": params}))
        while True:
            message = json.loads(self._ws.recv(timeout=20))
            if message.get("id") == ident:
                if "error" in message:
                    raise AssertionError(f"{method}: {message['error']}")
                result: dict[str, Any] = message.get("result", {})
                return result

    def evaluate(self, expression: str) -> Any:
        reply = self.call(
            "Runtime.evaluate", expression=expression, returnByValue=True, awaitPromise=True
        )
        if "exceptionDetails" in reply:
            raise AssertionError(f"page error: {reply['exceptionDetails']}")
        return reply["result"].get("value")

    def wait_for(self, expression: str, timeout: float = 15.0) -> Any:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            value = self.evaluate(expression)
            if value:
                return value
            time.sleep(0.1)
        raise AssertionError(f"timed out waiting for {expression}")

    def close(self) -> None:
        self._stack.close()


@pytest.fixture
def browser(tmp_path: Path) -> Iterator[DevTools]:
    binary = _chromium()
    profile = tmp_path / "chromium-profile"
    process = subprocess.Popen(
        [binary, *CHROMIUM_FLAGS, f"--user-data-dir={profile}", "about:blank"],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        assert process.stderr is not None
        endpoint = None
        deadline = time.monotonic() + 30
        while endpoint is None and time.monotonic() < deadline:
            line = process.stderr.readline()
            if not line and process.poll() is not None:
                raise AssertionError("Chromium exited before it listened")
            if "DevTools listening on " in line:
                endpoint = line.split("DevTools listening on ", 1)[1].strip()
        assert endpoint, "Chromium did not print its DevTools endpoint"
        port = endpoint.split("://", 1)[1].split("/", 1)[0].rsplit(":", 1)[1]
        targets = httpx.get(f"http://127.0.0.1:{port}/json/list", trust_env=False).json()
        page = next(t for t in targets if t["type"] == "page")
        tools = DevTools(page["webSocketDebuggerUrl"])
        try:
            yield tools
        finally:
            tools.close()
    finally:
        process.terminate()
        try:
            process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


# The totals table under a chart, as {row name: {field: number}}.
_TABLE = """
(() => {
  const out = {};
  for (const row of document.querySelectorAll('#%s table tr[data-name]')) {
    const cells = {};
    for (const cell of row.querySelectorAll('td[data-field]')) {
      cells[cell.dataset.field] = Number(cell.dataset.value);
    }
    cells.text = row.innerText;
    out[row.dataset.name] = cells;
  }
  return out;
})()
"""


def test_dashboard_shows_the_ledgers_totals(gateway: Running, browser: DevTools, tmp_path):
    # team-a's tiny budget refuses its gpt-4o request (a rejection, recorded in the ledger).
    traffic = [
        ("team-a", "gpt-4o-mini", None),
        ("team-a", "gpt-4o", openai.RateLimitError),
        ("team-b", "gpt-4o-mini", None),
        ("team-b", "gpt-4o", None),
        ("team-b", "gpt-4o", None),
    ]
    for key_id, model, error in traffic:
        client = openai.OpenAI(
            base_url=f"{gateway.url}/v1", api_key=gateway.keys[key_id], max_retries=0
        )
        with pytest.raises(error) if error else contextlib.nullcontext():
            client.chat.completions.create(
                model=model, messages=[{"role": "user", "content": "hi there"}], max_tokens=2
            )
    gateway.wait_for_ledger(len(traffic))

    browser.call(
        "Emulation.setDeviceMetricsOverride",
        width=1400,
        height=2000,
        deviceScaleFactor=1,
        mobile=False,
    )
    browser.call("Page.enable")
    browser.call("Page.navigate", url=f"{gateway.admin}/dashboard")
    browser.wait_for("document.readyState === 'complete' && !!document.getElementById('admin-key')")
    browser.evaluate(
        f"document.getElementById('admin-key').value = {json.dumps(ADMIN_KEY)};"
        "document.getElementById('login').requestSubmit(); true"
    )
    browser.wait_for("document.body.getAttribute('data-loaded')")
    assert browser.evaluate("sessionStorage.getItem('llmguard.adminKey')") == ADMIN_KEY

    per_key = browser.evaluate(_TABLE % "spend-by-key")
    for key_id in ("team-a", "team-b"):
        requests, tokens, cost = gateway.ledger_rows(
            "SELECT count(DISTINCT request_id), sum(input_tokens + output_tokens), sum(cost_nanos)"
            " FROM usage_events WHERE key_id = ?",
            key_id,
        )[0]
        shown = per_key[key_id]
        assert (shown["requests"], shown["total_tokens"], shown["cost_nanos"]) == (
            requests,
            tokens,
            cost,
        )
        assert f"${cost / 1e9:.6f}" in shown["text"]  # the text a person reads, too
    requests, tokens, cost = gateway.ledger_rows(
        "SELECT count(DISTINCT request_id), sum(input_tokens + output_tokens), sum(cost_nanos)"
        " FROM usage_events"
    )[0]
    assert requests == len(traffic)
    total = per_key["TOTAL"]
    assert (total["requests"], total["total_tokens"], total["cost_nanos"]) == (
        requests,
        tokens,
        cost,
    )

    rejections = browser.evaluate(_TABLE % "rejections")
    assert rejections["rejected requests"]["count"] == 1
    per_model = browser.evaluate(_TABLE % "tokens-by-model")
    assert per_model["gpt-4o"]["requests"] == 3
    assert per_model["gpt-4o-mini"]["requests"] == 2
    top = browser.evaluate(_TABLE % "top-keys")
    assert list(k for k in top if k != "TOTAL") == sorted(
        ("team-a", "team-b"), key=lambda k: -per_key[k]["cost_nanos"]
    )
    latency = browser.evaluate(_TABLE % "latency")
    assert 0 < latency["TOTAL"]["p50"] <= latency["TOTAL"]["p99"]
    # Each chart is drawn: one line per key in the per-key chart.
    assert browser.evaluate("document.querySelectorAll('#spend-by-key svg polyline').length") == 2

    shot = base64.b64decode(browser.call("Page.captureScreenshot", format="png")["data"])
    (tmp_path / "dashboard.png").write_bytes(shot)
    artifacts = os.environ.get("LLMGUARD_ARTIFACTS")
    if artifacts:
        Path(artifacts).mkdir(parents=True, exist_ok=True)
        (Path(artifacts) / "dashboard.png").write_bytes(shot)
    assert shot.startswith(b"\x89PNG")


def test_a_wrong_admin_key_shows_the_login_again(gateway: Running, browser: DevTools):
    browser.call("Page.navigate", url=f"{gateway.admin}/dashboard")
    browser.wait_for("document.readyState === 'complete' && !!document.getElementById('admin-key')")
    browser.evaluate(
        "document.getElementById('admin-key').value = 'not-the-admin-key-0123456789';"
        "document.getElementById('login').requestSubmit(); true"
    )
    browser.wait_for(
        "!document.getElementById('login').classList.contains('hidden')"
        " && sessionStorage.getItem('llmguard.adminKey') === null"
    )
