"""Two runs compared: what changed, and why where it can tell.

:func:`compare_runs` reads two complete run outputs (their ``summary.json``, ``demand/``,
``shortage/`` or ``reservations/``, ``assignments/``) and returns a :class:`RunDiff`:

* **why** - the differences of the runs' own records: rule parameters (name, before,
  after), delivery dates, the kind of run (stock-aware or not), the inputs (tables whose
  fingerprint - file names, sizes, versions - differs) and the package version;
* **units** - per snack, units before and after (and per delivery date and snack);
* **shortage** - per snack, shortage before and after (SPEC §3 runs), or units served and
  boxes lost (stock-aware runs);
* **boxes** - boxes whose set of snacks differs, boxes only in one of the runs.

``preassign diff RUN_A RUN_B`` prints it and, with ``--out``, writes ``diff.json`` and the
per-snack and per-date tables; ``run --compare-to PREVIOUS`` puts it in the report.
"""

from __future__ import annotations

import dataclasses
import json
import posixpath
from collections.abc import Mapping
from typing import Any

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq

from .errors import InputError
from .storage import Publication, open_location

__all__ = ["RunDiff", "compare_runs", "diff_for_report", "read_run", "write_diff"]


@dataclasses.dataclass
class RunOutputs:
    """A complete run output, read back (the large assignments only when asked)."""

    url: str
    summary: dict[str, Any]
    demand: pd.DataFrame
    shortage: pd.DataFrame | None
    reservations: pd.DataFrame | None
    location: Any

    def assignments(self) -> pd.DataFrame:
        """``user_id``, ``delivery_on``, ``snack_id`` of every box (read on demand)."""
        return _read_table(self.location, "assignments", ["user_id", "delivery_on", "snack_id"],
                           self.url)


def _read_table(loc: Any, name: str, columns: list[str] | None, url: str,
                required: bool = True) -> pd.DataFrame:
    base = loc.child(name)
    if not loc.fs.isdir(base):
        if required:
            raise InputError(f"run output {url!r} has no {name}/ (is it a complete run?)")
        return pd.DataFrame()
    files = sorted(f for f in loc.fs.find(base) if f.endswith(".parquet")
                   and not posixpath.basename(f).startswith(("_", ".")))
    tables = []
    for path in files:
        with loc.fs.open(path, "rb") as f:
            table = pq.read_table(f)
        tables.append(table.select([c for c in columns if c in table.column_names])
                      if columns else table)
    if not tables:
        return pd.DataFrame({c: [] for c in (columns or [])})
    return pa.concat_tables(tables, promote_options="permissive").to_pandas()


def read_run(url: str, storage_options: Mapping[str, Any] | None = None) -> RunOutputs:
    """Read a complete run output's summary and small tables.

    Raises:
        InputError: ``url`` is not a complete run (no ``summary.json``).
    """
    loc = open_location(url, storage_options, flag="run output")
    path = loc.child("summary.json")
    if not loc.fs.isfile(path):
        raise InputError(f"{url!r} is not a complete run output of preassign: it has no "
                         "summary.json")
    try:
        summary = json.loads(loc.fs.cat_file(path))
    except ValueError as exc:
        raise InputError(f"{url!r}: summary.json is not valid JSON ({exc})") from None
    demand = _read_table(loc, "demand", None, url)
    shortage = _read_table(loc, "shortage", None, url, required=False)
    reservations = _read_table(loc, "reservations", None, url, required=False)
    return RunOutputs(url, summary, demand, shortage if len(shortage.columns) else None,
                      reservations if len(reservations.columns) else None, loc)


@dataclasses.dataclass
class RunDiff:
    """What changed from run A to run B."""

    a: dict[str, Any]  # run_id, out, date_from, date_to, finished_at
    b: dict[str, Any]
    why: list[str]
    units_total: tuple[int, int]
    snacks: pd.DataFrame  # snack_id, units_before, units_after, change, short_before/_after
    by_date: pd.DataFrame  # delivery_on, snack_id, units_before, units_after, change
    boxes_changed: int | None
    boxes_only_before: int | None
    boxes_only_after: int | None

    @property
    def nothing_changed(self) -> bool:
        """Whether the two runs agree on every unit and box."""
        return not len(self.snacks) and not self.boxes_changed and not self.boxes_only_before \
            and not self.boxes_only_after and self.units_total[0] == self.units_total[1]

    def to_json(self) -> dict[str, Any]:
        """The diff as ``diff.json`` holds it."""
        return {
            "a": self.a, "b": self.b, "why": self.why,
            "units_total": {"before": self.units_total[0], "after": self.units_total[1]},
            "boxes_changed": self.boxes_changed, "boxes_only_before": self.boxes_only_before,
            "boxes_only_after": self.boxes_only_after,
            "snacks_changed": int(len(self.snacks)), "nothing_changed": self.nothing_changed,
            "snacks": json.loads(self.snacks.to_json(orient="records")),
        }


