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

__all__ = ["duration", "status_rows", "table", "until", "watch"]

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
        rows = status_rows(reply.json(), time.time())
        if tty:
            out.write(_HOME_AND_CLEAR + table(rows) + f"\n{time.strftime('%H:%M:%S')}  Ctrl-C to stop\n")
        elif shown is None or _steady(rows) != _steady(shown):
            out.write(f"-- {time.strftime('%Y-%m-%dT%H:%M:%S%z')}\n{table(rows)}\n")
        shown = rows
        out.flush()
        if rounds is None or count < rounds:
            time.sleep(interval)
    return 0


def _steady(rows: list[tuple[str, ...]]) -> list[tuple[str, ...]]:
    """What a piped view prints a new block for: not the countdowns, nor an error's growing age."""
    return [(*row[:4], row[6].rpartition(" (")[0] or row[6]) for row in rows]


def status_rows(data: dict[str, Any], now: float) -> list[tuple[str, ...]]:
    """/status as `tokend status` shows it, with and without --watch: one row per provider."""
    rows: list[tuple[str, ...]] = []
    for name, provider in data["providers"].items():
        left = provider["expires_in"]
        expires = "never" if left is None and provider["state"] == "ok" else ("-" if left is None else duration(left))
        rows.append((name, provider["kind"], provider["state"], provider.get("source") or "-", expires,
                     until(provider["next_refresh"], now), _last_error(provider, now)))
    return rows


def duration(seconds: float) -> str:
    """Seconds as people read a wait: `42s`, `57m`, `2h3m`, `3d4h` (the two largest units)."""
    seconds = max(0, round(seconds))
    if seconds < 60:
        return f"{seconds}s"
    if seconds < 3600:
        return f"{seconds // 60}m"
    big, small, unit, next_unit = (3600, 60, "h", "m") if seconds < 86400 else (86400, 3600, "d", "h")
    rest = (seconds % big) // small
    return f"{seconds // big}{unit}{rest}{next_unit}" if rest else f"{seconds // big}{unit}"


def until(iso: str | None, now: float) -> str:
    """A time from /status as the wait left until it: `in 7s`, `in 2h3m` (`-` for none)."""
    if iso is None:
        return "-"
    return f"in {duration(_seconds(iso) - now)}"


def _seconds(iso: str) -> float:
    from datetime import datetime

    return datetime.fromisoformat(iso.replace("Z", "+00:00")).timestamp()


def _last_error(provider: dict[str, Any], now: float) -> str:
    """The last login error while no login has succeeded since, with how long ago; a sign-in it needs."""
    if provider.get("sign_in"):  # a user token that only its user can renew now
        return _sign_in_hint(provider["sign_in"], provider.get("sign_in_reason"))
    error = provider["last_error"]
    if not error or error.get("since_last_success") is False:  # a later login succeeded: nothing is wrong now
        return "-"
    return f"{error['message']} ({duration(now - _seconds(error['at']))} ago)" if error.get("at") else error["message"]


def _sign_in_hint(command: str, reason: str | None) -> str:
    what = "sign-in needed"
    if reason == "refresh_token_spent":  # not sent again: a second use would revoke the user's whole sign-in
        what = "sign-in needed (its refresh token may already have been spent)"
    if not command.startswith("tokend"):
        return f"{what}: {command}"
    return f"{what}: run `{command}`" + (" or put a new refresh_token in the config" if reason ==
                                         "refresh_token_spent" else "")


def table(rows: list[tuple[str, ...]]) -> str:
    header = ("PROVIDER", "KIND", "STATE", "SOURCE", "EXPIRES IN", "NEXT REFRESH", "LAST ERROR")
    widths = [max(len(row[i]) for row in [header, *rows]) for i in range(len(header))]
    return "\n".join("  ".join(cell.ljust(width) for cell, width in zip(row, widths, strict=True)).rstrip()
                     for row in [header, *rows])
