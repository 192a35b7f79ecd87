"""The command line, run as users run it: a subprocess, its exit code, what it prints."""

from __future__ import annotations

import os
import re
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import httpx

from tests.daemon import HEADERS, free_port, tokend_command, write_config
from tests.tools import DEBIAN, require_tool
from tokend._version import __version__


def tokend(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(tokend_command(*args), capture_output=True, text=True, timeout=60,
                          env={**os.environ, **(env or {})})


def test_version() -> None:
    result = tokend("--version")
    assert (result.returncode, result.stdout.strip()) == (0, f"tokend {__version__}")


def test_check_reports_the_config_without_secrets(tmp_path, fakes) -> None:  # type: ignore[no-untyped-def]
    config = write_config(tmp_path, fakes, extra='[providers.plain]\nkind = "flotiq"\napi_key = "plain-key-123"\n'
                          f'[[providers.plain.sinks]]\npath = "{tmp_path / "plain.token"}"\nformat = "header"\n')
    config.chmod(0o600)
    result = tokend("--config", str(config), "check")
    assert result.returncode == 0, result.stderr
    assert "config OK: 4 provider(s), 0 client(s)" in result.stdout
    assert f"    sink: {tmp_path / 'plain.token'} (header, mode 0600)" in result.stdout
    assert f"felloh: felloh at {fakes.felloh_url} (public_key from file" in result.stdout
    assert 'warning: provider "plain", field "api_key": a plain-string secret' in result.stdout
    assert 'warning: providers "felloh", "fts" log in over plain http' in result.stdout  # flotiq: a static key
    for secret in (fakes.felloh.private_key, fakes.fintech_studios.password, "plain-key-123"):
        assert secret not in result.stdout + result.stderr

    config.chmod(0o644)  # now every user of the machine can read the plain-string secret
    result = tokend("--config", str(config), "check")
    # Plain strings are allowed, with a warning: this one says how far the secret now reaches.
    assert result.returncode == 0, result.stdout
    assert f"warning: config file {config} holds plain-string secrets and is readable by every user" in result.stdout


def test_the_plain_http_warning_names_only_providers_that_log_in(tmp_path, fakes) -> None:  # type: ignore[no-untyped-def]
    config = tmp_path / "one.toml"
    config.write_text(f'[providers.f]\nkind = "fintech_studios"\nbase_url = "{fakes.fintech_studios_url}"\n'
                      'api_key = "an-api-key-1"\nemail = "a@example.com"\npassword = "a-password-1"\n'
                      f'[providers.k]\nkind = "flotiq"\nbase_url = "{fakes.flotiq_url}"\napi_key = "a-flotiq-key"\n')
    config.chmod(0o600)
    result = tokend("--config", str(config), "check")
    assert 'warning: provider "f" logs in over plain http to a loopback host' in result.stdout, result.stdout
    line = next(line for line in result.stdout.splitlines() if "plain http" in line)
    assert '"k"' not in line  # a static key never logs in


def test_fleet_mode_without_its_extra_is_a_config_error_naming_it(tmp_path, fakes) -> None:  # type: ignore[no-untyped-def]
    import base64

    shadow = tmp_path / "shadow" / "redis"  # a redis that cannot be imported, ahead of the installed one
    shadow.mkdir(parents=True)
    (shadow / "__init__.py").write_text('raise ImportError("No module named \'redis\'")\n')
    key = tmp_path / "fleet_key"
    key.write_text(base64.b64encode(os.urandom(32)).decode() + "\n")
    key.chmod(0o600)
    config = write_config(tmp_path, fakes, extra=f'[fleet]\nredis_url = "redis://127.0.0.1:1"\n'
                                                 f'encryption_key = {{ file = "{key}" }}\n')
    env = {"PYTHONPATH": str(shadow.parent)}
    for command in ("check", "run"):
        result = tokend("--config", str(config), command, env=env)
        assert result.returncode == 3, (command, result.stderr)
        assert "[fleet] needs the fleet extra" in result.stderr and "pip install 'tokend[fleet]'" in result.stderr
        assert "pip install '.[fleet]'" in result.stderr and "Traceback" not in result.stderr


def test_a_typo_in_a_setting_name_suggests_the_near_one(tmp_path) -> None:  # type: ignore[no-untyped-def]
    config = tmp_path / "typo.toml"
    config.write_text('[server]\nprot = 9000\n[providers.x]\nkind = "felloh"\nenviroment = "sandbox"\n'
                      'public_key = "a-public-key"\nprivate_key = "a-private-key"\nsquiggle = 1\n')
    result = tokend("--config", str(config), "check")
    assert result.returncode == 3 and "Traceback" not in result.stderr
    assert 'provider "x", field "enviroment": is not a known setting; did you mean environment?' in result.stderr
    assert 'field "server.prot": is not a known setting; did you mean port?' in result.stderr
    assert 'provider "x", field "squiggle": is not a known setting (a typo?)' in result.stderr


def test_the_demo_says_so_when_8765_is_taken(tmp_path) -> None:  # type: ignore[no-untyped-def]
    import socket

    holder = socket.socket()
    try:
        holder.bind(("127.0.0.1", 8765))
        holder.listen()
    except OSError:
        pass  # already held by something else: busy all the same
    try:
        result = subprocess.run(tokend_command("demo", "--lifetime", "30", "--duration", "2"), capture_output=True,
                                text=True, timeout=60)
    finally:
        holder.close()
    assert result.returncode == 0, result.stderr
    found = re.search(r"port 8765 is in use \(another tokend\?\), so this demo listens on port (\d+): give "
                      r"clients --url http://127.0.0.1:(\d+)", result.stderr)
    assert found and found.group(1) == found.group(2) != "8765", result.stderr[:2000]


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
    # SOURCE says whether a login made the token, and NEXT REFRESH is the wait, as `status --watch` says it.
    assert re.search(r"^fts\s+fintech_studios\s+ok\s+login\s+\d+[smhd][0-9hm]*\s+in \d+[smhd]", status.stdout, re.M), \
        status.stdout
    assert re.search(r"^flotiq\s+flotiq\s+ok\s+static\s+never\s+-", status.stdout, re.M), status.stdout

    refreshed = tokend("--config", config, "refresh", "felloh")
    assert refreshed.returncode == 0 and fakes.felloh.is_valid(refreshed.stdout.strip())

    unknown = tokend("--config", config, "get", "nope")
    assert unknown.returncode == 6 and "No provider named 'nope'" in unknown.stderr


def test_get_imports_no_web_framework(daemon_factory) -> None:  # type: ignore[no-untyped-def]
    daemon = daemon_factory()
    probe = (
        "import sys; from tokend.cli.main import main; code = main(['get', 'felloh', '--url', sys.argv[1]]); "
        "heavy = sorted(m for m in ('fastapi', 'starlette', 'pydantic', 'httpx', 'uvicorn', 'apscheduler') "
        "if m in sys.modules); print(heavy, code, file=sys.stderr)"
    )
    result = subprocess.run([sys.executable, "-c", probe, daemon.url], capture_output=True, text=True, timeout=60)
    assert result.stderr.strip() == "[] 0"


def _start_demo(log: Path, *args: str) -> subprocess.Popen[bytes]:
    """`tokend demo` on a free port, everything it prints going to `log`."""
    with log.open("w") as out:
        return subprocess.Popen(tokend_command("demo", "--port", "0", *args), stdout=out, stderr=subprocess.STDOUT,
                                env={**os.environ, "PYTHONUNBUFFERED": "1"})


def test_demo_serves_tokens_from_the_fake_providers_and_stops_cleanly(tmp_path) -> None:  # type: ignore[no-untyped-def]
    log = tmp_path / "demo.log"
    process = _start_demo(log, "--lifetime", "3")
    try:
        deadline = time.monotonic() + 30
        while not (found := re.search(r"curl -s -H 'X-Tokend-Request: 1' (http://\S+)/status", log.read_text())):
            assert time.monotonic() < deadline and process.poll() is None, log.read_text()
            time.sleep(0.05)
        base = found.group(1)
        # The user token waits for its first sign-in: a state of its own, which leaves the daemon ready.
        while (ready := httpx.get(f"{base}/readyz")).status_code != 200:
            assert time.monotonic() < deadline and process.poll() is None, ready.text + log.read_text()
            time.sleep(0.05)
        assert ready.json()["ready"] is True and ready.json()["providers"]["user"] == "sign_in", ready.text
        user = httpx.get(f"{base}/status", headers=HEADERS).json()["providers"]["user"]
        assert (user["state"], user["sign_in"], user["sign_in_reason"]) == ("sign_in", "tokend login user",
                                                                           "never_signed_in"), user
        seen: set[str] = set()
        while len(seen) < 3:  # 3 s tokens: renewals show up within a few seconds
            answer = httpx.get(f"{base}/token/felloh", headers=HEADERS)
            if answer.status_code == 200:
                seen.add(answer.json()["token"])
            assert time.monotonic() < deadline + 30, log.read_text()
            time.sleep(0.1)
        github = httpx.get(f"{base}/proxy/github/installation/repositories", headers=HEADERS)
        assert github.status_code == 200 and github.json()["total_count"] == 2, github.text  # a signed login
        reloaded = httpx.post(f"{base}/reload", headers=HEADERS)  # the demo's config file can be reloaded too
        assert reloaded.status_code == 200 and len(reloaded.json()["unchanged"]) == 7, reloaded.text
        # The user token, signed in as the banner says: `tokend login user`, then the fake's approval page.
        activate = re.search(r"curl -s -d user_code=CODE (http://\S+/activate)", log.read_text())
        assert activate is not None, log.read_text()
        login = subprocess.Popen(tokend_command("login", "user", "--url", base), stdout=subprocess.PIPE,
                                 stderr=subprocess.PIPE, text=True)
        assert login.stdout is not None
        code = re.search(r"enter the code (\S+)", login.stdout.readline())
        assert code is not None
        assert httpx.post(activate.group(1), data={"user_code": code.group(1)}).status_code == 200
        out, err = login.communicate(timeout=30)
        assert login.returncode == 0, out + err
        assert httpx.get(f"{base}/token/user", headers=HEADERS).status_code == 200
        assert httpx.get(f"{base}/status", headers=HEADERS).json()["providers"]["user"]["state"] == "ok"
        process.send_signal(signal.SIGINT)
        assert process.wait(timeout=15) == 0
    finally:
        process.kill()
    text = log.read_text()
    assert "Press Ctrl-C to stop" in text and text.count("login provider=felloh outcome=ok") >= 3
    # No HTTP request was made for the user before its sign-in: no refused login, and no warning but the
    # config's own about the fakes' plain http.
    warnings = [line for line in text.splitlines() if " WARNING " in line]
    assert all("plain http to a loopback host" in line for line in warnings), warnings
    assert text.count("sign_in_needed provider=user reason=never_signed_in") == 1, text


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


# --- what a first-time user stumbles on ----------------------------------------------------------------


def test_help_lists_every_exit_code() -> None:
    from tokend.cli.main import Exit

    result = tokend("--help")
    assert result.returncode == 0
    for code in Exit:
        assert re.search(rf"^\s+{int(code)}\s+\S", result.stdout, re.M), (code, result.stdout)
    assert re.search(r"^\s+8\s+.*throttled", result.stdout, re.M | re.I), result.stdout


def test_refresh_says_whether_it_logged_in(daemon_factory, fakes) -> None:  # type: ignore[no-untyped-def]
    daemon = daemon_factory(min_refresh_interval=30)
    # Within min_refresh_interval of the first login: the current token, and a plain word that no login was made.
    again = tokend("refresh", "felloh", "--url", daemon.url)
    assert again.returncode == 0 and fakes.felloh.is_valid(again.stdout.strip())
    assert "no new login" in again.stderr and "min_refresh_interval" in again.stderr, again.stderr


def test_refresh_naming_a_rejected_token_from_a_file_or_stdin(daemon_factory, fakes, tmp_path) -> None:  # type: ignore[no-untyped-def]
    daemon = daemon_factory(min_refresh_interval=30)
    token = daemon.get("/token/felloh?format=raw").text
    rejected = tmp_path / "rejected"
    rejected.write_text(token + "\n")
    fresh = tokend("refresh", "felloh", "--url", daemon.url, "--rejected-file", str(rejected))
    assert fresh.returncode == 0, fresh.stderr
    new = fresh.stdout.strip()
    assert new != token and fakes.felloh.is_valid(new) and "logged in" in fresh.stderr
    # The same rejected token again: already replaced, so the new one comes back without a login.
    replaced = subprocess.run(tokend_command("refresh", "felloh", "--url", daemon.url, "--rejected-file", "-"),
                              input=token, capture_output=True, text=True, timeout=60)
    assert (replaced.returncode, replaced.stdout.strip()) == (0, new)
    assert "no new login" in replaced.stderr and "already been replaced" in replaced.stderr, replaced.stderr
    assert token not in replaced.stderr + fresh.stderr and new not in replaced.stderr + fresh.stderr
    # The new token refused too, at once: throttled, with its own exit code and the daemon's reason.
    rejected.write_text(new)
    throttled = tokend("refresh", "felloh", "--url", daemon.url, "--rejected-file", str(rejected))
    assert throttled.returncode == 8, throttled.stderr
    assert "not attempted" in throttled.stderr and re.search(r"try again in \d+s", throttled.stderr)
    assert throttled.stdout == ""
    empty = tmp_path / "empty"
    empty.write_text("\n")
    assert tokend("refresh", "felloh", "--url", daemon.url, "--rejected-file", str(empty)).returncode == 2


def test_a_closed_pipe_ends_every_command_quietly(daemon_factory) -> None:  # type: ignore[no-untyped-def]
    daemon = daemon_factory()
    for command in (["status", "--json"], ["get", "fts", "--format", "json"], ["refresh", "fts"], ["--help"]):
        # `| head -c 10` that has already exited: the reading end is closed before anything is written.
        read_end, write_end = os.pipe()
        os.close(read_end)
        args = [*command, "--url", daemon.url] if command[0] != "--help" else command
        try:
            result = subprocess.run(tokend_command(*args), stdout=write_end, stderr=subprocess.PIPE, text=True,
                                    timeout=60)
        finally:
            os.close(write_end)
        assert "Traceback" not in result.stderr and "BrokenPipe" not in result.stderr, (command, result.stderr)
        assert result.returncode == 0, (command, result.returncode, result.stderr)


def test_a_url_without_a_scheme_is_taken_as_http(daemon_factory) -> None:  # type: ignore[no-untyped-def]
    daemon = daemon_factory()
    bare = daemon.url.removeprefix("http://")
    status = tokend("status", "--url", bare)
    assert status.returncode == 0, status.stderr
    assert tokend("get", "fts", env={"TOKEND_URL": bare}).returncode == 0
    for bad in ("https://127.0.0.1:8765", "ftp://x", "http://127.0.0.1:99999"):
        result = tokend("status", "--url", bad)
        assert result.returncode == 2, (bad, result.stderr)
        assert "--url" in result.stderr and "not reachable" not in result.stderr and "Traceback" not in result.stderr


def test_an_unknown_provider_names_the_daemon_it_asked(daemon_factory) -> None:  # type: ignore[no-untyped-def]
    daemon = daemon_factory()
    for command in (["get", "nope"], ["refresh", "nope"]):
        result = tokend(*command, "--url", daemon.url)
        assert result.returncode == 6
        assert "No provider named 'nope'" in result.stderr and daemon.url in result.stderr, result.stderr
    keys = tokend("felloh", "keys", "list", "--provider", "nope", "--organisation", "X1", "--url", daemon.url)
    assert keys.returncode == 1 and f"(asked the daemon at {daemon.url})" in keys.stderr, keys.stderr


def test_status_says_when_a_past_error_happened_and_that_it_recovered(daemon_factory, fakes) -> None:  # type: ignore[no-untyped-def]
    daemon = daemon_factory(min_refresh_interval=0.1)
    fakes.felloh.fail(503, times=1)
    # Within min_refresh_interval of the first login a refresh answers the current token and leaves the
    # failure armed: the first refresh past it makes the login that fails.
    daemon.wait_until(lambda: daemon.post("/token/felloh/refresh").status_code == 502, what="a failed login")
    failing = tokend("status", "--url", daemon.url)
    row = next(line for line in failing.stdout.splitlines() if line.startswith("felloh "))
    # The retry after the failure may already have succeeded by now: then nothing is wrong any more.
    assert re.search(r"login answered 503.*\(\d+s ago\)$", row) or row.endswith("  -"), row
    daemon.wait_until(lambda: daemon.post("/token/felloh/refresh").status_code == 200, what="a login")
    recovered = tokend("status", "--url", daemon.url)
    row = next(line for line in recovered.stdout.splitlines() if line.startswith("felloh "))
    # A login succeeded since: the past error is not shown as the last error (/status --json keeps it).
    assert re.search(r"^felloh\s+felloh\s+ok\s.*\s-$", row) and "503" not in row, row


def test_check_warns_of_whitespace_around_a_secret_without_showing_it(tmp_path, fakes) -> None:  # type: ignore[no-untyped-def]
    padded = tmp_path / "padded_key"
    padded.write_text("flotiq-key-with-a-space \n")
    padded.chmod(0o600)
    extra = f'[providers.padded]\nkind = "flotiq"\napi_key = {{ file = "{padded}" }}\n'
    config = write_config(tmp_path, fakes, extra=extra)
    result = tokend("--config", str(config), "check")
    assert result.returncode == 0, result.stderr
    assert (f'warning: provider "padded", field "api_key": the secret from file {padded} has trailing whitespace'
            in result.stdout), result.stdout
    assert "flotiq-key-with-a-space" not in result.stdout + result.stderr
    assert result.stdout.count("whitespace (a space") == 1  # the fakes' own secret files are clean


def test_the_getting_started_client_snippets_run_against_the_demo_as_printed(tmp_path) -> None:  # type: ignore[no-untyped-def]
    from pathlib import Path

    page = (Path(__file__).parent.parent / "docs" / "index.md").read_text()
    section = page.split("<!-- client-snippets -->")[1].split("<!-- /client-snippets -->")[0]
    blocks = dict(re.findall(r"```(sh|python|js)\n(.*?)```", section, re.S))
    assert set(blocks) == {"sh", "python", "js"}
    assert "status" in blocks["js"] and "answer.ok" in blocks["js"]  # the Node one checks tokend's answer
    log = tmp_path / "demo.log"
    process = _start_demo(log, "--lifetime", "30")
    try:
        deadline = time.monotonic() + 30
        while not (found := re.search(r"^  export (.+)$", log.read_text(), re.M)):
            assert time.monotonic() < deadline and process.poll() is None, log.read_text()
            time.sleep(0.05)
        exported = dict(pair.split("=", 1) for pair in found.group(1).split())
        assert set(exported) == {"TOKEND_URL", "FELLOH_API", "FTS_API", "FLOTIQ_API"}
        env = {**os.environ, **exported, "PATH": f"{os.path.dirname(sys.executable)}:{os.environ['PATH']}"}
        httpx_wait = time.monotonic() + 30
        # Every provider but the demo's user token, which waits for a `tokend login`.
        while {state for name, state in httpx.get(f"{exported['TOKEND_URL']}/readyz").json()["providers"].items()
               if name != "user"} != {"ok"}:
            assert time.monotonic() < httpx_wait, log.read_text()
            time.sleep(0.05)
        (tmp_path / "posts.mjs").write_text(blocks["js"])
        node = require_tool("node", "Node 18 or later: https://nodejs.org")
        runs = {
            "sh": ["bash", "-euo", "pipefail", "-c", blocks["sh"]],
            "python": [sys.executable, "-c", blocks["python"]],
            "js": [node, str(tmp_path / "posts.mjs")],
        }
        expected = {"sh": "Demo Travel Ltd", "python": "Markets open higher", "js": "total_count"}
        # The curl snippet needs curl, which a bare machine may lack: the others run first, whatever happens.
        without_curl = shutil.which("curl") is None
        for language, command in runs.items():
            if language == "sh" and without_curl:
                continue
            result = subprocess.run(command, capture_output=True, text=True, timeout=60, env=env)
            assert result.returncode == 0 and expected[language] in result.stdout, (language, result)
    finally:
        process.send_signal(signal.SIGINT)
        process.wait(timeout=15)
    if without_curl:
        require_tool("curl", f"{DEBIAN} curl; the Python and Node snippets passed")


def test_demo_check_serves_and_uses_each_providers_token_then_stops() -> None:
    result = subprocess.run(tokend_command("demo", "--check", "--port", "0"), capture_output=True, text=True,
                            timeout=90)
    assert result.returncode == 0, result.stderr
    *checked, summary = result.stdout.splitlines()
    assert [line.split(":")[0] for line in checked] == ["felloh", "fts", "flotiq", "github", "aws", "gcp"], \
        result.stdout
    assert all(": ok: served (" in line and "accepted by the fake API" in line for line in checked), result.stdout
    assert "through [metadata.aws]" in checked[4] and "through [metadata.gce]" in checked[5], result.stdout
    assert summary == "tokend demo --check: 6 provider(s) served and used, then stopped cleanly"
    assert "Traceback" not in result.stderr


def test_the_demos_aws_and_google_commands_run_as_printed(tmp_path) -> None:  # type: ignore[no-untyped-def]
    import json
    import shlex

    aws = require_tool("aws", "pip install awscli (the test extra)")
    log = tmp_path / "demo.log"
    process = _start_demo(log, "--lifetime", "30")
    try:
        deadline = time.monotonic() + 30
        while len(printed := re.findall(r"^  (tokend exec .+)$", log.read_text(), re.M)) < 2:
            assert time.monotonic() < deadline and process.poll() is None, log.read_text()
            time.sleep(0.05)
        # As a user's shell runs them: `tokend` and `python` from the environment tokend is installed in, and
        # whatever AWS settings the user has are overruled by tokend exec.
        bin_dir = os.path.dirname(sys.executable)
        env = {**os.environ, "PATH": f"{bin_dir}:{os.path.dirname(aws)}:{os.environ['PATH']}",
               "AWS_ACCESS_KEY_ID": "AKIAFROMTHESHELL", "AWS_SECRET_ACCESS_KEY": "not-this-one",
               "AWS_CONFIG_FILE": str(tmp_path / "none"), "HOME": str(tmp_path)}
        aws_line, google_line = printed
        shell = shutil.which("bash") or "/bin/bash"
        assert shlex.split(aws_line)[4:7] == ["--", "aws", "sts"], aws_line
        base = shlex.split(aws_line)[3]
        while httpx.get(f"{base}/token/gcp", headers=HEADERS).status_code != 200:  # the keyless chain's login
            assert time.monotonic() < deadline, log.read_text()
            time.sleep(0.05)
        who = subprocess.run([shell, "-c", aws_line], capture_output=True, text=True, timeout=120, env=env)
        assert who.returncode == 0, who.stderr
        assert json.loads(who.stdout)["Arn"] == "arn:aws:sts::123456789012:assumed-role/demo/tokend-aws", who.stdout
        buckets = subprocess.run([shell, "-c", google_line], capture_output=True, text=True, timeout=120, env=env)
        assert buckets.returncode == 0, buckets.stderr
        assert json.loads(buckets.stdout)["items"] == [{"name": "demo-bucket"}], buckets.stdout
    finally:
        process.send_signal(signal.SIGINT)
        process.wait(timeout=15)
    text = log.read_text()
    assert "not-this-one" not in text and "login provider=gcp outcome=ok" in text, text


def test_the_demo_banner_says_when_tokens_are_renewed(tmp_path) -> None:  # type: ignore[no-untyped-def]
    log = tmp_path / "demo.log"
    with log.open("w") as out:
        process = subprocess.Popen(tokend_command("demo", "--port", "0", "--lifetime", "20", "--duration", "20"),
                                   stdout=out, stderr=subprocess.STDOUT, env={**os.environ, "PYTHONUNBUFFERED": "1"})
    try:
        deadline = time.monotonic() + 30
        while log.read_text().count("login provider=") < 3:
            assert time.monotonic() < deadline and process.poll() is None, log.read_text()
            time.sleep(0.05)
    finally:
        process.send_signal(signal.SIGINT)
        process.wait(timeout=15)
    text = log.read_text()
    # 20 s tokens: first renewals at a random 35-77 % of the lifetime (7-15.4 s), later ones at 57-77 %.
    assert "renewed first at 7-15.4s (a random 35%-77% of its lifetime" in text, text
    assert "then at 11.3-15.3s into each new token's life" in text, text
    for delay in re.findall(r"login provider=(?:felloh|fts) outcome=ok .*next_refresh_in=([\d.]+)s", text):
        # Whole-second expiries (as Felloh's) make a token up to 1 s shorter than its nominal lifetime.
        assert 7 * 19 / 20 - 0.1 <= float(delay) <= 15.4 + 0.1, text


def test_init_writes_a_starting_config_that_passes_check_once_its_variables_are_set(tmp_path, monkeypatch) -> None:  # type: ignore[no-untyped-def]
    import json

    from tokend.cli.init import DEFAULT_KINDS, environment_variables, starter_config
    from tokend.config.audit import audit
    from tokend.config.settings import Settings
    from tokend.providers import PROVIDER_KINDS

    assert set(DEFAULT_KINDS) == set(PROVIDER_KINDS), "every kind has a starting table"
    pem = _rsa_pem()
    values = {"GITHUB_APP_PRIVATE_KEY": pem, "SALESFORCE_PRIVATE_KEY": pem, "GOOGLE_SERVICE_ACCOUNT_KEY": json.dumps({
        "type": "service_account", "client_email": "tokend@project.iam.gserviceaccount.com", "private_key": pem,
        "private_key_id": "1a2b3c", "token_uri": "https://oauth2.googleapis.com/token"})}
    for kind in DEFAULT_KINDS:  # each kind's table alone loads, and check finds nothing wrong with it
        single = tmp_path / f"{kind}.toml"
        single.write_text(starter_config([kind]))
        single.chmod(0o600)
        for name in environment_variables(single.read_text()):
            monkeypatch.setenv(name, values.get(name, f"value-of-{name}"))
        settings = Settings.load(single)
        # A kind that starts from another provider's token brings that provider along, before its own table.
        assert [config.kind for config in settings.providers.values()][-1] == kind
        assert [finding for finding in audit(settings, single) if finding.level == "error"] == [], kind

    # All of them, through the command line: a new file, mode 0600; check passes once the variables are set.
    output = tmp_path / "all.toml"
    written = tokend("init", *DEFAULT_KINDS, "--output", str(output))
    assert written.returncode == 0, written.stderr
    assert output.stat().st_mode & 0o777 == 0o600
    names = environment_variables(output.read_text())
    # Every table's variables (keyless kinds name none: their proof is the platform's token).
    assert set(names) == {name for kind in DEFAULT_KINDS for name in environment_variables(starter_config([kind]))}
    assert f"set {', '.join(names)}, then run" in written.stderr
    checked = tokend("--config", str(output), "check")  # the variables are set in this process's environment
    assert checked.returncode == 0 and "error:" not in checked.stdout, (checked.stdout, checked.stderr)
    assert f"config OK: {len(Settings.load(output).providers)} provider(s)" in checked.stdout
    for name in names:
        monkeypatch.delenv(name)
    unset = tokend("--config", str(output), "check")
    assert unset.returncode == 3 and f"environment variable {names[0]} is not set" in unset.stderr

    # With no kind: every kind's table commented out, which loads as it is (and serves nothing yet).
    plain = tokend("init")
    assert plain.returncode == 0 and "# [providers.felloh]" in plain.stdout and "\n[providers." not in plain.stdout
    bare = tmp_path / "bare.toml"
    bare.write_text(plain.stdout)
    bare.chmod(0o600)
    assert "no providers are configured" in tokend("--config", str(bare), "check").stdout

    before = output.read_text()
    refused = tokend("init", "felloh", "--output", str(output))
    assert refused.returncode == 1 and "never overwrites" in refused.stderr and output.read_text() == before
    unknown = tokend("init", "vault")
    assert unknown.returncode == 2 and "'vault' is not a provider kind" in unknown.stderr


def _rsa_pem() -> str:
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric import rsa

    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    return key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                             serialization.NoEncryption()).decode()


