"""The gateway's middlewares, one concept per module, each usable alone."""
