"""[metadata.azure]: azure-identity's ManagedIdentityCredential (from PyPI), run by `tokend exec`, gets an
oauth2_client_credentials provider's token from the App Service endpoint; and the endpoint's checks."""

from __future__ import annotations

import calendar
import json
import os
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from tests.daemon import Daemon, free_port, tokend_command, write_config
from tokend.testing import FakeOAuth2, FakeProviders, FakeServer

LIFETIME = 12.0  # renewed at about two thirds: well after a busy machine's SDK run
RESOURCE = "https://management.azure.com"
ASK = ("import sys; from azure.identity import ManagedIdentityCredential\n"
       "token = ManagedIdentityCredential().get_token(sys.argv[1])\n"
       "print(token.token, token.expires_on)\n")


@pytest.fixture
def oauth() -> Iterator[tuple[FakeOAuth2, str]]:
    fake = FakeOAuth2(lifetime=LIFETIME)
    with FakeServer(fake.app) as server:
        yield fake, server.url


def _config(tmp_path: Path, fakes: FakeProviders, url: str, port: int, clients: str = "") -> Path:
    return write_config(tmp_path, fakes, extra=f"""
[providers.arm]
kind = "oauth2_client_credentials"
token_url = "{url}/oauth/token"
client_id = "demo-client"
client_secret = "demo-client-secret"
scope = "{RESOURCE}/.default"

[metadata.azure]
listen = "127.0.0.1:{port}"
resources = {{ "{RESOURCE}" = "arm" }}
{clients}""")


@pytest.fixture
def azure(tmp_path: Path, fakes: FakeProviders, oauth: tuple[FakeOAuth2, str]) -> Iterator[tuple[Daemon, str]]:
    port = free_port()
    daemon = Daemon(_config(tmp_path, fakes, oauth[1], port), log_path=tmp_path / "daemon.log")
    daemon.start()
    yield daemon, f"http://127.0.0.1:{port}/msi/token"
    daemon.kill()


def _run_in_exec(daemon: Daemon, code: str, *args: str, env: dict[str, str] | None = None
                 ) -> subprocess.CompletedProcess[str]:
    return subprocess.run(tokend_command("--config", str(daemon.config), "exec", "--", sys.executable, "-c", code,
                                         *args), capture_output=True, text=True, timeout=120, env=env, check=False)


def test_managed_identity_credential_gets_the_providers_token_and_after_a_renewal_the_new_one(
    azure: tuple[Daemon, str], oauth: tuple[FakeOAuth2, str]
) -> None:
    daemon, _ = azure
    fake = oauth[0]
    before = daemon.get("/token/arm").json()
    asked = _run_in_exec(daemon, ASK, f"{RESOURCE}/.default")
    assert asked.returncode == 0, asked.stderr
    token, expires_on = asked.stdout.split()
    served = before if token == before["token"] else daemon.get("/token/arm").json()  # a renewal in between
    assert fake.is_valid(token) and token == served["token"]
    expires_at = calendar.timegm(time.strptime(served["expires_at"], "%Y-%m-%dT%H:%M:%SZ"))
    assert abs(int(expires_on) - expires_at) <= 1
    daemon.wait_until(lambda: daemon.get("/token/arm").json()["token"] != token, timeout=LIFETIME * 4,
                      what="the renewal")
    again = _run_in_exec(daemon, ASK, RESOURCE)
    assert again.returncode == 0, again.stderr
    renewed = again.stdout.split()[0]
    assert renewed != token and fake.is_valid(renewed)


def test_the_endpoint_answers_as_app_service_does(azure: tuple[Daemon, str]) -> None:
    daemon, url = azure
    env = _run_in_exec(daemon, "import os, json; print(json.dumps({k: os.environ[k] for k in "
                       "('IDENTITY_ENDPOINT', 'IDENTITY_HEADER')}))")
    variables = json.loads(env.stdout)
    assert variables["IDENTITY_ENDPOINT"] == url
    secret = variables["IDENTITY_HEADER"]
    # The resource as the SDKs send it (encoded), and unencoded.
    answer = httpx.get(f"{url}?api-version=2019-08-01&resource=https%3A%2F%2Fmanagement.azure.com%2F",
                       headers={"X-IDENTITY-HEADER": secret})
    assert answer.status_code == 200, answer.text
    body = answer.json()
    assert set(body) == {"access_token", "expires_on", "resource", "token_type"}
    assert body["access_token"] == daemon.get("/token/arm").json()["token"]
    assert body["resource"] == f"{RESOURCE}/" and body["expires_on"].isdigit()
    raw = httpx.get(f"{url}?api-version=2019-08-01&resource={RESOURCE}", headers={"X-IDENTITY-HEADER": secret})
    assert raw.json()["access_token"] == body["access_token"]
    assert answer.headers["cache-control"] == "no-store"
    # The secret lives in the daemon's memory alone: not in its log, nor in /status.
    assert secret not in daemon.log() and secret not in daemon.get("/status").text


