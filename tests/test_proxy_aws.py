"""The proxy signs an AWS provider's requests with SigV4: real boto3 clients (given dummy keys, which must be
dropped) through the proxy to the fake AWS service, which recomputes every signature as AWS does."""

from __future__ import annotations

import hashlib
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.daemon import Daemon, free_port
from tests.test_aws import ROLE, role_table, write
from tokend.config.settings import Settings
from tokend.errors import ConfigError
from tokend.testing import FakeServer, FakeSTS
from tokend.testing.aws import ACCOUNT

LIMIT = 4096
CALLER = f"arn:aws:sts::{ACCOUNT}:assumed-role/app/tokend-role"


@pytest.fixture(params=["dynamodb", "s3"])
def proxied(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[tuple[str, FakeSTS, str]]:
    service: str = request.param
    fake = FakeSTS(service=service)
    fake.add_role(ROLE)
    fake.require_region("eu-west-1")  # STS's calls and the proxy's: aws_region defaults to region
    with FakeServer(fake.app) as server:
        key_id, secret = fake.add_user()
        listen = f"127.0.0.1:{free_port()}"
        body = role_table(server.url, key_id, secret) + (
            f'region = "eu-west-1"\nproxy = true\naws_service = "{service}"\napi_url = "{server.url}/svc"\n'
            f'proxy_listen = "{listen}"\nproxy_retry_body_limit = {LIMIT}\n')
        daemon = Daemon(write(tmp_path, body.replace("\n\n", "\n") + "\n"), log_path=tmp_path / "daemon.log")
        daemon.start()
        try:
            yield service, fake, f"http://{listen}"
        finally:
            daemon.kill()


def client(service: str, url: str) -> Any:
    import boto3
    from botocore.config import Config

    made = boto3.session.Session().client(
        service, endpoint_url=url, region_name="eu-west-1", aws_access_key_id="AKIADUMMYDUMMYDUMMY0",
        aws_secret_access_key="dummy", aws_session_token="dummy-token",
        config=Config(s3={"addressing_style": "path"}, retries={"max_attempts": 1}))

    def mark(request: Any, **_: Any) -> None:
        request.headers["X-Tokend-Request"] = "1"  # what the proxy asks of every caller

    made.meta.events.register("before-sign", mark)
    return made


@pytest.mark.filterwarnings("ignore:.*plain string.*")
def test_boto3_through_the_proxy_is_signed_with_the_providers_credentials(
    proxied: tuple[str, FakeSTS, str]
) -> None:
    service, fake, url = proxied
    aws = client(service, url)
    if service == "dynamodb":  # JSON 1.0: POST / with X-Amz-Target, signed with the body's hash
        aws.list_tables()
        assert fake.calls[-1] == ("/svc/", CALLER)
        aws.put_item(TableName="t", Item={"k": {"S": "x" * 1000}})
        assert fake.calls[-1] == ("/svc/", CALLER)
    else:  # S3's own rules: the path encoded once, x-amz-content-sha256
        aws.put_object(Bucket="bucket", Key="a b+c=d.txt", Body=b"hello")
        assert fake.calls[-1] == ("/svc/bucket/a b+c=d.txt", CALLER)
        aws.get_object(Bucket="bucket", Key="dir/file.txt")
        assert fake.calls[-1] == ("/svc/bucket/dir/file.txt", CALLER)


@pytest.mark.filterwarnings("ignore:.*plain string.*")
def test_a_streamed_body_is_unsigned_payload_for_s3_and_refused_elsewhere(proxied: tuple[str, FakeSTS, str]) -> None:
    service, fake, url = proxied
    data = b"0123456789abcdef" * (LIMIT // 8)  # twice the limit: streamed, never held whole

    def pieces() -> Iterator[bytes]:
        for start in range(0, len(data), 1000):
            yield data[start:start + 1000]

    headers = {"X-Tokend-Request": "1", "Authorization": "AWS4-HMAC-SHA256 Credential=AKIADUMMY/x",
               "X-Amz-Content-Sha256": "0" * 64, "Content-Type": "application/octet-stream"}
    answer = httpx.put(f"{url}/bucket/big.bin", content=pieces(), headers=headers)
    if service == "s3":
        assert answer.status_code == 200, answer.text
        assert f"<body_sha256>{hashlib.sha256(data).hexdigest()}</body_sha256>" in answer.text
        assert fake.calls[-1] == ("/svc/bucket/big.bin", CALLER)
        # Through boto3 too, a body larger than the limit with its length given.
        client(service, url).put_object(Bucket="bucket", Key="big2.bin", Body=data)
        assert fake.calls[-1] == ("/svc/bucket/big2.bin", CALLER)
    else:
        assert answer.status_code == 413
        assert "signed with its body's SHA-256" in answer.json()["message"]
        assert not any(path == "/svc/bucket/big.bin" for path, _ in fake.calls)


@pytest.mark.filterwarnings("ignore:.*plain string.*")
def test_proxy_on_an_aws_provider_needs_its_service(tmp_path: Path) -> None:
    body = role_table("https://sts.example.com", "AKIAEXAMPLE", "secret") + \
        'proxy = true\napi_url = "https://dynamodb.eu-west-1.amazonaws.com"\n'
    with pytest.raises(ConfigError) as caught:
        Settings.load(write(tmp_path, body.replace("\n\n", "\n") + "\n"))
    assert any("proxy = true needs aws_service" in problem for problem in caught.value.problems), caught.value.problems
    settings = Settings.load(write(tmp_path, body.replace("\n\n", "\n") + 'aws_service = "dynamodb"\n'))
    assert settings.providers["role"].proxy_sigv4 == ("dynamodb", "us-east-1")
