"""Every TOML example in the README and docs/ is a valid config file for `asgi-llmguard serve`."""

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
