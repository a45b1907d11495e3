"""Every TOML example in the README and docs/ is a valid config file for `asgi-llmguard serve`."""

import ast
import importlib
import re
from pathlib import Path

import msgspec
import pytest

from asgi_llmguard.config import GatewayConfig

ROOT = Path(__file__).resolve().parent.parent
PAGES = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
BLOCKS = [
    pytest.param(block, id=f"{page.name}#{i}")
    for page in PAGES
    for i, block in enumerate(re.findall(r"```toml\n(.*?)```", page.read_text(), re.S))
]


def test_the_docs_have_config_examples():
    assert len(BLOCKS) >= 8


@pytest.mark.parametrize("block", BLOCKS)
def test_config_example_decodes(block):
    msgspec.toml.decode(block.encode(), type=GatewayConfig)


PUBLIC_MODULES = ("asgi_llmguard", "asgi_llmguard.testing")
PYTHON_BLOCKS = [
    pytest.param(block, id=f"{page.name}#{i}")
    for page in PAGES
    for i, block in enumerate(re.findall(r"```py(?:thon)?\n(.*?)```", page.read_text(), re.S))
]


def _imports(block: str) -> list[tuple[str, list[str]]]:
    """Every ``asgi_llmguard`` import in a code block: (module, names imported from it)."""
    found = []
    for node in ast.walk(ast.parse(block)):
        if isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            if node.module.split(".")[0] == "asgi_llmguard":
                found.append((node.module, [alias.name for alias in node.names]))
        elif isinstance(node, ast.Import):
            found.extend(
                (alias.name, [])
                for alias in node.names
                if alias.name.split(".")[0] == "asgi_llmguard"
            )
    return found


def test_the_docs_have_python_examples():
    assert len(PYTHON_BLOCKS) >= 10


@pytest.mark.parametrize("block", PYTHON_BLOCKS)
def test_python_examples_import_only_the_public_modules(block):
    for module, names in _imports(block):
        assert module in PUBLIC_MODULES, f"import from {module}, use {PUBLIC_MODULES}"
        exported = importlib.import_module(module).__all__
        assert [name for name in names if name not in exported] == []
