"""Slow, per-user reference implementation of SPEC §2–§4 (the test oracle).

This module is deliberately naive: one Python ``User`` object per user holding
that user's ratings, deliveries, NG list, avoided ingredients, favourite genres
and requests; plain Python loops; no vectorisation. It follows
``/work/shared/spec/SPEC.md`` literally so that the vectorised pipeline can be
compared against it on random lakes.

Entry points:

* :func:`reference_run` -- the whole run (§3 rules, §4 outputs, in memory).
* :func:`reference_state` -- the per-user state (latest ratings, C, priors,
  scores, eligibility...), for tests that want the intermediate numbers.
* :func:`reference_jitter` -- the splitmix64 jitter of §3, on Python ints.
* :func:`worked_example_tables` -- the lake of SPEC §5 as DataFrames.

Readings of the SPEC made here (where it leaves room):

* ``input_rows`` holds the raw row count of every required table (0 for a
  missing user-keyed table) and of ``stock`` when it is given.
  ``orphan_rows`` always holds the six user-keyed tables (0 when missing).
* A rating/delivery/... row is an orphan when its ``user_id`` is not in
  ``users`` (any status) or -- for tables with a ``snack_id`` -- its
  ``snack_id`` is not in ``snacks``. Orphans are dropped before anything else
  (C, priors, affinities, novelty, requests...).
* "until the box holds N": a stage adds candidates while ``len(box) < N``;
  with N <= len(box) it adds nothing (this also covers a negative
  ``K - explore_slots`` and ``max_requests = 0``).
* The genre cap counts every snack already in the box, whatever stage put it
  there.
* A zero prior denominator (``n + prior_weight == 0``) is undefined by the
  SPEC; the reference raises ``ValueError`` rather than guess.
"""

from __future__ import annotations

import dataclasses
import datetime as _dt
import math
from collections.abc import Iterable
from typing import Any

import numpy as np
import pandas as pd

# --------------------------------------------------------------------------
# Parameters (SPEC §3 table)
# --------------------------------------------------------------------------

DEFAULT_PARAMS: dict[str, Any] = {
    "default_box_size": 8,
    "max_requests": 2,
    "request_window_days": 90,
    "repeat_window_days": 60,
    "explore_slots": 2,
    "max_per_genre": 3,
    "prior_weight": 20,
    "own_weight_2": -1.0,
    "own_weight_3": 0.5,
    "own_weight_4": 1.5,
    "genre_weight": 0.5,
    "favorite_genre_bonus": 0.5,
    "new_days": 28,
    "new_bonus": 0.5,
    "explore_jitter": 0.5,
    "stock_max_rounds": 100,
}

INT_PARAMS = {
    "default_box_size",
    "max_requests",
    "request_window_days",
    "repeat_window_days",
    "explore_slots",
    "max_per_genre",
    "new_days",
}

USER_KEYED_TABLES = (
    "ratings",
    "deliveries",
    "ng_snacks",
    "avoid_ingredients",
    "genre_prefs",
    "requests",
)
TABLES_WITH_SNACK_ID = {"ratings", "deliveries", "ng_snacks", "requests"}
REQUIRED_TABLES = ("snacks", "users") + USER_KEYED_TABLES

STAGES = ("request", "preference", "explore", "fallback")

EPOCH = _dt.date(1970, 1, 1)
MASK64 = (1 << 64) - 1


def resolve_params(params: dict | None) -> dict[str, Any]:
    """Defaults of the SPEC §3 table overridden by ``params`` (by name)."""
    out = dict(DEFAULT_PARAMS)
    for name, value in (params or {}).items():
        if name not in DEFAULT_PARAMS:
            raise ValueError(f"unknown parameter: {name!r}")
        if name in INT_PARAMS:
            if isinstance(value, float) and not value.is_integer():
                raise ValueError(f"parameter {name!r} must be an integer, got {value!r}")
            out[name] = int(value)
        else:
            out[name] = value
    # Weights are used as doubles (the prior weight m too: m*C is a double).
    for name in DEFAULT_PARAMS:
        if name not in INT_PARAMS:
            out[name] = float(out[name])
    return out


# --------------------------------------------------------------------------
# Value normalisation
# --------------------------------------------------------------------------


