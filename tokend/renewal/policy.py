"""When to log in: renewal before expiry, and retries after a failure. Pure functions of time."""

from __future__ import annotations

import random

# Renew at two thirds of the lifetime: a third is left to ride out a provider outage on the old token.
RENEW_AT = 2 / 3
# ± this share of the lifetime, so that a fleet of daemons started together does not log in together.
RENEW_JITTER = 0.1
# The latest a renewal may start, as a share of the lifetime, leaving time for retries...
RENEW_LATEST = 0.85
# ...and at least this many seconds before expiry, so that a short-lived token is replaced before it
# comes within credential.SERVE_MARGIN of expiry and stops being served.
RENEW_BEFORE_EXPIRY = 2.0
RENEW_FLOOR = 0.5  # a provider handing out one-second tokens still gets no more than two logins a second
# The first renewal after a provider's first login is drawn from this wider window: at a start (or a reload)
# every provider logged in at once, and ±10 % would bunch their renewals into a fifth of the lifetime.
FIRST_RENEW_WINDOW = (0.35, 0.77)

RETRY_FLOOR = 0.5  # never retry sooner: a login loop is what providers disable accounts for
RETRY_BASE = 1.0
RETRY_CAP = 300.0
# Rejected credentials need a person; retrying them fast only looks like an attack to the provider.
REJECTED_RETRY = 60.0


def renewal_delay(
    lifetime: float, rng: random.Random, *, first: bool = False, before: float | None = None
) -> float:
    """Seconds from now until a token that lives `lifetime` seconds from now should be renewed.

    `first`: the token is the provider's first since tokend started (or reloaded it). `before`: the kind's
    own latest renewal, in seconds before expiry (default RENEW_BEFORE_EXPIRY).
    """
    share = rng.uniform(*FIRST_RENEW_WINDOW) if first else RENEW_AT + rng.uniform(-RENEW_JITTER, RENEW_JITTER)
    latest = min(RENEW_LATEST * lifetime, lifetime - renew_margin(before, lifetime))
    return max(RENEW_FLOOR, min(share * lifetime, latest))


def renew_margin(before: float | None, lifetime: float) -> float:
    """Seconds before expiry by which a token that lives `lifetime` seconds must be renewed: the kind's own
    margin `before` (AWS: 20 minutes), else RENEW_BEFORE_EXPIRY. A token held for less than that margin is
    never served or adopted. The kind's margin holds for the lifetimes it is meant for; a token born far
    shorter (a skewed clock, a test upstream) falls back to the default rather than into a login loop."""
    return before if before is not None and before <= 0.75 * lifetime else RENEW_BEFORE_EXPIRY


def retry_delay(
    failures: int,
    rng: random.Random,
    *,
    retryable: bool,
    retry_after: float | None = None,
    time_left: float | None = None,
    cap: float = RETRY_CAP,
) -> float:
    """Seconds until the next try after `failures` consecutive failures (1 for the first).

    Exponential backoff with full jitter, at least what the provider asked for with Retry-After, and
    bounded so that, while a valid token remains, a retry still comes before it expires.
    """
    if retryable:
        delay = rng.uniform(0, min(cap, RETRY_BASE * 2 ** min(failures, 32)))
    else:
        delay = min(cap, REJECTED_RETRY * 2 ** min(failures - 1, 16))
    if retry_after is not None:
        delay = max(delay, min(retry_after, cap))
    if time_left is not None and time_left > 0:
        # Refused credentials are still never retried sooner than REJECTED_RETRY: squeezing retries
        # in before expiry would turn into a burst of refused logins, which is what locks accounts.
        delay = min(delay, time_left / 2 if retryable else max(time_left / 2, REJECTED_RETRY))
    return max(RETRY_FLOOR, delay)

# A stale token makes a GET start a login at most this often: enough to bridge a late renewal, too
# little to hammer a provider whose tokens are born nearly expired.
STALE_LOGIN_GAP = 1.0

# A stop waits for a login in flight this much longer than the provider's own timeout (its bound).
FINISH_GRACE = 2.0
