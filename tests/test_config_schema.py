"""A config file section and the keyword arguments of its layer are one struct.

For every layer the file configures, every field of the layer's runtime struct is settable from
the TOML file and from keyword arguments, with the same defaults both ways, and an unknown field
is refused both ways. The fields are read from the struct itself, so a field added later is
covered without touching this file (a field of a type the samples below cannot make fails here,
asking for a sample).
"""

from __future__ import annotations

import asyncio
import inspect
import json
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import msgspec
import pytest

from asgi_llmguard.config import GatewayConfig, load_config, stack_kwargs
from asgi_llmguard.errors import ConfigurationError
from asgi_llmguard.forward.breaker import BreakerPolicy
from asgi_llmguard.forward.config import PoolLimits, Timeouts
from asgi_llmguard.forward.cooldowns import CooldownPolicy
from asgi_llmguard.forward.router import RetryPolicy, Routing, WarmupPolicy
from asgi_llmguard.middleware.ratelimit import RateLimitMiddleware
from asgi_llmguard.middleware.size_limit import SizeLimitMiddleware, SizeLimits
from asgi_llmguard.ratelimit.config import RateLimitOptions
from asgi_llmguard.usage.budgets import BudgetOptions

#: Fields of a section that are the file's own business: a switch that leaves the layer out, and
#: URLs or the environment variables holding them (resolved by the config reader, not the layer).
FILE_ONLY = {
    "enabled",
    "storage_env",
    "cooldown_store",
    "cooldown_store_env",
    "cooldown_store_max_connections",
    # [budgets]: where the budget store is (`budget_store` arguments).
    "store",
    "prefix",
    "timeout",
    "redis_max_connections",
}

#: Values for fields whose type alone does not say what is valid.
SAMPLES: dict[str, Any] = {
    "storage": "redis://127.0.0.1:6379/15",
    "algorithm": "fixed-window",
    "limit": "5/minute",
    "trusted_proxies": ("10.0.0.0/8",),
    "statuses": frozenset({429, 503}),
}


@dataclass
class Layer:
    struct: type[msgspec.Struct]
    #: Where the section is in the file.
    path: tuple[str, ...]
    #: The section's value as `stack_kwargs` hands it to the layer (a struct or a kwargs dict).
    given: Callable[[dict[str, Any]], Any]
    #: The middleware whose keyword arguments the struct's fields are (None: the struct itself
    #: is the keyword argument, e.g. ``timeouts=Timeouts(...)``).
    middleware: type | None = None


LAYERS = {
    "forward.timeouts": Layer(Timeouts, ("forward", "timeouts"), lambda kw: kw["timeouts"]),
    "forward.limits": Layer(PoolLimits, ("forward", "limits"), lambda kw: kw["limits"]),
    "routing": Layer(Routing, ("routing",), lambda kw: kw["routing"]),
    "routing.cooldowns": Layer(
        CooldownPolicy, ("routing", "cooldowns"), lambda kw: kw["routing"].cooldowns
    ),
    "routing.breaker": Layer(
        BreakerPolicy, ("routing", "breaker"), lambda kw: kw["routing"].breaker
    ),
    "routing.retry": Layer(RetryPolicy, ("routing", "retry"), lambda kw: kw["routing"].retry),
    "routing.warmup": Layer(WarmupPolicy, ("routing", "warmup"), lambda kw: kw["routing"].warmup),
    "rate_limit": Layer(
        RateLimitOptions, ("rate_limit",), lambda kw: kw["rate_limit"], RateLimitMiddleware
    ),
    "budgets": Layer(BudgetOptions, ("budgets",), lambda kw: kw["usage"]["budget_options"]),
    "size_limit": Layer(
        SizeLimits, ("size_limit",), lambda kw: kw["size_limit"], SizeLimitMiddleware
    ),
}
PARAMS = [pytest.param(layer, id=name) for name, layer in LAYERS.items()]


def _section_type(path: tuple[str, ...]) -> msgspec.inspect.StructType:
    """The type the file decodes at ``path``, read from the schema."""
    info: Any = msgspec.inspect.type_info(GatewayConfig)
    for name in path:
        info = _struct(next(f.type for f in info.fields if f.name == name))
    assert isinstance(info, msgspec.inspect.StructType)
    return info


def _struct(t: msgspec.inspect.Type) -> msgspec.inspect.Type:
    if isinstance(t, msgspec.inspect.UnionType):
        return next(m for m in t.types if not isinstance(m, msgspec.inspect.NoneType))
    return t


