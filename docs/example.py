"""Pre-assign from Python: one run, then what-if runs over the same state.

Run it from the repository root after ``make demo`` (or give a lake and an output)::

    .venv/bin/python docs/example.py [LAKE] [OUT]

The README shows this file as it is, and a test runs it.
"""

from __future__ import annotations

import datetime as dt
import sys

from preassign import Params
from preassign.cluster import ClusterSpec, open_client
from preassign.pipeline import RunConfig, run_preassignment
from preassign.session import Session


def main(lake: str = "data/lake", out: str = "data/run-py") -> None:
    """Run two weeks from ``lake`` into ``out``, then ask what tighter stock would change."""
    first, last = dt.date(2026, 12, 1), dt.date(2026, 12, 14)
    config = RunConfig(lake=lake, date_from=first, date_to=last, out=out,
                       params=Params(max_requests=1), overwrite=True)
    with open_client(ClusterSpec(kind="local", workers=2)) as client:
        # 1. a run, exactly as `preassign run` does it: outputs published under `out`
        result = run_preassignment(config, client)
        print(f"{result.summary['units_total']:,} units for "
              f"{result.summary['users_targeted']:,} users")
        if result.shortage is not None:
            short = result.shortage[result.shortage["shortage"] > 0]
            print(f"{len(short)} snacks short, {int(short['shortage'].sum()):,} units")

        # 2. what-if: the lake is read once, its state kept on the workers, each run
        # takes seconds (SPEC §6: what the boxes will be with the stock on hand)
        with Session(lake, client, first, last) as session:
            for scale in (1.0, 0.9):
                what_if = session.run(Params(max_requests=1), stock_aware=True, stock=scale)
                assert what_if.reservations is not None
                lost = int(what_if.reservations["boxes_lost"].sum())
                print(f"stock x {scale}: {what_if.summary['boxes_changed']:,} boxes change, "
                      f"{lost:,} snack choices give way to the stock")


if __name__ == "__main__":
    main(*sys.argv[1:])