def _is_null(x: Any) -> bool:
    if x is None or x is pd.NA or x is pd.NaT:
        return True
    if isinstance(x, (float, np.floating)) and math.isnan(x):
        return True
    if isinstance(x, np.datetime64) and np.isnat(x):
        return True
    return False


def to_date(x: Any) -> _dt.date | None:
    """A date-like value (date, datetime, Timestamp, datetime64, str) -> datetime.date."""
    if _is_null(x):
        return None
    if isinstance(x, pd.Timestamp):
        return x.date()
    if isinstance(x, _dt.datetime):
        return x.date()
    if isinstance(x, _dt.date):
        return x
    return pd.Timestamp(x).date()


def to_utc_timestamp(x: Any) -> pd.Timestamp:
    """A timestamp (naive = UTC, or tz-aware) -> naive pandas Timestamp in UTC."""
    t = pd.Timestamp(x)
    if t.tzinfo is not None:
        t = t.tz_convert("UTC").tz_localize(None)
    return t


def to_int(x: Any) -> int:
    return int(x)


def to_ingredients(x: Any) -> frozenset[str]:
    """``ingredients`` (list / ndarray / None) -> frozenset of strings."""
    if x is None:
        return frozenset()
    if isinstance(x, (list, tuple, np.ndarray, set, frozenset)):
        return frozenset(str(i) for i in x)
    if _is_null(x):
        return frozenset()
    return frozenset(str(i) for i in x)


def rnd6(x: float) -> float:
    """The SPEC's rounding: ``numpy.round(x, 6)`` on a double."""
    return float(np.round(np.float64(x), 6))


def _rows(df: pd.DataFrame | None, columns: Iterable[str]) -> list[tuple]:
    """The rows of ``df`` as tuples of Python objects, for the given columns."""
    if df is None or len(df) == 0:
        return []
    cols = [df[c].tolist() for c in columns]
    return list(zip(*cols, strict=False))


# --------------------------------------------------------------------------
# Jitter (splitmix64 on Python ints)
# --------------------------------------------------------------------------


def reference_jitter(user_id: int, snack_id: int, d: Any) -> float:
    """jitter(u, s, d) of SPEC §3, computed with Python ints modulo 2**64."""
    e = (to_date(d) - EPOCH).days
    x = (int(user_id) * 0x9E3779B97F4A7C15 + int(snack_id) * 0xC2B2AE3D27D4EB4F + e) & MASK64
    z = ((x ^ (x >> 30)) * 0xBF58476D1CE4E5B9) & MASK64
    z = ((z ^ (z >> 27)) * 0x94D049BB133111EB) & MASK64
    z = z ^ (z >> 31)
    return (z >> 11) / float(1 << 53)


# --------------------------------------------------------------------------
# Objects
# --------------------------------------------------------------------------


@dataclasses.dataclass
class Snack:
    snack_id: int
    name: str
    genre: str
    ingredients: frozenset[str]
    launched_on: _dt.date
    retired_on: _dt.date | None

    def in_lineup(self, d: _dt.date) -> bool:
        return self.launched_on <= d and (self.retired_on is None or self.retired_on > d)

    def is_new(self, d: _dt.date, new_days: int) -> bool:
        return d - _dt.timedelta(days=new_days) < self.launched_on <= d


@dataclasses.dataclass
class User:
    user_id: int
    status: str
    next_delivery_on: _dt.date | None
    box_size: int | None
    # snack_id -> set of (rated_at, rating) rows (set semantics)
    rating_rows: dict[int, set[tuple[pd.Timestamp, int]]] = dataclasses.field(default_factory=dict)
    # snack_id -> set of delivered_on dates
    deliveries: dict[int, set[_dt.date]] = dataclasses.field(default_factory=dict)
    ng: set[int] = dataclasses.field(default_factory=set)
    avoid: set[str] = dataclasses.field(default_factory=set)
    favourite_genres: set[str] = dataclasses.field(default_factory=set)
    # snack_id -> set of requested_at (naive UTC)
    requests: dict[int, set[pd.Timestamp]] = dataclasses.field(default_factory=dict)
    # snack_id -> latest rating; filled once every table is loaded
    latest: dict[int, int] = dataclasses.field(default_factory=dict)

    def latest_rating(self, snack_id: int) -> int | None:
        rows = self.rating_rows.get(snack_id)
        if not rows:
            return None
        best_at = None
        best_rating = None
        for rated_at, rating in rows:
            if best_at is None or rated_at > best_at:
                best_at, best_rating = rated_at, rating
            elif rated_at == best_at and rating < best_rating:
                best_rating = rating
        return best_rating

    def latest_ratings(self) -> dict[int, int]:
        out = {}
        for snack_id in self.rating_rows:
            out[snack_id] = self.latest_rating(snack_id)
        return out

    def box_k(self, default_box_size: int) -> int:
        return self.box_size if self.box_size is not None else default_box_size

    def is_target(self, date_from: _dt.date, date_to: _dt.date) -> bool:
        return (
            self.status == "active"
            and self.next_delivery_on is not None
            and date_from <= self.next_delivery_on <= date_to
        )