def _sample(name: str, t: msgspec.inspect.Type, default: Any) -> Any:
    """A valid value of type ``t`` other than ``default``."""
    if name in SAMPLES:
        return SAMPLES[name]
    t = _struct(t)
    if isinstance(t, msgspec.inspect.BoolType):
        return not default
    if isinstance(t, msgspec.inspect.IntType):
        return (default or 0) + 1
    if isinstance(t, msgspec.inspect.FloatType):
        return default * 2 if default else 1.5
    if isinstance(t, msgspec.inspect.StrType):
        return f"{default}-x" if default else "sample"
    if isinstance(t, msgspec.inspect.LiteralType):
        return next(v for v in t.values if v != default)
    if isinstance(t, msgspec.inspect.DictType):
        return {"sample": _sample("", t.value_type, None)}
    if isinstance(t, msgspec.inspect.ListType):
        return [_sample("", t.item_type, None)]
    if isinstance(t, msgspec.inspect.VarTupleType):
        return (_sample("", t.item_type, None),)
    if isinstance(t, msgspec.inspect.FrozenSetType):
        return frozenset({_sample("", t.item_type, None)})
    if isinstance(t, msgspec.inspect.StructType):
        # A nested policy: its first field set, the others at their defaults (every field of
        # the nested struct is covered by its own section's test).
        first = t.fields[0]
        value = first.default if first.required is False else None
        return t.cls(**{first.name: _sample(first.name, first.type, value)})
    raise AssertionError(f"no sample for a field of type {t!r}: add one to SAMPLES")


def _fields(layer: Layer) -> list[tuple[str, Any, Any]]:
    """(name, default, sample) for every field of the layer's runtime struct."""
    types = {f.name: f.type for f in _section_type(layer.path).fields}
    out = []
    for field in msgspec.structs.fields(layer.struct):
        default = (
            field.default_factory()
            if field.default_factory is not msgspec.NODEFAULT
            else field.default
        )
        out.append((field.name, default, _sample(field.name, types[field.name], default)))
    return out


def _toml(path: tuple[str, ...], section: dict[str, Any]) -> bytes:
    """A config file with ``section`` at ``path`` (and no ledger file from these tests)."""
    # The budgets section needs the usage layer (without a ledger file); the others do not.
    usage = "sinks = []" if path == ("budgets",) else "enabled = false"
    lines = ["[usage]", usage, f"[{'.'.join(path)}]"]
    lines += [
        f"{json.dumps(k)} = {_toml_value(msgspec.to_builtins(v))}" for k, v in section.items()
    ]
    return "\n".join(lines).encode()


def _toml_value(v: Any) -> str:
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, int | float):
        return repr(v)
    if isinstance(v, str):
        return json.dumps(v)
    if isinstance(v, dict):
        return "{" + ", ".join(f"{json.dumps(k)} = {_toml_value(x)}" for k, x in v.items()) + "}"
    assert isinstance(v, list | tuple), v
    return "[" + ", ".join(_toml_value(x) for x in v) + "]"


def _value(given: Any, name: str) -> Any:
    return given[name] if isinstance(given, dict) else getattr(given, name)


def _app_kwargs(layer: Layer, kwargs: dict[str, Any]) -> Any:
    """The layer built from keyword arguments: the struct, or the middleware."""
    if layer.middleware is None:
        return layer.struct(**kwargs)

    async def app(scope: Any, receive: Any, send: Any) -> None:
        raise AssertionError("not called")

    built = layer.middleware(app, **kwargs)
    close = getattr(built, "aclose", None)
    if close is not None:
        asyncio.run(close())
    return built


@pytest.mark.parametrize("layer", PARAMS)
def test_the_section_is_the_runtime_struct_with_only_file_fields_added(layer: Layer) -> None:
    section = {f.name for f in _section_type(layer.path).fields}
    runtime = {f.name for f in msgspec.structs.fields(layer.struct)}
    assert runtime <= section
    assert section - runtime <= FILE_ONLY


@pytest.mark.parametrize("layer", PARAMS)
def test_every_field_has_the_same_default_in_the_file_and_in_kwargs(layer: Layer) -> None:
    given = layer.given(
        stack_kwargs(msgspec.toml.decode(_toml(layer.path, {}), type=GatewayConfig), [])
    )
    runtime = layer.struct()
    params = inspect.signature(layer.middleware).parameters if layer.middleware else {}
    for name, default, _ in _fields(layer):
        assert _value(given, name) == default == getattr(runtime, name), name
        if layer.middleware is not None:
            assert name in params, f"{layer.middleware.__name__} has no keyword {name}"
            assert params[name].default == default, name


