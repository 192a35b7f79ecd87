"""What the httpx and requests Auth classes share: which client they use, the rule after a 401, and the
origin a credential belongs to.

A credential goes only to the origin (scheme, host, port) of the request it was added to. A redirect to
another origin is followed without it (its headers and query parameters taken off), and a 401 from another
origin is that origin's answer: no refresh is asked for, and no new token is sent there. The HTTP libraries'
own rule strips only `Authorization`, while a provider's key may travel in `X-AUTH-TOKEN`, `x-api-key` or
the query string.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from urllib.parse import unquote_plus, urlencode, urlsplit, urlunsplit

from tokend_client._client import Client, default_client
from tokend_client._credential import Credential
from tokend_client._errors import TokendError

__all__ = ["Origin", "ProviderAuth", "origin", "with_query", "without_query"]

Origin = tuple[str, str, int]
_DEFAULT_PORTS = {"http": 80, "https": 443}


class ProviderAuth:
    """A provider's name and the Client that asks tokend for its credentials."""

    def __init__(self, provider: str, *, client: Client | None = None) -> None:
        self.provider = provider
        self._client = client

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.provider!r})"

    @property
    def client(self) -> Client:
        # The shared default one is made on first use, not at construction: an Auth made at import time
        # must not read the environment before the program has set it up.
        return self._client or default_client()

    def replacement(self, sent: Credential) -> Credential | None:
        """After the upstream API answered 401 to `sent`: the new credential to retry with, or None to
        return the 401 as it is.

        None when tokend cannot give another token now (throttled, the login failed, tokend is gone) or
        gives the same one: the upstream's 401 then stands, and the caller sees it as it would without
        tokend, rather than an exception from a refresh it never asked for.
        """
        try:
            fresh = self.client.refresh(self.provider, rejected=sent.token)
        except TokendError:
            return None
        return None if fresh.token == sent.token else fresh


def origin(url: str) -> Origin:
    """Scheme, host and port of `url`, the port filled in when the scheme implies it."""
    parts = urlsplit(url)
    scheme = parts.scheme.lower()
    try:
        port = parts.port
    except ValueError:  # not a number: no origin any credential was sent to
        port = -1
    return scheme, (parts.hostname or "").lower(), port or _DEFAULT_PORTS.get(scheme, 0)


def with_query(url: str, query: Mapping[str, str]) -> str:
    """`url` with the parameters of `query` set: a parameter of the same name already there is replaced
    (a retry must not send the rejected key next to the new one); the others are kept byte for byte."""
    scheme, netloc, path, current, fragment = urlsplit(without_query(url, query))
    kept = [current] if current else []
    kept.append(urlencode(dict(query)))
    return urlunsplit((scheme, netloc, path, "&".join(kept), fragment))


def without_query(url: str, names: Iterable[str]) -> str:
    """`url` without the parameters called one of `names`; the others are kept byte for byte."""
    names = set(names)
    scheme, netloc, path, current, fragment = urlsplit(url)
    kept = [part for part in current.split("&") if part and unquote_plus(part.partition("=")[0]) not in names]
    return urlunsplit((scheme, netloc, path, "&".join(kept), fragment))