@dataclasses.dataclass
class ReferenceState:
    """Everything derived from the lake that does not depend on the run dates."""

    params: dict[str, Any]
    snacks: dict[int, Snack]
    users: dict[int, User]
    input_rows: dict[str, int]
    orphan_rows: dict[str, int]
    stock: dict[int, int] | None
    C: float
    # snack_id -> (n, S) over latest ratings
    rating_counts: dict[int, tuple[int, int]]

    # ---- §3 quantities -------------------------------------------------

    def prior(self, snack_id: int) -> float:
        n, s_sum = self.rating_counts.get(snack_id, (0, 0))
        m = self.params["prior_weight"]
        denominator = n + m
        if denominator == 0:
            raise ValueError("prior undefined: n + prior_weight == 0")
        return (s_sum + m * self.C) / denominator

    def affinity(self, user: User, genre: str) -> float:
        latest = user.latest
        if not latest:
            return 0.0
        total = 0
        count = 0
        g_total = 0
        g_count = 0
        for snack_id, rating in latest.items():
            total += rating
            count += 1
            if self.snacks[snack_id].genre == genre:
                g_total += rating
                g_count += 1
        if g_count == 0:
            return 0.0
        mu_u = total / count
        mu_ug = g_total / g_count
        return mu_ug - mu_u

    def own(self, user: User, snack_id: int) -> float:
        r = user.latest.get(snack_id)
        if r == 2:
            return self.params["own_weight_2"]
        if r == 3:
            return self.params["own_weight_3"]
        if r == 4:
            return self.params["own_weight_4"]
        return 0.0

    def score(self, user: User, snack_id: int) -> float:
        snack = self.snacks[snack_id]
        p = self.params
        favourite = 1.0 if snack.genre in user.favourite_genres else 0.0
        x = self.prior(snack_id)
        x = x + self.own(user, snack_id)
        x = x + p["genre_weight"] * self.affinity(user, snack.genre)
        x = x + p["favorite_genre_bonus"] * favourite
        return rnd6(x)

    def novel(self, user: User, snack_id: int) -> bool:
        return snack_id not in user.deliveries and snack_id not in user.rating_rows

    def explore_key(self, user: User, snack_id: int, d: _dt.date) -> float:
        snack = self.snacks[snack_id]
        p = self.params
        new = 1.0 if snack.is_new(d, p["new_days"]) else 0.0
        x = self.prior(snack_id)
        x = x + p["new_bonus"] * new
        x = x + p["explore_jitter"] * reference_jitter(user.user_id, snack_id, d)
        return rnd6(x)

    def eligible(self, user: User, snack_id: int, d: _dt.date) -> bool:
        snack = self.snacks[snack_id]
        # 1. in the lineup
        if not snack.in_lineup(d):
            return False
        # 2. not NG
        if snack_id in user.ng:
            return False
        # 3. no avoided ingredient
        for ingredient in snack.ingredients:
            if ingredient in user.avoid:
                return False
        # 4. latest rating is not 1
        if user.latest.get(snack_id) == 1:
            return False
        # 5. not delivered in [d - repeat_window_days, d - 1]
        first = d - _dt.timedelta(days=self.params["repeat_window_days"])
        last = d - _dt.timedelta(days=1)
        for delivered_on in user.deliveries.get(snack_id, set()):
            if first <= delivered_on <= last:
                return False
        return True

    def eligible_snacks(self, user: User, d: _dt.date) -> list[int]:
        return [s for s in sorted(self.snacks) if self.eligible(user, s, d)]

    def request_order(self, user: User, d: _dt.date) -> list[int]:
        """Requested snacks in the window, by earliest qualifying requested_at, then id."""
        first = d - _dt.timedelta(days=self.params["request_window_days"])
        last = d - _dt.timedelta(days=1)
        earliest: dict[int, pd.Timestamp] = {}
        for snack_id, times in user.requests.items():
            for t in times:
                if first <= t.date() <= last:
                    if snack_id not in earliest or t < earliest[snack_id]:
                        earliest[snack_id] = t
        return sorted(earliest, key=lambda s: (earliest[s], s))

    # ---- §3 selection --------------------------------------------------

    def assign_box(self, user: User, d: _dt.date,
                   unavailable: frozenset[int] = frozenset()) -> list[tuple[int, str]]:
        """The box of ``user`` for date ``d``: a list of (snack_id, stage).

        ``unavailable`` (SPEC §6): snacks treated as ineligible in all four stages.
        """
        p = self.params
        k = user.box_k(p["default_box_size"])
        eligible = [s for s in self.eligible_snacks(user, d) if s not in unavailable]
        eligible_set = set(eligible)
        box: list[tuple[int, str]] = []
        chosen: set[int] = set()
        genre_count: dict[str, int] = {}

        def run_stage(stage: str, candidates: list[int], target: int) -> None:
            for snack_id in candidates:
                if len(box) >= target:
                    return
                if snack_id in chosen:
                    continue
                genre = self.snacks[snack_id].genre
                if genre_count.get(genre, 0) >= p["max_per_genre"]:
                    continue
                box.append((snack_id, stage))
                chosen.add(snack_id)
                genre_count[genre] = genre_count.get(genre, 0) + 1

        # 1. request
        requested = [s for s in self.request_order(user, d) if s in eligible_set]
        run_stage("request", requested, min(p["max_requests"], k))

        # 2. preference (skipped if the box already holds K - explore_slots)
        by_score = sorted(eligible, key=lambda s: (-self.score(user, s), s))
        preference_target = k - p["explore_slots"]
        if len(box) < preference_target:
            run_stage("preference", by_score, preference_target)

        # 3. explore
        novel = [s for s in eligible if self.novel(user, s)]
        by_key = sorted(novel, key=lambda s: (-self.explore_key(user, s, d), s))
        run_stage("explore", by_key, k)

        # 4. fallback
        run_stage("fallback", by_score, k)
        return box


