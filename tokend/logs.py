"""Log set-up: one line per record on stderr, readable text or JSON, every one scrubbed of secrets and tokens.

Times are UTC with a `Z`, to the second in text (as /status shows `expires_at`), to the millisecond in JSON.
tokend's lines read `event key=value key=value`; in JSON the `key=value` pairs become fields of their own.
"""

from __future__ import annotations

import functools
import json
import logging
import re
import sys
import time
from datetime import UTC, datetime
from typing import Literal

from tokend.redact import RedactingFilter, Redactor

LogFormat = Literal["text", "json"]

_TEXT_FORMAT = "%(asctime)s %(levelname)-7s %(name)s: %(message)s"
# uvicorn calls its general logger `uvicorn.error`; its lines are rarely errors ("Started server process").
_RENAMED = {"uvicorn.error": "uvicorn"}
# The fields JsonFormatter writes itself: a `key=value` pair of the same name stays in the message.
_RESERVED = frozenset({"time", "level", "logger", "message", "exception"})
_PLACEHOLDER = re.compile(r"%[-#0 +]*\d*(?:\.\d+)?[sdifrx]")
_LITERAL_PAIR = re.compile(r"(?:^|(?<=\s))([a-z_][a-z0-9_]*)=(\S+)")
_KEY_BEFORE = re.compile(r"(?:^|(?<=\s))([a-z_][a-z0-9_]*)=$")


class _Template(logging.Filter):
    """Keeps each record's format string before the redacting filter may render and replace it, and gives
    uvicorn's general logger a name that does not read as an error."""

    def filter(self, record: logging.LogRecord) -> bool:
        record.tokend_template = record.msg if isinstance(record.msg, str) and isinstance(record.args, tuple) else None
        record.name = _RENAMED.get(record.name, record.name)
        return True


class JsonFormatter(logging.Formatter):
    """One JSON object per line, for log collectors (Loki, Elasticsearch, CloudWatch...)."""

    def format(self, record: logging.LogRecord) -> str:
        message, fields = split_fields(record.getMessage(), getattr(record, "tokend_template", None))
        entry: dict[str, object] = {
            "time": datetime.fromtimestamp(record.created, UTC).isoformat(timespec="milliseconds").replace(
                "+00:00", "Z"),
            "level": record.levelname.lower(),
            "logger": record.name,
            "message": message,
            **fields,
        }
        if record.exc_info:
            # exc_text first: the redacting filter leaves a scrubbed rendering of the traceback there.
            entry["exception"] = record.exc_text or self.formatException(record.exc_info)
        return json.dumps(entry, ensure_ascii=False)


def split_fields(message: str, template: str | None) -> tuple[str, dict[str, str]]:
    """`login provider=fts outcome=error error=login answered 503` -> ("login", {provider, outcome, error}).

    The format string says where each value begins and ends (a value may hold spaces: an error message);
    a line without one (already rendered, or scrubbed) is split on whitespace, each value one word.
    """
    if template is not None and (pattern := _pattern(template)) is not None:
        regex, roles = pattern
        if (found := regex.fullmatch(message)) is not None:
            return _assemble(found, roles)
    fields = {key: value for key, value in _LITERAL_PAIR.findall(message) if key not in _RESERVED}
    rest = _LITERAL_PAIR.sub(lambda m: "" if m.group(1) in fields else m.group(0), message)
    return " ".join(rest.split()) or message, fields


@functools.lru_cache(maxsize=256)
def _pattern(template: str) -> tuple[re.Pattern[str], tuple[str | None, ...]] | None:
    """A regex matching what `template` renders to, and each group's role: a field's key, or None for text."""
    literals = _PLACEHOLDER.split(template.replace("%%", "\0"))
    if len(literals) == 1:
        return None
    parts: list[str] = []
    roles: list[str | None] = []
    for index, literal in enumerate(literals):
        literal = literal.replace("\0", "%")
        parts.append(f"({re.escape(literal)})")
        roles.append(None)
        if index < len(literals) - 1:
            last = index == len(literals) - 2 and not literals[-1]
            parts.append("(.*)" if last else "(.*?)")
            key = _KEY_BEFORE.search(literal)
            roles.append(key.group(1) if key and key.group(1) not in _RESERVED else None)
    return re.compile("".join(parts), re.DOTALL), tuple(roles)


def _assemble(found: re.Match[str], roles: tuple[str | None, ...]) -> tuple[str, dict[str, str]]:
    text: list[str] = []
    fields: dict[str, str] = {}
    previous: str | None = None
    for value, key in zip(found.groups(), roles, strict=True):
        if key is not None:
            fields[key] = value
            text[-1] = _KEY_BEFORE.sub("", text[-1])  # the `key=` that announced it
        else:
            if previous is not None:  # a unit written after the value (`next_attempt_in=%.1fs`) is part of it
                end = next((i for i, char in enumerate(value) if char.isspace()), len(value))
                fields[previous] += value[:end]
                value = value[end:]
            text.append(value)
        previous = key
    # Pairs written out in the format string itself (`outcome=ok`) are fields too.
    message, literal_fields = split_fields("".join(text), None)
    return message, {**literal_fields, **fields}


def configure_logging(level: str = "info", format: LogFormat = "text") -> logging.Handler:
    """Send every logger (ours, uvicorn's, httpx's) to stderr through one handler."""
    handler = logging.StreamHandler(sys.stderr)
    if format == "json":
        handler.setFormatter(JsonFormatter())
    else:
        text = logging.Formatter(_TEXT_FORMAT, datefmt="%Y-%m-%dT%H:%M:%SZ")
        text.converter = time.gmtime  # UTC, as the Z says, like every time tokend shows
        handler.setFormatter(text)
    handler.addFilter(_Template())  # before install_redaction's filter, which may drop the format string
    root = logging.getLogger()
    for old in list(root.handlers):
        root.removeHandler(old)
    root.addHandler(handler)
    root.setLevel(level.upper())
    # httpx logs every request URL at INFO; the login URLs are known and the line adds nothing.
    logging.getLogger("httpx").setLevel(logging.WARNING)
    logging.getLogger("apscheduler").setLevel(logging.WARNING)
    # uvicorn's start and stop lines ("Started server process", "Waiting for application startup") repeat
    # what tokend says itself; its warnings and errors still show.
    logging.getLogger("uvicorn.error").setLevel(logging.DEBUG if level == "debug" else logging.WARNING)
    return handler


def install_redaction(redactor: Redactor) -> None:
    """Scrub every record that reaches the root handlers, whoever logged it."""
    for handler in logging.getLogger().handlers:
        handler.addFilter(RedactingFilter(redactor))


def seconds_until(timestamp: float | None, now: float) -> str:
    """A log field's duration from `now` to `timestamp` ("12.5s"), or "-" when there is none."""
    return "-" if timestamp is None else f"{max(0.0, timestamp - now):.1f}s"
