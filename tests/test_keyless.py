"""Keyless logins against the verifying fakes (tokend.testing.federation): subject token sources, RFC 8693,
GitHub Actions' OIDC token, Google workload identity and impersonation, Entra's federated credential; the
errors each failure leaves in /status; the config's refusals."""

from __future__ import annotations

import asyncio
import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.daemon import Daemon, free_port
from tokend.config.settings import Settings
from tokend.errors import ConfigError, CredentialsRejected, UpstreamError
from tokend.renewal.logins import login_once
from tokend.testing import (
    FakeEntraFederated,
    FakeGoogleFederation,
    FakeOIDCIssuer,
    FakeServer,
    FakeTokenExchange,
)

SA = "deployer@demo-project.iam.gserviceaccount.com"
STS_AUDIENCE = "https://sts.example.com"


@pytest.fixture
def google(issuer: FakeOIDCIssuer) -> Iterator[tuple[FakeGoogleFederation, str]]:
    fake = FakeGoogleFederation(issuer)
    with FakeServer(fake.app) as server:
        yield fake, server.url


@pytest.fixture
def rfc8693(issuer: FakeOIDCIssuer) -> Iterator[tuple[FakeTokenExchange, str]]:
    fake = FakeTokenExchange(issuer)
    with FakeServer(fake.app) as server:
        yield fake, server.url


def _settings(tmp_path: Path, providers: str, port: int | None = None, extra: str = "") -> Path:
    config = tmp_path / "tokend.toml"
    config.write_text(f'[server]\nhost = "127.0.0.1"\nport = {port or free_port()}\n\n{providers}\n{extra}')
    return config


def _exchanged_from_file(tmp_path: Path, url: str, token_file: Path) -> Path:
    """A config whose provider `exchanged` exchanges the token in `token_file` at the fake STS at `url`."""
    return _settings(tmp_path, f"""
[providers.exchanged]
kind = "oauth2_token_exchange"
token_url = "{url}/oauth2/token"
subject_token = {{ file = "{token_file}" }}
""")


def _login(config: Path, name: str) -> Any:
    return asyncio.run(login_once(name, Settings.load(config)))


def _wif(url: str, google: FakeGoogleFederation, subject: str, *, service_account: bool = True) -> str:
    account = f'service_account = "{SA}"\n' if service_account else ""
    return f"""
[providers.gcp]
kind = "google_workload_identity"
audience = "{google.pool_provider}"
subject_token = {subject}
sts_url = "{url}/v1/token"
iam_url = "{url}"
{account}"""


# -- subject token sources -----------------------------------------------------------------------------------


def test_a_subject_token_file_rewritten_between_two_logins_is_read_anew(
    tmp_path: Path, issuer: FakeOIDCIssuer, rfc8693: tuple[FakeTokenExchange, str]
) -> None:
    fake, url = rfc8693
    token_file = tmp_path / "token"
    issuer.write(token_file, STS_AUDIENCE)
    config = _settings(tmp_path, f"""
[providers.exchanged]
kind = "oauth2_token_exchange"
token_url = "{url}/oauth2/token"
subject_token = {{ file = "{token_file}" }}
audience = ["https://api.example.com", "https://other.example.com"]
resource = "https://api.example.com/v1"
""")
    first = _login(config, "exchanged")
    issuer.subject = "system:serviceaccount:apps:rotated"
    issuer.write(token_file, STS_AUDIENCE)
    second = _login(config, "exchanged")
    assert fake.is_valid(first.token) and fake.is_valid(second.token) and first.token != second.token
    assert fake.subjects == ["system:serviceaccount:apps:billing", "system:serviceaccount:apps:rotated"]
    # Repeated parameters, and no requested_token_type unless set (RFC 8693 section 2.1).
    assert fake.last_fields["audience"] == ["https://api.example.com", "https://other.example.com"]
    assert fake.last_fields["resource"] == ["https://api.example.com/v1"]
    assert "requested_token_type" not in fake.last_fields and "client_id" not in fake.last_fields


