"""The run report: one self-contained HTML page people act on, its CSV, and its charts.

Design
------
:func:`render_report` turns a :class:`ReportData` (what a run already has in memory: the
summary, demand, snack names, shortage or reservations, the stock timeline, the comparison
with a previous run) into one HTML string. The page is rendered from Jinja2 templates in
``preassign/templates/`` with autoescaping on for every template: snack names and genres
come from a database, so a snack called ``<script>...`` shows as text. No value is ever
marked safe; the Python side builds plain data (dicts, lists, strings, numbers) and the
templates only lay it out.

The page opens nothing on the network: charts are PNGs drawn by matplotlib's Agg renderer
(:class:`matplotlib.figure.Figure`, no pyplot, so no global state and no GUI backend) and
inlined as ``data:`` URIs, the CSS is inline, there are no scripts and a Content Security
Policy forbids them. The only link is the CSV written beside the page
(:func:`shortage_csv`). It prints: no scroll boxes, table headers repeat on each page.

The page, top to bottom: the run's numbers and call-outs; which snacks are short, by how
much and from which date (or, for a stock-aware run, where each limited snack's stock stops
covering boxes); demand against stock; boxes and units per date; since the previous run;
the run's context (parameters, timings, rows, cluster, versions, lake).

The same small functions serve the notebook and the CLI: :func:`rank_busiest_snacks`,
:func:`list_shortages`, :func:`count_units_by_date`, :func:`rank_chart_snacks` and the
plots, each drawn on any matplotlib ``Axes``.
"""

from __future__ import annotations

import base64
import dataclasses
import datetime as dt
import functools
import io
import math
import numbers
import warnings
from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Any, Literal, cast

import jinja2
import numpy as np
import pandas as pd

if TYPE_CHECKING:  # pragma: no cover
    from matplotlib.axes import Axes
    from matplotlib.figure import Figure

__all__ = [
    "ReportData",
    "count_units_by_date",
    "csv_file_name",
    "figure_png",
    "format_number",
    "list_shortages",
    "plot_demand_vs_stock",
    "plot_stock_timelines",
    "plot_units_by_date",
    "rank_busiest_snacks",
    "rank_chart_snacks",
    "render_report",
    "report_environment",
    "shortage_csv",
]

STAGE_COLUMNS = ("units_request", "units_preference", "units_explore", "units_fallback")
_STAGE_COLORS = ("#F58518", "#4C78A8", "#54A24B", "#B279A2")
_WITHIN = "#4C78A8"
_OVER = "#E45756"
_FIRST = "#B71C1C"
_EPOCH = dt.date(1970, 1, 1)
#: Chart labels keep at most this many characters of a snack name.
LABEL_CHARS = 28
#: At most this many snacks get a small timeline chart (the table lists all of them).
TIMELINE_CHARTS = 12
#: A timeline table shows at most this many delivery dates side by side.
TIMELINE_DATES = 14
#: A call-out names at most this many snacks.
CALLOUT_SNACKS = 20


@dataclasses.dataclass
class ReportData:
    """Everything :func:`render_report` shows.

    Attributes:
        summary: the run's ``summary.json`` contents (``callouts`` included; a stock-aware
            run adds ``stock_aware``, ``rounds``, ``boxes_changed``,
            ``boxes_short_unconstrained``, ``units_unconstrained``, ``snacks_limited``; an
            optional ``boxes_by_date_unconstrained`` adds the per-date short boxes without
            stock limits).
        demand: ``delivery_on`` (int days since 1970-01-01, or dates), ``snack_id``,
            ``units`` and the four ``units_*`` stage columns.
        snacks: ``snack_id``, ``name``, ``genre`` of every snack of the lineup.
        shortage: SPEC §3 runs with stock: ``snack_id``, ``units``, ``stock``, ``shortage``,
            ``has_stock_row``, ``runs_out_on`` (date or None), ``boxes_affected``; one row
            per snack with demand (the last three may be missing: shown as unknown).
        reservations: stock-aware runs: the ``reservations/`` frame (SPEC §6).
        timeline: per short or limited snack and delivery date: ``snack_id``,
            ``delivery_on``, ``units``, ``cumulative_units``, ``stock``, ``covered_units``.
        comparison: "since the previous run": ``previous`` (``run_id``, ``out``,
            ``date_from``, ``date_to``, ``finished_at``), ``why`` (list of str),
            ``units_total`` (before, after), ``snacks`` (frame: ``snack_id``,
            ``units_before``, ``units_after``, ``change``, ``shortage_before``,
            ``shortage_after``; changed snacks only), ``boxes_changed`` (int or None).
    """

    summary: dict[str, Any]
    demand: pd.DataFrame
    snacks: pd.DataFrame
    shortage: pd.DataFrame | None = None
    reservations: pd.DataFrame | None = None
    timeline: pd.DataFrame | None = None
    comparison: dict[str, Any] | None = None


# --------------------------------------------------------------------------------------------
# small conversions


def _delivery_dates(values: pd.Series) -> pd.Series:
    """``delivery_on`` as ``datetime.date``: int days since the epoch, dates or datetimes."""
    if pd.api.types.is_integer_dtype(values.dtype):
        days = values.to_numpy(np.int64)
        return pd.Series([_EPOCH + dt.timedelta(days=int(d)) for d in days], index=values.index,
                         dtype=object)
    return pd.Series([pd.Timestamp(v).date() for v in values], index=values.index, dtype=object)


def _as_date(value: Any) -> dt.date | None:
    """A date from a date, datetime, Timestamp, int days since the epoch or ISO string."""
    if value is None or value is pd.NaT:
        return None
    if isinstance(value, dt.datetime):
        return value.date()
    if isinstance(value, dt.date):
        return value
    if isinstance(value, (bool, np.bool_)):
        return None
    if isinstance(value, (numbers.Integral, np.integer)):
        return _EPOCH + dt.timedelta(days=int(value))
    if isinstance(value, str):
        try:
            return dt.date.fromisoformat(value[:10])
        except ValueError:
            return None
    try:
        if pd.isna(value):
            return None
        return pd.Timestamp(value).date()
    except (TypeError, ValueError):
        return None


def _int(value: Any, default: int = 0) -> int:
    """``value`` as an int (None, NaN or junk: ``default``)."""
    try:
        if value is None or (isinstance(value, float) and not math.isfinite(value)):
            return default
        return int(value)
    except (TypeError, ValueError):
        return default


def format_number(value: Any) -> str:
    """A number as people read it: thousands separators, no float noise.

    Examples:
        >>> format_number(1234567), format_number(0.5), format_number(-1.0), format_number(None)
        ('1,234,567', '0.5', '-1.0', '–')
        >>> format_number(True), format_number("as is")
        ('yes', 'as is')
    """
    if value is None or value is pd.NA or value is pd.NaT:
        return "–"
    if isinstance(value, (bool, np.bool_)):
        return "yes" if value else "no"
    if isinstance(value, (numbers.Integral, np.integer)):
        return f"{int(value):,}"
    if isinstance(value, (numbers.Real, np.floating)):
        v = float(value)
        if not math.isfinite(v):
            return "–" if math.isnan(v) else str(v)
        text = f"{v:,.6f}".rstrip("0")
        return text + "0" if text.endswith(".") else text
    if isinstance(value, (dt.date, dt.datetime)):
        return value.isoformat()
    return str(value)


