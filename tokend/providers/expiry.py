"""Making sense of the expiry an upstream reports.

Providers report expiry as absolute Unix seconds, but real APIs get it wrong in the ways handled here.
Each correction comes back with a note, which the manager logs once per provider.
"""

from __future__ import annotations

import base64
import binascii
import json
import math
from datetime import datetime
from typing import Any

# Below this an "absolute" expiry is before 2001: it must be a lifetime in seconds, not a timestamp.
_RELATIVE_BELOW = 1e9
# Above this (year 5138 in seconds) it can only be milliseconds.
_MILLISECONDS_ABOVE = 1e11
# An expiry already past is clock skew between us and the provider; the token is given this long, which
# keeps it served briefly and renews it soon, without ever turning into a login loop.
SKEWED_LIFETIME = 60.0
# A lifetime shorter than this could not be served (a token is withdrawn a second before its expiry) and
# would be renewed at once, again and again: it is treated like one already past.
MIN_SERVABLE_LIFETIME = 2.0


def resolve_expiry(
    reported: float | None,
    token: str,
    *,
    now: float,
    default_lifetime: float,
    max_lifetime: float,
    exact: bool = False,
) -> tuple[float, str | None]:
    """Return (expires_at, note): a usable absolute expiry, and what was corrected to get it, if anything.

    `exact`: the unit is known (an ISO 8601 date, a lifetime, milliseconds already divided), so the
    guesses about milliseconds and lifetimes are not made."""
    note = None
    if reported is not None and math.isnan(reported):
        reported, note = None, "expiry is not a number"
    if reported is None:
        claimed = jwt_expiry(token)
        if claimed is None:
            return _capped(now + default_lifetime, now, max_lifetime, "no expiry given; default_lifetime used")
        reported, note = claimed, "no expiry given; the token's JWT exp claim used"
    if math.isinf(reported):
        if reported < 0:
            return _past(now, max_lifetime)
        return now + max_lifetime, "expiry is infinitely far away; capped at max_lifetime"
    if not exact and reported > _MILLISECONDS_ABOVE:
        reported, note = reported / 1000, "expiry given in milliseconds; divided by 1000"
    elif not exact and reported < _RELATIVE_BELOW:
        reported, note = now + reported, "expiry given as a lifetime in seconds, not a timestamp"
    if reported - now < MIN_SERVABLE_LIFETIME:
        # The token may say better: a JWT's own exp (FinTech Studios' tokens are JWTs) beats a guess.
        claimed = jwt_expiry(token)
        if claimed is not None and math.isfinite(claimed) and claimed - now >= MIN_SERVABLE_LIFETIME:
            return _capped(claimed, now, max_lifetime, "expiry given is past; the token's JWT exp claim used")
        return _past(now, max_lifetime)
    return _capped(reported, now, max_lifetime, note)


def _past(now: float, max_lifetime: float) -> tuple[float, str]:
    return (now + min(SKEWED_LIFETIME, max_lifetime),
            "expiry already past or too close to serve (clock skew?); short lifetime used")


def _capped(expires_at: float, now: float, max_lifetime: float, note: str | None) -> tuple[float, str | None]:
    if expires_at - now > max_lifetime:
        return now + max_lifetime, "expiry too far away; capped at max_lifetime"
    return expires_at, note


def jwt_expiry(token: str) -> float | None:
    """The `exp` claim of a JWT, unverified (we only want to know when to renew it), or None."""
    parts = token.split(".")
    if len(parts) != 3:
        return None
    payload = parts[1] + "=" * (-len(parts[1]) % 4)
    try:
        claims = json.loads(base64.urlsafe_b64decode(payload))
    except (binascii.Error, ValueError):
        return None
    except RecursionError:
        return None
    exp = claims.get("exp") if isinstance(claims, dict) else None
    if not isinstance(exp, int | float) or isinstance(exp, bool):
        return None
    try:
        value = float(exp)
    except OverflowError:  # an integer of hundreds of digits
        return math.inf
    return None if math.isnan(value) else value


def iso_expiry(value: Any) -> float | None:
    """An expiry written as an ISO 8601 time with its offset (`2026-01-01T00:00:00Z`), as Unix seconds; None
    for anything else, a time without an offset included (whose clock it is on cannot be known)."""
    if not isinstance(value, str):
        return None
    try:
        when = datetime.fromisoformat(value)
    except ValueError:
        return None
    return when.timestamp() if when.tzinfo is not None else None
