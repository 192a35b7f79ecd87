"""Signed client requests: what a client sends instead of its key, so that the key never leaves it.

    Authorization: Tokend-HMAC client=<key id>, ts=<unix seconds>, nonce=<random>, sig=<signature>

The key id is the first 8 bytes of the SHA-256 of the key, in hex: it names the key without revealing it.
The signature is base64url (no padding) of HMAC-SHA256(key, "<METHOD>\\n<path?query>\\n<ts>\\n<nonce>").
Whoever listens on the daemon's port in its place (a local user who bound it while tokend was down) learns
no key: only a signature for one request, good for WINDOW seconds, once. The daemon refuses a signature
outside that window, or a nonce it has seen within it.

Imported by the client commands, so nothing here may be slow to import.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import re
import secrets
import time
from collections import OrderedDict
from typing import NamedTuple

__all__ = ["SCHEME", "WINDOW", "Nonces", "Signed", "authorization", "key_id", "parse", "signature"]

SCHEME = "Tokend-HMAC"
# Seconds a signature is good for, either side of the daemon's clock: client and daemon share the machine
# (and so the clock), so this only covers the time the request takes to arrive.
WINDOW = 30.0
MAX_NONCES = 100_000  # signed requests remembered at once: more within one WINDOW is a flood, refused
_FIELD = re.compile(rb"\s*([a-z]+)=([A-Za-z0-9_\-.]{1,128})\s*")


def key_id(key: str) -> str:
    return hashlib.sha256(key.encode()).digest()[:8].hex()


def signature(key: str, method: str, target: str, ts: str, nonce: str) -> str:
    message = f"{method}\n{target}\n{ts}\n{nonce}".encode()
    digest = hmac.new(key.encode(), message, hashlib.sha256).digest()
    return base64.urlsafe_b64encode(digest).rstrip(b"=").decode()


def authorization(key: str, method: str, target: str, *, now: float | None = None) -> str:
    """The Authorization header value for one request (`target`: its path and query, as sent)."""
    ts = str(int(time.time() if now is None else now))
    nonce = secrets.token_urlsafe(16)
    return f"{SCHEME} client={key_id(key)}, ts={ts}, nonce={nonce}, sig={signature(key, method, target, ts, nonce)}"


class Signed(NamedTuple):  # not a dataclass: the client commands import this, and must start fast
    """A parsed Tokend-HMAC header; not yet checked."""

    client: str
    ts: str
    nonce: str
    sig: str

    def valid(self, key: str, method: str, target: str, now: float) -> bool:
        """The signature is the key's for this request, and made within WINDOW of `now`."""
        if not self.ts.isdigit() or abs(now - int(self.ts)) > WINDOW:
            return False
        expected = signature(key, method, target, self.ts, self.nonce)
        return hmac.compare_digest(expected.encode(), self.sig.encode())


def parse(credentials: bytes) -> Signed | None:
    """The fields after the scheme name, or None when they are not exactly client, ts, nonce and sig."""
    fields: dict[str, str] = {}
    for part in credentials.split(b","):
        match = _FIELD.fullmatch(part)
        if match is None or match.group(1).decode() in fields:
            return None
        fields[match.group(1).decode()] = match.group(2).decode()
    if set(fields) != {"client", "ts", "nonce", "sig"}:
        return None
    return Signed(fields["client"], fields["ts"], fields["nonce"], fields["sig"])


class Nonces:
    """The nonces of the signed requests accepted within the last WINDOW (twice: either side of the clock),
    so that none is accepted twice; bounded."""

    def __init__(self, limit: int = MAX_NONCES) -> None:
        self._seen: OrderedDict[str, float] = OrderedDict()
        self._limit = limit

    def first_use(self, nonce: str, now: float) -> bool:
        """True, and remembered, if `nonce` was not seen within the window; False for a replay or a flood."""
        while self._seen:
            oldest, at = next(iter(self._seen.items()))
            if now - at <= 2 * WINDOW:
                break
            del self._seen[oldest]
        if nonce in self._seen or len(self._seen) >= self._limit:
            return False
        self._seen[nonce] = now
        return True
