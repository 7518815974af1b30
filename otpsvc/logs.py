"""Log lines as JSON objects, one per line, with the audit fields of an event merged in.

The service's own lines, gunicorn's and the access log all come out in this shape on one stream
(stderr), with ``trace_id``/``span_id`` when a trace is current.
"""

from __future__ import annotations

import json
import logging
import threading
import time
from datetime import UTC, datetime

from otpsvc.requestcontext import current_request_id, trace_var


class RequestIdFilter(logging.Filter):
    """Puts the current request's id on every record (``request_id``), for the formatter."""

    def filter(self, record: logging.LogRecord) -> bool:
        request_id = current_request_id()
        if request_id and not hasattr(record, "request_id"):
            record.request_id = request_id
        return True


class JsonFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        line: dict[str, object] = {
            "ts": datetime.fromtimestamp(record.created, UTC).isoformat(timespec="milliseconds"),
            "level": record.levelname,
            "logger": record.name,
            "message": record.getMessage(),
        }
        request_id = getattr(record, "request_id", None)
        if request_id:
            line["request_id"] = request_id
        trace = trace_var.get()
        if trace is not None:
            line["trace_id"] = trace.trace_id
            line["span_id"] = trace.parent_id
        for attribute in ("audit", "fields"):
            fields = getattr(record, attribute, None)
            if isinstance(fields, dict):
                line.update(fields)
        if record.exc_info:
            line["exception"] = self.formatException(record.exc_info)
        return json.dumps(line, default=str)


class ReadableFormatter(logging.Formatter):
    """``otpsvc dev``'s lines: time, logger and message for a person at a terminal, then the
    audit fields as ``key=value`` (the same fields the JSON lines carry)."""

    def __init__(self) -> None:
        super().__init__("%(asctime)s %(name)s %(message)s")

    def format(self, record: logging.LogRecord) -> str:
        text = super().format(record)
        fields: dict[str, object] = {}
        for attribute in ("audit", "fields"):
            found = getattr(record, attribute, None)
            if isinstance(found, dict):
                fields.update(found)
        fields.pop("event", None)
        extra = " ".join(f"{key}={value}" for key, value in fields.items() if value is not None)
        return f"{text} {extra}" if extra else text


class Sampler:
    """At most ``per_second`` lines of one kind a second in this process: lines a stranger can
    cause (a check of an unknown id, a wrong key) must not let them fill the log."""

    def __init__(self, per_second: float = 5.0) -> None:
        self.per_second = per_second
        self._allowance: dict[str, tuple[float, float]] = {}
        self._lock = threading.Lock()

    def allow(self, kind: str) -> bool:
        now = time.monotonic()
        with self._lock:
            tokens, since = self._allowance.get(kind, (self.per_second, now))
            tokens = min(self.per_second, tokens + (now - since) * self.per_second)
            if tokens < 1:
                self._allowance[kind] = (tokens, now)
                return False
            self._allowance[kind] = (tokens - 1, now)
            return True


SAMPLER = Sampler()
