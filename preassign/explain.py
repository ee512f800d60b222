"""Why a user's box holds what it holds: one user, the pure core, and the numbers behind it.

Design
------
:func:`explain_box` re-runs the same pure functions as the pipeline
(:func:`~preassign.core.partition.prepare_partition`, the dense engine's
:func:`~preassign.core.dense.build_user_state` and :func:`~preassign.core.dense.assign_snacks`,
the formulas of :mod:`preassign.core.rules`) on a "partition" of exactly one user, so the box
it explains is the box the run assigned, not a re-implementation of the rules. (Runs use
the compiled kernel by default, ``RunConfig(engine="numba")``, which the tests hold equal
to the dense engine; the explain tests compare explained boxes with the run's
``assignments/``.)

Only that user's rows are read: each user-keyed table is opened as a
:mod:`pyarrow.dataset` with a ``user_id == u`` filter (row groups that cannot hold the
user are skipped by their statistics), and on a co-partitioned lake only the one file
whose ``_lake.json`` range holds the user is opened.

The snack priors are the one input that depends on the whole lake (every user's latest
ratings). With ``out_dir`` they come from the run's ``snack_prior/`` output (per-snack
sums and counts of latest ratings, a few hundred rows). Without it they are recomputed
from the lake's whole ``users`` and ``ratings`` tables, one co-partitioned file pair at a
time (a lake without ``_lake.json`` is read whole): fine for small lakes and tests, slow
for a lake of millions of users. Pass the run's output whenever you have it.
"""

from __future__ import annotations

import bisect
import datetime as dt
import json
import posixpath
from collections.abc import Mapping
from typing import Any

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from .core import rules
from .core.catalog import SnackCatalog
from .core.contract import NO_DATE, STATUSES, USER_KEYED, LakeError, empty_table
from .core.dense import (
    UserState,
    assign_snacks,
    build_user_state,
    explore_key_matrix,
    rating_totals,
    score_matrix,
)
from .core.params import Params
from .core.partition import prepare_partition
from .core.rules import STAGES, jitter, snack_prior
from .core.stock import Cutoffs, box_keys
from .lake import Lake, load_catalog, open_lake, read_table_files
from .storage import open_location

__all__ = ["explain_box", "first_assigned_user", "EXPLAIN_COLUMNS"]

#: Columns of the frame :func:`explain_box` returns, in order.
EXPLAIN_COLUMNS = [
    "user_id", "delivery_on", "slot", "snack_id", "name", "genre", "stage",
    "requested_at", "latest_rating", "score", "prior", "own_term", "genre_term",
    "favorite_term", "explore_key", "new_bonus_term", "jitter", "reason",
]
_EPOCH = rules.EPOCH
_RATING_WORDS = {1: "dislike", 2: "so-so", 3: "like", 4: "love"}


# --------------------------------------------------------------------------------------------
# reading


def _as_date(value: dt.date | str, name: str) -> dt.date:
    if isinstance(value, dt.datetime):
        return value.date()
    if isinstance(value, dt.date):
        return value
    if isinstance(value, str):
        try:
            return dt.date.fromisoformat(value)
        except ValueError:
            pass
    raise ValueError(
        f"{name} must be a date or an ISO date string like '2026-12-01', got {value!r}")


def _out_fs(out_dir: str, storage_options: Mapping[str, Any] | None) -> tuple[Any, str]:
    out = open_location(out_dir, storage_options, flag="out_dir")
    return out.fs, out.path


def _read_summary(out_dir: str, storage_options: Mapping[str, Any] | None) -> dict[str, Any]:
    fs, path = _out_fs(out_dir, storage_options)
    summary = posixpath.join(path, "summary.json")
    if not fs.isfile(summary):
        raise FileNotFoundError(
            f"run output {out_dir!r} has no summary.json, so it is not a complete run; "
            "pass the --out of a finished run, or out_dir=None to recompute the priors"
        )
    return json.loads(fs.cat_file(summary))


