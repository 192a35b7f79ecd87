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