@pytest.mark.parametrize(("content", "said"), [
    (None, "does not exist: check that the platform's token is mounted there"),
    ("", "is empty"),
    ("\n", "is empty"),
    ("x" * 70_000, "is larger than 65536 bytes"),
])
def test_a_missing_or_empty_subject_file_is_a_sentence(
    tmp_path: Path, rfc8693: tuple[FakeTokenExchange, str], content: str | None, said: str
) -> None:
    token_file = tmp_path / "token"
    if content is not None:
        token_file.write_text(content)
    config = _exchanged_from_file(tmp_path, rfc8693[1], token_file)
    with pytest.raises(UpstreamError) as failed:
        _login(config, "exchanged")
    assert f"subject_token file {token_file} {said}" in failed.value.message
    assert rfc8693[0].login_attempts == 0  # nothing sent


def test_an_expired_subject_token_is_refused_before_it_is_sent_and_never_shown(
    tmp_path: Path, issuer: FakeOIDCIssuer, rfc8693: tuple[FakeTokenExchange, str]
) -> None:
    token_file = tmp_path / "token"
    token = issuer.write(token_file, STS_AUDIENCE, lifetime=-60)
    config = _exchanged_from_file(tmp_path, rfc8693[1], token_file)
    with pytest.raises(UpstreamError) as failed:
        _login(config, "exchanged")
    assert "is a JWT that expired at" in failed.value.message and "kubelet" in failed.value.message
    assert token not in failed.value.message and rfc8693[0].login_attempts == 0


def test_a_fifo_or_folder_is_not_read(tmp_path: Path, rfc8693: tuple[FakeTokenExchange, str]) -> None:
    import os

    fifo = tmp_path / "fifo"
    os.mkfifo(fifo)
    config = _exchanged_from_file(tmp_path, rfc8693[1], fifo)
    with pytest.raises(UpstreamError, match="is not a regular file"):
        _login(config, "exchanged")


def test_client_authentication_of_a_token_exchange(tmp_path: Path, issuer: FakeOIDCIssuer) -> None:
    fake = FakeTokenExchange(issuer, client=("exchanger", "s3cret"))
    with FakeServer(fake.app) as server:
        config = _settings(tmp_path, f"""
[providers.exchanged]
kind = "oauth2_token_exchange"
token_url = "{server.url}/oauth2/token"
subject_token = "{issuer.issue(STS_AUDIENCE)}"
auth_method = "client_secret_basic"
client_id = "exchanger"
client_secret = "s3cret"
requested_token_type = "urn:ietf:params:oauth:token-type:access_token"
scope = ["read", "write"]
""")
        assert fake.is_valid(_login(config, "exchanged").token)
    assert fake.last_fields["requested_token_type"] == ["urn:ietf:params:oauth:token-type:access_token"]
    assert fake.last_fields["scope"] == ["read write"]


@pytest.mark.parametrize(("providers", "said"), [
    ("""[providers.a]\nkind = "oauth2_token_exchange"\ntoken_url = "http://127.0.0.1:1/t"
subject_token = { provider = "missing" }""", 'reads the credentials of provider "missing": no provider is named so'),
    ("""[providers.a]\nkind = "oauth2_token_exchange"\ntoken_url = "http://127.0.0.1:1/t"
subject_token = { provider = "b" }\n[providers.b]\nkind = "oauth2_token_exchange"
token_url = "http://127.0.0.1:1/t"\nsubject_token = { provider = "a" }""", "in a loop (a -> b -> a)"),
    ("""[providers.a]\nkind = "google_impersonation"\nsource = "a"
service_account = "x@p.iam.gserviceaccount.com\"""", "reads its own credentials"),
    ("""[providers.a]\nkind = "oauth2_client_credentials"\ntoken_url = "http://127.0.0.1:1/t"\nclient_id = "c"
auth_method = "client_assertion\"""", 'auth_method = "client_assertion" and client_assertion go together'),
    ("""[providers.a]\nkind = "google_workload_identity"\naudience = "https://wrong"
subject_token = "t\"""", "is not a workload identity pool provider"),
    ("""[providers.a]\nkind = "google_impersonation"\nsource = "b"\nservice_account = "x@p.iam.gserviceaccount.com"
delegates = ["x@p.iam.gserviceaccount.com"]\n[providers.b]\nkind = "static"\nkey = "k\"""",
     'is not a delegate as the IAM API takes it: "projects/-/serviceAccounts/EMAIL"'),
])
def test_the_config_refuses(tmp_path: Path, providers: str, said: str) -> None:
    with pytest.raises(ConfigError) as refused:
        Settings.load(_settings(tmp_path, providers))
    assert said in " ".join(refused.value.problems)


