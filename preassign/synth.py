"""Synthetic lakes: deterministic, realistic, co-partitioned (SPEC §2).

The lineup is ~300 snacks over 10 genres with ingredient tags, some retired and
some new. Users are mostly active, with delivery dates spread over the two weeks
from ``as_of``, box sizes mostly 8, a box every 2 or 4 weeks in their history,
skewed ratings (0-200 each), NG lists of 0-60, 0-3 avoided ingredients, 0-3
favourite genres and a few requests; stock is sized near the expected demand so
some snacks run short.

Partition ``i`` holds users ``[1 + i*P, 1 + (i+1)*P)`` and is generated from its
own seed, so any partition can be made alone, in any order, on any worker; the
result depends only on (users, snacks, seed, as_of, users_per_partition).
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import math
from typing import Any, Mapping

import numpy as np
import pandas as pd

from .core.contract import USER_KEYED
from .lake import write_manifest, write_small_table, write_user_partition

__all__ = [
    "SynthConfig",
    "generate_partition",
    "generate_snacks",
    "generate_stock",
    "synth_lake",
    "write_lake",
]

GENRES = (
    "chips", "choco", "cookie", "cracker", "candy",
    "gummy", "nuts", "rice_cracker", "dried_fruit", "jerky",
)
#: Flavours that make the synthetic snacks' names ("Sea Salt Chips", "Matcha Cookie").
FLAVORS = (
    "Sea Salt", "Smoky BBQ", "Matcha", "Honey Butter", "Wasabi", "Yuzu", "Sweet Chili",
    "Cheddar", "Dark Cocoa", "Strawberry", "Salted Caramel", "Seaweed", "Black Pepper", "Miso",
    "Mango", "White Peach", "Lemon", "Cinnamon", "Maple", "Garlic", "Sour Cream", "Coconut",
    "Sesame", "Soy Glaze", "Ghost Pepper", "Cherry", "Vanilla", "Almond", "Hazelnut", "Ginger",
)
INGREDIENTS = (
    "milk", "wheat", "egg", "peanut", "soy", "gelatin", "almond", "sesame", "shrimp",
    "pork", "beef", "walnut", "cashew", "coconut", "corn", "gluten", "chili", "caffeine",
    "alcohol", "crab",
)
_NS_PER_DAY = 86_400 * 10**9


@dataclasses.dataclass(frozen=True)
class SynthConfig:
    """What to generate."""

    users: int
    snacks: int = 300
    seed: int = 0
    as_of: dt.date = dt.date(2026, 12, 1)
    users_per_partition: int = 50_000

    def __post_init__(self) -> None:
        if self.users < 0:
            raise ValueError(f"users must be >= 0, got {self.users}")
        if self.snacks < 1:
            raise ValueError(f"snacks must be >= 1, got {self.snacks}")
        if self.users_per_partition < 1:
            raise ValueError(f"users_per_partition must be >= 1, got {self.users_per_partition}")

    @property
    def partitions(self) -> int:
        """Number of user partitions."""
        return max(1, math.ceil(self.users / self.users_per_partition))

    @property
    def bounds(self) -> list[int]:
        """User-id boundaries: partition i holds bounds[i] <= user_id < bounds[i+1]."""
        p = self.users_per_partition
        starts = [1 + i * p for i in range(self.partitions)]
        return starts + [max(1 + self.users, starts[-1] + 1)]

    @property
    def day0(self) -> int:
        """``as_of`` as days since the epoch."""
        return (self.as_of - dt.date(1970, 1, 1)).days


def _rng(cfg: SynthConfig, stream: int) -> np.random.Generator:
    return np.random.default_rng([cfg.seed, stream])


def _days(values: np.ndarray) -> pd.Series:
    return pd.Series(np.asarray(values, "int64").astype("datetime64[D]")).dt.date


def _snack_arrays(cfg: SynthConfig) -> dict[str, np.ndarray]:
    rng = _rng(cfg, 10**9)
    n = cfg.snacks
    genre = rng.integers(0, len(GENRES), n)
    quality = rng.normal(0.0, 0.6, n)
    popularity = rng.lognormal(0.0, 0.7, n)
    launched = cfg.day0 - rng.integers(30, 900, n)
    kind = rng.random(n)
    launched = np.where(kind < 0.06, cfg.day0 - rng.integers(0, 28, n), launched)  # new
    launched = np.where((kind >= 0.06) & (kind < 0.09), cfg.day0 + rng.integers(1, 21, n), launched)
    retired = np.full(n, -1)
    r = rng.random(n)
    retired = np.where(r < 0.05, cfg.day0 - rng.integers(1, 200, n), retired)
    retired = np.where((r >= 0.05) & (r < 0.08), cfg.day0 + rng.integers(0, 14, n), retired)
    retired = np.where((retired != -1) & (retired <= launched), launched + 30, retired)
    return {"genre": genre, "quality": quality, "popularity": popularity,
            "launched": launched, "retired": retired}


def snack_names(genre: np.ndarray) -> list[str]:
    """Product-like names, unique: a flavour and the genre (a number once flavours run out).

    Examples:
        >>> snack_names(np.array(["chips", "rice_cracker", "chips"], dtype=object))
        ['Sea Salt Chips', 'Sea Salt Rice Cracker', 'Smoky BBQ Chips']
    """
    seen: dict[str, int] = {}
    names = []
    for g in genre:
        k = seen.get(g, 0)
        seen[g] = k + 1
        flavor = FLAVORS[k % len(FLAVORS)]
        batch = f" {k // len(FLAVORS) + 1}" if k >= len(FLAVORS) else ""
        names.append(f"{flavor} {str(g).replace('_', ' ').title()}{batch}")
    return names


def generate_snacks(cfg: SynthConfig) -> pd.DataFrame:
    """The lineup (``snacks`` table)."""
    a = _snack_arrays(cfg)
    rng = _rng(cfg, 10**9 + 1)
    n = cfg.snacks
    ingredients: list[list[str] | None] = []
    for _ in range(n):
        k = int(rng.choice(4, p=[0.25, 0.35, 0.25, 0.15]))
        if k == 0 and rng.random() < 0.5:
            ingredients.append(None)
        else:
            ingredients.append(sorted(rng.choice(INGREDIENTS, k, replace=False).tolist()))
    genre = np.array(GENRES, dtype=object)[a["genre"]]
    return pd.DataFrame(
        {
            "snack_id": np.arange(1, n + 1, dtype=np.int32),
            "name": snack_names(genre),
            "genre": genre,
            "ingredients": ingredients,
            "launched_on": _days(a["launched"]),
            "retired_on": [None if r == -1 else d
                           for r, d in zip(a["retired"], _days(a["retired"]), strict=True)],
        }
    )


#: Share of snacks planned short (stock 70-95 % of the forecast); the rest get 115-145 %.
SHORT_SHARE = 0.03
#: Share of (not new) snacks without a stock row: a stock feed that missed them.
NO_ROW_SHARE = 0.01


def generate_stock(cfg: SynthConfig) -> pd.DataFrame:
    """Units on hand, planned the way operations would: a realistic week.

    A demand forecast (the rules run on a sample of up to 5,000 users, scaled to the whole
    base) sets each snack's stock: most snacks get 115-145 % of their forecast and are
    covered; about :data:`SHORT_SHARE` of them get 70-95 % and run short by realistic
    amounts; about :data:`NO_ROW_SHARE` have no stock row at all (the feed missed them).
    Snacks new in the two weeks from ``as_of`` always arrive with stock.
    """
    rng = _rng(cfg, 10**9 + 2)
    forecast = _forecast_demand(cfg)
    short = rng.random(cfg.snacks) < SHORT_SHARE
    factor = np.where(short, rng.uniform(0.70, 0.95, cfg.snacks),
                      rng.uniform(1.15, 1.45, cfg.snacks))
    quantity = np.where(forecast > 0, np.floor(forecast * factor),
                        rng.poisson(5.0, cfg.snacks)).astype(np.int64)
    launched = _snack_arrays(cfg)["launched"]
    new = launched > cfg.day0 - 28
    keep = new | (rng.random(cfg.snacks) >= NO_ROW_SHARE)
    quantity = np.where(new, np.maximum(quantity, np.ceil(forecast * 1.2) + 1), quantity)
    return pd.DataFrame(
        {"snack_id": np.arange(1, cfg.snacks + 1, dtype=np.int32)[keep],
         "quantity": quantity[keep].astype(np.int32)}
    )


def _forecast_demand(cfg: SynthConfig) -> np.ndarray:
    """Expected units per snack over the two weeks from ``as_of``.

    The rules run on the lake's first partition (up to ``users_per_partition`` users; the
    same rows the lake holds), scaled to the whole base.
    """
    from .core.catalog import build_catalog
    from .core.contract import normalize_table
    from .core.engine import get_engine
    from .core.params import Params
    from .core.partition import prepare_partition
    from .core.rules import snack_prior

    if cfg.users == 0:
        return np.zeros(cfg.snacks)
    catalog = build_catalog(normalize_table("snacks", generate_snacks(cfg))[0])
    tables, _, _, _ = prepare_partition(generate_partition(cfg, 0), catalog)
    sampled = len(tables["users"])
    until = cfg.as_of + dt.timedelta(days=13)
    engine, params = get_engine("numba"), Params()
    prior = snack_prior(*engine.rating_totals(tables, catalog), params)
    boxes = engine.assign(engine.build_state(tables, catalog, cfg.as_of, until, params), catalog,
                          prior, params)
    units = np.bincount(np.searchsorted(catalog.snack_id, boxes["snack_id"].to_numpy()),
                        minlength=catalog.size)
    return units * (cfg.users / sampled)


def _distinct_sample(rng: np.random.Generator, weights: np.ndarray, counts: np.ndarray
                     ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Per row u, ``counts[u]`` distinct columns drawn by weight (Gumbel top-k).

    Returns ``(row, column, rank)``: rank is the draw order 0.. within the row.
    """
    n_u, n_s = len(counts), len(weights)
    if n_u == 0:
        e = np.zeros(0, np.int64)
        return e, e, e
    keys = np.log(weights)[None, :].astype(np.float32) - np.log(
        -np.log(rng.random((n_u, n_s), dtype=np.float32) * 0.999999 + 1e-7)
    )
    counts = np.minimum(counts, n_s)
    width = int(counts.max()) if n_u else 0
    if width == 0:
        e = np.zeros(0, np.int64)
        return e, e, e
    # the best `width` columns of each row, in draw order: partition, then sort only those
    if width < n_s:
        part = np.argpartition(-keys, width - 1, axis=1)[:, :width]
    else:
        part = np.broadcast_to(np.arange(n_s), (n_u, n_s))
    order = np.take_along_axis(part, np.argsort(-np.take_along_axis(keys, part, axis=1), axis=1),
                               axis=1)
    row, rank = np.nonzero(np.arange(width)[None, :] < counts[:, None])
    return row, order[row, rank], rank


