"""The formulas of preassign.core.rules: SPEC §3's jitter vectors, exact key ordering, and one
definition serving arrays and compiled code alike."""

from __future__ import annotations

import datetime as dt

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st
from numba import njit

from preassign.core import rules
from preassign.core.dense import ordered_keys as _ordered_keys
from preassign.core.rules import jitter, to_days
from tests.oracle.reference import reference_jitter


@pytest.mark.parametrize(
    "user, snack, day, expected",
    [(1, 1, dt.date(2026, 12, 1), 0.7564211760476489),
     (123456789, 42, dt.date(2026, 12, 1), 0.10511997332800516),
     (987654321012, 300, dt.date(2027, 1, 15), 0.10719858741395072)],
)
def test_jitter_spec_vectors(user, snack, day, expected):
    got = jitter(np.array([user]), np.array([snack]), np.array([to_days(day)]))[0]
    assert got == expected


@given(st.integers(-(2**62), 2**62), st.integers(-(2**40), 2**40), st.dates())
def test_jitter_matches_python_int_splitmix(user, snack, day):
    got = jitter(np.array([user]), np.array([snack]), np.array([to_days(day)]))[0]
    assert got == reference_jitter(user, snack, day)


@given(st.lists(st.floats(-50, 50, allow_nan=False), min_size=2, max_size=40))
def test_integer_keys_order_exactly_like_numpy_round(values):
    x = np.array(values)[None, :]
    keys = _ordered_keys(x, bits=6)[0]
    r = np.round(x[0], 6)
    for i in range(len(values)):
        for j in range(len(values)):
            # key_i > key_j  <=>  round_i > round_j, or equal and column i < column j
            expect = r[i] > r[j] or (r[i] == r[j] and i < j)
            assert (keys[i] > keys[j]) == expect



@njit
def _scalar_jitter(user, snack, day):
    return jitter(user, snack, day)


@given(st.integers(-(2**62), 2**62), st.integers(0, 2**40), st.integers(0, 40_000))
def test_compiled_and_array_formulas_are_the_same_bits(user, snack, day):
    assert _scalar_jitter(user, snack, day) == jitter(np.array([user]), np.array([snack]),
                                                      np.array([day]))[0]


@given(st.floats(0, 5), st.floats(-2, 2), st.floats(-3, 3), st.booleans(), st.floats(-1, 1),
       st.floats(-1, 1))
def test_score_adds_its_terms_left_to_right(prior, own, aff, fav, gw, fb):
    expected = ((prior + own) + gw * aff) + fb * float(fav)
    assert rules.score(prior, own, aff, float(fav), gw, fb) == expected


def test_windows_new_on_d_and_the_lineup_follow_spec_3():
    d = to_days(dt.date(2026, 12, 1))
    # [d - 60, d - 1]: d - 60 is inside, d - 61 and d are not
    assert [bool(rules.in_window(d - k, d, 60)) for k in (61, 60, 1, 0)] == \
        [False, True, True, False]
    # new on d: d - new_days < launched_on <= d
    assert [bool(rules.is_new(d - k, d, 28)) for k in (28, 27, 0, -1)] == [False, True, True, False]
    # retired_on is not after d -> out of the lineup; launched after d -> not yet in it
    assert not rules.in_lineup(d - 10, d, d) and rules.in_lineup(d - 10, d + 1, d)
    assert not rules.in_lineup(d + 1, rules.NEVER, d)


def test_own_weights_and_prior_mean():
    class P:
        own_weight_2, own_weight_3, own_weight_4, prior_weight = -1.0, 0.5, 1.5, 20

    assert rules.own_weights(P()).tolist() == [0.0, 0.0, -1.0, 0.5, 1.5]
    assert rules.prior_mean(np.zeros(3, np.int64), np.zeros(3, np.int64)) == 2.5
    # C = 13 / 5 = 2.6 as in SPEC §5: (6 + 52) / 22 and (7 + 52) / 23
    assert np.round(rules.snack_prior(np.array([6, 7]), np.array([2, 3]), P()), 6).tolist() == \
        [2.636364, 2.565217]
