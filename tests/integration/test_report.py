"""The HTML run report: content, escaping, self-containment, and rendering in Chromium.

The report data of a real small run is completed here with simple pandas (names, stock
rows, run-out dates, timelines, call-outs, a comparison) the way the pipeline provides it.

Set ``PREASSIGN_REPORT_SCREENSHOT=docs/report-screenshot.png`` to keep the screenshot the
Chromium test takes (palette PNG, commit-sized) for the README.
"""

from __future__ import annotations

import base64
import csv
import dataclasses
import datetime as dt
import importlib.resources
import io
import json
import os
import re
import shutil
import subprocess
import time
import tomllib
from html.parser import HTMLParser
from pathlib import Path

import dask
import numpy as np
import pandas as pd
import pytest

from preassign.lake import write_small_table
from preassign.pipeline import RunConfig, run_preassignment
from preassign.report import (
    ReportData,
    count_units_by_date,
    csv_file_name,
    format_number,
    list_shortages,
    plot_demand_vs_stock,
    rank_busiest_snacks,
    rank_chart_snacks,
    render_report,
    report_environment,
    shortage_csv,
)
from preassign.synth import SynthConfig, write_lake

DATE_FROM = dt.date(2026, 12, 1)
DATE_TO = dt.date(2026, 12, 14)
EPOCH = dt.date(1970, 1, 1)
CHART_BLUE = (0x4C, 0x78, 0xA8)  # units within stock (also "preference" in the date chart)
CHART_RED = (0xE4, 0x57, 0x56)  # units over stock
PAGE_RED = (0xB7, 0x1C, 0x1C)  # short numbers, the first date a snack is not covered
ROOT = Path(__file__).resolve().parents[2]

SCRIPT = "<script>alert(1)</script>"
QUOTES = "Tom & Jerry's \"best\" <b>bold</b>"
BREAKOUT = '" onmouseover="alert(1)'
IMG = "<img src=x onerror=alert(1)>"
PROBE_NAME = "<script>document.title='pwned'</script>"
PROBE_GENRE = "<img src=x onerror=\"document.body.setAttribute('data-pwned','1')\">"


# --------------------------------------------------------------------------------------------
# a real run, and its report data completed with simple pandas


@pytest.fixture(scope="module")
def lake(tmp_path_factory):
    """3,000 synthetic users in two partitions, stock planned so that many snacks run short.

    Whatever the generator plans, two well-stocked snacks lose their stock row (the feed
    missed them) and two more have a row saying 0 (a real stock-out), so the page always
    has both to tell apart.
    """
    path = str(tmp_path_factory.mktemp("report") / "lake")
    write_lake(SynthConfig(users=3000, users_per_partition=1500, as_of=DATE_FROM), path)
    stock = pd.read_parquet(os.path.join(path, "stock")).sort_values(
        ["quantity", "snack_id"], ascending=[False, True], ignore_index=True)
    stock.loc[30:31, "quantity"] = 0
    write_small_table(path, "stock", stock.drop(index=[20, 21]).sort_values("snack_id"))
    return path


@pytest.fixture(scope="module")
def small_run(lake, tmp_path_factory):
    """A real SPEC §3 run over two weeks, sync scheduler."""
    out = str(tmp_path_factory.mktemp("report-run") / "out")
    with dask.config.set(scheduler="sync"):
        result = run_preassignment(RunConfig(lake=lake, date_from=DATE_FROM, date_to=DATE_TO,
                                             out=out))
    assert result.shortage is not None and (result.shortage["shortage"] > 0).sum() >= 25
    return result


@pytest.fixture(scope="module")
def stock_run(lake, tmp_path_factory):
    """The same lake, stock-aware (SPEC §6)."""
    out = str(tmp_path_factory.mktemp("report-stock") / "out")
    with dask.config.set(scheduler="sync"):
        result = run_preassignment(RunConfig(lake=lake, date_from=DATE_FROM, date_to=DATE_TO,
                                             out=out, stock_aware=True))
    assert result.reservations is not None and result.reservations["limited"].any()
    return result


@pytest.fixture(scope="module")
def snacks(lake):
    return pd.read_parquet(os.path.join(lake, "snacks"))[["snack_id", "name", "genre"]].astype(
        {"snack_id": np.int64})


@pytest.fixture(scope="module")
def stock(lake):
    return pd.read_parquet(os.path.join(lake, "stock")).astype({"snack_id": np.int64})


def _timeline(demand, stock, ids, covered=None):
    """Per snack of ``ids`` and date: cumulative units against stock (earlier dates first)."""
    d = demand[demand["snack_id"].isin(ids)].groupby(["snack_id", "delivery_on"],
                                                     as_index=False)["units"].sum()
    d = d.sort_values(["snack_id", "delivery_on"], ignore_index=True)
    d["cumulative_units"] = d.groupby("snack_id")["units"].cumsum()
    d["stock"] = d["snack_id"].map(stock.set_index("snack_id")["quantity"]).fillna(0).astype(int)
    before = d["cumulative_units"] - d["units"]
    d["covered_units"] = (d["stock"] - before).clip(lower=0).clip(upper=d["units"])
    if covered is not None:  # stock-aware: what the final boxes hold
        got = covered.groupby(["snack_id", "delivery_on"])["units"].sum()
        d["covered_units"] = [int(got.get((s, day), 0))
                              for s, day in zip(d["snack_id"], d["delivery_on"], strict=True)]
    d["delivery_on"] = [EPOCH + dt.timedelta(days=int(x)) for x in d["delivery_on"]]
    return d


def _shortage_details(shortage, timeline, stock):
    out = shortage.copy()
    out["has_stock_row"] = out["snack_id"].isin(stock["snack_id"])
    first = timeline[timeline["cumulative_units"] > timeline["stock"]].groupby(
        "snack_id")["delivery_on"].min()
    out["runs_out_on"] = pd.Series([first.get(s) for s in out["snack_id"]], index=out.index,
                                   dtype=object)
    affected = {s: int(g.loc[g["delivery_on"] >= first[s], "units"].sum())
                for s, g in timeline.groupby("snack_id") if s in first}
    out["boxes_affected"] = [affected.get(s, 0) for s in out["snack_id"]]
    return out


