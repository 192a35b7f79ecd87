"""AWS kinds against the verifying fake STS (tokend.testing.aws): AssumeRole with a key pair and with another
provider's credentials, GetSessionToken, what GET /token answers, when renewals come, and the bad inputs."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Iterator
from datetime import datetime
from pathlib import Path

import httpx
import pytest

from tests.daemon import Daemon, free_port
from tokend.config.settings import Settings
from tokend.credential import Credential
from tokend.errors import ConfigError, CredentialsRejected, UpstreamError
from tokend.providers import build_provider
from tokend.providers.aws.sts import parse_xml
from tokend.redact import Redactor
from tokend.testing import FakeOIDCIssuer, FakeServer, FakeSTS
from tokend.testing.aws import ACCOUNT

ROLE = f"arn:aws:iam::{ACCOUNT}:role/app"
CHAINED = f"arn:aws:iam::{ACCOUNT}:role/next"


@pytest.fixture
def sts() -> Iterator[tuple[FakeSTS, str]]:
    fake = FakeSTS()
    fake.add_role(ROLE, max_duration=7200)
    fake.add_role(CHAINED)
    with FakeServer(fake.app) as server:
        yield fake, server.url


def write(tmp_path: Path, body: str, port: int | None = None) -> Path:
    config = tmp_path / "tokend.toml"
    config.write_text(f'[server]\nport = {port or free_port()}\n\n{body}')
    return config


def role_table(url: str, key_id: str, secret: str, **extra: object) -> str:
    lines = "".join(f"{k} = {v!r}\n".replace("'", '"') for k, v in extra.items())
    return (f'[providers.role]\nkind = "aws_assume_role"\nrole_arn = "{ROLE}"\nsts_url = "{url}"\n'
            f'access_key_id = "{key_id}"\nsecret_access_key = "{secret}"\n{lines}\n')


def login(tmp_path: Path, body: str, name: str = "role") -> Credential:
    settings = Settings.load(write(tmp_path, body))
    config = settings.providers[name]
    provider = build_provider(name, config, Redactor(s.get() for s in config.secrets().values()))

    async def once() -> Credential:
        async with httpx.AsyncClient() as client:
            return await provider.fetch(client)

    return asyncio.run(once())


# -- logins ------------------------------------------------------------------------------------------------------


@pytest.mark.filterwarnings("ignore:.*plain string.*")
def test_assume_role_with_a_key_pair_gets_the_roles_session(tmp_path: Path, sts: tuple[FakeSTS, str]) -> None:
    fake, url = sts
    key_id, secret = fake.add_user()
    credential = login(tmp_path, role_table(url, key_id, secret, duration=3600))
    assert credential.aws is not None and credential.token_type == "aws"
    assert fake.caller(credential.aws.access_key_id) == f"arn:aws:sts::{ACCOUNT}:assumed-role/app/tokend-role"
    assert credential.aws.account_id == ACCOUNT and fake.is_valid(credential.token)
    assert credential.expires_at is not None and 3590 < credential.expires_at - time.time() <= 3600
    assert credential.headers == {}


@pytest.mark.filterwarnings("ignore:.*plain string.*")
def test_session_token_with_a_key_pair(tmp_path: Path, sts: tuple[FakeSTS, str]) -> None:
    fake, url = sts
    key_id, secret = fake.add_user("bob")
    body = (f'[providers.me]\nkind = "aws_session_token"\nsts_url = "{url}"\naccess_key_id = "{key_id}"\n'
            f'secret_access_key = "{secret}"\nduration = 7200\n')
    credential = login(tmp_path, body, "me")
    assert credential.aws is not None
    assert fake.caller(credential.aws.access_key_id) == f"arn:aws:iam::{ACCOUNT}:user/bob"
    assert credential.aws.account_id is None


@pytest.mark.filterwarnings("ignore:.*plain string.*")
def test_a_wrong_secret_is_a_sentence_naming_the_code_and_no_key(tmp_path: Path, sts: tuple[FakeSTS, str]) -> None:
    fake, url = sts
    key_id, secret = fake.add_user()
    wrong = secret[::-1]
    with pytest.raises(CredentialsRejected) as caught:
        login(tmp_path, role_table(url, key_id, wrong))
    message = caught.value.message
    assert "SignatureDoesNotMatch" in message and "is secret_access_key the secret of access_key_id" in message
    assert wrong not in message and secret not in message
    assert "request id" in message


@pytest.mark.filterwarnings("ignore:.*plain string.*")
def test_throttling_is_retryable(tmp_path: Path, sts: tuple[FakeSTS, str]) -> None:
    fake, url = sts
    key_id, secret = fake.add_user()
    fake.throttle(1)
    with pytest.raises(UpstreamError) as caught:
        login(tmp_path, role_table(url, key_id, secret))
    assert caught.value.retryable and not isinstance(caught.value, CredentialsRejected)
    assert "400: Throttling: Rate exceeded" in caught.value.message
    assert login(tmp_path, role_table(url, key_id, secret)).aws is not None  # then it passes


@pytest.mark.filterwarnings("ignore:.*plain string.*")
def test_a_duration_above_the_roles_maximum_is_not_retried(tmp_path: Path, sts: tuple[FakeSTS, str]) -> None:
    fake, url = sts
    key_id, secret = fake.add_user()
    with pytest.raises(UpstreamError) as caught:
        login(tmp_path, role_table(url, key_id, secret, duration=10800))
    assert not caught.value.retryable
    assert "ValidationError: The requested DurationSeconds exceeds the MaxSessionDuration" in caught.value.message


@pytest.mark.filterwarnings("ignore:.*plain string.*")
def test_an_expired_session_token_says_so(tmp_path: Path, sts: tuple[FakeSTS, str]) -> None:
    fake, url = sts
    key_id, secret = fake.add_user()
    session = login(tmp_path, role_table(url, key_id, secret))
    assert session.aws is not None
    fake.add_role(ROLE)
    fake.expire_sessions()
    body = role_table(url, session.aws.access_key_id, session.aws.secret_access_key).replace(
        "\n\n", f'\nsession_token = "{session.token}"\n\n', 1)
    with pytest.raises(CredentialsRejected) as caught:
        login(tmp_path, body)
    assert "ExpiredToken" in caught.value.message and "session_token has expired" in caught.value.message
    assert session.token not in caught.value.message


@pytest.mark.filterwarnings("ignore:.*plain string.*")
def test_an_endpoint_answering_html_is_named(tmp_path: Path, sts: tuple[FakeSTS, str]) -> None:
    fake, url = sts
    key_id, secret = fake.add_user()
    fake.fail(200, times=1, body="<html><body>Sign in to the corporate proxy</body></html>")
    with pytest.raises(UpstreamError) as caught:
        login(tmp_path, role_table(url, key_id, secret))
    assert "not with STS's XML" in caught.value.message and "is sts_url an STS endpoint?" in caught.value.message


def test_xml_with_a_document_type_is_refused() -> None:
    bomb = (b'<?xml version="1.0"?><!DOCTYPE r [<!ENTITY a "aaaaaaaaaa"><!ENTITY b "&a;&a;&a;&a;">]>'
            b"<r><Credentials><AccessKeyId>&b;</AccessKeyId></Credentials></r>")
    assert parse_xml(bomb) is None
    assert parse_xml(b"not xml") is None
    parsed = parse_xml(b'<E xmlns="x"><Error><Code>Throttling</Code><Message>Rate</Message></Error></E>')
    assert parsed is not None and parsed["Error"] == {"Code": "Throttling", "Message": "Rate"}


# -- settings ----------------------------------------------------------------------------------------------------


@pytest.mark.filterwarnings("ignore:.*plain string.*")
@pytest.mark.parametrize(("extra", "said"), [
    ("duration = 900\n", "the minimum is 1800"),
    ("duration = 50000\n", "the maximum is 43200"),
    ('role_session_name = "has space"\n', "AWS's pattern"),
    ('policy = "{not json"\n', "is not JSON"),
    ('source = "other"\n', "set exactly one of access_key_id + secret_access_key, source, web_identity_token"),
])
def test_check_refuses_bad_settings_with_a_sentence(tmp_path: Path, extra: str, said: str) -> None:
    body = role_table("https://sts.example.com", "AKIAEXAMPLE", "secret") + extra
    with pytest.raises(ConfigError) as caught:
        Settings.load(write(tmp_path, body.replace("\n\n", "\n") + "\n"))
    assert any(said in problem for problem in caught.value.problems), caught.value.problems


def test_a_chained_role_lasts_an_hour_at_most_and_its_source_must_exist(tmp_path: Path) -> None:
    chained = f'[providers.next]\nkind = "aws_assume_role"\nrole_arn = "{CHAINED}"\nsource = "%s"\nduration = %d\n\n'
    static = '[providers.plain]\nkind = "static"\nkey = "k"\n\n'
    for source, duration, said in (("role", 7200, "at most 3600"),
                                   ("nope", 3600, 'reads the credentials of provider "nope": no provider is named so'),
                                   ("next", 3600, "reads its own credentials"),
                                   ("plain", 3600, 'field "source": provider "plain" is of kind static')):
        with pytest.raises(ConfigError) as caught:
            Settings.load(write(tmp_path, chained % (source, duration) + static + role_table(
                "https://sts.example.com", "AKIAEXAMPLE", "secret")))
        assert any(said in problem for problem in caught.value.problems), caught.value.problems
    # Two roles each assumed with the other's credentials: the config's one check of sources finds the loop.
    looped = (chained % ("other", 3600)).replace("[providers.next]", "[providers.one]") + \
        (chained % ("one", 3600)).replace("[providers.next]", "[providers.other]")
    with pytest.raises(ConfigError) as caught:
        Settings.load(write(tmp_path, looped))
    assert any("in a loop (one -> other -> one)" in problem for problem in caught.value.problems), caught.value.problems


# -- the daemon --------------------------------------------------------------------------------------------------


@pytest.fixture
def aws_daemon(tmp_path: Path, sts: tuple[FakeSTS, str]) -> Iterator[tuple[Daemon, FakeSTS]]:
    fake, url = sts
    key_id, secret = fake.add_user()
    (tmp_path / "secret").write_text(secret)
    (tmp_path / "secret").chmod(0o600)
    body = role_table(url, key_id, secret).replace(f'"{secret}"', f'{{ file = "{tmp_path / "secret"}" }}')
    body += f'[providers.next]\nkind = "aws_assume_role"\nrole_arn = "{CHAINED}"\nsource = "role"\nsts_url = "{url}"\n'
    daemon = Daemon(write(tmp_path, body), log_path=tmp_path / "daemon.log")
    daemon.start()
    yield daemon, fake
    daemon.kill()


def test_get_token_answers_the_three_values_and_raw_is_refused(aws_daemon: tuple[Daemon, FakeSTS]) -> None:
    daemon, fake = aws_daemon
    for _ in range(2):  # the app, then the fast path's cached answer
        answer = daemon.get("/token/role").json()
        assert answer["type"] == "aws" and answer["token"] == answer["aws"]["session_token"]
        assert set(answer["aws"]) == {"access_key_id", "secret_access_key", "session_token", "expiration"}
        assert answer["aws"]["expiration"] == answer["expires_at"]
        assert fake.caller(answer["aws"]["access_key_id"]) == f"arn:aws:sts::{ACCOUNT}:assumed-role/app/tokend-role"
    raw = daemon.get("/token/role", params={"format": "raw"})
    assert raw.status_code == 400 and "three values" in raw.json()["message"]
    assert answer["aws"]["secret_access_key"] not in daemon.log()


def test_role_chaining_and_renewal_twenty_minutes_before_expiry(aws_daemon: tuple[Daemon, FakeSTS]) -> None:
    daemon, fake = aws_daemon
    answer = daemon.get("/token/next").json()
    assert fake.caller(answer["aws"]["access_key_id"]) == f"arn:aws:sts::{ACCOUNT}:assumed-role/next/tokend-next"
    source = daemon.get("/token/role").json()["aws"]["access_key_id"]
    assert ("AssumeRole", fake.caller(source)) in fake.calls  # the chained role was assumed with role's session
    status = daemon.get("/status").json()["providers"]
    for name in ("role", "next"):
        expires = datetime.fromisoformat(status[name]["expires_at"]).timestamp()
        renews = datetime.fromisoformat(status[name]["next_refresh"]).timestamp()
        assert expires - renews >= 1200 - 1, (name, status[name])


# -- AssumeRoleWithWebIdentity -----------------------------------------------------------------------------------


def web_identity_table(url: str, token: str, **extra: object) -> str:
    lines = "".join(f"{k} = {v!r}\n".replace("'", '"') for k, v in extra.items())
    return (f'[providers.role]\nkind = "aws_assume_role"\nrole_arn = "{ROLE}"\nsts_url = "{url}"\n'
            f"web_identity_token = {token}\n{lines}\n")


def test_a_rotating_web_identity_token_file_is_read_fresh_at_each_login(
    tmp_path: Path, sts: tuple[FakeSTS, str], issuer: FakeOIDCIssuer
) -> None:
    fake, url = sts
    fake.trust(issuer)
    token_file = tmp_path / "token"
    first_token = issuer.write(token_file, "sts.amazonaws.com")
    body = web_identity_table(url, f'{{ file = "{token_file}" }}', min_refresh_interval=0.1)
    daemon = Daemon(write(tmp_path, body), log_path=tmp_path / "daemon.log")
    daemon.start()
    try:
        first = daemon.get("/token/role").json()
        issuer.subject = "system:serviceaccount:apps:rotated"
        second_token = issuer.write(token_file, "sts.amazonaws.com")  # the kubelet's rotation, in place
        # Within min_refresh_interval of the first login a forced refresh answers the credential held: asked
        # again until one logs in.
        daemon.wait_until(lambda: daemon.post("/token/role/refresh").headers.get("x-tokend-new-login") == "yes",
                          what="a forced login")
        second = daemon.get("/token/role").json()
        log = daemon.log()
    finally:
        daemon.kill()
    # Each login sent the token the file held then, unsigned (no AWS key anywhere), and got the role's session.
    assert fake.web_identity_tokens == [first_token, second_token]
    assert [call for call in fake.calls if call[0] == "AssumeRoleWithWebIdentity"] == [
        ("AssumeRoleWithWebIdentity", "system:serviceaccount:apps:billing"),
        ("AssumeRoleWithWebIdentity", "system:serviceaccount:apps:rotated")]
    for answer in (first, second):
        assert answer["type"] == "aws"
        assert fake.caller(answer["aws"]["access_key_id"]) == f"arn:aws:sts::{ACCOUNT}:assumed-role/app/tokend-role"
    assert first["aws"]["access_key_id"] != second["aws"]["access_key_id"]
    assert first_token not in log and second_token not in log and second["aws"]["secret_access_key"] not in log


def test_a_web_identity_token_sts_refuses_is_a_sentence_and_retried(
    tmp_path: Path, sts: tuple[FakeSTS, str], issuer: FakeOIDCIssuer
) -> None:
    fake, url = sts
    fake.trust(issuer, audience="sts.amazonaws.com")
    token_file = tmp_path / "token"
    token = issuer.write(token_file, "some-other-audience")
    with pytest.raises(UpstreamError) as caught:
        login(tmp_path, web_identity_table(url, f'{{ file = "{token_file}" }}'))
    said = caught.value.message
    assert not isinstance(caught.value, CredentialsRejected) and caught.value.retryable  # a new token may do
    assert "AssumeRoleWithWebIdentity answered 400: InvalidIdentityToken" in said and "audience" in said
    assert token not in said and fake.web_identity_tokens == []


def test_web_identity_token_from_another_provider_is_a_source_of_the_config(
    tmp_path: Path, sts: tuple[FakeSTS, str]
) -> None:
    url = sts[1]
    body = web_identity_table(url, '{ provider = "gha" }')
    with pytest.raises(ConfigError) as caught:
        Settings.load(write(tmp_path, body))
    assert any('reads the credentials of provider "gha": no provider is named so' in problem
               for problem in caught.value.problems), caught.value.problems
    both = web_identity_table(url, '{ file = "/t" }', access_key_id="AKIAEXAMPLE", secret_access_key="s")
    with pytest.raises(ConfigError) as caught:
        Settings.load(write(tmp_path, both))
    assert any("set exactly one of" in problem and "access_key_id + secret_access_key and web_identity_token are "
               "set" in problem for problem in caught.value.problems), caught.value.problems


# -- credential_process ------------------------------------------------------------------------------------------


def test_aws_credential_imports_no_web_framework(aws_daemon: tuple[Daemon, FakeSTS]) -> None:
    import json
    import subprocess
    import sys

    from tests.test_outputs_docker import HEAVY

    daemon, fake = aws_daemon
    probe = (f"import sys; from tokend.cli.main import main; code = main(['aws-credential', 'role', '--url', "
             f"{daemon.url!r}]); heavy = sorted(m for m in {HEAVY!r} if m in sys.modules); "
             "print(heavy, code, file=sys.stderr)")
    result = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, timeout=60, check=False)
    assert result.stderr.strip().splitlines()[-1] == "[] 0", result.stderr
    printed = json.loads(result.stdout)
    assert printed["Version"] == 1 and set(printed) == {"Version", "AccessKeyId", "SecretAccessKey", "SessionToken",
                                                        "Expiration"}
    assert fake.caller(printed["AccessKeyId"]) == f"arn:aws:sts::{ACCOUNT}:assumed-role/app/tokend-role"


def test_the_aws_cli_runs_tokend_as_its_credential_process(tmp_path: Path, aws_daemon: tuple[Daemon, FakeSTS],
                                                           monkeypatch: pytest.MonkeyPatch) -> None:
    import json
    import os
    import subprocess
    import sys

    from tests.tools import require_tool

    aws = require_tool("aws", "pip install awscli (the test extra)")
    daemon, fake = aws_daemon
    config = tmp_path / "aws-config"
    config.write_text(f"[default]\nregion = us-east-1\ncredential_process = {sys.executable} -m tokend "
                      f"aws-credential next --url {daemon.url}\n")
    env = {k: v for k, v in os.environ.items() if not k.startswith("AWS_")}
    env.update(AWS_CONFIG_FILE=str(config), AWS_SHARED_CREDENTIALS_FILE=str(tmp_path / "none"))
    url = fake_url(daemon)
    result = subprocess.run([aws, "sts", "get-caller-identity", "--endpoint-url", url, "--output", "json"],
                            capture_output=True, text=True, timeout=120, env=env, check=False)
    assert result.returncode == 0, result.stderr
    assert json.loads(result.stdout)["Arn"] == f"arn:aws:sts::{ACCOUNT}:assumed-role/next/tokend-next"
    assert fake.calls[-1][0] == "GetCallerIdentity"


def fake_url(daemon: Daemon) -> str:
    """The fake STS's URL, as the daemon's config names it."""
    line = next(line for line in daemon.config.read_text().splitlines() if line.startswith("sts_url"))
    return line.split('"')[1]


# -- [metadata.aws] and tokend exec ------------------------------------------------------------------------------

_CHILD = """
import json, os, stat, sys
import boto3
token_file = os.environ["AWS_CONTAINER_AUTHORIZATION_TOKEN_FILE"]
mode = stat.S_IMODE(os.stat(token_file).st_mode)
raw = open(token_file).read()
session = boto3.session.Session(region_name="us-east-1")
who = session.client("sts", endpoint_url=sys.argv[1]).get_caller_identity()["Arn"]
print(json.dumps({"mode": mode, "newline": raw.endswith("\\n"), "who": who,
                  "method": session.get_credentials().method,
                  "leaked": sorted(k for k in ("AWS_ACCESS_KEY_ID", "AWS_PROFILE", "AWS_CONTAINER_AUTHORIZATION_TOKEN")
                                   if k in os.environ),
                  "shared": open(os.environ["AWS_SHARED_CREDENTIALS_FILE"]).read()}))