# -- GitHub Actions --------------------------------------------------------------------------------------------


def test_github_actions_oidc_chained_into_a_token_exchange_and_into_workload_identity(
    tmp_path: Path, issuer: FakeOIDCIssuer, rfc8693: tuple[FakeTokenExchange, str],
    google: tuple[FakeGoogleFederation, str], monkeypatch: pytest.MonkeyPatch,
) -> None:
    # GitHub's URL already carries ?api-version=2.0: the audience is one more parameter.
    monkeypatch.setenv("ACTIONS_ID_TOKEN_REQUEST_URL", f"{issuer.url}/_apis/token?api-version=2.0")
    monkeypatch.setenv("ACTIONS_ID_TOKEN_REQUEST_TOKEN", issuer.request_token)
    fake_google, google_url = google
    config = _settings(tmp_path, f"""
[providers.github]
kind = "github_actions_oidc"
audience = "{STS_AUDIENCE}"

[providers.github_gcp]
kind = "github_actions_oidc"
audience = "{fake_google.allowed_audience}"

[providers.exchanged]
kind = "oauth2_token_exchange"
token_url = "{rfc8693[1]}/oauth2/token"
subject_token = {{ provider = "github" }}
""" + _wif(google_url, fake_google, '{ provider = "github_gcp" }'))
    oidc = _login(config, "github")
    assert issuer.verify(oidc.token, STS_AUDIENCE) and oidc.expires_at == pytest.approx(
        json.loads(_payload(oidc.token))["exp"])
    assert rfc8693[0].is_valid(_login(config, "exchanged").token)
    assert fake_google.is_valid(_login(config, "gcp").token)