def _signed(value: Any) -> str:
    """A change with its sign: ``+1,234``, ``−56``, ``0``."""
    n = _int(value)
    return f"+{n:,}" if n > 0 else f"−{-n:,}" if n < 0 else "0"


def _day(value: Any, weekday: bool = True) -> str:
    """A date as ``2026-12-01 Tue`` (``–`` when there is none)."""
    d = _as_date(value)
    if d is None:
        return "–"
    return f"{d.isoformat()} {d.strftime('%a')}" if weekday else d.isoformat()


def _short_day(value: Any) -> str:
    d = _as_date(value)
    return "–" if d is None else d.strftime("%m-%d")


def _seconds(value: Any) -> str:
    try:
        return f"{float(value):,.3f}"
    except (TypeError, ValueError):
        return str(value)


def _percent(part: float, whole: float) -> str:
    return f"{100.0 * part / whole:.1f}%" if whole else "–"


def _truncate(text: str, limit: int = LABEL_CHARS) -> str:
    """``text`` cut to ``limit`` characters with an ellipsis.

    Examples:
        >>> _truncate("a very long snack name indeed, with more", 12)
        'a very long…'
    """
    return text if len(text) <= limit else text[: limit - 1].rstrip() + "…"


def _check_columns(frame: pd.DataFrame, name: str, needed: tuple[str, ...]) -> None:
    missing = [c for c in needed if c not in frame.columns]
    if missing:
        raise ValueError(
            f"{name} is missing column(s) {', '.join(missing)} (columns present: "
            f"{', '.join(map(str, frame.columns)) or 'none'}); pass the run's "
            f"RunResult.{name} or the {name}/ output"
        )


class _Names:
    """Snack id -> name and genre, for everything a person reads."""

    def __init__(self, snacks: pd.DataFrame | None) -> None:
        self.name: dict[int, str] = {}
        self.genre: dict[int, str] = {}
        if snacks is not None and len(snacks):
            _check_columns(snacks, "snacks", ("snack_id", "name", "genre"))
            self.add(snacks)

    def add(self, frame: pd.DataFrame | None) -> None:
        """Names and genres from ``frame``'s ``name``/``genre`` columns, for unknown ids."""
        if frame is None or not len(frame) or "snack_id" not in frame.columns:
            return
        ids = frame["snack_id"].to_numpy(np.int64)
        for col, known in (("name", self.name), ("genre", self.genre)):
            if col not in frame.columns:
                continue
            for sid, value in zip(ids, frame[col], strict=True):
                if isinstance(value, str) and int(sid) not in known:
                    known[int(sid)] = value

    def frame(self) -> pd.DataFrame:
        """``snack_id``, ``name``, ``genre`` of every snack named."""
        ids = sorted(set(self.name) | set(self.genre))
        return pd.DataFrame({"snack_id": np.array(ids, np.int64),
                             "name": pd.Series([self.name.get(i) for i in ids], dtype=object),
                             "genre": pd.Series([self.genre.get(i) for i in ids], dtype=object)})

    def snack(self, sid: Any) -> dict[str, Any]:
        """``id``, ``name`` (None when unknown) and ``genre`` of one snack."""
        i = _int(sid)
        return {"id": i, "name": self.name.get(i), "genre": self.genre.get(i)}

    def label(self, sid: int) -> str:
        return self.name.get(sid, f"#{sid}")

    def labels(self, ids: Sequence[int]) -> list[str]:
        """Chart labels: names cut to :data:`LABEL_CHARS`, ``#id`` added where two collide."""
        cut = [_truncate(self.label(int(i))) for i in ids]
        seen: dict[str, int] = {}
        for text in cut:
            seen[text] = seen.get(text, 0) + 1
        return [f"{text} #{i}" if seen[text] > 1 and not text.startswith("#") else text
                for text, i in zip(cut, ids, strict=True)]


# --------------------------------------------------------------------------------------------
# tables


def _with_names(frame: pd.DataFrame, snacks: pd.DataFrame | None) -> pd.DataFrame:
    """``frame`` with ``name`` and ``genre`` right after ``snack_id`` (when ``snacks`` given)."""
    if snacks is None:
        return frame
    return _insert_names(frame, _Names(snacks))


def _insert_names(frame: pd.DataFrame, names: _Names) -> pd.DataFrame:
    out = frame.drop(columns=[c for c in ("name", "genre") if c in frame.columns])
    at = list(out.columns).index("snack_id") + 1
    ids = out["snack_id"].to_numpy(np.int64)
    out.insert(at, "name", pd.Series([names.name.get(int(i)) for i in ids], index=out.index,
                                     dtype=object))
    out.insert(at + 1, "genre", pd.Series([names.genre.get(int(i)) for i in ids],
                                          index=out.index, dtype=object))
    return out


def rank_busiest_snacks(
    demand: pd.DataFrame, shortage: pd.DataFrame | None = None, top: int | None = 30,
    snacks: pd.DataFrame | None = None,
) -> pd.DataFrame:
    """Units per snack over the whole run, busiest first, with stock and shortage.

    Args:
        demand: one row per (``delivery_on``, ``snack_id``) with ``units`` and the
            per-stage ``units_*`` columns (``RunResult.demand`` or the ``demand/`` output).
        shortage: ``snack_id``, ``units``, ``stock``, ``shortage`` (or None: no stock).
        top: keep this many snacks (None: all).
        snacks: ``snack_id``, ``name``, ``genre``: adds ``name`` and ``genre`` columns.

    Returns:
        ``snack_id`` (``name``, ``genre``), ``units``, the four ``units_*`` columns and, with
        ``shortage``, ``stock`` and ``shortage``; ordered by units descending, then snack id.

    Examples:
        >>> d = pd.DataFrame({"delivery_on": [1, 2, 1], "snack_id": [7, 7, 8], "units": [2, 1, 5],
        ...     "units_request": [0, 1, 0], "units_preference": [2, 0, 5],
        ...     "units_explore": [0, 0, 0], "units_fallback": [0, 0, 0]})
        >>> rank_busiest_snacks(d)[["snack_id", "units"]].to_dict("records")
        [{'snack_id': 8, 'units': 5}, {'snack_id': 7, 'units': 3}]
    """
    _check_columns(demand, "demand", ("snack_id", "units") + STAGE_COLUMNS)
    cols = ["units", *STAGE_COLUMNS]
    totals = demand.groupby("snack_id", sort=True, as_index=False)[cols].sum()
    totals = totals.astype({"snack_id": np.int64, **{c: np.int64 for c in cols}})
    if shortage is not None:
        _check_columns(shortage, "shortage", ("snack_id", "stock", "shortage"))
        extra = shortage[["snack_id", "stock", "shortage"]].astype(np.int64)
        totals = totals.merge(extra, on="snack_id", how="left")
        totals[["stock", "shortage"]] = totals[["stock", "shortage"]].fillna(0).astype(np.int64)
    totals = totals.sort_values(["units", "snack_id"], ascending=[False, True], kind="stable")
    if top is not None:
        totals = totals.head(top)
    return _with_names(totals.reset_index(drop=True), snacks)