def _callouts(shortage):
    no_row = shortage.loc[~shortage["has_stock_row"], "snack_id"].astype(int).tolist()
    short = list_shortages(shortage)["snack_id"].astype(int).tolist()
    return [
        {"code": "ORPHAN_ROWS", "severity": "info", "message": "12 orphan row(s) ignored",
         "count": 12, "snacks": []},
        {"code": "STOCK_ROW_MISSING", "severity": "warning",
         "message": f"{len(no_row)} snack(s) in demand have no stock row - stock feed incomplete?",
         "count": len(no_row), "snacks": no_row},
        {"code": "SNACKS_SHORT", "severity": "warning",
         "message": f"{len(short)} snack(s) short against stock", "count": len(short),
         "snacks": short[:20]},
    ]


def _comparison(run, why=None):
    units = run.demand.groupby("snack_id")["units"].sum()
    changed = units.sort_values(ascending=False).head(4)
    snacks = pd.DataFrame({"snack_id": changed.index.astype(np.int64),
                           "units_before": (changed - [30, -12, 5, 1]).to_numpy(),
                           "units_after": changed.to_numpy()})
    snacks["change"] = snacks["units_after"] - snacks["units_before"]
    snacks["shortage_before"] = [0, 3, 0, 1]
    snacks["shortage_after"] = [2, 0, 0, 1]
    return {"previous": {"run_id": "20261130T060000Z-1a2b3c", "out": "s3://ops/runs/2026-11-30",
                         "date_from": "2026-11-30", "date_to": "2026-12-13",
                         "finished_at": "2026-11-30T06:12:09+00:00"},
            "why": why or ["dates: 2026-11-30..2026-12-13 -> 2026-12-01..2026-12-14",
                             "inputs changed (file names, sizes or versions): ratings, stock"],
            "units_total": (int(run.summary["units_total"]) - 24, int(run.summary["units_total"])),
            "snacks": snacks, "boxes_changed": 1234}


def _report_data(run, snacks, stock, **changes):
    short_ids = list_shortages(run.shortage)["snack_id"].tolist()
    timeline = _timeline(run.demand, stock, short_ids)
    shortage = _shortage_details(run.shortage, timeline, stock)
    summary = {**run.summary, "callouts": _callouts(shortage)}
    return ReportData(**{"summary": summary, "demand": run.demand, "snacks": snacks,
                         "shortage": shortage, "timeline": timeline, **changes})


@pytest.fixture(scope="module")
def report_data(small_run, snacks, stock):
    return _report_data(small_run, snacks, stock, comparison=_comparison(small_run))


@pytest.fixture(scope="module")
def page(report_data):
    return render_report(report_data)


@pytest.fixture(scope="module")
def stock_data(stock_run, small_run, snacks, stock):
    res = stock_run.reservations
    limited = res.loc[res["limited"], "snack_id"].tolist()
    timeline = _timeline(small_run.demand, stock, limited, covered=stock_run.demand)
    summary = {**stock_run.summary,
               "boxes_by_date_unconstrained": {d: {"full": v["full"] + 1, "short": v["short"] + 2}
                                               for d, v in stock_run.summary["boxes_by_date"].items()}}
    return ReportData(summary=summary, demand=stock_run.demand, snacks=snacks, reservations=res,
                      timeline=timeline)


# --------------------------------------------------------------------------------------------
# reading the page back


class _Page(HTMLParser):
    """Tables by id (rows of (text, class) cells per thead/tbody/tfoot) and every start tag."""

    def __init__(self, page: str) -> None:
        super().__init__(convert_charrefs=True)
        self.tables: dict[str, dict[str, list]] = {}
        self.tags: list[tuple[str, dict]] = []
        self._table = self._part = self._row = self._cell = None
        self.feed(page)
        self.close()

    def handle_starttag(self, tag, attrs):
        a = dict(attrs)
        self.tags.append((tag, a))
        if tag == "table":
            self._table = self.tables.setdefault(a.get("id") or f"#{len(self.tables)}",
                                                 {"thead": [], "tbody": [], "tfoot": []})
        elif tag in ("thead", "tbody", "tfoot"):
            self._part = tag
        elif tag == "tr" and self._table is not None:
            self._row = []
            self._table[self._part or "tbody"].append(self._row)
        elif tag in ("td", "th") and self._row is not None:
            self._cell = ["", a.get("class") or ""]
            self._row.append(self._cell)
        elif tag == "br" and self._cell is not None:
            self._cell[0] += " "

    def handle_endtag(self, tag):
        if tag == "table":
            self._table = self._part = None
        elif tag in ("td", "th"):
            self._cell = None
        elif tag == "tr":
            self._row = None

    def handle_data(self, data):
        if self._cell is not None:
            self._cell[0] += data

    def rows(self, table_id, part="tbody"):
        return [[" ".join(text.split()) for text, _ in row] for row in self.tables[table_id][part]]

    def classes(self, table_id, part="tbody"):
        return [[cls for _, cls in row] for row in self.tables[table_id][part]]

    def head(self, table_id):
        return self.rows(table_id, "thead")[0]


def _text(page: str) -> str:
    """The page's visible text, roughly (tags dropped, entities kept)."""
    return re.sub(r"\s+", " ", re.sub(r"<[^>]+>", " ", page))


def _n(cell: str) -> int:
    """The number a cell starts with (thousands separators dropped)."""
    return int(re.match(r"[\d,]+", cell).group().replace(",", ""))


def _charts(page: str) -> list[tuple[str, str]]:
    return re.findall(r'<img class="chart" id="([^"]+)" alt="[^"]*" src="data:image/png;base64,'
                      r'([A-Za-z0-9+/=]+)"', page)


# --------------------------------------------------------------------------------------------
# content


@pytest.mark.parametrize("call", ["old", "report-data"])
def test_report_from_a_real_run_is_self_contained(small_run, report_data, call):
    started = time.perf_counter()
    if call == "old":  # render_report(summary, demand, shortage): until the pipeline switches
        page = render_report(small_run.summary, small_run.demand, small_run.shortage)
    else:
        page = render_report(report_data)
    seconds = time.perf_counter() - started
    assert seconds < 10, f"rendering took {seconds:.1f} s"
    assert page.startswith("<!DOCTYPE html>")
    # nothing to fetch: no URL at all, every src/href is inline data, a fragment or the CSV
    # written beside the page; a Content Security Policy forbids scripts and network use
    assert not re.search(r"https?://", page, re.I)
    assert not re.search(r"@import|url\(|<script|<link|<iframe|<object|<embed", page, re.I)
    assert "default-src 'none'; img-src data:;" in page
    for ref in re.findall(r'\b(?:src|href)\s*=\s*"([^"]*)"', page):
        assert ref.startswith(("data:image/png;base64,", "#")) or ref == "shortage.csv", ref
    charts = _charts(page)
    want = ["demand-vs-stock", "units-by-date"]
    if call == "report-data":
        want.insert(0, "stock-timelines")
        assert 'href="shortage.csv"' in page
    else:
        assert ".csv" not in page  # the old pipeline writes no CSV: no dead link
    assert [c[0] for c in charts] == want
    for _, data in charts:
        assert base64.b64decode(data)[:8] == b"\x89PNG\r\n\x1a\n"