def test_github_actions_oidc_outside_a_job_fails_its_login_with_a_sentence(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("ACTIONS_ID_TOKEN_REQUEST_URL", raising=False)
    config = _settings(tmp_path, '[providers.github]\nkind = "github_actions_oidc"\naudience = "a"')
    with pytest.raises(UpstreamError, match="ACTIONS_ID_TOKEN_REQUEST_URL is not set: run tokend inside"):
        _login(config, "github")


def test_a_wrong_request_token_names_the_workflow_permission(tmp_path: Path, issuer: FakeOIDCIssuer) -> None:
    config = _settings(tmp_path, f"""
[providers.github]
kind = "github_actions_oidc"
request_url = "{issuer.url}/_apis/token?api-version=2.0"
request_token = "not-the-job-token"
""")
    with pytest.raises(CredentialsRejected, match="permissions: id-token: write"):
        _login(config, "github")


# -- Google ---------------------------------------------------------------------------------------------------


def test_workload_identity_is_two_steps_in_one_login(
    tmp_path: Path, issuer: FakeOIDCIssuer, google: tuple[FakeGoogleFederation, str]
) -> None:
    fake, url = google
    token_file = tmp_path / "token"
    issuer.write(token_file, fake.allowed_audience)
    config = _settings(tmp_path, _wif(url, fake, f'{{ file = "{token_file}" }}'))
    credential = _login(config, "gcp")
    assert credential.token.startswith("ya29.sa-") and fake.is_valid(credential.token)
    assert (fake.logins, fake.iam_calls) == (2, 1)  # the STS token, then the service account's
    assert fake.last_sts_form["scope"] == "https://www.googleapis.com/auth/cloud-platform"
    assert fake.last_iam_body == {"scope": ["https://www.googleapis.com/auth/cloud-platform"], "lifetime": "3600s",
                                  "delegates": []}


def test_workload_identity_from_gclouds_credentials_file(
    tmp_path: Path, issuer: FakeOIDCIssuer, google: tuple[FakeGoogleFederation, str]
) -> None:
    fake, url = google
    token_file = tmp_path / "token.json"
    token_file.write_text(json.dumps({"access_token": issuer.issue(fake.allowed_audience)}))
    (tmp_path / "wif.json").write_text(json.dumps({
        "type": "external_account", "audience": fake.pool_provider,
        "subject_token_type": "urn:ietf:params:oauth:token-type:jwt", "token_url": f"{url}/v1/token",
        "service_account_impersonation_url": f"{url}/v1/projects/-/serviceAccounts/{SA}:generateAccessToken",
        "service_account_impersonation": {"token_lifetime_seconds": 1800},
        "credential_source": {"file": str(token_file), "format": {"type": "json",
                                                                  "subject_token_field_name": "access_token"}}}))
    config = _settings(tmp_path, '[providers.gcp]\nkind = "google_workload_identity"\ncredentials_file = "wif.json"')
    assert fake.is_valid(_login(config, "gcp").token)
    assert fake.last_iam_body["lifetime"] == "1800s"


def test_workload_identity_from_a_credential_source_url(
    tmp_path: Path, issuer: FakeOIDCIssuer, google: tuple[FakeGoogleFederation, str]
) -> None:
    fake, url = google
    (tmp_path / "wif.json").write_text(json.dumps({
        "type": "external_account", "audience": fake.pool_provider, "token_url": f"{url}/v1/token",
        "subject_token_type": "urn:ietf:params:oauth:token-type:jwt",
        "credential_source": {"url": f"{issuer.url}/_apis/token?api-version=2.0&audience={fake.allowed_audience}",
                              "headers": {"Authorization": f"Bearer {issuer.request_token}"},
                              "format": {"type": "json", "subject_token_field_name": "value"}}}))
    config = _settings(tmp_path, '[providers.gcp]\nkind = "google_workload_identity"\ncredentials_file = "wif.json"')
    credential = _login(config, "gcp")
    assert credential.token.startswith("ya29.fed-") and fake.is_valid(credential.token)  # no service account


def test_impersonation_access_and_id_tokens_from_workload_identity(
    tmp_path: Path, issuer: FakeOIDCIssuer, google: tuple[FakeGoogleFederation, str]
) -> None:
    fake, url = google
    config = _settings(tmp_path, _wif(url, fake, f'"{issuer.issue(fake.allowed_audience)}"', service_account=False)
                       + f"""
[providers.deployer]
kind = "google_impersonation"
source = "gcp"
service_account = "{SA}"
delegates = ["projects/-/serviceAccounts/{SA}"]
lifetime = 600
iam_url = "{url}"

[providers.run]
kind = "google_impersonation"
source = "gcp"
service_account = "{SA}"
target_audience = "https://run.example"
iam_url = "{url}"
""")
    access = _login(config, "deployer")
    assert fake.is_valid(access.token) and fake.last_iam_body["lifetime"] == "600s"
    assert fake.last_iam_body["delegates"] == [f"projects/-/serviceAccounts/{SA}"]
    claims = json.loads(_payload(_login(config, "run").token))
    assert (claims["aud"], claims["email"]) == ("https://run.example", SA)


def test_permission_denied_and_invalid_grant_are_sentences_saying_what_to_check(
    tmp_path: Path, issuer: FakeOIDCIssuer, google: tuple[FakeGoogleFederation, str]
) -> None:
    fake, url = google
    subject = issuer.issue(fake.allowed_audience)
    fake.deny(SA)
    config = _settings(tmp_path, _wif(url, fake, f'"{subject}"'))
    with pytest.raises(CredentialsRejected) as denied:
        _login(config, "gcp")
    assert "PERMISSION_DENIED" in denied.value.message
    assert f"roles/iam.serviceAccountTokenCreator on {SA}" in denied.value.message
    wrong = _settings(tmp_path, _wif(url, fake, f'"{issuer.issue("https://not-the-pool")}"'))
    with pytest.raises(CredentialsRejected) as invalid:
        _login(wrong, "gcp")
    assert "invalid_grant" in invalid.value.message and "allowed audiences" in invalid.value.message
    assert subject not in denied.value.message + invalid.value.message


def test_a_workload_identity_provider_without_service_account_cannot_back_the_metadata_server(
    tmp_path: Path, google: tuple[FakeGoogleFederation, str]
) -> None:
    fake, url = google
    config = _settings(tmp_path, _wif(url, fake, '"t"', service_account=False),
                       extra=f'[metadata.gce]\nlisten = "127.0.0.1:{free_port()}"\nprovider = "gcp"\n')
    with pytest.raises(ConfigError) as refused:
        Settings.load(config)
    assert "without service_account" in " ".join(refused.value.problems)


# -- Entra workload identity -------------------------------------------------------------------------------


def test_entra_client_assertion_is_read_anew_at_every_login(tmp_path: Path, issuer: FakeOIDCIssuer) -> None:
    entra = FakeEntraFederated(issuer)
    token_file = tmp_path / "azure-identity-token"
    with FakeServer(entra.app) as server:
        config = _settings(tmp_path, f"""
[providers.arm]
kind = "oauth2_client_credentials"
token_url = "{server.url}{entra.token_path}"
client_id = "{entra.client_id}"
auth_method = "client_assertion"
client_assertion = {{ file = "{token_file}" }}
scope = "https://management.azure.com/.default"
""")
        issuer.write(token_file, "api://AzureADTokenExchange", lifetime=-5)
        with pytest.raises(UpstreamError, match="expired"):
            _login(config, "arm")
        issuer.write(token_file, "api://AzureADTokenExchange")
        assert entra.is_valid(_login(config, "arm").token)
        issuer.write(token_file, "api://AzureADTokenExchange")
        assert entra.is_valid(_login(config, "arm").token)
    assert entra.logins == 2
    assert entra.last_form["client_assertion_type"] == "urn:ietf:params:oauth:client-assertion-type:jwt-bearer"


# -- the daemon ---------------------------------------------------------------------------------------------


def test_the_daemon_serves_until_expiry_backs_off_and_shows_no_subject_token(
    tmp_path: Path, issuer: FakeOIDCIssuer, google: tuple[FakeGoogleFederation, str]
) -> None:
    fake, url = google
    token_file = tmp_path / "token"
    first = issuer.write(token_file, fake.allowed_audience)
    fake.lifetime = 30.0
    config = _settings(tmp_path, _wif(url, fake, f'{{ file = "{token_file}" }}') + "min_refresh_interval = 0.1\n")
    daemon = Daemon(config, log_path=tmp_path / "daemon.log")
    daemon.start()
    try:
        served = daemon.get("/token/gcp").json()["token"]
        token_file.unlink()  # the volume is gone: the next login fails, the current token is still served
        # The failed forced login, said as such (within min_refresh_interval of the first login, a forced
        # refresh is answered with the token held: asked again until one logs in).
        daemon.wait_until(lambda: daemon.post("/token/gcp/refresh").status_code == 502, what="the failed forced login")
        daemon.wait_until(lambda: daemon.get("/status").json()["providers"]["gcp"].get("last_error"),
                          what="the failed login in /status")
        status = daemon.get("/status").json()["providers"]["gcp"]
        assert f"subject_token file {token_file} does not exist" in status["last_error"]["message"]
        assert daemon.get("/token/gcp").json()["token"] == served
        second = issuer.write(token_file, fake.allowed_audience)
        daemon.wait_until(lambda: daemon.get("/token/gcp").json()["token"] != served, timeout=60,
                          what="the retry with the token back")
        text = daemon.log() + json.dumps(daemon.get("/status").json())
        assert first not in text and second not in text
    finally:
        daemon.kill()


def test_twenty_concurrent_reads_cost_one_exchange_and_a_two_step_chain_renews_as_one_login(
    tmp_path: Path, issuer: FakeOIDCIssuer, google: tuple[FakeGoogleFederation, str]
) -> None:
    fake, url = google
    fake.lifetime = 8.0  # renewed at about two thirds of it
    token_file = tmp_path / "token"
    issuer.write(token_file, fake.allowed_audience)
    config = _settings(tmp_path, _wif(url, fake, f'{{ file = "{token_file}" }}'))
    daemon = Daemon(config, log_path=tmp_path / "daemon.log")
    daemon.start(ready=False)
    try:
        async def read_all() -> set[str]:
            async with httpx.AsyncClient(base_url=daemon.url, headers={"X-Tokend-Request": "t"}, timeout=30) as c:
                answers = await asyncio.gather(*(c.get("/token/gcp") for _ in range(20)))
            return {answer.json()["token"] for answer in answers}

        served = asyncio.run(read_all())
        assert len(served) == 1
        assert (fake.logins, fake.iam_calls) == (2, 1)  # one login: one STS exchange, one impersonation
        issuer.write(token_file, fake.allowed_audience)  # the kubelet's rotation: the renewal reads it
        daemon.wait_until(lambda: daemon.get("/token/gcp").json()["token"] not in served, timeout=60,
                          what="the renewal")
        assert fake.logins == 2 * fake.iam_calls and fake.iam_calls >= 2  # each renewal: both steps, together
    finally:
        daemon.kill()


def _payload(jwt: str) -> str:
    import base64

    part = jwt.split(".")[1]
    return base64.urlsafe_b64decode(part + "=" * (-len(part) % 4)).decode()
