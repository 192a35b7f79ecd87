"""The local API in-process (ASGI transport), with the manager logging in to the real fake providers."""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import Any

import httpx

from tests.daemon import HEADERS, write_config
from tokend.api.routes import create_app
from tokend.config.settings import Settings
from tokend.daemon import Daemon
from tokend.testing import FakeProviders


def settings_for(tmp_path: Path, fakes: FakeProviders, **options: Any) -> Settings:
    return Settings.load(write_config(tmp_path, fakes, **options))


@contextlib.asynccontextmanager
async def serving(settings: Settings) -> AsyncIterator[httpx.AsyncClient]:
    async with Daemon(settings) as daemon:
        app = create_app(daemon)
        transport = httpx.ASGITransport(app=app, client=("127.0.0.1", 50000))
        async with httpx.AsyncClient(transport=transport, base_url="http://127.0.0.1:8765", headers=HEADERS) as client:
            yield client


async def eventually(check: Callable[[], Awaitable[bool]], timeout: float = 20.0) -> None:
    deadline = time.monotonic() + timeout
    while not await check():
        assert time.monotonic() < deadline, "condition not reached in time"
        await asyncio.sleep(0.05)


def test_fast_path_and_full_route_answer_the_same(tmp_path, fakes) -> None:  # type: ignore[no-untyped-def]
    async def go() -> None:
        async with serving(settings_for(tmp_path, fakes)) as client:
            await eventually(lambda: _ready(client))
            for name in ("felloh", "fts", "flotiq"):
                fast = await client.get(f"/token/{name}")
                # An extra query parameter is not the fast path's to answer: the FastAPI route does.
                full = await client.get(f"/token/{name}", params={"format": "json", "pretty": "no"})
                assert fast.status_code == full.status_code == 200
                assert fast.headers["content-type"] == full.headers["content-type"] == "application/json"
                assert _without_expires_in(fast.json()) == _without_expires_in(full.json())
                assert abs((fast.json()["expires_in"] or 0) - (full.json()["expires_in"] or 0)) <= 1

    asyncio.run(go())


def _without_expires_in(body: dict[str, Any]) -> dict[str, Any]:
    return {key: value for key, value in body.items() if key != "expires_in"}


async def _ready(client: httpx.AsyncClient) -> bool:
    return (await client.get("/readyz")).status_code == 200


def test_a_get_during_the_first_login_waits_for_it(tmp_path, fakes) -> None:  # type: ignore[no-untyped-def]
    fakes.felloh.hang(0.5)

    async def go() -> None:
        async with serving(settings_for(tmp_path, fakes)) as client:
            answers = await asyncio.gather(*(client.get("/token/felloh") for _ in range(10)))
            assert [a.status_code for a in answers] == [200] * 10
            assert len({a.json()["token"] for a in answers}) == 1
        assert fakes.felloh.logins == 1

    asyncio.run(go())


def test_the_wait_for_a_first_login_is_bounded(tmp_path, fakes, monkeypatch) -> None:  # type: ignore[no-untyped-def]
    monkeypatch.setenv("TOKEND_SERVER__WAIT_TIMEOUT", "0.5")
    fakes.felloh.hang(3)

    async def go() -> None:
        async with serving(settings_for(tmp_path, fakes)) as client:
            started = time.monotonic()
            answer = await client.get("/token/felloh")
            assert time.monotonic() - started < 2.5
            assert answer.status_code == 503 and "still under way after 0.5s" in answer.json()["message"]
            assert (await client.get("/status")).json()["providers"]["felloh"]["state"] == "pending"

    asyncio.run(go())


