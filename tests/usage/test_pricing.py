"""Prices: exact nano-dollar costs, lookups, overrides and the missing-price policy (B3)."""

from __future__ import annotations

import msgspec
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from asgi_llmguard.errors import ConfigurationError
from asgi_llmguard.tokens import TokenUsage
from asgi_llmguard.usage.pricing import (
    ModelPrice,
    PriceTable,
    PriceTier,
    ServiceTierPrice,
    UnknownModelPrice,
    estimate_nanos,
    usd_to_nanos,
)

DEFAULT = PriceTable.default()


def usage(**kw: int) -> TokenUsage:
    return TokenUsage(**kw)


# --- exact costs, computed by hand -------------------------------------------------------------


def test_openai_cached_and_reasoning_tokens():
    # gpt-5: $1.25 in, $0.125 cached, $10 out (reasoning billed as output).
    price = DEFAULT.price_for("gpt-5")
    u = usage(
        input_tokens=10_000, cached_input_tokens=4_000, output_tokens=2_000, reasoning_tokens=1_500
    )
    # 6000 uncached * 1.25 * 1000 = 7_500_000
    # 4000 cached   * 0.125 * 1000 =   500_000
    # 500 visible   * 10 * 1000    = 5_000_000
    # 1500 reasoning * 10 * 1000   = 15_000_000
    assert price.cost_nanos(u) == 28_000_000


def test_reasoning_priced_apart_and_cached_counted_once():
    price = ModelPrice(input=1.1, cached_input=0.275, output=4.4, reasoning=6.6)
    u = usage(
        input_tokens=1_000, cached_input_tokens=1_000, output_tokens=300, reasoning_tokens=100
    )
    # all 1000 prompt tokens cached: 1000 * 0.275 * 1000 = 275_000 (nothing at the input price)
    # 200 visible * 4.4 * 1000 = 880_000; 100 reasoning * 6.6 * 1000 = 660_000
    assert price.cost_nanos(u) == 275_000 + 880_000 + 660_000


def test_anthropic_cache_read_and_creation():
    # claude-sonnet-4-5: $3 in, $0.30 read, $3.75 write, $15 out. input_tokens includes the parts.
    price = DEFAULT.price_for("claude-sonnet-4-5")
    u = usage(
        input_tokens=61_000,
        cached_input_tokens=50_000,
        cache_creation_tokens=10_000,
        output_tokens=800,
    )
    # 1000 * 3 * 1000 + 50000 * 0.3 * 1000 + 10000 * 3.75 * 1000 + 800 * 15 * 1000
    assert price.cost_nanos(u) == 3_000_000 + 15_000_000 + 37_500_000 + 12_000_000


def test_long_context_tier_applies_to_whole_request_above_threshold():
    price = DEFAULT.price_for("claude-sonnet-4-5-20250929")
    at = usage(input_tokens=200_000, output_tokens=1_000)
    above = usage(input_tokens=200_001, output_tokens=1_000)
    assert price.cost_nanos(at) == 200_000 * 3_000 + 1_000 * 15_000
    assert price.cost_nanos(above) == 200_001 * 6_000 + 1_000 * 22_500
    # the tier counts cached and cache-written tokens toward the threshold, and prices them too
    cached = usage(input_tokens=250_000, cached_input_tokens=240_000, output_tokens=0)
    assert price.cost_nanos(cached) == 10_000 * 6_000 + 240_000 * 600


def test_highest_applicable_tier_wins_and_unset_fields_inherit():
    price = ModelPrice(
        input=1,
        cached_input=0.5,
        output=2,
        tiers=(PriceTier(above=100, input=2), PriceTier(above=1000, input=4, output=8)),
    )
    assert price.rates(100) == (1, 0.5, 1, 2, 2, 2)
    assert price.rates(101) == (2, 0.5, 2, 2, 2, 4)
    assert price.rates(1001) == (4, 0.5, 4, 8, 8, 8)


