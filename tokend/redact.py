"""Keeping secrets and tokens out of every string tokend writes: logs, error bodies, /status, the CLI.

Three rules. A secret is masked in every form tokend itself sends it in (as is, JSON-escaped, form- and
URL-encoded, HTML-escaped, base64 as in `Authorization: Basic`), because an upstream that echoes a request
echoes it in the form it was sent. Text that comes from upstream is untrusted wherever it surfaces:
`untrusted()` scrubs it, cuts it short and escapes control characters, so it can neither forge a log line
nor grow an answer without bound. And a value shorter than SHORT_VALUE characters is masked only where it
stands alone (not inside a longer word): a one-letter secret masked everywhere would turn every message into
`Inv***lid em***il` while hiding nothing (`tokend check` warns about such a secret: no real one is that short).
"""

from __future__ import annotations

import base64
import html
import json
import logging
import re
from collections.abc import Iterable
from urllib.parse import quote, quote_plus

MASK = "***"
# Upstream error bodies are cut to this before anything else: they can be pages of HTML.
EXCERPT_LENGTH = 200
# Request ids and other short fields from upstream.
SHORT_FIELD_LENGTH = 100
# Values shorter than this are masked as whole words only (see above). Eight characters: shorter than any
# generated key or token, longer than the words that would otherwise be cut up.
SHORT_VALUE = 8


def encodings(value: str) -> set[str]:
    """`value` in each form a request may carry it: as is, JSON-escaped, URL- and form-encoded, HTML-escaped."""
    forms = {value, json.dumps(value)[1:-1], json.dumps(value, ensure_ascii=False)[1:-1], quote(value, safe=""),
             quote_plus(value), html.escape(value), html.escape(value, quote=False)}
    return {form for form in forms if form}


def basic_credentials(user: str, password: str) -> str:
    """The base64 text of `Authorization: Basic` for a pair, so the redactor can mask it when echoed."""
    return base64.b64encode(f"{user}:{password}".encode()).decode()


class Redactor:
    """Replaces every known secret and live token with *** in a piece of text."""

    def __init__(self, secrets: Iterable[str] = ()) -> None:
        self._secrets: set[str] = {form for s in secrets if s for form in encodings(s)}
        self._tokens: dict[str, tuple[str, ...]] = {}
        self._ordered: list[str] = []
        self._words: re.Pattern[str] | None = None
        self._rebuild()

    def add_secrets(self, secrets: Iterable[str]) -> None:
        self._secrets |= {form for s in secrets if s for form in encodings(s)}
        self._rebuild()

    def set_tokens(self, owner: str, tokens: Iterable[str]) -> None:
        """Remember `owner`'s live tokens (the current one and the one before it)."""
        self._tokens[owner] = tuple(form for t in tokens if t for form in encodings(t))
        self._rebuild()

    def _rebuild(self) -> None:
        values = self._secrets.union(*self._tokens.values())
        # Longest first, so a secret that contains another is masked whole.
        ordered = sorted(values, key=len, reverse=True)
        self._ordered = [value for value in ordered if len(value) >= SHORT_VALUE]
        short = [re.escape(value) for value in ordered if len(value) < SHORT_VALUE]
        self._words = re.compile(rf"(?<!\w)(?:{'|'.join(short)})(?!\w)") if short else None

    def scrub(self, text: str) -> str:
        for value in self._ordered:
            if value in text:
                text = text.replace(value, MASK)
        if self._words is not None:
            text = self._words.sub(MASK, text)
        return text


def excerpt(text: str, redactor: Redactor | None = None) -> str:
    """A short, single-line, scrubbed piece of an upstream body, fit for a log line or an error message."""
    return untrusted(text, redactor, EXCERPT_LENGTH)


def untrusted(text: str, redactor: Redactor | None = None, limit: int = EXCERPT_LENGTH) -> str:
    """Text from upstream made safe to show: scrubbed (before cutting, so no secret is cut in half and
    missed), runs of whitespace made one space, control characters and lone surrogates escaped, and cut
    to `limit` characters."""
    text = text[: limit * 8]  # bound the work; what is cut here would be cut below anyway
    if redactor is not None:
        text = redactor.scrub(text)
    text = " ".join(text.split())
    text = "".join(_escaped(char) for char in text)
    return text if len(text) <= limit else text[: limit - 1] + "…"


def _escaped(char: str) -> str:
    code = ord(char)
    if code < 0x20 or 0x7F <= code < 0xA0 or 0xD800 <= code < 0xE000 or code in (0x2028, 0x2029):
        return f"\\x{code:02x}" if code < 0x100 else f"\\u{code:04x}"
    return char


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