@pytest.mark.parametrize("layer", PARAMS)
def test_every_field_is_settable_from_the_file(layer: Layer, tmp_path: Path) -> None:
    for name, default, sample in _fields(layer):
        assert sample != default
        path = tmp_path / f"{name}.toml"
        path.write_bytes(_toml(layer.path, {name: sample}))
        given = layer.given(stack_kwargs(load_config(path), []))
        assert _value(given, name) == sample, name
        if layer.middleware is not None:
            built = _app_kwargs(layer, given)
            if isinstance(built, SizeLimitMiddleware):
                assert getattr(built.settings, name) == sample, name


@pytest.mark.parametrize("layer", PARAMS)
def test_every_field_is_settable_from_kwargs(layer: Layer) -> None:
    for name, _, sample in _fields(layer):
        assert getattr(layer.struct(**{name: sample}), name) == sample, name
        built = _app_kwargs(layer, {name: sample})
        if isinstance(built, SizeLimitMiddleware):
            assert getattr(built.settings, name) == sample, name


@pytest.mark.parametrize("layer", PARAMS)
def test_an_unknown_field_is_refused_both_ways(layer: Layer, tmp_path: Path) -> None:
    path = tmp_path / "llmguard.toml"
    path.write_bytes(_toml(layer.path, {"no_such_setting": 1}))
    with pytest.raises(ConfigurationError, match="no_such_setting"):
        load_config(path)
    with pytest.raises(TypeError, match="no_such_setting"):
        _app_kwargs(layer, {"no_such_setting": 1})


#: The usage layer's settings outside ``budget_options`` (the ``budgets`` layer above), which the
#: file keeps in the sections they belong to: kwarg -> (section, key, sample in TOML, value).
USAGE = {
    "missing_price": ("pricing", "missing", "{ input = 1.0, output = 2.0 }", None),
    "stream_usage": ("usage", "stream_usage", "false", False),
    "aliases": ("routing", "aliases", '{ fast = ["m-1"] }', {"fast": ["m-1"]}),
}
#: Keyword arguments of `UsageMiddleware` that are objects, not settings, and the shorthands
#: for fields of ``budget_options``.
USAGE_OBJECTS = {"app", "pipeline", "prices", "budgets", "budget_options"}
BUDGET_SHORTHANDS = {
    "budget_on_error": "on_error",
    "budget_tags": "tags",
    "reservation_ttl": "reservation_ttl",
    "default_max_output_tokens": "default_max_output_tokens",
}


def _usage_kwargs(tmp_path: Path, section: str = "", line: str = "") -> dict[str, Any]:
    path = tmp_path / "llmguard.toml"
    extra = f"\n[{section}]\n{line}" if section != "usage" else f"\n{line}"
    path.write_text(f"[usage]\nsinks = []{extra if line else ''}\n")
    usage: dict[str, Any] = stack_kwargs(load_config(path), [])["usage"]
    return usage


def _expected(kwarg: str, value: Any) -> Any:
    from asgi_llmguard import Budget, ModelPrice

    if kwarg == "missing_price":
        return ModelPrice(input=1.0, output=2.0)
    if kwarg == "budget_tags":
        return {"team:ml": Budget(monthly=5.0)}
    return value


def test_every_usage_setting_is_in_the_file_with_the_same_default(tmp_path: Path) -> None:
    from asgi_llmguard import UsageMiddleware

    params = inspect.signature(UsageMiddleware).parameters
    assert set(params) - USAGE_OBJECTS - set(BUDGET_SHORTHANDS) == set(USAGE)
    defaults = _usage_kwargs(tmp_path)
    for kwarg in USAGE:
        # ``None`` and an empty mapping both mean "none" (aliases, tag budgets).
        assert (defaults[kwarg] or None) == (params[kwarg].default or None), kwarg


@pytest.mark.parametrize("kwarg", list(USAGE))
def test_every_usage_setting_is_settable_both_ways(kwarg: str, tmp_path: Path) -> None:
    from asgi_llmguard import UsageMiddleware

    section, key, toml, value = USAGE[kwarg]
    expected = _expected(kwarg, value)
    assert _usage_kwargs(tmp_path, section, f'"{key}" = {toml}')[kwarg] == expected

    async def app(scope: Any, receive: Any, send: Any) -> None:
        raise AssertionError("not called")

    UsageMiddleware(app, **{kwarg: expected})
    with pytest.raises(TypeError, match="no_such_setting"):
        UsageMiddleware(app, no_such_setting=1)  # type: ignore[call-arg]


