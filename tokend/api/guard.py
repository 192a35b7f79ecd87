"""Who may read tokens: the request checks applied to every /token and /status request.

A browser on this machine can be made to send requests to 127.0.0.1 (a cross-site form, DNS rebinding),
and a server here can be tricked into fetching a URL of an attacker's choosing (SSRF). Neither can set a
custom header on a simple request, keep a loopback Host through rebinding, or avoid a proxy's
X-Forwarded-For; a browser's own requests carry an Origin. So each is refused by one of the checks below.

Then, when `[clients]` are configured, the caller is identified (`identify`) by its key (bare, or a signed
request: tokend.api.request_signing), by the Unix user it runs as (the unix socket's peer credentials), or by both, and
may read only its own providers.
"""

from __future__ import annotations

import hmac
import pwd
import time
from collections.abc import Mapping
from dataclasses import dataclass
from functools import lru_cache
from typing import Any

from tokend.api import request_signing as signed
from tokend.config.fields import is_loopback_host
from tokend.config.tables import ClientConfig, ServerConfig

LOOPBACK_HOSTS = frozenset({"localhost", "127.0.0.1", "[::1]"})
# The ASGI extension under which the unix socket's peer credentials reach a request (tokend.api.connections).
PEER_EXTENSION = "tokend.peer"


@dataclass(frozen=True)
class Denial:
    status: int
    code: str
    message: str


MISSING_HEADER = Denial(403, "forbidden", "The X-Tokend-Request header is required on this endpoint.")
FOREIGN_HOST = Denial(403, "forbidden", "The Host header must name this machine's loopback address.")
FORWARDED = Denial(403, "forbidden", "Requests relayed by a proxy (X-Forwarded-For, Forwarded) are refused.")
REMOTE_PEER = Denial(403, "forbidden", "Only processes on this machine may ask for tokens.")
BROWSER = Denial(403, "forbidden", "Requests from web pages (with an Origin header) are refused.")
NO_CLIENT_KEY = Denial(401, "unauthorized", "A client key is required: send Authorization: Bearer <client key>.")
UNKNOWN_CLIENT_KEY = Denial(401, "unauthorized", "The client key is not known.")
UNKNOWN_SCHEME = Denial(401, "unauthorized", "Authorization must be Bearer <client key> or a Tokend-HMAC signature.")
BEARER_REFUSED = Denial(401, "unauthorized", "This client must sign its requests (allow_bearer = false): the "
                        "client commands and libraries do; a bare key is refused.")
BAD_SIGNATURE = Denial(401, "unauthorized", "The request signature is not valid (unknown key id, wrong signature, "
                       "or made more than 30 seconds away from this machine's clock).")
REPLAYED = Denial(401, "unauthorized", "This signed request was already used: sign each request anew.")
WRONG_PEER = Denial(401, "unauthorized", "This client key must come from the Unix user or group its config names, "
                    "over the unix socket.")
UNKNOWN_PEER = Denial(401, "unauthorized", "No client is configured for this Unix user, and no client key was sent.")
NOT_YOURS = Denial(403, "forbidden", "This client key may not read that provider.")
NOT_ADMIN = Denial(403, "forbidden", "This client key may not administer that provider.")


@dataclass(frozen=True)
class Caller:
    """Who is asking: a configured client, or anyone at all when no clients are configured."""

    name: str | None
    providers: frozenset[str] | None  # None: every provider
    admin: bool

    def may_read(self, provider: str) -> bool:
        return self.providers is None or provider in self.providers

    def may_administer(self, provider: str | None = None) -> bool:
        """Provider admin endpoints (for `provider`), or the daemon itself (reload) when it is None."""
        return self.admin and (provider is None or self.may_read(provider))


ANYONE = Caller(None, None, admin=True)


