"""The rules' constants and small formulas of SPEC §3 and §6, written once.

Both engines (:mod:`preassign.core.dense` over arrays, :mod:`preassign.core.sparse` with its
compiled kernel) and :mod:`preassign.explain` call these; nothing else in the package
spells a weight, a window, the jitter constants or the rounding of keys. The per-element
formulas are numba ``vectorize`` functions: called with numpy arrays they broadcast like
ufuncs, called with scalars from compiled code they are plain inlined functions - one
definition serves both engines, so the engines cannot drift apart.

Floating point: every formula adds its terms left to right in the order SPEC §3 writes
them, in double precision, and numba compiles without ``fastmath`` (no contraction or
reordering), so an array result and a scalar result are bit for bit the same.
"""

from __future__ import annotations

import datetime as dt

import numpy as np
from numba import vectorize

__all__ = [
    "EPOCH",
    "KEY_SCALE",
    "NEVER",
    "NS_PER_DAY",
    "STAGES",
    "STAGE_REQUEST",
    "STAGE_PREFERENCE",
    "STAGE_EXPLORE",
    "STAGE_FALLBACK",
    "DISLIKE",
    "affinity",
    "explore_key",
    "from_days",
    "in_lineup",
    "in_window",
    "is_new",
    "jitter",
    "key_limit",
    "micro_units",
    "own_weights",
    "prior_mean",
    "score",
    "snack_prior",
    "to_days",
]

#: The four stages of the selection, in the order they fill a box (their index is the
#: ``stage`` code used inside the engines).
STAGES = ("request", "preference", "explore", "fallback")
STAGE_REQUEST, STAGE_PREFERENCE, STAGE_EXPLORE, STAGE_FALLBACK = range(4)

#: Day 0 of the day numbers (the SPEC's ``e`` counts days from it).
EPOCH = dt.date(1970, 1, 1)
#: Nanoseconds per day (timestamps are UTC nanoseconds; their UTC date is ``t // NS_PER_DAY``).
NS_PER_DAY = 86_400 * 1_000_000_000
#: ``retired_on`` of a snack that is not retired: after every date.
NEVER = np.iinfo(np.int32).max
#: A latest rating of 1 (dislike) makes a snack ineligible.
DISLIKE = 1
#: The mean of all latest ratings when the lake has none.
DEFAULT_MEAN_RATING = 2.5
#: Scores and keys are compared after ``numpy.round(x, 6)``; ``rint(x * KEY_SCALE)`` has the
#: same order and is an exact integer, which the engines pack into int64 keys.
KEY_SCALE = 1e6

# splitmix64 (SPEC §3, "Jitter")
_GOLDEN = np.uint64(0x9E3779B97F4A7C15)
_SNACK_MIX = np.uint64(0xC2B2AE3D27D4EB4F)
_MIX1 = np.uint64(0xBF58476D1CE4E5B9)
_MIX2 = np.uint64(0x94D049BB133111EB)
_TWO_POW_MINUS_53 = 1.0 / 9007199254740992.0


def to_days(d: dt.date) -> int:
    """Days from 1970-01-01 to ``d`` (the SPEC's ``e``).

    Examples:
        >>> to_days(dt.date(2026, 12, 1))
        20788
    """
    return (d - EPOCH).days


def from_days(days: int) -> dt.date:
    """The date ``days`` after 1970-01-01.

    Examples:
        >>> from_days(20788)
        datetime.date(2026, 12, 1)
    """
    return EPOCH + dt.timedelta(days=int(days))


def own_weights(params: object) -> np.ndarray:
    """own(u, s) by latest rating 0..4 (0 = unrated): ``[0, 0, w2, w3, w4]``.

    A rating of 1 makes the snack ineligible, so its weight is never used.
    """
    return np.array([0.0, 0.0, float(params.own_weight_2), float(params.own_weight_3),  # type: ignore[attr-defined]
                     float(params.own_weight_4)], np.float64)  # type: ignore[attr-defined]


def prior_mean(rating_sum: np.ndarray, rating_count: np.ndarray) -> float:
    """C: the mean of all latest ratings (2.5 when there are none)."""
    total = int(np.asarray(rating_count).sum())
    return int(np.asarray(rating_sum).sum()) / total if total else DEFAULT_MEAN_RATING


def snack_prior(rating_sum: np.ndarray, rating_count: np.ndarray, params: object) -> np.ndarray:
    """prior(s) = (S + m*C) / (n + m) per snack, C the mean of all latest ratings.

    Examples:
        >>> snack_prior(np.array([6, 4]), np.array([2, 1]), type("P", (), {"prior_weight": 20})())
        array([3.3030303 , 3.36507937])
    """
    c = prior_mean(rating_sum, rating_count)
    m = params.prior_weight  # type: ignore[attr-defined]
    return (np.asarray(rating_sum).astype(np.float64) + m * c) / (
        np.asarray(rating_count).astype(np.float64) + m)


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


def key_limit(bits: int) -> float:
    """The largest ``micro_units`` magnitude that packs exactly with ``bits`` low bits."""
    return float(2 ** (62 - bits))
