"""The snack table as arrays: genres, ingredients as bitmasks, lineup dates.

Built once per run on the client from the normalised ``snacks`` table and sent to every
task (a few hundred snacks: kilobytes). Column ``c`` of every ``users x snacks`` array of
the engines is the snack ``snack_id[c]``, ids ascending.
"""

from __future__ import annotations

import dataclasses

import numpy as np
import pandas as pd

from .contract import NO_DATE
from .rules import NEVER

__all__ = [
    "SnackCatalog",
    "build_catalog",
    "favorite_matrix",
    "lookup",
    "name_positions",
    "pack_bits",
]


@dataclasses.dataclass(frozen=True)
class SnackCatalog:
    """The snack table in array form, ordered by ``snack_id`` ascending (column order).

    Attributes:
        snack_id: ids, ascending; position = column in every users x snacks array.
        genre: genre code per snack (index into ``genres``).
        genres: genre names, sorted.
        ingredients: ingredient names that occur in some snack, sorted.
        has_ingredient: ``snacks x ingredients`` bool matrix.
        launched_on: days since epoch.
        retired_on: days since epoch (:data:`preassign.core.rules.NEVER` when null).
        names: snack names (for people: reports, explanations).
    """

    snack_id: np.ndarray
    genre: np.ndarray
    genres: tuple[str, ...]
    ingredients: tuple[str, ...]
    has_ingredient: np.ndarray
    launched_on: np.ndarray
    retired_on: np.ndarray
    names: np.ndarray = dataclasses.field(default_factory=lambda: np.zeros(0, object))

    @property
    def size(self) -> int:
        """Number of snacks."""
        return len(self.snack_id)

    @property
    def genre_names(self) -> np.ndarray:
        """The genre name of each snack (column order)."""
        if not self.size:
            return np.zeros(0, object)
        return np.array(self.genres, dtype=object)[self.genre]

    def columns_of(self, snack_ids: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Map snack ids to columns -> ``(column, known)``; unknown ids give ``known=False``."""
        return lookup(self.snack_id, snack_ids)

    def ingredient_words(self) -> np.ndarray:
        """``snacks x words`` uint64 bitmask of each snack's ingredients."""
        return pack_bits(self.has_ingredient)


def build_catalog(snacks: pd.DataFrame) -> SnackCatalog:
    """Build the catalog from the normalised, de-duplicated ``snacks`` table."""
    snacks = snacks.sort_values("snack_id", kind="stable").reset_index(drop=True)
    genres = tuple(sorted(set(snacks["genre"])))
    genre = np.searchsorted(np.array(genres, dtype=object), snacks["genre"].to_numpy()) if genres \
        else np.zeros(0, np.int64)
    ingredients = tuple(sorted({i for items in snacks["ingredients"] for i in items}))
    index = {name: k for k, name in enumerate(ingredients)}
    has = np.zeros((len(snacks), len(ingredients)), bool)
    for row, items in enumerate(snacks["ingredients"]):  # a few hundred snacks
        has[row, [index[i] for i in items]] = True
    retired = snacks["retired_on"].to_numpy(np.int32)
    names = snacks["name"].to_numpy(object) if "name" in snacks else \
        np.full(len(snacks), "", object)
    return SnackCatalog(
        snack_id=snacks["snack_id"].to_numpy(np.int64),
        genre=np.asarray(genre, np.int32),
        genres=genres,
        ingredients=ingredients,
        has_ingredient=has,
        launched_on=snacks["launched_on"].to_numpy(np.int32),
        retired_on=np.where(retired == NO_DATE, NEVER, retired).astype(np.int32),
        names=names,
    )


def lookup(sorted_ids: np.ndarray, ids: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Positions of ``ids`` in ``sorted_ids`` (ascending, unique) -> ``(position, found)``.

    Uses a dense lookup table when the ids span a compact range (the usual case:
    one partition's users, a lineup's snacks), else a binary search.

    Examples:
        >>> lookup(np.array([3, 7, 9]), np.array([7, 8, 3]))
        (array([1, 0, 0]), array([ True, False,  True]))
    """
    n = len(sorted_ids)
    if n == 0 or len(ids) == 0:
        return np.zeros(len(ids), np.int64), np.zeros(len(ids), bool)
    lo, hi = int(sorted_ids[0]), int(sorted_ids[-1])
    if hi - lo <= 16 * n + 4096:
        table = np.full(hi - lo + 1, -1, np.int64)
        table[sorted_ids - lo] = np.arange(n)
        if int(ids.min()) >= lo and int(ids.max()) <= hi:  # the usual case: one gather
            pos = table[ids - lo]
        else:
            inside = (ids >= lo) & (ids <= hi)
            pos = np.where(inside, table[np.clip(ids - lo, 0, hi - lo)], -1)
        found = pos >= 0
        return np.maximum(pos, 0), found
    pos = np.minimum(np.searchsorted(sorted_ids, ids), n - 1)
    return pos, sorted_ids[pos] == ids


def name_positions(names: tuple[str, ...], values: np.ndarray, hit: np.ndarray
                   ) -> tuple[np.ndarray, np.ndarray]:
    """Positions of string ``values`` in the sorted ``names`` -> ``(position, known & hit)``."""
    table = np.array(names, dtype=object)
    k = np.minimum(np.searchsorted(table, values), len(table) - 1)
    return k, hit & (table[k] == values)


def favorite_matrix(genres: np.ndarray, row: np.ndarray, hit: np.ndarray,
                    catalog: SnackCatalog, n_users: int) -> np.ndarray:
    """``users x genres``: the genre is one of the user's favourites (unknown genres ignored).

    Args:
        genres: the ``genre`` column of ``genre_prefs`` rows.
        row: the user row of each of those rows.
        hit: which rows belong to a user of the matrix.
        catalog: the snack catalog (its genres are the columns).
        n_users: number of rows of the matrix.
    """
    favorite = np.zeros((n_users, len(catalog.genres)), bool)
    if catalog.genres and hit.any():
        k, known = name_positions(catalog.genres, genres, hit)
        favorite[row[known], k[known]] = True
    return favorite


def pack_bits(matrix: np.ndarray) -> np.ndarray:
    """Pack a ``rows x bits`` bool matrix into ``rows x words`` uint64 (at least one word)."""
    n_rows, n_bits = matrix.shape
    n_words = max(1, -(-n_bits // 64))
    padded = np.zeros((n_rows, n_words * 64), bool)
    padded[:, :n_bits] = matrix
    weights = (np.uint64(1) << np.arange(64, dtype=np.uint64))
    return (padded.reshape(n_rows, n_words, 64).astype(np.uint64) * weights).sum(
        axis=2, dtype=np.uint64)