def _read_output_table(out_dir: str, name: str, columns: list[str],
                       storage_options: Mapping[str, Any] | None) -> pa.Table:
    fs, path = _out_fs(out_dir, storage_options)
    base = posixpath.join(path, name)
    files = sorted(f for f in (fs.find(base) if fs.isdir(base) else [])
                   if f.endswith(".parquet") and not posixpath.basename(f).startswith(("_", ".")))
    if not files:
        raise FileNotFoundError(f"run output {out_dir!r} has no {name}/ Parquet files")
    tables = []
    for f in files:
        with fs.open(f, "rb") as fh:
            tables.append(pq.read_table(fh, columns=columns))
    return pa.concat_tables(tables, promote_options="permissive")


def first_assigned_user(out_dir: str, storage_options: Mapping[str, Any] | None = None) -> int:
    """The smallest ``user_id`` that has a box in the run at ``out_dir``.

    Raises:
        LookupError: the run assigned no box.
    """
    table = _read_output_table(out_dir, "assignments", ["user_id"], storage_options)
    if table.num_rows == 0:
        raise LookupError(f"run output {out_dir!r} assigned no box, so there is no user to explain")
    return int(pc.min(table["user_id"]).as_py())


def _scan(lake: Lake, name: str, files: list[str], user_id: int | None = None) -> pd.DataFrame:
    """Raw rows of one table from ``files`` (all of them, or one user's)."""
    if not files:
        return empty_table(name)
    table = read_table_files(lake, name, files)
    if user_id is not None:
        table = table.filter(pc.equal(table["user_id"], pa.scalar(user_id, pa.int64())))
    return table.to_pandas(types_mapper=pd.ArrowDtype)


def _partition_files(lake: Lake) -> list[dict[str, list[str]]]:
    """Per partition, each user-keyed table's files (one partition when there is no manifest)."""
    fast = lake.fast_path_files()
    if fast is None:
        return [{name: lake.files(name) for name in USER_KEYED}]
    n = int(lake.manifest["partitions"])  # type: ignore[index]
    return [{name: [fast[name][i]] for name in USER_KEYED} for i in range(n)]


def _user_files(lake: Lake, user_id: int) -> dict[str, list[str]]:
    fast = lake.fast_path_files()
    if fast is None:
        return {name: lake.files(name) for name in USER_KEYED}
    bounds = lake.manifest["bounds"]  # type: ignore[index]
    i = bisect.bisect_right(bounds, user_id) - 1
    if not 0 <= i < len(bounds) - 1:
        return {name: [] for name in USER_KEYED}
    return {name: [fast[name][i]] for name in USER_KEYED}


def _load_prior(out_dir: str, catalog: SnackCatalog, params: Params,
                storage_options: Mapping[str, Any] | None) -> np.ndarray:
    table = _read_output_table(out_dir, "snack_prior",
                               ["snack_id", "ratings_count", "ratings_sum"], storage_options)
    frame = table.to_pandas().set_index("snack_id")
    missing = np.setdiff1d(catalog.snack_id, frame.index.to_numpy(np.int64))
    if len(missing):
        raise LakeError(
            f"run output {out_dir!r} has no prior for {len(missing)} snack(s) of the lake "
            f"(e.g. snack_id={int(missing[0])}); it was made from another lake or an older "
            "snacks table - pass the matching run, or out_dir=None to recompute the priors"
        )
    frame = frame.reindex(catalog.snack_id)
    # Same integers and the same formula as the run: the priors are bitwise equal.
    return snack_prior(frame["ratings_sum"].to_numpy(np.int64),
                       frame["ratings_count"].to_numpy(np.int64), params)


def _compute_prior(
    lake: Lake, catalog: SnackCatalog, params: Params, on_invalid: str
) -> np.ndarray:
    sums = np.zeros(catalog.size, np.int64)
    counts = np.zeros(catalog.size, np.int64)
    for files in _partition_files(lake):
        names = ("users", "ratings")
        raw = {name: _scan(lake, name, files[name]) for name in names}
        tables, _, _, _ = prepare_partition(raw, catalog, on_invalid=on_invalid, names=names)
        s, c = rating_totals(tables, catalog)
        sums += s
        counts += c
    return snack_prior(sums, counts, params)


# --------------------------------------------------------------------------------------------
# explaining


