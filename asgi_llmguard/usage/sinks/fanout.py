"""`Fanout` now lives in `asgi_llmguard.usage.sinks._fanout` (internal); old imports work."""

from asgi_llmguard.usage.sinks._fanout import Fanout, SinkStats

__all__ = ["Fanout", "SinkStats"]