def generate_partition(cfg: SynthConfig, index: int) -> dict[str, pd.DataFrame]:
    """All user-keyed tables for partition ``index`` (rows sorted by ``user_id``)."""
    bounds = cfg.bounds
    lo, hi = bounds[index], bounds[index + 1]
    uid = np.arange(lo, min(hi, cfg.users + 1), dtype=np.int64)
    n = len(uid)
    rng = _rng(cfg, index)
    snacks = _snack_arrays(cfg)
    s = cfg.snacks
    weights = snacks["popularity"]

    # users
    status_draw = rng.random(n)
    status = np.where(status_draw < 0.86, "active",
                      np.where(status_draw < 0.95, "paused", "cancelled"))
    next_day = cfg.day0 + rng.integers(0, 14, n)
    has_date = (status == "active") | ((status == "paused") & (rng.random(n) < 0.5))
    box_draw = rng.random(n)
    box = np.where(box_draw < 0.7, 0, np.where(box_draw < 0.9, 8, rng.choice([4, 6, 10, 12], n)))
    users = pd.DataFrame(
        {
            "user_id": uid,
            "status": status.astype(object),
            "next_delivery_on": pd.Series(np.where(has_date, next_day, 0).astype("datetime64[D]"))
            .dt.date.where(has_date, None),
            "box_size": pd.array(np.where(box == 0, pd.NA, box),  # type: ignore[call-overload]
                                 dtype="Int16"),
        }
    )
    k = np.where(box == 0, 8, box)

    # deliveries: a box every 2 or 4 weeks, going back `tenure` boxes from the next date
    cadence = np.where(rng.random(n) < 0.7, 14, 28)
    tenure = np.minimum(rng.geometric(0.12, n) - 1, 24)
    tenure = np.where(rng.random(n) < 0.1, 0, tenure)
    total = np.minimum(tenure * k, s - 1)
    row, col, rank = _distinct_sample(rng, weights, total)
    box_no = rank // k[row] + 1
    deliveries = pd.DataFrame(
        {
            "user_id": uid[row],
            "snack_id": (col + 1).astype(np.int64),
            "delivered_on": _days(next_day[row] - box_no * cadence[row]),
        }
    )

    # ratings: 0-200 per user, skewed; values shifted by snack quality
    n_ratings = np.minimum(np.floor(rng.lognormal(3.2, 1.0, n)), 200).astype(np.int64)
    n_ratings = np.where(rng.random(n) < 0.08, 0, n_ratings)
    row, col, _ = _distinct_sample(rng, weights, n_ratings)
    latent = snacks["quality"][col] + rng.normal(0, 1.0, len(col))
    rating = np.digitize(latent, [-1.0, -0.2, 0.8]) + 1
    age_days = rng.integers(0, 365, len(col))
    rated_at = (cfg.day0 - age_days) * _NS_PER_DAY + \
        rng.integers(0, _NS_PER_DAY // 1000, len(col)) * 1000
    # some pairs rated twice (the later rating wins); at most 200 rating rows per user
    rerate = (rng.random(len(col)) < 0.03) & (n_ratings[row] <= 190)
    ratings = pd.DataFrame(
        {
            "user_id": np.concatenate([uid[row], uid[row[rerate]]]),
            "snack_id": np.concatenate([col + 1, col[rerate] + 1]).astype(np.int64),
            "rating": np.concatenate([rating, rng.integers(1, 5, rerate.sum())]).astype(np.int8),
            "rated_at": pd.to_datetime(
                np.concatenate([rated_at, rated_at[rerate] - rng.integers(1, 90, rerate.sum())
                                * _NS_PER_DAY]), utc=True
            ),
        }
    )

    # NG lists 0-60, avoided ingredients 0-3, favourite genres 0-3, a few requests
    n_ng = np.where(rng.random(n) < 0.45, 0, np.minimum(rng.geometric(0.12, n), 60))
    row, col, _ = _distinct_sample(rng, np.ones(s), n_ng)
    ng = pd.DataFrame({"user_id": uid[row], "snack_id": (col + 1).astype(np.int64)})
    n_avoid = rng.choice(4, n, p=[0.6, 0.25, 0.1, 0.05])
    row, col, _ = _distinct_sample(rng, np.ones(len(INGREDIENTS)), n_avoid)
    avoid = pd.DataFrame({"user_id": uid[row], "ingredient": np.array(INGREDIENTS, object)[col]})
    n_fav = rng.choice(4, n, p=[0.3, 0.35, 0.25, 0.1])
    row, col, _ = _distinct_sample(rng, np.ones(len(GENRES)), n_fav)
    prefs = pd.DataFrame({"user_id": uid[row], "genre": np.array(GENRES, object)[col]})
    n_req = np.minimum(rng.poisson(0.4, n), 5)
    row, col, _ = _distinct_sample(rng, weights, n_req)
    requested_at = (cfg.day0 - rng.integers(1, 120, len(col))) * _NS_PER_DAY + rng.integers(
        0, _NS_PER_DAY // 1000, len(col)) * 1000
    requests = pd.DataFrame(
        {"user_id": uid[row], "snack_id": (col + 1).astype(np.int64),
         "requested_at": pd.to_datetime(requested_at, utc=True)}
    )
    tables = {"users": users, "ratings": ratings, "deliveries": deliveries, "ng_snacks": ng,
              "avoid_ingredients": avoid, "genre_prefs": prefs, "requests": requests}
    return {name: tables[name].sort_values("user_id", kind="stable").reset_index(drop=True)
            for name in USER_KEYED}


def _write_one(cfg: SynthConfig, url: str, index: int,
               storage_options: Mapping[str, Any]) -> dict[str, int]:
    return write_user_partition(url, index, generate_partition(cfg, index), storage_options)


def write_lake(
    cfg: SynthConfig,
    url: str,
    *,
    client: Any = None,
    storage_options: Mapping[str, Any] | None = None,
    progress: bool = False,
    overwrite: bool = False,
) -> dict[str, int]:
    """Generate and write a whole lake, partitions in parallel on Dask.

    The lake is written to a staging place next to ``url`` and published at the end
    (:class:`preassign.storage.SynthLake`: a rename locally; on object stores the files
    are copied and ``_lake.json`` written last). ``url`` must be missing, an empty
    directory, or - with ``overwrite`` - a synthetic lake written earlier; anything else
    (a file, another lake, a directory of other files, a place inside a lake) is refused.

    Returns:
        Rows written per table.

    Raises:
        UsageError: ``url`` holds something that is not a synthetic lake of ours.
        OutputExistsError: it holds one and ``overwrite`` is off.
    """
    import dask

    from .compute import compute
    from .storage import SynthLake

    storage_options = dict(storage_options or {})
    target = SynthLake(url, storage_options, overwrite=overwrite)
    target.check_target()
    with target.writing():
        staging = target.staging_url()
        write_small_table(staging, "snacks", generate_snacks(cfg), storage_options)
        write_small_table(staging, "stock", generate_stock(cfg), storage_options)
        tasks = [dask.delayed(_write_one, pure=False)(cfg, staging, i, storage_options)
                 for i in range(cfg.partitions)]
        counts = compute(client, tasks, progress, label="synth")
        write_manifest(staging, cfg.bounds, storage_options,
                       source={"synth": {"users": cfg.users, "snacks": cfg.snacks,
                                         "seed": cfg.seed, "as_of": cfg.as_of.isoformat()}})
    rows = {"snacks": cfg.snacks}
    for c in counts:
        for k, v in c.items():
            rows[k] = rows.get(k, 0) + v
    return rows


def synth_lake(cfg: SynthConfig, url: str, cluster: Any, *,
               storage_options: Mapping[str, Any] | None = None, progress: bool = False,
               overwrite: bool = False) -> dict[str, int]:
    """``preassign synth --out``: check the target, then :func:`write_lake` on a cluster.

    Args:
        cfg: what to generate.
        url: the lake to write.
        cluster: a :class:`preassign.cluster.ClusterSpec` (started and closed here).
        storage_options: fsspec options for ``url``.
        progress: draw Dask's progress bar.
        overwrite: replace a synthetic lake written there before.

    Returns:
        Rows written per table.
    """
    from .compute import with_cluster
    from .storage import SynthLake

    SynthLake(url, storage_options, overwrite=overwrite).check_target()  # before a cluster
    return with_cluster(cluster, lambda client: write_lake(
        cfg, url, client=client, storage_options=storage_options, progress=progress,
        overwrite=overwrite))
