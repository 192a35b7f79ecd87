"""End to end: the real daemon as a subprocess, the fake providers as real servers, a client's view."""

from __future__ import annotations

import asyncio
import json
import signal
import subprocess
import time

import httpx

from tests.daemon import HEADERS, accepting, tokend_command
from tokend.testing import FakeProviders


def use_upstream(fakes: FakeProviders, name: str, served: dict) -> httpx.Response:  # type: ignore[type-arg]
    """Call the fake provider's protected endpoint exactly as an app would, with what tokend served."""
    base = {"felloh": fakes.felloh_url, "fts": fakes.fintech_studios_url, "flotiq": fakes.flotiq_url}[name]
    fake = {"felloh": fakes.felloh, "fts": fakes.fintech_studios, "flotiq": fakes.flotiq}[name]
    return httpx.get(base + fake.protected_path, headers=served["headers"], params=served["query"])


def test_every_provider_is_served_and_accepted_upstream(daemon_factory, fakes) -> None:  # type: ignore[no-untyped-def]
    daemon = daemon_factory()
    for name in ("felloh", "fts", "flotiq"):
        answer = daemon.get(f"/token/{name}")
        assert answer.status_code == 200, answer.text
        assert answer.headers["cache-control"] == "no-store"
        served = answer.json()
        assert use_upstream(fakes, name, served).status_code == 200
        raw = daemon.get(f"/token/{name}", params={"format": "raw"})
        assert raw.text == served["token"] and raw.headers["content-type"].startswith("text/plain")

    fts = daemon.get("/token/fts").json()
    assert fts["headers"] == {"x-api-key": fakes.fintech_studios.api_key, "Authorization": f"Bearer {fts['token']}"}
    assert 3500 < fts["expires_in"] <= 3600
    flotiq = daemon.get("/token/flotiq").json()
    key = sorted(fakes.flotiq.api_keys)[0]
    assert flotiq == {"provider": "flotiq", "token": key, "token_type": "api_key", "expires_at": None,
                      "expires_in": None, "headers": {"X-AUTH-TOKEN": key}, "query": {"auth_token": key}}
    # Each kind of upstream use works alone: Flotiq's query parameter without the header.
    assert httpx.get(fakes.flotiq_url + fakes.flotiq.protected_path, params=flotiq["query"]).status_code == 200
    assert fakes.felloh.logins == 1 and fakes.fintech_studios.logins == 1


def test_a_short_lived_token_is_renewed_and_never_served_expired(daemon_factory, fakes) -> None:  # type: ignore[no-untyped-def]
    fakes.felloh.lifetime = fakes.fintech_studios.lifetime = 4
    daemon = daemon_factory()
    seen: dict[str, set[str]] = {"felloh": set(), "fts": set()}
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        for name, fake in (("felloh", fakes.felloh), ("fts", fakes.fintech_studios)):
            answer = daemon.get(f"/token/{name}")
            assert answer.status_code == 200, answer.text
            token = answer.json()["token"]
            assert fake.is_valid(token), f"{name} served a token the provider no longer accepts"
            assert answer.json()["expires_in"] >= 0
            seen[name].add(token)
        time.sleep(0.1)
    for name, fake in (("felloh", fakes.felloh), ("fts", fakes.fintech_studios)):
        # 10 s of 3-4 s tokens renewed at about two thirds: a handful of logins, never one per request.
        assert 3 <= len(seen[name]) <= fake.logins <= 10, (name, len(seen[name]), fake.logins)


def test_thousands_of_concurrent_gets_cause_no_login(daemon_factory, fakes) -> None:  # type: ignore[no-untyped-def]
    daemon = daemon_factory()

    async def storm() -> list[int]:
        # 50 clients on their own connections, 60 requests each, all at once.
        async with httpx.AsyncClient(base_url=daemon.url, headers=HEADERS, timeout=60) as client:

            async def one_client() -> list[int]:
                return [(await client.get(f"/token/{n}")).status_code for n in ["felloh", "fts"] * 30]

            answers = await asyncio.gather(*(one_client() for _ in range(50)))
        return [status for statuses in answers for status in statuses]

    assert asyncio.run(storm()) == [200] * 3000
    assert (fakes.felloh.login_attempts, fakes.fintech_studios.login_attempts) == (1, 1)