def list_shortages(shortage: pd.DataFrame | None,
                   snacks: pd.DataFrame | None = None) -> pd.DataFrame:
    """The snacks whose demand exceeds stock, largest shortage first (then snack id).

    Args:
        shortage: ``snack_id``, ``units``, ``stock``, ``shortage`` (None: no stock).
        snacks: ``snack_id``, ``name``, ``genre``: adds ``name`` and ``genre`` columns.

    Returns:
        ``snack_id`` (``name``, ``genre``), ``units``, ``stock``, ``shortage``.

    Examples:
        >>> s = pd.DataFrame({"snack_id": [1, 2, 3], "units": [5, 9, 1], "stock": [4, 2, 3],
        ...                   "shortage": [1, 7, 0]})
        >>> list_shortages(s)["snack_id"].tolist()
        [2, 1]
    """
    cols = ["snack_id", "units", "stock", "shortage"]
    if shortage is None:
        return _with_names(pd.DataFrame({c: np.zeros(0, np.int64) for c in cols}), snacks)
    _check_columns(shortage, "shortage", tuple(cols))
    out = shortage.loc[shortage["shortage"] > 0, cols].astype(np.int64)
    out = out.sort_values(["shortage", "snack_id"], ascending=[False, True], kind="stable")
    return _with_names(out.reset_index(drop=True), snacks)


def count_units_by_date(demand: pd.DataFrame) -> pd.DataFrame:
    """Units per delivery date, in total and per stage (``delivery_on`` as dates).

    A high ``units_fallback`` share on a date means boxes were hard to fill: the
    preference and explore stages ran out of candidates.
    """
    _check_columns(demand, "demand", ("delivery_on", "units") + STAGE_COLUMNS)
    cols = ["units", *STAGE_COLUMNS]
    frame = demand[cols].astype(np.int64).assign(delivery_on=_delivery_dates(demand["delivery_on"]))
    out = frame.groupby("delivery_on", sort=True, as_index=False)[cols].sum()
    return out[["delivery_on", *cols]]


def rank_chart_snacks(
    demand: pd.DataFrame, shortage: pd.DataFrame | None = None, top: int | None = 30,
    snacks: pd.DataFrame | None = None,
) -> pd.DataFrame:
    """The snacks of the demand-against-stock chart, in its order: short first, then busiest.

    Short snacks come first, largest shortage first; then the others, most units first;
    ties by snack id. Without ``shortage`` it is :func:`rank_busiest_snacks`.

    Args:
        demand: the run's demand (see :func:`rank_busiest_snacks`).
        shortage: the run's shortage, or None.
        top: keep this many snacks (None: all).
        snacks: ``snack_id``, ``name``, ``genre``: bars are labelled with names.

    Returns:
        ``snack_id``, ``units``, ``stock``, ``shortage`` (when ``shortage`` is given),
        ``has_stock_row`` (True when unknown) and ``label`` (the bar's label).

    Examples:
        >>> d = pd.DataFrame({"delivery_on": [1, 1, 1], "snack_id": [7, 8, 9], "units": [9, 5, 2],
        ...     "units_request": [0, 0, 0], "units_preference": [9, 5, 2],
        ...     "units_explore": [0, 0, 0], "units_fallback": [0, 0, 0]})
        >>> s = pd.DataFrame({"snack_id": [7, 8, 9], "units": [9, 5, 2], "stock": [9, 1, 0],
        ...                   "shortage": [0, 4, 2]})
        >>> rank_chart_snacks(d, s)["snack_id"].tolist()
        [8, 9, 7]
    """
    data = rank_busiest_snacks(demand, shortage, top=None)
    cols = ["snack_id", "units"]
    if shortage is not None:
        cols += ["stock", "shortage"]
        data = data.assign(_short=data["shortage"] > 0)
        data = data.sort_values(["_short", "shortage", "units", "snack_id"],
                                ascending=[False, False, False, True], kind="stable")
    data = data[cols]
    if top is not None:
        data = data.head(top)
    data = data.reset_index(drop=True)
    has_row = pd.Series(True, index=data.index)
    if shortage is not None and "has_stock_row" in shortage.columns:
        lookup = dict(zip(shortage["snack_id"].astype(np.int64),
                          shortage["has_stock_row"].astype(bool), strict=True))
        has_row = pd.Series([lookup.get(int(s), True) for s in data["snack_id"]],
                            index=data.index, dtype=bool)
    names = _Names(snacks)
    return data.assign(has_stock_row=has_row,
                       label=names.labels([int(s) for s in data["snack_id"]]))


# --------------------------------------------------------------------------------------------
# charts


def _new_axes(width: float, height: float, *, left: float = 0.7, bottom: float = 0.6,
              top: float = 0.4, right: float = 0.2) -> Axes:
    """A new figure's axes with fixed margins in inches (a layout engine would draw twice)."""
    from matplotlib.figure import Figure

    fig = Figure(figsize=(width, height), dpi=100)
    fig.subplots_adjust(left=left / width, right=1 - right / width, bottom=bottom / height,
                        top=1 - top / height)
    return fig.add_subplot()


def _thousands(ax: Axes, axis: Literal["x", "y"], nbins: int = 6) -> None:
    from matplotlib.ticker import FuncFormatter, MaxNLocator

    target = ax.xaxis if axis == "x" else ax.yaxis
    target.set_major_locator(MaxNLocator(nbins=nbins, integer=True))
    target.set_major_formatter(FuncFormatter(lambda v, _pos: f"{v:,.0f}"))


def _plain(ax: Axes, grid: Literal["x", "y"]) -> None:
    ax.grid(axis=grid, color="#dddddd", linewidth=0.6)
    ax.set_axisbelow(True)
    for side in ("top", "right"):
        ax.spines[side].set_visible(False)


