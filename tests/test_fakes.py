"""The fake providers in tokend.testing answer like the providers' own documentation says.

Every test talks HTTP to a real server on 127.0.0.1. One server serves the whole module and each test plugs
its own fresh fake into it, because starting and stopping a server per test would cost ~0.2 s each.
"""

from __future__ import annotations

import base64
import json
import time
import uuid
from collections.abc import Callable, Iterator
from typing import Any

import httpx
import pytest
from starlette.types import ASGIApp, Receive, Scope, Send

from tokend.testing import (
    FakeFelloh,
    FakeFintechStudios,
    FakeFlotiq,
    FakeServer,
    FakeUpstream,
    serve_fakes,
)

FELLOH_KEYS = {"public_key": "demo-felloh-public", "private_key": "demo-felloh-private"}
FTS_API_KEY = "5f0c7e9a-0b1c-4d2e-8f3a-6b7c8d9e0f1a"
FTS_LOGIN = {"email": "demo@example.com", "password": "demo-password"}
FLOTIQ_KEY = "demo-flotiq-read-only-key"

Connect = Callable[[FakeUpstream], httpx.Client]


class _Plug:
    """An ASGI app that forwards to whichever fake the current test plugged in."""

    def __init__(self) -> None:
        self.app: ASGIApp | None = None

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        assert self.app is not None
        await self.app(scope, receive, send)


@pytest.fixture(scope="module")
def server() -> Iterator[tuple[_Plug, httpx.Client]]:
    plug = _Plug()
    # One client too: building an httpx.Client (its TLS context) costs ~40 ms.
    with FakeServer(plug) as running, httpx.Client(base_url=running.url, timeout=5.0) as client:
        yield plug, client


@pytest.fixture
def connect(server: tuple[_Plug, httpx.Client]) -> Connect:
    """Plug a fake into the module's server and give the client that reaches it."""
    plug, client = server

    def _connect(fake: FakeUpstream) -> httpx.Client:
        plug.app = fake.app
        return client

    return _connect


def felloh_login(client: httpx.Client, **kwargs: Any) -> httpx.Response:
    return client.post("/token", json=FELLOH_KEYS, headers={"Accept": "application/json"}, **kwargs)


def fts_login(client: httpx.Client, **kwargs: Any) -> httpx.Response:
    return client.post("/auth/token", json=FTS_LOGIN, headers={"x-api-key": FTS_API_KEY}, **kwargs)


LOGINS: dict[str, tuple[Callable[[], FakeUpstream], Callable[..., httpx.Response]]] = {
    "felloh": (FakeFelloh, felloh_login),
    "fintech_studios": (FakeFintechStudios, fts_login),
}


@pytest.fixture(params=sorted(LOGINS))
def upstream(
    request: pytest.FixtureRequest, connect: Connect
) -> tuple[FakeUpstream, httpx.Client, Callable[..., httpx.Response]]:
    """A fake with a login endpoint, a client for it, and the call that logs in with good credentials."""
    make_fake, login = LOGINS[request.param]
    fake = make_fake()
    return fake, connect(fake), login


def jwt_part(token: str, index: int) -> dict[str, Any]:
    part = token.split(".")[index]
    decoded: dict[str, Any] = json.loads(base64.urlsafe_b64decode(part + "=" * (-len(part) % 4)))
    return decoded


def assert_felloh_meta(body: dict[str, Any], code: int) -> None:
    assert body["meta"]["code"] == code
    assert uuid.UUID(body["meta"]["request_id"]).version == 4


# -- Felloh ------------------------------------------------------------------------------------------------


def test_felloh_login_answers_the_documented_envelope(connect: Connect) -> None:
    fake = FakeFelloh()
    client = connect(fake)
    response = felloh_login(client)
    assert response.status_code == 200
    body = response.json()
    data = body["data"]
    assert data["type"] == "BEARER"
    assert data["token"].isalnum() and len(data["token"]) >= 64
    assert isinstance(data["expiry_time"], int)
    assert abs(data["expiry_time"] - (time.time() + 3600)) < 5
    assert body["errors"] == []
    assert body["meta"]["reason"] == "OK" and body["meta"]["message"] == "The request was successful"
    assert_felloh_meta(body, 200)
    assert fake.valid_tokens() == {data["token"]}
    assert (fake.logins, fake.login_attempts) == (1, 1)


def test_felloh_each_login_gives_a_new_token_and_request_id(connect: Connect) -> None:
    client = connect(FakeFelloh())
    first, second = felloh_login(client).json(), felloh_login(client).json()
    assert first["data"]["token"] != second["data"]["token"]
    assert first["meta"]["request_id"] != second["meta"]["request_id"]


