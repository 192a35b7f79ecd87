"""Signed requests to tokend: the client key signs each request and never leaves this process, so that
whatever listens on tokend's port in its place (someone who bound it while tokend was down) learns no key.

    Authorization: Tokend-HMAC client=<key id>, ts=<unix seconds>, nonce=<random>, sig=<signature>

key id: the first 8 bytes of SHA-256(key), hex; sig: base64url, unpadded, of
HMAC-SHA256(key, "<METHOD>\\n<path?query>\\n<ts>\\n<nonce>"). tokend accepts each nonce once, within 30 s.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import secrets
import time

__all__ = ["authorization"]


def authorization(key: str, method: str, target: str) -> str:
    ts, nonce = str(int(time.time())), secrets.token_urlsafe(16)
    digest = hmac.new(key.encode(), f"{method}\n{target}\n{ts}\n{nonce}".encode(), hashlib.sha256).digest()
    sig = base64.urlsafe_b64encode(digest).rstrip(b"=").decode()
    client = hashlib.sha256(key.encode()).digest()[:8].hex()
    return f"Tokend-HMAC client={client}, ts={ts}, nonce={nonce}, sig={sig}"
