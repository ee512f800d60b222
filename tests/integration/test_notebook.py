"""The notebook: committed stripped, holds no logic of its own, and runs under papermill."""

from __future__ import annotations

import ast
import base64
import datetime as dt
import re
import time
from pathlib import Path

import dask
import nbformat
import pandas as pd
import pytest

NOTEBOOK = Path(__file__).resolve().parents[2] / "notebooks" / "preassign.ipynb"
PARAMETERS = {
    "lake", "date_from", "date_to", "out", "overwrite", "storage_options", "cluster", "workers",
    "threads_per_worker", "memory_limit", "rule_overrides", "keep_cluster", "user_id", "top",
    "stock_scale",
}


def _code_cells(nb) -> list:
    return [c for c in nb.cells if c.cell_type == "code"]


def _python(source: str) -> str:
    """A cell's source without IPython magics, for :mod:`ast`."""
    return "\n".join("" if line.lstrip().startswith(("%", "!")) else line
                     for line in source.splitlines())


def test_committed_notebook_has_no_outputs():
    nb = nbformat.read(NOTEBOOK, as_version=4)
    nbformat.validate(nb)
    for i, cell in enumerate(_code_cells(nb)):
        assert cell.outputs == [], f"code cell {i} has outputs; strip them before committing"
        assert cell.execution_count is None, f"code cell {i} has an execution count"
    for cell in nb.cells:
        assert set(cell.metadata) <= {"tags"}, f"cell metadata left over: {dict(cell.metadata)}"
    assert set(nb.metadata) <= {"kernelspec", "language_info"}, dict(nb.metadata)
    assert nb.metadata["kernelspec"]["name"] == "python3"


def test_parameters_cell_is_tagged_and_parsed_by_papermill():
    import papermill

    nb = nbformat.read(NOTEBOOK, as_version=4)
    tagged = [i for i, c in enumerate(_code_cells(nb))
              if "parameters" in c.metadata.get("tags", [])]
    assert tagged == [0], "the first code cell, and only it, must be tagged 'parameters'"
    assert set(papermill.inspect_notebook(str(NOTEBOOK))) == PARAMETERS


def test_notebook_cells_only_call_the_package():
    """No functions, classes, loops or branches: the logic lives in preassign."""
    nb = nbformat.read(NOTEBOOK, as_version=4)
    for cell in _code_cells(nb):
        tree = ast.parse(_python(cell.source))
        for node in ast.walk(tree):
            assert not isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef,
                                         ast.For, ast.While, ast.If, ast.Try, ast.Lambda)), (
                f"{type(node).__name__} in a notebook cell:\n{cell.source}")
            if isinstance(node, ast.ImportFrom):
                assert node.module.split(".")[0] in ("preassign",), node.module
            if isinstance(node, ast.Import):
                assert [a.name for a in node.names] == ["datetime"], ast.dump(node)
            if isinstance(node, ast.BoolOp):  # `keep_cluster or close_client(client)` only
                assert "close_client" in ast.unparse(node), ast.unparse(node)


# --------------------------------------------------------------------------------------------
# executing it


def _rows(table_html: str) -> list[list[str]]:
    """Cell texts per body row of a pandas ``to_html`` table (index cell dropped)."""
    body = re.search(r"<tbody>(.*?)</tbody>", table_html, re.S).group(1)
    rows = re.findall(r"<tr>(.*?)</tr>", body, re.S)
    return [re.findall(r"<td>(.*?)</td>", row, re.S) for row in rows]


def _cell(nb, call: str):
    found = [c for c in _code_cells(nb) if call in c.source]
    assert len(found) == 1, f"expected one cell calling {call}"
    return found[0]


def _output(cell, mime: str) -> str:
    for out in cell.outputs:
        if mime in out.get("data", {}):
            return out["data"][mime]
    raise AssertionError(f"no {mime} output in cell:\n{cell.source}\n{cell.outputs}")


def _stream(cell) -> str:
    return "".join(o.get("text", "") for o in cell.outputs if o.output_type == "stream")


