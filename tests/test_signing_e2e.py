"""Keys that sign, end to end: the real daemon against fakes that verify every assertion as the real services
do; what a client gets (GET /token, the proxy, a sink), a rotated key file, and each way a login is refused."""

from __future__ import annotations

import json
import os
import subprocess
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import httpx
import pytest

from tests.daemon import Daemon, tokend_command, write_config
from tokend.testing import FakeGoogle, FakeProviders, FakeServer


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
