"""The command line, run as users run it: a subprocess, its exit code, what it prints."""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import time

import httpx

from tests.daemon import HEADERS, free_port, tokend_command, write_config
from tokend import __version__


def tokend(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(tokend_command(*args), capture_output=True, text=True, timeout=60,
                          env={**os.environ, **(env or {})})


def test_version() -> None:
    result = tokend("--version")
    assert (result.returncode, result.stdout.strip()) == (0, f"tokend {__version__}")


def test_check_reports_the_config_without_secrets(tmp_path, fakes) -> None:  # type: ignore[no-untyped-def]
    config = write_config(tmp_path, fakes, extra='[providers.plain]\nkind = "flotiq"\napi_key = "plain-key-123"\n')
    config.chmod(0o600)
    result = tokend("--config", str(config), "check")
    assert result.returncode == 0, result.stderr
    assert "config OK: 4 provider(s), 0 client(s)" in result.stdout
    assert f"felloh: felloh at {fakes.felloh_url} (public_key from file" in result.stdout
    assert 'warning: provider "plain", field "api_key": a plain-string secret' in result.stdout
    assert 'warning: providers "felloh", "fts", "flotiq" log in over plain http' in result.stdout
    for secret in (fakes.felloh.private_key, fakes.fintech_studios.password, "plain-key-123"):
        assert secret not in result.stdout + result.stderr

    config.chmod(0o644)  # now every user of the machine can read the plain-string secret
    result = tokend("--config", str(config), "check")
    assert result.returncode == 3
    assert "config has 1 error(s)" in result.stdout
    assert f"error: config file {config} holds plain-string secrets and is readable by every user" in result.stdout


def test_check_refuses_a_bad_config_and_finds_it_through_the_environment(tmp_path) -> None:  # type: ignore[no-untyped-def]
    config = tmp_path / "bad.toml"
    config.write_text('[providers.x]\nkind = "felloh"\nenvironment = "staging"\npublic_key = "a"\nprivate_key = "b"\n')
    result = tokend("check", env={"TOKEND_CONFIG": str(config)})
    assert result.returncode == 3
    assert f"tokend: {config} has 1 problem(s)" in result.stderr
    assert "provider \"x\", field \"environment\": Input should be 'production' or 'sandbox'" in result.stderr


def test_no_config_file_is_a_clear_error(tmp_path) -> None:  # type: ignore[no-untyped-def]
    result = subprocess.run(tokend_command("run"), capture_output=True, text=True, timeout=60, cwd=tmp_path)
    assert result.returncode == 3 and "no config file" in result.stderr and "Traceback" not in result.stderr


def test_client_commands_say_when_the_daemon_is_not_running() -> None:
    url = f"http://127.0.0.1:{free_port()}"
    for command in (["get", "felloh"], ["status"], ["refresh", "felloh"]):
        result = tokend(*command, "--url", url)
        assert result.returncode == 4
        assert result.stderr.strip() == (
            f"tokend: tokend is not running at {url} (connection refused); start it with `tokend run`"
        )


def test_get_status_and_refresh_against_the_daemon(daemon_factory, fakes) -> None:  # type: ignore[no-untyped-def]
    daemon = daemon_factory()
    config = str(daemon.config)
    served = daemon.get("/token/fts").json()

    raw = tokend("--config", config, "get", "fts")
    assert (raw.returncode, raw.stdout) == (0, served["token"] + "\n")
    headers = tokend("get", "fts", "--format", "headers", env={"TOKEND_CONFIG": config})
    assert headers.stdout.splitlines() == [f"{k}: {v}" for k, v in served["headers"].items()]
    as_json = tokend("get", "flotiq", "--format", "json", "--url", daemon.url)
    assert '"X-AUTH-TOKEN"' in as_json.stdout

    status = tokend("--config", config, "status")
    assert status.returncode == 0
    assert re.search(r"^fts\s+fintech_studios\s+ok\s+\d+s", status.stdout, re.M), status.stdout
    assert re.search(r"^flotiq\s+flotiq\s+ok\s+never", status.stdout, re.M), status.stdout

    refreshed = tokend("--config", config, "refresh", "felloh")
    assert refreshed.returncode == 0 and fakes.felloh.is_valid(refreshed.stdout.strip())

    unknown = tokend("--config", config, "get", "nope")
    assert unknown.returncode == 6 and "No provider named 'nope'" in unknown.stderr


def test_get_imports_no_web_framework(daemon_factory) -> None:  # type: ignore[no-untyped-def]
    daemon = daemon_factory()
    probe = (
        "import sys; from tokend.cli import main; code = main(['get', 'felloh', '--url', sys.argv[1]]); "
        "heavy = sorted(m for m in ('fastapi', 'starlette', 'pydantic', 'httpx', 'uvicorn', 'apscheduler') "
        "if m in sys.modules); print(heavy, code, file=sys.stderr)"
    )
    result = subprocess.run([sys.executable, "-c", probe, daemon.url], capture_output=True, text=True, timeout=60)
    assert result.stderr.strip() == "[] 0"


def test_demo_serves_tokens_from_the_fake_providers_and_stops_cleanly(tmp_path) -> None:  # type: ignore[no-untyped-def]
    log = tmp_path / "demo.log"
    with log.open("w") as out:
        process = subprocess.Popen(tokend_command("demo", "--port", "0", "--lifetime", "3"), stdout=out,
                                   stderr=subprocess.STDOUT, env={**os.environ, "PYTHONUNBUFFERED": "1"})
    try:
        deadline = time.monotonic() + 30
        while not (found := re.search(r"curl -s -H 'X-Tokend-Request: 1' (http://\S+)/status", log.read_text())):
            assert time.monotonic() < deadline and process.poll() is None, log.read_text()
            time.sleep(0.05)
        base = found.group(1)
        seen: set[str] = set()
        while len(seen) < 3:  # 3 s tokens: renewals show up within a few seconds
            answer = httpx.get(f"{base}/token/felloh", headers=HEADERS)
            if answer.status_code == 200:
                seen.add(answer.json()["token"])
            assert time.monotonic() < deadline + 30, log.read_text()
            time.sleep(0.1)
        reloaded = httpx.post(f"{base}/reload", headers=HEADERS)  # the demo's config file can be reloaded too
        assert reloaded.status_code == 200 and len(reloaded.json()["unchanged"]) == 3, reloaded.text
        process.send_signal(signal.SIGINT)
        assert process.wait(timeout=15) == 0
    finally:
        process.kill()
    text = log.read_text()
    assert "Press Ctrl-C to stop" in text and text.count("login provider=felloh outcome=ok") >= 3


def test_config_may_come_before_or_after_the_command(tmp_path, fakes) -> None:  # type: ignore[no-untyped-def]
    config = write_config(tmp_path, fakes)
    before = tokend("--config", str(config), "check")
    after = tokend("check", "--config", str(config))
    assert before.returncode == after.returncode == 0 and before.stdout == after.stdout
    elsewhere = tmp_path / "missing.toml"
    assert tokend("--config", str(config), "check", "--config", str(elsewhere)).returncode == 3


def test_a_bad_proxy_variable_is_a_config_error_that_never_shows_its_url(tmp_path, fakes) -> None:  # type: ignore[no-untyped-def]
    config = write_config(tmp_path, fakes)
    env = {"HTTPS_PROXY": "ftp://user:proxy-password-1@proxy.example:21"}
    for command in ("check", "run"):
        result = tokend("--config", str(config), command, env=env)
        assert result.returncode == 3, result.stderr
        assert "HTTPS_PROXY cannot be used" in result.stderr and "proxy-password-1" not in result.stderr
        assert "Traceback" not in result.stderr