class RequestGuard:
    def __init__(self, server: ServerConfig) -> None:
        # On a unix socket the file mode decides who connects, and there is no meaningful Host or peer.
        on_socket = server.socket is not None
        self._hosts: frozenset[str] | None = None if on_socket else (
            frozenset(h.lower() for h in server.allowed_hosts) if server.allow_remote else LOOPBACK_HOSTS
        )
        self._check_peer = not on_socket and not server.allow_remote
        self._clients: Mapping[str, ClientConfig] = {}
        self._table = _Clients([], [], {})
        self._nonces = signed.Nonces()

    def check(self, scope: Any) -> Denial | None:
        """The reason to refuse this ASGI request, or None to let it through."""
        marked = hosted = False
        for name, value in scope["headers"]:
            if name == b"x-tokend-request":
                marked = bool(value.strip())
            elif name == b"host":
                if self._hosts is not None and _hostname(value) not in self._hosts:
                    return FOREIGN_HOST
                hosted = True
            elif name in (b"x-forwarded-for", b"forwarded"):
                return FORWARDED
            elif name == b"origin":
                return BROWSER
        if not marked:
            return MISSING_HEADER
        if self._hosts is not None and not hosted:
            return FOREIGN_HOST
        if self._check_peer:
            client = scope.get("client")
            if not client or not _loopback_peer(client[0]):
                return REMOTE_PEER
        return None


    def identify(self, scope: Any, clients: Mapping[str, ClientConfig]) -> Caller | Denial:
        """The caller, or why it is refused; anyone, when no clients are configured. Worked out once per
        request (the fast path and the routes behind it both ask): a signed request's nonce is used up."""
        if not clients:
            return ANYONE
        known = scope.get(_IDENTIFIED)
        if known is None:
            known = scope[_IDENTIFIED] = self._identify(scope, self._clients_of(clients))
        return known  # type: ignore[no-any-return]

    def _identify(self, scope: Any, table: _Clients) -> Caller | Denial:
        peer = _peer(scope)
        scheme, presented = _authorization(scope)
        found: _Client | Denial | None = None
        if scheme == b"bearer":
            found = self._by_bearer(presented, table)
        elif scheme == _SIGNED:
            found = self._by_signature(scope, presented, table)
        elif scheme is not None:
            return UNKNOWN_SCHEME
        if isinstance(found, Denial):
            return found
        if found is not None:
            return found.caller if found.matches_peer(peer) else WRONG_PEER
        # No key: a client known by its Unix user alone, on the unix socket.
        for client in table.keyless:
            if client.matches_peer(peer):
                return client.caller
        return NO_CLIENT_KEY if peer is None or not table.keyless else UNKNOWN_PEER

    def _by_bearer(self, presented: bytes, table: _Clients) -> _Client | Denial:
        found: _Client | None = None
        for client in table.keyed:
            # Every key is compared, in constant time, so that the timing tells nothing about any of them.
            if hmac.compare_digest(presented, client.key):
                found = client
        if found is None:
            return UNKNOWN_CLIENT_KEY
        return found if found.allow_bearer else BEARER_REFUSED

    def _by_signature(self, scope: Any, presented: bytes, table: _Clients) -> _Client | Denial:
        request = signed.parse(presented)
        client = None if request is None else table.by_key_id.get(request.client)
        if request is None or client is None:
            return BAD_SIGNATURE
        now = time.time()
        target = scope.get("raw_path") or scope["path"].encode()
        if scope.get("query_string"):
            target += b"?" + scope["query_string"]
        if not request.valid(client.key.decode(), scope["method"], target.decode("latin-1"), now):
            return BAD_SIGNATURE
        if not self._nonces.first_use(request.nonce, now):
            return REPLAYED
        return client

    def _clients_of(self, clients: Mapping[str, ClientConfig]) -> _Clients:
        if clients is not self._clients:  # a reload brought new clients
            self._table = _Clients.of(clients)
            self._clients = clients
        return self._table


_IDENTIFIED = "tokend.caller"
_SIGNED = signed.SCHEME.lower().encode()


@dataclass(frozen=True)
class _Client:
    caller: Caller
    key: bytes  # b"" when known by its Unix user alone
    allow_bearer: bool
    uid: int | None
    group: tuple[int, frozenset[str]] | None

    def matches_peer(self, peer: tuple[int, int] | None) -> bool:
        """The Unix user and group this client must run as, if any, are the socket peer's."""
        if self.uid is None and self.group is None:
            return True
        if peer is None:
            return False  # over TCP nobody's user can be known
        uid, gid = peer
        if self.uid is not None and uid != self.uid:
            return False
        return self.group is None or gid == self.group[0] or _user_name(uid) in self.group[1]


@dataclass(frozen=True)
class _Clients:
    keyed: list[_Client]
    keyless: list[_Client]
    by_key_id: dict[str, _Client]

    @classmethod
    def of(cls, clients: Mapping[str, ClientConfig]) -> _Clients:
        built = [
            _Client(Caller(name, frozenset(client.providers), client.admin),
                    client.key.get().encode() if client.key is not None else b"", client.allow_bearer,
                    client.uid(), client.group())
            for name, client in clients.items()
        ]
        keyed = [client for client in built if client.key]
        return cls(keyed, [client for client in built if not client.key],
                   {signed.key_id(client.key.decode()): client for client in keyed})


def _authorization(scope: Any) -> tuple[bytes | None, bytes]:
    for name, value in scope["headers"]:
        if name == b"authorization":
            scheme, _, rest = value.strip().partition(b" ")
            return scheme.lower(), rest.strip()
    return None, b""


def _peer(scope: Any) -> tuple[int, int] | None:
    """(uid, gid) of the process at the other end of a unix socket, from the accepted connection."""
    peer = scope.get("extensions", {}).get(PEER_EXTENSION)
    return None if peer is None else (peer["uid"], peer["gid"])


@lru_cache(maxsize=256)
def _user_name(uid: int) -> str | None:
    try:
        return pwd.getpwuid(uid).pw_name
    except KeyError:
        return None


@lru_cache(maxsize=64)  # the hot path sees the same few Host values over and over
def _hostname(value: bytes) -> str:
    """The host part of a Host header: `127.0.0.1:8765` -> `127.0.0.1`, `[::1]:8765` -> `[::1]`."""
    host = value.decode("latin-1").strip().lower()
    if host.startswith("["):
        return host[: host.find("]") + 1]
    return host.partition(":")[0]


@lru_cache(maxsize=64)
def _loopback_peer(address: str) -> bool:
    return is_loopback_host(address.removeprefix("::ffff:"))