def test_the_reported_service_tier_chooses_the_price():
    # gpt-5: standard $1.25/$0.125/$10; Flex $0.625/-/$5; Priority $2.50/$0.25/$20.
    price = DEFAULT.price_for("gpt-5-2025-08-07")
    u = dict(input_tokens=10_000, cached_input_tokens=4_000, output_tokens=2_000)
    standard = 6_000 * 1_250 + 4_000 * 125 + 2_000 * 10_000
    for tier in (None, "", "default", "auto", "standard", "scale", "no-such-tier"):
        assert price.cost_nanos(TokenUsage(**u, service_tier=tier)) == standard, tier
    # Flex lists no cached price: cached tokens keep the standard cached price
    flex = 6_000 * 625 + 4_000 * 125 + 2_000 * 5_000
    assert price.cost_nanos(TokenUsage(**u, service_tier="flex")) == flex
    priority = 6_000 * 2_500 + 4_000 * 250 + 2_000 * 20_000
    assert price.cost_nanos(TokenUsage(**u, service_tier="priority")) == priority
    assert price.cost_nanos(TokenUsage(**u, service_tier="Priority")) == priority
    # the first gpt-4o snapshot has its own Priority price, and no cached discount
    old = DEFAULT.price_for("gpt-4o-2024-05-13")
    assert old.rates(0, "priority") == (8.75, 8.75, 8.75, 26.25, 26.25, 17.5)
    assert DEFAULT.price_for("gpt-4o-2024-11-20").rates(0, "priority")[:4] == (
        4.25,
        2.125,
        4.25,
        17.0,
    )
    # Anthropic publishes no per-token Priority Tier price: priced at the standard price
    sonnet = DEFAULT.price_for("claude-sonnet-4-5")
    assert sonnet.rates(0, "priority") == sonnet.rates(0, "standard") == sonnet.rates(0)


def test_service_tier_prices_overlay_the_standard_ones():
    price = ModelPrice(
        input=1,
        output=2,
        reasoning=3,
        tiers=(PriceTier(above=100, input=2, output=4),),
        service_tiers={
            "flex": ServiceTierPrice(input=0.5),
            "priority": ServiceTierPrice(output=8, cache_creation_1h=9),
        },
    )
    # an unset cached / cache-write price defaults to the tier's input, as for the base price
    assert price.rates(0, "flex") == (0.5, 0.5, 0.5, 2, 3, 1)
    assert price.rates(0, "priority") == (1, 1, 1, 8, 3, 9)
    # above the long-context threshold, what the service tier leaves out is the long-context price
    assert price.rates(101, "flex") == (0.5, 0.5, 0.5, 4, 3, 1)
    assert price.rates(101, "priority") == (2, 2, 2, 8, 3, 9)
    assert price.rates(101, "scale") == price.rates(101) == (2, 2, 2, 4, 3, 4)


def test_per_call_tool_fees():
    price = ModelPrice(input=1, output=2, per_call={"web_search": 0.01, "file_search": 0.0025})
    calls = {"web_search": 3, "file_search": 2, "function": 5}
    # 3 * $0.01 + 2 * $0.0025 = $0.035; "function" has no fee
    assert price.cost_nanos(TokenUsage(), calls) == 35_000_000
    assert price.cost_nanos(usage(input_tokens=1), {"web_search": 1}) == 1_000 + 10_000_000


def test_rounds_half_up_once_per_event_from_the_written_decimal():
    # 0.0045 $/M is 4.5 nanos per token; as a binary float 0.0045 * 1000 is 4.4999999...
    assert ModelPrice(input=0.0045, output=0).cost_nanos(usage(input_tokens=1)) == 5
    # two parts of half a nano each: summed first (1.0), then rounded: 1, not 2
    half = ModelPrice(input=0.0005, output=0.0005)
    assert half.cost_nanos(usage(input_tokens=1, output_tokens=1)) == 1
    assert half.cost_nanos(usage(input_tokens=1)) == 1  # 0.5 rounds up
    assert ModelPrice(input=0.0004, output=0).cost_nanos(usage(input_tokens=1)) == 0
    # large counts stay exact
    big = usage(input_tokens=10**12, output_tokens=10**12)
    assert ModelPrice(input=0.15, output=0.6).cost_nanos(big) == 10**12 * 150 + 10**12 * 600