def test_report_states_the_runs_numbers(small_run):
    s = small_run.summary
    page = render_report(s, small_run.demand, small_run.shortage)
    text = _text(page)
    assert f"Pre-assignment {s['date_from']} → {s['date_to']}" in text
    values = re.findall(r'<div class="v">([^<]*)</div><div class="k">([^<]*)</div>', page)
    got = {k: v for v, k in values}
    assert got["users targeted"] == f"{s['users_targeted']:,}"
    assert got["boxes full"] == f"{s['boxes_full']:,}"
    assert got["boxes short"] == f"{s['boxes_short']:,}"
    assert got["units"] == f"{s['units_total']:,}"
    short = list_shortages(small_run.shortage)
    assert got["snacks short"] == f"{len(short):,}"
    assert got["units short"] == f"{int(short['shortage'].sum()):,}"

    # the shortage table lists every short snack, largest shortage first; without names
    # (the old call) the id stands in for the name
    parsed = _Page(page)
    assert parsed.head("shortage")[:6] == ["snack", "genre", "id", "units", "stock", "short"]
    rows = parsed.rows("shortage")
    got_rows = [(_n(r[2].lstrip("#")), _n(r[3]), _n(r[4]), _n(r[5])) for r in rows]
    assert got_rows == list(short.itertuples(index=False, name=None))
    assert [r[0] for r in rows] == [f"#{i}" for i in short["snack_id"]]
    assert [r[3] for r in got_rows] == sorted((r[3] for r in got_rows), reverse=True)

    # stage timings and parameters are there
    assert [r[0] for r in parsed.rows("timings")] == list(s["stage_seconds"])
    assert [r[0] for r in parsed.rows("parameters")] == list(s["parameters"])
    assert len(parsed.rows("by-date")) == small_run.demand["delivery_on"].nunique()


def test_every_string_is_escaped(small_run):
    evil = "<script>alert('x')</script>&"
    summary = json.loads(json.dumps(small_run.summary))
    summary["run_id"] = evil
    summary["lake"] = {"url": evil}
    summary["versions"] = {evil: evil}
    summary["stage_seconds"] = {evil: 1.5}
    summary["cluster"] = {"kind": evil}
    summary["date_from"] = evil
    summary["callouts"] = [{"code": evil, "severity": evil, "message": evil, "count": 1,
                            "snacks": []}]
    page = render_report(summary, small_run.demand, small_run.shortage)
    assert "<script" not in page
    # Jinja2's autoescape (markupsafe) writes ' as &#39; (html.escape wrote &#x27;)
    assert "&lt;script&gt;alert(&#39;x&#39;)&lt;/script&gt;&amp;" in page


def test_report_without_stock_and_without_demand(small_run):
    page = render_report(small_run.summary, small_run.demand, None)
    assert 'id="shortage"' not in page and "no <code>stock</code> table" in page
    assert 'id="demand-vs-stock"' in page
    empty = small_run.demand.iloc[:0]
    summary = {**small_run.summary, "users_targeted": 0, "boxes_full": 0, "boxes_short": 0,
               "units_total": 0}
    page = render_report(summary, empty, small_run.shortage.iloc[:0])
    assert "No units were assigned" in page and "<img" not in page
    assert "No snack is short" in page


def test_report_shows_boxes_by_date_when_the_summary_has_them(small_run):
    days = sorted(count_units_by_date(small_run.demand)["delivery_on"])
    summary = {**small_run.summary,
               "boxes_by_date": {str(d): {"full": 1000 + i, "short": i} for i, d in enumerate(days)}}
    page = _Page(render_report(summary, small_run.demand, small_run.shortage))
    assert page.head("by-date")[:5] == ["delivery date", "boxes", "full", "short", "full / short"]
    first = page.rows("by-date")[0]
    assert first[0] == f"{days[0]} {days[0]:%a}"
    assert first[1:4] == ["1,000", "1,000", "0"]
    assert page.rows("by-date", "tfoot")[0][2] == f"{sum(1000 + i for i in range(len(days))):,}"
    # without boxes per date in the summary, the table has units only
    no_boxes = {k: v for k, v in small_run.summary.items() if k != "boxes_by_date"}
    page = _Page(render_report(no_boxes, small_run.demand, small_run.shortage))
    assert page.head("by-date") == ["delivery date", "units", "request", "preference", "explore",
                                    "fallback"]


# --------------------------------------------------------------------------------------------
# the page for action


