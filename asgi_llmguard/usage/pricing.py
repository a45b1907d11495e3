"""Model prices and the exact cost of one upstream answer.

Prices are US dollars per million tokens, as the providers publish them. Costs are integer
nano-dollars (1e-9 USD), computed exactly:

- every price is read as the decimal number it was written as (``0.0045`` is 45/10000, not the
  binary float nearest to it), so ``$/M * tokens * 1000`` is an exact rational number;
- the parts of one answer (uncached, cached and cache-written input, visible and reasoning
  output, per-call tool fees) are summed exactly, and the sum is rounded half-up to a whole
  nano-dollar once per answer, so no error accumulates over parts or over a ledger.

A `PriceTable` maps model names to `ModelPrice`. It ships with the providers' list prices
(``prices.toml`` next to this module) and is extended or overridden from configuration. A model
with no price is never silently free: `PriceTable.resolve` says ``None`` and the caller applies
the `MissingPrice` policy (``"reject"``, or a default `ModelPrice`).
"""

from __future__ import annotations

import fnmatch
import functools
import math
import re
from collections import OrderedDict
from collections.abc import Iterator, Mapping
from importlib import resources
from types import MappingProxyType
from typing import Annotated, Literal, TypeAlias

import msgspec

from asgi_llmguard.errors import ConfigurationError
from asgi_llmguard.tokens import TokenUsage
from asgi_llmguard.usage._money import ExactSum, exact, pow10, round_half_up, scaled

__all__ = [
    "MissingPrice",
    "ModelPrice",
    "PriceTable",
    "PriceTier",
    "ServiceTierPrice",
    "UnknownModelPrice",
    "estimate_nanos",
    "usd_to_nanos",
]

#: USD per million tokens (or per call, for ``per_call``); never negative.
_Price = Annotated[float, msgspec.Meta(ge=0)]
_NO_CALLS: Mapping[str, int] = MappingProxyType({})
#: The names providers give their standard tier: always the model's own prices.
_STANDARD_SERVICE_TIERS = frozenset({"default", "standard", "auto"})


class PriceTier(msgspec.Struct, frozen=True, forbid_unknown_fields=True, omit_defaults=True):
    """Prices that replace the base ones when the prompt is longer than ``above`` tokens.

    This is how long-context pricing is written (e.g. Claude Sonnet 4.5: every token of a
    request whose prompt exceeds 200k tokens at $6/$22.50 instead of $3/$15). The tier applies
    to the *whole* answer, not to the tokens past the threshold, as the providers bill it. A field
    left out keeps the base price, so a tier should list every price that changes.
    """

    above: Annotated[int, msgspec.Meta(ge=0)]
    input: _Price | None = None
    cached_input: _Price | None = None
    cache_creation: _Price | None = None
    output: _Price | None = None
    reasoning: _Price | None = None
    cache_creation_1h: _Price | None = None


class ServiceTierPrice(msgspec.Struct, frozen=True, forbid_unknown_fields=True, omit_defaults=True):
    """Prices that replace the standard ones when the provider says the answer was served on a
    named service tier (OpenAI's ``service_tier: "flex"`` or ``"priority"``).

    The tier the *response* reports is what is charged, not the one the request asked for: a
    request for ``"auto"`` served on Priority costs the Priority price, one for ``"priority"``
    served on the standard tier the standard price. A field left out keeps the standard price for
    that answer (the long-context tier's, if one applies), as with `PriceTier`.
    """

    input: _Price | None = None
    cached_input: _Price | None = None
    cache_creation: _Price | None = None
    output: _Price | None = None
    reasoning: _Price | None = None
    cache_creation_1h: _Price | None = None


_Overlay: TypeAlias = PriceTier | ServiceTierPrice
_Rates: TypeAlias = tuple[float, float | None, float | None, float, float | None, float | None]


def _overlay(tier: _Overlay, rates: _Rates) -> _Rates:
    """``rates`` (input, cached, creation, output, reasoning, creation_1h; ``None``: default)
    with the prices ``tier`` sets."""
    inp, cached, creation, out, reasoning, creation_1h = rates
    if tier.cache_creation_1h is not None:
        creation_1h = tier.cache_creation_1h
    elif tier.input is not None:  # a tier's input price rescales the 1-hour default
        creation_1h = None
    return (
        tier.input if tier.input is not None else inp,
        tier.cached_input if tier.cached_input is not None else cached,
        tier.cache_creation if tier.cache_creation is not None else creation,
        tier.output if tier.output is not None else out,
        tier.reasoning if tier.reasoning is not None else reasoning,
        creation_1h,
    )


