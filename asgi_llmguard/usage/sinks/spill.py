"""The spill directory lives in `asgi_llmguard.usage.sinks._spill` (internal); old imports work."""

from asgi_llmguard.usage.sinks._spill import SpillDirectory, SpillFile, sync_files, try_lock

__all__ = ["SpillDirectory", "SpillFile", "sync_files", "try_lock"]
