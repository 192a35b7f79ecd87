"""A credential goes only to the origin of the request it was added to: origin A redirects to origin B (another
port), and B, which records what it got, must see none of the provider's headers or query parameters, nor a
retry after its 401 (and no login is spent on it). httpx (sync and async) and requests."""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Iterator

import httpx
import pytest
import requests
from tokend import testing
from tokend_client_stack import Stack, Upstream

from tokend_client import Client
from tokend_client import httpx as tokend_httpx
from tokend_client import requests as tokend_requests


@pytest.fixture
def client(stack: Stack) -> Iterator[Client]:
    with Client(stack.daemon.url) as client:
        yield client


@pytest.fixture
def other(stack: Stack, upstream: Upstream) -> Iterator[Upstream]:
    """Origin B: answers every request 401, and records it. Origin A (`upstream`) redirects to it."""
    elsewhere = Upstream(stack.fakes.felloh, set(), reject_all=True)
    with testing.FakeServer(elsewhere.app()) as server:
        elsewhere.url = server.url
        upstream.redirect_to = server.url
        try:
            yield elsewhere
        finally:
            upstream.redirect_to = None


def _httpx_sync(url: str, provider: str, client: Client) -> int:
    with httpx.Client(auth=tokend_httpx.Auth(provider, client=client), follow_redirects=True) as api:
        return api.get(url).status_code


def _httpx_async(url: str, provider: str, client: Client) -> int:
    async def go() -> int:
        async with httpx.AsyncClient(auth=tokend_httpx.Auth(provider, client=client), follow_redirects=True) as api:
            return (await api.get(url)).status_code

    return asyncio.run(go())


def _requests(url: str, provider: str, client: Client) -> int:
    with requests.Session() as session:
        session.auth = tokend_requests.Auth(provider, client=client)
        return session.get(url, timeout=30).status_code


WRAPPERS = pytest.mark.parametrize("send", [_httpx_sync, _httpx_async, _requests],
                                   ids=["httpx", "httpx-async", "requests"])


@WRAPPERS
def test_a_redirect_to_another_origin_carries_no_header_nor_query_of_the_provider(
    send: Callable[[str, str, Client], int], stack: Stack, upstream: Upstream, other: Upstream, client: Client
) -> None:
    key = client.credential("flotiq").token  # sent both ways: X-AUTH-TOKEN and ?auth_token=
    fts = client.credential("fts")
    assert send(f"{upstream.url}/elsewhere/report?page=2", "flotiq", client) == 401
    assert send(f"{upstream.url}/elsewhere/report", "fts", client) == 401
    at_a = upstream.requests()
    assert at_a[0].headers["x-auth-token"] == key and at_a[0].query["auth_token"] == key
    assert at_a[1].headers["x-api-key"] == fts.headers["x-api-key"]
    at_b = other.requests()
    assert [(seen.path, seen.query) for seen in at_b] == [("/landed/elsewhere/report", {"page": "2"}),
                                                          ("/landed/elsewhere/report", {})]
    for seen in at_b:
        assert key not in repr(seen) and fts.token not in repr(seen) and fts.headers["x-api-key"] not in repr(seen)
        assert not {"x-auth-token", "x-api-key", "authorization"} & set(seen.headers)


@WRAPPERS
def test_a_401_from_another_origin_spends_no_login_and_gets_no_token(
    send: Callable[[str, str, Client], int], stack: Stack, upstream: Upstream, other: Upstream, client: Client
) -> None:
    felloh = stack.fakes.felloh
    client.credential("felloh")
    logins = felloh.logins
    assert send(f"{upstream.url}/elsewhere/bookings", "felloh", client) == 401
    assert felloh.logins == logins
    assert len(other.requests()) == 1 and "authorization" not in other.requests()[0].headers


@WRAPPERS
def test_a_redirect_within_the_origin_keeps_the_credential(
    send: Callable[[str, str, Client], int], stack: Stack, upstream: Upstream, client: Client
) -> None:
    upstream.redirect_to = upstream.url  # A to A: the same origin
    try:
        assert send(f"{upstream.url}/elsewhere/here", "felloh", client) == 200
    finally:
        upstream.redirect_to = None
    assert [seen.headers["authorization"] for seen in upstream.requests()] == \
        [client.credential("felloh").headers["Authorization"]] * 2