def test_names_are_escaped_everywhere(small_run, snacks, stock):
    """Hostile snack names and genres (they come from a database) render as text."""
    short = list_shortages(small_run.shortage)["snack_id"].tolist()
    hostile = snacks.copy()
    lookup = hostile.set_index("snack_id")
    for sid, name in zip(short[:5], [SCRIPT, QUOTES, BREAKOUT, None, PROBE_NAME], strict=True):
        if name is not None:
            lookup.loc[sid, "name"] = name
    lookup.loc[short[3], "genre"] = IMG
    lookup.loc[short[4], "genre"] = PROBE_GENRE
    hostile = lookup.reset_index()
    data = _report_data(small_run, hostile, stock,
                        comparison=_comparison(small_run, why=[SCRIPT, QUOTES]))
    data.summary["callouts"].append({"code": "X<b>", "severity": "warning", "message": IMG,
                                     "count": 5, "snacks": short[:5]})
    data.comparison["snacks"].loc[0, "snack_id"] = short[0]
    page = render_report(data)

    assert "<script" not in page.lower() and "<b>" not in page
    assert "<img src=x" not in page and "onerror=alert(1)>" not in page.replace("&lt;", "")
    assert "&lt;script&gt;alert(1)&lt;/script&gt;" in page
    assert "&lt;img src=x onerror=alert(1)&gt;" in page
    assert "Tom &amp; Jerry&#39;s &#34;best&#34; &lt;b&gt;bold&lt;/b&gt;" in page
    assert "&#34; onmouseover=&#34;alert(1)" in page
    parsed = _Page(page)
    # no hostile string became an element or an attribute: every img is one of our charts
    for tag, attrs in parsed.tags:
        assert not [a for a in attrs if a.startswith("on")], (tag, attrs)
        assert tag not in ("script", "b", "iframe", "object"), tag
        if tag == "img":
            assert attrs["class"] == "chart" and attrs["src"].startswith("data:image/png;base64,")
    # ... and a reader sees the names exactly as the database has them
    rows = {r[2]: r for r in parsed.rows("shortage")}
    assert rows[f"#{short[0]}"][0] == SCRIPT
    assert rows[f"#{short[1]}"][0] == QUOTES
    assert rows[f"#{short[2]}"][0] == BREAKOUT
    assert rows[f"#{short[3]}"][1] == IMG
    assert parsed.rows("comparison-snacks")[0][0] == SCRIPT
    timeline = " ".join(r[0] for r in parsed.rows("timeline"))
    assert SCRIPT in timeline and IMG in timeline
    alts = [attrs["alt"] for tag, attrs in parsed.tags if tag == "img"]
    assert any(SCRIPT in alt for alt in alts)  # chart descriptions name the snacks too
    callout = re.search(r'<li class="callout warning" data-code="X&lt;b&gt;">(.*?)</li>', page,
                        re.S)
    assert callout and "&lt;script&gt;" in callout.group(1)


def test_templates_are_autoescaped_package_data():
    env = report_environment()
    for name in env.list_templates():
        assert name.endswith(".j2"), name
        assert env.autoescape(name) is True, name  # select_autoescape decides per template
    assert env.autoescape(None) is True  # templates from strings too
    files = importlib.resources.files("preassign") / "templates"
    assert (files / "report.html.j2").is_file()
    data = tomllib.loads((ROOT / "pyproject.toml").read_text())
    assert "templates/*.j2" in data["tool"]["setuptools"]["package-data"]["preassign"]


def test_shortage_table_is_every_short_snack_with_names_dates_and_no_scroll_box(page,
                                                                                report_data):
    short = report_data.shortage[report_data.shortage["shortage"] > 0].sort_values(
        ["shortage", "snack_id"], ascending=[False, True])
    parsed = _Page(page)
    assert parsed.head("shortage") == ["snack", "genre", "id", "units", "stock", "short",
                                       "runs out on", "boxes affected"]
    rows = parsed.rows("shortage")
    assert len(rows) == len(short) > 50  # every row, however many
    names = report_data.snacks.set_index("snack_id")
    for row, want in zip(rows, short.itertuples(index=False), strict=True):
        assert row[:3] == [names.loc[want.snack_id, "name"], names.loc[want.snack_id, "genre"],
                           f"#{want.snack_id}"]
        assert (_n(row[3]), _n(row[5]), _n(row[7])) == (want.units, want.shortage,
                                                        want.boxes_affected)
        assert row[6] == f"{want.runs_out_on} {want.runs_out_on:%a}"
        if not want.has_stock_row:
            assert row[4] == "no stock row"  # the feed has no row: not a real stock-out
        elif want.stock == 0:
            assert row[4] == "0 stock-out"
        else:
            assert row[4] == f"{want.stock:,}"
    total = parsed.rows("shortage", "tfoot")[0]  # the label spans the three snack columns
    assert total[0] == f"{len(short):,} short snacks"
    assert _n(total[1]) == int(short["units"].sum()) and _n(total[3]) == int(short["shortage"].sum())
    # printable: no scroll box, no clipped height anywhere
    assert not re.search(r"max-height|overflow(-[xy])?\s*:\s*(auto|scroll)|position\s*:\s*fixed",
                         page)
    assert "thead{display:table-header-group}" in page  # headers repeat on printed pages


def test_no_stock_row_marker_is_distinct_from_a_stock_out(page, report_data):
    s = report_data.shortage[report_data.shortage["shortage"] > 0]
    no_row = int((~s["has_stock_row"]).sum())
    stock_out = int((s["has_stock_row"] & (s["stock"] == 0)).sum())
    assert no_row >= 2 and stock_out >= 2  # the test's lake has both
    assert page.count('<span class="badge norow">no stock row</span>') == no_row + 1  # + legend
    assert page.count('<span class="badge out">stock-out</span>') == stock_out + 1


def test_timeline_marks_the_first_date_the_stock_stops_covering_boxes(page, report_data):
    parsed = _Page(page)
    tables = [t for t in parsed.tables if t.startswith("timeline")]
    assert tables == ["timeline"]  # 14 dates fit one table
    head = parsed.head("timeline")
    assert head[:3] == ["snack", "stock", "runs out on"]
    assert head[3] == f"{DATE_FROM:%a} {DATE_FROM:%m-%d}" and len(head) == 3 + 14
    short = report_data.shortage.set_index("snack_id")
    rows, classes = parsed.rows("timeline"), parsed.classes("timeline")
    assert len(rows) == int((short["shortage"] > 0).sum())
    firsts = []
    for row, cls in zip(rows, classes, strict=True):
        sid = int(re.search(r"#(\d+)\)$", row[0]).group(1))
        first = [i for i, c in enumerate(cls) if c == "c first"]
        assert len(first) == 1, row
        day = short.loc[sid, "runs_out_on"]
        assert head[first[0]] == f"{day:%a} {day:%m-%d}" and row[2] == f"{day:%m-%d}"
        assert all(c.split()[-1] in ("ok", "over") for c in cls[3:first[0]])  # covered before
        firsts.append(day)
    assert firsts == sorted(firsts)  # earliest run-out first


