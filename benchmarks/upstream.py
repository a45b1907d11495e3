"""The benchmark's upstream: nginx serving fixed OpenAI-style answers from a temporary directory.

nginx runs in the foreground as one process (``daemon off; master_process off``) with its own
config, pid file, logs and temp paths in the directory it is given: the system's nginx config and
port 80 are never touched.

- ``POST /v1/chat/completions``: a fixed ``chat.completion`` JSON body (``return 200``).
- The same path with the header ``X-Bench-Stream: 1`` (forwarded unchanged by every target):
  internally rewritten to ``/v1/stream``, a static ``text/event-stream`` file of a few
  ``chat.completion.chunk`` events ending with ``data: [DONE]``. nginx's static module refuses
  POST with 405; ``error_page 405 =200 $uri`` serves the file anyway.
- ``POST /stream/v1/chat/completions``: the same stream, for clients that forward no headers.
"""

from __future__ import annotations

import json
from pathlib import Path

HERE = Path(__file__).resolve().parent
REQUEST_FILE = HERE / "request.json"
LUA_SCRIPT = HERE / "post.lua"

#: The chat-completions request wrk and the probes send (~1 KB).
REQUEST_BODY: bytes = REQUEST_FILE.read_bytes().strip()
#: The same request asking for a stream.
# The client asks for the usage chunk (as the SSE body carries one), so every target, the
# gateway's metering included, must relay the upstream's stream unchanged.
STREAM_REQUEST_BODY: bytes = json.dumps(
    {**json.loads(REQUEST_BODY), "stream": True, "stream_options": {"include_usage": True}},
    separators=(",", ":"),
).encode()

_CREATED = 1767225600

#: The upstream's non-streamed answer (~600 bytes). No ``'`` or ``$``: it sits in nginx's config.
COMPLETION_BODY: bytes = json.dumps(
    {
        "id": "chatcmpl-bench0000000000000000000001",
        "object": "chat.completion",
        "created": _CREATED,
        "model": "gpt-4o-mini-2024-07-18",
        "choices": [
            {
                "index": 0,
                "message": {
                    "role": "assistant",
                    "content": (
                        "Hello! Your shipment LYN-2291 is on its way from Rotterdam and the "
                        "pallet count is unchanged. We will confirm the arrival date in Lyon soon."
                    ),
                    "refusal": None,
                    "annotations": [],
                },
                "logprobs": None,
                "finish_reason": "stop",
            }
        ],
        "usage": {
            "prompt_tokens": 214,
            "completion_tokens": 41,
            "total_tokens": 255,
            "prompt_tokens_details": {"cached_tokens": 0},
        },
        "service_tier": "default",
        "system_fingerprint": "fp_bench01",
    },
    separators=(",", ":"),
).encode()


def _event(choices: list[object], usage: object = None) -> bytes:
    event = {
        "id": "chatcmpl-bench0000000000000000000002",
        "object": "chat.completion.chunk",
        "created": _CREATED,
        "model": "gpt-4o-mini-2024-07-18",
        "system_fingerprint": "fp_bench01",
        "choices": choices,
        "usage": usage,
    }
    return b"data: " + json.dumps(event, separators=(",", ":")).encode() + b"\n\n"


def _delta(delta: dict[str, str], finish: str | None = None) -> bytes:
    return _event([{"index": 0, "delta": delta, "logprobs": None, "finish_reason": finish}])


#: The upstream's streamed answer: a few SSE events, then ``data: [DONE]``.
SSE_BODY: bytes = b"".join(
    [
        _delta({"role": "assistant", "content": ""}),
        _delta({"content": "Hello! Your shipment LYN-2291"}),
        _delta({"content": " is on its way from Rotterdam"}),
        _delta({"content": " and the pallet count is unchanged."}),
        _delta({}, finish="stop"),
        _event([], usage={"prompt_tokens": 214, "completion_tokens": 17, "total_tokens": 231}),
        b"data: [DONE]\n\n",
    ]
)

_NGINX_CONF = """\
daemon off;
master_process off;
worker_processes 1;
pid {tmp}/nginx.pid;
error_log {tmp}/nginx-error.log warn;

events {{
    worker_connections 8192;
}}

http {{
    access_log off;
    server_tokens off;
    sendfile on;
    tcp_nodelay on;
    keepalive_timeout 300s;
    keepalive_requests 100000000;
    client_body_buffer_size 64k;
    client_body_temp_path {tmp}/client_body;
    proxy_temp_path {tmp}/proxy;
    fastcgi_temp_path {tmp}/fastcgi;
    uwsgi_temp_path {tmp}/uwsgi;
    scgi_temp_path {tmp}/scgi;
    types {{ }}

    server {{
        listen 127.0.0.1:{port} backlog=4096;

        location = /v1/chat/completions {{
            if ($http_x_bench_stream) {{
                rewrite ^ /v1/stream last;
            }}
            default_type application/json;
            return 200 '{completion}';
        }}

        # For clients that cannot send the header (LiteLLM's proxy forwards no custom
        # headers): a base URL whose chat-completions path always streams.
        location = /stream/v1/chat/completions {{
            rewrite ^ /v1/stream last;
        }}

        location = /v1/stream {{
            default_type text/event-stream;
            add_header Cache-Control no-cache;
            alias {tmp}/stream.sse;
            error_page 405 =200 $uri;
        }}
    }}
}}
"""


def write_nginx_files(tmp: Path, port: int) -> Path:
    """Write nginx's config and the SSE file into ``tmp``; return the config's path."""
    completion = COMPLETION_BODY.decode()
    if "'" in completion or "$" in completion:
        raise ValueError("the completion body must not contain ' or $ (nginx config quoting)")
    (tmp / "stream.sse").write_bytes(SSE_BODY)
    conf = tmp / "nginx.conf"
    conf.write_text(_NGINX_CONF.format(tmp=tmp, port=port, completion=completion))
    return conf
