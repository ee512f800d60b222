"""What the notebook shows, so that the notebook itself holds no logic.

* :func:`project_path` - a path the notebook was given, as the repository means it: opened in
  JupyterLab the working directory is ``notebooks/``, so ``data/lake`` is looked up there and,
  failing that, from the repository root;
* :func:`start_client` - a cluster that stays up across cells (close it with
  :func:`preassign.cluster.close_client`);
* :class:`Link`, :class:`Page` - a clickable dashboard link and the run's report, shown inline;
* :func:`stage_printer` - one line per stage of a run (name and seconds);
* :func:`what_if` - two session runs compared snack by snack.
"""

from __future__ import annotations

import html
import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pandas as pd

from .storage import open_location

__all__ = ["Link", "Page", "project_path", "stage_printer", "start_client", "what_if"]


def _repository_root(start: Path) -> Path | None:
    for folder in [start, *start.parents]:
        if (folder / "pyproject.toml").is_file() and (folder / "preassign").is_dir():
            return folder
    return None


def project_path(path: str, cwd: str | os.PathLike[str] | None = None) -> str:
    """``path`` resolved as the repository means it (URLs and absolute paths unchanged).

    A relative path that exists from the working directory is taken from there; otherwise
    it is taken from the repository root (the nearest folder above holding ``pyproject.toml``
    and ``preassign/``), so ``data/lake`` works from ``notebooks/`` as from the root.

    Examples:
        >>> project_path("s3://bucket/lake")
        's3://bucket/lake'
    """
    if "://" in path or os.path.isabs(path):
        return path
    here = Path(cwd or os.getcwd()).resolve()
    if (here / path).exists():
        return str(here / path)
    root = _repository_root(here)
    return str((root or here) / path)


def start_client(spec: Any) -> Any:
    """A client for ``spec`` that stays open across cells (``close_client(client)`` ends it)."""
    from .cluster import open_client

    return open_client(spec, keep_open=True).__enter__()


class Link:
    """A clickable link in a notebook (plain text elsewhere)."""

    def __init__(self, url: str, text: str | None = None):
        self.url, self.text = url, text or url

    def _repr_html_(self) -> str:
        return (f'<a href="{html.escape(self.url, quote=True)}" target="_blank">'
                f"{html.escape(self.text)}</a>")

    def __repr__(self) -> str:
        return f"{self.text}: {self.url}" if self.text != self.url else self.url


class Page:
    """A run's ``report.html`` shown inline (in a frame, so its styles stay its own)."""

    def __init__(self, out: str, storage_options: dict[str, Any] | None = None,
                 height: int = 900):
        loc = open_location(out, storage_options, flag="out")
        self.html = loc.fs.cat_file(loc.child("report.html")).decode("utf-8")
        self.height = height

    def _repr_html_(self) -> str:
        return (f'<iframe srcdoc="{html.escape(self.html, quote=True)}" '
                f'style="width:100%;height:{self.height}px;border:1px solid #ddd"></iframe>')

    def __repr__(self) -> str:
        return f"<report, {len(self.html):,} characters>"


def stage_printer() -> Callable[[str, float], None]:
    """An ``on_stage`` callback printing each finished stage and its seconds."""
    def show(stage: str, seconds: float) -> None:
        print(f"stage {stage:<8} done in {seconds:6.1f} s", flush=True)

    return show


def what_if(base: Any, other: Any) -> pd.DataFrame:
    """Per snack, what changes from one session run to another (stock-aware or not).

    Returns:
        ``snack_id``, ``name``, ``units`` before and after, their ``change``; for
        stock-aware runs also ``stock`` and ``boxes_lost`` before and after. Snacks whose
        numbers differ, largest change first.
    """
    from .insights import snack_names, with_names

    def per_snack(result: Any) -> pd.DataFrame:
        if result.reservations is not None:
            r = result.reservations.set_index("snack_id")
            return r[["stock", "units", "boxes_lost"]]
        units = result.demand.groupby("snack_id")["units"].sum()
        return units.to_frame()

    a, b = per_snack(base), per_snack(other)
    both = a.join(b, how="outer", lsuffix="_before", rsuffix="_after").fillna(0).astype(int)
    both["change"] = both["units_after"] - both["units_before"]
    moved = both.drop(columns="change").pipe(
        lambda f: (f.filter(like="_before").to_numpy() != f.filter(like="_after").to_numpy())
        .any(axis=1))
    out = both.loc[moved].reset_index().rename(columns={"index": "snack_id"})
    out = out.sort_values("change", key=lambda c: -c.abs(), kind="stable", ignore_index=True)
    return with_names(out, snack_names(base.session.catalog))