@pytest.mark.parametrize(
    "keys",
    [
        {"public_key": "demo-felloh-public", "private_key": "wrong"},
        {"public_key": "wrong", "private_key": "demo-felloh-private"},
        {"public_key": "démo", "private_key": "démo"},
    ],
)
def test_felloh_refuses_wrong_keys(connect: Connect, keys: dict[str, str]) -> None:
    fake = FakeFelloh()
    response = connect(fake).post("/token", json=keys, headers={"Accept": "application/json"})
    assert response.status_code == 401
    body = response.json()
    assert body["data"] == {}
    assert body["errors"][0]["title"] == "Unauthorised"
    assert body["meta"]["reason"] == "Unauthorized"
    assert_felloh_meta(body, 401)
    assert (fake.logins, fake.login_attempts) == (0, 1)


def test_felloh_accepts_rotated_keys_only(connect: Connect) -> None:
    fake = FakeFelloh()
    client = connect(fake)
    fake.private_key = "rotated-private"
    assert felloh_login(client).status_code == 401
    rotated = {**FELLOH_KEYS, "private_key": "rotated-private"}
    response = client.post("/token", json=rotated, headers={"Accept": "application/json"})
    assert response.status_code == 200


@pytest.mark.parametrize(
    ("headers", "status"),
    [
        ({"Accept": "application/json", "Content-Type": "text/plain"}, 415),
        ({"Accept": "application/json"}, 415),  # no Content-Type at all
        ({"Content-Type": "application/json"}, 406),  # httpx's default Accept: */*
        ({"Content-Type": "application/json", "Accept": "text/html"}, 406),
    ],
)
def test_felloh_insists_on_json_headers(connect: Connect, headers: dict[str, str], status: int) -> None:
    response = connect(FakeFelloh()).post("/token", content=json.dumps(FELLOH_KEYS), headers=headers)
    assert response.status_code == status
    assert_felloh_meta(response.json(), status)


def test_felloh_takes_json_headers_with_parameters(connect: Connect) -> None:
    headers = {"Content-Type": "application/json; charset=utf-8", "Accept": "text/html, application/json"}
    response = connect(FakeFelloh()).post("/token", content=json.dumps(FELLOH_KEYS), headers=headers)
    assert response.status_code == 200


@pytest.mark.parametrize("body", ["{not json", "[]", '{"public_key": "demo-felloh-public"}'])
def test_felloh_refuses_a_malformed_body(connect: Connect, body: str) -> None:
    headers = {"Content-Type": "application/json", "Accept": "application/json"}
    response = connect(FakeFelloh()).post("/token", content=body, headers=headers)
    assert response.status_code == 400
    assert_felloh_meta(response.json(), 400)


def test_felloh_protected_endpoint_takes_a_fresh_token_only(connect: Connect) -> None:
    fake = FakeFelloh()
    client = connect(fake)
    token = felloh_login(client).json()["data"]["token"]
    ok = client.get(fake.protected_path, headers={"Authorization": f"Bearer {token}"})
    assert ok.status_code == 200
    assert ok.json()["data"]
    for headers in ({}, {"Authorization": "Bearer wrong"}, {"Authorization": f"Basic {token}"}):
        refused = client.get(fake.protected_path, headers=headers)
        assert refused.status_code == 401
        assert_felloh_meta(refused.json(), 401)


def test_felloh_answers_unknown_paths_in_its_envelope(connect: Connect) -> None:
    response = connect(FakeFelloh()).get("/no/such/path")
    assert response.status_code == 404
    assert_felloh_meta(response.json(), 404)


# -- FinTech Studios ---------------------------------------------------------------------------------------


def test_fintech_studios_login_gives_a_jwt_and_its_expiry(connect: Connect) -> None:
    fake = FakeFintechStudios()
    client = connect(fake)
    body = fts_login(client).json()
    assert set(body) == {"token", "expires", "userId"}
    assert isinstance(body["expires"], int)
    assert abs(body["expires"] - (time.time() + 3600)) < 5
    assert jwt_part(body["token"], 0) == {"alg": "HS256", "typ": "JWT"}
    claims = jwt_part(body["token"], 1)
    assert claims["sub"] == body["userId"] and claims["exp"] == body["expires"]
    again = fts_login(client).json()
    assert again["userId"] == body["userId"] and again["token"] != body["token"]
    assert fake.valid_tokens() == {body["token"], again["token"]}


