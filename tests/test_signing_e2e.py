"""Keys that sign, end to end: the real daemon against fakes that verify every assertion as the real services
do; what a client gets (GET /token, the proxy, a sink), a rotated key file, and each way a login is refused."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import httpx
import pytest

from tests.daemon import Daemon, tokend_command, write_config
from tests.test_sinks import sourced
from tokend.testing import (
    FakeEntraID,
    FakeGitHub,
    FakeGoogle,
    FakeProviders,
    FakeSalesforce,
    FakeServer,
    new_private_key,
    self_signed_certificate,
)


def eventually(condition: Callable[[], bool], what: str, timeout: float = 30) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.05)


def secret_file(directory: Path, name: str, content: str) -> Path:
    path = directory / name
    path.touch(mode=0o600)
    path.write_text(content)
    return path


def replace_file(path: Path, content: str) -> None:
    """A key rotated as a deploy tool does it: a new file renamed over the old one."""
    fresh = path.with_name(path.name + ".new")
    fresh.touch(mode=0o600)
    fresh.write_text(content)
    os.replace(fresh, path)


@pytest.fixture
def start(tmp_path: Path, fakes: FakeProviders) -> Iterator[Callable[..., Daemon]]:
    """`tokend run` with the demo's providers and `extra`; `ready=False` for one whose login is refused."""
    started: list[Daemon] = []

    def run(extra: str, *, ready: bool = True) -> Daemon:
        daemon = Daemon(write_config(tmp_path, fakes, extra=extra), log_path=tmp_path / f"daemon-{len(started)}.log")
        started.append(daemon)
        daemon.start(ready=ready)
        return daemon

    yield run
    for daemon in started:
        daemon.kill()


@pytest.fixture
def google(tmp_path: Path) -> Iterator[tuple[FakeGoogle, str]]:
    fake = FakeGoogle(lifetime=3600)
    with FakeServer(fake.app) as server:
        fake.token_uri = server.url + "/token"
        yield fake, server.url


def google_table(directory: Path, fake: FakeGoogle, url: str, **settings: object) -> str:
    key = secret_file(directory, "google-key.json", fake.key_file())
    lines = ["[providers.gcs]", 'kind = "google_service_account"', f'key = {{ file = "{key}" }}',
             f'api_url = "{url}"', "proxy = true", "min_refresh_interval = 0.5",
             *(f"{name} = {json.dumps(value)}" for name, value in settings.items())]
    return "\n".join(lines) + "\n"


def test_google_access_token_is_served_proxied_and_written_to_a_sink(
    tmp_path: Path, start: Callable[..., Daemon], google: tuple[FakeGoogle, str]
) -> None:
    fake, url = google
    sink = tmp_path / "gcs.token"
    daemon = start(google_table(tmp_path, fake, url) +
                            f'[[providers.gcs.sinks]]\npath = "{sink}"\n')
    served = daemon.get("/token/gcs").json()
    assert served["token"].startswith("ya29.") and fake.is_valid(served["token"])
    assert served["headers"] == {"Authorization": f"Bearer {served['token']}"}
    assert 3500 < served["expires_in"] <= 3600
    assert httpx.get(url + fake.protected_path, headers=served["headers"]).status_code == 200
    proxied = daemon.get("/proxy/gcs" + fake.protected_path)
    assert proxied.status_code == 200 and proxied.json()["items"] == [{"name": "demo-bucket"}]
    eventually(lambda: sink.exists() and sink.read_text() == served["token"], "the sink")
    assert fake.last_header["kid"] == fake.private_key_id and fake.last_claims["iss"] == fake.client_email
    status = json.dumps(daemon.get("/status").json())
    assert "PRIVATE KEY" not in status and fake.private_key_id not in status
    assert fake.private_key.splitlines()[1] not in daemon.log()


def test_google_id_token_for_a_target_audience(
    tmp_path: Path, start: Callable[..., Daemon], google: tuple[FakeGoogle, str]
) -> None:
    fake, url = google
    daemon = start(google_table(tmp_path, fake, url, target_audience="https://app.run.example"))
    served = daemon.get("/token/gcs").json()
    claims = json.loads(_b64(served["token"].split(".")[1]))
    assert claims["aud"] == "https://app.run.example" and claims["email"] == fake.client_email
    assert abs(served["expires_in"] - (claims["exp"] - time.time())) < 5


