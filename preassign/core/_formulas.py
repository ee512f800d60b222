"""The compiled per-element formulas of SPEC §3 (numba ``vectorize``).

Read through :mod:`preassign.core.rules`, which documents them and loads this module on
first use.

Each one broadcasts over numpy arrays (the dense engine, explain) and is a plain inlined
function when called on scalars from compiled code (the kernel). Floating point: terms are
added left to right in the order SPEC §3 writes them, without ``fastmath``.
"""

from __future__ import annotations

import numpy as np
from numba import vectorize

from .rules import _GOLDEN, _MIX1, _MIX2, _SNACK_MIX, _TWO_POW_MINUS_53, KEY_SCALE

__all__ = ["affinity", "explore_key", "in_lineup", "in_window", "is_new", "jitter",
           "micro_units", "score"]


@vectorize(["float64(int64, int64, int64)"], nopython=True, cache=True)
def jitter(user_id: int, snack_id: int, day: int) -> float:  # pragma: no cover - compiled
    """splitmix64 jitter in [0, 1) per (user, snack, day), arithmetic modulo 2**64.

    ``day`` is days since 1970-01-01. Broadcasts like a ufunc; callable from compiled code.

    Examples:
        >>> float(jitter(1, 1, 20788))
        0.7564211760476489
    """
    x = np.uint64(user_id) * _GOLDEN + np.uint64(snack_id) * _SNACK_MIX + np.uint64(day)
    z = (x ^ (x >> np.uint64(30))) * _MIX1
    z = (z ^ (z >> np.uint64(27))) * _MIX2
    z = z ^ (z >> np.uint64(31))
    return np.float64(z >> np.uint64(11)) * _TWO_POW_MINUS_53


@vectorize(["boolean(int64, int64, int64)"], nopython=True, cache=True)
def in_lineup(launched_on: int, retired_on: int, day: int) -> bool:  # pragma: no cover
    """Eligibility rule 1: ``launched_on <= d`` and ``retired_on`` (NEVER if null) ``> d``."""
    return launched_on <= day and retired_on > day


@vectorize(["boolean(int64, int64, int64)"], nopython=True, cache=True)
def in_window(on: int, day: int, window_days: int) -> bool:  # pragma: no cover - compiled
    """Whether day ``on`` lies in ``[day - window_days, day - 1]`` (request and repeat windows)."""
    return on >= day - window_days and on <= day - 1


@vectorize(["boolean(int64, int64, int64)"], nopython=True, cache=True)
def is_new(launched_on: int, day: int, new_days: int) -> bool:  # pragma: no cover - compiled
    """A snack is new on d if ``d - new_days < launched_on <= d``."""
    return day - new_days < launched_on and launched_on <= day


@vectorize(["float64(float64, float64, float64, float64)"], nopython=True, cache=True)
def affinity(genre_sum: float, genre_count: float, user_sum: float,
             user_count: float) -> float:  # pragma: no cover - compiled
    """The genre affinity of SPEC §3.

    affinity(u, g) = mean of u's latest ratings in g - mean of all of u's latest ratings
    (0 when u has no latest rating in g).
    """
    if genre_count > 0:
        return genre_sum / genre_count - user_sum / user_count
    return 0.0


@vectorize(["float64(float64, float64, float64, float64, float64, float64)"], nopython=True,
           cache=True)
def score(prior: float, own: float, affinity: float, favorite: float, genre_weight: float,
          favorite_bonus: float) -> float:  # pragma: no cover - compiled
    """The score of SPEC §3, terms added left to right.

    score(u, s) = prior + own + genre_weight * affinity + favorite_genre_bonus * [favourite]
    (``favorite`` is 1.0 or 0.0).
    """
    x = prior + own
    x = x + genre_weight * affinity
    return x + favorite_bonus * favorite


@vectorize(["float64(float64, float64, float64, float64, float64)"], nopython=True, cache=True)
def explore_key(prior: float, new: float, jitter_value: float, new_bonus: float,
                jitter_weight: float) -> float:  # pragma: no cover - compiled
    """The exploration key of SPEC §3.

    explore_key(u, s, d) = prior + new_bonus * [new on d] + explore_jitter * jitter
    (``new`` is 1.0 or 0.0).
    """
    x = prior + new_bonus * new
    return x + jitter_weight * jitter_value


@vectorize(["float64(float64)"], nopython=True, cache=True)
def micro_units(x: float) -> float:  # pragma: no cover - compiled
    """``rint(x * 1e6)``: orders exactly as ``numpy.round(x, 6)`` and is an exact integer."""
    return np.rint(x * KEY_SCALE)