def _not_targeted(user_id: int, users: pd.DataFrame, date_from: dt.date, date_to: dt.date) -> str:
    if users.empty:
        return f"user {user_id} is not in the lake's users table"
    row = users.iloc[0]
    status = STATUSES[int(row["status"])]
    day = int(row["next_delivery_on"])
    if status != "active":
        return (f"user {user_id} is not targeted: status is {status!r} "
                "(only 'active' users get a box)")
    if day == NO_DATE:
        return f"user {user_id} is not targeted: next_delivery_on is null"
    on = _EPOCH + dt.timedelta(days=day)
    return (f"user {user_id} is not targeted: next_delivery_on {on} is outside "
            f"[{date_from}, {date_to}]; widen the dates to include it")


def _fmt(x: Any, sign: bool = False) -> str:
    return f"{x:+.2f}" if sign else f"{x:.3f}"


def _reasons(frame: pd.DataFrame, params: Params, day: dt.date,
             launched: list[dt.date]) -> list[str]:
    out = []
    for i, r in enumerate(frame.itertuples(index=False)):
        if r.stage == "request":
            out.append(
                f"requested {r.requested_at:%Y-%m-%d %H:%M:%S} UTC, within the "
                f"{params.request_window_days} days before {day}; requests go first, earliest "
                f"first (at most {params.max_requests})"
            )
            continue
        if r.stage == "explore":
            new = (f" + new {_fmt(r.new_bonus_term, True)} (launched {launched[i]})"
                   if r.new_bonus_term else "")
            out.append(
                f"new to the user (never delivered or rated): explore key {_fmt(r.explore_key)} "
                f"= prior {_fmt(r.prior)}{new} + jitter {params.explore_jitter:g} x {r.jitter:.3f}"
            )
            continue
        latest: Any = r.latest_rating
        rating = "unrated" if pd.isna(latest) else \
            f"rated {int(latest)}, {_RATING_WORDS[int(latest)]}"
        terms = (f"score {_fmt(r.score)} = prior {_fmt(r.prior)} + own "
                 f"{_fmt(r.own_term, True)} ({rating}) + genre {_fmt(r.genre_term, True)} "
                 f"+ favourite {_fmt(r.favorite_term, True)}")
        if r.stage == "preference":
            out.append(f"among the best scores left: {terms}")
        else:
            out.append(f"box not full after exploring, next best score: {terms}")
    return out


def _explain(state: UserState, catalog: SnackCatalog, prior: np.ndarray,
             params: Params, cutoffs: Cutoffs | None = None) -> pd.DataFrame:
    box = assign_snacks(state, catalog, prior, params, cutoffs)
    col = catalog.columns_of(box["snack_id"].to_numpy(np.int64))[0]
    stage = np.array(STAGES, dtype=object)[box["stage"].to_numpy(np.int64)]
    day = int(state.delivery_on[0])
    n = len(box)

    def only(mask: np.ndarray, values: np.ndarray) -> np.ndarray:
        return np.where(mask, np.round(values, 6), np.nan)

    scored = np.isin(stage, ("preference", "fallback"))
    explored = stage == "explore"
    rating = state.rating[0, col].astype(np.int64)
    own_of = rules.own_weights(params)
    genre = catalog.genre[col]
    score = score_matrix(state, catalog, prior, params)[0, col]
    key = explore_key_matrix(state, catalog, prior, params)[0, col]
    launched = catalog.launched_on[col].astype(np.int64)
    is_new = rules.is_new(launched, day, params.new_days)
    jit = jitter(state.user_id[0], catalog.snack_id[col], day) if n else np.zeros(0)
    requested = dict(zip(state.request_col[state.request_row == 0].tolist(),
                         state.request_at[state.request_row == 0].tolist(), strict=False))
    req_ns = [requested.get(int(c)) if s == "request" else None
              for c, s in zip(col, stage, strict=True)]
    names = catalog.names
    frame = pd.DataFrame({
        "user_id": np.full(n, int(state.user_id[0]), np.int64),
        "delivery_on": [_EPOCH + dt.timedelta(days=day)] * n,
        "slot": box["slot"].to_numpy(np.int64),
        "snack_id": box["snack_id"].to_numpy(np.int64),
        "name": names[col] if n else np.zeros(0, object),
        "genre": np.array(catalog.genres, dtype=object)[genre] if n else np.zeros(0, object),
        "stage": stage,
        "requested_at": pd.to_datetime(pd.Series(req_ns, dtype="Int64"), unit="ns", utc=True),
        "latest_rating": pd.array([int(r) if r else None for r in rating], dtype="Int8"),
        "score": only(scored, score),
        "prior": only(scored | explored, prior[col]),
        "own_term": only(scored, own_of[rating]),
        "genre_term": only(scored, params.genre_weight * state.affinity[0, genre]),
        "favorite_term": only(scored, params.favorite_genre_bonus * state.favorite[0, genre]),
        "explore_key": only(explored, key),
        "new_bonus_term": only(explored, params.new_bonus * is_new),
        "jitter": only(explored, jit),
    })
    launched_on = [_EPOCH + dt.timedelta(days=int(d)) for d in launched]
    frame["reason"] = _reasons(frame, params, _EPOCH + dt.timedelta(days=day), launched_on)
    frame.attrs.update(user_id=int(state.user_id[0]), delivery_on=_EPOCH + dt.timedelta(days=day),
                       box_size=int(state.box_size[0]), is_full=n == int(state.box_size[0]))
    if cutoffs is not None:
        frame.attrs["missing"] = _missing(state, catalog, prior, params, cutoffs, box)
    return frame[EXPLAIN_COLUMNS]