def test_a_rotated_google_key_file_logs_in_again_with_the_new_key(
    tmp_path: Path, start: Callable[..., Daemon], google: tuple[FakeGoogle, str]
) -> None:
    fake, url = google
    daemon = start(google_table(tmp_path, fake, url))
    first = daemon.get("/token/gcs").json()["token"]
    fake.rotate_key()  # the old key is deleted upstream: only the new key file can log in
    replace_file(tmp_path / "google-key.json", fake.key_file())
    eventually(lambda: daemon.get("/token/gcs").json()["token"] != first, "a login with the new key", timeout=20)
    assert fake.last_header["kid"] == fake.private_key_id
    assert "secret file changed" in daemon.log()


def test_a_wrong_google_key_is_a_refused_credential(
    tmp_path: Path, start: Callable[..., Daemon], google: tuple[FakeGoogle, str]
) -> None:
    fake, url = google
    table = google_table(tmp_path, fake, url)
    fake.rotate_key()  # the configured key was deleted upstream
    daemon = start(table, ready=False)
    eventually(lambda: daemon.get("/status").json()["providers"]["gcs"]["state"] == "failed", "the refusal")
    status = daemon.get("/status").json()["providers"]["gcs"]
    assert "Invalid JWT Signature" in status["last_error"]["message"] and status["last_error"]["credentials_rejected"]
    answer = daemon.get("/token/gcs")
    assert answer.status_code == 503 and "PRIVATE KEY" not in answer.text


def test_check_shows_the_key_and_check_login_logs_in(tmp_path: Path, google: tuple[FakeGoogle, str]) -> None:
    fake, url = google
    config = tmp_path / "tokend.toml"
    config.write_text('[server]\nport = 8799\n' + google_table(tmp_path, fake, url))
    config.chmod(0o600)
    checked = subprocess.run(tokend_command("--config", str(config), "check", "--login", "gcs"),
                             capture_output=True, text=True, timeout=60)
    assert checked.returncode == 0, checked.stderr
    assert "key: RSA 2048 bits, public key fingerprint SHA256:" in checked.stdout
    assert f"client_email {fake.client_email}" in checked.stdout and "login OK: gcs" in checked.stdout
    assert "PRIVATE KEY" not in checked.stdout + checked.stderr
    fake.clock_offset = 7200.0  # the upstream's clock two hours ahead: ours looks two hours behind
    skewed = subprocess.run(tokend_command("--config", str(config), "check", "--login", "gcs"),
                            capture_output=True, text=True, timeout=60)
    assert skewed.returncode == 5
    assert "first check this machine's clock (clock skew" in skewed.stderr and "timeframe" in skewed.stderr


def _b64(text: str) -> bytes:
    import base64

    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


# --- github_app ----------------------------------------------------------------------------------------------


@pytest.fixture
def github() -> Iterator[tuple[FakeGitHub, str]]:
    fake = FakeGitHub()
    with FakeServer(fake.app) as server:
        yield fake, server.url


def github_table(directory: Path, fake: FakeGitHub, url: str, *, installation: int | None = None,
                 **settings: object) -> str:
    key = secret_file(directory, "github-app.pem", fake.private_key)
    lines = ["[providers.gh]", 'kind = "github_app"', f'client_id = "{fake.client_id}"',
             f"installation_id = {installation or min(fake.installations)}", f'private_key = {{ file = "{key}" }}',
             f'base_url = "{url}"', "proxy = true", "min_refresh_interval = 0.5",
             *(f"{name} = {json.dumps(value)}" for name, value in settings.items())]
    return "\n".join(lines) + "\n"


