"""The request checks on raw ASGI scopes: what a browser, a proxy or a remote host cannot get past."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from tokend.api.guard import FOREIGN_HOST, FORWARDED, MISSING_HEADER, REMOTE_PEER, RequestGuard
from tokend.config.tables import ServerConfig


def scope(*headers: tuple[str, str], client: str = "127.0.0.1") -> dict[str, Any]:
    return {"headers": [(k.lower().encode(), v.encode()) for k, v in headers], "client": (client, 50000)}


MARK = ("X-Tokend-Request", "1")


def test_loopback_hosts_with_any_port_pass() -> None:
    guard = RequestGuard(ServerConfig())
    for host in ("localhost", "127.0.0.1:8765", "[::1]:1", "LOCALHOST:80"):
        assert guard.check(scope(MARK, ("Host", host))) is None, host
    assert guard.check(scope(MARK, ("Host", "[::1]"), client="::1")) is None
    assert guard.check(scope(MARK, ("Host", "localhost"), client="::ffff:127.0.0.1")) is None


def test_each_check_refuses() -> None:
    guard = RequestGuard(ServerConfig())
    assert guard.check(scope(("Host", "localhost"))) is MISSING_HEADER
    assert guard.check(scope(("X-Tokend-Request", " "), ("Host", "localhost"))) is MISSING_HEADER
    assert guard.check(scope(MARK)) is FOREIGN_HOST  # no Host at all (HTTP/1.0)
    assert guard.check(scope(MARK, ("Host", "localhost.attacker.example"))) is FOREIGN_HOST
    assert guard.check(scope(MARK, ("Host", "127.0.0.1.nip.io:8765"))) is FOREIGN_HOST
    assert guard.check(scope(MARK, ("Host", "localhost"), ("Host", "evil.example"))) is FOREIGN_HOST
    assert guard.check(scope(MARK, ("Host", "localhost"), ("X-Forwarded-For", "10.1.1.1"))) is FORWARDED
    assert guard.check(scope(MARK, ("Host", "localhost"), ("Forwarded", "for=10.1.1.1"))) is FORWARDED
    assert guard.check(scope(MARK, ("Host", "localhost"), client="192.0.2.1")) is REMOTE_PEER


def test_allow_remote_checks_the_allowed_hosts_instead() -> None:
    guard = RequestGuard(ServerConfig(host="0.0.0.0", allow_remote=True, allowed_hosts=("tokend",)))
    assert guard.check(scope(MARK, ("Host", "tokend:8765"), client="10.0.0.5")) is None
    assert guard.check(scope(MARK, ("Host", "localhost:8765"))) is FOREIGN_HOST


def test_on_a_unix_socket_only_the_header_is_checked() -> None:
    guard = RequestGuard(ServerConfig(socket=Path("/run/tokend/tokend.sock")))
    assert guard.check({"headers": [(b"x-tokend-request", b"1")], "client": None}) is None
    assert guard.check({"headers": [(b"host", b"x")], "client": None}) is MISSING_HEADER
