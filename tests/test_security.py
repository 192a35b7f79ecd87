"""One test per hardening measure of the local endpoint and the secrets, against the real daemon.

The last test sweeps a whole run (every log line, error body, /status answer and CLI output) for every
secret and every token issued in it.
"""

from __future__ import annotations

import json
import os
import stat
import subprocess
import time
from pathlib import Path

import httpx
import pytest

from tests.daemon import HEADERS, Daemon, accepting, tokend_command, write_config
from tokend.config.audit import audit
from tokend.config.settings import Settings
from tokend.testing import FakeProviders

APP_KEY = "app-key-0123456789-abcdefghijkl"
OPS_KEY = "ops-key-9876543210-zyxwvutsrqpo"


def _clients(tmp_path: Path) -> str:
    """Two clients: `app` reads fts only; `ops` reads everything and may administer."""
    for name, key in (("app_key", APP_KEY), ("ops_key", OPS_KEY)):
        (tmp_path / name).write_text(key + "\n")
        (tmp_path / name).chmod(0o600)
    return f"""
[clients.app]
key = {{ file = "{tmp_path / 'app_key'}" }}
providers = ["fts"]

[clients.ops]
key = {{ file = "{tmp_path / 'ops_key'}" }}
providers = ["felloh", "fts", "flotiq"]
admin = true
"""


def _bearer(key: str) -> dict[str, str]:
    return {**HEADERS, "Authorization": f"Bearer {key}"}


