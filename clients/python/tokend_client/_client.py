"""Client: asks tokend for credentials over its local HTTP API, and keeps them until shortly before expiry."""

from __future__ import annotations

import http.client
import json
import os
import socket
import threading
import time
from collections.abc import Callable
from typing import Any, NamedTuple
from urllib.parse import quote

from tokend_client._address import Address, check_key_destination, find_address, find_client_key
from tokend_client._credential import Credential
from tokend_client._errors import DaemonUnreachable, TokendError, error_from_answer
from tokend_client._signed import authorization

__all__ = ["Client", "default_client"]

__version__ = "0.1.0"

# A forced refresh waits for a login, which tokend bounds at 10 s by default; a GET waits a few seconds
# at most for a first login.
DEFAULT_TIMEOUT = 15.0
# A credential is used until this long before it expires, then asked for again: a token handed out must
# outlive the request it goes with (and that request's retry). tokend itself renews at about two thirds of
# the lifetime, so asking this late finds the newer token already there, at no cost to the upstream.
EXPIRY_MARGIN = 30.0
# Even a token of many hours (or a key that never expires) is asked for again after this long: tokend may
# have been reloaded with other settings for the provider, and one local request a minute costs nothing.
DEFAULT_MAX_AGE = 60.0
# Idle keep-alive connections kept for reuse. Used one at a time, a client only ever needs one; threads
# asking at the same moment each take their own, and at most this many stay open afterwards.
_IDLE_CONNECTIONS = 4
# A kept connection that tokend closed meanwhile (idle timeout, restart) fails in one of these ways on
# reuse; the request is then sent once more on a new connection.
_STALE = (http.client.RemoteDisconnected, ConnectionResetError, BrokenPipeError)


class _Entry(NamedTuple):
    credential: Credential
    fresh_until: float  # time.monotonic()


class _Flight:
    """One request to tokend that several callers wait for (single-flight)."""

    __slots__ = ("credential", "done", "error")

    def __init__(self) -> None:
        self.done = threading.Event()
        self.credential: Credential | None = None
        self.error: BaseException | None = None

    def wait(self) -> Credential:
        self.done.wait()  # the leader's own request is bounded by the client's timeout
        if self.error is not None:
            raise self.error
        assert self.credential is not None
        return self.credential