def _draw_demand_vs_stock(ax: Axes, data: pd.DataFrame, title: str, xlabel: str) -> None:
    """Bars of ``data`` (``units``, ``label``, maybe ``stock``/``shortage``), first on top."""
    y = np.arange(len(data))
    units = data["units"].to_numpy(np.int64)
    if "stock" in data.columns and len(data):
        stock = data["stock"].to_numpy(np.int64)
        no_row = ~data["has_stock_row"].to_numpy(bool)
        within = np.minimum(units, stock)
        over = units - within
        ax.barh(y, within, color=_WITHIN, label="units within stock")
        ax.barh(y, over, left=within, color=_OVER, label="units over stock (shortage)")
        ax.scatter(stock, y, marker="|", s=220, linewidths=2.2, color="black", zorder=3,
                   label="stock on hand")
        right = max(int(units.max()), int(stock.max()), 1)
        for yi, u, st, o, missing in zip(y, units, stock, over, no_row, strict=True):
            text = f"{u:,}  (short {o:,})" if o else f"{u:,}"
            if missing:
                text += "  no stock row"
            ax.text(float(max(u, st) + right * 0.012), float(yi), text, va="center", fontsize=7.5,
                    color=_OVER if o else "#333333")  # after the bar or the stock tick
        ax.set_xlim(0, right * 1.22)
    elif len(data):
        ax.barh(y, units, color=_WITHIN, label="units")
        right = max(int(units.max()), 1)
        for yi, u in zip(y, units, strict=True):
            ax.text(float(u + right * 0.01), float(yi), f"{u:,}", va="center", fontsize=7.5,
                    color="#333333")
        ax.set_xlim(0, right * 1.12)
    ax.set_yticks(y, list(data["label"]), fontsize=8)
    ax.set_ylim(len(data) - 0.4, -0.6)  # first on top, no empty band above or below
    ax.set_xlabel(xlabel)
    _thousands(ax, "x")
    ax.set_title(title, fontsize=11, loc="left")
    _plain(ax, "x")
    if len(data):
        ax.legend(loc="lower right", fontsize=8, frameon=False)


def _chart_axes(data: pd.DataFrame) -> Axes:
    longest = max((len(str(s)) for s in data["label"]), default=4)
    left = min(0.35 + 0.062 * longest, 2.6)
    return _new_axes(10.5, max(2.5, 0.26 * len(data) + 1.4), left=left)


def plot_demand_vs_stock(
    demand: pd.DataFrame,
    shortage: pd.DataFrame | None,
    ax: Axes | None = None,
    *,
    top: int = 30,
    snacks: pd.DataFrame | None = None,
) -> Axes:
    """Horizontal bars of units per snack, short snacks first, then the busiest; stock marked.

    The part of a bar within stock is blue, the part over stock (the shortage) red,
    and a black tick marks the stock level. Without ``shortage`` (the lake has no
    stock) the bars are plain and the busiest come first. Numbers carry thousands
    separators; with ``snacks`` the bars are labelled with snack names.

    Args:
        demand: the run's demand (see :func:`rank_busiest_snacks`).
        shortage: the run's shortage, or None.
        ax: draw on these axes; None makes a new figure (no pyplot).
        top: number of snacks to show.
        snacks: ``snack_id``, ``name``, ``genre`` (None: bars labelled ``#id``).

    Returns:
        The axes drawn on (``ax.figure`` is the figure).
    """
    data = rank_chart_snacks(demand, shortage, top=top, snacks=snacks)
    if ax is None:
        ax = _chart_axes(data)
    if shortage is None:
        title = f"Demand: the {len(data)} busiest snacks"
    else:
        n_short = int((data["shortage"] > 0).sum())
        title = (f"Demand against stock: {n_short} short snack(s) first, then the busiest"
                 if n_short else f"Demand against stock: the {len(data)} busiest snacks")
    _draw_demand_vs_stock(ax, data, title, "units over the whole run")
    return ax


def _rank_reservations(reservations: pd.DataFrame, top: int | None,
                       snacks: pd.DataFrame | None) -> pd.DataFrame:
    """Chart data of a stock-aware run: demand without limits against stock, limited first."""
    r = reservations
    data = pd.DataFrame({
        "snack_id": r["snack_id"].to_numpy(np.int64),
        "units": r["units_unconstrained"].to_numpy(np.int64),
        "stock": r["stock"].to_numpy(np.int64),
    })
    data["shortage"] = np.maximum(data["units"] - data["stock"], 0)
    data["_short"] = data["shortage"] > 0
    data = data.sort_values(["_short", "shortage", "units", "snack_id"],
                            ascending=[False, False, False, True], kind="stable")
    data = data.drop(columns="_short")
    if top is not None:
        data = data.head(top)
    data = data.reset_index(drop=True)
    return data.assign(has_stock_row=True,
                       label=_Names(snacks).labels([int(s) for s in data["snack_id"]]))


def plot_units_by_date(demand: pd.DataFrame, ax: Axes | None = None) -> Axes:
    """Stacked bars of units per delivery date by stage (request, preference, explore, fallback)."""
    data = count_units_by_date(demand)
    if ax is None:
        ax = _new_axes(10.5, 3.4, bottom=0.95)
    x = np.arange(len(data))
    bottom = np.zeros(len(data), np.int64)
    for col, color in zip(STAGE_COLUMNS, _STAGE_COLORS, strict=True):
        values = data[col].to_numpy(np.int64)
        ax.bar(x, values, bottom=bottom, color=color, label=col.removeprefix("units_"))
        bottom += values
    if len(data):
        ax.set_ylim(0, max(int(bottom.max()), 1) * 1.1)
    ax.set_xticks(x, [d.strftime("%a\n%m-%d") for d in data["delivery_on"]], fontsize=8)
    ax.set_ylabel("units")
    _thousands(ax, "y")
    ax.set_title("Units per delivery date, by stage", fontsize=11, loc="left")
    _plain(ax, "y")
    if len(data):
        ax.legend(fontsize=8, frameon=False, ncols=4, loc="upper left", bbox_to_anchor=(0, -0.2))
    return ax


def plot_stock_timelines(
    timeline: pd.DataFrame,
    snacks: pd.DataFrame | None = None,
    order: Sequence[int] | None = None,
    *,
    top: int = TIMELINE_CHARTS,
    ncols: int = 4,
) -> Figure:
    """Small multiples: per snack, cumulative demand by delivery date against its stock.

    Bars are cumulative units per date: blue while the stock covers every box of the date,
    dark red on the first date it does not, light red after. The dashed line is the stock.

    Args:
        timeline: ``snack_id``, ``delivery_on``, ``units``, ``cumulative_units``, ``stock``,
            ``covered_units``.
        snacks: ``snack_id``, ``name``, ``genre`` (titles; None: ``#id``).
        order: the snacks to draw, in order (None: as they come in ``timeline``).
        top: draw at most this many snacks.
        ncols: panels per row.

    Returns:
        The figure (no pyplot).
    """
    from matplotlib.figure import Figure

    _check_columns(timeline, "timeline", ("snack_id", "delivery_on", "units",
                                          "cumulative_units", "stock", "covered_units"))
    days = _delivery_dates(timeline["delivery_on"])
    dates = sorted(set(days))
    groups = {_int(k): g for k, g in timeline.assign(_day=days).groupby("snack_id", sort=False)}
    ids = [int(s) for s in (order if order is not None else groups)][:top]
    ids = [s for s in ids if s in groups]
    rows = max(1, math.ceil(len(ids) / ncols))
    fig = Figure(figsize=(2.6 * ncols + 0.2, 1.95 * rows + 0.35), dpi=100)
    fig.subplots_adjust(left=0.05, right=0.99, bottom=0.09 / rows * 1.4, top=1 - 0.3 / rows,
                        hspace=0.75, wspace=0.32)
    names = _Names(snacks)
    labels = names.labels(ids)
    index = {d: i for i, d in enumerate(dates)}
    for k, (sid, label) in enumerate(zip(ids, labels, strict=True)):
        ax = fig.add_subplot(rows, ncols, k + 1)
        view = _timeline_cells(groups[sid], dates)
        cum = np.array([c["cumulative"] for c in view["cells"]], np.int64)
        colors = [{"ok": _WITHIN, "first": _FIRST}.get(c["state"], _OVER)
                  for c in view["cells"]]
        ax.bar(np.arange(len(dates)), cum, color=colors, width=0.8)
        ax.axhline(view["stock"], color="black", linestyle="--", linewidth=1.1)
        ax.set_title(_truncate(label, 26), fontsize=8.5, loc="left")
        first = view["first"]
        note = f"stock {view['stock']:,}" + (f" · out {first:%m-%d}" if first else "")
        ax.text(0.02, 0.97, note, transform=ax.transAxes, fontsize=7, va="top",
                color=_FIRST if first else "#333333")
        ticks = [0, len(dates) - 1]
        if first:  # the run-out date, and the ends only where their labels do not collide
            at = index[first]
            ticks = sorted({at} | {t for t in ticks if abs(t - at) >= 3})
        ax.set_xticks(ticks, [dates[i].strftime("%m-%d") for i in ticks], fontsize=6.5)
        ax.tick_params(axis="y", labelsize=6.5)
        ax.set_ylim(0, max(int(cum.max()) if len(cum) else 1, view["stock"], 1) * 1.25)
        _thousands(ax, "y", nbins=3)
        _plain(ax, "y")
    return fig