def reference_state(tables: dict[str, pd.DataFrame], params: dict | None = None) -> ReferenceState:
    """Build the snacks, the per-user objects, C and the rating counts."""
    p = resolve_params(params)

    input_rows: dict[str, int] = {}
    for name in REQUIRED_TABLES:
        df = tables.get(name)
        input_rows[name] = 0 if df is None else len(df)
    stock_df = tables.get("stock")
    if stock_df is not None:
        input_rows["stock"] = len(stock_df)

    # snacks (one row per snack_id; identical duplicates collapse)
    snacks: dict[int, Snack] = {}
    for snack_id, name, genre, ingredients, launched_on, retired_on in _rows(
        tables.get("snacks"),
        ["snack_id", "name", "genre", "ingredients", "launched_on", "retired_on"],
    ):
        sid = to_int(snack_id)
        if sid not in snacks:
            snacks[sid] = Snack(
                snack_id=sid,
                name=str(name),
                genre=str(genre),
                ingredients=to_ingredients(ingredients),
                launched_on=to_date(launched_on),
                retired_on=to_date(retired_on),
            )

    # users
    users: dict[int, User] = {}
    for user_id, status, next_delivery_on, box_size in _rows(
        tables.get("users"), ["user_id", "status", "next_delivery_on", "box_size"]
    ):
        uid = to_int(user_id)
        if uid not in users:
            users[uid] = User(
                user_id=uid,
                status=str(status),
                next_delivery_on=to_date(next_delivery_on),
                box_size=None if _is_null(box_size) else to_int(box_size),
            )

    orphan_rows = {name: 0 for name in USER_KEYED_TABLES}

    def known(table: str, user_id: int, snack_id: int | None = None) -> bool:
        ok = user_id in users and (snack_id is None or snack_id in snacks)
        if not ok:
            orphan_rows[table] += 1
        return ok

    for user_id, snack_id, rating, rated_at in _rows(
        tables.get("ratings"), ["user_id", "snack_id", "rating", "rated_at"]
    ):
        uid, sid = to_int(user_id), to_int(snack_id)
        if known("ratings", uid, sid):
            users[uid].rating_rows.setdefault(sid, set()).add(
                (to_utc_timestamp(rated_at), to_int(rating))
            )

    for user_id, snack_id, delivered_on in _rows(
        tables.get("deliveries"), ["user_id", "snack_id", "delivered_on"]
    ):
        uid, sid = to_int(user_id), to_int(snack_id)
        if known("deliveries", uid, sid):
            users[uid].deliveries.setdefault(sid, set()).add(to_date(delivered_on))

    for user_id, snack_id in _rows(tables.get("ng_snacks"), ["user_id", "snack_id"]):
        uid, sid = to_int(user_id), to_int(snack_id)
        if known("ng_snacks", uid, sid):
            users[uid].ng.add(sid)

    for user_id, ingredient in _rows(tables.get("avoid_ingredients"), ["user_id", "ingredient"]):
        uid = to_int(user_id)
        if known("avoid_ingredients", uid):
            users[uid].avoid.add(str(ingredient))

    for user_id, genre in _rows(tables.get("genre_prefs"), ["user_id", "genre"]):
        uid = to_int(user_id)
        if known("genre_prefs", uid):
            users[uid].favourite_genres.add(str(genre))

    for user_id, snack_id, requested_at in _rows(
        tables.get("requests"), ["user_id", "snack_id", "requested_at"]
    ):
        uid, sid = to_int(user_id), to_int(snack_id)
        if known("requests", uid, sid):
            users[uid].requests.setdefault(sid, set()).add(to_utc_timestamp(requested_at))

    stock: dict[int, int] | None = None
    if stock_df is not None:
        stock = {}
        for snack_id, quantity in _rows(stock_df, ["snack_id", "quantity"]):
            sid = to_int(snack_id)
            if sid in snacks and sid not in stock:
                stock[sid] = to_int(quantity)

    # C and per-snack (n, S) over every latest rating of every user (any status)
    total = 0
    count = 0
    rating_counts: dict[int, tuple[int, int]] = {}
    for uid in sorted(users):
        users[uid].latest = users[uid].latest_ratings()
        for sid, rating in users[uid].latest.items():
            total += rating
            count += 1
            n, s_sum = rating_counts.get(sid, (0, 0))
            rating_counts[sid] = (n + 1, s_sum + rating)
    c = total / count if count else 2.5

    return ReferenceState(
        params=p,
        snacks=snacks,
        users=users,
        input_rows=input_rows,
        orphan_rows=orphan_rows,
        stock=stock,
        C=c,
        rating_counts=rating_counts,
    )


