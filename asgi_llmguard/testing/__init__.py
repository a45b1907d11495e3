"""Test helpers: a fake LLM provider and a way to serve any ASGI app on a real socket.

:class:`FakeProvider` is an ASGI app that speaks the OpenAI, Azure OpenAI and Anthropic wire
formats, built from the providers' documented formats only (it imports nothing else from
``asgi_llmguard``), so it can serve as an independent upstream for the gateway, or for any app
that calls these APIs::

    from asgi_llmguard.testing import FakeProvider, serve

    fake = FakeProvider(api_key="sk-test", chunk_delay=0.01)
    with serve(fake) as upstream:
        client = openai.OpenAI(base_url=f"{upstream.url}/v1", api_key="sk-test")
        ...
    assert fake.requests[0].header("authorization") == "Bearer sk-test"

:class:`FakeVertex` does the same for Vertex AI (Gemini and Claude), with its own OAuth 2.0 token
endpoint and service account (:class:`ServiceAccountKey`), for ``google-auth``-based clients.
:class:`FakeBedrock` does the same for Amazon Bedrock Runtime (Converse, InvokeModel and their
event streams), checking SigV4 signatures or Bedrock API keys.
"""

from asgi_llmguard.testing._bedrock import FakeBedrock
from asgi_llmguard.testing._google_oauth import ServiceAccountKey
from asgi_llmguard.testing._vertex import FakeVertex
from asgi_llmguard.testing._wait import wait_for, wait_until
from asgi_llmguard.testing.fake import FakeConnectionReset, FakeProvider, ReceivedRequest
from asgi_llmguard.testing.server import RunningServer, serve, serve_async

__all__ = [
    "FakeBedrock",
    "FakeConnectionReset",
    "FakeProvider",
    "FakeVertex",
    "ReceivedRequest",
    "RunningServer",
    "ServiceAccountKey",
    "serve",
    "serve_async",
    "wait_for",
    "wait_until",
]
