"""[metadata.gce]: google-auth from PyPI (google.auth.default(), compute_engine.Credentials, fetch_id_token),
run by `tokend exec`, gets a google_service_account provider's tokens from the metadata server; and the
server's Metadata-Flavor and relay rules."""

from __future__ import annotations

import base64
import json
import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from tests.daemon import Daemon, free_port, tokend_command, write_config
from tokend.testing import FakeGoogle, FakeProviders, FakeServer

LIFETIME = 12.0  # renewed at about two thirds: well after a busy machine's google-auth run
READ_ONLY = "https://www.googleapis.com/auth/devstorage.read_only"
ASK = f"""
import json, sys
import google.auth
from google.auth import compute_engine
from google.auth.transport.requests import Request
from google.oauth2 import id_token

request = Request()
credentials, project = google.auth.default()
credentials.refresh(request)
scoped = compute_engine.Credentials(scopes=["{READ_ONLY}"])
scoped.refresh(request)
print(json.dumps({{"kind": type(credentials).__module__, "project": project, "token": credentials.token,
                  "email": credentials.service_account_email, "scoped": scoped.token,
                  "id_token": id_token.fetch_id_token(request, "https://run.example")}}))
"""


@pytest.fixture
def google(request: pytest.FixtureRequest) -> Iterator[FakeGoogle]:
    fake = FakeGoogle(lifetime=getattr(request, "param", LIFETIME))
    with FakeServer(fake.app) as server:
        fake.token_uri = f"{server.url}/token"
        yield fake


@pytest.fixture
def gce(tmp_path: Path, fakes: FakeProviders, google: FakeGoogle) -> Iterator[tuple[Daemon, str]]:
    key = tmp_path / "service-account.json"
    key.touch(mode=0o600)
    key.write_text(google.key_file())
    port = free_port()
    config = write_config(tmp_path, fakes, extra=f"""
[providers.gcp]
kind = "google_service_account"
key = {{ file = "{key}" }}

[metadata.gce]
listen = "127.0.0.1:{port}"
provider = "gcp"
project_id = "demo-project"
""")
    daemon = Daemon(config, log_path=tmp_path / "daemon.log")
    daemon.start()
    yield daemon, f"http://127.0.0.1:{port}"
    daemon.kill()


def _google_auth(daemon: Daemon, home: Path) -> dict[str, str]:
    # No Application Default Credentials file nor variable: google-auth must find the metadata server.
    env = {key: value for key, value in os.environ.items() if not key.startswith(("GOOGLE_", "GCE_", "CLOUDSDK_"))}
    env.update(HOME=str(home), CLOUDSDK_CONFIG=str(home / "gcloud"))
    asked = subprocess.run(tokend_command("--config", str(daemon.config), "exec", "--", sys.executable, "-c", ASK),
                           capture_output=True, text=True, timeout=120, env=env, check=False)
    assert asked.returncode == 0, asked.stderr
    answer: dict[str, str] = json.loads(asked.stdout)
    return answer


def _claims(jwt: str) -> dict[str, object]:
    payload = jwt.split(".")[1]
    claims: dict[str, object] = json.loads(base64.urlsafe_b64decode(payload + "=" * (-len(payload) % 4)))
    return claims


def test_google_auth_gets_tokens_id_tokens_and_after_a_renewal_the_new_one(
    gce: tuple[Daemon, str], google: FakeGoogle, tmp_path: Path
) -> None:
    daemon, _ = gce
    before = daemon.get("/token/gcp").json()["token"]
    answer = _google_auth(daemon, tmp_path)
    after = daemon.get("/token/gcp").json()["token"]  # a renewal may come in between on a busy machine
    assert answer["kind"] == "google.auth.compute_engine.credentials"
    assert (answer["project"], answer["email"]) == ("demo-project", google.client_email)
    assert answer["token"] in (before, after) and google.is_valid(answer["token"])
    # Other scopes and an ID token are minted for the asker.
    assert answer["scoped"] != answer["token"] and google.is_valid(answer["scoped"])
    claims = _claims(answer["id_token"])
    assert (claims["aud"], claims["email"]) == ("https://run.example", google.client_email)
    daemon.wait_until(lambda: daemon.get("/token/gcp").json()["token"] != answer["token"], timeout=LIFETIME * 4,
                      what="the renewal")
    renewed = _google_auth(daemon, tmp_path)["token"]
    assert renewed != answer["token"] and google.is_valid(renewed)