class Client:
    """A connection to tokend, the daemon that keeps this machine's API tokens.

    >>> from tokend_client import Client
    >>> client = Client()                      # found like the `tokend` command finds it
    >>> credential = client.credential("felloh")
    >>> credential.headers
    {'Authorization': 'Bearer eyJ...'}

    With no arguments, tokend is found at `$TOKEND_URL`, else from the `[server]` table of its config file
    (`$TOKEND_CONFIG`, `./tokend.toml`, `/etc/tokend/config.toml`), else at `http://127.0.0.1:8765`. `url`
    may be `http://127.0.0.1:8765`, `unix:/run/tokend/tokend.sock` or `http+unix://%2Frun%2Ftokend%2Ftokend.sock`.

    When tokend has `[clients]`, the client key comes from `client_key`, else the file `client_key_file`,
    else `$TOKEND_CLIENT_KEY`, else the file named by `$TOKEND_CLIENT_KEY_FILE`. A key is sent only to a
    loopback address (or anywhere with `allow_remote=True` or `$TOKEND_ALLOW_REMOTE=1`), and never over
    TCP when the config says tokend listens on a unix socket: TokendError at construction otherwise.

    A credential is kept in this process until shortly before it expires (and at most `max_age` seconds),
    so that asking for a ready one costs no request to tokend. One client is safe to share between threads
    and is meant to be: keep one per process (the Auth classes share a default one). Requests go over a
    kept-alive connection; `close()` (or a `with` block) closes it.
    """

    def __init__(
        self,
        url: str | None = None,
        *,
        config: str | os.PathLike[str] | None = None,
        client_key: str | None = None,
        client_key_file: str | os.PathLike[str] | None = None,
        timeout: float = DEFAULT_TIMEOUT,
        max_age: float = DEFAULT_MAX_AGE,
        allow_remote: bool = False,
    ) -> None:
        self.address: Address = find_address(url, config)
        self.timeout = timeout
        self.max_age = max_age
        self._headers = {"Accept": "application/json", "User-Agent": f"tokend-client/{__version__}",
                         "X-Tokend-Request": "tokend-client"}
        self._key = find_client_key(client_key, client_key_file)  # signs each request; never sent
        if self._key is not None:
            check_key_destination(self.address, config, allow_remote=allow_remote)
        self._lock = threading.Lock()  # guards the three below
        self._cache: dict[str, _Entry] = {}
        self._flights: dict[tuple[str, str, str | None], _Flight] = {}
        self._idle: list[http.client.HTTPConnection] = []
        self._pid = os.getpid()

    def __repr__(self) -> str:
        return f"Client({self.address.url!r})"  # never the key

    def __enter__(self) -> Client:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    def __del__(self) -> None:
        # A client dropped without close(): its sockets are closed now rather than left to a ResourceWarning.
        for connection in getattr(self, "_idle", ()):
            connection.close()

    def close(self) -> None:
        """Close the kept-alive connections. The client stays usable: it opens a new one when asked."""
        with self._lock:
            idle, self._idle = self._idle, []
        for connection in idle:
            connection.close()

    # -- credentials ---------------------------------------------------------------------------------------

    def credential(self, name: str) -> Credential:
        """The credential of provider `name`: the one kept here while it is fresh, else tokend's current one.

        >>> client.credential("fts").headers
        {'x-api-key': '...', 'Authorization': 'Bearer eyJ...'}

        Raises UnknownProvider, TokenUnavailable (no valid token now), Unauthorized or Forbidden (the client
        key), DaemonUnreachable. Callers asking at the same time share one request to tokend.
        """
        entry = self._cache.get(name)  # one dict read: atomic, and the hot path takes no lock
        if entry is not None and time.monotonic() < entry.fresh_until:
            return entry.credential
        return self._shared(("get", name, None), _fresh, lambda: self._ask("GET", name, None))

    def cached(self, name: str) -> Credential | None:
        """The credential kept here for `name` if it is still fresh, else None; never a request to tokend.

        For code that must not block (an event loop): use it when it is there, else call `credential()`
        in a worker thread.
        """
        entry = self._cache.get(name)
        if entry is not None and time.monotonic() < entry.fresh_until:
            return entry.credential
        return None

    def refresh(self, name: str, *, rejected: str | None = None) -> Credential:
        """Ask tokend for a new token now, when the upstream API refused `rejected` (the token it was sent).

        >>> response = httpx.get(url, headers=credential.headers)
        >>> if response.status_code == 401:
        ...     credential = client.refresh("felloh", rejected=credential.token)

        tokend logs in only if its current token is still the rejected one. Callers naming the same token
        share one request, and one naming a token already replaced here gets the new credential at once:
        fifty threads hitting one 401 together cost tokend one refresh. Raises RefreshThrottled (with
        `retry_after`), RefreshFailed, and the errors of credential().
        """
        body = None if rejected is None else {"rejected": rejected}

        def replaced(entry: _Entry | None) -> bool:
            return rejected is not None and entry is not None and _fresh(entry) and entry.credential.token != rejected

        return self._shared(("refresh", name, rejected), replaced, lambda: self._ask("POST", name, body))

    def _shared(self, key: tuple[str, str, str | None], good: Callable[[_Entry | None], bool],
                ask: Callable[[], _Entry]) -> Credential:
        """Single-flight: the first caller for `key` asks tokend, the others wait for its answer; a caller that
        finds a `good` entry kept (someone else asked meanwhile) takes it without asking."""
        name = key[1]
        with self._lock:
            entry = self._cache.get(name)
            if good(entry):
                assert entry is not None
                return entry.credential
            flight = self._flights.get(key)
            if flight is not None:
                leader = False
            else:
                leader, flight = True, _Flight()
                self._flights[key] = flight
        if not leader:
            return flight.wait()
        try:
            new = ask()
        except BaseException as exc:
            with self._lock:
                del self._flights[key]
            # A KeyboardInterrupt (or the like) is the leader's own business: the waiters get an error of ours.
            flight.error = exc if isinstance(exc, Exception) else TokendError("the request to tokend was interrupted")
            flight.done.set()
            raise
        with self._lock:
            self._keep(name, new)
            del self._flights[key]
        flight.credential = new.credential
        flight.done.set()
        return new.credential

    def _keep(self, name: str, new: _Entry) -> None:
        # A slower answer must not put back an older token than one kept meanwhile (a GET sent before a
        # refresh, answered after it): the later expiry wins, and the newest answer on a tie.
        old = self._cache.get(name)
        if old is not None and _fresh(old):
            old_expiry, new_expiry = old.credential.expires_at, new.credential.expires_at
            if old_expiry is not None and new_expiry is not None and old_expiry > new_expiry:
                return
        self._cache[name] = new

    def _ask(self, method: str, name: str, body: dict[str, str] | None) -> _Entry:
        path = f"/token/{quote(name, safe='')}" + ("/refresh" if method == "POST" else "")
        status, data, retry_after = self._request(method, path, body)
        answer = _json_or_none(data)
        if status != 200:
            raise error_from_answer(status, answer, retry_after, name)
        try:
            credential = Credential.from_answer(answer, name)
        except ValueError as exc:
            raise DaemonUnreachable(f"tokend at {self.address.url} gave no credential: {exc}",
                                    provider=name) from None
        expires_in = answer.get("expires_in") if isinstance(answer, dict) else None
        return _Entry(credential, time.monotonic() + self._keep_for(expires_in))

    def _keep_for(self, expires_in: object) -> float:
        if not isinstance(expires_in, int | float) or isinstance(expires_in, bool):
            return self.max_age  # a key that never expires
        # A short-lived token is kept for half its time left, rather than not at all.
        return min(self.max_age, expires_in - min(EXPIRY_MARGIN, expires_in / 2))

    # -- HTTP ----------------------------------------------------------------------------------------------

    def _request(self, method: str, path: str, body: dict[str, str] | None) -> tuple[int, bytes, str | None]:
        """Send one request on a kept-alive connection; (status, body, Retry-After) or DaemonUnreachable."""
        headers = self._headers
        payload = None
        if body is not None:
            payload = json.dumps(body).encode()
            headers = {**headers, "Content-Type": "application/json"}
        for attempt in (1, 2):
            if self._key is not None:  # signed anew for each try: tokend takes a signature once
                headers = {**headers, "Authorization": authorization(self._key, method, path)}
            connection, reused = self._checkout()
            try:
                connection.request(method, path, body=payload, headers=headers)  # a bodiless POST: length 0
                response = connection.getresponse()
                data = response.read()
            except (OSError, http.client.HTTPException) as exc:
                connection.close()
                if reused and attempt == 1 and isinstance(exc, _STALE):
                    continue
                raise self._unreachable(exc) from None
            self._checkin(connection, response.will_close)
            return response.status, data, response.getheader("Retry-After")
        raise AssertionError("unreachable")  # pragma: no cover: the second attempt returns or raises

    def _checkout(self) -> tuple[http.client.HTTPConnection, bool]:
        with self._lock:
            if self._pid != os.getpid():  # forked: the parent's sockets are not ours to use
                self._idle, self._pid = [], os.getpid()
            if self._idle:
                return self._idle.pop(), True
        if self.address.socket is not None:
            return _UnixConnection(self.address.socket, self.timeout), False
        return http.client.HTTPConnection(self.address.host, self.address.port, timeout=self.timeout), False

    def _checkin(self, connection: http.client.HTTPConnection, closing: bool) -> None:
        if not closing:
            with self._lock:
                if len(self._idle) < _IDLE_CONNECTIONS:
                    self._idle.append(connection)
                    return
        connection.close()

    def _unreachable(self, exc: BaseException) -> DaemonUnreachable:
        url = self.address.url
        if isinstance(exc, ConnectionRefusedError | FileNotFoundError):
            return DaemonUnreachable(f"tokend is not running at {url} (connection refused); start it with `tokend run`")
        if isinstance(exc, TimeoutError):
            return DaemonUnreachable(f"tokend at {url} did not answer in {self.timeout:g}s")
        if isinstance(exc, http.client.HTTPException) and not isinstance(exc, ConnectionError):
            return DaemonUnreachable(f"tokend at {url} answered something that is not HTTP ({type(exc).__name__})")
        reason = exc.strerror if isinstance(exc, OSError) and exc.strerror else type(exc).__name__
        return DaemonUnreachable(f"cannot reach tokend at {url}: {reason}")


class _UnixConnection(http.client.HTTPConnection):
    """http.client over a unix socket. The Host sent is `localhost`: tokend checks none on a socket."""

    def __init__(self, path: str, timeout: float) -> None:
        super().__init__("localhost", timeout=timeout)
        self._path = path

    def connect(self) -> None:
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        try:
            sock.settimeout(self.timeout)
            sock.connect(self._path)
        except BaseException:
            sock.close()
            raise
        self.sock = sock


def _fresh(entry: _Entry | None) -> bool:
    return entry is not None and time.monotonic() < entry.fresh_until


def _json_or_none(data: bytes) -> Any:
    try:
        return json.loads(data)
    except ValueError:  # also UnicodeDecodeError
        return None


_default: Client | None = None
_default_lock = threading.Lock()


def default_client() -> Client:
    """The process's shared Client, made on first use from the environment (see Client)."""
    global _default
    if _default is not None:
        return _default
    with _default_lock:
        if _default is None:
            _default = Client()
        return _default