@pytest.mark.parametrize("headers", [{}, {"x-api-key": "00000000-0000-0000-0000-000000000000"}])
def test_fintech_studios_login_needs_the_api_key(connect: Connect, headers: dict[str, str]) -> None:
    fake = FakeFintechStudios()
    response = connect(fake).post("/auth/token", json=FTS_LOGIN, headers=headers)
    assert response.status_code == 403
    assert response.json() == {"message": "Forbidden"}
    assert (fake.logins, fake.login_attempts) == (0, 1)


def test_fintech_studios_refuses_a_wrong_password(connect: Connect) -> None:
    login = {**FTS_LOGIN, "password": "wrong"}
    response = connect(FakeFintechStudios()).post(
        "/auth/token", json=login, headers={"x-api-key": FTS_API_KEY}
    )
    assert response.status_code == 401
    assert response.json() == {"message": "Invalid email or password"}


def test_fintech_studios_protected_endpoint_needs_key_and_valid_jwt(connect: Connect) -> None:
    foreign = fts_login(connect(FakeFintechStudios())).json()["token"]  # signed with another secret
    fake = FakeFintechStudios()
    client = connect(fake)
    token = fts_login(client).json()["token"]
    header, payload, _ = token.split(".")
    forged = f"{header}.{payload}.{'A' * 43}"
    cases = [
        ({"x-api-key": FTS_API_KEY, "Authorization": f"Bearer {token}"}, 200),
        ({"Authorization": f"Bearer {token}"}, 403),
        ({"x-api-key": FTS_API_KEY}, 401),
        ({"x-api-key": FTS_API_KEY, "Authorization": f"Bearer {forged}"}, 401),
        ({"x-api-key": FTS_API_KEY, "Authorization": f"Bearer {foreign}"}, 401),
        ({"x-api-key": FTS_API_KEY, "Authorization": "Bearer not.a.jwt"}, 401),
    ]
    for headers, status in cases:
        assert client.get(fake.protected_path, headers=headers).status_code == status, headers


# -- Flotiq ------------------------------------------------------------------------------------------------


def test_flotiq_takes_its_key_as_header_or_query(connect: Connect) -> None:
    fake = FakeFlotiq()
    client = connect(fake)
    by_header = client.get(fake.protected_path, headers={"X-AUTH-TOKEN": FLOTIQ_KEY})
    by_query = client.get("/api/v1/content/products", params={"auth_token": FLOTIQ_KEY})
    for response in (by_header, by_query):
        assert response.status_code == 200
        assert response.json()["data"] == [] and response.json()["total_count"] == 0
    assert fake.valid_tokens() == {FLOTIQ_KEY} and fake.is_valid(FLOTIQ_KEY)
    assert (fake.logins, fake.login_attempts) == (0, 0)


def test_flotiq_refuses_a_wrong_or_missing_key(connect: Connect) -> None:
    fake = FakeFlotiq()
    client = connect(fake)
    for headers in ({}, {"X-AUTH-TOKEN": "wrong"}):
        response = client.get(fake.protected_path, headers=headers)
        assert response.status_code == 401
        assert response.json() == {"message": "Unauthorized"}
    fake.api_keys.add("wrong")  # a key made in the panel later works at once
    assert client.get(fake.protected_path, headers={"X-AUTH-TOKEN": "wrong"}).status_code == 200


def test_flotiq_outages_hit_the_protected_endpoint(connect: Connect) -> None:
    fake = FakeFlotiq()
    client = connect(fake)
    fake.fail(429, times=1, retry_after=30)
    throttled = client.get(fake.protected_path, headers={"X-AUTH-TOKEN": FLOTIQ_KEY})
    assert (throttled.status_code, throttled.headers["Retry-After"]) == (429, "30")
    assert client.get(fake.protected_path, headers={"X-AUTH-TOKEN": FLOTIQ_KEY}).status_code == 200


# -- switches and counters, for every fake with a login ------------------------------------------------------


def test_fail_once_then_recover(
    upstream: tuple[FakeUpstream, httpx.Client, Callable[..., httpx.Response]],
) -> None:
    fake, client, login = upstream
    fake.fail(503, times=1)
    failed = login(client)
    assert failed.status_code == 503
    assert "Retry-After" not in failed.headers
    assert failed.headers["content-type"] == "application/json"
    assert login(client).status_code == 200
    assert (fake.logins, fake.login_attempts) == (1, 2)


def test_fail_lasts_until_recover(
    upstream: tuple[FakeUpstream, httpx.Client, Callable[..., httpx.Response]],
) -> None:
    fake, client, login = upstream
    fake.fail(500)
    assert [login(client).status_code for _ in range(3)] == [500, 500, 500]
    fake.recover()
    assert login(client).status_code == 200
    assert (fake.logins, fake.login_attempts) == (1, 4)