def _identity(run: RunOutputs) -> dict[str, Any]:
    s = run.summary
    return {"run_id": s.get("run_id"), "out": run.url, "date_from": s.get("date_from"),
            "date_to": s.get("date_to"), "finished_at": s.get("finished_at"),
            "stock_aware": bool(s.get("stock_aware", False))}


def explain_differences(a: Mapping[str, Any], b: Mapping[str, Any]) -> list[str]:
    """Why two runs may differ, from their summaries (empty: same inputs and settings)."""
    why = []
    if (a.get("date_from"), a.get("date_to")) != (b.get("date_from"), b.get("date_to")):
        why.append(f"dates: {a.get('date_from')}..{a.get('date_to')} -> "
                   f"{b.get('date_from')}..{b.get('date_to')}")
    if bool(a.get("stock_aware")) != bool(b.get("stock_aware")):
        kind = {False: "SPEC §3 (demand)", True: "stock-aware (SPEC §6)"}
        why.append(f"kind of run: {kind[bool(a.get('stock_aware'))]} -> "
                   f"{kind[bool(b.get('stock_aware'))]}")
    pa_, pb = a.get("parameters", {}), b.get("parameters", {})
    for name in sorted(set(pa_) | set(pb)):
        if pa_.get(name) != pb.get(name):
            why.append(f"parameter {name}: {pa_.get(name)} -> {pb.get(name)}")
    fa, fb = a.get("input_fingerprint", {}), b.get("input_fingerprint", {})
    changed = sorted(t for t in set(fa) | set(fb) if fa.get(t) != fb.get(t))
    if changed:
        why.append("inputs changed (file names, sizes or versions): " + ", ".join(changed))
    if a.get("on_invalid") != b.get("on_invalid"):
        why.append(f"on_invalid: {a.get('on_invalid')} -> {b.get('on_invalid')}")
    va = a.get("versions", {}).get("preassign")
    vb = b.get("versions", {}).get("preassign")
    if va != vb:
        why.append(f"preassign version: {va} -> {vb}")
    return why


def _units(demand: pd.DataFrame, keys: list[str]) -> pd.Series:
    if not len(demand):
        return pd.Series(dtype=np.int64)
    return demand.groupby(keys)["units"].sum().astype(np.int64)


def _short(run: RunOutputs) -> pd.Series:
    if run.shortage is not None and len(run.shortage):
        return run.shortage.set_index("snack_id")["shortage"].astype(np.int64)
    if run.reservations is not None and len(run.reservations):
        r = run.reservations.set_index("snack_id")
        return (r["units_unconstrained"] - r["units"]).astype(np.int64)
    return pd.Series(dtype=np.int64)


def _changes(before: pd.Series, after: pd.Series, name: str) -> pd.DataFrame:
    index = before.index.union(after.index)
    frame = pd.DataFrame({f"{name}_before": before.reindex(index).fillna(0).astype(np.int64),
                          f"{name}_after": after.reindex(index).fillna(0).astype(np.int64)})
    frame["change"] = frame[f"{name}_after"] - frame[f"{name}_before"]
    return frame


def _names(*demands: pd.DataFrame) -> pd.DataFrame | None:
    """``snack_id``, ``name``, ``genre`` from the runs' ``demand/`` (runs that wrote them)."""
    frames = [d[["snack_id", "name", "genre"]] for d in demands
              if {"name", "genre"} <= set(d.columns)]
    if not frames:
        return None
    return pd.concat(frames, ignore_index=True).drop_duplicates("snack_id")


