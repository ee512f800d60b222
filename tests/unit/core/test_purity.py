"""preassign.core is pure: it imports and runs with Dask, storage, database and CLI
libraries blocked, and no module of it imports anything above it."""

from __future__ import annotations

import ast
import pathlib
import subprocess
import sys
import textwrap

CORE = pathlib.Path(__file__).resolve().parents[3] / "preassign" / "core"
BLOCKED = ("dask", "distributed", "fsspec", "s3fs", "sqlalchemy", "pymysql", "boto3", "botocore",
           "aiobotocore", "click", "jinja2", "matplotlib")


def test_core_runs_with_dask_storage_databases_and_click_blocked():
    code = textwrap.dedent(f"""
        import importlib.abc, sys

        class Block(importlib.abc.MetaPathFinder):
            def find_spec(self, name, path=None, target=None):
                if name.split(".")[0] in {BLOCKED!r}:
                    raise ImportError(f"{{name}} is blocked in this test")
                return None

        sys.meta_path.insert(0, Block())
        import datetime as dt
        import preassign.core as core
        from preassign.core.catalog import build_catalog
        from preassign.core.contract import dedupe_keyed, normalize_table
        from preassign.core.partition import prepare_partition
        from tests.oracle.reference import worked_example_tables

        tables = worked_example_tables()
        snacks = normalize_table("snacks", tables["snacks"])[0]
        catalog = build_catalog(dedupe_keyed("snacks", snacks, "snack_id"))
        clean = prepare_partition(tables, catalog)[0]
        d = dt.date(2026, 12, 1)
        boxes = []
        for name in ("numba", "numpy"):
            engine = core.get_engine(name)
            prior = core.snack_prior(*engine.rating_totals(clean, catalog), core.Params())
            state = engine.build_state(clean, catalog, d, d, core.Params())
            boxes.append(engine.assign(state, catalog, prior, core.Params())["snack_id"].tolist())
        assert boxes == [[3, 4, 1, 2, 1]] * 2, boxes
        loaded = sorted(m for m in sys.modules if m.split(".")[0] in {BLOCKED!r})
        assert not loaded, loaded
        print("ok")
    """)
    root = CORE.parents[1]
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          cwd=root, timeout=300)
    assert proc.returncode == 0 and proc.stdout.strip() == "ok", proc.stderr


def test_no_core_module_imports_from_above_it():
    allowed_top = {"numpy", "pandas", "pyarrow", "numba", "__future__", "dataclasses",
                   "datetime", "math", "collections", "typing", "importlib"}
    for path in sorted(CORE.glob("*.py")):
        tree = ast.parse(path.read_text(), str(path))
        for node in ast.walk(tree):
            if isinstance(node, ast.ImportFrom):
                if node.level == 0:
                    assert node.module.split(".")[0] in allowed_top, (path.name, node.module)
                elif node.level == 2:  # from ..x: only the leaf errors module
                    assert node.module == "errors", (path.name, node.module)
                else:
                    assert node.level == 1, (path.name, node.module)
            elif isinstance(node, ast.Import):
                for alias in node.names:
                    assert alias.name.split(".")[0] in allowed_top, (path.name, alias.name)