def figure_png(fig: Figure) -> bytes:
    """The figure as PNG bytes (Agg; no metadata, so equal figures give equal bytes).

    A name with characters the chart font lacks (CJK, emoji) draws as boxes instead of
    warning: the page's tables show every name in the browser's fonts.
    """
    buf = io.BytesIO()
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=r"Glyph .* missing from", category=UserWarning)
        warnings.filterwarnings("ignore", message=r"Matplotlib currently does not support",
                                category=UserWarning)
        fig.savefig(buf, format="png", metadata={"Software": None})
    return buf.getvalue()


def _png_uri(fig: Figure) -> str:
    return "data:image/png;base64," + base64.b64encode(figure_png(fig)).decode("ascii")


# --------------------------------------------------------------------------------------------
# what the page shows (plain data for the templates)


def _timeline_cells(group: pd.DataFrame, dates: Sequence[dt.date]) -> dict[str, Any]:
    """One snack's timeline over ``dates``: per date the cumulative units and its state.

    A date is ``short`` when the stock does not cover all its boxes (``covered_units`` <
    ``units``), the first such date ``first``; ``over`` when the cumulative demand is past
    the stock but the date has no box left uncovered; else ``ok``.
    """
    days = group["_day"] if "_day" in group.columns else _delivery_dates(group["delivery_on"])
    by_day = {d: r for d, r in zip(days, group.itertuples(index=False), strict=True)}
    stock = _int(group["stock"].iloc[0]) if len(group) else 0
    cells: list[dict[str, Any]] = []
    cumulative = 0
    first: dt.date | None = None
    for d in dates:
        row = by_day.get(d)
        units = _int(getattr(row, "units", 0)) if row is not None else 0
        if row is not None:
            cumulative = _int(row.cumulative_units)
        uncovered = max(units - _int(row.covered_units), 0) if row is not None else 0
        if uncovered:
            state = "short" if first else "first"
            first = first or d
        else:
            state = "over" if cumulative > stock else "ok"
        cells.append({"day": d, "units": units, "cumulative": cumulative, "uncovered": uncovered,
                      "state": state})
    return {"stock": stock, "first": first, "cells": cells,
            "uncovered": sum(c["uncovered"] for c in cells)}


def _chunks(items: Sequence[Any], size: int) -> list[list[Any]]:
    """``items`` in balanced runs of at most ``size``.

    Examples:
        >>> [len(c) for c in _chunks(list(range(31)), 14)]
        [11, 10, 10]
    """
    if not items:
        return []
    n = math.ceil(len(items) / size)
    per, extra = divmod(len(items), n)
    out, start = [], 0
    for i in range(n):
        end = start + per + (1 if i < extra else 0)
        out.append(list(items[start:end]))
        start = end
    return out


def _timeline_view(timeline: pd.DataFrame | None, snacks: pd.DataFrame, names: _Names,
                   weight: Mapping[int, int]) -> dict[str, Any] | None:
    """Per-snack timelines: table rows (earliest run-out first) and the small-multiples chart."""
    if timeline is None or not len(timeline):
        return None
    _check_columns(timeline, "timeline", ("snack_id", "delivery_on", "units",
                                          "cumulative_units", "stock", "covered_units"))
    days = _delivery_dates(timeline["delivery_on"])
    dates = sorted(set(days))
    frame = timeline.assign(_day=days)
    rows = []
    for sid, group in frame.groupby("snack_id", sort=True):
        view = _timeline_cells(group.sort_values("_day"), dates)
        rows.append({"snack": names.snack(sid), **view})
    far = dt.date.max
    rows.sort(key=lambda r: (r["first"] or far, -weight.get(r["snack"]["id"], 0),
                             r["snack"]["id"]))
    by_weight = sorted(rows, key=lambda r: (-weight.get(r["snack"]["id"], 0),
                                            r["first"] or far, r["snack"]["id"]))
    order = [r["snack"]["id"] for r in by_weight if r["first"] is not None] or \
        [r["snack"]["id"] for r in by_weight]
    fig = plot_stock_timelines(timeline, snacks, order=order)
    shown = order[:TIMELINE_CHARTS]
    tables = []
    for part in _chunks(list(range(len(dates))), TIMELINE_DATES):
        tables.append({
            "dates": [dates[i] for i in part],
            "rows": [{**r, "cells": [r["cells"][i] for i in part]} for r in rows],
        })
    return {
        "tables": tables,
        "rows": rows,
        "chart": _png_uri(fig),
        "chart_alt": ("cumulative demand by delivery date against stock for "
                      + ", ".join(names.label(s) for s in shown)),
        "charted": len(shown),
        "count": len(rows),
    }


def _callouts_view(summary: Mapping[str, Any], names: _Names) -> list[dict[str, Any]]:
    out = []
    for c in summary.get("callouts") or []:
        if not isinstance(c, Mapping):
            continue
        ids = [s for s in (c.get("snacks") or []) if isinstance(s, (int, np.integer))]
        count = _int(c.get("count"), len(ids))
        shown = ids[:CALLOUT_SNACKS]
        severity = str(c.get("severity") or "info")
        out.append({
            "code": str(c.get("code") or ""),
            "severity": severity if severity in ("warning", "info") else "info",
            "message": str(c.get("message") or ""),
            "count": count,
            "snacks": [names.snack(s) for s in shown],
            "more": max(count - len(shown), len(ids) - len(shown), 0) if ids else 0,
        })
    out.sort(key=lambda c: c["severity"] != "warning")  # stable: warnings first
    return out