def test_concurrent_forced_refreshes_share_one_login(daemon_factory, fakes) -> None:  # type: ignore[no-untyped-def]
    daemon = daemon_factory(min_refresh_interval=0.5)
    first = daemon.get("/token/felloh").json()["token"]
    time.sleep(0.6)  # past the minimum interval, so that a forced refresh really logs in
    fakes.felloh.hang(0.3)  # keep the login in flight while the other refreshes arrive

    async def storm() -> list[httpx.Response]:
        async with httpx.AsyncClient(base_url=daemon.url, headers=HEADERS, timeout=60) as client:
            return await asyncio.gather(*(client.post("/token/felloh/refresh") for _ in range(20)))

    answers = asyncio.run(storm())
    assert [a.status_code for a in answers] == [200] * 20
    tokens = {a.json()["token"] for a in answers}
    assert first not in tokens and 1 <= len(tokens) <= 2
    assert 2 <= fakes.felloh.logins <= 3  # the first login, then at most 2 for the storm
    assert all(fakes.felloh.is_valid(token) for token in tokens)


def test_forced_refresh_right_after_a_login_costs_nothing(daemon_factory, fakes) -> None:  # type: ignore[no-untyped-def]
    daemon = daemon_factory()  # min_refresh_interval defaults to 10 s
    token = daemon.get("/token/fts").json()["token"]
    for _ in range(5):
        assert daemon.post("/token/fts/refresh").json()["token"] == token
    assert fakes.fintech_studios.login_attempts == 1


def test_requests_that_could_come_from_a_browser_or_a_proxy_are_refused(daemon_factory) -> None:  # type: ignore[no-untyped-def]
    daemon = daemon_factory()
    with httpx.Client(base_url=daemon.url) as plain:
        for path in ("/token/felloh", "/token/felloh?format=raw", "/status"):
            assert plain.get(path).status_code == 403
            assert daemon.get(path, headers={"Host": "attacker.example:8765"}).status_code == 403
            assert daemon.get(path, headers={"X-Forwarded-For": "203.0.113.9"}).status_code == 403
        assert plain.post("/token/felloh/refresh").status_code == 403
        refused = plain.get("/token/felloh").json()
        assert refused["error"] == "forbidden" and "X-Tokend-Request" in refused["message"]
        assert "token" not in refused
        for host in ("localhost", "127.0.0.1:1", "localhost:8765"):
            assert daemon.get("/token/felloh", headers={"Host": host}).status_code == 200
        assert plain.get("/livez").status_code == 200 and plain.get("/readyz").status_code == 200


def test_unknown_provider_is_404(daemon_factory) -> None:  # type: ignore[no-untyped-def]
    daemon = daemon_factory()
    for answer in (daemon.get("/token/nope"), daemon.post("/token/nope/refresh")):
        assert answer.status_code == 404
        assert answer.json()["error"] == "unknown_provider" and answer.json()["provider"] == "nope"


def test_status_and_readiness(daemon_factory, fakes) -> None:  # type: ignore[no-untyped-def]
    daemon = daemon_factory()
    status = daemon.get("/status").json()
    assert status["ready"] is True
    felloh = status["providers"]["felloh"]
    assert felloh["state"] == "ok" and felloh["logins"] == {"ok": 1, "failed": 0}
    assert felloh["last_request_id"]  # Felloh's meta.request_id of the login
    assert felloh["last_request_id"] in daemon.log()
    assert daemon.get("/readyz").json() == {"ready": True, "providers": {"felloh": "ok", "fts": "ok", "flotiq": "ok"}}


def test_a_bad_config_is_refused_with_a_clear_message(tmp_path) -> None:  # type: ignore[no-untyped-def]
    config = tmp_path / "tokend.toml"
    config.write_text('[providers.fts]\nkind = "fintech_studios"\nbase_url = "http://fts.example.com"\n'
                      'api_key = { env = "TOKEND_TEST_UNSET" }\nemail = "a@b.c"\npassword = "hunter22"\n')
    result = subprocess.run(tokend_command("--config", str(config), "run"), capture_output=True, text=True,
                            timeout=60)
    assert result.returncode == 3
    assert 'provider "fts", field "base_url"' in result.stderr and "https://" in result.stderr
    assert 'provider "fts", field "api_key": environment variable TOKEND_TEST_UNSET is not set' in result.stderr
    assert "Traceback" not in result.stderr and "hunter22" not in result.stderr


def test_sigterm_exits_zero_promptly_even_with_a_login_hanging(daemon_factory, fakes) -> None:  # type: ignore[no-untyped-def]
    daemon = daemon_factory(min_refresh_interval=0.1)
    fakes.felloh.hang(60)
    time.sleep(0.2)

    async def hanging_refresh() -> None:
        async with httpx.AsyncClient(base_url=daemon.url, headers=HEADERS, timeout=60) as client:
            task = asyncio.create_task(client.post("/token/felloh/refresh"))
            await asyncio.sleep(0.5)
            code, took = await asyncio.to_thread(daemon.terminate)
            assert code == 0 and took < 8, (code, took, daemon.log())
            await asyncio.gather(task, return_exceptions=True)

    asyncio.run(hanging_refresh())


