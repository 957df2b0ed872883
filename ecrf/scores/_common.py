"""Small helpers shared by the score modules: input checks, exact unit conversion, banded lookups."""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable
from decimal import Decimal

Number = int | float | Decimal

# One row of a points table: (comparison, threshold, points), e.g. (operator.ge, 30, 19) = "value >= 30 scores
# 19". Rows are tried in order and the first that holds gives the points; none holding scores 0.
Band = tuple[Callable[[float, float], bool], float, int]


def checked(name: str, value: Number, *, minimum: float = 0.0) -> float:
    """The value as a float, refusing booleans, NaN, infinities and values below ``minimum``."""
    if isinstance(value, bool) or not isinstance(value, int | float | Decimal):
        raise TypeError(f"{name} must be a number, got {value!r}")
    number = float(value)
    if not math.isfinite(number):
        raise ValueError(f"{name} must be a finite number, got {value!r}")
    if number < minimum:
        raise ValueError(f"{name} must be >= {minimum:g}, got {value!r}")
    return number


def checked_flag(name: str, value: object) -> bool:
    """A yes/no observation: only True or False (None is handled by the caller as 'not done')."""
    if not isinstance(value, bool):
        raise TypeError(f"{name} must be True or False, got {value!r}")
    return value


def exact_ratio(numerator: Number, denominator: Number) -> float:
    """numerator / denominator computed in decimal, so 34.2 / 17.1 is exactly 2.0 (binary float gives
    1.9999999999999998 for some such pairs, e.g. 102.6 / 17.1, and would drop a value below its threshold).
    """
    return float(Decimal(str(numerator)) / Decimal(str(denominator)))


def exact_product(a: Number, b: Number) -> float:
    """a * b computed in decimal (see :func:`exact_ratio`)."""
    return float(Decimal(str(a)) * Decimal(str(b)))


def band_points(value: float, bands: Iterable[Band]) -> int:
    """Points of the first row of ``bands`` whose comparison holds for ``value``; 0 if none does."""
    for compare, threshold, points in bands:
        if compare(value, threshold):
            return points
    return 0
