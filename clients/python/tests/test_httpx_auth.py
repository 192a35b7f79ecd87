"""tokend_client.httpx.Auth against the real daemon and an upstream API: sync and async flows, the 401 rule."""

from __future__ import annotations

import asyncio
import threading
from collections.abc import AsyncIterator, Iterator
from concurrent.futures import ThreadPoolExecutor

import httpx
import pytest
from tokend_client_stack import Stack, Upstream, wait_until

import tokend_client._client
from tokend_client import Client
from tokend_client.httpx import Auth


@pytest.fixture
def client(stack: Stack) -> Iterator[Client]:
    with Client(stack.daemon.url) as client:
        yield client


def test_sync_requests_carry_the_credential_and_a_401_is_retried_once_with_a_new_token(
    stack: Stack, upstream: Upstream, client: Client
) -> None:
    felloh = stack.fakes.felloh
    with httpx.Client(base_url=upstream.url, auth=Auth("felloh", client=client)) as api:
        assert api.get("/agent/organisations").status_code == 200
        first = upstream.requests()[0].headers["authorization"]
        felloh.revoke()
        logins = felloh.logins
        response = api.post("/bookings", json={"amount": 100})
    assert response.status_code == 200 and response.json()["body"] == '{"amount":100}'
    assert [r.status_code for r in response.history] == [401]
    assert felloh.logins == logins + 1
    sent = upstream.requests()
    assert [(r.method, r.body) for r in sent[1:]] == [("POST", b'{"amount":100}')] * 2
    assert sent[1].headers["authorization"] == first != sent[2].headers["authorization"]


def test_async_requests_carry_the_credential_and_a_401_is_retried_once(
    stack: Stack, upstream: Upstream, client: Client
) -> None:
    felloh = stack.fakes.felloh

    async def go() -> tuple[httpx.Response, httpx.Response]:
        async with httpx.AsyncClient(base_url=upstream.url, auth=Auth("felloh", client=client)) as api:
            ok = await api.get("/agent/organisations")
            felloh.revoke()
            return ok, await api.put("/bookings/1", content=b"replayable bytes")

    logins = felloh.logins
    ok, retried = asyncio.run(go())
    assert ok.status_code == 200 and retried.status_code == 200
    assert [r.status_code for r in retried.history] == [401]
    assert felloh.logins == logins + 1
    assert [r.body for r in upstream.requests()[1:]] == [b"replayable bytes"] * 2


def test_fifty_concurrent_async_401s_cost_one_refresh(stack: Stack, upstream: Upstream, client: Client) -> None:
    felloh = stack.fakes.felloh

    async def go() -> list[httpx.Response]:
        limits = httpx.Limits(max_connections=100)
        async with httpx.AsyncClient(base_url=upstream.url, auth=Auth("felloh", client=client), limits=limits) as api:
            assert (await api.get("/warm-up")).status_code == 200  # the credential is kept from here on
            felloh.revoke()
            return await asyncio.gather(*(api.get(f"/item/{n}") for n in range(50)))

    logins = felloh.logins
    responses = asyncio.run(go())
    assert [r.status_code for r in responses] == [200] * 50
    assert sum(len(r.history) for r in responses) == 50  # each one met the 401 and was retried once
    assert felloh.logins == logins + 1


def test_fifty_concurrent_sync_401s_cost_one_refresh(stack: Stack, upstream: Upstream, client: Client) -> None:
    felloh = stack.fakes.felloh
    auth = Auth("felloh", client=client)
    with httpx.Client(base_url=upstream.url, auth=auth, limits=httpx.Limits(max_connections=100)) as api:
        assert api.get("/warm-up").status_code == 200
        felloh.revoke()
        logins = felloh.logins
        barrier = threading.Barrier(50)

        def call(n: int) -> httpx.Response:
            barrier.wait(timeout=60)
            return api.get(f"/item/{n}")

        with ThreadPoolExecutor(50) as pool:
            responses = list(pool.map(call, range(50)))
    assert [r.status_code for r in responses] == [200] * 50
    assert felloh.logins == logins + 1


def test_a_streamed_body_is_not_sent_twice(stack: Stack, upstream: Upstream, client: Client) -> None:
    felloh = stack.fakes.felloh
    auth = Auth("felloh", client=client)

    def chunks() -> Iterator[bytes]:
        yield b"part one, "
        yield b"part two"

    async def async_chunks() -> AsyncIterator[bytes]:
        yield b"async part"

    async def go() -> httpx.Response:
        async with httpx.AsyncClient(base_url=upstream.url, auth=auth) as api:
            return await api.post("/upload", content=async_chunks())

    with httpx.Client(base_url=upstream.url, auth=auth) as api:
        api.get("/warm-up")
        felloh.revoke()
        logins = felloh.logins
        sync_answer = api.post("/upload", content=chunks())
        async_answer = asyncio.run(go())
    for answer in (sync_answer, async_answer):
        assert answer.status_code == 401 and answer.history == []
    assert felloh.logins == logins  # no refresh for a request that could not be retried anyway
    assert [r.body for r in upstream.requests()[1:]] == [b"part one, part two", b"async part"]


def test_never_more_than_one_retry(stack: Stack, upstream: Upstream, client: Client) -> None:
    upstream.reject_all = True  # an endpoint that refuses every token, the new one too
    with httpx.Client(base_url=upstream.url, auth=Auth("felloh", client=client)) as api:
        response = api.get("/forbidden-to-this-token")
    assert response.status_code == 401 and len(response.history) == 1
    assert len(upstream.requests()) == 2


def test_a_failed_refresh_returns_the_401_as_it_is(stack: Stack, upstream: Upstream, client: Client) -> None:
    felloh = stack.fakes.felloh
    with httpx.Client(base_url=upstream.url, auth=Auth("felloh", client=client)) as api:
        api.get("/warm-up")
        felloh.revoke()
        felloh.fail(500)  # the forced login fails: 502 refresh_failed from tokend
        response = api.get("/item")
        assert response.status_code == 401 and response.history == []
        felloh.recover()
        # Nothing of the failure is kept here: a later 401 asks tokend again, and gets a token once tokend's
        # own retry (or the next forced refresh) has logged in.
        wait_until(lambda: api.get("/item").status_code == 200, what="a request to succeed after recovery")


def test_a_query_key_is_added_and_replaced_not_repeated(stack: Stack, upstream: Upstream, client: Client) -> None:
    key = sorted(stack.fakes.flotiq.api_keys)[0]
    with httpx.Client(auth=Auth("flotiq", client=client)) as api:
        echoed = api.get(f"{upstream.url}/content", params={"limit": "5", "auth_token": "stale"}).json()
        real = api.get(f"{stack.fakes.flotiq_url}/api/v1/content/blogposts")
    assert echoed["query"] == {"limit": "5", "auth_token": key}
    assert upstream.requests()[0].headers["x-auth-token"] == key
    assert real.status_code == 200


def test_the_default_client_is_found_from_the_environment(
    stack: Stack, upstream: Upstream, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(tokend_client._client, "_default", None)
    auth = Auth("felloh")  # made before the environment names tokend: it is read on first use
    monkeypatch.setenv("TOKEND_URL", stack.daemon.url)
    try:
        assert httpx.get(f"{upstream.url}/x", auth=auth).status_code == 200
        assert auth._auth.client is tokend_client._client.default_client()
    finally:
        tokend_client._client.default_client().close()
