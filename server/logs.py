"""Structured logs: one JSON object per line on stderr, so they can be grepped and shipped as is."""

from __future__ import annotations

import json
import logging
import sys
from typing import Any

log = logging.getLogger("clipmatch.server")


class JsonFormatter(logging.Formatter):
    """Render our events as {"ts", "level", "event", **fields}, and any other logger's
    record (the library's, warnings) as event "log" with its logger and message; a
    traceback goes in "error"."""

    def format(self, record: logging.LogRecord) -> str:
        entry: dict[str, Any] = {"ts": round(record.created, 3),
                                 "level": record.levelname.lower()}
        fields = getattr(record, "fields", None)
        if fields is None:
            entry.update(event="log", logger=record.name, message=record.getMessage())
        else:
            entry.update(event=record.getMessage(), **fields)
        if record.exc_info:
            entry["error"] = self.formatException(record.exc_info)
        return json.dumps(entry, default=str, ensure_ascii=False)


def configure(level: int = logging.INFO) -> None:
    """Send every logger's records (ours, the library's, Python warnings) to stderr as JSON."""
    logging.captureWarnings(True)
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(JsonFormatter())
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level)


def event(name: str, level: int = logging.INFO, exc_info: bool = False, **fields: Any) -> None:
    """Log one event with structured fields."""
    log.log(level, name, exc_info=exc_info, extra={"fields": fields})
