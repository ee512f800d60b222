"""Structured log lines for scheduled runs: ``key=value`` or JSON, a ``run_id`` on every line.

Our own records are events: :func:`log_event` logs an event name with typed fields
(``log_event(log, "stage_done", stage="scan", seconds=1.234)``). Every other record (Dask's,
fsspec's) is rendered with its message. Two renderers share one filter that stamps each
record with the run's id (a :mod:`contextvars` variable, bound once by :func:`bind_run_id`):

* :class:`KeyValueFormatter` - ``2026-12-02T02:15:03Z level=INFO logger=preassign
  run_id=20261202T021500Z-1a2b3c4d event=stage_done stage=scan seconds=1.234``; a value with
  spaces, quotes or ``=`` is double-quoted (quotes inside escaped);
* :class:`JsonFormatter` - one JSON object per line, values typed (numbers stay numbers).
"""

from __future__ import annotations

import contextvars
import datetime as dt
import json
import logging
import re
import uuid
from typing import Any

__all__ = ["JsonFormatter", "KeyValueFormatter", "RunIdFilter", "bind_run_id", "log_event",
           "new_run_id"]

_RUN_ID: contextvars.ContextVar[str | None] = contextvars.ContextVar("preassign_run_id",
                                                                      default=None)
_PLAIN = re.compile(r"^[A-Za-z0-9_.:/@+,\-]+$")


def new_run_id() -> str:
    """A run id: UTC time to the second and 8 random hex digits (sorts by time).

    Examples:
        >>> len(new_run_id())
        25
    """
    return dt.datetime.now(dt.timezone.utc).strftime("%Y%m%dT%H%M%SZ") + "-" + \
        uuid.uuid4().hex[:8]


def bind_run_id(run_id: str | None) -> None:
    """Stamp every following log record of this context with ``run_id``."""
    _RUN_ID.set(run_id)


def log_event(logger: logging.Logger, level: int, event: str, **fields: Any) -> None:
    """Log ``event`` with typed ``fields`` (rendered by the formatters as key=value or JSON).

    The record's plain message is ``event key=value ...`` too, so a handler without these
    formatters (a notebook's, Python's last resort) still shows what happened.
    """
    if logger.isEnabledFor(level):
        text = " ".join([event] + [f"{k}={_quote(v)}" for k, v in fields.items()])
        logger.log(level, "%s", text, extra={"event": event, "fields": fields})


class RunIdFilter(logging.Filter):
    """Add ``run_id`` (the bound one) to every record."""

    def filter(self, record: logging.LogRecord) -> bool:
        """Stamp the record; never drop it."""
        record.run_id = _RUN_ID.get()
        return True


def _quote(value: Any) -> str:
    text = json.dumps(value) if isinstance(value, (dict, list, bool)) or value is None \
        else str(value)
    if text and _PLAIN.match(text):
        return text
    return '"' + text.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n") + '"'


def _fields(record: logging.LogRecord) -> tuple[str | None, dict[str, Any]]:
    event = getattr(record, "event", None)
    fields = dict(getattr(record, "fields", {}) or {})
    return event, fields


def _timestamp(record: logging.LogRecord) -> str:
    return dt.datetime.fromtimestamp(record.created, dt.timezone.utc).strftime(
        "%Y-%m-%dT%H:%M:%S.") + f"{int(record.msecs):03d}Z"


class KeyValueFormatter(logging.Formatter):
    """``ts level=... logger=... run_id=... event=... key=value ...`` (values quoted)."""

    def format(self, record: logging.LogRecord) -> str:
        """Render one record on one line (a traceback, if any, follows it)."""
        event, fields = _fields(record)
        parts = [_timestamp(record), f"level={record.levelname}", f"logger={record.name}"]
        run_id = getattr(record, "run_id", None)
        if run_id:
            parts.append(f"run_id={run_id}")
        if event:
            parts.append(f"event={_quote(event)}")
            parts += [f"{k}={_quote(v)}" for k, v in fields.items()]
        else:
            parts.append(f"message={_quote(record.getMessage())}")
        line = " ".join(parts)
        if record.exc_info:
            line += "\n" + self.formatException(record.exc_info)
        return line


class JsonFormatter(logging.Formatter):
    """One JSON object per record.

    Keys: ``ts``, ``level``, ``logger``, ``run_id``, ``event`` and the event's fields
    (typed), or ``message``.
    """

    def format(self, record: logging.LogRecord) -> str:
        """Render one record as a JSON line."""
        event, fields = _fields(record)
        payload: dict[str, Any] = {"ts": _timestamp(record), "level": record.levelname,
                                   "logger": record.name,
                                   "run_id": getattr(record, "run_id", None)}
        if event:
            payload["event"] = event
            payload.update(fields)
        else:
            payload["message"] = record.getMessage()
        if record.exc_info:
            payload["traceback"] = self.formatException(record.exc_info)
        return json.dumps(payload, default=str)