def test_short_snacks_come_first_in_the_chart_then_the_busiest(small_run, snacks):
    # keep five snacks short so that the busiest follow them
    shortage = small_run.shortage.copy()
    keep = list_shortages(shortage)["snack_id"].head(5)
    shortage.loc[~shortage["snack_id"].isin(keep), "shortage"] = 0
    ranked = rank_chart_snacks(small_run.demand, shortage, top=30, snacks=snacks)
    assert len(ranked) == 30
    assert ranked["snack_id"].head(5).tolist() == keep.tolist()  # largest shortage first
    rest = ranked.iloc[5:]
    busiest = rank_busiest_snacks(small_run.demand, shortage, top=None)
    busiest = busiest[~busiest["snack_id"].isin(keep)]
    assert rest["snack_id"].tolist() == busiest["snack_id"].head(25).tolist()
    names = snacks.set_index("snack_id")["name"]
    assert ranked["label"].tolist() == [names[s] for s in ranked["snack_id"]]
    # the page's chart is drawn in that order (its description lists the bars top to bottom)
    page = render_report(ReportData(summary=small_run.summary, demand=small_run.demand,
                                    snacks=snacks, shortage=shortage))
    alt = _Page(page)
    alt = next(a["alt"] for t, a in alt.tags if t == "img" and a.get("id") == "demand-vs-stock")
    assert alt.startswith("bars, top to bottom: " + f"{names[keep.iloc[0]]} (")
    order = [alt.index(f"{names[s]} (") for s in ranked["snack_id"].head(8)]
    assert order == sorted(order)


def test_numbers_have_thousands_separators(page, small_run):
    assert format_number(1234567) == "1,234,567" and format_number(np.int64(-4321)) == "-4,321"
    assert f'<div class="v">{small_run.summary["units_total"]:,}</div>' in page
    parsed = _Page(page)
    seen_big = 0
    for table in ("shortage", "by-date", "timeline", "rows", "comparison-snacks"):
        for part in ("tbody", "tfoot"):
            for row in parsed.tables[table][part]:
                for text, cls in row:
                    token = " ".join(text.split()).split(" ")[0].lstrip("+−-")
                    if "num" not in cls and not cls.startswith("c ") or \
                            not re.fullmatch(r"[\d,]+", token or "x"):
                        continue
                    assert re.fullmatch(r"\d{1,3}(,\d{3})*", token), (table, text)
                    seen_big += _n(token) >= 1000
    assert seen_big > 10
    # the chart's labels and axis too
    from matplotlib.figure import Figure

    big = _DEMAND.assign(units=_DEMAND["units"] * 1_000_000)
    ax = plot_demand_vs_stock(big, _SHORTAGE.assign(units=_SHORTAGE["units"] * 1_000_000,
                                                    stock=_SHORTAGE["stock"] * 1_000_000,
                                                    shortage=_SHORTAGE["shortage"] * 1_000_000),
                              ax=Figure().add_subplot())
    assert ax.texts[0].get_text() == "6,000,000  (short 4,000,000)"
    assert ax.xaxis.get_major_formatter()(2_500_000, 0) == "2,500,000"


def test_callouts_are_at_the_top_with_their_codes(page, report_data):
    parsed = _Page(page)
    items = [(a["class"], a["data-code"]) for t, a in parsed.tags if t == "li"
             and "callout" in a.get("class", "")]
    # warnings first, then information, each with its stable code
    assert items == [("callout warning", "STOCK_ROW_MISSING"), ("callout warning", "SNACKS_SHORT"),
                     ("callout info", "ORPHAN_ROWS")]
    assert page.index('id="callouts"') < page.index('id="which-snacks"')
    for code in ("STOCK_ROW_MISSING", "SNACKS_SHORT", "ORPHAN_ROWS"):
        assert f'<span class="code">{code}</span>' in page
    # the snacks are named, with "and N more" past the first twenty
    no_row = report_data.summary["callouts"][1]["snacks"]
    names = report_data.snacks.set_index("snack_id")["name"]
    block = re.search(r'data-code="STOCK_ROW_MISSING">(.*?)</li>', page, re.S).group(1)
    for sid in no_row:
        assert f'<span class="snack">{names[sid]}</span>' in block
    n_short = report_data.summary["callouts"][2]["count"]
    assert f"and {n_short - 20:,} more" in re.search(r'data-code="SNACKS_SHORT">(.*?)</li>',
                                                     page, re.S).group(1)


def test_comparison_section_only_when_given(small_run, report_data, page, snacks, stock):
    parsed = _Page(page)
    assert 'id="comparison"' in page and "Since the previous run" in page
    assert "20261130T060000Z-1a2b3c" in page and "s3://ops/runs/2026-11-30" in page
    rows = parsed.rows("comparison-snacks")
    want = report_data.comparison["snacks"]
    names = snacks.set_index("snack_id")["name"]
    assert [r[0] for r in rows] == [names[s] for s in want["snack_id"]]
    assert [r[5] for r in rows] == ["+30", "−12", "+5", "+1"]
    assert '<span id="units-change">+24</span>' in page
    assert '<dd id="boxes-changed">1,234</dd>' in page
    assert "inputs changed (file names, sizes or versions): ratings, stock" in page
    without = render_report(dataclasses.replace(report_data, comparison=None, timeline=None))
    assert 'id="comparison"' not in without and "Since the previous run" not in without


def test_stock_aware_report_shows_where_stock_stops_covering_boxes(stock_data):
    page = render_report(stock_data)
    parsed = _Page(page)
    res = stock_data.reservations
    limited = res[res["limited"]]
    assert 'id="shortage"' not in page and 'id="stock-aware"' in page
    assert '<span class="tag">stock-aware</span>' in page
    assert parsed.head("reservations") == [
        "snack", "genre", "id", "stock", "units without limits", "units with limits", "units left",
        "boxes lost", "boxes gained", "stock stops covering boxes on"]
    rows = parsed.rows("reservations")
    assert len(rows) == len(limited)
    assert [_n(r[7]) for r in rows] == sorted((_n(r[7]) for r in rows), reverse=True)
    by_id = limited.set_index("snack_id")
    for r in rows:
        want = by_id.loc[int(r[2].lstrip("#"))]
        assert (_n(r[3]), _n(r[4]), _n(r[5]), _n(r[6]), _n(r[8])) == (
            want["stock"], want["units_unconstrained"], want["units"], want["units_left"],
            want["boxes_gained"])
        if pd.isna(want["cutoff_on"]):
            assert r[9] == "no box"  # no box can get it
        else:
            day = want["cutoff_on"]
            day = EPOCH + dt.timedelta(days=int(day)) if isinstance(day, (int, np.integer)) \
                else pd.Timestamp(day).date()
            assert r[9] == f"{day} {day:%a}"
    no_box = int(limited["cutoff_on"].isna().sum())
    assert no_box >= 4 and sum(r[9] == "no box" for r in rows) == no_box  # stock 0: no box
    assert any(r[9] != "no box" for r in rows)
    s = stock_data.summary
    values = dict((k, v) for v, k in re.findall(
        r'<div class="v">([^<]*)</div><div class="k">([^<]*)</div>', page))
    assert values["snacks limited"] == f"{len(limited):,}"
    assert values["units left on limited snacks"] == f"{int(limited['units_left'].sum()):,}"
    assert values["rounds"] == f"{s['rounds']:,}" and values["boxes changed"] == \
        f"{s['boxes_changed']:,}"
    assert values["boxes short without stock limits"] == f"{s['boxes_short_unconstrained']:,}"
    # boxes short per date, with and without stock limits
    assert parsed.head("short-by-date") == ["delivery date", "boxes", "short with stock limits",
                                            "short without stock limits", "change"]
    per_date = parsed.rows("short-by-date")
    assert len(per_date) == len(s["boxes_by_date"])
    assert all(r[4] == "−2" for r in per_date)
    # per limited snack, its timeline; the chart puts limited snacks first
    assert 'id="stock-timelines"' in page and len(parsed.rows("timeline")) == len(limited)
    assert 'id="demand-vs-stock"' in page and "over their stock first" in page
    assert 'href="reservations.csv"' in page