def test_a_failing_upstream_keeps_the_valid_token_served_then_503_after_expiry(tmp_path, fakes) -> None:  # type: ignore[no-untyped-def]
    fakes.fintech_studios.lifetime = 8  # room for the failed renewal to be seen while the token still serves

    async def go() -> None:
        async with serving(settings_for(tmp_path, fakes, min_refresh_interval=0.1)) as client:
            await eventually(lambda: _ready(client))
            first = (await client.get("/token/fts")).json()["token"]
            fakes.fintech_studios.fail(503, retry_after=1)

            async def retrying() -> bool:
                return (await client.get("/status")).json()["providers"]["fts"]["state"] == "retrying"

            await eventually(retrying)
            still = await client.get("/token/fts")
            assert still.status_code == 200 and still.json()["token"] == first

            async def gone() -> bool:
                return (await client.get("/token/fts")).status_code == 503

            await eventually(gone)
            refused = (await client.get("/token/fts")).json()
            assert refused["error"] == "token_unavailable" and refused["provider"] == "fts"
            assert "503" in refused["message"] and refused["next_attempt"]
            ready = await client.get("/readyz")
            assert ready.status_code == 503 and ready.json()["providers"]["fts"] == "expired"
            assert (await client.get("/token/felloh")).status_code == 200  # the others are unaffected

            fakes.fintech_studios.recover()
            # A forced refresh within min_refresh_interval (0.1 s) of the last failed try answers that
            # failure without a new login; the next one logs in.
            renewed: list[httpx.Response] = []

            async def refreshed() -> bool:
                renewed.append(await client.post("/token/fts/refresh"))
                return renewed[-1].status_code == 200

            await eventually(refreshed)
            token = renewed[-1].json()["token"]
            assert fakes.fintech_studios.is_valid(token)
            assert (await client.get("/token/fts")).json()["token"] == token

    asyncio.run(go())


def test_rejected_credentials_show_as_failed_and_make_the_daemon_unready(tmp_path, fakes) -> None:  # type: ignore[no-untyped-def]
    settings = settings_for(tmp_path, fakes)
    fakes.felloh.private_key = "rotated-elsewhere"  # the key tokend holds is no longer accepted

    async def go() -> None:
        async with serving(settings) as client:
            async def failed() -> bool:
                return (await client.get("/status")).json()["providers"]["felloh"]["state"] == "failed"

            await eventually(failed)
            status = (await client.get("/status")).json()["providers"]["felloh"]
            assert status["last_error"]["credentials_rejected"] is True
            assert status["last_error"]["status"] == 401 and status["last_error"]["request_id"]
            assert status["logins"] == {"ok": 0, "failed": 1}
            ready = await client.get("/readyz")
            assert ready.status_code == 503
            assert ready.json()["providers"] == {"felloh": "failed", "fts": "ok", "flotiq": "ok"}
            answer = await client.get("/token/felloh")
            assert answer.status_code == 503 and "401" in answer.json()["message"]

    asyncio.run(go())


def test_errors_are_json_with_a_code(tmp_path, fakes) -> None:  # type: ignore[no-untyped-def]
    async def go() -> None:
        async with serving(settings_for(tmp_path, fakes)) as client:
            cases = [
                (await client.get("/token/nope"), 404, "unknown_provider"),
                (await client.get("/token/felloh", params={"format": "xml"}), 400, "bad_request"),
                (await client.put("/token/felloh"), 405, "method_not_allowed"),
                (await client.get("/nothing-here"), 404, "not_found"),
                (await client.get("/status", headers={"Forwarded": "for=203.0.113.9"}), 403, "forbidden"),
                (await client.get("/token/felloh", headers={"X-Tokend-Request": ""}), 403, "forbidden"),
                (await client.post("/felloh/felloh/keys", json={"organisation": "X"}), 400, "bad_request"),
            ]
            for answer, status, code in cases:
                assert (answer.status_code, answer.json()["error"]) == (status, code), answer.text
                assert answer.json()["message"]

    asyncio.run(go())


def test_a_remote_peer_is_refused_even_with_the_right_headers(tmp_path, fakes) -> None:  # type: ignore[no-untyped-def]
    async def go() -> None:
        async with Daemon(settings_for(tmp_path, fakes)) as daemon:
            app = create_app(daemon)
            transport = httpx.ASGITransport(app=app, client=("192.0.2.7", 40000))
            async with httpx.AsyncClient(transport=transport, base_url="http://127.0.0.1:8765",
                                         headers=HEADERS) as client:
                assert (await client.get("/token/felloh")).status_code == 403
                assert (await client.get("/livez")).status_code == 200

    asyncio.run(go())