def test_github_installation_token_is_served_proxied_and_written_to_a_sink(
    tmp_path: Path, start: Callable[..., Daemon], github: tuple[FakeGitHub, str]
) -> None:
    fake, url = github
    sink = tmp_path / "gh.env"
    daemon = start(github_table(tmp_path, fake, url, repositories=["demo"]) +
                   f'[[providers.gh.sinks]]\npath = "{sink}"\nformat = "env"\n')
    served = daemon.get("/token/gh").json()
    assert served["token"].startswith("ghs_") and fake.is_valid(served["token"])
    assert 3500 < served["expires_in"] <= 3600
    assert fake.last_body == {"repositories": ["demo"]} and fake.last_claims["iss"] == fake.client_id
    assert fake.last_headers["x-github-api-version"] == "2022-11-28"
    proxied = daemon.get("/proxy/gh" + fake.protected_path)  # api_url defaults to base_url
    assert proxied.status_code == 200 and proxied.json()["total_count"] == 2
    eventually(lambda: sink.exists() and sourced(sink, "TOKEND_TOKEN") == served["token"], "the sink (as sourced)")
    assert fake.private_key.splitlines()[1] not in daemon.log() + json.dumps(daemon.get("/status").json())


def test_a_rotated_github_app_key_logs_in_again_with_the_new_key(
    tmp_path: Path, start: Callable[..., Daemon], github: tuple[FakeGitHub, str]
) -> None:
    fake, url = github
    daemon = start(github_table(tmp_path, fake, url))
    first = daemon.get("/token/gh").json()["token"]
    fake.rotate_key()
    replace_file(tmp_path / "github-app.pem", fake.private_key)
    eventually(lambda: daemon.get("/token/gh").json()["token"] != first, "a login with the new key", timeout=20)
    assert fake.logins == 2


def test_github_refusals_unknown_installation_wrong_key_and_a_skewed_clock(
    tmp_path: Path, start: Callable[..., Daemon], github: tuple[FakeGitHub, str]
) -> None:
    fake, url = github
    unknown = github_table(tmp_path, fake, url, installation=55555)
    known = github_table(tmp_path, fake, url).replace("[providers.gh]", "[providers.ghkey]")
    daemon = start(unknown + known, ready=False)

    def error(name: str) -> dict:  # type: ignore[type-arg]
        return daemon.get("/status").json()["providers"][name]["last_error"] or {}

    eventually(lambda: bool(error("gh")), "the refusal")
    assert "GitHub has no installation 55555 of app" in error("gh")["message"] and error("gh")["credentials_rejected"]
    assert daemon.get("/token/ghkey").status_code == 200
    fake.rotate_key()  # the configured key is no longer the app's
    answers: list[httpx.Response] = []
    eventually(lambda: answers.append(daemon.post("/token/ghkey/refresh")) or answers[-1].status_code == 502,
               "the refused login (past min_refresh_interval)")
    refused = answers[-1]
    assert "A JSON web token could not be decoded" in refused.text
    assert "is private_key this app's key" in refused.text and "PRIVATE KEY" not in refused.text


def test_check_login_names_clock_skew_for_a_refused_github_jwt(tmp_path: Path, github: tuple[FakeGitHub, str]) -> None:
    fake, url = github
    config = tmp_path / "tokend.toml"
    config.write_text("[server]\nport = 8799\n" + github_table(tmp_path, fake, url))
    config.chmod(0o600)
    checked = subprocess.run(tokend_command("--config", str(config), "check", "--login", "gh"),
                             capture_output=True, text=True, timeout=60)
    assert checked.returncode == 0 and "private_key: RSA 2048 bits, public key fingerprint SHA256:" in checked.stdout
    fake.clock_offset = -3600.0  # GitHub's clock an hour behind: our iat is in its future
    skewed = subprocess.run(tokend_command("--config", str(config), "check", "--login", "gh"),
                            capture_output=True, text=True, timeout=60)
    assert skewed.returncode == 5 and "first check this machine's clock" in skewed.stderr
    assert "'Issued at' claim ('iat')" in skewed.stderr


# --- private_key_jwt (Entra ID) and jwt_bearer (Salesforce) -------------------------------------------------