def test_stock_aware_worked_example_no_box_and_units_left():
    """SPEC §6's worked example, snack 1 with one unit left over (a holder dropped it)."""
    res = pd.DataFrame({
        "snack_id": [1, 2, 3, 4], "stock": [3, 0, 5, 0], "units_unconstrained": [4, 1, 1, 1],
        "units": [2, 0, 1, 0], "units_left": [1, 0, 4, 0], "boxes_lost": [2, 1, 0, 1],
        "boxes_gained": [0, 0, 0, 0], "limited": [True, True, False, True],
        "cutoff_on": pd.array([20788, None, None, None], dtype="Int64")})
    lineup = pd.DataFrame({"snack_id": [1, 2, 3, 4], "name": ["choco milk", "choco dark",
                                                             "salty chips", "peanut chips"],
                           "genre": ["choco", "choco", "chips", "chips"]})
    summary = {"date_from": "2026-12-01", "date_to": "2026-12-01", "stock_aware": True,
               "users_targeted": 2, "boxes_full": 0, "boxes_short": 2, "units_total": 2,
               "boxes_by_date": {"2026-12-01": {"full": 0, "short": 2}}, "rounds": 2,
               "boxes_changed": 2, "boxes_short_unconstrained": 1, "units_unconstrained": 5,
               "snacks_limited": 3}
    demand = _DEMAND.iloc[:0]
    data = ReportData(summary=summary, demand=demand, snacks=lineup, reservations=res)
    page = render_report(data)
    parsed = _Page(page)
    rows = parsed.rows("reservations")
    assert [r[0] for r in rows] == ["choco milk", "choco dark", "peanut chips"]  # not snack 3
    assert [r[9] for r in rows] == ["2026-12-01 Tue", "no box", "no box"]
    assert [r[6] for r in rows] == ["1", "0", "0"]
    assert parsed.rows("reservations", "tfoot")[0][4] == "1"  # units left on limited snacks
    assert "1 units are left on limited snacks" in _text(page)
    assert "Without stock limits 1 boxes would be short" in _text(page)
    assert parsed.head("short-by-date") == ["delivery date", "boxes", "short with stock limits"]
    assert "No units were assigned" in page and "<img" not in page
    rows = list(csv.reader(io.StringIO(shortage_csv(data).decode("utf-8-sig"))))
    assert [(r[0], r[1], r[-2], r[-1]) for r in rows[1:]] == [
        ("1", "choco milk", "True", "2026-12-01"), ("2", "choco dark", "True", ""),
        ("4", "peanut chips", "True", ""), ("3", "salty chips", "False", "")]


def test_shortage_csv_has_every_row_with_names(report_data, stock_data, small_run, snacks):
    assert csv_file_name(report_data) == "shortage.csv"
    raw = shortage_csv(report_data)
    assert raw.startswith("\ufeff".encode()) and raw.decode("utf-8")  # UTF-8 (BOM for Excel)
    frame = pd.read_csv(io.BytesIO(raw))
    assert list(frame.columns) == ["snack_id", "name", "genre", "units", "stock", "shortage",
                                   "has_stock_row", "runs_out_on", "boxes_affected"]
    assert len(frame) == len(report_data.shortage)  # every snack with demand, not only short
    assert frame["shortage"].tolist() == sorted(frame["shortage"], reverse=True)
    names = snacks.set_index("snack_id")
    assert frame["name"].tolist() == [names.loc[s, "name"] for s in frame["snack_id"]]
    top = frame.iloc[0]
    want = report_data.shortage.set_index("snack_id").loc[top["snack_id"]]
    assert top["runs_out_on"] == want["runs_out_on"].isoformat()

    assert csv_file_name(stock_data) == "reservations.csv"
    res = pd.read_csv(io.BytesIO(shortage_csv(stock_data)))
    assert list(res.columns) == ["snack_id", "name", "genre", "stock", "units_unconstrained",
                                 "units", "units_left", "boxes_lost", "boxes_gained", "limited",
                                 "cutoff_on"]
    assert len(res) == len(stock_data.reservations)
    assert res["limited"].head(int(stock_data.reservations["limited"].sum())).all()

    # hostile names stay text, and a spreadsheet does not run them as formulas
    odd = snacks.copy()
    odd.loc[odd["snack_id"] == top["snack_id"], "name"] = "=HYPERLINK(\"x\",\"y\"), 'q'"
    odd.loc[odd["snack_id"] == frame["snack_id"].iloc[1], "name"] = "うまい棒 めんたい味"
    data = ReportData(summary=report_data.summary, demand=report_data.demand, snacks=odd,
                      shortage=report_data.shortage)
    rows = list(csv.reader(io.StringIO(shortage_csv(data).decode("utf-8-sig"))))
    assert rows[1][1] == "'=HYPERLINK(\"x\",\"y\"), 'q'" and rows[2][1] == "うまい棒 めんたい味"
    with pytest.raises(ValueError, match="neither a shortage nor reservations"):
        shortage_csv(ReportData(summary=small_run.summary, demand=small_run.demand,
                                snacks=snacks))


def test_names_without_chart_glyphs_render_without_warnings(small_run, snacks, stock):
    """Japanese names: the tables show them; the charts draw without a warning."""
    top = list_shortages(small_run.shortage)["snack_id"].head(3)
    named = snacks.copy()
    named.loc[named["snack_id"].isin(top), "name"] = ["うまい棒 めんたい味", "ポテトチップス うすしお",
                                                      "きのこの山"]
    page = render_report(_report_data(small_run, named, stock))  # warnings are errors here
    assert "うまい棒 めんたい味" in page and "きのこの山" in page