def complete_in_bash(script: str, *words: str) -> list[str]:
    """What bash offers for the last of `words` (the word being typed), with the script sourced."""
    import shutil

    driver = ('source "$1"; shift; COMP_WORDS=("$@"); COMP_CWORD=$(( $# - 1 )); _tokend; '
              'printf "%s\\n" "${COMPREPLY[@]}"')
    bash = shutil.which("bash") or "/bin/bash"
    result = subprocess.run([bash, "--norc", "-c", driver, "_", script, "tokend", *words], capture_output=True,
                            text=True, timeout=30)
    assert result.returncode == 0, result.stderr
    return [line for line in result.stdout.splitlines() if line]


def test_bash_completion_is_generated_from_the_parser_and_completes_commands(tmp_path) -> None:  # type: ignore[no-untyped-def]
    from tokend.cli.parser import build_parser

    script = tmp_path / "tokend.bash"
    script.write_text(tokend("completion", "bash").stdout)
    commands = next(action for action in build_parser()._actions if action.dest == "command").choices
    assert set(commands) <= set(complete_in_bash(str(script), "")), "every command of the parser is offered"
    assert complete_in_bash(str(script), "st") == ["status"]
    assert set(complete_in_bash(str(script), "felloh", "")) >= {"keys", "rotate"}
    assert complete_in_bash(str(script), "felloh", "keys", "cr") == ["create"]
    assert complete_in_bash(str(script), "run", "--log-level", "") == ["debug", "info", "warning", "error"]
    assert complete_in_bash(str(script), "--config", "check.toml", "ch") == ["check"]  # a value is not a command
    assert complete_in_bash(str(script), "init", "fl") == ["flotiq"]
    assert complete_in_bash(str(script), "get", "--f") == ["--format"]
    (tmp_path / "mine.toml").write_text("")
    assert complete_in_bash(str(script), "check", "--config", str(tmp_path / "mi")) == [str(tmp_path / "mine.toml")]