# --------------------------------------------------------------------------
# The run
# --------------------------------------------------------------------------


@dataclasses.dataclass
class ReferenceResult:
    assignments: pd.DataFrame
    demand: pd.DataFrame
    shortage: pd.DataFrame | None
    users_targeted: int
    boxes_full: int
    boxes_short: int
    units_total: int
    input_rows: dict[str, int]
    orphan_rows: dict[str, int]


def reference_run(
    tables: dict[str, pd.DataFrame],
    date_from: _dt.date,
    date_to: _dt.date,
    params: dict | None = None,
) -> ReferenceResult:
    """Run SPEC §3 on the lake ``tables`` for target dates [date_from, date_to]."""
    state = reference_state(tables, params)
    p = state.params
    date_from = to_date(date_from)
    date_to = to_date(date_to)

    assignment_rows: list[dict[str, Any]] = []
    users_targeted = 0
    boxes_full = 0
    boxes_short = 0
    for uid in sorted(state.users):
        user = state.users[uid]
        if not user.is_target(date_from, date_to):
            continue
        users_targeted += 1
        d = user.next_delivery_on
        k = user.box_k(p["default_box_size"])
        box = state.assign_box(user, d)
        if len(box) < k:
            boxes_short += 1
        else:
            boxes_full += 1
        for slot, (snack_id, stage) in enumerate(box, start=1):
            assignment_rows.append(
                {
                    "delivery_on": d,
                    "user_id": uid,
                    "slot": slot,
                    "snack_id": snack_id,
                    "stage": stage,
                }
            )

    assignments = pd.DataFrame(
        {
            "delivery_on": pd.Series([r["delivery_on"] for r in assignment_rows], dtype=object),
            "user_id": pd.Series([r["user_id"] for r in assignment_rows], dtype="int64"),
            "slot": pd.Series([r["slot"] for r in assignment_rows], dtype="int64"),
            "snack_id": pd.Series([r["snack_id"] for r in assignment_rows], dtype="int64"),
            "stage": pd.Series([r["stage"] for r in assignment_rows], dtype=object),
        }
    )
    assignments = assignments.sort_values(["user_id", "slot"], kind="stable").reset_index(drop=True)

    # demand per (delivery_on, snack_id)
    demand_counts: dict[tuple[_dt.date, int], dict[str, int]] = {}
    for r in assignment_rows:
        key = (r["delivery_on"], r["snack_id"])
        counts = demand_counts.setdefault(key, {stage: 0 for stage in STAGES})
        counts[r["stage"]] += 1
    demand_keys = sorted(demand_counts)
    demand = pd.DataFrame(
        {
            "delivery_on": pd.Series([k[0] for k in demand_keys], dtype=object),
            "snack_id": pd.Series([k[1] for k in demand_keys], dtype="int64"),
            "units": pd.Series(
                [sum(demand_counts[k].values()) for k in demand_keys], dtype="int64"
            ),
            **{
                f"units_{stage}": pd.Series(
                    [demand_counts[k][stage] for k in demand_keys], dtype="int64"
                )
                for stage in STAGES
            },
        }
    )

    shortage = None
    if state.stock is not None:
        units_by_snack: dict[int, int] = {}
        for r in assignment_rows:
            units_by_snack[r["snack_id"]] = units_by_snack.get(r["snack_id"], 0) + 1
        snack_ids = sorted(units_by_snack)
        units = [units_by_snack[s] for s in snack_ids]
        stocks = [state.stock.get(s, 0) for s in snack_ids]
        shortage = pd.DataFrame(
            {
                "snack_id": pd.Series(snack_ids, dtype="int64"),
                "units": pd.Series(units, dtype="int64"),
                "stock": pd.Series(stocks, dtype="int64"),
                "shortage": pd.Series(
                    [max(u - st, 0) for u, st in zip(units, stocks, strict=False)], dtype="int64"
                ),
            }
        )

    return ReferenceResult(
        assignments=assignments,
        demand=demand,
        shortage=shortage,
        users_targeted=users_targeted,
        boxes_full=boxes_full,
        boxes_short=boxes_short,
        units_total=len(assignment_rows),
        input_rows=state.input_rows,
        orphan_rows=state.orphan_rows,
    )