def test_entra_certificate_credential_and_salesforce_jwt_bearer_end_to_end(
    tmp_path: Path, start: Callable[..., Daemon]
) -> None:
    entra, salesforce = FakeEntraID(), FakeSalesforce(lifetime=7200)
    key = new_private_key()
    certificate = self_signed_certificate(key)
    entra.register(key, certificate)
    with FakeServer(entra.app) as entra_server, FakeServer(salesforce.app) as sf_server:
        entra.token_url = entra_server.url + entra.token_path
        key_file = secret_file(tmp_path, "entra.pem", key)
        (tmp_path / "entra.crt").write_text(certificate)
        sf_key = secret_file(tmp_path, "salesforce.pem", salesforce.private_key)
        daemon = start(f"""
[providers.graph]
kind = "oauth2_client_credentials"
token_url = "{entra.token_url}"
client_id = "{entra.client_id}"
scope = "https://graph.microsoft.com/.default"
auth_method = "private_key_jwt"
client_assertion_alg = "PS256"
client_assertion_key = {{ file = "{key_file}" }}
client_certificate = "{tmp_path / 'entra.crt'}"
api_url = "{entra_server.url}"
proxy = true
min_refresh_interval = 0.5

[providers.salesforce]
kind = "jwt_bearer"
token_url = "{sf_server.url}/services/oauth2/token"
private_key = {{ file = "{sf_key}" }}
issuer = "{salesforce.consumer_key}"
subject = "{salesforce.username}"
audience = "{salesforce.audience}"
default_lifetime = 7200
""")
        graph = daemon.get("/token/graph").json()
        assert entra.is_valid(graph["token"]) and entra.last_header["alg"] == "PS256"
        assert "x5t#S256" in entra.last_header and "client_secret" not in entra.last_form
        assert daemon.get("/proxy/graph" + entra.protected_path).json()["value"][0]["displayName"] == "Demo User"
        # A second login is a second assertion, which Entra takes only with a fresh jti (a forced refresh
        # within min_refresh_interval of the first login makes none: asked until past it).
        eventually(lambda: daemon.post("/token/graph/refresh").status_code == 200 and entra.logins >= 2,
                   "a second login")
        sf = daemon.get("/token/salesforce").json()
        assert salesforce.is_valid(sf["token"]) and 7100 < sf["expires_in"] <= 7200
        entra.forget()  # the certificate deleted from the app registration
        # Within min_refresh_interval of the last login a forced refresh answers that login's token: asked again.
        eventually(lambda: daemon.post("/token/graph/refresh").status_code == 502, "the refused login")
        refused = daemon.get("/status").json()["providers"]["graph"]["last_error"]
        assert "AADSTS700027" in refused["message"] and refused["credentials_rejected"]


def test_the_verifying_fakes_refuse_a_replayed_or_foreign_assertion() -> None:
    from tokend.providers.signing_keys import assertion_claims, certificate_thumbprints, load_key

    entra = FakeEntraID()
    key = new_private_key()
    certificate = self_signed_certificate(key)
    entra.register(key, certificate)
    with FakeServer(entra.app) as server:
        entra.token_url = server.url + entra.token_path
        signer = load_key(key)
        claims = assertion_claims(300, iss=entra.client_id, sub=entra.client_id, aud=entra.token_url)
        assertion = signer.sign({**claims, "nbf": claims["iat"]}, alg="RS256",
                                header=certificate_thumbprints(certificate, signer))
        form = {"grant_type": "client_credentials", "client_id": entra.client_id, "scope": "api://x/.default",
                "client_assertion_type": "urn:ietf:params:oauth:client-assertion-type:jwt-bearer",
                "client_assertion": assertion}
        assert httpx.post(entra.token_url, data=form).status_code == 200
        replayed = httpx.post(entra.token_url, data=form)
        assert replayed.status_code == 401 and "AADSTS7000215" in replayed.json()["error_description"]
        foreign = load_key(new_private_key()).sign({**claims, "jti": "other"}, alg="RS256",
                                                   header=certificate_thumbprints(certificate, signer))
        refused = httpx.post(entra.token_url, data={**form, "client_assertion": foreign})
        assert refused.status_code == 401 and "AADSTS7000274" in refused.json()["error_description"]
        with_secret = httpx.post(entra.token_url, data={**form, "client_secret": "s"})
        assert "AADSTS50027" in with_secret.json()["error_description"]


