"""Benchmarks for asgi_llmguard: see docs/benchmarks.md. Run ``python -m benchmarks.forwarding``."""