# --------------------------------------------------------------------------
# The SPEC §5 worked example
# --------------------------------------------------------------------------

WORKED_EXAMPLE_DATE = _dt.date(2026, 12, 1)


def _dates(values: list) -> pd.Series:
    parsed = [None if v is None else _dt.date.fromisoformat(v) for v in values]
    return pd.Series(parsed, dtype=object)


def _ids(values: list) -> pd.Series:
    return pd.Series(values, dtype="int64")


def _timestamps(values: list[str]) -> pd.Series:
    return pd.Series(pd.to_datetime(values), dtype="datetime64[ns]")


def worked_example_tables() -> dict[str, pd.DataFrame]:
    """The lake of SPEC §5 (d = 2026-12-01), as pandas DataFrames.

    Ids are int64, dates are ``datetime.date`` objects in object columns,
    timestamps are naive (UTC) ``datetime64[ns]``.
    """
    snacks = pd.DataFrame(
        {
            "snack_id": _ids([1, 2, 3, 4, 5, 6]),
            "name": [
                "choco milk", "choco dark", "chips salt", "chips peanut", "gummy", "gummy new"
            ],
            "genre": ["choco", "choco", "chips", "chips", "gummy", "gummy"],
            "ingredients": pd.Series(
                [["milk"], [], None, ["peanut"], ["gelatin"], []], dtype=object
            ),
            "launched_on": _dates(
                ["2026-01-01", "2026-01-01", "2026-01-01", "2026-11-20", "2026-01-01", "2026-12-02"]
            ),
            "retired_on": _dates([None, None, None, None, "2026-12-01", None]),
        }
    )
    users = pd.DataFrame(
        {
            "user_id": _ids([10, 20, 30]),
            "status": ["active", "active", "paused"],
            "next_delivery_on": _dates(["2026-12-01", "2026-12-01", "2026-12-01"]),
            "box_size": pd.Series([3, None, 3], dtype="Int64"),
        }
    )
    ratings = pd.DataFrame(
        {
            "user_id": _ids([10, 10, 10, 20, 20, 30, 30]),
            "snack_id": _ids([1, 1, 3, 1, 1, 2, 4]),
            "rating": _ids([4, 1, 2, 4, 2, 4, 1]),
            "rated_at": _timestamps(
                [
                    "2026-10-01 00:00:00",
                    "2026-09-01 00:00:00",
                    "2026-10-05 12:00:00",
                    "2026-10-10 09:30:00",
                    "2026-10-10 09:30:00",
                    "2026-08-01 00:00:00",
                    "2026-08-02 00:00:00",
                ]
            ),
        }
    )
    deliveries = pd.DataFrame(
        {
            "user_id": _ids([20, 10]),
            "snack_id": _ids([3, 1]),
            "delivered_on": _dates(["2026-10-02", "2026-10-01"]),
        }
    )
    ng_snacks = pd.DataFrame({"user_id": _ids([10]), "snack_id": _ids([2])})
    avoid_ingredients = pd.DataFrame({"user_id": _ids([20]), "ingredient": ["peanut"]})
    genre_prefs = pd.DataFrame({"user_id": _ids([20, 10]), "genre": ["gummy", "chips"]})
    requests = pd.DataFrame(
        {
            "user_id": _ids([10, 10, 20]),
            "snack_id": _ids([4, 3, 2]),
            "requested_at": _timestamps(
                ["2026-11-30 23:59:59", "2026-09-02 00:00:00", "2026-12-01 00:00:00"]
            ),
        }
    )
    stock = pd.DataFrame({"snack_id": _ids([1, 3, 99]), "quantity": _ids([1, 5, 4])})
    return {
        "snacks": snacks,
        "users": users,
        "ratings": ratings,
        "deliveries": deliveries,
        "ng_snacks": ng_snacks,
        "avoid_ingredients": avoid_ingredients,
        "genre_prefs": genre_prefs,
        "requests": requests,
        "stock": stock,
    }


