"""The HTML run report: content, escaping, self-containment, and rendering in Chromium."""

from __future__ import annotations

import base64
import datetime as dt
import io
import json
import os
import re
import shutil
import subprocess
import time

import dask
import numpy as np
import pandas as pd
import pytest

from preassign.pipeline import RunConfig, run_preassignment
from preassign.report import (
    count_units_by_date,
    list_shortages,
    plot_demand_vs_stock,
    rank_busiest_snacks,
    render_report,
)
from preassign.synth import SynthConfig, write_lake

DATE_FROM = dt.date(2026, 12, 1)
DATE_TO = dt.date(2026, 12, 14)
CHART_BLUE = (0x4C, 0x78, 0xA8)  # units within stock (also "preference" in the date chart)
CHART_RED = (0xE4, 0x57, 0x56)  # units over stock


@pytest.fixture(scope="module")
def small_run(tmp_path_factory):
    """A real run: 500 synthetic users in two partitions, two weeks, sync scheduler."""
    root = tmp_path_factory.mktemp("report")
    lake, out = str(root / "lake"), str(root / "out")
    with dask.config.set(scheduler="sync"):
        write_lake(SynthConfig(users=500, users_per_partition=250, as_of=DATE_FROM), lake)
        result = run_preassignment(RunConfig(lake=lake, date_from=DATE_FROM, date_to=DATE_TO,
                                             out=out))
    assert result.shortage is not None and (result.shortage["shortage"] > 0).any()
    return result


def _text(page: str) -> str:
    """The page's visible text, roughly (tags dropped, entities kept)."""
    return re.sub(r"\s+", " ", re.sub(r"<[^>]+>", " ", page))


# --------------------------------------------------------------------------------------------
# content


def test_report_from_a_real_run_is_self_contained(small_run):
    started = time.perf_counter()
    page = render_report(small_run.summary, small_run.demand, small_run.shortage)
    seconds = time.perf_counter() - started
    assert seconds < 10, f"rendering took {seconds:.1f} s"
    assert page.startswith("<!DOCTYPE html>")
    # nothing to fetch: no URL at all, every src/href is inline data or a fragment
    assert not re.search(r"https?://", page, re.I)
    assert not re.search(r"@import|url\(|<script|<link|<iframe", page, re.I)
    for ref in re.findall(r'\b(?:src|href)\s*=\s*"([^"]*)"', page):
        assert ref.startswith(("data:image/png;base64,", "#")), ref
    charts = re.findall(r'<img class="chart" id="([^"]+)" alt="[^"]*" src="data:image/png;base64,'
                        r'([A-Za-z0-9+/=]+)"', page)
    assert [c[0] for c in charts] == ["demand-vs-stock", "units-by-date"]
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

    # the shortage table lists every short snack, largest shortage first
    table = re.search(r'<table id="shortage">(.*?)</table>', page, re.S).group(1)
    rows = re.findall(r"<tr><td[^>]*>([\d,]+)</td><td[^>]*>([\d,]+)</td><td[^>]*>([\d,]+)</td>"
                      r"<td[^>]*>([\d,]+)</td></tr>", table)
    got_rows = [tuple(int(x.replace(",", "")) for x in r) for r in rows]
    want = list(short.itertuples(index=False, name=None))
    assert got_rows == want
    assert [r[3] for r in got_rows] == sorted((r[3] for r in got_rows), reverse=True)

    # stage timings and parameters are there
    timings = re.search(r'<table id="timings">(.*?)</table>', page, re.S).group(1)
    for stage in s["stage_seconds"]:
        assert f">{stage}<" in timings
    params = re.search(r'<table id="parameters">(.*?)</table>', page, re.S).group(1)
    for name in s["parameters"]:
        assert f">{name}<" in params
    by_date = re.search(r'<table id="by-date">(.*?)</table>', page, re.S).group(1)
    assert by_date.count("<tr>") == 1 + small_run.demand["delivery_on"].nunique()


