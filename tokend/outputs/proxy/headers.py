"""What the proxy strips from the headers, each way.

Towards the upstream: the hop-by-hop headers (RFC 9110 section 7.6.1, and any the client names in
`Connection`), the client's `Host` (the upstream's own is sent), the client's own credentials and tokend's
marker (`Authorization`, `Cookie`, `X-Tokend-Request`), `Expect` (the proxy has the body already), and any
header the credential sets, so that the credential's value is the only one. Nothing is added that tells the
upstream about this machine (no `Via`, no `X-Forwarded-*`).

Towards the client: the hop-by-hop headers again, `Set-Cookie` (a session cookie from the upstream would
belong to tokend's credential, not to the client), and `Date` (the local server writes its own).
"""

from __future__ import annotations

from collections.abc import Mapping
from functools import lru_cache

__all__ = ["AWS_SIGNATURE", "incoming", "never_out", "outgoing"]

Headers = list[tuple[bytes, bytes]]

HOP_BY_HOP = frozenset({
    b"connection", b"keep-alive", b"proxy-connection", b"te", b"trailer", b"transfer-encoding", b"upgrade",
    b"proxy-authenticate", b"proxy-authorization",
})
_NEVER_OUT = HOP_BY_HOP | {b"host", b"authorization", b"cookie", b"x-tokend-request", b"expect", b"content-length"}
# An AWS provider's requests are signed by the proxy: the client's own signature (an SDK given dummy keys) goes.
AWS_SIGNATURE = frozenset({b"authorization", b"x-amz-date", b"x-amz-security-token", b"x-amz-content-sha256"})
_NEVER_BACK = HOP_BY_HOP | {b"set-cookie", b"set-cookie2", b"date"}


def never_out(credential: Mapping[str, str]) -> frozenset[bytes]:
    """The header names never forwarded with this credential (worked out once per credential)."""
    return _NEVER_OUT | {name.lower().encode("latin-1") for name in credential}


def outgoing(client: list[tuple[bytes, bytes]], dropped: frozenset[bytes]) -> Headers:
    """The client's headers (names lowercased, as ASGI gives them) as they may go upstream, without
    `dropped` (see never_out) and what `Connection` names; the credential's are added by the caller."""
    if any(name == b"connection" for name, _ in client):
        dropped = dropped | _named_in_connection(client)
    return [(name, value) for name, value in client if name not in dropped]


def incoming(upstream: Headers) -> Headers:
    """The upstream's answer headers (names lowercased by the pool) as they may go back to the client."""
    kept = [(name, value) for name, value in upstream if name not in _NEVER_BACK]
    if len(kept) == len(upstream) or not any(name == b"connection" for name, _ in upstream):
        return kept
    named = _named_in_connection(upstream)
    return [(name, value) for name, value in kept if name not in named]


def _named_in_connection(headers: Headers) -> frozenset[bytes]:
    return _tokens(b",".join(value for name, value in headers if name == b"connection"))


@lru_cache(maxsize=64)  # the same few values over and over ("keep-alive", "close")
def _tokens(value: bytes) -> frozenset[bytes]:
    return frozenset(token.strip().lower() for token in value.split(b","))
