"""Scrubbing secrets and tokens out of text and log records."""

from __future__ import annotations

import logging

from tokend.redact import RedactingFilter, Redactor, excerpt


def test_secrets_and_live_tokens_are_masked_longest_first() -> None:
    redactor = Redactor(["pass", "password123"])
    redactor.set_tokens("fts", ["tok-1", ""])
    assert redactor.scrub("password123 then pass then tok-1") == "*** then *** then ***"
    redactor.set_tokens("fts", ["tok-2", "tok-1"])
    redactor.add_secrets(["rotated-key"])
    assert redactor.scrub("tok-1 tok-2 rotated-key") == "*** *** ***"


def test_excerpts_are_single_line_short_and_scrubbed() -> None:
    redactor = Redactor(["hunter2"])
    text = excerpt("<html>\n  <body>hunter2 " + "x" * 500 + "</body>", redactor)
    assert "\n" not in text and "hunter2" not in text and len(text) == 200 and text.endswith("…")


def test_the_log_filter_scrubs_messages_arguments_and_tracebacks() -> None:
    record = logging.LogRecord("x", logging.ERROR, __file__, 1, "login with %s failed", ("hunter2",), None)
    try:
        raise ValueError("the password was hunter2")
    except ValueError:
        import sys

        record.exc_info = sys.exc_info()
    assert RedactingFilter(Redactor(["hunter2"])).filter(record)
    rendered = logging.Formatter().format(record)
    assert "hunter2" not in rendered and "login with *** failed" in rendered and "the password was ***" in rendered