def test_the_endpoints_refusals(azure: tuple[Daemon, str]) -> None:
    daemon, url = azure
    secret = json.loads(_run_in_exec(daemon, "import os, json; print(json.dumps(os.environ['IDENTITY_HEADER']))"
                                     ).stdout)
    query = f"?api-version=2019-08-01&resource={RESOURCE}"
    token = daemon.get("/token/arm").json()["token"]
    for headers, status in (
        ({}, 401), ({"X-IDENTITY-HEADER": "guess"}, 401),
        ({"X-IDENTITY-HEADER": secret, "X-Forwarded-For": "203.0.113.9"}, 403),
        ({"X-IDENTITY-HEADER": secret, "Host": "attacker.example"}, 403),
        ({"X-IDENTITY-HEADER": secret, "Origin": "https://attacker.example"}, 403),
    ):
        refused = httpx.get(url + query, headers=headers)
        assert refused.status_code == status, (headers, refused.text)
        assert token not in refused.text
    unknown = httpx.get(f"{url}?api-version=2019-08-01&resource=https://vault.azure.net",
                        headers={"X-IDENTITY-HEADER": secret})
    assert unknown.status_code == 400 and "vault.azure.net" in unknown.json()["message"]
    old = httpx.get(f"{url}?api-version=2017-09-01&resource={RESOURCE}", headers={"X-IDENTITY-HEADER": secret})
    assert old.status_code == 400
    # tokend's own routes are not served on the listener.
    own = httpx.get(url.replace("/msi/token", "/token/arm"), headers={"X-IDENTITY-HEADER": secret,
                                                                          "X-Tokend-Request": "1"})
    assert own.status_code == 404 and token not in own.text


def test_a_client_key_that_may_not_read_the_resources_providers_is_not_told_the_secret(
    tmp_path: Path, fakes: FakeProviders, oauth: tuple[FakeOAuth2, str]
) -> None:
    keys = {"app": "azure-app-client-key-0123456789", "other": "other-app-client-key-0123456789"}
    clients = (f'[clients.app]\nkey = "{keys["app"]}"\nproviders = ["arm"]\n'
               f'[clients.other]\nkey = "{keys["other"]}"\nproviders = ["fts"]\n')
    daemon = Daemon(_config(tmp_path, fakes, oauth[1], free_port(), clients), log_path=tmp_path / "daemon.log")
    daemon.client.headers["Authorization"] = f"Bearer {keys['app']}"
    show = "import os; print(os.environ.get('IDENTITY_HEADER', 'none'))"
    try:
        daemon.start()
        base = {k: v for k, v in os.environ.items() if not k.startswith("TOKEND_")}
        told = _run_in_exec(daemon, show, env={**base, "TOKEND_CLIENT_KEY": keys["app"]})
        untold = _run_in_exec(daemon, show, env={**base, "TOKEND_CLIENT_KEY": keys["other"]})
        assert told.returncode == 0 and told.stdout.strip() not in ("", "none")
        assert untold.returncode == 0 and untold.stdout.strip() == "none"
    finally:
        daemon.kill()


def test_resources_must_name_providers(tmp_path: Path, fakes: FakeProviders) -> None:
    from tokend.cli.main import main

    config = write_config(tmp_path, fakes, extra='[metadata.azure]\nlisten = "127.0.0.1:8770"\n'
                          'resources = { "https://vault.azure.net" = "nope" }\n')
    assert main(["--config", str(config), "check"]) == 3
    remote = write_config(tmp_path, fakes, extra='[metadata.azure]\nlisten = "0.0.0.0:8770"\n'
                          'resources = { "https://vault.azure.net" = "fts" }\n')
    assert main(["--config", str(remote), "check"]) == 3