def _shortage_view(shortage: pd.DataFrame | None, names: _Names) -> dict[str, Any] | None:
    if shortage is None:
        return None
    _check_columns(shortage, "shortage", ("snack_id", "units", "stock", "shortage"))
    short = shortage.loc[shortage["shortage"] > 0]
    short = short.sort_values(["shortage", "snack_id"], ascending=[False, True], kind="stable")
    has_row = "has_stock_row" in short.columns
    has_date = "runs_out_on" in short.columns
    has_boxes = "boxes_affected" in short.columns
    rows: list[dict[str, Any]] = []
    for r in short.to_dict("records"):
        rows.append({
            "snack": names.snack(r["snack_id"]),
            "units": _int(r["units"]),
            "stock": _int(r["stock"]),
            "shortage": _int(r["shortage"]),
            "no_stock_row": has_row and not bool(r["has_stock_row"]),
            "runs_out_on": _as_date(r["runs_out_on"]) if has_date else None,
            "boxes_affected": _int(r["boxes_affected"]) if has_boxes else None,
        })
    first = min((r["runs_out_on"] for r in rows if r["runs_out_on"]), default=None)
    no_row = [r for r in rows if r["no_stock_row"]]
    return {
        "rows": rows,
        "snacks_in_demand": len(shortage),
        "units_short": sum(r["shortage"] for r in rows),
        "units": sum(r["units"] for r in rows),
        "stock": sum(r["stock"] for r in rows),
        "boxes_affected": sum(r["boxes_affected"] or 0 for r in rows) if has_boxes else None,
        "known_dates": has_date,
        "known_rows": has_row,
        "first_out": first,
        "first_out_snacks": [r["snack"] for r in rows if first and r["runs_out_on"] == first],
        "no_stock_row": len(no_row),
        "stock_out": sum(1 for r in rows if not r["no_stock_row"] and r["stock"] == 0),
    }


def _reservations_view(res: pd.DataFrame | None, names: _Names,
                       summary: Mapping[str, Any]) -> dict[str, Any] | None:
    if res is None:
        return None
    _check_columns(res, "reservations", ("snack_id", "stock", "units_unconstrained", "units",
                                         "units_left", "boxes_lost", "boxes_gained", "limited",
                                         "cutoff_on"))
    limited = res.loc[res["limited"].astype(bool)]
    rows: list[dict[str, Any]] = []
    for r in limited.to_dict("records"):
        cutoff = _as_date(r["cutoff_on"])
        rows.append({
            "snack": names.snack(r["snack_id"]),
            "stock": _int(r["stock"]),
            "units_unconstrained": _int(r["units_unconstrained"]),
            "units": _int(r["units"]),
            "units_left": _int(r["units_left"]),
            "boxes_lost": _int(r["boxes_lost"]),
            "boxes_gained": _int(r["boxes_gained"]),
            "cutoff_on": cutoff,
            "no_box": cutoff is None,
        })
    far = dt.date.max
    rows.sort(key=lambda r: (-r["boxes_lost"], dt.date.min if r["no_box"] else
                             (r["cutoff_on"] or far), r["snack"]["id"]))
    return {
        "rows": rows,
        "snacks": len(res),
        "limited": len(rows),
        "no_box": sum(1 for r in rows if r["no_box"]),
        "units_left": sum(r["units_left"] for r in rows),
        "boxes_lost": sum(r["boxes_lost"] for r in rows),
        "boxes_gained": sum(r["boxes_gained"] for r in rows),
        "units_unconstrained": sum(r["units_unconstrained"] for r in rows),
        "units": sum(r["units"] for r in rows),
        "stock": sum(r["stock"] for r in rows),
        "gained": [{"snack": names.snack(r["snack_id"]), "boxes_gained": _int(r["boxes_gained"])}
                   for r in res.loc[res["boxes_gained"] > 0].sort_values(
                       ["boxes_gained", "snack_id"], ascending=[False, True]).head(10)
                   .to_dict("records")],
    }


def _by_date_view(summary: Mapping[str, Any], demand: pd.DataFrame) -> dict[str, Any]:
    """Boxes (full, short, and short without stock limits) and units per stage, per date."""
    units = count_units_by_date(demand) if len(demand) else None
    per: dict[dt.date, dict[str, Any]] = {}

    def row(d: dt.date) -> dict[str, Any]:
        return per.setdefault(d, {"day": d, "full": None, "short": None, "short_free": None,
                                  "units": 0, **{c: 0 for c in STAGE_COLUMNS}})

    if units is not None:
        for rec in units.to_dict("records"):
            row(rec["delivery_on"]).update({c: _int(rec[c]) for c in ("units", *STAGE_COLUMNS)})
    boxes = summary.get("boxes_by_date")
    free = summary.get("boxes_by_date_unconstrained")
    has_boxes = isinstance(boxes, Mapping) and bool(boxes)
    has_free = isinstance(free, Mapping) and bool(free)
    for source, keys in ((boxes, ("full", "short")), (free, ("short_free",))):
        if not isinstance(source, Mapping):
            continue
        for k, v in source.items():
            d = _as_date(k)
            if d is None or not isinstance(v, Mapping):
                continue
            if keys == ("short_free",):
                row(d)["short_free"] = _int(v.get("short"))
            else:
                row(d).update(full=_int(v.get("full")), short=_int(v.get("short")))
    rows = [per[d] for d in sorted(per)]
    for r in rows:
        r["boxes"] = (r["full"] or 0) + (r["short"] or 0) if r["full"] is not None else None
        r["full_pct"] = 100.0 * (r["full"] or 0) / r["boxes"] if r["boxes"] else 100.0
    totals = {c: sum(r[c] for r in rows) for c in ("units", *STAGE_COLUMNS)}
    for c in ("full", "short", "short_free", "boxes"):
        totals[c] = sum(r[c] or 0 for r in rows)
    return {"rows": rows, "has_boxes": has_boxes, "has_free": has_free, "totals": totals}


def _comparison_view(comparison: Mapping[str, Any] | None, names: _Names) -> dict[str, Any] | None:
    if comparison is None:
        return None
    previous = comparison.get("previous") or {}
    before, after = (list(comparison.get("units_total") or (None, None)) + [None, None])[:2]
    frame = comparison.get("snacks")
    rows = []
    if isinstance(frame, pd.DataFrame) and len(frame):
        for r in frame.to_dict("records"):
            snack = names.snack(r.get("snack_id"))
            if snack["name"] is None and isinstance(r.get("name"), str):
                snack["name"] = r["name"]
            if snack["genre"] is None and isinstance(r.get("genre"), str):
                snack["genre"] = r["genre"]
            rows.append({
                "snack": snack,
                "units_before": _int(r.get("units_before")),
                "units_after": _int(r.get("units_after")),
                "change": _int(r.get("change", _int(r.get("units_after"))
                                      - _int(r.get("units_before")))),
                "shortage_before": r.get("shortage_before"),
                "shortage_after": r.get("shortage_after"),
            })
    has_short = any(r["shortage_before"] is not None for r in rows)
    return {
        "previous": {k: previous.get(k) for k in ("run_id", "out", "date_from", "date_to",
                                                  "finished_at")},
        "why": [str(w) for w in comparison.get("why") or []],
        "units_before": None if before is None else _int(before),
        "units_after": None if after is None else _int(after),
        "units_change": None if before is None or after is None else _int(after) - _int(before),
        "boxes_changed": comparison.get("boxes_changed"),
        "rows": rows,
        "has_short": has_short,
    }