def test_the_signing_libraries_are_loaded_only_when_a_signing_kind_is_configured(
    tmp_path: Path, start: Callable[..., Daemon], github: tuple[FakeGitHub, str]
) -> None:
    def mapped(daemon: Daemon) -> bool:  # cryptography's native library in the process's memory
        assert daemon.process is not None
        return "cryptography" in Path(f"/proc/{daemon.process.pid}/maps").read_text()

    plain = start("")
    assert not mapped(plain)
    fake, url = github
    assert mapped(start(github_table(tmp_path, fake, url)))


def test_exec_and_the_python_client_with_a_client_key_use_a_github_app_token(
    tmp_path: Path, start: Callable[..., Daemon], github: tuple[FakeGitHub, str]
) -> None:
    fake, url = github
    client_key = secret_file(tmp_path, "ci-key", "ci-client-key-of-32-characters-xx\n")
    daemon = start(github_table(tmp_path, fake, url) +
                   f'[clients.ci]\nkey = {{ file = "{client_key}" }}\nproviders = ["gh"]\n')
    child = ("import os, httpx; print(os.environ['GH_TOKEN']); print(httpx.get(os.environ['TOKEND_PROXY_URL_GH'] + "
             "'/installation/repositories', headers={'X-Tokend-Request': '1', 'Authorization': 'Bearer ' + "
             "os.environ['TOKEND_CLIENT_KEY']}).json()['total_count'])")
    shown = subprocess.run(tokend_command("--config", str(daemon.config), "exec", "--client-key-file", str(client_key),
                                          "--provider", "gh", "--env", "gh=GH_TOKEN", "--", sys.executable, "-c",
                                          child), capture_output=True, text=True, timeout=60)
    token, count = shown.stdout.split()
    assert shown.returncode == 0 and fake.is_valid(token) and count == "2", shown.stderr
    from tokend_client import Client
    from tokend_client.httpx import Auth

    client = Client(daemon.url, client_key=client_key.read_text().strip())
    with httpx.Client(base_url=url, auth=Auth("gh", client=client)) as api:
        assert api.get(fake.protected_path).json()["total_count"] == 2


@pytest.mark.parametrize("name", ["graph", "salesforce"])
def test_check_login_works_for_private_key_jwt_and_jwt_bearer(tmp_path: Path, name: str) -> None:
    entra, salesforce = FakeEntraID(), FakeSalesforce()
    key = new_private_key("EC")
    entra.register(key, kid="ec-1")
    with FakeServer(entra.app) as entra_server, FakeServer(salesforce.app) as sf_server:
        entra.token_url = entra_server.url + entra.token_path
        config = tmp_path / "tokend.toml"
        config.write_text(f"""[server]
port = 8799
[providers.graph]
kind = "oauth2_client_credentials"
token_url = "{entra.token_url}"
client_id = "{entra.client_id}"
scope = "api://billing/.default"
auth_method = "private_key_jwt"
client_assertion_alg = "ES256"
client_assertion_kid = "ec-1"
client_assertion_key = {{ file = "{secret_file(tmp_path, 'ec.pem', key)}" }}
[providers.salesforce]
kind = "jwt_bearer"
token_url = "{sf_server.url}/services/oauth2/token"
private_key = {{ file = "{secret_file(tmp_path, 'sf.pem', salesforce.private_key)}" }}
issuer = "{salesforce.consumer_key}"
subject = "{salesforce.username}"
audience = "{salesforce.audience}"
""")
        config.chmod(0o600)
        checked = subprocess.run(tokend_command("--config", str(config), "check", "--login", name),
                                 capture_output=True, text=True, timeout=60)
    assert checked.returncode == 0, checked.stdout + checked.stderr
    assert f"login OK: {name}" in checked.stdout and "PRIVATE KEY" not in checked.stdout + checked.stderr
    assert "client_assertion_key: EC P-256, public key fingerprint SHA256:" in checked.stdout
    assert "private_key: RSA 2048 bits, public key fingerprint SHA256:" in checked.stdout
