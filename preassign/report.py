"""The run report: one self-contained HTML page, and the charts it shows.

Design
------
:func:`render_report` turns what a run already has in memory (``summary``, ``demand``,
``shortage``) into a single HTML string. It opens nothing on the network: charts are
PNGs drawn by matplotlib's Agg renderer and inlined as ``data:`` URIs, the CSS is
inline, and there are no scripts or web fonts, so the page can be mailed, archived
next to the run or opened offline. Every string that reaches the page goes through
:func:`html.escape`.

The same small functions serve the notebook: :func:`rank_busiest_snacks` (the demand
table), :func:`list_shortages` (the shortage list), :func:`count_units_by_date` and
:func:`plot_demand_vs_stock` (the chart, drawn on any matplotlib ``Axes``).

Figures are made with :class:`matplotlib.figure.Figure` rather than pyplot, so
rendering a report touches no global state and needs no GUI backend.
"""

from __future__ import annotations

import base64
import datetime as dt
import html
import io
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

import numpy as np
import pandas as pd

if TYPE_CHECKING:  # pragma: no cover
    from matplotlib.axes import Axes
    from matplotlib.figure import Figure

__all__ = [
    "render_report",
    "plot_demand_vs_stock",
    "plot_units_by_date",
    "rank_busiest_snacks",
    "list_shortages",
    "count_units_by_date",
    "figure_png",
]

STAGE_COLUMNS = ("units_request", "units_preference", "units_explore", "units_fallback")
_STAGE_COLORS = ("#F58518", "#4C78A8", "#54A24B", "#B279A2")
_WITHIN = "#4C78A8"
_OVER = "#E45756"
_EPOCH = dt.date(1970, 1, 1)


# --------------------------------------------------------------------------------------------
# tables


def _delivery_dates(values: pd.Series) -> pd.Series:
    """``delivery_on`` as ``datetime.date``: int days since the epoch, dates or datetimes."""
    if pd.api.types.is_integer_dtype(values.dtype):
        days = values.to_numpy(np.int64)
        return pd.Series([_EPOCH + dt.timedelta(days=int(d)) for d in days], index=values.index,
                         dtype=object)
    return pd.Series([pd.Timestamp(v).date() for v in values], index=values.index, dtype=object)


def _check_columns(frame: pd.DataFrame, name: str, needed: tuple[str, ...]) -> None:
    missing = [c for c in needed if c not in frame.columns]
    if missing:
        raise ValueError(
            f"{name} is missing column(s) {', '.join(missing)} (columns present: "
            f"{', '.join(map(str, frame.columns)) or 'none'}); pass the run's "
            f"RunResult.{name} or the {name}/ output"
        )