def test_the_routes_and_their_answers(gce: tuple[Daemon, str], google: FakeGoogle) -> None:
    _, url = gce
    flavor = {"Metadata-Flavor": "Google"}
    accounts = f"{url}/computeMetadata/v1/instance/service-accounts"
    probe = httpx.get(url + "/", headers=flavor)
    assert probe.status_code == 200 and probe.headers["metadata-flavor"] == "Google"
    info = httpx.get(f"{accounts}/default/?recursive=true", headers=flavor).json()
    assert info == {"aliases": ["default"], "email": google.client_email,
                    "scopes": ["https://www.googleapis.com/auth/cloud-platform"]}
    assert httpx.get(f"{accounts}/default/email", headers=flavor).text == google.client_email
    by_email = httpx.get(f"{accounts}/{google.client_email}/token", headers=flavor)
    assert by_email.status_code == 200 and set(by_email.json()) == {"access_token", "expires_in", "token_type"}
    assert 0 < by_email.json()["expires_in"] <= LIFETIME
    identity = httpx.get(f"{accounts}/default/identity", params={"audience": "aud-1", "format": "full"},
                         headers=flavor)
    assert identity.status_code == 200 and _claims(identity.text)["aud"] == "aud-1"
    again = httpx.get(f"{accounts}/default/identity", params={"audience": "aud-1"}, headers=flavor)
    assert again.text == identity.text  # kept while most of its life is left: one login for many askers
    assert httpx.get(f"{accounts}/default/identity", headers=flavor).status_code == 400
    assert httpx.get(f"{url}/computeMetadata/v1/project/project-id", headers=flavor).text == "demo-project"
    assert httpx.get(f"{url}/computeMetadata/v1/universe/universe-domain", headers=flavor).status_code == 404
    assert httpx.get(f"{accounts}/someone-else@example.com/token", headers=flavor).status_code == 404


def test_without_the_flavor_header_or_through_a_proxy_it_is_refused(gce: tuple[Daemon, str]) -> None:
    daemon, url = gce
    token_url = f"{url}/computeMetadata/v1/instance/service-accounts/default/token"
    token = daemon.get("/token/gcp").json()["token"]
    for headers in ({}, {"Metadata-Flavor": "google"}, {"Metadata-Flavor": "Google", "X-Forwarded-For": "10.0.0.1"},
                    {"Metadata-Flavor": "Google", "Host": "metadata.google.internal.attacker.example"}):
        refused = httpx.get(token_url, headers=headers)
        assert refused.status_code == 403, headers
        assert refused.headers["metadata-flavor"] == "Google" and token not in refused.text


def test_the_provider_must_be_a_google_service_account(tmp_path: Path, fakes: FakeProviders) -> None:
    from tokend.cli.main import main

    config = write_config(tmp_path, fakes, extra='[metadata.gce]\nlisten = "127.0.0.1:8771"\nprovider = "fts"\n')
    assert main(["--config", str(config), "check"]) == 3


@pytest.mark.parametrize("google", [3600.0], indirect=True)  # no renewal of the provider's own token meanwhile
def test_endless_new_audiences_cost_a_bounded_number_of_logins(gce: tuple[Daemon, str], google: FakeGoogle) -> None:
    from tokend.outputs.gce import MAX_MINTED

    _, url = gce
    identity = f"{url}/computeMetadata/v1/instance/service-accounts/default/identity"
    logins = google.logins
    with httpx.Client(headers={"Metadata-Flavor": "Google"}, timeout=30) as client:
        answers = [client.get(identity, params={"audience": f"aud-{n}"}).status_code for n in range(MAX_MINTED + 5)]
        assert answers == [200] * MAX_MINTED + [503] * 5
        assert google.logins - logins == MAX_MINTED
        # One already held is still answered.
        assert client.get(identity, params={"audience": "aud-0"}).status_code == 200


