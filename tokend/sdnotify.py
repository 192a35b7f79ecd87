"""systemd's sd_notify protocol: readiness, status, stopping and watchdog pings over $NOTIFY_SOCKET.

With `Type=notify`, systemd passes the path of a datagram socket in $NOTIFY_SOCKET (a file path, or an
abstract socket name starting with "@") and waits for `READY=1` before it counts the service as started.
With `WatchdogSec=`, it also sets $WATCHDOG_USEC and restarts the service when `WATCHDOG=1` does not come
that often. Outside systemd none of these variables is set, and every method here does nothing.

Standard library only, and nothing happens at import: a Notifier reads the environment when it is made.
"""

from __future__ import annotations

import logging
import os
import socket
import time
from collections.abc import Callable, Mapping

__all__ = ["Notifier", "StatusLine", "describe"]

log = logging.getLogger("tokend")

# systemd drains its notification queue at once; a send that cannot finish in this long is not worth
# holding the event loop for (the message is dropped and logged).
_SEND_TIMEOUT = 1.0


class Notifier:
    """Sends sd_notify messages to `address`; a no-op when `address` is None."""

    def __init__(
        self, address: str | None = None, *, watchdog_usec: int | None = None, watchdog_pid: int | None = None
    ) -> None:
        self._address = _socket_address(address) if address else None
        self._watchdog_usec = watchdog_usec
        self._watchdog_pid = watchdog_pid

    @classmethod
    def from_environment(cls, environ: Mapping[str, str] | None = None) -> Notifier:
        """The notifier systemd asks for through $NOTIFY_SOCKET, $WATCHDOG_USEC and $WATCHDOG_PID."""
        env = os.environ if environ is None else environ
        return cls(
            env.get("NOTIFY_SOCKET") or None,
            watchdog_usec=_positive_int(env, "WATCHDOG_USEC"),
            watchdog_pid=_positive_int(env, "WATCHDOG_PID"),
        )

    @property
    def enabled(self) -> bool:
        return self._address is not None

    def ready(self, status: str = "") -> None:
        """The service is up: systemd ends `systemctl start` and starts the units ordered after it."""
        self._send("READY=1" + (f"\nSTATUS={_one_line(status)}" if status else ""))

    def stopping(self) -> None:
        self._send("STOPPING=1")

    def status(self, text: str) -> None:
        """A line for `systemctl status` to show."""
        self._send(f"STATUS={_one_line(text)}")

    def watchdog(self) -> None:
        self._send("WATCHDOG=1")

    def watchdog_interval(self) -> float | None:
        """WatchdogSec in seconds (from $WATCHDOG_USEC), or None when no watchdog is asked of this process.

        systemd's advice is to ping at half of it. $WATCHDOG_PID, when set, names the process the watchdog
        is meant for: a child that inherited the environment must not take it for its own.
        """
        if self._address is None or self._watchdog_usec is None:
            return None
        if self._watchdog_pid is not None and self._watchdog_pid != os.getpid():
            return None
        return self._watchdog_usec / 1_000_000

    def _send(self, message: str) -> None:
        if self._address is None:
            return
        try:
            with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as sock:
                sock.settimeout(_SEND_TIMEOUT)
                sock.sendto(message.encode(), self._address)
        except OSError as exc:
            # Notifications are advice to the service manager: failing to send one must never stop tokend.
            log.debug("sd_notify: cannot send %r to $NOTIFY_SOCKET: %s", message.split("\n", 1)[0], exc)


class StatusLine:
    """Keeps the line `systemctl status` shows in step with a text that changes (the providers' states).

    `render` says what the line should be now; refresh() sends it when it differs from the last line
    sent, but never more often than once per `min_interval` seconds: a provider that flaps must not
    flood systemd. A change held back that way goes out at the first refresh() after the interval.
    """

    def __init__(
        self,
        notifier: Notifier,
        render: Callable[[], str],
        *,
        min_interval: float = 5.0,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._notifier = notifier
        self._render = render
        self._min_interval = min_interval
        self._clock = clock
        self._sent: str | None = None
        self._sent_at = float("-inf")

    def current(self) -> str:
        """The line as it is now, counted as sent (for a caller that sends it itself, with READY=1)."""
        self._sent, self._sent_at = self._render(), self._clock()
        return self._sent

    def refresh(self) -> None:
        text = self._render()
        if text == self._sent or self._clock() - self._sent_at < self._min_interval:
            return
        self._notifier.status(text)
        self._sent, self._sent_at = text, self._clock()

    async def refresh_async(self) -> None:
        """refresh() as a job for an asyncio scheduler."""
        self.refresh()


# Beyond this many providers the line gives counts, and names only the ones that are not ok.
_LISTED = 8


def describe(where: str, states: Mapping[str, str]) -> str:
    """The status line: where tokend serves and each provider's state ("felloh ok, fts failed")."""
    head = f"serving {len(states)} provider(s) on {where}"
    if not states:
        return head
    if len(states) <= _LISTED:
        return f"{head}: " + ", ".join(f"{name} {state}" for name, state in states.items())
    counts: dict[str, int] = {}
    for state in states.values():
        counts[state] = counts.get(state, 0) + 1
    summary = ", ".join(f"{count} {state}" for state, count in sorted(counts.items()))
    troubled = [name for name, state in states.items() if state != "ok"]
    shown = ", ".join(troubled[:_LISTED]) + (", ..." if len(troubled) > _LISTED else "")
    return f"{head}: {summary}" + (f" (not ok: {shown})" if troubled else "")


def _socket_address(address: str) -> str | None:
    if address.startswith("@"):
        return "\0" + address[1:]  # Linux's abstract namespace: no file, the name starts with a NUL byte
    if address.startswith("/"):
        return address
    # Newer systemd may pass other transports (vsock:...); they are for VMs, not for tokend.
    log.debug("sd_notify: unsupported $NOTIFY_SOCKET %r; notifications are off", address)
    return None


def _positive_int(env: Mapping[str, str], name: str) -> int | None:
    raw = env.get(name)
    if not raw:
        return None
    value = int(raw) if raw.isascii() and raw.isdigit() else 0
    if value <= 0:
        log.debug("sd_notify: ignoring $%s=%r, not a positive integer", name, raw)
        return None
    return value


def _one_line(text: str) -> str:
    # A newline would start a new assignment in the message, letting the text set other fields.
    return " ".join(text.splitlines())