# --------------------------------------------------------------------------------------------
# the tables and the chart on their own

_DEMAND = pd.DataFrame({
    "delivery_on": np.array([20788, 20788, 20789, 20789], np.int32),
    "snack_id": [7, 8, 7, 9],
    "units": [2, 5, 4, 1],
    "units_request": [1, 0, 0, 0],
    "units_preference": [1, 5, 3, 0],
    "units_explore": [0, 0, 1, 1],
    "units_fallback": [0, 0, 0, 0],
})
_SHORTAGE = pd.DataFrame({"snack_id": [7, 8, 9], "units": [6, 5, 1], "stock": [2, 5, 0],
                          "shortage": [4, 0, 1]})


def test_busiest_snacks_add_up_over_dates_and_carry_stock():
    got = rank_busiest_snacks(_DEMAND, _SHORTAGE, top=2)
    assert got.to_dict("list") == {
        "snack_id": [7, 8], "units": [6, 5], "units_request": [1, 0], "units_preference": [4, 5],
        "units_explore": [1, 0], "units_fallback": [0, 0], "stock": [2, 5], "shortage": [4, 0],
    }
    assert list(rank_busiest_snacks(_DEMAND).columns) == ["snack_id", "units", "units_request",
                                                         "units_preference", "units_explore",
                                                         "units_fallback"]
    names = pd.DataFrame({"snack_id": [7, 8, 9], "name": ["a", "b", "c"], "genre": ["x", "y", "z"]})
    got = rank_busiest_snacks(_DEMAND, top=2, snacks=names)
    assert got[["snack_id", "name", "genre"]].values.tolist() == [[7, "a", "x"], [8, "b", "y"]]


def test_shortage_list_is_largest_first_and_only_short_snacks():
    assert list_shortages(_SHORTAGE)[["snack_id", "shortage"]].values.tolist() == [[7, 4], [9, 1]]
    assert list_shortages(None).empty


@pytest.mark.parametrize("as_dates", [
    pytest.param(lambda d: d, id="int-days"),
    pytest.param(lambda d: pd.to_datetime(d, unit="D"), id="datetime64"),
    pytest.param(lambda d: pd.Series(pd.to_datetime(d, unit="D").dt.date, dtype=object),
                 id="date-obj"),
    pytest.param(lambda d: pd.Series(pd.to_datetime(d, unit="D").dt.date, dtype="date32[pyarrow]"),
                 id="arrow-date32"),
])
def test_units_by_date_accepts_any_date_type(as_dates):
    demand = _DEMAND.assign(delivery_on=as_dates(_DEMAND["delivery_on"]))
    got = count_units_by_date(demand)
    assert got["delivery_on"].tolist() == [dt.date(2026, 12, 1), dt.date(2026, 12, 2)]
    assert got["units"].tolist() == [7, 5]


def test_missing_columns_name_what_is_missing():
    with pytest.raises(ValueError, match=r"demand is missing column\(s\) units_fallback"):
        rank_busiest_snacks(_DEMAND.drop(columns="units_fallback"))


def test_a_minimal_report_uses_names_carried_by_its_frames():
    """Only dates in the summary, no lineup: names come from the shortage frame itself."""
    named = _SHORTAGE.assign(name=["seven", "eight", "nine"], genre=["g7", "g8", "g9"])
    no_lineup = pd.DataFrame({"snack_id": [], "name": [], "genre": []})
    data = ReportData(summary={"date_from": "2026-12-01", "date_to": "2026-12-02"},
                      demand=_DEMAND, snacks=no_lineup, shortage=named)
    page = _Page(render_report(data))
    assert [r[:3] for r in page.rows("shortage")] == [["seven", "g7", "#7"], ["nine", "g9", "#9"]]
    assert [r[:2] for r in page.rows("by-date")] == [["2026-12-01 Tue", "7"], ["2026-12-02 Wed", "5"]]
    rows = list(csv.reader(io.StringIO(shortage_csv(data).decode("utf-8-sig"))))
    assert [r[:3] for r in rows[1:]] == [["7", "seven", "g7"], ["9", "nine", "g9"],
                                         ["8", "eight", "g8"]]
    with pytest.raises(TypeError, match="fields of the ReportData"):
        render_report(data, _DEMAND)


def test_chart_draws_short_snacks_first_with_stock(snacks):
    from matplotlib.figure import Figure

    ax = Figure().add_subplot()
    assert plot_demand_vs_stock(_DEMAND, _SHORTAGE, ax=ax) is ax
    labels = [t.get_text() for t in ax.get_yticklabels()]
    assert labels == ["#7", "#9", "#8"]  # short first (largest first), then the busiest
    widths = [p.get_width() for p in ax.patches]
    assert widths == [2, 0, 5, 4, 1, 0]  # within stock for 7, 9, 8; then over stock
    assert [t.get_text() for t in ax.texts] == ["6  (short 4)", "1  (short 1)", "5"]
    buf = io.BytesIO()
    ax.figure.savefig(buf, format="png")
    assert buf.getvalue()[:4] == b"\x89PNG"
    # with names: bars labelled by name, long names cut, colliding names told apart by id
    names = pd.DataFrame({"snack_id": [7, 8, 9], "genre": ["x"] * 3,
                          "name": ["a snack with a very long name indeed, too long", "twin",
                                   "twin"]})
    ax = plot_demand_vs_stock(_DEMAND, _SHORTAGE.assign(has_stock_row=[True, True, False]),
                              ax=Figure().add_subplot(), snacks=names)
    assert [t.get_text() for t in ax.get_yticklabels()] == [
        "a snack with a very long na…", "twin #9", "twin #8"]
    assert ax.texts[1].get_text() == "1  (short 1)  no stock row"


# --------------------------------------------------------------------------------------------
# Chromium


def _chromium() -> str:
    for name in ("chromium", "chromium-browser", "google-chrome", "google-chrome-stable"):
        found = shutil.which(name)
        if found:
            return found
    reason = "Chromium is not installed (apt-get install chromium) - cannot render the report"
    if os.environ.get("CI"):
        pytest.fail(f"{reason} (CI is set, so this is an error, not a skip)", pytrace=False)
    pytest.skip(reason)