@pytest.mark.parametrize("google", [3600.0], indirect=True)  # no renewal of the provider's own token meanwhile
def test_failing_mints_are_remembered_shared_and_counted_toward_the_cap(
    gce: tuple[Daemon, str], google: FakeGoogle
) -> None:
    import concurrent.futures

    from tokend.outputs.gce import MAX_MINTED

    _, url = gce
    identity = f"{url}/computeMetadata/v1/instance/service-accounts/default/identity"
    google.fail(500)  # every login from now on
    attempts = google.login_attempts
    with httpx.Client(headers={"Metadata-Flavor": "Google"}, timeout=30) as client:
        # One failing audience asked again and again: one login, the others answered from its failure.
        assert {client.get(identity, params={"audience": "failing"}).status_code for _ in range(15)} == {503}
        assert google.login_attempts - attempts == 1
        # Many processes asking at once for one new audience share one attempt.
        with concurrent.futures.ThreadPoolExecutor(30) as pool:
            asked = list(pool.map(lambda _: client.get(identity, params={"audience": "together"}).status_code,
                                  range(30)))
        assert set(asked) == {503} and google.login_attempts - attempts == 2
        # Failed audiences count toward the cap: endless new ones cost a bounded number of logins.
        for n in range(150):
            assert client.get(identity, params={"audience": f"aud-{n}"}).status_code == 503
        assert google.login_attempts - attempts <= MAX_MINTED
        token = f"{url}/computeMetadata/v1/instance/service-accounts/default/token"
        minted = client.get(token, params={"scopes": READ_ONLY})
        assert minted.status_code == 503 and google.login_attempts - attempts <= MAX_MINTED


def _raw_get(url: str, path: str, headers: list[tuple[str, str]]) -> str:
    """A request as written, headers repeated and all (httpx would merge or refuse some): the status line."""
    import socket

    host, port = url.removeprefix("http://").split(":")
    with socket.create_connection((host, int(port)), timeout=10) as sock:
        lines = [f"GET {path} HTTP/1.1", *(f"{name}: {value}" for name, value in headers), "Connection: close"]
        sock.sendall(("\r\n".join(lines) + "\r\n\r\n").encode())
        return sock.recv(65536).decode("latin-1").split("\r\n", 1)[0]


def test_browser_headers_alone_two_hosts_and_a_double_encoded_path_are_refused(gce: tuple[Daemon, str]) -> None:
    _, url = gce
    token_path = "/computeMetadata/v1/instance/service-accounts/default/token"
    flavor = ("Metadata-Flavor", "Google")
    assert " 200 " in _raw_get(url, token_path, [("Host", "127.0.0.1"), flavor])
    for header in (("Sec-Fetch-Dest", "empty"), ("Sec-Fetch-User", "?1")):
        assert " 403 " in _raw_get(url, token_path, [("Host", "127.0.0.1"), flavor, header]), header
    two_hosts = [("Host", "attacker.example"), ("Host", "127.0.0.1"), flavor]
    assert " 403 " in _raw_get(url, token_path, two_hosts)
    # %252F is `%2F` once decoded (the server decodes once): never a `/` that makes a path served.
    assert " 404 " in _raw_get(url, token_path.replace("default/token", "default%252Ftoken"),
                               [("Host", "127.0.0.1"), flavor])


def test_check_refuses_a_metadata_listener_on_the_apis_own_port(tmp_path: Path, fakes: FakeProviders,
                                                                capsys: pytest.CaptureFixture[str]) -> None:
    from tokend.cli.main import main

    key = tmp_path / "service-account.json"
    key.touch(mode=0o600)
    key.write_text(FakeGoogle().key_file("http://127.0.0.1:9/token"))
    config = write_config(tmp_path, fakes, extra=f'[providers.gcp]\nkind = "google_service_account"\n'
                                                 f'key = {{ file = "{key}" }}\n')
    port = next(line for line in config.read_text().splitlines() if line.startswith("port")).split("=")[1].strip()
    text = config.read_text()
    for listen in (f"127.0.0.1:{int(port) + 1}", f"127.0.0.1:{port}"):
        config.write_text(text + f'[metadata.gce]\nlisten = "{listen}"\nprovider = "gcp"\n')
        assert main(["--config", str(config), "check"]) == (0 if listen.endswith(str(int(port) + 1)) else 3)
    shown = capsys.readouterr()
    assert "the API's own address" in shown.out + shown.err
