"""Token counts in one provider-neutral shape. A leaf module: every layer may import it."""

from __future__ import annotations

import msgspec


class TokenUsage(msgspec.Struct, omit_defaults=True):
    """The tokens one upstream answer used, normalised across providers.

    - ``input_tokens``: the whole prompt, cached parts included (OpenAI's ``prompt_tokens``;
      Anthropic's ``input_tokens + cache_read_input_tokens + cache_creation_input_tokens``).
    - ``cached_input_tokens``: the part of the prompt read from the provider's cache.
    - ``cache_creation_tokens``: the part of the prompt written to the cache (Anthropic).
    - ``output_tokens``: everything generated, reasoning included (OpenAI's
      ``completion_tokens``; Anthropic's ``output_tokens``).
    - ``reasoning_tokens``: the part of the output spent on reasoning.
    - ``cache_creation_1h_tokens``: the part of ``cache_creation_tokens`` written to the 1-hour
      cache (Anthropic's ``cache_creation.ephemeral_1h_input_tokens``); the rest is 5-minute.
    - ``service_tier``: the service tier the provider says served the answer (OpenAI's
      ``service_tier``, Anthropic's ``usage.service_tier``), as reported; ``None`` if it did
      not say. Prices can differ by tier (OpenAI's Flex and Priority processing).
    - ``audio_input_tokens``: the audio part of the prompt (OpenAI's transcription models:
      ``input_token_details.audio_tokens``); never cached or cache-written.
    - ``audio_output_tokens``: the audio part of the output (the Realtime API's
      ``output_token_details.audio_tokens``).

    So ``cached_input_tokens + cache_creation_tokens <= input_tokens`` and
    ``reasoning_tokens <= output_tokens``; pricing must not count a part twice.
    """

    input_tokens: int = 0
    output_tokens: int = 0
    cached_input_tokens: int = 0
    cache_creation_tokens: int = 0
    reasoning_tokens: int = 0
    #: The part of ``cache_creation_tokens`` written to Anthropic's 1-hour cache.
    cache_creation_1h_tokens: int = 0
    #: The service tier that served the answer, as the provider reported it.
    service_tier: str | None = None
    #: The part of ``input_tokens`` that was audio (transcription models bill it apart).
    audio_input_tokens: int = 0
    #: The part of ``output_tokens`` that was audio (the Realtime API's spoken answers).
    audio_output_tokens: int = 0

    @property
    def total_tokens(self) -> int:
        return self.input_tokens + self.output_tokens