def _mapping(value: Any) -> Mapping[str, Any]:
    return value if isinstance(value, Mapping) else {}


def _mapping_rows(values: Any) -> list[tuple[str, Any]]:
    if not isinstance(values, Mapping):
        return []
    out = []
    for k, v in values.items():
        if isinstance(v, (Mapping, list, tuple)):
            v = ", ".join(f"{a}={b}" for a, b in v.items()) if isinstance(v, Mapping) else \
                ", ".join(map(str, v))
        out.append((str(k), v))
    return out


def _context_view(summary: Mapping[str, Any]) -> dict[str, Any]:
    seconds = summary.get("stage_seconds")
    timings = []
    total = None
    if isinstance(seconds, Mapping):
        total = seconds.get("total")
        for stage, value in seconds.items():
            share = (100.0 * float(value) / float(total)
                     if isinstance(value, (int, float)) and isinstance(total, (int, float))
                     and total and stage != "total" else None)
            timings.append({"stage": str(stage), "seconds": value, "share": share})
    rows_in = _mapping(summary.get("input_rows"))
    orphans = _mapping(summary.get("orphan_rows"))
    invalid = _mapping(summary.get("invalid_rows"))
    tables = list(dict.fromkeys([*rows_in, *orphans, *invalid]))
    rows = [{"table": str(t), "rows": rows_in.get(t), "orphans": _int(orphans.get(t)),
             "invalid": _int(invalid.get(t))} for t in tables]
    cluster = []
    for k, v in _mapping_rows(summary.get("cluster")):
        if k.endswith("_bytes") and isinstance(v, (int, np.integer)) and v > 0:
            v = f"{int(v):,} ({int(v) / 2**30:.1f} GiB)"
        cluster.append((k, v))
    lake = _mapping(summary.get("lake"))
    run = [("run id", summary.get("run_id")), ("finished at", summary.get("finished_at")),
           ("run key", summary.get("run_key")), ("lake", lake.get("url")),
           ("lake layout", lake.get("layout")), ("lake partitions", lake.get("partitions")),
           ("on invalid rows", summary.get("on_invalid"))]
    return {
        "parameters": _mapping_rows(summary.get("parameters")),
        "timings": timings,
        "rows": rows,
        "cluster": cluster,
        "versions": _mapping_rows(summary.get("versions")),
        "run": [(k, v) for k, v in run if v is not None],
        "fingerprint": _mapping_rows(summary.get("input_fingerprint")),
    }


def _chart_view(data: ReportData, names: _Names, stock_aware: bool) -> dict[str, Any] | None:
    if not len(data.demand):
        return None
    if stock_aware and data.reservations is not None and len(data.reservations):
        ranked = _rank_reservations(data.reservations, 30, names.frame())
        ax = _chart_axes(ranked)
        n_short = int((ranked["shortage"] > 0).sum())
        _draw_demand_vs_stock(
            ax, ranked, f"Demand without stock limits against stock: {n_short} limited "
            "snack(s) first, then the busiest", "units over the whole run, without stock limits")
        total = len(data.reservations)
        short_total = int((data.reservations["units_unconstrained"]
                           > data.reservations["stock"]).sum())
    else:
        ranked = rank_chart_snacks(data.demand, data.shortage, top=30, snacks=names.frame())
        ax = _chart_axes(ranked)
        plot_demand_vs_stock(data.demand, data.shortage, ax=ax, top=30, snacks=names.frame())
        total = int(data.demand["snack_id"].nunique())
        short_total = int((data.shortage["shortage"] > 0).sum()) if data.shortage is not None \
            else 0
    bars = [f"{label} ({units:,}" + (f", short {short:,})" if short else ")")
            for label, units, short in zip(
                ranked["label"], ranked["units"],
                ranked["shortage"] if "shortage" in ranked.columns else [0] * len(ranked),
                strict=True)]
    return {
        "uri": _png_uri(cast("Figure", ax.figure)),
        "alt": "bars, top to bottom: " + "; ".join(bars),
        "shown": len(ranked),
        "total": total,
        "short_shown": int((ranked["shortage"] > 0).sum()) if "shortage" in ranked else 0,
        "short_total": short_total,
        "ids": [int(s) for s in ranked["snack_id"]],
        "stock_aware": stock_aware and data.reservations is not None,
    }


def _page_context(data: ReportData, csv_name: str | None) -> dict[str, Any]:
    summary = data.summary if isinstance(data.summary, Mapping) else {}
    _check_columns(data.demand, "demand", ("delivery_on", "snack_id", "units") + STAGE_COLUMNS)
    names = _Names(data.snacks)
    for frame in (data.shortage, data.reservations):  # names the pipeline put there, if any
        names.add(frame)
    stock_aware = bool(summary.get("stock_aware")) or data.reservations is not None
    shortage = _shortage_view(data.shortage, names)
    reservations = _reservations_view(data.reservations, names, summary)
    weight: dict[int, int] = {}
    if shortage:
        weight = {r["snack"]["id"]: r["shortage"] for r in shortage["rows"]}
    elif reservations:
        weight = {r["snack"]["id"]: r["boxes_lost"] for r in reservations["rows"]}
    date_from, date_to = summary.get("date_from", "?"), summary.get("date_to", "?")
    span = str(date_from) if date_from == date_to else f"{date_from} → {date_to}"
    units_total = summary.get("units_total")
    if units_total is None:
        units_total = int(data.demand["units"].sum()) if len(data.demand) else 0
    unit_chart = None
    if len(data.demand):
        unit_chart = _png_uri(cast("Figure", plot_units_by_date(data.demand).figure))
    return {
        "span": span,
        "summary": summary,
        "run_id": summary.get("run_id", "?"),
        "finished_at": summary.get("finished_at", "?"),
        "lake_url": _mapping(summary.get("lake")).get("url", "?"),
        "stock_aware": stock_aware,
        "targeted": _int(summary.get("users_targeted")),
        "boxes_full": _int(summary.get("boxes_full")),
        "boxes_short": _int(summary.get("boxes_short")),
        "units_total": units_total,
        "snacks_in_demand": int(data.demand["snack_id"].nunique()) if len(data.demand) else 0,
        "callouts": _callouts_view(summary, names),
        "csv_name": csv_name,
        "shortage": shortage,
        "reservations": reservations,
        "rounds": summary.get("rounds"),
        "boxes_changed": summary.get("boxes_changed"),
        "boxes_short_unconstrained": summary.get("boxes_short_unconstrained"),
        "units_unconstrained": summary.get("units_unconstrained"),
        "timeline": _timeline_view(data.timeline, names.frame(), names, weight),
        "chart": _chart_view(data, names, stock_aware),
        "unit_chart": unit_chart,
        "by_date": _by_date_view(summary, data.demand),
        "comparison": _comparison_view(data.comparison, names),
        "context": _context_view(summary),
        "stage_labels": [c.removeprefix("units_") for c in STAGE_COLUMNS],
        "stage_columns": list(STAGE_COLUMNS),
        "stage_colors": list(_STAGE_COLORS),
    }