def _load_cutoffs(out_dir: str, catalog: SnackCatalog,
                  storage_options: Mapping[str, Any] | None) -> Cutoffs:
    """The cutoffs a stock-aware run ended with (its ``stock_cutoffs/``)."""
    table = _read_output_table(out_dir, "stock_cutoffs", ["snack_id", "no_box", "cutoff_on",
                                                          "cutoff_jitter", "cutoff_user_id"],
                               storage_options).to_pandas()
    cols, known = catalog.columns_of(table["snack_id"].to_numpy(np.int64))
    day = np.array([np.iinfo(np.int64).min if nb else rules.to_days(d)
                    for nb, d in zip(table["no_box"], table["cutoff_on"], strict=True)], np.int64)
    return Cutoffs.unlimited(catalog.size).with_values(
        cols[known], day[known], table["cutoff_jitter"].fillna(0.0).to_numpy()[known],
        table["cutoff_user_id"].fillna(0).to_numpy(np.int64)[known])


def _missing(state: UserState, catalog: SnackCatalog, prior: np.ndarray, params: Params,
             cutoffs: Cutoffs, box: pd.DataFrame) -> pd.DataFrame:
    """Snacks the box would hold without stock limits but does not: why (SPEC §6)."""
    free = assign_snacks(state, catalog, prior, params)
    gone = sorted(set(free["snack_id"]) - set(box["snack_id"]))
    day = int(state.delivery_on[0])
    _, jit, _ = box_keys(state.user_id[:1], state.delivery_on[:1])
    rows = []
    for sid in gone:
        c = int(catalog.columns_of(np.array([sid], np.int64))[0][0])
        label = f"#{sid} {catalog.names[c]}"
        if cutoffs.no_box[c]:
            reason = f"{label} has no stock for any box (stock 0, or it all went elsewhere)"
        elif not cutoffs.limited[c]:  # pragma: no cover - a limited snack is why it is gone
            reason = f"{label} gave way to another snack that ran out"
        else:
            last = rules.from_days(int(cutoffs.day[c]))
            this = rules.from_days(day)
            if int(cutoffs.day[c]) < day:
                reason = (f"stock of {label} went to boxes up to {last}, this box is on {this}")
            else:
                reason = (f"stock of {label} went to boxes up to {last} and ran out that day: "
                          f"boxes of a date are served by jitter order (this box "
                          f"{float(jit[0]):.3f}, the last one served "
                          f"{float(cutoffs.jitter[c]):.3f})")
        rows.append({"snack_id": int(sid), "name": catalog.names[c], "reason": reason})
    return pd.DataFrame(rows, columns=["snack_id", "name", "reason"])


