"""Forwarding to upstreams: the app, its HTTP engines and their configuration."""
