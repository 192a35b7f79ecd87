"""The daemon against hostile callers and upstreams: a refresh naming made-up tokens, refresh bodies built to
crash a JSON parser, and a login answer that inflates a thousandfold. All against the real daemon."""

from __future__ import annotations

import json
import re
import struct
import time
import zlib
from pathlib import Path

import httpx
import pytest
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from tests.daemon import HEADERS, Daemon, free_port, write_config
from tokend.credential import MAX_TOKEN_LENGTH
from tokend.testing import FakeProviders, FakeServer


def _storm(url: str, bodies: list[bytes | None]) -> list[int]:
    with httpx.Client(base_url=url, headers=HEADERS, timeout=30) as client:
        return [client.post("/token/fts/refresh", content=body or b"",
                            headers={"content-type": "application/json"}).status_code for body in bodies]


def test_refreshes_naming_made_up_tokens_cost_no_more_logins_than_plain_refreshes(
    tmp_path: Path, request: pytest.FixtureRequest, fakes: FakeProviders
) -> None:
    upstream = fakes.fintech_studios
    upstream.fail(503)  # every login fails, so no token is ever held
    daemon = Daemon(write_config(tmp_path, fakes, min_refresh_interval=30), log_path=tmp_path / "daemon.log")
    request.addfinalizer(daemon.kill)
    daemon.start(ready=False)
    daemon.wait_until(lambda: upstream.login_attempts >= 1, what="the first (failed) login")

    before = upstream.login_attempts
    named = _storm(daemon.url, [json.dumps({"rejected": f"made-up-{n}"}).encode() for n in range(40)])
    named_cost = upstream.login_attempts - before

    before = upstream.login_attempts
    plain = _storm(daemon.url, [None] * 40)
    plain_cost = upstream.login_attempts - before

    assert 200 not in named and 500 not in named, named
    assert 200 not in plain and 500 not in plain, plain
    # A scheduled retry (the backoff) may fall inside a storm; the storm itself adds no login.
    assert named_cost <= 1 and plain_cost <= 1, (named_cost, plain_cost, named)
    assert daemon.get("/status").json()["providers"]["fts"]["state"] == "failed"


NESTED = b'{"rejected": ' + b"[" * 20_000 + b"]" * 20_000 + b"}"


@pytest.mark.parametrize("body", [
    pytest.param(b"[" * 20_000 + b"]" * 20_000, id="arrays-20000-deep"),
    pytest.param(NESTED, id="nested-inside-rejected"),
    pytest.param(b'"just a string"', id="not-an-object"),
    pytest.param(b"[1, 2]", id="an-array"),
    pytest.param(b'{"rejected": 12}', id="not-a-string"),
    pytest.param(b'{"rejected": {"a": 1}}', id="an-object"),
    pytest.param(json.dumps({"rejected": "x" * (MAX_TOKEN_LENGTH + 1)}).encode(), id="too-long"),
    pytest.param(b"\xff\xfe{", id="not-utf8"),
])
def test_a_refresh_body_that_is_not_a_sane_rejected_token_is_a_400(daemon_factory, body: bytes) -> None:  # type: ignore[no-untyped-def]
    daemon = daemon_factory()
    answer = daemon.post("/token/fts/refresh", content=body, headers={"content-type": "application/json"})
    assert answer.status_code == 400, answer.text[:300]
    shape = answer.json()
    assert shape["error"] == "bad_request" and "rejected" in shape["message"], shape
    assert "Traceback" not in daemon.log() and not re.search(r"\bERROR\b", daemon.log()), daemon.log()[-2000:]
    # The daemon goes on serving.
    assert daemon.get("/token/fts").status_code == 200


# --- a gzip bomb in a login answer ------------------------------------------------------------------------------

GiB = 1024 ** 3


def _gzip_bomb(decoded: int) -> bytes:
    """A gzip stream of `decoded` bytes (`{"token": "` and zeros) made in well under a second: after a full
    flush the compressor starts afresh, so every MiB of zeros compresses to the same bytes, repeated."""
    compressor = zlib.compressobj(9, zlib.DEFLATED, -zlib.MAX_WBITS)
    head = b'{"token": "'
    mib = b"\0" * (1024 * 1024)
    first = compressor.compress(head) + compressor.flush(zlib.Z_FULL_FLUSH)
    block = compressor.compress(mib) + compressor.flush(zlib.Z_FULL_FLUSH)
    count = (decoded - len(head)) // len(mib)
    crc = zlib.crc32(head)
    for _ in range(count):
        crc = zlib.crc32(mib, crc)
    trailer = compressor.flush() + struct.pack("<II", crc, (len(head) + count * len(mib)) % 2 ** 32)
    return b"\x1f\x8b\x08\x00\x00\x00\x00\x00\x02\xff" + first + block * count + trailer


def _peak_rss(pid: int) -> int:
    """The process's resident-memory high-water mark, in bytes (Linux)."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) * 1024
    raise AssertionError("no VmHWM in /proc/PID/status")


def test_a_gzip_bomb_login_answer_is_refused_with_memory_growth_near_the_cap(tmp_path: Path,
                                                                              request: pytest.FixtureRequest) -> None:
    bomb = _gzip_bomb(GiB)
    assert len(bomb) < 1.5 * 1024 * 1024
    assert zlib.decompressobj(31).decompress(bomb[:64 * 1024], 1 << 20)  # a real gzip stream, as far as read here
    logins: list[str] = []

    async def login(_: Request) -> Response:
        logins.append("login")
        if len(logins) <= 2:
            return JSONResponse({"token": f"token-{len(logins)}", "expires": int(time.time()) + 3600, "userId": "u"})
        return Response(bomb, media_type="application/json", headers={"content-encoding": "gzip"})

    with FakeServer(Starlette(routes=[Route("/auth/token", login, methods=["POST"])])) as upstream:
        (tmp_path / "pw").write_text("pw\n")
        (tmp_path / "pw").chmod(0o600)
        port = free_port()
        config = tmp_path / "tokend.toml"
        config.write_text(f'[server]\nport = {port}\n\n[providers.fts]\nkind = "fintech_studios"\n'
                          f'base_url = "{upstream.url}"\napi_key = {{ file = "{tmp_path / "pw"}" }}\n'
                          f'email = "ops@example.com"\npassword = {{ file = "{tmp_path / "pw"}" }}\n'
                          'min_refresh_interval = 0.1\n')
        daemon = Daemon(config, log_path=tmp_path / "daemon.log")
        request.addfinalizer(daemon.kill)
        daemon.start()
        assert daemon.process is not None
        time.sleep(0.2)  # past min_refresh_interval
        assert daemon.post("/token/fts/refresh").status_code == 200  # the second login: the routes are warm
        time.sleep(0.2)
        before = _peak_rss(daemon.process.pid)
        started = time.monotonic()
        answer = daemon.post("/token/fts/refresh")
        took = time.monotonic() - started
        growth = _peak_rss(daemon.process.pid) - before

    assert answer.status_code == 502 and "max_answer_bytes" in answer.json()["message"], answer.text
    assert growth < 16 * 1024 * 1024, f"peak RSS grew by {growth / 2**20:.0f} MiB"
    assert took < 10, took
    # Still serving the token it held.
    assert daemon.get("/token/fts").json()["token"] == "token-2"