def test_zsh_and_fish_completion_come_from_the_same_table(tmp_path) -> None:  # type: ignore[no-untyped-def]
    shells = {shell: require_tool(shell, f"{DEBIAN} {shell}") for shell in ("zsh", "fish")}
    zsh = tmp_path / "_tokend"
    zsh.write_text(tokend("completion", "zsh").stdout)
    probe = (f'autoload -Uz compinit && compinit -u -d {tmp_path}/zcompdump; source {zsh}; '
             'print -r -- "$_comps[tokend]"; _tokend_words "felloh keys"; _tokend_value run --log-level')
    result = subprocess.run([str(shells["zsh"]), "-f", "-c", probe], capture_output=True, text=True, timeout=30)
    assert result.stdout.splitlines() == [
        "_tokend", "list create delete -h --help --config", "debug info warning error"]
    fish = tmp_path / "tokend.fish"
    fish.write_text(tokend("completion", "fish").stdout)

    def complete_in_fish(line: str) -> list[str]:
        found = subprocess.run([str(shells["fish"]), "--no-config", "-c", f"source {fish}; complete -C '{line}'"],
                               capture_output=True, text=True, timeout=30)
        assert found.returncode == 0, found.stderr
        return [candidate.split("\t")[0] for candidate in found.stdout.splitlines()]

    assert complete_in_fish("tokend sta") == ["status"]
    assert {"keys", "rotate"} <= set(complete_in_fish("tokend felloh "))
    assert complete_in_fish("tokend run --log-level ") == ["debug", "error", "info", "warning"]
    assert complete_in_fish("tokend --config x.toml ch") == ["check"]