def test_inconsistent_counts_are_clamped_never_negative():
    price = ModelPrice(input=2, cached_input=1, output=10)
    # cached > input: the prompt is taken to be the cached part, nothing uncached
    assert price.cost_nanos(usage(input_tokens=10, cached_input_tokens=100)) == 100 * 1_000
    # reasoning > output: the output is taken to be the reasoning part
    assert price.cost_nanos(usage(output_tokens=1, reasoning_tokens=50)) == 50 * 10_000
    negative = usage(
        input_tokens=-5,
        output_tokens=-3,
        cached_input_tokens=-1,
        cache_creation_tokens=-1,
        reasoning_tokens=-9,
    )
    assert price.cost_nanos(negative) == 0
    assert price.cost_nanos(TokenUsage(), {"web_search": -4}) == 0


def test_usd_to_nanos_is_exact():
    assert usd_to_nanos(0.10) == 100_000_000
    assert usd_to_nanos(0.05) == 50_000_000
    assert usd_to_nanos(1234.56789) == 1_234_567_890_000
    assert usd_to_nanos(1e-10) == 0  # below a nano-dollar, rounded down


# --- the table ----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("model", "base"),
    [
        ("gpt-4o-2024-08-06", "gpt-4o"),
        ("gpt-4o-mini-2024-07-18", "gpt-4o-mini"),
        ("gpt-4.1-2025-04-14", "gpt-4.1"),
        ("o3-2025-04-16", "o3"),
        ("claude-sonnet-4-5-20250929", "claude-sonnet-4-5"),
        ("claude-opus-4-1-20250805", "claude-opus-4-1"),
        ("claude-opus-4-20250514", "claude-opus-4"),
        ("claude-haiku-4-5-20251001", "claude-haiku-4-5"),
        ("claude-3-5-haiku-latest", "claude-3-5-haiku"),
        ("claude-sonnet-4-5@20250929", "claude-sonnet-4-5"),
    ],
)
def test_dated_snapshots_share_their_alias_price(model, base):
    assert DEFAULT.resolve(base) is not None
    assert DEFAULT.resolve(model) == DEFAULT.resolve(base)


def test_exact_snapshot_entry_beats_normalisation():
    assert DEFAULT.price_for("gpt-4o-2024-05-13").input == 5.0
    assert DEFAULT.price_for("gpt-4o-2024-11-20").input == 2.5


def test_lookalikes_are_not_priced():
    for model in ("gpt-4o-2024", "ft:gpt-4o-mini-2024-07-18:acme::abc", "GPT-4O", "gpt-4o "):
        assert DEFAULT.resolve(model) is None, model


def test_globs_exact_wins_and_most_specific_glob_first():
    table = PriceTable(
        {
            "acme-*": ModelPrice(input=1, output=1),
            "acme-large-*": ModelPrice(input=5, output=5),
            "acme-large-v2": ModelPrice(input=9, output=9),
        }
    )
    assert table.price_for("acme-small-v1").input == 1
    assert table.price_for("acme-large-v1").input == 5
    assert table.price_for("acme-large-v2").input == 9
    assert table.resolve("other") is None


def test_overrides_and_per_upstream_prices():
    negotiated = ModelPrice(input=1.0, output=4.0)
    table = DEFAULT.with_overrides(
        {"gpt-4o": ModelPrice(input=2.0, output=8.0), "local-llama": ModelPrice(input=0, output=0)},
        per_upstream={"azure-eu": {"gpt-4o*": negotiated}},
    )
    assert table.price_for("gpt-4o").input == 2.0
    assert table.price_for("gpt-4o", "openai-main").input == 2.0
    # the credential's own prices win, its globs included, over the model-level exact name
    assert table.price_for("gpt-4o", "azure-eu") is negotiated
    assert table.price_for("gpt-4o-2024-08-06", "azure-eu") is negotiated
    # other models on that credential fall back to the model-level prices
    assert table.price_for("o3", "azure-eu") == DEFAULT.price_for("o3")
    # an explicit zero price is allowed: configured, not missing
    assert table.price_for("local-llama").cost_nanos(usage(input_tokens=10)) == 0
    # the original is unchanged
    assert DEFAULT.price_for("gpt-4o").input == 2.5
    # later overrides of the same credential merge
    again = table.with_overrides(per_upstream={"azure-eu": {"o3": negotiated}})
    assert again.price_for("o3", "azure-eu") is negotiated
    assert again.price_for("gpt-4o", "azure-eu") is negotiated


