"""Exact money arithmetic: prices as decimal fractions, sums of ``price * count`` without
rounding error, and one half-up rounding to whole nano-dollars at the end.

A price is read as the decimal number it was written as (``0.0045`` is 45/10000, not the binary
float nearest to it); rates over one common power of ten make a cost one integer dot product.
"""

from __future__ import annotations

import functools
import math
from decimal import Decimal


@functools.lru_cache(maxsize=4096)
def exact(value: float) -> tuple[int, int]:
    """``value`` as the shortest decimal that reads back as it: ``(n, e)``, value = n / 10**e.

    Prices come from configuration, so the cache stays small; it spares the Decimal parse on
    the hot path.
    """
    if not math.isfinite(value) or value < 0:
        raise ValueError(f"not a price: {value!r}")
    _, digits, exponent = Decimal(repr(value)).as_tuple()
    assert isinstance(exponent, int)
    numerator = int("".join(map(str, digits)))
    if exponent >= 0:
        return numerator * pow10(exponent), 0
    return numerator, -exponent


@functools.lru_cache(maxsize=4096)
def scaled(rates: tuple[float, ...]) -> tuple[tuple[int, ...], int]:
    """Prices as integer numerators over one common power of ten: a cost is then one exact
    integer dot product. Rates come from configuration, so the cache stays small."""
    fractions = [exact(rate) for rate in rates]
    exponent = max(e for _, e in fractions)
    return tuple(n * pow10(exponent - e) for n, e in fractions), exponent


def pow10(exponent: int) -> int:
    return int(10**exponent)


class ExactSum:
    """An exact sum of ``price * count`` terms over a power-of-ten denominator."""

    __slots__ = ("exponent", "numerator")

    def __init__(self) -> None:
        self.numerator = 0
        self.exponent = 0

    def add(self, price: float, count: int) -> None:
        if count <= 0 or price == 0:
            return
        numerator, exponent = exact(price)
        if exponent > self.exponent:
            self.numerator *= pow10(exponent - self.exponent)
            self.exponent = exponent
        self.numerator += numerator * count * pow10(self.exponent - exponent)

    def add_scaled(self, price: float, count: int, scale: int) -> None:
        """Add ``price * count / 10**scale`` exactly."""
        if count <= 0 or price == 0:
            return
        numerator, exponent = exact(price)
        exponent += scale
        if exponent > self.exponent:
            self.numerator *= pow10(exponent - self.exponent)
            self.exponent = exponent
        self.numerator += numerator * count * pow10(self.exponent - exponent)

    def round_half_up(self) -> int:
        return round_half_up(self.numerator, self.exponent)


def round_half_up(numerator: int, exponent: int) -> int:
    """``numerator / 10**exponent`` rounded to the nearest integer, halves up."""
    denominator = pow10(exponent)
    quotient, remainder = divmod(numerator, denominator)
    return quotient + int(2 * remainder >= denominator)