# --------------------------------------------------------------------------
# SPEC §6: stock-aware pre-assignment, a literal loop over rounds
# --------------------------------------------------------------------------


class StockRoundsExceeded(Exception):
    """Round ``stock_max_rounds`` still changed a cutoff."""

    def __init__(self, rounds: int, moved: list[int]):
        self.rounds, self.moved = rounds, moved
        super().__init__(f"stock_max_rounds={rounds} reached; cutoffs still moving: {moved}")


NO_LIMIT = None  # kappa = +infinity
NO_BOX = "no box"  # kappa = -infinity


@dataclasses.dataclass
class ReferenceStockResult:
    result: ReferenceResult  # the final boxes, as a SPEC §3 result
    reservations: pd.DataFrame
    rounds: int
    boxes_changed: int
    boxes_short_unconstrained: int
    units_unconstrained: int
    cutoffs: dict[int, Any]


def box_priority(user: User) -> tuple[_dt.date, float, int]:
    """pi(b) = (d, jitter(u, 0, d), u)."""
    d = user.next_delivery_on
    return (d, reference_jitter(user.user_id, 0, d), user.user_id)


def is_available(priority: tuple, cutoff: Any) -> bool:
    if cutoff is NO_LIMIT:
        return True
    if cutoff == NO_BOX:
        return False
    return priority <= cutoff


def _result_from_boxes(state: ReferenceState, boxes: dict[int, list[tuple[int, str]]],
                       targets: list[User]) -> ReferenceResult:
    rows = []
    full = short = 0
    for user in targets:
        box = boxes[user.user_id]
        if len(box) < user.box_k(state.params["default_box_size"]):
            short += 1
        else:
            full += 1
        for slot, (snack_id, stage) in enumerate(box, start=1):
            rows.append((user.next_delivery_on, user.user_id, slot, snack_id, stage))
    assignments = pd.DataFrame(rows, columns=["delivery_on", "user_id", "slot", "snack_id",
                                              "stage"]).astype({"user_id": "int64",
                                                                "slot": "int64",
                                                                "snack_id": "int64"})
    counts: dict[tuple, dict[str, int]] = {}
    for d, _u, _slot, s, stage in rows:
        c = counts.setdefault((d, s), {st: 0 for st in STAGES})
        c[stage] += 1
    keys = sorted(counts)
    demand = pd.DataFrame({
        "delivery_on": pd.Series([k[0] for k in keys], dtype=object),
        "snack_id": pd.Series([k[1] for k in keys], dtype="int64"),
        "units": pd.Series([sum(counts[k].values()) for k in keys], dtype="int64"),
        **{f"units_{st}": pd.Series([counts[k][st] for k in keys], dtype="int64")
           for st in STAGES},
    })
    return ReferenceResult(assignments=assignments, demand=demand, shortage=None,
                           users_targeted=len(targets), boxes_full=full, boxes_short=short,
                           units_total=len(rows), input_rows=state.input_rows,
                           orphan_rows=state.orphan_rows)