def test_no_secret_or_token_reaches_a_log_line_an_error_or_status(daemon_factory, fakes) -> None:  # type: ignore[no-untyped-def]
    secrets = [fakes.felloh.public_key, fakes.felloh.private_key, fakes.fintech_studios.api_key,
               fakes.fintech_studios.password, *fakes.flotiq.api_keys]
    daemon = daemon_factory(min_refresh_interval=0.1)
    tokens = {daemon.get(f"/token/{name}").json()["token"] for name in ("felloh", "fts")}
    time.sleep(0.2)
    # An upstream that echoes the credentials it was sent, in an error body: tokend must scrub them.
    echo = json.dumps({"message": f"bad login for {fakes.fintech_studios.password} / {fakes.fintech_studios.api_key}"})
    fakes.fintech_studios.fail(500, times=1, body=echo)
    fakes.felloh.fail(500, times=1)  # not 401: refused credentials are not tried again for a minute
    bodies = [daemon.post("/token/fts/refresh"), daemon.post("/token/felloh/refresh")]
    assert [b.status_code for b in bodies] == [502, 502]
    assert "***" in bodies[0].json()["message"]
    assert bodies[1].json()["request_id"]  # Felloh's request id travels with its error
    bodies += [daemon.get("/status"), daemon.get("/readyz"), daemon.get("/token/nope")]
    time.sleep(0.2)
    tokens |= {daemon.post(f"/token/{name}/refresh").json()["token"] for name in ("felloh", "fts")}
    daemon.terminate()
    written = daemon.log() + "".join(b.text for b in bodies)
    assert "login provider=fts outcome=error status=500" in written
    assert "login provider=felloh outcome=error status=500" in written
    for value in [*secrets, *tokens]:
        assert value not in written


def test_a_unix_socket_listener_is_private_and_used_by_the_client_commands(tmp_path, fakes) -> None:  # type: ignore[no-untyped-def]
    from tests.daemon import write_config

    socket_path = tmp_path / "tokend.sock"
    socket_path.touch()  # a stale file left behind is not a socket: refused, never replaced
    config = write_config(tmp_path, fakes)
    config.write_text(config.read_text().replace("[server]\n", f'[server]\nsocket = "{socket_path}"\n', 1))
    refused = subprocess.run(tokend_command("--config", str(config), "run"), capture_output=True, text=True,
                             timeout=60)
    assert refused.returncode == 1 and "exists and is not a socket" in refused.stderr
    socket_path.unlink()

    log = tmp_path / "socket-daemon.log"
    with log.open("wb") as out:
        process = subprocess.Popen(tokend_command("--config", str(config), "run"), stdout=out, stderr=out)
    try:
        transport = httpx.HTTPTransport(uds=str(socket_path))
        with httpx.Client(transport=transport, base_url="http://tokend", headers=HEADERS) as client:
            deadline = time.monotonic() + 30
            # Probe with a socket of our own first: httpcore leaks its socket on a failed unix connect.
            while not accepting(socket_path) or client.get("/readyz").status_code != 200:
                assert time.monotonic() < deadline and process.poll() is None, log.read_text()
                time.sleep(0.05)
            assert oct(socket_path.stat().st_mode & 0o777) == "0o600"
            assert client.get("/token/felloh").status_code == 200
            assert client.get("/token/felloh", headers={"X-Tokend-Request": ""}).status_code == 403
        got = subprocess.run(tokend_command("--config", str(config), "get", "fts"), capture_output=True, text=True,
                             timeout=60)
        assert got.returncode == 0 and fakes.fintech_studios.is_valid(got.stdout.strip())
        process.send_signal(signal.SIGTERM)
        assert process.wait(timeout=15) == 0
    finally:
        process.kill()
    assert not socket_path.exists()


def test_after_a_suspend_a_stale_token_is_never_served_and_the_caller_gets_a_fresh_one(daemon_factory, fakes) -> None:  # type: ignore[no-untyped-def]
    fakes.felloh.lifetime = 4
    daemon = daemon_factory()
    before = daemon.get("/token/felloh").json()["token"]
    assert daemon.process is not None
    daemon.process.send_signal(signal.SIGSTOP)  # a laptop lid closed through the whole token lifetime
    try:
        deadline = time.monotonic() + 30
        while fakes.felloh.is_valid(before):
            assert time.monotonic() < deadline
            time.sleep(0.1)
    finally:
        daemon.process.send_signal(signal.SIGCONT)
    answer = daemon.get("/token/felloh")
    assert answer.status_code == 200, answer.text
    assert answer.json()["token"] != before and fakes.felloh.is_valid(answer.json()["token"])
    assert fakes.felloh.logins <= 3  # the first login, and one (maybe two, racing the late renewal) after waking