@pytest.mark.integration
def test_notebook_runs_on_a_small_lake(tmp_path):
    import papermill

    from preassign.synth import SynthConfig, write_lake

    lake, out = tmp_path / "lake", tmp_path / "out"
    with dask.config.set(scheduler="sync"):
        write_lake(SynthConfig(users=400, users_per_partition=200, as_of=dt.date(2026, 12, 1)),
                   str(lake))
    executed = tmp_path / "executed.ipynb"
    started = time.perf_counter()
    # run from notebooks/, as JupyterLab does
    papermill.execute_notebook(
        str(NOTEBOOK), str(executed), cwd=str(NOTEBOOK.parent), kernel_name="python3",
        progress_bar=False, execution_timeout=300,
        parameters={"lake": str(lake), "out": str(out), "date_from": "2026-12-01",
                    "date_to": "2026-12-14", "cluster": "local", "workers": 1,
                    "threads_per_worker": 1, "top": 15, "stock_scale": 0.5},
    )
    seconds = time.perf_counter() - started
    assert seconds < 300, f"the notebook took {seconds:.0f} s"
    nb = nbformat.read(executed, as_version=4)
    for cell in _code_cells(nb):
        assert cell.execution_count is not None, cell.source
        assert not [o for o in cell.outputs if o.output_type == "error"], cell.outputs

    link = _output(_cell(nb, "Link(client.dashboard_link"), "text/html")
    assert re.search(r'<a href="https?://[\w.\-]+:\d+/status"', link), link
    run = _stream(_cell(nb, "run_preassignment("))
    assert "100% Completed" in run, "no progress bar"
    assert "scan:" in run and "assign:" in run and "stage assign" in run, run
    assert (out / "summary.json").is_file()
    page = _output(_cell(nb, "Page(out_path"), "text/html")
    assert page.startswith("<iframe srcdoc=") and "&lt;html" in page.lower()

    demand = pd.read_parquet(out / "demand").groupby("snack_id")["units"].sum()
    busiest = demand.sort_values(ascending=False, kind="stable")
    rows = _rows(_output(_cell(nb, "rank_busiest_snacks("), "text/html"))
    assert len(rows) == 15
    assert [int(r[1]) for r in rows] == busiest.head(15).tolist()  # units column

    png = _output(_cell(nb, "plot_demand_vs_stock("), "image/png")
    assert base64.b64decode(png)[:8] == b"\x89PNG\r\n\x1a\n"

    shortage = pd.read_parquet(out / "shortage")
    short = shortage[shortage["shortage"] > 0].sort_values(["shortage", "snack_id"],
                                                            ascending=[False, True])
    rows = _rows(_output(_cell(nb, "list_shortages("), "text/html"))
    shown = [(int(r[0]), int(r[3])) for r in rows if r[0] != "..."]  # pandas elides long frames
    head = len(shown) if len(rows) == len(shown) else len(shown) // 2
    assert shown[:head] == list(zip(short["snack_id"], short["shortage"], strict=False))[:head]
    assert head >= min(len(short), 5)

    explain = _cell(nb, "explain_box(")
    assignments = pd.read_parquet(out / "assignments")
    first = int(assignments["user_id"].min())
    assert f"'user_id': {first}" in _stream(explain)
    box = assignments[assignments["user_id"] == first].sort_values("slot")
    rows = _rows(_output(explain, "text/html"))
    assert [(int(r[2]), int(r[3]), r[6]) for r in rows] == list(
        zip(box["slot"], box["snack_id"], box["stage"].astype(str), strict=False))
    assert all(r[-1] for r in rows), "every snack has a reason"

    whatif = _cell(nb, "session.run(rule_overrides, stock_aware=True, stock=stock_scale)")
    assert "'rounds'" in _output(whatif, "text/plain")
    table = _output(_cell(nb, "what_if(base, scaled)"), "text/html")
    assert "units_before" in table and "units_after" in table


def test_project_path_resolves_from_the_repository_root(tmp_path):
    from preassign.notebook import project_path

    repo = NOTEBOOK.parents[1]
    assert project_path("data/lake", cwd=repo / "notebooks") == str(repo / "data" / "lake")
    assert project_path("preassign.ipynb", cwd=repo / "notebooks") == str(NOTEBOOK)
    assert project_path(str(tmp_path)) == str(tmp_path)
    assert project_path("s3://b/lake") == "s3://b/lake"