def _kwargs_sections() -> list[Any]:
    from asgi_llmguard import (
        AccessLogMiddleware,
        AuthMiddleware,
        CachedKeyStore,
        CaptureMiddleware,
        ConcurrencyMiddleware,
        HealthMiddleware,
        MetricsMiddleware,
        OverloadMiddleware,
        UsagePipeline,
    )
    from asgi_llmguard import config as c

    # section, its layer, the section's own fields (switches, URLs, variables, nested sections),
    # and the layer's keyword arguments that are objects rather than settings.
    return [
        (c.ConcurrencyConfig, ConcurrencyMiddleware, {"enabled"}, {"identity"}),
        (c.AccessLogConfig, AccessLogMiddleware, {"enabled"}, set()),
        (
            c.HealthConfig,
            HealthMiddleware,
            {"enabled", "redis", "redis_env", "postgres", "postgres_env"},
            {"checks"},
        ),
        (c.OverloadConfig, OverloadMiddleware, set(), set()),
        (c.MetricsConfig, MetricsMiddleware, {"enabled"}, {"pipeline", "sources"}),
        (c.CaptureConfig, CaptureMiddleware, set(), set()),
        (c.AuthConfig, AuthMiddleware, {"store", "store_env", "cache"}, {"store"}),
        (c.KeyCacheConfig, CachedKeyStore, set(), {"store", "clock"}),
        (c.UsageConfig, UsagePipeline, {"enabled", "stream_usage"}, set()),
    ]


@pytest.mark.parametrize(
    ("section", "layer", "own", "objects"),
    [pytest.param(*s, id=s[0].__name__) for s in _kwargs_sections()],
)
def test_the_other_sections_name_exactly_their_layers_settings(
    section: type[msgspec.Struct], layer: type, own: set[str], objects: set[str]
) -> None:
    """Sections whose unset keys keep the layer's defaults (``None`` in the file's struct):
    every key is a keyword argument of the layer, and every setting of the layer is a key."""
    fields = {f.name for f in msgspec.structs.fields(section)}
    params = set(inspect.signature(layer).parameters) - {"app"}
    assert own <= fields
    assert fields - own <= params, "keys the layer does not take"
    assert params - objects <= fields, "settings of the layer the file cannot set"


def test_key_cache_and_auth_settings_reach_their_layers(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from asgi_llmguard.config import resolve_keys

    path = tmp_path / "llmguard.toml"
    path.write_text(
        f"""
[usage]
enabled = false
[auth]
store = "sqlite:///{tmp_path / "keys.sqlite3"}"
matcher_cache_size = 7
[auth.cache]
max_entries = 50
max_negative_entries = 2
[metrics]
exclude_paths = ["/internal"]
"""
    )
    config = load_config(path)
    kwargs = stack_kwargs(config, [])
    assert kwargs["auth"] == {"matcher_cache_size": 7}
    assert kwargs["metrics"]["exclude_paths"] == ["/internal"]
    cache = resolve_keys(config)

    async def misses() -> int:
        async with cache:
            for i in range(5):
                assert await cache.lookup(f"{i:064x}") is None
            return int(cache.cache_info().negative_entries)

    assert asyncio.run(misses()) == 2


@pytest.mark.parametrize(("shorthand", "field"), list(BUDGET_SHORTHANDS.items()))
def test_the_usage_layers_budget_shorthands_are_the_fields_of_budget_options(
    shorthand: str, field: str
) -> None:
    from asgi_llmguard import Budget, BudgetOptions, UsageMiddleware

    async def app(scope: Any, receive: Any, send: Any) -> None:
        raise AssertionError("not called")

    params = inspect.signature(UsageMiddleware).parameters
    assert params[shorthand].default is None  # unset: the struct's default applies
    assert getattr(UsageMiddleware(app).budget_options, field) == getattr(BudgetOptions(), field)
    samples = {
        "on_error": "open",
        "tags": {"team:ml": Budget(monthly=5.0)},
        "reservation_ttl": 901.5,
        "default_max_output_tokens": 4097,
    }
    built = UsageMiddleware(app, **{shorthand: samples[field]})
    assert built.budget_options == BudgetOptions(**{field: samples[field]})
    with pytest.raises(ConfigurationError, match="not both"):
        UsageMiddleware(app, budget_options=BudgetOptions(), **{shorthand: samples[field]})
