import msgspec
import pytest

from asgi_llmguard.policy import KeyPolicy, mcp_server_allowed

ALLOWED = ("https://mcp.example.com/", "https://tools.example.org/sse")


@pytest.mark.parametrize(
    ("url", "ok"),
    [
        ("https://mcp.example.com/", True),
        ("https://mcp.example.com/sse", True),
        ("https://mcp.example.com/a/b?x=1", True),
        ("https://mcp.example.com", False),
        ("https://mcp.example.com.evil/sse", False),
        ("http://mcp.example.com/sse", False),
        ("https://tools.example.org/sse", True),
        ("https://tools.example.org/sse2", False),
        ("https://tools.example.org/sse/x", False),
        ("", False),
    ],
)
def test_exact_entries_and_entries_ending_in_a_slash(url, ok):
    assert mcp_server_allowed(ALLOWED, url) is ok


def test_an_empty_allow_list_allows_no_server():
    assert not mcp_server_allowed((), "https://mcp.example.com/")


@pytest.mark.parametrize("bad", ["mcp.example.com", "ftp://x/", "https://", ""])
def test_entries_must_be_http_urls(bad):
    with pytest.raises(msgspec.ValidationError, match="mcp_servers"):
        msgspec.convert({"key_id": "k", "mcp_servers": [bad]}, KeyPolicy)
    assert msgspec.convert(
        {"key_id": "k", "mcp_servers": ["https://mcp.example.com/"]}, KeyPolicy
    ).mcp_servers == ("https://mcp.example.com/",)