def test_unknown_model_rejects_or_charges_the_default_never_zero():
    with pytest.raises(UnknownModelPrice, match="'my-secret-model'") as caught:
        DEFAULT.price_for("my-secret-model")
    assert caught.value.model == "my-secret-model"
    fallback = ModelPrice(input=10, output=30)
    price = DEFAULT.price_for("my-secret-model", missing=fallback)
    assert price is fallback
    assert price.cost_nanos(usage(input_tokens=100, output_tokens=10)) == 100 * 10_000 + 10 * 30_000
    assert DEFAULT.resolve("my-secret-model") is None
    # a very long name is cut in the message
    with pytest.raises(UnknownModelPrice) as long_name:
        DEFAULT.price_for("x" * 10_000)
    assert len(str(long_name.value)) < 400


def test_lookup_cache_is_bounded():
    table = PriceTable({"a": ModelPrice(input=1, output=1)}, cache_size=64)
    for i in range(5_000):
        assert table.resolve(f"unknown-{i}", None if i % 2 else "cred") is None
    table.resolve("y" * 100_000)
    assert len(table._cache) <= 64
    assert table.resolve("a") is not None


def test_shipped_table_is_sane():
    assert len(DEFAULT) >= 40
    for name, price in DEFAULT.models.items():
        inp, cached, _, out, _, _ = price.rates(0)
        if price.per_minute is not None or price.per_image is not None:
            # Billed by the minute or by the image, not by the token.
            assert (inp, out) == (0, 0), name
            assert (price.per_minute or 0) + (price.per_image or 0) > 0, name
            continue
        assert inp > 0, name
        if price.audio_input is not None:
            assert price.audio_input > inp, name
        assert cached <= inp, name
        if name.startswith("text-embedding"):
            assert out == 0
        else:
            assert out >= inp, name
        if name.startswith("claude") and name != "claude-3-haiku":  # 3 Haiku: 1.2x, 0.12x
            assert price.cache_creation == pytest.approx(1.25 * inp), name
            assert price.cache_creation_1h == pytest.approx(2 * inp), name
            assert price.cached_input == pytest.approx(0.1 * inp), name
        for tier in price.tiers:  # a tier never makes a longer prompt cheaper
            higher = price.rates(tier.above + 1)
            assert all(h >= b for h, b in zip(higher, price.rates(tier.above), strict=True)), name
        # Flex is never dearer than the standard price, Priority never cheaper
        assert set(price.service_tiers) <= {"flex", "priority"}, name
        standard = price.rates(0)
        if "flex" in price.service_tiers:
            flex = price.rates(0, "flex")
            assert all(f <= s for f, s in zip(flex, standard, strict=True)), name
            assert flex[0] < standard[0], name
        if "priority" in price.service_tiers:
            priority = price.rates(0, "priority")
            assert all(p >= s for p, s in zip(priority, standard, strict=True)), name
            assert priority[0] > standard[0], name
    for model in ("gpt-5", "gpt-5-mini", "gpt-4.1", "gpt-4.1-mini", "gpt-4o", "o3", "o4-mini"):
        assert "priority" in DEFAULT.price_for(model).service_tiers, model
    for model in ("gpt-5", "gpt-5-mini", "gpt-5-nano", "o3", "o4-mini"):
        assert "flex" in DEFAULT.price_for(model).service_tiers, model
    for model in (
        "gpt-5",
        "gpt-5-mini",
        "gpt-5-nano",
        "gpt-4.1",
        "gpt-4.1-mini",
        "gpt-4o",
        "gpt-4o-mini",
        "o3",
        "o4-mini",
        "o1",
        "text-embedding-3-small",
        "text-embedding-3-large",
        "gpt-3.5-turbo-instruct",
        "claude-opus-4-5",
        "claude-opus-4-1",
        "claude-sonnet-4-5",
        "claude-sonnet-4-6",
        "claude-haiku-4-5",
        "claude-3-5-haiku",
    ):
        assert DEFAULT.resolve(model) is not None, model


