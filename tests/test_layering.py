"""The import rules of the design: arrows point down the stack, never back up."""

import ast
from pathlib import Path

import pytest

PKG = Path(__file__).resolve().parent.parent / "asgi_llmguard"


def _imports(path: Path) -> set[str]:
    tree = ast.parse(path.read_text())
    found = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom) and node.module:
            found.add(node.module)
        elif isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
    return {m for m in found if m.startswith("asgi_llmguard")}


def _modules(sub: str) -> list[Path]:
    target = PKG / sub
    return sorted(target.rglob("*.py")) if target.is_dir() else [target.with_suffix(".py")]


FORBIDDEN = {
    "testing": (
        "asgi_llmguard.providers",
        "asgi_llmguard.usage",
        "asgi_llmguard.forward",
        "asgi_llmguard.middleware",
        "asgi_llmguard.stack",
        "asgi_llmguard.cli",
    ),
    "providers": (
        "asgi_llmguard.middleware",
        "asgi_llmguard.forward",
        "asgi_llmguard.usage",
        "asgi_llmguard.stack",
        "asgi_llmguard.cli",
    ),
    "forward": (
        "asgi_llmguard.middleware",
        "asgi_llmguard.usage",
        "asgi_llmguard.stack",
        "asgi_llmguard.cli",
    ),
    "middleware": (
        "asgi_llmguard.forward",
        "asgi_llmguard.stack",
        "asgi_llmguard.reload",
        "asgi_llmguard.admin",
        "asgi_llmguard.cli",
    ),
    "usage": (
        "asgi_llmguard.middleware",
        "asgi_llmguard.forward",
        "asgi_llmguard.stack",
        "asgi_llmguard.cli",
    ),
    "context": (
        "asgi_llmguard.middleware",
        "asgi_llmguard.forward",
        "asgi_llmguard.providers",
        "asgi_llmguard.usage",
    ),
    "keys": (
        "asgi_llmguard.middleware",
        "asgi_llmguard.forward",
        "asgi_llmguard.usage",
        "asgi_llmguard.providers",
        "asgi_llmguard.stack",
        "asgi_llmguard.cli",
    ),
    "ratelimit": (
        "asgi_llmguard.middleware",
        "asgi_llmguard.forward",
        "asgi_llmguard.usage",
        "asgi_llmguard.stack",
        "asgi_llmguard.cli",
    ),
    "capture": (
        "asgi_llmguard.middleware",
        "asgi_llmguard.forward",
        "asgi_llmguard.providers",
        "asgi_llmguard.usage",
        "asgi_llmguard.stack",
        "asgi_llmguard.cli",
    ),
    # The admin app sits beside the stack: it may use the stores and layers it manages, but never
    # the assembly code (stack, reload, cli) that mounts it.
    "admin": ("asgi_llmguard.stack", "asgi_llmguard.reload", "asgi_llmguard.cli"),
    # reload.py is assembly code like stack.py: it rebuilds the stack, so only the CLI uses it.
    "reload": ("asgi_llmguard.cli",),
    "stack": ("asgi_llmguard.reload", "asgi_llmguard.cli"),
    # The config file's schema is data: it reads no file, variable or URL and builds nothing.
    "_config_schema": (
        "asgi_llmguard.config",
        "asgi_llmguard.stores",
        "asgi_llmguard._redis",
        "asgi_llmguard.stack",
        "asgi_llmguard.reload",
        "asgi_llmguard.cli",
    ),
    "policy": ("asgi_llmguard.",),
    "tokens": ("asgi_llmguard.",),
    "routes": ("asgi_llmguard.",),
    "types": ("asgi_llmguard.",),
    # In-place schema upgrades, shared by the ledger and capture sinks: it knows neither.
    "migrate": ("asgi_llmguard.",),
    # Shared by the rate limiter and the budget stores: it knows neither.
    "redis_batch": ("asgi_llmguard.",),
    # Start/close and the lifespan loop, shared by every owner of a resource: it knows none.
    "lifecycle": (
        "asgi_llmguard.middleware",
        "asgi_llmguard.forward",
        "asgi_llmguard.usage",
        "asgi_llmguard.providers",
        "asgi_llmguard.keys",
        "asgi_llmguard.ratelimit",
        "asgi_llmguard.capture",
        "asgi_llmguard.admin",
        "asgi_llmguard.config",
        "asgi_llmguard.stack",
        "asgi_llmguard.reload",
        "asgi_llmguard.cli",
    ),
    # The registry of stores by URL: it builds stores, and no layer builds it.
    "stores": (
        "asgi_llmguard.middleware",
        "asgi_llmguard.stack",
        "asgi_llmguard.reload",
        "asgi_llmguard.cli",
        "asgi_llmguard.admin",
    ),
    # The Redis client policy of every shared store: it knows none of them.
    "_redis": (
        "asgi_llmguard.middleware",
        "asgi_llmguard.forward",
        "asgi_llmguard.usage",
        "asgi_llmguard.ratelimit",
        "asgi_llmguard.stack",
        "asgi_llmguard.cli",
    ),
    # Process-wide settings for the standalone server: no layer may reach for them.
    "runtime": (
        "asgi_llmguard.middleware",
        "asgi_llmguard.forward",
        "asgi_llmguard.usage",
        "asgi_llmguard.stack",
        "asgi_llmguard.reload",
        "asgi_llmguard.cli",
    ),
}


@pytest.mark.parametrize("package", sorted(FORBIDDEN))
def test_no_import_points_back_up_the_stack(package):
    bad = []
    for path in _modules(package):
        for module in _imports(path):
            if module.startswith(FORBIDDEN[package]):
                bad.append(f"{path.relative_to(PKG)} imports {module}")
    assert not bad, bad


def test_the_translation_layer_is_pure():
    # Codecs run per request and per streamed event, and the forwarder will call them: they may
    # use the token counts, the SSE splitter and each other, and nothing that does I/O or state.
    allowed = (
        "asgi_llmguard.tokens",
        "asgi_llmguard.providers.sse",
        "asgi_llmguard.providers.thinking",
        "asgi_llmguard.providers.translate",
    )
    bad = [
        f"{path.relative_to(PKG)} imports {module}"
        for path in _modules("providers/translate")
        for module in _imports(path)
        if not module.startswith(allowed)
    ]
    assert _modules("providers/translate")
    assert not bad, bad


def test_only_the_standalone_server_tunes_the_process():
    # The collector settings are the process's: a layer or the stack must never apply them, or a
    # gateway mounted in someone's app would change that app's process.
    users = sorted(
        str(path.relative_to(PKG))
        for path in PKG.rglob("*.py")
        if "asgi_llmguard.runtime" in _imports(path) and path.name != "runtime.py"
    )
    assert users == ["reload.py"], users
