"""The log formats a scheduler parses: key=value and JSON lines, with the run id."""

from __future__ import annotations

import json
import logging

import pytest

from preassign.logs import (
    JsonFormatter,
    KeyValueFormatter,
    RunIdFilter,
    log_event,
    new_run_id,
)


@pytest.fixture()
def captured():
    """A logger whose records are kept, stamped with a run id."""
    records: list[logging.LogRecord] = []

    class Keep(logging.Handler):
        def emit(self, record: logging.LogRecord) -> None:
            records.append(record)

    logger = logging.getLogger("preassign.test-logs")
    handler = Keep()
    handler.addFilter(RunIdFilter())
    logger.addHandler(handler)
    logger.setLevel(logging.INFO)
    logger.propagate = False
    yield logger, records
    logger.removeHandler(handler)


def test_key_value_lines_quote_what_needs_quoting(captured):
    logger, records = captured
    log_event(logger, logging.WARNING, "callout", code="SNACKS_SHORT", count=3,
              message='3 snacks short: "Choco" and 2 more', ok=True, missing=None)
    line = KeyValueFormatter().format(records[-1])
    assert " level=WARNING " in line and " logger=preassign.test-logs " in line
    assert " event=callout code=SNACKS_SHORT count=3 " in line
    assert 'message="3 snacks short: \\"Choco\\" and 2 more"' in line
    assert line.endswith("ok=true missing=null")
    assert "\n" not in line


def test_json_lines_keep_the_types(captured):
    logger, records = captured
    log_event(logger, logging.INFO, "stage_done", stage="scan", seconds=1.25, rows=10,
              flag=False)
    payload = json.loads(JsonFormatter().format(records[-1]))
    assert payload["event"] == "stage_done" and payload["level"] == "INFO"
    assert payload["seconds"] == 1.25 and payload["rows"] == 10 and payload["flag"] is False
    assert payload["ts"].endswith("Z")


def test_plain_messages_without_an_event_are_kept(captured):
    logger, records = captured
    logger.info("Started a LocalCluster at %s", "tcp://127.0.0.1:1")
    assert 'message="Started a LocalCluster at tcp://127.0.0.1:1"' in \
        KeyValueFormatter().format(records[-1])
    assert json.loads(JsonFormatter().format(records[-1]))["message"].startswith("Started")


def test_an_event_reads_well_through_any_other_handler(captured):
    logger, records = captured
    log_event(logger, logging.WARNING, "callout", code="STOCK_ROW_MISSING", count=2)
    assert records[-1].getMessage() == "callout code=STOCK_ROW_MISSING count=2"


def test_run_ids_sort_by_time_and_differ():
    a, b = new_run_id(), new_run_id()
    assert a != b and len(a) == len(b)
    assert a[:8].isdigit() and a[8] == "T"


def test_every_line_carries_the_bound_run_id(captured):
    from preassign.logs import bind_run_id

    logger, records = captured
    run_id = new_run_id()
    bind_run_id(run_id)
    try:
        log_event(logger, logging.INFO, "run_start", lake="data/lake")
        logger.info("a message from a library")
    finally:
        bind_run_id(None)
    assert all(f" run_id={run_id} " in KeyValueFormatter().format(r) for r in records[-2:])
    assert all(json.loads(JsonFormatter().format(r))["run_id"] == run_id for r in records[-2:])