def explain_box(
    lake_url: str,
    user_id: int | None,
    date_from: dt.date | str,
    date_to: dt.date | str,
    out_dir: str | None = None,
    params: Params | Mapping[str, Any] | None = None,
    storage_options: Mapping[str, Any] | None = None,
    *,
    on_invalid: str | None = None,
) -> pd.DataFrame:
    """One user's box, with the stage, the numbers and a short reason for each snack.

    The box is computed by the pipeline's own pure functions on that user's rows, so it is
    the box the run assigned (same lake, dates and parameters).

    Args:
        lake_url: the lake (local path or fsspec URL).
        user_id: the user; None picks :func:`first_assigned_user` of ``out_dir``.
        date_from: the run's first date (``datetime.date`` or an ISO string); the user
            must be targeted in the run's dates (active, ``next_delivery_on`` inside).
        date_to: the run's last date.
        out_dir: the run's output. Its ``snack_prior/`` gives the priors (else they are
            recomputed from the whole lake, see the module docstring) and its
            ``summary.json`` the parameters and ``on_invalid`` when not given here.
        params: rule parameters: a :class:`Params`, a mapping of overrides on the defaults
            (as ``RunConfig`` gets them), or None for the run's (``out_dir``) or the defaults.
        storage_options: fsspec options for the lake and ``out_dir``.
        on_invalid: ``"raise"`` or ``"drop"``, as the run was given (default: the run's, or
            ``"raise"``).

    Returns:
        One row per snack in slot order, columns :data:`EXPLAIN_COLUMNS`: ``requested_at``
        for request picks; ``score`` and its terms ``prior + own_term + genre_term +
        favorite_term`` for preference and fallback picks; ``explore_key = prior +
        new_bonus_term + explore_jitter * jitter`` for explore picks (other cells are
        null; numbers rounded to 6 decimals like SPEC §3); ``reason`` in words.
        ``frame.attrs`` holds ``user_id``, ``delivery_on``, ``box_size`` and ``is_full``;
        for a stock-aware run (SPEC §6) also ``missing``: the snacks the box would hold
        without stock limits but does not, each with why (e.g. "stock of #172 went to boxes
        up to 2026-12-09, this box is on 2026-12-11").

    Raises:
        LookupError: the user is not in the lake or not targeted in the dates.
        LakeError: the lake (or ``out_dir``) breaks the contract.
        FileNotFoundError: ``out_dir`` is not a finished run.

    Examples:
        >>> box = explain_box("data/lake", 42, "2026-12-01", "2026-12-14",
        ...                   out_dir="data/run")  # doctest: +SKIP
        >>> box[["slot", "snack_id", "stage", "reason"]]  # doctest: +SKIP
    """
    date_from, date_to = _as_date(date_from, "date_from"), _as_date(date_to, "date_to")
    if date_to < date_from:
        raise ValueError(f"date_to {date_to} is before date_from {date_from}")
    summary = _read_summary(out_dir, storage_options) if out_dir is not None else {}
    if isinstance(params, Params):
        rule_params = params
    elif params is not None:
        rule_params = Params.from_mapping(params)
    else:
        rule_params = Params.from_mapping(summary.get("parameters"))
    on_invalid = on_invalid or summary.get("on_invalid") or "raise"
    if on_invalid not in ("raise", "drop"):
        raise ValueError(f"on_invalid must be 'raise' or 'drop', got {on_invalid!r}")
    if user_id is None:
        if out_dir is None:
            raise ValueError("user_id=None needs out_dir (the user is picked from its assignments)")
        user_id = first_assigned_user(out_dir, storage_options)
    user_id = int(user_id)

    lake = open_lake(lake_url, storage_options)
    catalog = load_catalog(lake, on_invalid)[0]
    files = _user_files(lake, user_id)
    raw = {name: _scan(lake, name, files[name], user_id) for name in USER_KEYED}
    tables, _, _, _ = prepare_partition(raw, catalog, on_invalid=on_invalid)
    state = build_user_state(tables, catalog, date_from, date_to, rule_params)
    if state.n_users == 0:
        raise LookupError(_not_targeted(user_id, tables["users"], date_from, date_to))
    if out_dir is not None:
        prior = _load_prior(out_dir, catalog, rule_params, storage_options)
    else:
        prior = _compute_prior(lake, catalog, rule_params, on_invalid)
    cutoffs = _load_cutoffs(out_dir, catalog, storage_options) \
        if out_dir is not None and summary.get("stock_aware") else None
    return _explain(state, catalog, prior, rule_params, cutoffs)
