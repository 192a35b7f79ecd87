"""aws_ecr: ECR's GetAuthorizationToken signed with another AWS provider's credentials (the fake checks the
signature), answered to the real docker-credential-tokend for the registry ECR names, and renewed."""

from __future__ import annotations

import base64
import json
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.daemon import Daemon
from tests.test_aws import ROLE, role_table, write
from tests.test_outputs_docker import NOT_FOUND, docker_asks
from tokend.config.settings import Settings
from tokend.errors import ConfigError
from tokend.testing import FakeServer, FakeSTS
from tokend.testing.aws import ACCOUNT

REGISTRY = f"{ACCOUNT}.dkr.ecr.eu-west-1.amazonaws.com"


def ecr_table(url: str, source: str = "role", **extra: str) -> str:
    lines = "".join(f"{key} = {value}\n" for key, value in extra.items())
    return (f'[providers.ecr]\nkind = "aws_ecr"\nsource = "{source}"\nregion = "eu-west-1"\necr_url = "{url}"\n'
            f"{lines}\n")


def ecr_daemon(tmp_path: Path, fake: FakeSTS, url: str, *, secret: str | None = None) -> Daemon:
    key_id, real = fake.add_user()
    (tmp_path / "secret").write_text(secret or real)
    (tmp_path / "secret").chmod(0o600)
    body = role_table(url, key_id, "S").replace('"S"', f'{{ file = "{tmp_path / "secret"}" }}') + ecr_table(url)
    daemon = Daemon(write(tmp_path, body), log_path=tmp_path / "daemon.log")
    daemon.start(ready=secret is None)
    return daemon


@pytest.fixture
def ecr(tmp_path: Path) -> Iterator[tuple[Daemon, FakeSTS]]:
    fake = FakeSTS(ecr_lifetime=8)  # a short password: its renewal comes within seconds
    fake.add_role(ROLE)
    with FakeServer(fake.app) as server:
        daemon = ecr_daemon(tmp_path, fake, server.url)
        yield daemon, fake
        daemon.kill()


def test_docker_helper_answers_aws_and_the_password_for_the_registry_ecr_names(ecr: tuple[Daemon, FakeSTS]) -> None:
    daemon, fake = ecr
    answer = daemon.get("/token/ecr").json()
    password = answer["token"]
    assert fake.is_valid(password) and answer["token_type"] == "Basic"
    assert base64.b64decode(answer["headers"]["Authorization"].removeprefix("Basic ")) == f"AWS:{password}".encode()
    role_arn = f"arn:aws:sts::{ACCOUNT}:assumed-role/app/tokend-role"
    assert ("GetAuthorizationToken", role_arn) in fake.calls  # signed (and checked) with the role's session
    env = {"TOKEND_CONFIG": str(daemon.config)}
    for server in (REGISTRY, f"https://{REGISTRY}", f"https://{REGISTRY.upper()}/"):
        asked = docker_asks("get", server + "\n", env=env)
        assert asked.returncode == 0, asked.stdout + asked.stderr
        assert json.loads(asked.stdout) == {"ServerURL": server, "Username": "AWS", "Secret": password}
    assert docker_asks("get", f"{ACCOUNT}.dkr.ecr.us-east-1.amazonaws.com", env=env).stdout.strip() == NOT_FOUND
    assert json.loads(docker_asks("list", "", env=env).stdout) == {REGISTRY: "AWS"}
    assert password not in daemon.log()


def test_the_password_is_renewed_before_it_expires(ecr: tuple[Daemon, FakeSTS]) -> None:
    daemon, fake = ecr
    first = daemon.get("/token/ecr").json()["token"]
    daemon.wait_until(lambda: len(fake.ecr_passwords) >= 2 and daemon.get("/token/ecr").json()["token"] != first,
                      timeout=30, what="a renewed ECR password")
    renewed = daemon.get("/token/ecr").json()["token"]
    assert renewed == fake.ecr_passwords[-1] or renewed in fake.ecr_passwords
    asked = docker_asks("get", REGISTRY, env={"TOKEND_CONFIG": str(daemon.config)})
    assert json.loads(asked.stdout)["Secret"] in fake.ecr_passwords[1:]


@pytest.mark.parametrize(("source", "said"), [
    ("plain", 'field "source": provider "plain" is of kind static; ECR is asked with AWS credentials'),
    ("nope", 'reads the credentials of provider "nope": no provider is named so'),
    ("ecr", "reads its own credentials"),
])
def test_a_source_that_is_no_aws_provider_is_refused(tmp_path: Path, source: str, said: str) -> None:
    body = '[providers.plain]\nkind = "static"\nkey = "k"\n\n' + ecr_table("https://ecr.example.com", source)
    with pytest.raises(ConfigError) as caught:
        Settings.load(write(tmp_path, body))
    assert any(said in problem for problem in caught.value.problems), caught.value.problems


def test_a_source_that_cannot_log_in_is_named_in_the_error(tmp_path: Path) -> None:
    fake = FakeSTS()
    fake.add_role(ROLE)
    with FakeServer(fake.app) as server:
        daemon = ecr_daemon(tmp_path, fake, server.url, secret="not-the-secret")
        try:
            daemon.wait_until(lambda: daemon.get("/status").json()["providers"]["ecr"].get("last_error"),
                              what="the ECR login's error")
            error = daemon.get("/status").json()["providers"]["ecr"]["last_error"]["message"]
            assert "source provider 'role' has no credentials yet" in error, error
            assert "SignatureDoesNotMatch" in error and "not-the-secret" not in error
            assert daemon.get("/token/ecr").status_code == 503
            assert not fake.ecr_passwords
        finally:
            daemon.kill()
