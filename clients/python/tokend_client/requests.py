"""tokend credentials for requests: `Auth`, a `requests.auth.AuthBase`.

    import requests
    from tokend_client.requests import Auth

    session = requests.Session()
    session.auth = Auth("felloh")
    session.get("https://sandbox.felloh.com/agent/organisations")

Needs the `requests` extra: `pip install './clients/python[requests]'` from a
checkout of tokend (or the built wheel with `[requests]`).
"""

from __future__ import annotations

import functools
from typing import Any
from urllib.parse import urljoin

import requests
import requests.auth
from requests.cookies import extract_cookies_to_jar
from requests.exceptions import UnrewindableBodyError
from requests.utils import rewind_body

from tokend_client._auth import Origin, ProviderAuth, origin, with_query, without_query
from tokend_client._client import Client
from tokend_client._credential import Credential

__all__ = ["Auth"]


class Auth(requests.auth.AuthBase):
    """Adds provider `provider`'s headers and query parameters, from tokend, to every request.

    >>> requests.get("https://sandbox.felloh.com/agent/organisations", auth=Auth("felloh"))

    On a 401 from the upstream API, it asks tokend for a refresh naming the token that was sent, and sends
    the request once more with the new one; threads that hit the same 401 together share that one refresh.
    Never more than one retry. A request whose body cannot be sent twice (a generator, a file that cannot
    seek) is not retried: its 401 is returned. When tokend cannot give a new token (throttled, the login
    failed), the 401 is returned too. As with requests' own HTTPDigestAuth, the retry goes straight to the
    connection: the response hooks do not run again for it.

    The credential goes only to the origin of the request it was added to: a redirect to another origin is
    followed without the provider's headers and query parameters, and a 401 from there is not retried.

    `client` defaults to the process's shared `Client`.
    """

    def __init__(self, provider: str, *, client: Client | None = None) -> None:
        self._auth = ProviderAuth(provider, client=client)
        self.provider = provider

    def __repr__(self) -> str:
        return f"Auth({self.provider!r})"

    def __call__(self, request: requests.PreparedRequest) -> requests.PreparedRequest:
        sent = self._auth.client.credential(self.provider)
        _with_credential(request, sent)
        home = origin(request.url or "")
        request.register_hook("response", functools.partial(self._after, sent, home))  # type: ignore[no-untyped-call]
        return request

    def _after(
        self, sent: Credential, home: Origin, response: requests.Response, **send_options: Any
    ) -> requests.Response:
        if response.request is None or origin(response.request.url or "") != home:
            return response  # a redirect took the request elsewhere: whatever it answers is not ours to retry
        if response.is_redirect and origin(_redirect_target(response)) != home:
            _strip_for_redirect(response, sent)
            return response
        if response.status_code != 401 or not _rewound(response.request):
            return response
        fresh = self._auth.replacement(sent)
        if fresh is None:
            return response
        response.content  # noqa: B018 (read to the end, so that the connection can carry the retry)
        response.close()
        retry = response.request.copy()
        if retry._cookies is not None:  # type: ignore[attr-defined]
            extract_cookies_to_jar(retry._cookies, response.request, response.raw)  # type: ignore[attr-defined,no-untyped-call]
            retry.prepare_cookies(retry._cookies)  # type: ignore[attr-defined]
        _with_credential(retry, fresh)
        answer: requests.Response = response.connection.send(retry, **send_options)
        answer.history.append(response)
        answer.request = retry
        return answer


def _with_credential(request: requests.PreparedRequest, credential: Credential) -> None:
    request.headers.update(credential.headers)
    if credential.query and request.url is not None:
        request.url = with_query(request.url, credential.query)


def _redirect_target(response: requests.Response) -> str:
    return urljoin(response.url, response.headers["location"])


def _strip_for_redirect(response: requests.Response, sent: Credential) -> None:
    """Take the credential off what requests copies to follow `response` to another origin: the headers
    from the request it copies, and the query parameters from the Location it reads (a server that puts
    the request's own query string in its Location would otherwise hand the key on)."""
    assert response.request is not None
    for header in sent.headers:
        response.request.headers.pop(header, None)
    if sent.query:
        response.headers["location"] = without_query(_redirect_target(response), sent.query)


def _rewound(request: requests.PreparedRequest) -> bool:
    """Whether the body can be sent again, rewinding a file to where it started."""
    body = request.body
    if body is None or isinstance(body, bytes | str):
        return True
    if getattr(request, "_body_position", None) is None:
        return False  # a generator, or a file-like object that cannot tell where it is
    try:
        rewind_body(request)
    except UnrewindableBodyError:
        return False
    return True