def reference_stock_run(
    tables: dict[str, pd.DataFrame],
    date_from: _dt.date,
    date_to: _dt.date,
    params: dict | None = None,
) -> ReferenceStockResult:
    """Run SPEC §6 on the lake ``tables``: rounds of SPEC §3 boxes under snack cutoffs.

    Raises:
        ValueError: the lake has no stock table.
        StockRoundsExceeded: round ``stock_max_rounds`` still changed a cutoff.
    """
    state = reference_state(tables, params)
    if state.stock is None:
        raise ValueError("a stock-aware run needs the stock table")
    p = state.params
    date_from, date_to = to_date(date_from), to_date(date_to)
    targets = [state.users[u] for u in sorted(state.users)
               if state.users[u].is_target(date_from, date_to)]
    priority = {u.user_id: box_priority(u) for u in targets}
    stock = {s: state.stock.get(s, 0) for s in state.snacks}
    cutoff: dict[int, Any] = {s: NO_LIMIT for s in state.snacks}
    first: dict[int, list[tuple[int, str]]] | None = None
    rounds = 0
    while True:
        rounds += 1
        boxes = {}
        for user in targets:
            unavailable = frozenset(s for s in state.snacks
                                    if not is_available(priority[user.user_id], cutoff[s]))
            boxes[user.user_id] = state.assign_box(user, user.next_delivery_on, unavailable)
        if first is None:
            first = boxes
        holders: dict[int, list[tuple]] = {}
        for uid, box in boxes.items():
            for s, _stage in box:
                holders.setdefault(s, []).append(priority[uid])
        moved = []
        for s in sorted(holders):
            q = stock[s]
            if len(holders[s]) > q:
                new = NO_BOX if q == 0 else sorted(holders[s])[q - 1]
                if new != cutoff[s]:
                    cutoff[s] = new
                    moved.append(s)
        if not moved:
            break
        if rounds >= p["stock_max_rounds"]:
            raise StockRoundsExceeded(rounds, moved)
    assert first is not None
    result = _result_from_boxes(state, boxes, targets)
    unconstrained = _result_from_boxes(state, first, targets)

    def holders_of(bx: dict[int, list[tuple[int, str]]]) -> dict[int, set[int]]:
        out: dict[int, set[int]] = {}
        for uid, box in bx.items():
            for s, _stage in box:
                out.setdefault(s, set()).add(uid)
        return out

    before, after = holders_of(first), holders_of(boxes)
    snacks = sorted(set(before) | set(after))
    rows = []
    for s in snacks:
        b, a = before.get(s, set()), after.get(s, set())
        k = cutoff[s]
        rows.append({
            "snack_id": s, "stock": stock[s], "units_unconstrained": len(b), "units": len(a),
            "units_left": stock[s] - len(a), "boxes_lost": len(b - a), "boxes_gained": len(a - b),
            "limited": k is not NO_LIMIT,
            "cutoff_on": k[0] if isinstance(k, tuple) else None,
        })
    reservations = pd.DataFrame(rows, columns=["snack_id", "stock", "units_unconstrained",
                                               "units", "units_left", "boxes_lost",
                                               "boxes_gained", "limited", "cutoff_on"])
    changed = sum(1 for u in boxes if {s for s, _ in boxes[u]} != {s for s, _ in first[u]})
    return ReferenceStockResult(
        result=result, reservations=reservations, rounds=rounds, boxes_changed=changed,
        boxes_short_unconstrained=unconstrained.boxes_short,
        units_unconstrained=unconstrained.units_total, cutoffs=cutoff)