def _run(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(tokend_command(*args), capture_output=True, text=True, timeout=60,
                          env={**os.environ, **(env or {})})


def test_client_keys_are_required_and_scoped(daemon_factory, fakes, tmp_path) -> None:  # type: ignore[no-untyped-def]
    daemon = daemon_factory(extra=_clients(tmp_path))
    daemon.client.close()
    daemon.client = client = httpx.Client(base_url=daemon.url, timeout=30)  # closed with the daemon

    missing = client.get("/token/fts", headers=HEADERS)
    assert missing.status_code == 401 and missing.json()["error"] == "unauthorized"
    assert missing.headers["www-authenticate"].startswith("Bearer")
    assert client.get("/token/fts", headers=_bearer("not-a-key-of-anyone-at-all")).status_code == 401
    assert client.get("/status", headers=HEADERS).status_code == 401

    # The hot path and the full route agree: the fast path declines whatever it may not answer.
    for query in ("", "?format=raw", "?format=json&x=1"):
        assert client.get(f"/token/fts{query}", headers=_bearer(APP_KEY)).status_code == 200
        other = client.get(f"/token/felloh{query}", headers=_bearer(APP_KEY))
        assert other.status_code == 403 and other.json()["error"] == "forbidden", other.text
    # A name outside its list is 403 whether it exists or not: a key learns nothing beyond its providers.
    assert client.get("/token/no-such-provider", headers=_bearer(APP_KEY)).status_code == 403
    assert client.get("/token/no-such-provider", headers=_bearer(OPS_KEY)).status_code == 403
    assert client.post("/token/felloh/refresh", headers=_bearer(APP_KEY)).status_code == 403

    status = client.get("/status", headers=_bearer(APP_KEY)).json()
    assert list(status["providers"]) == ["fts"] and status["ready"] is True
    assert sorted(client.get("/status", headers=_bearer(OPS_KEY)).json()["providers"]) == ["felloh", "flotiq", "fts"]

    # Admin: reload and the Felloh key endpoints need an admin client whose list holds the provider.
    assert client.post("/reload", headers=_bearer(APP_KEY)).status_code == 403
    keys = f"/felloh/felloh/keys?organisation={fakes.felloh.organisation}"
    assert client.get(keys, headers=_bearer(APP_KEY)).status_code == 403
    assert client.post("/reload", headers=_bearer(OPS_KEY)).status_code == 200
    assert client.get(keys, headers=_bearer(OPS_KEY)).status_code == 200

    # The probes hold no secret and need no key.
    for path in ("/livez", "/readyz"):
        assert client.get(path).status_code == 200


def test_the_client_commands_send_the_key_from_a_file_or_the_environment(daemon_factory, tmp_path) -> None:  # type: ignore[no-untyped-def]
    daemon = daemon_factory(extra=_clients(tmp_path))
    config = str(daemon.config)
    by_file = _run("--config", config, "get", "fts", "--client-key-file", str(tmp_path / "app_key"))
    assert by_file.returncode == 0, by_file.stderr
    by_env = _run("--config", config, "get", "fts", env={"TOKEND_CLIENT_KEY": APP_KEY})
    assert by_env.returncode == 0 and by_env.stdout == by_file.stdout

    refused = _run("--config", config, "get", "felloh", env={"TOKEND_CLIENT_KEY": APP_KEY})
    assert refused.returncode == 7 and "may not read that provider" in refused.stderr
    keyless = _run("--config", config, "status")
    assert keyless.returncode == 7 and "client key is required" in keyless.stderr
    status = _run("--config", config, "status", "--client-key-file", str(tmp_path / "app_key"))
    assert status.returncode == 0 and "fts" in status.stdout and "felloh" not in status.stdout
    missing = _run("--config", config, "status", "--client-key-file", str(tmp_path / "nope"))
    assert missing.returncode == 1 and "cannot read the client key file" in missing.stderr


@pytest.mark.parametrize(("headers", "why"), [
    ({"Host": "attacker.example:8765"}, "loopback address"),  # DNS rebinding
    ({"X-Forwarded-For": "203.0.113.7"}, "proxy"),  # SSRF through a local proxy
    ({"Forwarded": "for=203.0.113.7"}, "proxy"),
    ({"Origin": "http://attacker.example"}, "web pages"),  # a browser's own request
    ({"X-Tokend-Request": ""}, "X-Tokend-Request"),  # a cross-site form cannot set it
])
def test_each_request_check_refuses(daemon_factory, headers: dict[str, str], why: str) -> None:  # type: ignore[no-untyped-def]
    daemon = daemon_factory()
    for path in ("/token/fts", "/token/fts?format=raw", "/status"):
        answer = httpx.get(daemon.url + path, headers={**HEADERS, **headers}, timeout=30)
        assert answer.status_code == 403 and why in answer.json()["message"], answer.text
        assert "token" not in answer.json() and "providers" not in answer.json()


def test_no_cors_header_is_ever_sent_and_preflights_are_refused(daemon_factory) -> None:  # type: ignore[no-untyped-def]
    daemon = daemon_factory()
    preflight = httpx.options(daemon.url + "/token/fts", timeout=30, headers={
        "Origin": "http://attacker.example", "Access-Control-Request-Method": "GET",
        "Access-Control-Request-Headers": "x-tokend-request",
    })
    assert preflight.status_code == 403 and preflight.json()["error"] == "forbidden"
    answers = [preflight, daemon.get("/token/fts"), daemon.get("/status"), daemon.get("/readyz"),
               daemon.get("/livez"), httpx.get(daemon.url + "/token/fts", headers={**HEADERS, "Origin": "null"})]
    for answer in answers:
        assert not [name for name in answer.headers if name.lower().startswith("access-control-")], answer.headers


def test_the_unix_socket_gets_the_configured_mode_and_group(tmp_path, fakes: FakeProviders) -> None:
    path = tmp_path / "tokend.sock"
    config = write_config(tmp_path, fakes)
    group = os.getgid()  # a group this process may give the file
    config.write_text(config.read_text().replace(
        "[server]\n", f'[server]\nsocket = "{path}"\nsocket_mode = "0660"\nsocket_group = "{group}"\n'))
    with (tmp_path / "daemon.log").open("wb") as log:
        process = subprocess.Popen(tokend_command("--config", str(config), "run"), stdout=log, stderr=log)
    try:
        deadline = time.monotonic() + 30
        while not accepting(path):
            assert time.monotonic() < deadline and process.poll() is None, (tmp_path / "daemon.log").read_text()
            time.sleep(0.05)
        info = path.stat()
        assert stat.S_ISSOCK(info.st_mode) and stat.S_IMODE(info.st_mode) == 0o660 and info.st_gid == group
        assert _run("--config", str(config), "get", "fts").returncode == 0  # found through the config
    finally:
        process.kill()
        process.wait(timeout=10)


def test_an_unknown_socket_group_stops_the_start_with_a_clear_error(tmp_path, fakes: FakeProviders) -> None:
    config = write_config(tmp_path, fakes)
    config.write_text(config.read_text().replace(
        "[server]\n", f'[server]\nsocket = "{tmp_path / "s.sock"}"\nsocket_group = "no-such-group-here"\n'))
    result = _run("--config", str(config), "run")
    assert result.returncode != 0
    assert "no group is named 'no-such-group-here'" in result.stderr and "Traceback" not in result.stderr
    assert not (tmp_path / "s.sock").exists()


def test_a_non_loopback_listener_is_refused_unless_allowed(tmp_path, fakes: FakeProviders) -> None:
    config = write_config(tmp_path, fakes)
    config.write_text(config.read_text().replace('host = "127.0.0.1"', 'host = "0.0.0.0"'))
    result = _run("--config", str(config), "check")
    assert result.returncode == 3 and "not a loopback address" in result.stderr
    config.write_text(config.read_text().replace('host = "0.0.0.0"',
                                                 'host = "0.0.0.0"\nallow_remote = true\nallowed_hosts = ["tokend"]'))
    result = _run("--config", str(config), "check")
    assert result.returncode == 0 and "warning: tokend listens on 0.0.0.0, beyond loopback" in result.stdout


def test_the_audit_finds_files_others_can_read_or_change(tmp_path, fakes: FakeProviders) -> None:
    config = write_config(tmp_path, fakes)
    config.chmod(0o600)
    assert [f.level for f in audit(Settings.load(config), config)] == ["warning"]  # plain http to the fakes
    (tmp_path / "fts_password").chmod(0o640)
    (tmp_path / "felloh_private_key").chmod(0o644)
    config.chmod(0o666)
    found = [str(f) for f in audit(Settings.load(config), config)]
    assert f"error: config file {config} can be changed by other users (mode 0666): chmod go-w it" in found
    assert any(f.startswith('error: provider "felloh", field "private_key": secret file') and "every user" in f
               for f in found)
    assert any(f.startswith('warning: provider "fts", field "password": secret file') and "its group" in f
               for f in found)
    socket_config = config.read_text().replace("[server]\n", f'[server]\nsocket = "{tmp_path / "s"}"\n'
                                                             'socket_mode = 0o666\n')
    config.write_text(socket_config)
    assert any("lets every user of this machine connect" in str(f) and f.level == "error"
               for f in audit(Settings.load(config), config))


def test_check_and_run_give_one_verdict_on_a_private_key_every_user_can_read(
    tmp_path: Path, fakes: FakeProviders, daemon_factory  # type: ignore[no-untyped-def]
) -> None:
    config = write_config(tmp_path, fakes)
    config.chmod(0o600)
    key = tmp_path / "felloh_private_key"
    key.chmod(0o644)
    said = (f'provider "felloh", field "private_key": secret file {key} is readable by every user (mode 0644): '
            "chmod 600 it")
    checked = _run("--config", str(config), "check")
    assert checked.returncode == 3 and f"error: {said}" in checked.stdout
    ran = _run("--config", str(config), "run")
    assert ran.returncode == 3 and "Traceback" not in ran.stderr
    assert ran.stderr == ("tokend: the config has 1 error(s) that expose a secret or a token to other users of this "
                          "machine; tokend does not run it until they are fixed (`tokend check` lists them too)\n"
                          f"  - {said}\n")
    key.chmod(0o600)
    daemon = daemon_factory()  # a running daemon: a reload to such a config is refused the same way
    (tmp_path / "felloh_private_key").chmod(0o644)
    reloaded = _run("--config", str(daemon.config), "reload")
    assert reloaded.returncode == 3 and "expose a secret or a token" in reloaded.stderr and said in reloaded.stderr
    assert daemon.get("/readyz").status_code == 200


def test_secrets_never_show_in_a_repr_or_a_config_error(tmp_path, fakes: FakeProviders, monkeypatch) -> None:  # type: ignore[no-untyped-def]
    config = write_config(tmp_path, fakes, extra=_clients(tmp_path))
    settings = Settings.load(config)
    secrets = [fakes.felloh.private_key, fakes.fintech_studios.password, APP_KEY, OPS_KEY]
    assert not [s for s in secrets if s in repr(settings) or s in str(settings)]
    # A bad value next to a secret: the error names the field, never the value.
    config.write_text(config.read_text() + '\n[providers.bad]\nkind = "static"\nkey = "plain-secret-xyz-123"\n'
                      'header = 42\n')
    result = _run("--config", str(config), "check")
    assert result.returncode == 3 and 'provider "bad", field "header"' in result.stderr
    assert "plain-secret-xyz-123" not in result.stdout + result.stderr


def test_a_whole_run_never_shows_a_secret_or_a_token(tmp_path, fakes: FakeProviders) -> None:
    """Everything a run prints or serves, except the tokens it is asked for, swept for every secret."""
    config = write_config(tmp_path, fakes, min_refresh_interval=0.5, extra=_clients(tmp_path))
    daemon = Daemon(config, log_path=tmp_path / "daemon.log")
    outputs: list[str] = []
    ops = httpx.Client(base_url=daemon.url, headers=_bearer(OPS_KEY), timeout=30)
    try:
        daemon.client.close()
        daemon.client = ops  # closed by daemon.kill()
        daemon.start()
        outputs.append(ops.get("/status").text)
        outputs.append(ops.get("/readyz").text)
        outputs += [ops.get("/token/felloh", headers={"Host": "evil.example"}).text,
                    ops.get("/token/nope").text, ops.put("/token/fts").text]
        fakes.felloh.fail(401)  # rejected, with the daemon holding a valid token
        failed_refresh(daemon, ops, "felloh", outputs)
        fakes.felloh.recover()
        # An upstream that echoes what it was sent: the error must be scrubbed before it is logged or served.
        echo = {"message": f"login {fakes.fintech_studios.password} with {fakes.fintech_studios.api_key} failed"}
        fakes.fintech_studios.fail(503, body=json.dumps(echo))
        failed_refresh(daemon, ops, "fts", outputs)
        fakes.fintech_studios.recover()
        outputs.append(ops.get("/status").text)
        env = {"TOKEND_CLIENT_KEY": OPS_KEY}
        for command in (["status"], ["status", "--json"], ["check"], ["reload"]):
            result = _run("--config", str(config), *command, env=env)
            outputs += [result.stdout, result.stderr]
        # The key listing shows each key's public half by design (it names the key); never a secret half.
        listing = _run("--config", str(config), "felloh", "keys", "list", "--provider", "felloh",
                       "--organisation", fakes.felloh.organisation, env=env)
        assert listing.returncode == 0 and fakes.felloh.public_key in listing.stdout
        outputs.append(listing.stdout.replace(fakes.felloh.public_key, "<public key>") + listing.stderr)
        config.write_text(config.read_text() + '\n[providers.broken]\nkind = "static"\nkey = "plain-9f8e7d6c5b4a"\n'
                          "header = 1\n")
        result = _run("--config", str(config), "reload", env=env)
        assert result.returncode == 3
        outputs += [result.stdout, result.stderr]
        code, _ = daemon.terminate()
        assert code == 0
    finally:
        daemon.kill()
    outputs.append(daemon.log())

    secrets = [fakes.felloh.public_key, fakes.felloh.private_key, fakes.fintech_studios.api_key,
               fakes.fintech_studios.password, *fakes.flotiq.api_keys, APP_KEY, OPS_KEY, "plain-9f8e7d6c5b4a"]
    tokens = [*fakes.felloh.issued, *fakes.fintech_studios.issued]
    assert len(tokens) >= 2
    text = "\n".join(outputs)
    assert "login provider=felloh outcome=rejected" in text  # the sweep covers the failure paths too
    leaked = [value for value in secrets + tokens if value in text]
    assert leaked == [], f"{len(leaked)} secret(s) or token(s) leaked"


def failed_refresh(daemon: Daemon, client: httpx.Client, name: str, outputs: list[str]) -> None:
    """Force refreshes until one fails (the first may fall within min_refresh_interval of the last login)."""
    def refused() -> bool:
        answer = client.post(f"/token/{name}/refresh")
        if answer.status_code == 502:  # not the tokens served meanwhile: those were asked for
            outputs.append(answer.text)
        return answer.status_code == 502

    daemon.wait_until(refused, what=f"a failed forced refresh of {name}")


def test_a_client_key_compare_takes_every_key_into_account(tmp_path, fakes: FakeProviders) -> None:
    from tokend.api.guard import ANYONE, RequestGuard

    settings = Settings.load(write_config(tmp_path, fakes, extra=_clients(tmp_path)))
    guard = RequestGuard(settings.server)

    def scope(key: str) -> dict[str, object]:
        return {"headers": [(b"authorization", f"Bearer {key}".encode())], "client": ("127.0.0.1", 1)}

    assert guard.identify(scope(APP_KEY), settings.clients).name == "app"  # type: ignore[union-attr]
    assert guard.identify(scope(OPS_KEY), settings.clients).name == "ops"  # type: ignore[union-attr]
    assert guard.identify(scope(APP_KEY[:-1]), settings.clients).status == 401  # type: ignore[union-attr]
    assert guard.identify(scope(APP_KEY + "x"), settings.clients).status == 401  # type: ignore[union-attr]
    assert guard.identify({"headers": [(b"authorization", b"Basic abc")]}, settings.clients).status == 401  # type: ignore[union-attr]
    assert guard.identify(scope("anything"), {}) is ANYONE
