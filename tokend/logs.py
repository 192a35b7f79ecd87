"""Log set-up: readable one-line records on stderr, every one scrubbed of secrets and tokens."""

from __future__ import annotations

import logging
import sys

from tokend.redact import RedactingFilter, Redactor

_FORMAT = "%(asctime)s %(levelname)-7s %(name)s: %(message)s"


def configure_logging(level: str = "info") -> logging.Handler:
    """Send every logger (ours, uvicorn's, httpx's) to stderr through one handler."""
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(logging.Formatter(_FORMAT, datefmt="%Y-%m-%dT%H:%M:%S"))
    root = logging.getLogger()
    for old in list(root.handlers):
        root.removeHandler(old)
    root.addHandler(handler)
    root.setLevel(level.upper())
    # httpx logs every request URL at INFO; the login URLs are known and the line adds nothing.
    logging.getLogger("httpx").setLevel(logging.WARNING)
    logging.getLogger("apscheduler").setLevel(logging.WARNING)
    return handler


def install_redaction(redactor: Redactor) -> None:
    """Scrub every record that reaches the root handlers, whoever logged it."""
    for handler in logging.getLogger().handlers:
        handler.addFilter(RedactingFilter(redactor))
