"""`tokend status --watch`: every provider's state, time left and next renewal, kept up to date.

On a terminal the view is redrawn in place once a second; piped into a file or another program it is
plain lines, a block each time something other than the countdowns changes, so a log stays readable.
"""

from __future__ import annotations

import sys
import time

TYPE_CHECKING = False
if TYPE_CHECKING:
    from typing import Any, TextIO

    from tokend.api.client import Client

__all__ = ["until", "watch"]

_HOME_AND_CLEAR = "\x1b[H\x1b[2J"


def watch(client: Client, *, interval: float = 1.0, out: TextIO | None = None, rounds: int | None = None) -> int:
    """Show the daemon's /status until interrupted (or for `rounds` refreshes); 0, or the failing reply's
    status for the caller to report."""
    out = out or sys.stdout
    tty = out.isatty()
    shown: list[tuple[str, ...]] | None = None
    count = 0
    while rounds is None or count < rounds:
        count += 1
        reply = client.request("GET", "/status")
        if reply.status != 200:
            return reply.status
        rows = _rows(reply.json(), time.time())
        if tty:
            out.write(_HOME_AND_CLEAR + _table(rows) + f"\n{time.strftime('%H:%M:%S')}  Ctrl-C to stop\n")
        elif shown is None or [row[:3] for row in rows] != [row[:3] for row in shown]:
            out.write(f"-- {time.strftime('%Y-%m-%dT%H:%M:%S%z')}\n{_table(rows)}\n")
        shown = rows
        out.flush()
        if rounds is None or count < rounds:
            time.sleep(interval)
    return 0


def _rows(data: dict[str, Any], now: float) -> list[tuple[str, ...]]:
    rows: list[tuple[str, ...]] = []
    for name, provider in data["providers"].items():
        left = provider["expires_in"]
        rows.append((name, provider["state"], provider.get("source") or "-",
                     "never" if left is None and provider["state"] == "ok" else ("-" if left is None else f"{left}s"),
                     until(provider["next_refresh"], now)))
    return rows


def until(iso: str | None, now: float) -> str:
    """A time from /status as the wait left until it: `in 7s` (`-` for none). `tokend status` says it alike."""
    if iso is None:
        return "-"
    from datetime import datetime

    seconds = datetime.fromisoformat(iso.replace("Z", "+00:00")).timestamp() - now
    return f"in {max(0, round(seconds))}s"


def _table(rows: list[tuple[str, ...]]) -> str:
    header = ("PROVIDER", "STATE", "SOURCE", "EXPIRES IN", "NEXT REFRESH")
    widths = [max(len(row[i]) for row in [header, *rows]) for i in range(len(header))]
    return "\n".join("  ".join(cell.ljust(width) for cell, width in zip(row, widths, strict=True)).rstrip()
                     for row in [header, *rows])