"""


@pytest.fixture
def endpoint_daemon(tmp_path: Path, sts: tuple[FakeSTS, str]) -> Iterator[tuple[Daemon, FakeSTS, str]]:
    fake, url = sts
    key_id, secret = fake.add_user()
    listen = f"127.0.0.1:{free_port()}"
    body = role_table(url, key_id, secret) + f'[metadata.aws]\nlisten = "{listen}"\n'
    daemon = Daemon(write(tmp_path, body), log_path=tmp_path / "daemon.log")
    daemon.start()
    yield daemon, fake, listen
    daemon.kill()


@pytest.mark.filterwarnings("ignore:.*plain string.*")
def test_boto3_under_tokend_exec_uses_the_container_endpoint(
    tmp_path: Path, endpoint_daemon: tuple[Daemon, FakeSTS, str]
) -> None:
    import json
    import os
    import subprocess
    import sys

    daemon, _, _ = endpoint_daemon
    env = {**os.environ, "AWS_ACCESS_KEY_ID": "AKIAFROMTHEPARENT", "AWS_SECRET_ACCESS_KEY": "nope",
           "AWS_PROFILE": "elsewhere", "AWS_CONFIG_FILE": str(tmp_path / "no-config")}
    result = subprocess.run([sys.executable, "-m", "tokend", "exec", "--url", daemon.url, "--", sys.executable,
                             "-c", _CHILD, fake_url(daemon)], capture_output=True, text=True, timeout=120, env=env,
                            check=False)
    assert result.returncode == 0, result.stderr
    seen = json.loads(result.stdout)
    assert seen == {"mode": 0o600, "newline": False, "who": f"arn:aws:sts::{ACCOUNT}:assumed-role/app/tokend-role",
                    "method": "container-role", "leaked": [], "shared": ""}


@pytest.mark.filterwarnings("ignore:.*plain string.*")
def test_the_endpoint_asks_for_its_token_and_refuses_browsers_and_other_hosts(
    endpoint_daemon: tuple[Daemon, FakeSTS, str]
) -> None:
    daemon, fake, listen = endpoint_daemon
    token = daemon.get("/metadata/environment").json()["environment"]["AWS_CONTAINER_AUTHORIZATION_TOKEN"]
    base = f"http://{listen}"
    good = httpx.get(f"{base}/", headers={"Authorization": token})
    assert good.status_code == 200 and set(good.json()) == {"AccessKeyId", "SecretAccessKey", "Token", "Expiration",
                                                             "AccountId"}
    assert fake.caller(good.json()["AccessKeyId"]) is not None and good.json()["AccountId"] == ACCOUNT
    assert httpx.get(f"{base}/role", headers={"Authorization": token}).json() == good.json()
    assert httpx.get(f"{base}/", headers={"Authorization": token[:-1]}).status_code == 401
    assert httpx.get(f"{base}/").status_code == 401
    for refused in ({"Origin": "https://evil.example"}, {"X-Forwarded-For": "10.0.0.1"}, {"Host": "evil.example"}):
        assert httpx.get(f"{base}/", headers={"Authorization": token, **refused}).status_code == 403, refused
    assert httpx.get(f"{base}/nope", headers={"Authorization": token}).status_code == 404
    assert token not in daemon.log()
