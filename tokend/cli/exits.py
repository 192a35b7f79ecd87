"""What the command line answers with: its exit codes (and what `tokend --help` says of each), the error a
usable-looking command line raises when it cannot be used, and the one way it writes to stderr."""

from __future__ import annotations

import enum
import sys

__all__ = ["EXIT_MEANINGS", "Exit", "UsageError", "err"]


class Exit(enum.IntEnum):
    OK = 0
    FAILURE = 1  # anything else: the daemon failed to start, answered something unexpected
    USAGE = 2  # argparse's own code for a bad command line
    CONFIG = 3  # the config file is unusable
    UNREACHABLE = 4  # the daemon is not running, or not where the config says
    UNAVAILABLE = 5  # the daemon runs but has no token to give, or a forced refresh failed
    UNKNOWN_PROVIDER = 6
    DENIED = 7  # the daemon refused the request: a missing, unknown or out-of-scope client key
    THROTTLED = 8  # a forced refresh made no login now (Retry-After, refused credentials, a refused new token)


# What `tokend --help` says of each exit code, so that a script's author need not read the source.
EXIT_MEANINGS = {
    Exit.OK: "ok",
    Exit.FAILURE: "anything else (the daemon failed to start, or answered something unexpected)",
    Exit.USAGE: "bad command line",
    Exit.CONFIG: "bad config file",
    Exit.UNREACHABLE: "daemon not reachable (not running, or not at that address)",
    Exit.UNAVAILABLE: "no token available, or a forced refresh failed",
    Exit.UNKNOWN_PROVIDER: "unknown provider",
    Exit.DENIED: "refused (no client key, an unknown one, or one not allowed that provider)",
    Exit.THROTTLED: "refresh throttled: no login was attempted now (the message says why and when to retry)",
}


class UsageError(Exception):
    """A command line that parses but cannot be used (a --url that is no daemon's)."""


def err(line: str) -> None:
    print(line, file=sys.stderr)