def test_invalid_prices_are_refused():
    with pytest.raises(ValueError, match="finite"):
        ModelPrice(input=float("inf"), output=1)
    with pytest.raises(ValueError, match=">= 0"):
        ModelPrice(input=1, output=1, per_call={"web_search": -0.01})
    with pytest.raises(ValueError, match="sorted"):
        ModelPrice(input=1, output=1, tiers=(PriceTier(above=10), PriceTier(above=5)))
    with pytest.raises(msgspec.ValidationError):
        msgspec.convert({"input": -1, "output": 1}, ModelPrice)
    with pytest.raises(msgspec.ValidationError):
        msgspec.convert({"input": 1}, ModelPrice)  # output is required: never free by omission
    with pytest.raises(ConfigurationError, match="model-x"):
        PriceTable.from_toml('[prices."model-x"]\ninput = 1\noutput = "a lot"\n')
    with pytest.raises(ConfigurationError, match="not valid TOML"):
        PriceTable.from_toml("[prices")
    for standard in ("default", "standard", "auto", "Default", ""):
        with pytest.raises(ValueError, match="standard tier"):
            ModelPrice(input=1, output=1, service_tiers={standard: ServiceTierPrice(input=2)})
    with pytest.raises(ValueError, match=">= 0"):
        ModelPrice(input=1, output=1, service_tiers={"flex": ServiceTierPrice(output=-1)})
    with pytest.raises(ConfigurationError, match="model-x"):  # a typo is not ignored
        PriceTable.from_toml(
            '[prices."model-x"]\ninput = 1\noutput = 2\nservice_tiers.flex = { inptu = 1 }\n'
        )


def test_from_toml_in_the_config_shape():
    table = PriceTable.from_toml(
        """
        [prices."my-model"]
        input = 0.5
        output = 1.5
        per_call = { web_search = 0.02 }

        [prices."my-model-long"]
        input = 1
        output = 2
        tiers = [{ above = 128_000, input = 2, output = 4 }]
        """
    )
    assert table.price_for("my-model").per_call == {"web_search": 0.02}
    assert table.price_for("my-model-long").rates(128_001) == (2, 2, 2, 4, 4, 4)
    tiered = PriceTable.from_toml(
        """
        [prices."my-model"]
        input = 1
        output = 2
        service_tiers.flex = { input = 0.5, output = 1 }

        [prices."my-model".service_tiers.priority]
        input = 2
        cached_input = 0.2
        output = 4
        """
    ).price_for("my-model")
    assert tiered.rates(0, "flex") == (0.5, 0.5, 0.5, 1, 1, 1)
    assert tiered.rates(0, "priority") == (2, 0.2, 2, 4, 4, 4)


# --- estimates ----------------------------------------------------------------------------------


def test_estimate_is_the_worst_case():
    price = DEFAULT.price_for("claude-sonnet-4-5")
    # prompt at the 1-hour cache-write price (6 > 3.75 > 3), output at 15, rounded up
    assert estimate_nanos(price, 1_000, 1_000) == 1_000 * 6_000 + 1_000 * 15_000
    # the long-context tier follows the prompt estimate
    assert estimate_nanos(price, 300_000, 0) == 300_000 * 12_000
    reasoning = ModelPrice(input=1, output=2, reasoning=3)
    assert estimate_nanos(reasoning, 0, 10) == 10 * 3_000
    assert estimate_nanos(ModelPrice(input=0.0001, output=0), 1, 0) == 1  # 0.1 nano, rounded up
    assert estimate_nanos(reasoning, -5, -5) == 0
    # whichever tier serves it: the dearest service tier's price (gpt-5 Priority: $2.50/$20)
    assert (
        estimate_nanos(DEFAULT.price_for("gpt-5"), 1_000, 1_000) == 1_000 * 2_500 + 1_000 * 20_000
    )


# --- properties ---------------------------------------------------------------------------------

counts = st.integers(min_value=0, max_value=2_000_000)
prices = st.floats(min_value=0, max_value=1000, allow_nan=False).map(lambda x: round(x, 4))


@st.composite
def model_prices(draw: st.DrawFn) -> ModelPrice:
    base = draw(prices)
    above = draw(st.integers(min_value=0, max_value=500_000))
    factor = draw(st.sampled_from([1, 1.5, 2]))
    return ModelPrice(
        input=base,
        cached_input=draw(st.none() | prices),
        cache_creation=draw(st.none() | prices),
        output=draw(prices),
        reasoning=draw(st.none() | prices),
        per_call={"web_search": draw(prices)},
        tiers=(
            PriceTier(
                above=above,
                input=round(base * factor, 6),
                # tiers that raise every price, as long-context pricing does
                cached_input=1001,
                cache_creation=1001,
                output=1001,
                reasoning=1001,
            ),
        )
        if draw(st.booleans())
        else (),
    )


