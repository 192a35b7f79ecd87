"""Keeping secrets and tokens out of every string tokend writes: logs, error bodies, /status."""

from __future__ import annotations

import logging
from collections.abc import Iterable

MASK = "***"
# Upstream error bodies are cut to this before anything else: they can be pages of HTML.
EXCERPT_LENGTH = 200


class Redactor:
    """Replaces every known secret and live token with *** in a piece of text."""

    def __init__(self, secrets: Iterable[str] = ()) -> None:
        self._secrets: set[str] = {s for s in secrets if s}
        self._tokens: dict[str, tuple[str, ...]] = {}
        self._ordered: list[str] = []
        self._rebuild()

    def add_secrets(self, secrets: Iterable[str]) -> None:
        self._secrets |= {s for s in secrets if s}
        self._rebuild()

    def set_tokens(self, owner: str, tokens: Iterable[str]) -> None:
        """Remember `owner`'s live tokens (the current one and the one before it)."""
        self._tokens[owner] = tuple(t for t in tokens if t)
        self._rebuild()

    def _rebuild(self) -> None:
        values = self._secrets.union(*self._tokens.values())
        # Longest first, so a secret that contains another is masked whole.
        self._ordered = sorted(values, key=len, reverse=True)

    def scrub(self, text: str) -> str:
        for value in self._ordered:
            if value in text:
                text = text.replace(value, MASK)
        return text


def excerpt(text: str, redactor: Redactor | None = None) -> str:
    """A short, single-line, scrubbed piece of an upstream body, fit for a log line or an error message."""
    if redactor is not None:
        text = redactor.scrub(text)
    text = " ".join(text.split())
    return text if len(text) <= EXCERPT_LENGTH else text[: EXCERPT_LENGTH - 1] + "…"


class RedactingFilter(logging.Filter):
    """Defence in depth: scrubs every log record, whatever logger wrote it (httpx, uvicorn, ours)."""

    def __init__(self, redactor: Redactor) -> None:
        super().__init__()
        self._redactor = redactor

    def filter(self, record: logging.LogRecord) -> bool:
        message = record.getMessage()
        scrubbed = self._redactor.scrub(message)
        if scrubbed != message:
            record.msg, record.args = scrubbed, None
        if record.exc_info and record.exc_info[1] is not None:
            # A traceback's text is built later, by the formatter; pre-render and scrub it here.
            formatter = logging.Formatter()
            record.exc_text = self._redactor.scrub(formatter.formatException(record.exc_info))
            record.exc_info = None
        return True