def test_every_string_is_escaped(small_run):
    evil = "<script>alert('x')</script>&"
    summary = json.loads(json.dumps(small_run.summary))
    summary["run_id"] = evil
    summary["lake"] = {"url": evil}
    summary["versions"] = {evil: evil}
    summary["stage_seconds"] = {evil: 1.5}
    summary["cluster"] = {"kind": evil}
    summary["date_from"] = evil
    page = render_report(summary, small_run.demand, small_run.shortage)
    assert "<script" not in page
    assert "&lt;script&gt;alert(&#x27;x&#x27;)&lt;/script&gt;&amp;" in page


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
               "boxes_by_date": {str(d): {"full": 10 + i, "short": i} for i, d in enumerate(days)}}
    page = render_report(summary, small_run.demand, small_run.shortage)
    table = re.search(r'<table id="by-date">(.*?)</table>', page, re.S).group(1)
    assert ">boxes_full<" in table and ">boxes_short<" in table
    first = re.search(r"<tr><td[^>]*>" + str(days[0]) + r"</td>(.*?)</tr>", table).group(1)
    assert re.findall(r">([\d,]+)<", first)[-2:] == ["10", "0"]


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


def test_chart_draws_stock_and_shortage_on_given_axes():
    from matplotlib.figure import Figure

    ax = Figure().add_subplot()
    assert plot_demand_vs_stock(_DEMAND, _SHORTAGE, ax=ax) is ax
    labels = [t.get_text() for t in ax.get_yticklabels()]
    assert labels == ["#7", "#8", "#9"]
    widths = [p.get_width() for p in ax.patches]
    assert widths == [2, 5, 0, 4, 0, 1]  # within stock for 7, 8, 9; then over stock
    assert [t.get_text() for t in ax.texts] == ["6  (short 4)", "5", "1  (short 1)"]
    buf = io.BytesIO()
    ax.figure.savefig(buf, format="png")
    assert buf.getvalue()[:4] == b"\x89PNG"


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
def test_report_renders_in_headless_chromium(small_run, tmp_path):
    binary = _chromium()
    page = tmp_path / "report.html"
    page.write_text(render_report(small_run.summary, small_run.demand, small_run.shortage),
                    encoding="utf-8")
    url = page.as_uri()

    dom = _run_chromium(binary, str(tmp_path / "profile-dom"), "--dump-dom", url).stdout
    for chart in ("demand-vs-stock", "units-by-date"):
        assert re.search(rf'<img class="chart" id="{chart}"[^>]*src="data:image/png;base64,', dom)
    top = list_shortages(small_run.shortage).iloc[0]
    table = re.search(r'<table id="shortage">(.*?)</table>', dom, re.S).group(1)
    first = re.findall(r"<td[^>]*>([^<]*)</td>", table)[:4]
    assert first == [f"{int(top[c]):,}" for c in ("snack_id", "units", "stock", "shortage")]
    s = small_run.summary
    for key in ("users_targeted", "boxes_full", "units_total"):
        assert f'<div class="v">{s[key]:,}</div>' in dom

    shot = tmp_path / "report.png"
    _run_chromium(binary, str(tmp_path / "profile-shot"), f"--screenshot={shot}",
                  "--window-size=1280,2000", url)
    from PIL import Image

    with Image.open(shot) as im:
        assert im.size == (1280, 2000)
        pixels = np.asarray(im.convert("RGB")).reshape(-1, 3)
    # The chart colours occur only inside the inline PNGs: if they are on screen,
    # the browser decoded and laid out the charts.
    for name, colour in (("blue bars", CHART_BLUE), ("red shortage bars", CHART_RED)):
        count = int((pixels == np.array(colour, np.uint8)).all(axis=1).sum())
        assert count > 2000, f"{name}: only {count} pixels of {colour} in the screenshot"
