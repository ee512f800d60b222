"""The independent implementations (the per-user reference, the DuckDB peer) use the same
parameter defaults as the package: SPEC §3's table, written down three times on purpose."""

from __future__ import annotations

from benchmarks.duckdb_peer import DEFAULT_PARAMS as DUCKDB_DEFAULTS
from preassign import Params
from tests.oracle.reference import DEFAULT_PARAMS as REFERENCE_DEFAULTS


def _rules_only(params: dict) -> dict:
    return {k: v for k, v in params.items() if k in Params.names()}


def test_reference_defaults_equal_params():
    assert _rules_only(REFERENCE_DEFAULTS) == Params().to_dict()
    assert set(REFERENCE_DEFAULTS) == set(Params.names())


def test_duckdb_peer_defaults_equal_params():
    # the peer implements SPEC §3 only: every §3 parameter, and stock_max_rounds (§6) if any
    section3 = {k: v for k, v in Params().to_dict().items() if k != "stock_max_rounds"}
    assert {k: v for k, v in DUCKDB_DEFAULTS.items() if k != "stock_max_rounds"} == section3
