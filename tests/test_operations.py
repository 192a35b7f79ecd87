"""What operators read: /metrics after successful and failed logins, and the JSON log format."""

from __future__ import annotations

import json
import os
import re
import socket
import subprocess
from datetime import UTC, datetime

import httpx
import pytest

from tests.daemon import Daemon, tokend_command, write_config
from tokend.testing import FakeProviders


def _samples(text: str) -> dict[str, float]:
    """`name{labels} value` lines of the Prometheus text format, by `name{labels}`."""
    found = {}
    for line in text.splitlines():
        if line and not line.startswith("#"):
            key, _, value = line.rpartition(" ")
            found[key] = float(value)
    return found


def test_metrics_after_a_successful_and_a_failed_login(daemon_factory, fakes: FakeProviders) -> None:
    daemon = daemon_factory(min_refresh_interval=0.5)
    assert daemon.get("/token/fts").status_code == 200
    assert daemon.get("/token/nope").status_code == 404
    fakes.fintech_studios.fail(503)

    def failed() -> bool:
        return daemon.post("/token/fts/refresh").status_code == 502

    daemon.wait_until(failed, what="a failed forced refresh")

    scrape = httpx.get(daemon.url + "/metrics", timeout=30)  # no header, no key: it holds no secret
    assert scrape.status_code == 200 and scrape.headers["content-type"].startswith("text/plain; version=0.0.4")
    samples = _samples(scrape.text)
    assert samples['tokend_logins_total{outcome="ok",provider="fts"}'] == fakes.fintech_studios.logins == 1
    assert samples['tokend_logins_total{outcome="error",provider="fts"}'] >= 1
    assert samples['tokend_logins_total{outcome="ok",provider="felloh"}'] == fakes.felloh.logins
    assert samples['tokend_login_duration_seconds_count{provider="fts"}'] >= 2
    assert samples['tokend_refresh_consecutive_failures{provider="fts"}'] >= 1
    assert samples['tokend_refresh_consecutive_failures{provider="felloh"}'] == 0
    assert 3000 < samples['tokend_token_expires_in_seconds{provider="felloh"}'] <= 3600
    assert 'tokend_token_expires_in_seconds{provider="flotiq"}' not in samples  # a static key never expires
    assert samples['tokend_token_valid{provider="fts"}'] == 1  # the old token is still served
    assert samples['tokend_requests_total{route="/token/{name}",status="200"}'] >= 1
    assert samples['tokend_requests_total{route="/token/{name}",status="404"}'] == 1
    assert samples['tokend_requests_total{route="/token/{name}/refresh",status="502"}'] >= 1
    # No secret and no token in it.
    for value in (fakes.fintech_studios.password, fakes.fintech_studios.api_key, *fakes.fintech_studios.issued):
        assert value not in scrape.text


def test_a_random_path_scan_does_not_grow_the_route_labels(daemon_factory) -> None:
    daemon = daemon_factory()
    for n in range(20):
        daemon.get(f"/scan/{n}")
    routes = set(re.findall(r'tokend_requests_total\{route="([^"]*)"', daemon.get("/metrics").text))
    assert "other" in routes and not [route for route in routes if route.startswith("/scan")]


def test_json_logs_are_one_object_per_line(tmp_path, fakes: FakeProviders) -> None:
    config = write_config(tmp_path, fakes)
    daemon = Daemon(config, log_path=tmp_path / "daemon.log")
    with daemon.log_path.open("wb") as log:
        daemon.process = subprocess.Popen(
            tokend_command("--config", str(config), "run", "--log-format", "json"),
            stdout=subprocess.DEVNULL, stderr=log)
    try:
        daemon.wait_listening()
        daemon.wait_until(lambda: daemon.get("/readyz").status_code == 200, what="ready")
        assert daemon.terminate()[0] == 0
    finally:
        daemon.kill()
    entries = [json.loads(line) for line in daemon.log().splitlines()]
    assert {"time", "level", "logger", "message"} <= set(entries[0])
    assert all(re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z", e["time"]) for e in entries)
    # The key=value pairs of tokend's lines are fields of their own, not words of the message.
    logins = [e for e in entries if e["message"] == "login"]
    assert len(logins) == 3 and all(e["level"] == "info" and e["logger"] == "tokend" for e in logins)
    assert {e["provider"] for e in logins} == {"felloh", "fts", "flotiq"}
    assert all(e["outcome"] == "ok" and e["reason"] == "first" and "=" not in e["message"] for e in logins)
    assert re.fullmatch(r"\d+\.\ds", next(e for e in logins if e["provider"] == "fts")["next_refresh_in"])
    assert {e["level"] for e in entries} <= {"debug", "info", "warning", "error"}
    assert not [e for e in entries if e["logger"] == "uvicorn.error"]
    assert fakes.felloh.private_key not in daemon.log()


def test_text_logs_are_in_utc_with_a_z_and_nothing_reads_as_an_error(
    tmp_path, fakes: FakeProviders, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("TZ", "Asia/Kolkata")  # +05:30: local time would be far from UTC
    fakes.fintech_studios.fail(503, times=1)
    config = write_config(tmp_path, fakes)
    daemon = Daemon(config, log_path=tmp_path / "daemon.log")
    try:
        daemon.start()
        daemon.wait_until(lambda: "outcome=error" in daemon.log(), what="the failed login's line")
        assert daemon.terminate()[0] == 0
    finally:
        daemon.kill()
    lines = daemon.log().splitlines()
    stamped = re.compile(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\dZ (INFO|WARNING|ERROR) ")
    assert lines and all(stamped.match(line) for line in lines), lines
    stamp = datetime.strptime(lines[0][:20], "%Y-%m-%dT%H:%M:%SZ").replace(tzinfo=UTC)
    assert abs((datetime.now(UTC) - stamp).total_seconds()) < 120  # UTC, not local time with a Z
    assert "uvicorn.error" not in daemon.log()
    assert not [line for line in lines if " ERROR " in line]


def test_the_daemon_speaks_sd_notify_ready_watchdog_and_stopping(tmp_path, fakes: FakeProviders) -> None:
    """systemd's side of Type=notify, played by a datagram socket of our own."""
    notify_path = tmp_path / "notify.sock"
    listener = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    listener.bind(str(notify_path))
    listener.settimeout(30)
    fakes.felloh.hang(1.0)  # READY=1 waits for the first logins, slow ones included
    config = write_config(tmp_path, fakes)
    daemon = Daemon(config, log_path=tmp_path / "daemon.log")
    env = {**os.environ, "NOTIFY_SOCKET": str(notify_path), "WATCHDOG_USEC": "1000000"}
    try:
        with daemon.log_path.open("wb") as log:
            daemon.process = subprocess.Popen(tokend_command("--config", str(config), "run"),
                                              stdout=log, stderr=log, env=env)
        messages: list[str] = []
        while not any("READY=1" in message for message in messages):
            messages.append(listener.recv(4096).decode())
        ready = next(message for message in messages if "READY=1" in message)
        assert "felloh ok, fts ok, flotiq ok" in ready  # sent once every first login was done
        assert fakes.felloh.logins == 1
        pings = 0
        while pings < 3:  # every half WatchdogSec: three within a few seconds
            pings += listener.recv(4096) == b"WATCHDOG=1"
        assert daemon.terminate()[0] == 0
        while (message := listener.recv(4096).decode()) == "WATCHDOG=1":
            pass
        assert message == "STOPPING=1"
    finally:
        daemon.kill()
        listener.close()
