"""Key hashing, policies made from plain values, and the static store."""

from __future__ import annotations

import hashlib

import pytest

from asgi_llmguard.errors import ConfigurationError
from asgi_llmguard.keys import (
    StaticKey,
    StaticKeyStore,
    generate_key,
    hash_key,
    is_key_hash,
    key_id_for,
    make_policy,
)
from asgi_llmguard.policy import Budget, KeyPolicy, RateLimit
from asgi_llmguard.redact import fingerprint

# Marked here, at collection: the anyio marker that tests/conftest.py adds afterwards makes
# anyio's plugin rebuild async tests without their parameters.
pytestmark = pytest.mark.anyio


def test_hash_key_is_the_hex_sha256_of_the_key():
    assert hash_key("abc") == hashlib.sha256(b"abc").hexdigest()
    assert hash_key(b"abc") == hash_key("abc")
    assert is_key_hash(hash_key("abc"))
    assert not is_key_hash(hash_key("abc").upper())
    assert not is_key_hash("abc")


def test_generated_keys_are_long_random_and_prefixed():
    keys = {generate_key() for _ in range(1000)}
    assert len(keys) == 1000
    for key in keys:
        assert key.startswith("sk-llmg-")
        assert len(key) == len("sk-llmg-") + 43  # 32 bytes, URL-safe base64
    assert generate_key("team-a_").startswith("team-a_")
    assert len(generate_key("")) == 43
    with pytest.raises(ValueError, match="prefix"):
        generate_key("bad prefix")


def test_the_key_id_is_the_fingerprint_unless_named():
    key = generate_key()
    assert key_id_for(hash_key(key)) == fingerprint(key)
    assert key_id_for(hash_key(key), "team-a") == "team-a"


def test_make_policy_converts_and_checks_plain_values():
    key_hash = hash_key("k")
    policy = make_policy(
        key_hash,
        models=["gpt-4o*"],
        endpoints=["chat.completions"],
        tool_types=["function"],
        rate_limits=[{"limit": "60/minute"}, {"limit": "1000/minute", "kind": "tokens"}],
        budget={"monthly": 10},
        metadata={"team": "a"},
    )
    assert policy.key_id == fingerprint("k")
    assert policy.models == ("gpt-4o*",)
    assert policy.endpoints == frozenset({"chat.completions"})
    assert policy.rate_limits == (
        RateLimit("60/minute"),
        RateLimit("1000/minute", kind="tokens"),
    )
    assert policy.budget == Budget(monthly=10.0)
    assert make_policy(key_hash, name="n").key_id == "n"
    with pytest.raises(ConfigurationError, match="max_concurrency"):
        make_policy(key_hash, max_concurrency="lots")
    with pytest.raises(ConfigurationError, match="colour"):
        make_policy(key_hash, colour="blue")
    with pytest.raises(ConfigurationError):
        make_policy(key_hash, key_id="chosen")


async def test_static_store_by_key_or_by_hash():
    store = StaticKeyStore(
        [
            StaticKey(KeyPolicy(key_id="a", models=["gpt-4o"]), key="sk-a"),  # type: ignore[arg-type]
            StaticKey(KeyPolicy(key_id="b"), key_hash=hash_key("sk-b")),
            StaticKey(KeyPolicy(key_id="c", revoked=True), key="sk-c"),
        ]
    )
    a = await store.lookup(hash_key("sk-a"))
    assert a is not None
    assert a.key_id == "a"
    assert a.models == ("gpt-4o",)  # normalised: a list given in Python becomes a tuple
    b = await store.lookup(hash_key("sk-b"))
    assert b is not None
    assert b.key_id == "b"
    c = await store.lookup(hash_key("sk-c"))
    assert c is not None
    assert c.revoked
    assert await store.lookup(hash_key("sk-x")) is None
    assert len(store) == 3
    assert "sk-a" not in repr(store)
    await store.aclose()


@pytest.mark.parametrize(
    "entries",
    [
        [StaticKey(KeyPolicy(key_id="a"), key="k"), StaticKey(KeyPolicy(key_id="b"), key="k")],
        [
            StaticKey(KeyPolicy(key_id="a"), key="k"),
            StaticKey(KeyPolicy(key_id="a"), key="other"),
        ],
        [StaticKey(KeyPolicy(key_id="a", max_concurrency="x"), key="k")],  # type: ignore[arg-type]
        ["sk-plain-string"],
    ],
    ids=["same-key", "same-active-id", "bad-policy", "not-a-static-key"],
)
def test_static_store_refuses_ambiguous_or_wrong_entries(entries):
    with pytest.raises(ConfigurationError):
        StaticKeyStore(entries)


@pytest.mark.parametrize(
    "kwargs",
    [
        {},
        {"key": "k", "key_hash": hash_key("k")},
        {"key_hash": "abc"},
        {"key": "has space"},
        {"key": ""},
    ],
)
def test_static_key_needs_exactly_one_valid_source(kwargs):
    with pytest.raises(ConfigurationError):
        StaticKey(KeyPolicy(key_id="a"), **kwargs)


def test_static_key_repr_shows_neither_key_nor_hash():
    entry = StaticKey(KeyPolicy(key_id="a"), key="sk-secret-value")
    assert "sk-secret-value" not in repr(entry)
    assert hash_key("sk-secret-value") not in repr(entry)
    assert "a" in repr(entry)