def _run_chromium(binary: str, profile: str, *args: str) -> subprocess.CompletedProcess:
    cmd = [binary, "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic",
           "--no-first-run", "--disable-background-networking", "--disable-component-update",
           "--disable-sync", "--hide-scrollbars", f"--user-data-dir={profile}", *args]
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=180, check=False)
    assert done.returncode == 0, f"{cmd} failed ({done.returncode}):\n{done.stderr[-3000:]}"
    return done


@pytest.mark.integration
def test_report_renders_in_headless_chromium(page, report_data, small_run, tmp_path):
    binary = _chromium()
    path = tmp_path / "report.html"
    path.write_text(page, encoding="utf-8")
    url = path.as_uri()

    dom = _run_chromium(binary, str(tmp_path / "profile-dom"), "--dump-dom", url).stdout
    for chart in ("stock-timelines", "demand-vs-stock", "units-by-date"):
        assert re.search(rf'<img class="chart" id="{chart}"[^>]*src="data:image/png;base64,', dom)
    top = list_shortages(report_data.shortage, report_data.snacks).iloc[0]
    first = _Page(dom).rows("shortage")[0]
    assert first[:6] == [top["name"], top["genre"], f"#{top['snack_id']}", f"{top['units']:,}",
                         f"{top['stock']:,}", f"{top['shortage']:,}"]
    s = small_run.summary
    for key in ("users_targeted", "boxes_full", "units_total"):
        assert f'<div class="v">{s[key]:,}</div>' in dom

    shot = tmp_path / "report.png"
    _run_chromium(binary, str(tmp_path / "profile-shot"), f"--screenshot={shot}",
                  "--window-size=1300,2400", url)
    from PIL import Image

    with Image.open(shot) as im:
        assert im.size == (1300, 2400)
        rgb = im.convert("RGB")
        pixels = np.asarray(rgb).reshape(-1, 3)
    # real content: much of the page is not background, in many colours, with the red of
    # the short numbers and the amber of the call-outs
    background = np.array([0xF5, 0xF6, 0xF8], np.uint8)
    assert (pixels != background).any(axis=1).mean() > 0.3
    assert len(np.unique(pixels, axis=0)) > 200
    for name, colour in (("short numbers", PAGE_RED), ("warning call-outs", (0xFF, 0xF3, 0xDE))):
        count = int((pixels == np.array(colour, np.uint8)).all(axis=1).sum())
        assert count > 200, f"{name}: only {count} pixels of {colour} in the screenshot"
    keep = os.environ.get("PREASSIGN_REPORT_SCREENSHOT")
    if keep:  # a palette PNG: text stays sharp, the file stays commit-sized
        target = Path(keep) if os.path.isabs(keep) else ROOT / keep
        rgb.quantize(colors=128, method=Image.Quantize.MEDIANCUT).save(target, optimize=True)
        assert target.stat().st_size < 400_000


@pytest.mark.integration
def test_charts_are_decoded_and_laid_out_in_chromium(small_run, tmp_path):
    """The old call's page is short enough that its charts are on the first screen."""
    binary = _chromium()
    path = tmp_path / "report.html"
    shortage = small_run.shortage.copy()
    keep = list_shortages(shortage)["snack_id"].head(6)
    shortage.loc[~shortage["snack_id"].isin(keep), "shortage"] = 0
    path.write_text(render_report(small_run.summary, small_run.demand, shortage),
                    encoding="utf-8")
    shot = tmp_path / "charts.png"
    _run_chromium(binary, str(tmp_path / "profile"), f"--screenshot={shot}",
                  "--window-size=1300,2600", path.as_uri())
    from PIL import Image

    with Image.open(shot) as im:
        pixels = np.asarray(im.convert("RGB")).reshape(-1, 3)
    # The chart colours occur only inside the inline PNGs: if they are on screen,
    # the browser decoded and laid out the charts.
    for name, colour in (("blue bars", CHART_BLUE), ("red shortage bars", CHART_RED)):
        count = int((pixels == np.array(colour, np.uint8)).all(axis=1).sum())
        assert count > 2000, f"{name}: only {count} pixels of {colour} in the screenshot"


@pytest.mark.integration
def test_hostile_names_run_nothing_in_chromium(small_run, snacks, stock, tmp_path):
    binary = _chromium()
    short = list_shortages(small_run.shortage)["snack_id"].tolist()
    hostile = snacks.set_index("snack_id")
    hostile.loc[short[0], "name"] = SCRIPT
    hostile.loc[short[1], "name"] = PROBE_NAME
    hostile.loc[short[1], "genre"] = PROBE_GENRE
    hostile.loc[short[2], "genre"] = IMG
    data = _report_data(small_run, hostile.reset_index(), stock)
    data.summary["callouts"][0]["message"] = PROBE_GENRE
    path = tmp_path / "report.html"
    path.write_text(render_report(data), encoding="utf-8")
    dom = _run_chromium(binary, str(tmp_path / "profile"), "--dump-dom", path.as_uri()).stdout
    # nothing ran: the probes would have renamed the page or marked the body
    assert "pwned" not in re.search(r"<title>(.*?)</title>", dom).group(1)
    assert not re.search(r"<body[^>]*data-pwned", dom) and "<script" not in dom
    assert not re.search(r"<img(?![^>]*class=\"chart\")", dom)  # only our charts are images
    # the names are there, as text
    assert "&lt;script&gt;alert(1)&lt;/script&gt;" in dom
    assert "&lt;img src=x onerror=alert(1)&gt;" in dom
    assert "&lt;script&gt;document.title='pwned'&lt;/script&gt;" in dom
    rows = {r[2]: r for r in _Page(dom).rows("shortage")}
    assert rows[f"#{short[0]}"][0] == SCRIPT and rows[f"#{short[1]}"][1] == PROBE_GENRE


@pytest.mark.integration
def test_report_prints_to_pdf_over_several_pages(page, tmp_path):
    binary = _chromium()
    path = tmp_path / "report.html"
    path.write_text(page, encoding="utf-8")
    pdf = tmp_path / "report.pdf"
    _run_chromium(binary, str(tmp_path / "profile"), "--no-pdf-header-footer",
                  f"--print-to-pdf={pdf}", path.as_uri())
    data = pdf.read_bytes()
    assert data.startswith(b"%PDF-")
    pages = len(re.findall(rb"/Type\s*/Page(?![s\w])", data))
    assert pages > 2, f"{pages} page(s): the long shortage table should run over several"