# --------------------------------------------------------------------------------------------
# rendering


@functools.lru_cache(maxsize=1)
def report_environment() -> jinja2.Environment:
    """The Jinja2 environment of the report's templates (``preassign/templates/``).

    Autoescaping is on for every template (``.j2``, ``.html``, and strings), and an
    undefined name is an error rather than an empty string.
    """
    env = jinja2.Environment(
        loader=jinja2.PackageLoader("preassign", "templates"),
        autoescape=jinja2.select_autoescape(enabled_extensions=("html", "htm", "xml", "j2"),
                                            default_for_string=True, default=True),
        undefined=jinja2.StrictUndefined,
        lstrip_blocks=True,
        keep_trailing_newline=True,
    )
    env.filters.update(num=format_number, signed=_signed, day=_day, short_day=_short_day,
                       seconds=_seconds)
    env.globals.update(percent=_percent)
    return env


def csv_file_name(data: ReportData) -> str | None:
    """The CSV written beside the page: ``shortage.csv``, ``reservations.csv`` or None."""
    if data.reservations is not None:
        return "reservations.csv"
    if data.shortage is not None:
        return "shortage.csv"
    return None


def render_report(
    data: ReportData | Mapping[str, Any],
    demand: pd.DataFrame | None = None,
    shortage: pd.DataFrame | None = None,
) -> str:
    """Render a run as one self-contained HTML page (no network access needed to view it).

    Args:
        data: what the run produced (:class:`ReportData`). For the older call
            ``render_report(summary, demand, shortage)`` this is the summary, and the page
            shows snack ids without names and links no CSV.
        demand: the older call's demand (only when ``data`` is a summary).
        shortage: the older call's shortage, or None (only when ``data`` is a summary).

    Returns:
        The page: the run's numbers and call-outs; the short snacks (or, for a stock-aware
        run, the limited ones) with the date each runs out and per-snack timelines; demand
        against stock; boxes and units per date; since the previous run; the context
        (parameters, timings, rows read, cluster, versions, lake).

    Raises:
        ValueError: a frame lacks a required column.
        TypeError: ``data`` is a :class:`ReportData` and ``demand`` or ``shortage`` is given
            too, or ``data`` is a summary and ``demand`` is missing.
    """
    if isinstance(data, ReportData):
        if demand is not None or shortage is not None:
            raise TypeError("render_report(ReportData) takes no demand or shortage argument: "
                            "they are fields of the ReportData")
        report, csv_name = data, csv_file_name(data)
    else:
        if demand is None:
            raise TypeError("render_report(summary, demand, shortage): demand is missing; or "
                            "pass one preassign.report.ReportData")
        report = ReportData(summary=dict(data), demand=demand,
                            snacks=pd.DataFrame({"snack_id": [], "name": [], "genre": []}),
                            shortage=shortage)
        csv_name = None
    context = _page_context(report, csv_name)
    return report_environment().get_template("report.html.j2").render(context)


def _spreadsheet_safe(value: Any) -> Any:
    """Text a spreadsheet would run as a formula, made inert with a leading apostrophe.

    Examples:
        >>> _spreadsheet_safe("=HYPERLINK(1)"), _spreadsheet_safe("choco"), _spreadsheet_safe(None)
        ("'=HYPERLINK(1)", 'choco', None)
    """
    if isinstance(value, str) and value[:1] in ("=", "+", "-", "@", "\t", "\r"):
        return "'" + value
    return value


def _iso_dates(values: pd.Series) -> pd.Series:
    out = []
    for v in values:
        d = _as_date(v)
        out.append(None if d is None else d.isoformat())
    return pd.Series(out, index=values.index, dtype=object)


def shortage_csv(data: ReportData) -> bytes:
    r"""The CSV beside the page: every shortage row (or, stock-aware, every reservation).

    ``shortage.csv``: one row per snack with demand, largest shortage first (then snack
    id, as :func:`list_shortages` and the page), with
    ``name`` and ``genre`` after ``snack_id``, then ``units``, ``stock``, ``shortage`` and,
    when the run has them, ``has_stock_row``, ``runs_out_on``, ``boxes_affected``.
    ``reservations.csv`` (stock-aware): every ``reservations/`` row with names, limited
    snacks first (most boxes lost first). Dates are ISO (``cutoff_on`` empty for no key).
    UTF-8 with a byte-order mark (so spreadsheet programs read Japanese names right),
    a header row, ``\n`` line ends; a name a spreadsheet would run as a formula starts
    with ``'``.

    Raises:
        ValueError: the run has neither shortage nor reservations (no stock).
    """
    names = _Names(data.snacks)
    names.add(data.reservations if data.reservations is not None else data.shortage)
    if data.reservations is not None:
        res = data.reservations
        _check_columns(res, "reservations", ("snack_id", "stock", "units_unconstrained",
                                             "units", "units_left", "boxes_lost",
                                             "boxes_gained", "limited", "cutoff_on"))
        frame = res.assign(_limited=res["limited"].astype(bool)).sort_values(
            ["_limited", "boxes_lost", "snack_id"], ascending=[False, False, True],
            kind="stable").drop(columns="_limited")
        frame = frame.assign(cutoff_on=_iso_dates(frame["cutoff_on"]),
                             limited=frame["limited"].astype(bool))
    elif data.shortage is not None:
        short = data.shortage
        _check_columns(short, "shortage", ("snack_id", "units", "stock", "shortage"))
        cols = ["snack_id", "units", "stock", "shortage"] + [
            c for c in ("has_stock_row", "runs_out_on", "boxes_affected") if c in short.columns]
        frame = short[cols].sort_values(["shortage", "snack_id"], ascending=[False, True],
                                        kind="stable")
        if "runs_out_on" in frame.columns:
            frame = frame.assign(runs_out_on=_iso_dates(frame["runs_out_on"]))
        if "has_stock_row" in frame.columns:
            frame = frame.assign(has_stock_row=frame["has_stock_row"].astype(bool))
    else:
        raise ValueError("shortage_csv: the run has neither a shortage nor reservations (the "
                         "lake has no stock table), so there is no CSV to write")
    frame = _insert_names(frame.reset_index(drop=True), names)
    frame["name"] = [_spreadsheet_safe(v) for v in frame["name"]]
    frame["genre"] = [_spreadsheet_safe(v) for v in frame["genre"]]
    text = frame.to_csv(index=False, lineterminator="\n")
    return ("\ufeff" + text).encode("utf-8")
