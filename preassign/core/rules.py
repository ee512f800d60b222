"""The rules' constants and small formulas of SPEC §3 and §6, written once.

Both engines (:mod:`preassign.core.dense` over arrays, :mod:`preassign.core.sparse` with its
compiled kernel) and :mod:`preassign.explain` call these; nothing else in the package
spells a weight, a window, the jitter constants or the rounding of keys. The per-element
formulas (``jitter``, ``in_lineup``, ``in_window``, ``is_new``, ``affinity``, ``score``,
``explore_key``, ``micro_units``) are numba ``vectorize`` functions, written in
:mod:`preassign.core._formulas` and read here: called with numpy arrays they broadcast like
ufuncs, called with scalars from compiled code they are plain inlined functions - one
definition serves both engines, so the engines cannot drift apart. They are loaded on
first use (compiling or loading them costs about half a second), so a process that only
needs the constants and the prior - the client of a run - never loads numba.

Floating point: every formula adds its terms left to right in the order SPEC §3 writes
them, in double precision, and numba compiles without ``fastmath`` (no contraction or
reordering), so an array result and a scalar result are bit for bit the same.
"""

from __future__ import annotations

import datetime as dt
from typing import TYPE_CHECKING, Any

import numpy as np

if TYPE_CHECKING:  # the compiled formulas: loaded on first use, see __getattr__ at the end
    from ._formulas import (
        affinity,
        explore_key,
        in_lineup,
        in_window,
        is_new,
        jitter,
        micro_units,
        score,
    )

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


def key_limit(bits: int) -> float:
    """The largest ``micro_units`` magnitude that packs exactly with ``bits`` low bits."""
    return float(2 ** (62 - bits))


#: The compiled per-element formulas, loaded from :mod:`preassign.core._formulas` on first use.
_FORMULAS = ("jitter", "in_lineup", "in_window", "is_new", "affinity", "score", "explore_key",
             "micro_units")


def __getattr__(name: str) -> Any:
    """Load the compiled formulas on first use (PEP 562); see the module docstring."""
    if name in _FORMULAS:
        from . import _formulas

        return getattr(_formulas, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
