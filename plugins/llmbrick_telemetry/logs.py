"""JSON log lines (``--log-format json``): one object per line, for log collectors to index.

The runtime logs each stream's start and end with its fields in
``extra={"llmbrick": {...}}`` (stream id, flow, transport, request id,
principal, and at the end outcome, events, duration). :class:`JsonFormatter`
puts those fields at the top level of the line, next to the time, level,
logger and message, so a collector can filter on ``flow`` or ``outcome``
without parsing the message.

It adds nothing else from the record: not the other ``extra`` attributes, not
the message's arguments apart from the formatted message. The runtime never
logs a prompt or a key, and the formatter keeps it that way.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Mapping
from datetime import UTC, datetime
from typing import Any

__all__ = ["RESERVED_KEYS", "JsonFormatter"]

#: The keys every line has (``exception`` and ``stack`` when there is one); a field of
#: the ``llmbrick`` extra with one of these names is dropped rather than overwrite it.
RESERVED_KEYS = frozenset({"time", "level", "logger", "message", "exception", "stack"})

# A field's value goes in only as a JSON scalar: a nested object from some other caller's
# ``extra={"llmbrick": ...}`` could carry anything, a request included.
_SCALARS = (str, int, float, bool, type(None))


class JsonFormatter(logging.Formatter):
    """Formats each record as one JSON object on one line.

    Keys: ``time`` (ISO 8601, UTC, milliseconds), ``level``, ``logger``,
    ``message``, then each field of the record's ``llmbrick`` extra whose value
    is a string, number, boolean or null (``stream_id``, ``flow``,
    ``transport``, ``request_id``, ``principal``, ``outcome``, ``events``,
    ``duration_ms`` on the runtime's lines), then ``exception`` (the formatted
    traceback, as one string) and ``stack`` when the record has them.

    Non-ASCII text is written as is (UTF-8), and a line never contains a raw
    newline: JSON escapes those inside strings.

    Example::

        handler = logging.StreamHandler()
        handler.setFormatter(JsonFormatter())
        logging.getLogger().addHandler(handler)
    """

    def format(self, record: logging.LogRecord) -> str:
        """The record as one line of JSON."""
        line: dict[str, Any] = {
            "time": datetime.fromtimestamp(record.created, UTC).isoformat(timespec="milliseconds"),
            "level": record.levelname,
            "logger": record.name,
            "message": record.getMessage(),
        }
        fields = getattr(record, "llmbrick", None)
        if isinstance(fields, Mapping):
            for key, value in fields.items():
                if (
                    key not in RESERVED_KEYS
                    and isinstance(key, str)
                    and isinstance(value, _SCALARS)
                ):
                    line[key] = value
        if record.exc_info and not record.exc_text:
            # Cached on the record as the stdlib formatter does, so other handlers reuse it.
            record.exc_text = self.formatException(record.exc_info)
        if record.exc_text:
            line["exception"] = record.exc_text
        if record.stack_info:
            line["stack"] = self.formatStack(record.stack_info)
        return json.dumps(line, ensure_ascii=False)
