"""Capture of request and response bodies for diagnostics: the record and its sinks.

`asgi_llmguard.middleware.capture.CaptureMiddleware` builds one `CaptureRecord` per captured
exchange and hands it to a sink: `JSONLCaptureSink`, `SQLiteCaptureSink`, or any
``async def sink(record) -> None``. This package imports no layer, so sinks can be used (and
records read back) without the middleware.
"""

from asgi_llmguard.capture.record import (
    BodyEncoding,
    CaptureOutcome,
    CaptureRecord,
    decode_body,
    encode_body,
)
from asgi_llmguard.capture.redact import CREDENTIAL_HEADERS, REDACTED, Redactor
from asgi_llmguard.capture.sinks import (
    BatchCaptureSink,
    CaptureSink,
    JSONLCaptureSink,
    SQLiteCaptureSink,
    sink_from_uri,
    sink_from_url,
)
from asgi_llmguard.capture.writer import CaptureStats, CaptureWriter, PendingCapture

__all__ = [
    "CREDENTIAL_HEADERS",
    "REDACTED",
    "BatchCaptureSink",
    "BodyEncoding",
    "CaptureOutcome",
    "CaptureRecord",
    "CaptureSink",
    "CaptureStats",
    "CaptureWriter",
    "JSONLCaptureSink",
    "PendingCapture",
    "Redactor",
    "SQLiteCaptureSink",
    "decode_body",
    "encode_body",
    "sink_from_uri",
    "sink_from_url",
]
