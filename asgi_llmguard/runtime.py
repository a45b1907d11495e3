"""Process-wide tuning for the standalone server: CPython's cyclic garbage collector.

Reference counting frees almost everything a request allocates the moment it is done with; the
cyclic collector exists only for reference cycles. By default it runs a young-generation pass
every 700 net container allocations, and every pass walks every young object still alive. A
gateway under load always has thousands of those (each request in flight holds its coroutine
frames, scope, headers and buffers), so the passes come every few requests, walk the same live
objects again and promote them, and the full collections that follow walk the whole long-lived
heap (modules, the app, connection pools). In the forwarding benchmark that was about a tenth of
the gateway's CPU time (measured with ``gc.callbacks``; see docs/benchmarks.md).

`tune_gc`, called once the app has started:

- ``freeze``: `gc.freeze` moves every object alive at that moment (the code, the app, its stores
  and pools) into a permanent generation that collections no longer walk;
- ``threshold``: the young-generation threshold (CPython's default is 700). Passes then run when
  that many more containers are alive than freed, so a steady load of requests, which frees what
  it allocates, rarely triggers one; cyclic garbage still gets collected once that many objects
  are waiting, which bounds what it can hold.

It changes the whole process, so only the standalone server (`asgi-llmguard serve`) calls it;
an app that mounts the gateway owns its process and its collector settings.
"""

from __future__ import annotations

import gc

from asgi_llmguard.errors import ConfigurationError


def tune_gc(*, threshold: int | None, freeze: bool) -> None:
    """Set the young-generation threshold (``None`` or 0: leave CPython's) and, with
    ``freeze``, move everything alive now out of the collector's way (see the module docs)."""
    if threshold is not None and (
        isinstance(threshold, bool) or not isinstance(threshold, int) or threshold < 0
    ):
        raise ConfigurationError(f"gc_threshold must be an integer >= 0, not {threshold!r}")
    if threshold:
        _, middle, old = gc.get_threshold()
        gc.set_threshold(threshold, middle, old)
    if freeze:
        gc.collect()  # what is garbage already should not be frozen with the rest
        gc.freeze()