def compare_frames(a: RunOutputs, b: RunOutputs, boxes: bool = True) -> RunDiff:
    """Compare two runs' outputs (see the module docstring)."""
    units = _changes(_units(a.demand, ["snack_id"]), _units(b.demand, ["snack_id"]), "units")
    short = _changes(_short(a), _short(b), "short")
    snacks = units.join(short.drop(columns="change"), how="outer").fillna(0).astype(np.int64)
    moved = (snacks["units_before"] != snacks["units_after"]) | \
        (snacks["short_before"] != snacks["short_after"])
    snacks = snacks.loc[moved].reset_index().rename(columns={"index": "snack_id"})
    snacks = snacks.sort_values(["change", "snack_id"], key=lambda c: -c.abs()
                                if c.name == "change" else c, ignore_index=True)
    names = _names(b.demand, a.demand)
    if names is not None:
        from .insights import with_names

        snacks = with_names(snacks, names)
    by_date = _changes(_units(a.demand, ["delivery_on", "snack_id"]),
                       _units(b.demand, ["delivery_on", "snack_id"]), "units")
    by_date = by_date.loc[by_date["change"] != 0].reset_index()
    changed = only_a = only_b = None
    if boxes:
        changed, only_a, only_b = _boxes(a.assignments(), b.assignments())
    return RunDiff(
        a=_identity(a), b=_identity(b), why=explain_differences(a.summary, b.summary),
        units_total=(int(a.demand["units"].sum()) if len(a.demand) else 0,
                     int(b.demand["units"].sum()) if len(b.demand) else 0),
        snacks=snacks, by_date=by_date, boxes_changed=changed, boxes_only_before=only_a,
        boxes_only_after=only_b)


def _boxes(a: pd.DataFrame, b: pd.DataFrame) -> tuple[int, int, int]:
    """Boxes (user, delivery date) whose snacks differ, boxes only in a, only in b."""
    def keyed(frame: pd.DataFrame) -> pd.DataFrame:
        return pd.DataFrame({"user_id": frame["user_id"].to_numpy(np.int64),
                             "delivery_on": pd.to_datetime(frame["delivery_on"]).to_numpy(),
                             "snack_id": frame["snack_id"].to_numpy(np.int64)})

    ka, kb = keyed(a), keyed(b)
    box = ["user_id", "delivery_on"]
    boxes_a = ka[box].drop_duplicates()
    boxes_b = kb[box].drop_duplicates()
    both = boxes_a.merge(boxes_b, on=box)
    only_a = len(boxes_a) - len(both)
    only_b = len(boxes_b) - len(both)
    pairs = ka.merge(kb, on=[*box, "snack_id"], how="outer", indicator=True)
    differing = pairs.loc[pairs["_merge"] != "both", box].drop_duplicates()
    changed = len(differing.merge(both, on=box))
    return int(changed), int(only_a), int(only_b)


def compare_runs(run_a: str, run_b: str, storage_options: Mapping[str, Any] | None = None, *,
                 boxes: bool = True) -> RunDiff:
    """Compare two complete run outputs (local paths or ``s3://``).

    Raises:
        InputError: one of them is not a complete run output.
    """
    return compare_frames(read_run(run_a, storage_options), read_run(run_b, storage_options),
                          boxes=boxes)


def diff_for_report(diff: RunDiff, names: pd.DataFrame | None = None) -> dict[str, Any]:
    """The "since the previous run" section's data (see ``preassign.report.ReportData``)."""
    snacks = diff.snacks.rename(columns={"short_before": "shortage_before",
                                         "short_after": "shortage_after"})
    if names is not None and len(snacks):
        from .insights import with_names

        snacks = with_names(snacks, names)
    return {"previous": diff.a, "why": diff.why, "units_total": diff.units_total,
            "snacks": snacks, "boxes_changed": diff.boxes_changed}


def write_diff(diff: RunDiff, url: str, storage_options: Mapping[str, Any] | None = None) -> None:
    """Write a comparison: ``diff.json`` (last), ``snacks.csv`` and ``by_date.csv``.

    Published like a run output (staged, then made visible at once); ``url`` must be new,
    empty, or a comparison written before.
    """
    target = DiffOutput(url, storage_options, overwrite=True)
    target.check_target()
    with target.writing():
        target.write_bytes("snacks.csv", diff.snacks.to_csv(index=False).encode())
        target.write_bytes("by_date.csv", diff.by_date.to_csv(index=False).encode())
        target.write_json("diff.json", diff.to_json())


class DiffOutput(Publication):
    """Where ``preassign diff --out`` writes: ``diff.json`` last."""

    last = "diff.json"
    layout = frozenset({"diff.json", "snacks.csv", "by_date.csv"})
    what = "comparison"
    result = "comparison"

    def _recognise(self, payload: Any) -> bool:
        return isinstance(payload, dict) and "why" in payload and "a" in payload
