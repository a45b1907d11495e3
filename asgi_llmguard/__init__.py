"""asgi_llmguard: an LLM API gateway as composable pure-ASGI middlewares."""

from asgi_llmguard.context import RequestContext, RequestFields, get_context, read_body
from asgi_llmguard.errors import ConfigurationError
from asgi_llmguard.forward.app import ForwardingApp
from asgi_llmguard.forward.config import PoolLimits, Timeouts
from asgi_llmguard.middleware.classify import ClassifyMiddleware
from asgi_llmguard.providers.base import Upstream
from asgi_llmguard.routes import Endpoint, Route, classify
from asgi_llmguard.stack import Gateway, build_stack

__version__ = "0.1.0"

__all__ = [
    "ClassifyMiddleware",
    "ConfigurationError",
    "Endpoint",
    "ForwardingApp",
    "Gateway",
    "PoolLimits",
    "RequestContext",
    "RequestFields",
    "Route",
    "Timeouts",
    "Upstream",
    "__version__",
    "build_stack",
    "classify",
    "get_context",
    "read_body",
]
