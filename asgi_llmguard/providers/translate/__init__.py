"""Translation between wire formats through one internal model of a turn.

``model`` holds the turn, the answer and the stream deltas; each format has one codec module
that reads and writes them. Pure functions and small incremental objects: no I/O, no ASGI.
"""