def test_fail_with_retry_after(
    upstream: tuple[FakeUpstream, httpx.Client, Callable[..., httpx.Response]],
) -> None:
    fake, client, login = upstream
    fake.fail(429, times=2, retry_after=1.5)
    assert login(client).headers["Retry-After"] == "1.5"
    assert login(client).status_code == 429
    assert login(client).status_code == 200


@pytest.mark.parametrize(
    ("body", "content_type"),
    [("<html>oops</html>", "text/html"), ('{"data": {}}', "application/json")],
)
def test_fail_with_a_raw_body(
    upstream: tuple[FakeUpstream, httpx.Client, Callable[..., httpx.Response]], body: str, content_type: str
) -> None:
    fake, client, login = upstream
    fake.fail(200, times=1, body=body)
    response = login(client)
    assert (response.status_code, response.text) == (200, body)
    assert response.headers["content-type"].startswith(content_type)
    assert (fake.logins, fake.login_attempts) == (0, 1)  # a broken proxy's 200 is no login


def test_hang_delays_the_answer(
    upstream: tuple[FakeUpstream, httpx.Client, Callable[..., httpx.Response]],
) -> None:
    fake, client, login = upstream
    fake.hang(0.3)
    started = time.monotonic()
    assert login(client).status_code == 200
    assert time.monotonic() - started >= 0.3


def test_hang_outlasts_a_client_timeout(
    upstream: tuple[FakeUpstream, httpx.Client, Callable[..., httpx.Response]],
) -> None:
    fake, client, login = upstream
    fake.hang(0.3)
    with pytest.raises(httpx.ReadTimeout):
        login(client, timeout=0.1)
    fake.recover()
    assert login(client).status_code == 200
    time.sleep(0.3)  # past the abandoned request's hang: it must still not have logged in
    assert (fake.logins, fake.login_attempts) == (1, 2)


def test_fail_refuses_nonsense() -> None:
    fake = FakeFelloh()
    with pytest.raises(ValueError, match="status"):
        fake.fail(99)
    with pytest.raises(ValueError, match="times"):
        fake.fail(503, times=0)


# -- expiry, servers ---------------------------------------------------------------------------------------


def test_short_lived_tokens_expire_for_the_fake_and_its_endpoint() -> None:
    with serve_fakes(lifetime=1.0) as fakes:
        with httpx.Client(base_url=fakes.felloh_url, timeout=5.0) as felloh:
            felloh_token = felloh_login(felloh).json()["data"]["token"]
        with httpx.Client(base_url=fakes.fintech_studios_url, timeout=5.0) as fts:
            fts_body = fts_login(fts).json()
        assert fts_body["expires"] <= time.time() + 1
        deadline = time.monotonic() + 3
        while fakes.felloh.valid_tokens() or fakes.fintech_studios.valid_tokens():
            assert time.monotonic() < deadline, "a 1-second token outlived 3 seconds"
            time.sleep(0.05)
        assert not fakes.felloh.is_valid(felloh_token)
        assert not fakes.fintech_studios.is_valid(fts_body["token"])
        expired_felloh = httpx.get(
            fakes.felloh_url + fakes.felloh.protected_path,
            headers={"Authorization": f"Bearer {felloh_token}"},
        )
        expired_fts = httpx.get(
            fakes.fintech_studios_url + fakes.fintech_studios.protected_path,
            headers={"x-api-key": FTS_API_KEY, "Authorization": f"Bearer {fts_body['token']}"},
        )
        assert (expired_felloh.status_code, expired_fts.status_code) == (401, 401)


def test_serve_fakes_serves_three_providers_until_exit() -> None:
    with serve_fakes() as fakes:
        urls = {fakes.felloh_url, fakes.fintech_studios_url, fakes.flotiq_url}
        assert len(urls) == 3 and all(url.startswith("http://127.0.0.1:") for url in urls)
        flotiq = httpx.get(fakes.flotiq_url + fakes.flotiq.protected_path, params={"auth_token": FLOTIQ_KEY})
        assert flotiq.status_code == 200
    with pytest.raises(httpx.ConnectError):
        httpx.get(fakes.flotiq_url + fakes.flotiq.protected_path)


def test_fake_server_stops_twice_and_starts_once() -> None:
    server = FakeServer(FakeFlotiq().app).start()
    with pytest.raises(RuntimeError, match="already started"):
        server.start()
    server.stop()
    server.stop()