def rank_busiest_snacks(
    demand: pd.DataFrame, shortage: pd.DataFrame | None = None, top: int | None = 30
) -> pd.DataFrame:
    """Units per snack over the whole run, busiest first, with stock and shortage.

    Args:
        demand: one row per (``delivery_on``, ``snack_id``) with ``units`` and the
            per-stage ``units_*`` columns (``RunResult.demand`` or the ``demand/`` output).
        shortage: ``snack_id``, ``units``, ``stock``, ``shortage`` (or None: no stock).
        top: keep this many snacks (None: all).

    Returns:
        ``snack_id``, ``units``, the four ``units_*`` columns and, with ``shortage``,
        ``stock`` and ``shortage``; ordered by units descending, then snack id.

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
    return totals.reset_index(drop=True)


def list_shortages(shortage: pd.DataFrame | None) -> pd.DataFrame:
    """The snacks whose demand exceeds stock, largest shortage first (then snack id).

    Examples:
        >>> s = pd.DataFrame({"snack_id": [1, 2, 3], "units": [5, 9, 1], "stock": [4, 2, 3],
        ...                   "shortage": [1, 7, 0]})
        >>> list_shortages(s)["snack_id"].tolist()
        [2, 1]
    """
    cols = ["snack_id", "units", "stock", "shortage"]
    if shortage is None:
        return pd.DataFrame({c: np.zeros(0, np.int64) for c in cols})
    _check_columns(shortage, "shortage", tuple(cols))
    out = shortage.loc[shortage["shortage"] > 0, cols].astype(np.int64)
    out = out.sort_values(["shortage", "snack_id"], ascending=[False, True], kind="stable")
    return out.reset_index(drop=True)


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


def plot_demand_vs_stock(
    demand: pd.DataFrame,
    shortage: pd.DataFrame | None,
    ax: Axes | None = None,
    *,
    top: int = 30,
) -> Axes:
    """Horizontal bars of units per snack for the busiest snacks, stock marked.

    The part of a bar within stock is blue, the part over stock (the shortage) red,
    and a black tick marks the stock level. Without ``shortage`` (the lake has no
    stock) the bars are plain.

    Args:
        demand: the run's demand (see :func:`rank_busiest_snacks`).
        shortage: the run's shortage, or None.
        ax: draw on these axes; None makes a new figure (no pyplot).
        top: number of snacks to show.

    Returns:
        The axes drawn on (``ax.figure`` is the figure).
    """
    data = rank_busiest_snacks(demand, shortage, top=top)
    if ax is None:
        ax = _new_axes(9.0, max(2.5, 0.26 * len(data) + 1.4))
    y = np.arange(len(data))
    units = data["units"].to_numpy(np.int64)
    labels = [f"#{s}" for s in data["snack_id"]]
    if shortage is not None and len(data):
        stock = data["stock"].to_numpy(np.int64)
        within = np.minimum(units, stock)
        over = units - within
        ax.barh(y, within, color=_WITHIN, label="units within stock")
        ax.barh(y, over, left=within, color=_OVER, label="units over stock (shortage)")
        ax.scatter(stock, y, marker="|", s=220, linewidths=2.2, color="black", zorder=3,
                   label="stock on hand")
        right = max(int(units.max()), int(stock.max()), 1)
        for yi, u, st, o in zip(y, units, stock, over, strict=False):
            text = f"{u}  (short {o})" if o else f"{u}"
            ax.text(float(max(u, st) + right * 0.012), float(yi), text, va="center", fontsize=7.5,
                    color=_OVER if o else "#333333")  # after the bar or the stock tick
        ax.set_xlim(0, right * 1.18)
    elif len(data):
        ax.barh(y, units, color=_WITHIN, label="units")
        right = max(int(units.max()), 1)
        for yi, u in zip(y, units, strict=False):
            ax.text(float(u + right * 0.01), float(yi), f"{u}", va="center", fontsize=7.5,
                    color="#333333")
        ax.set_xlim(0, right * 1.12)
    ax.set_yticks(y, labels, fontsize=8)
    ax.set_ylim(len(data) - 0.4, -0.6)  # busiest on top, no empty band above or below
    ax.set_xlabel("units over the whole run")
    ax.set_title(f"Demand against stock: the {len(data)} busiest snacks", fontsize=11, loc="left")
    ax.grid(axis="x", color="#dddddd", linewidth=0.6)
    ax.set_axisbelow(True)
    for side in ("top", "right"):
        ax.spines[side].set_visible(False)
    if len(data):
        ax.legend(loc="lower right", fontsize=8, frameon=False)
    return ax


def plot_units_by_date(demand: pd.DataFrame, ax: Axes | None = None) -> Axes:
    """Stacked bars of units per delivery date by stage (request, preference, explore, fallback)."""
    data = count_units_by_date(demand)
    if ax is None:
        ax = _new_axes(9.0, 3.4, bottom=0.9)
    x = np.arange(len(data))
    bottom = np.zeros(len(data), np.int64)
    for col, color in zip(STAGE_COLUMNS, _STAGE_COLORS, strict=False):
        values = data[col].to_numpy(np.int64)
        ax.bar(x, values, bottom=bottom, color=color, label=col.removeprefix("units_"))
        bottom += values
    if len(data):
        ax.set_ylim(0, max(int(bottom.max()), 1) * 1.1)
    ax.set_xticks(x, [d.strftime("%m-%d") for d in data["delivery_on"]], fontsize=8)
    ax.set_ylabel("units")
    ax.set_title("Units per delivery date, by stage", fontsize=11, loc="left")
    ax.grid(axis="y", color="#dddddd", linewidth=0.6)
    ax.set_axisbelow(True)
    for side in ("top", "right"):
        ax.spines[side].set_visible(False)
    if len(data):
        ax.legend(fontsize=8, frameon=False, ncols=4, loc="upper left", bbox_to_anchor=(0, -0.12))
    return ax


def figure_png(fig: Figure) -> bytes:
    """The figure as PNG bytes (Agg; no metadata, so equal figures give equal bytes)."""
    buf = io.BytesIO()
    fig.savefig(buf, format="png", metadata={"Software": None})
    return buf.getvalue()


# --------------------------------------------------------------------------------------------
# HTML

_CSS = """
*{box-sizing:border-box}
body{font-family:system-ui,-apple-system,"Segoe UI",Roboto,"Noto Sans",Arial,sans-serif;
 margin:0;padding:24px 32px;color:#222;background:#fafafa;line-height:1.4}
h1{font-size:22px;margin:0 0 4px}
h2{font-size:17px;margin:28px 0 8px;border-bottom:1px solid #ddd;padding-bottom:4px}
.sub{color:#666;font-size:13px;margin-bottom:16px}
.cards{display:flex;flex-wrap:wrap;gap:12px}
.card{background:#fff;border:1px solid #e2e2e2;border-radius:6px;padding:10px 14px;min-width:140px}
.card .v{font-size:22px;font-weight:600}
.card .k{font-size:12px;color:#666;text-transform:uppercase;letter-spacing:.03em}
.card.bad .v{color:#c62828}
table{border-collapse:collapse;background:#fff;font-size:13px;margin:4px 0 8px}
th,td{border:1px solid #e2e2e2;padding:3px 9px;text-align:right}
th{background:#f0f0f0;font-weight:600}
td.l,th.l{text-align:left}
img.chart{max-width:100%;background:#fff;border:1px solid #e2e2e2;border-radius:6px}
.bar{display:flex;height:18px;width:480px;max-width:100%;border-radius:4px;overflow:hidden;
 border:1px solid #ccc;margin:6px 0}
.bar .full{background:#2E7D32}.bar .short{background:#C62828}
.grid{display:flex;flex-wrap:wrap;gap:32px;align-items:flex-start}
.note{color:#666;font-size:12px}
h3{font-size:14px;margin:12px 0 4px}
.scroll{max-height:420px;overflow:auto;display:inline-block}
@media print{.scroll{max-height:none;overflow:visible}body{background:#fff}}
"""


def _e(value: Any) -> str:
    return html.escape(str(value), quote=True)


def _num(value: Any) -> str:
    if value is None:
        return "–"
    if isinstance(value, (bool, np.bool_)):
        return _e(value)
    if isinstance(value, (int, np.integer)):
        return f"{int(value):,}"
    if isinstance(value, (float, np.floating)):
        return f"{float(value):,.3f}".rstrip("0").rstrip(".") if np.isfinite(value) else _e(value)
    return _e(value)


def _table(columns: list[str], rows: Any, *, left: tuple[str, ...] = (),
           table_id: str | None = None) -> str:
    """An HTML table; ``rows`` yields tuples; columns named in ``left`` align left."""
    align = [' class="l"' if c in left else "" for c in columns]
    head = "".join(f"<th{a}>{_e(c)}</th>" for a, c in zip(align, columns, strict=False))
    body = "".join(
        "<tr>" + "".join(f"<td{a}>{_num(v)}</td>"
                         for a, v in zip(align, record, strict=True)) + "</tr>"
        for record in rows
    )
    ident = f' id="{_e(table_id)}"' if table_id else ""
    return f"<table{ident}><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>"


def _frame_table(frame: pd.DataFrame, *, left: tuple[str, ...] = (), table_id: str) -> str:
    return _table([str(c) for c in frame.columns], frame.itertuples(index=False, name=None),
                  left=left, table_id=table_id)


def _mapping_table(values: Mapping[str, Any], key: str, value: str, table_id: str) -> str:
    left = (key, value) if any(isinstance(v, str) for v in values.values()) else (key,)
    return _table([key, value], values.items(), left=left, table_id=table_id)


def _img(fig: Any, alt: str, img_id: str) -> str:
    data = base64.b64encode(figure_png(fig)).decode("ascii")
    return (f'<img class="chart" id="{_e(img_id)}" alt="{_e(alt)}" '
            f'src="data:image/png;base64,{data}">')


def _card(label: str, value: Any, bad: bool = False) -> str:
    return (f'<div class="card{" bad" if bad else ""}"><div class="v">{_num(value)}</div>'
            f'<div class="k">{_e(label)}</div></div>')


def render_report(
    summary: Mapping[str, Any], demand: pd.DataFrame, shortage: pd.DataFrame | None
) -> str:
    """Render a run as one self-contained HTML page (no network access needed to view it).

    Args:
        summary: the run's ``summary.json`` contents (``RunResult.summary``).
        demand: the run's demand (``delivery_on`` as int days, dates or datetimes).
        shortage: the run's shortage, or None when the lake has no stock.

    Returns:
        The page as a string: header with dates and box counts, the demand-versus-stock
        chart, the shortage table, box completeness and units per date, stage timings,
        parameters and the run's context (cluster, lake, rows read, versions).

    Raises:
        ValueError: ``demand`` or ``shortage`` lacks a required column.
    """
    date_from, date_to = summary.get("date_from", "?"), summary.get("date_to", "?")
    span = _e(date_from) if date_from == date_to else f"{_e(date_from)} → {_e(date_to)}"
    targeted = int(summary.get("users_targeted") or 0)
    full = int(summary.get("boxes_full") or 0)
    short = int(summary.get("boxes_short") or 0)
    shortages = list_shortages(shortage)
    units_total = summary.get("units_total", int(demand["units"].sum()) if "units" in demand else 0)

    cards = [
        _card("users targeted", targeted),
        _card("boxes full", full),
        _card("boxes short", short, bad=short > 0),
        _card("units", units_total),
        _card("snacks in demand", int(demand["snack_id"].nunique()) if len(demand) else 0),
    ]
    if shortage is not None:
        cards.append(_card("snacks short", len(shortages), bad=len(shortages) > 0))
        cards.append(_card("units short", int(shortages["shortage"].sum()),
                           bad=len(shortages) > 0))

    parts = [
        "<!DOCTYPE html>",
        '<html lang="en"><head><meta charset="utf-8">',
        '<meta name="viewport" content="width=device-width, initial-scale=1">',
        f"<title>preassign run {span}</title><style>{_CSS}</style></head><body>",
        f"<h1>Pre-assignment {span}</h1>",
        f'<div class="sub">run {_e(summary.get("run_id", "?"))} · finished '
        f'{_e(summary.get("finished_at", "?"))} · lake '
        f'{_e((summary.get("lake") or {}).get("url", "?"))}</div>',
        f'<div class="cards" id="headline">{"".join(cards)}</div>',
    ]

    # demand against stock
    parts.append("<h2>Demand against stock</h2>")
    if len(demand):
        ax = plot_demand_vs_stock(demand, shortage)
        parts.append(_img(ax.figure, "units per snack for the busiest snacks, with stock marked",
                          "demand-vs-stock"))
        if shortage is None:
            parts.append('<p class="note">The lake has no <code>stock</code> table, so no '
                         "shortage is computed.</p>")
    else:
        parts.append('<p class="note">No units were assigned.</p>')

    # shortage
    parts.append("<h2>Shortage</h2>")
    if shortage is None:
        parts.append('<p class="note">Not computed: the lake has no <code>stock</code> table.</p>')
    elif shortages.empty:
        parts.append(f'<p id="no-shortage">No snack is short: stock covers all '
                     f"{len(shortage):,} snacks in demand.</p>")
    else:
        parts.append(f"<p>{len(shortages):,} of {len(shortage):,} snacks in demand are short by "
                     f"{int(shortages['shortage'].sum()):,} units in total, largest first.</p>")
        parts.append(f'<div class="scroll">{_frame_table(shortages, table_id="shortage")}</div>')

    # boxes
    parts.append("<h2>Boxes</h2>")
    pct = 100.0 * full / targeted if targeted else 100.0
    parts.append(
        f"<p>{full:,} of {targeted:,} boxes are full ({pct:.1f}%), {short:,} short "
        "(fewer eligible snacks than the box size).</p>"
        f'<div class="bar" title="full vs short"><div class="full" style="width:{pct:.3f}%">'
        f'</div><div class="short" style="width:{100 - pct:.3f}%"></div></div>'
    )
    by_date = count_units_by_date(demand)
    day_boxes = summary.get("boxes_by_date")
    if isinstance(day_boxes, Mapping) and day_boxes:
        counts = pd.DataFrame(
            [{"delivery_on": str(k), "boxes_full": int((v or {}).get("full", 0)),
              "boxes_short": int((v or {}).get("short", 0))} for k, v in day_boxes.items()]
        )
        by_date = by_date.assign(delivery_on=by_date["delivery_on"].astype(str)).merge(
            counts, on="delivery_on", how="outer").fillna(0)
        by_date = by_date.astype({c: np.int64 for c in by_date.columns if c != "delivery_on"})
    grid = [f'<div>{_frame_table(by_date, left=("delivery_on",), table_id="by-date")}</div>']
    if len(by_date) and len(demand):
        grid.insert(0, "<div>" + _img(plot_units_by_date(demand).figure,
                                      "units per delivery date by stage", "units-by-date")
                    + "</div>")
    parts.append(f'<div class="grid">{"".join(grid)}</div>')

    # run
    parts.append("<h2>Run</h2>")
    seconds = summary.get("stage_seconds") or {}
    cluster = summary.get("cluster") or {}
    left = [
        "<div><h3>Stage timings (s)</h3>"
        f'{_mapping_table(seconds, "stage", "seconds", "timings")}</div>',
        f'<div><h3>Cluster</h3>{_mapping_table(cluster, "setting", "value", "cluster")}</div>',
    ]
    rows = summary.get("input_rows") or {}
    orphans = summary.get("orphan_rows") or {}
    if rows:
        frame = pd.DataFrame({"table": list(rows), "rows": [int(v) for v in rows.values()],
                              "orphans": [int(orphans.get(k, 0)) for k in rows]})
        rows_table = _frame_table(frame, left=("table",), table_id="rows")
        left.append(f"<div><h3>Rows read</h3>{rows_table}</div>")
    parts.append(f'<div class="grid">{"".join(left)}</div>')
    params = summary.get("parameters") or {}
    versions = summary.get("versions") or {}
    parts.append(
        '<div class="grid">'
        "<div><h3>Parameters</h3>"
        f'{_mapping_table(params, "parameter", "value", "parameters")}</div>'
        f'<div><h3>Versions</h3>{_mapping_table(versions, "package", "version", "versions")}</div>'
        "</div>"
    )
    parts.append("</body></html>\n")
    return "\n".join(parts)