class ModelPrice(msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    """The price of one model, in USD per million tokens.

    - ``input``: prompt tokens not read from or written to the cache.
    - ``cached_input``: prompt tokens read from the cache (default: ``input``, no discount).
    - ``cache_creation``: prompt tokens written to the cache (default: ``input``). Anthropic
      charges 1.25 * input for a 5-minute cache write; the shipped table says so explicitly for
      every Claude model rather than guessing it for models whose provider has no such charge.
    - ``cache_creation_1h``: prompt tokens written to Anthropic's 1-hour cache (default:
      2 * ``input``, Anthropic's rate for a 1-hour write, whatever ``cache_creation`` says).
    - ``output``: generated tokens (required: write ``output = 0`` for embeddings).
    - ``reasoning``: the reasoning part of the output (default: ``output``, as OpenAI and
      Anthropic bill it).
    - ``per_call``: USD per tool call by tool type, e.g. ``{"web_search": 0.01}``; tool types not
      listed cost nothing.
    - ``tiers``: long-context prices (`PriceTier`); the tier with the highest ``above`` that the
      prompt exceeds applies.
    - ``service_tiers``: prices by the service tier the provider reports in its answer
      (`ServiceTierPrice`), e.g. ``{"flex": ..., "priority": ...}``. A tier not listed, and the
      standard tier (``default``, ``standard``, ``auto``, or none reported), cost the prices
      above.
    - ``audio_input``: audio prompt tokens (transcription models; default: ``input``).
    - ``audio_output``: audio output tokens (the Realtime API's speech; default: ``output``).
    - ``per_minute``: USD per minute of audio the provider reports (``whisper-1``), charged
      pro rata to the second.
    - ``per_image``: USD per image the answer carries (``dall-e-2``).

    A model billed per unit writes ``input = 0`` and ``output = 0`` with its unit price; the
    unit prices and the token prices add up when an answer reports both.
    """

    input: _Price
    cached_input: _Price | None = None
    cache_creation: _Price | None = None
    output: _Price
    reasoning: _Price | None = None
    per_call: dict[str, _Price] = msgspec.field(default_factory=dict)
    tiers: tuple[PriceTier, ...] = ()
    cache_creation_1h: _Price | None = None
    service_tiers: dict[str, ServiceTierPrice] = msgspec.field(default_factory=dict)
    audio_input: _Price | None = None
    per_minute: _Price | None = None
    per_image: _Price | None = None
    audio_output: _Price | None = None

    def __post_init__(self) -> None:
        prices = [self.input, self.cached_input, self.cache_creation, self.output, self.reasoning]
        prices.append(self.cache_creation_1h)
        prices.extend((self.audio_input, self.per_minute, self.per_image, self.audio_output))
        prices.extend(self.per_call.values())
        for tier in self.tiers:
            prices.extend(
                (tier.input, tier.cached_input, tier.cache_creation, tier.output, tier.reasoning)
            )
            prices.append(tier.cache_creation_1h)
        for name, extra in self.service_tiers.items():
            if not name or name.lower() in _STANDARD_SERVICE_TIERS:
                raise ValueError(
                    f"service tier {name!r}: the standard tier costs the model's own prices"
                )
            prices.extend((extra.input, extra.cached_input, extra.cache_creation, extra.output))
            prices.extend((extra.reasoning, extra.cache_creation_1h))
        # Checked here too: a struct built in code is not validated by msgspec's Meta.
        if any(p is not None and not (math.isfinite(p) and p >= 0) for p in prices):
            raise ValueError("prices must be finite numbers >= 0")
        thresholds = [tier.above for tier in self.tiers]
        if thresholds != sorted(set(thresholds)):
            raise ValueError("tiers must be sorted by `above`, each threshold once")

    def rates(
        self, input_tokens: int = 0, service_tier: str | None = None
    ) -> tuple[float, float, float, float, float, float]:
        """The effective ``(input, cached_input, cache_creation, output, reasoning,
        cache_creation_1h)`` prices for a prompt of ``input_tokens`` tokens served on
        ``service_tier``: the long-context tier that applies, then the service tier's prices,
        then the defaults."""
        rates: _Rates = (
            self.input,
            self.cached_input,
            self.cache_creation,
            self.output,
            self.reasoning,
            self.cache_creation_1h,
        )
        for tier in reversed(self.tiers) if self.tiers else ():
            if input_tokens > tier.above:
                rates = _overlay(tier, rates)
                break
        extra = self.service_tier_price(service_tier)
        if extra is not None:
            rates = _overlay(extra, rates)
        inp, cached, creation, out, reasoning, creation_1h = rates
        return (
            inp,
            inp if cached is None else cached,
            inp if creation is None else creation,
            out,
            out if reasoning is None else reasoning,
            2 * inp if creation_1h is None else creation_1h,
        )

    def service_tier_price(self, service_tier: str | None) -> ServiceTierPrice | None:
        """The prices of ``service_tier`` (as a provider reports it), or ``None``: the standard
        prices apply (no tier reported, a standard tier's name, or a tier not listed)."""
        if not service_tier or not self.service_tiers:
            return None
        found = self.service_tiers.get(service_tier)
        if found is None:
            found = self.service_tiers.get(service_tier.lower())
        return found

    def unit_price(self, unit: str | None) -> float | None:
        """The price of one ``unit`` (``"minute"``, ``"image"``), or ``None`` if it has none."""
        if unit == "minute":
            return self.per_minute
        if unit == "image":
            return self.per_image
        return None

    def cost_nanos(
        self,
        usage: TokenUsage,
        tool_calls: Mapping[str, int] = _NO_CALLS,
        *,
        units: float = 0.0,
        unit: str | None = None,
    ) -> int:
        """The exact cost of ``usage`` (plus ``tool_calls`` by tool type, plus ``units`` of
        ``unit`` at `unit_price`) in nano-dollars.

        Inconsistent counts are clamped so that nothing is charged below what the provider
        reported: negative counts count as 0; when ``cached + cache_creation > input`` the prompt
        is taken to be ``cached + cache_creation`` long (each part at its own price, nothing
        uncached); when ``reasoning > output`` the output is taken to be ``reasoning`` long. The
        result is never negative. ``usage.service_tier`` chooses the prices (`rates`).
        """
        # The clamps as comparisons rather than min/max calls: this runs for every request.
        cached = usage.cached_input_tokens
        cached = cached if cached > 0 else 0
        creation = usage.cache_creation_tokens
        creation = creation if creation > 0 else 0
        creation_1h = usage.cache_creation_1h_tokens
        creation_1h = 0 if creation_1h <= 0 else creation_1h if creation_1h < creation else creation
        prompt = usage.input_tokens
        if prompt < cached + creation:
            prompt = cached + creation
        reasoning = usage.reasoning_tokens
        reasoning = reasoning if reasoning > 0 else 0
        output = usage.output_tokens
        if output < reasoning:
            output = reasoning
        audio = usage.audio_input_tokens
        spoken = usage.audio_output_tokens
        if audio or spoken:  # audio parts, priced apart (rare: one test when there are none)
            uncached = prompt - cached - creation
            audio = 0 if audio <= 0 else audio if audio < uncached else uncached
            text = output - reasoning
            spoken = 0 if spoken <= 0 else spoken if spoken < text else text
        scaled, exponent = _scaled_rates(self, prompt, usage.service_tier)
        numerator = 1000 * (
            scaled[0] * (prompt - cached - creation - audio)
            + scaled[1] * cached
            + scaled[2] * (creation - creation_1h)
            + scaled[5] * creation_1h
            + scaled[3] * (output - reasoning - spoken)
            + scaled[4] * reasoning
        )
        unit_price = self.unit_price(unit) if units > 0 else None
        if not tool_calls and not audio and not spoken and unit_price is None:
            return round_half_up(numerator, exponent)  # the common case: no running sum
        total = ExactSum()
        total.numerator, total.exponent = numerator, exponent
        for tool, calls in tool_calls.items():
            fee = self.per_call.get(tool)
            if fee is not None and calls > 0:
                total.add(fee, calls * 1_000_000_000)
        if audio:
            audio_price = self.input if self.audio_input is None else self.audio_input
            total.add(audio_price, audio * 1000)
        if spoken:
            spoken_price = self.output if self.audio_output is None else self.audio_output
            total.add(spoken_price, spoken * 1000)
        if unit_price is not None:
            # ``units`` as the shortest decimal that reads back as it (minutes may be fractional).
            count, scale = exact(units)
            total.add_scaled(unit_price, count * 1_000_000_000, scale)
        return total.round_half_up()


MissingPrice: TypeAlias = Literal["reject"] | ModelPrice
"""What to charge for a model the table has no price for: refuse the request (``"reject"``), or
charge this default price. Never zero by omission (RELIABILITY B3)."""


class UnknownModelPrice(LookupError):
    """A model has no price and the policy is ``"reject"``."""

    def __init__(self, model: str) -> None:
        self.model = model
        shown = model if len(model) <= 200 else model[:200] + "..."
        super().__init__(
            f"No price is configured for model {shown!r}: add it to the price table "
            '([prices."<model>"] in the config) or set a default price for unknown models.'
        )


def usd_to_nanos(usd: float) -> int:
    """A dollar amount (as written, e.g. ``0.10``) in whole nano-dollars, rounded down."""
    numerator, exponent = exact(usd)
    return numerator * 1_000_000_000 // pow10(exponent)


def estimate_nanos(price: ModelPrice, prompt_tokens_estimate: int, max_output_tokens: int) -> int:
    """The worst-case cost of a request before it is sent, for a budget reservation.

    Every prompt token at the dearest prompt price (no cache discount; a cache write may cost
    more than plain input), every output token at the dearer of the output and reasoning prices,
    the long-context tier chosen by the prompt estimate, rounded up; and at the dearest of the
    standard prices and every service tier's (`ModelPrice.service_tiers`), since the upstream,
    not the request, decides which tier serves it. Tool-call fees are not included: the number
    of calls is not known in advance.
    """
    prompt = prompt_tokens_estimate if prompt_tokens_estimate > 0 else 0
    output = max_output_tokens if max_output_tokens > 0 else 0
    exponent, worst_rates = _worst_rates(price, prompt)
    worst = 0
    for prompt_rate, output_rate in worst_rates:  # one pair per service tier
        numerator = prompt_rate * prompt + output_rate * output
        if numerator > worst:
            worst = numerator
    # The prices as integers over one power of ten, so the max of the numerators is the
    # numerator of the max: one exact dot product per tier, rounded up.
    return -(-1000 * worst // pow10(exponent))


def _tier_index(price: ModelPrice, prompt: int) -> int:
    """Which long-context tier applies to a prompt of ``prompt`` tokens (-1: none)."""
    tiers = price.tiers
    if tiers:
        for index in range(len(tiers) - 1, -1, -1):
            if prompt > tiers[index].above:
                return index
    return -1


# Scaled rates by (price identity, long-context tier, service tier). Each entry keeps its price
# alive, so an identity is never reused while it is cached; prices come from configuration (and
# tier names from providers), so the map stays small and is cleared when it is not.
_RATES: dict[tuple[int, int, str | None], tuple[ModelPrice, tuple[int, ...], int]] = {}
_WORST: dict[tuple[int, int], tuple[ModelPrice, int, tuple[tuple[int, int], ...]]] = {}
_MAX_CACHED = 4096


def _scaled_rates(
    price: ModelPrice, prompt: int, service_tier: str | None
) -> tuple[tuple[int, ...], int]:
    """`scaled` of ``price.rates(prompt, service_tier)``, computed once per price and tier."""
    key = (id(price), _tier_index(price, prompt), service_tier)
    hit = _RATES.get(key)
    if hit is not None and hit[0] is price:
        return hit[1], hit[2]
    rates, exponent = scaled(price.rates(prompt, service_tier))
    if len(_RATES) >= _MAX_CACHED:
        _RATES.clear()
    _RATES[key] = (price, rates, exponent)
    return rates, exponent


def _worst_rates(price: ModelPrice, prompt: int) -> tuple[int, tuple[tuple[int, int], ...]]:
    """For each service tier (the standard one first): the dearest prompt rate and the dearer of
    the output and reasoning rates, all over one power of ten; computed once per price."""
    key = (id(price), _tier_index(price, prompt))
    hit = _WORST.get(key)
    if hit is not None and hit[0] is price:
        return hit[1], hit[2]
    pairs: list[tuple[int, int, int]] = []
    for tier in (None, *price.service_tiers):
        s, e = scaled(price.rates(prompt, tier))
        dearest = max(s[0], s[1], s[2], s[5] if price.cache_creation_1h is not None else 0)
        pairs.append((dearest, max(s[3], s[4]), e))
    exponent = max(e for _, _, e in pairs)
    rates = tuple((d * pow10(exponent - e), o * pow10(exponent - e)) for d, o, e in pairs)
    if len(_WORST) >= _MAX_CACHED:
        _WORST.clear()
    _WORST[key] = (price, exponent, rates)
    return exponent, rates


# Dated snapshots and moving aliases of one model share its price:
# gpt-4o-2024-08-06, claude-sonnet-4-5-20250929, claude-3-5-haiku-latest, claude-x@20250514.
_SNAPSHOT = re.compile(r"(?:-\d{4}-\d{2}-\d{2}|-\d{8}|@\d{8}|-latest)$")
# Amazon Bedrock: an inference profile (``us.anthropic...``, ``global.anthropic...``), or its ARN
# (``arn:aws:bedrock:us-east-1:123456789012:inference-profile/us.anthropic...``), shares the price
# of the model id it serves (``anthropic.claude-sonnet-4-5-20250929-v1:0``).
_BEDROCK_PROFILE = re.compile(
    r"^(?:arn:aws[a-z-]*:bedrock:[a-z0-9-]*:\d*:inference-profile/)?"
    r"(?:us|eu|apac|jp|au|ca|us-gov|global)\.(?=[a-z0-9-]+\.)"
    r"|^arn:aws[a-z-]*:bedrock:[a-z0-9-]*:\d*:(?:inference-profile|foundation-model)/"
)
_GLOB_CHARS = frozenset("*?[")
# Model names longer than this are looked up but not cached: the cache's memory stays bounded.
_CACHEABLE_NAME = 256
_NOT_CACHED = object()


class _Prices:
    """Exact names, then dated-snapshot normalisation, then globs (most specific first)."""

    __slots__ = ("exact", "globs")

    def __init__(self, models: Mapping[str, ModelPrice]) -> None:
        self.exact: dict[str, ModelPrice] = {}
        globs: list[tuple[str, ModelPrice]] = []
        for name, price in models.items():
            if not isinstance(price, ModelPrice):
                raise ConfigurationError(f"price of {name!r} must be a ModelPrice")
            if _GLOB_CHARS.intersection(name):
                globs.append((name, price))
            else:
                self.exact[name] = price
        # More literal characters first; the order of declaration breaks ties.
        globs.sort(key=lambda item: -sum(c not in _GLOB_CHARS for c in item[0]))
        self.globs = [(re.compile(fnmatch.translate(g)), p) for g, p in globs]

    def find(self, model: str) -> ModelPrice | None:
        price = self.exact.get(model)
        if price is not None:
            return price
        if "." in model:
            bare = _BEDROCK_PROFILE.sub("", model, count=1)
            if bare != model:
                price = self.exact.get(bare)
                if price is not None:
                    return price
        base = _SNAPSHOT.sub("", model)
        if base != model and base:
            price = self.exact.get(base)
            if price is not None:
                return price
        for pattern, price in self.globs:
            if pattern.match(model):
                return price
        return None


class PriceTable:
    """Model name → `ModelPrice`, with per-upstream overrides and a bounded lookup cache.

    ``models`` keys are exact names or globs (``"ft:gpt-4o-mini:*"``). ``per_upstream`` maps an
    upstream credential id to its own model → price map (a deployment with negotiated prices, a
    self-hosted server); those win over the model-level prices for answers that credential
    served. Lookups try, in each map: the exact name, the name without its dated-snapshot suffix
    (``gpt-4o-2024-08-06`` → ``gpt-4o``, ``claude-sonnet-4-5-20250929`` → ``claude-sonnet-4-5``),
    then the globs. Results (misses included) are cached per (credential, model) up to
    ``cache_size`` entries, least recently used first out.
    """

    __slots__ = ("_cache", "_cache_size", "_models", "_raw", "_raw_upstream", "_upstreams")

    def __init__(
        self,
        models: Mapping[str, ModelPrice] | None = None,
        *,
        per_upstream: Mapping[str, Mapping[str, ModelPrice]] | None = None,
        cache_size: int = 4096,
    ) -> None:
        if cache_size < 0:
            raise ConfigurationError("cache_size must be >= 0")
        self._raw: dict[str, ModelPrice] = dict(models or {})
        self._raw_upstream = {cid: dict(m) for cid, m in (per_upstream or {}).items()}
        self._models = _Prices(self._raw)
        self._upstreams = {cid: _Prices(m) for cid, m in self._raw_upstream.items()}
        self._cache_size = cache_size
        self._cache: OrderedDict[tuple[str | None, str], object] = OrderedDict()

    @classmethod
    def default(cls) -> PriceTable:
        """The shipped list prices (``asgi_llmguard/usage/prices.toml``)."""
        return cls(_shipped_prices())

    @classmethod
    def from_toml(cls, data: bytes | str) -> PriceTable:
        """A table from TOML of the shipped file's shape: ``[prices."<model>"]`` tables."""
        return cls(_decode_prices(data, "price data"))

    def with_overrides(
        self,
        models: Mapping[str, ModelPrice] | None = None,
        per_upstream: Mapping[str, Mapping[str, ModelPrice]] | None = None,
    ) -> PriceTable:
        """A new table: these prices added to (or replacing) this table's, model by model."""
        merged_upstream = {cid: dict(m) for cid, m in self._raw_upstream.items()}
        for cid, prices in (per_upstream or {}).items():
            merged_upstream.setdefault(cid, {}).update(prices)
        return PriceTable(
            {**self._raw, **(models or {})},
            per_upstream=merged_upstream,
            cache_size=self._cache_size,
        )

    @property
    def models(self) -> Mapping[str, ModelPrice]:
        """The model-level prices (exact names and globs), read-only."""
        return MappingProxyType(self._raw)

    def __len__(self) -> int:
        return len(self._raw)

    def __iter__(self) -> Iterator[str]:
        return iter(self._raw)

    def resolve(self, model: str, credential_id: str | None = None) -> ModelPrice | None:
        """The price of ``model`` as served by ``credential_id``, or ``None`` if it has none."""
        key = (credential_id, model)
        cache = self._cache
        hit = cache.get(key, _NOT_CACHED)
        if hit is not _NOT_CACHED:
            cache.move_to_end(key)
            return hit  # type: ignore[return-value]
        price = None
        if credential_id is not None:
            upstream = self._upstreams.get(credential_id)
            if upstream is not None:
                price = upstream.find(model)
        if price is None:
            price = self._models.find(model)
        if self._cache_size and len(model) <= _CACHEABLE_NAME:
            cache[key] = price
            if len(cache) > self._cache_size:
                cache.popitem(last=False)
        return price

    def price_for(
        self, model: str, credential_id: str | None = None, *, missing: MissingPrice = "reject"
    ) -> ModelPrice:
        """The price of ``model``; for an unpriced model, ``missing`` applies: ``"reject"``
        raises `UnknownModelPrice`, a `ModelPrice` is charged instead."""
        price = self.resolve(model, credential_id)
        if price is not None:
            return price
        if isinstance(missing, ModelPrice):
            return missing
        raise UnknownModelPrice(model)


class _PriceFile(msgspec.Struct, forbid_unknown_fields=True):
    prices: dict[str, dict[str, object]] = msgspec.field(default_factory=dict)


def _decode_prices(data: bytes | str, where: str) -> dict[str, ModelPrice]:
    """Decode ``[prices."<model>"]`` tables; an error names the model it is about."""
    try:
        raw = msgspec.toml.decode(data, type=_PriceFile).prices
    except msgspec.ValidationError as exc:
        raise ConfigurationError(f"{where}: {exc}") from None
    except msgspec.DecodeError as exc:
        raise ConfigurationError(f"{where}: not valid TOML: {exc}") from None
    prices = {}
    for name, fields in raw.items():
        try:
            prices[name] = msgspec.convert(fields, ModelPrice)
        except msgspec.ValidationError as exc:
            raise ConfigurationError(f"{where}: prices.{name!r}: {exc}") from None
    return prices


@functools.cache
def _shipped_prices() -> Mapping[str, ModelPrice]:
    data = resources.files(__package__).joinpath("prices.toml").read_bytes()
    return MappingProxyType(_decode_prices(data, "asgi_llmguard/usage/prices.toml"))