@st.composite
def usages(draw: st.DrawFn) -> TokenUsage:
    # any counts at all, consistent or not
    return TokenUsage(
        input_tokens=draw(counts),
        output_tokens=draw(counts),
        cached_input_tokens=draw(counts),
        cache_creation_tokens=draw(counts),
        reasoning_tokens=draw(counts),
    )


FIELDS = (
    "input_tokens",
    "output_tokens",
    "cached_input_tokens",
    "cache_creation_tokens",
    "reasoning_tokens",
)


@settings(max_examples=300, deadline=None)
@given(price=model_prices(), u=usages(), field=st.sampled_from(FIELDS), more=counts)
def test_cost_is_never_negative_and_grows_with_every_token(price, u, field, more):
    cost = price.cost_nanos(u)
    assert cost >= 0
    # Adding tokens never lowers the cost. A part of the prompt (cached, written) or of the output
    # (reasoning) is added together with its whole, as more tokens of that kind.
    grown = msgspec.structs.replace(u, **{field: getattr(u, field) + more})
    if field in ("cached_input_tokens", "cache_creation_tokens"):
        grown = msgspec.structs.replace(grown, input_tokens=u.input_tokens + more)
    if field == "reasoning_tokens":
        grown = msgspec.structs.replace(grown, output_tokens=u.output_tokens + more)
    assert price.cost_nanos(grown) >= cost
    calls = {"web_search": more}
    assert price.cost_nanos(u, calls) >= cost


@settings(max_examples=300, deadline=None)
@given(
    model=st.sampled_from(sorted(DEFAULT.models)),
    prompt=counts,
    max_output=counts,
    data=st.data(),
)
def test_estimate_bounds_every_answer_within_it(model, prompt, max_output, data):
    price = DEFAULT.models[model]
    tier = data.draw(st.sampled_from([None, "default", "unknown", *price.service_tiers]))
    inp = data.draw(st.integers(0, prompt))
    cached = data.draw(st.integers(0, inp))
    creation = data.draw(st.integers(0, inp - cached))
    out = data.draw(st.integers(0, max_output))
    reasoning = data.draw(st.integers(0, out))
    u = TokenUsage(
        input_tokens=inp,
        output_tokens=out,
        cached_input_tokens=cached,
        cache_creation_tokens=creation,
        reasoning_tokens=reasoning,
        service_tier=tier,
    )
    assert price.cost_nanos(u) <= estimate_nanos(price, prompt, max_output)


def test_units_are_charged_at_their_unit_price_exactly():
    whisper = ModelPrice(input=0, output=0, per_minute=0.006)
    # 8.47 seconds of audio: 0.006 * 8.47 / 60 USD = 847 nanos, exactly.
    assert whisper.cost_nanos(TokenUsage(), units=8.47 / 60, unit="minute") == 847_000
    assert whisper.cost_nanos(TokenUsage(), units=2, unit="image") == 0  # no per-image price
    images = ModelPrice(input=1.0, output=2.0, per_image=0.02)
    both = TokenUsage(input_tokens=10, output_tokens=5)
    assert images.cost_nanos(both, units=3, unit="image") == 3 * 20_000_000 + 10_000 + 10_000


def test_audio_input_tokens_have_their_own_price():
    price = ModelPrice(input=2.5, output=10.0, audio_input=6.0)
    usage = TokenUsage(input_tokens=120, audio_input_tokens=100, output_tokens=50)
    assert price.cost_nanos(usage) == 20 * 2500 + 100 * 6000 + 50 * 10_000
    # More audio than input (an inconsistent report) never charges text below zero.
    odd = TokenUsage(input_tokens=10, audio_input_tokens=100)
    assert price.cost_nanos(odd) == 10 * 6000
    # Without an audio price, audio tokens are input tokens.
    plain = ModelPrice(input=2.5, output=10.0)
    assert plain.cost_nanos(usage) == 120 * 2500 + 50 * 10_000
