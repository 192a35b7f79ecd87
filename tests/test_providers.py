"""Each provider against an injected transport: what it sends, what it reads, how it fails."""

from __future__ import annotations

import asyncio
import json
import re
from collections.abc import Callable
from typing import Any

import httpx
import pytest

from tokend.credential import Credential
from tokend.errors import CredentialsRejected, UpstreamError
from tokend.providers import build_provider
from tokend.providers.base import ProviderBase
from tokend.providers.exchange import parse_retry_after
from tokend.providers.felloh import FellohConfig
from tokend.providers.fintech_studios import FintechStudiosConfig
from tokend.providers.flotiq import FlotiqConfig
from tokend.redact import Redactor

FELLOH = FellohConfig(kind="felloh", base_url="https://felloh.test", public_key="pk-1", private_key="sk-secret-1")
FTS = FintechStudiosConfig(kind="fintech_studios", base_url="https://fts.test", api_key="ak-1234",
                           email="ops@example.com", password="pw-secret-1")
Handler = Callable[[httpx.Request], httpx.Response]


def fetch(config: ProviderBase, handler: Handler) -> Credential:
    redactor = Redactor(secret.get() for secret in config.secrets().values())
    provider = build_provider("p", config, redactor)  # type: ignore[arg-type]

    async def go() -> Credential:
        async with httpx.AsyncClient(transport=httpx.MockTransport(handler)) as client:
            return await provider.fetch(client)

    return asyncio.run(go())


def felloh_ok(request: httpx.Request) -> httpx.Response:
    return httpx.Response(200, json={
        "data": {"token": "tok-abc", "expiry_time": 4_000_000_000, "type": "BEARER"}, "errors": [],
        "meta": {"code": 200, "reason": "OK", "request_id": "req-42"},
    })


def test_felloh_sends_the_key_pair_as_json_and_reads_the_envelope() -> None:
    seen: list[httpx.Request] = []

    def handler(request: httpx.Request) -> httpx.Response:
        seen.append(request)
        return felloh_ok(request)

    credential = fetch(FELLOH.model_copy(update={"max_lifetime": 1e10}), handler)
    request = seen[0]
    assert (request.method, str(request.url)) == ("POST", "https://felloh.test/token")
    assert request.headers["content-type"] == "application/json" and request.headers["accept"] == "application/json"
    assert json.loads(request.content) == {"public_key": "pk-1", "private_key": "sk-secret-1"}
    assert credential.token == "tok-abc" and credential.expires_at == 4_000_000_000
    assert credential.headers == {"Authorization": "Bearer tok-abc"} and credential.request_id == "req-42"
    assert "tok-abc" not in repr(credential)


def test_fintech_studios_sends_the_api_key_and_serves_both_headers() -> None:
    seen: list[httpx.Request] = []

    def handler(request: httpx.Request) -> httpx.Response:
        seen.append(request)
        return httpx.Response(200, json={"token": "jwt-xyz", "expires": 4_000_000_000, "userId": "u1"})

    credential = fetch(FTS, handler)
    assert str(seen[0].url) == "https://fts.test/auth/token" and seen[0].headers["x-api-key"] == "ak-1234"
    assert json.loads(seen[0].content) == {"email": "ops@example.com", "password": "pw-secret-1"}
    assert credential.headers == {"x-api-key": "ak-1234", "Authorization": "Bearer jwt-xyz"}
    assert credential.expiry_note == "expiry too far away; capped at max_lifetime"


def test_flotiq_serves_its_static_key_as_header_and_query_without_any_request() -> None:
    def handler(request: httpx.Request) -> httpx.Response:
        raise AssertionError("Flotiq keys cannot be obtained by API; no request may be made")

    credential = fetch(FlotiqConfig(kind="flotiq", api_key="fk-1"), handler)
    assert (credential.token, credential.token_type, credential.expires_at) == ("fk-1", "api_key", None)
    assert credential.headers == {"X-AUTH-TOKEN": "fk-1"} and credential.query == {"auth_token": "fk-1"}


def failing(status: int, body: Any = None, headers: dict[str, str] | None = None) -> Handler:
    def handler(request: httpx.Request) -> httpx.Response:
        if isinstance(body, str):
            return httpx.Response(status, text=body, headers=headers)
        return httpx.Response(status, json=body, headers=headers)

    return handler


def test_rejected_credentials_carry_felloh_s_request_id() -> None:
    body = {"data": {}, "errors": [{"title": "Unauthorised", "message": "Invalid key pair"}],
            "meta": {"code": 401, "request_id": "req-401"}}
    with pytest.raises(CredentialsRejected) as caught:
        fetch(FELLOH, failing(401, body))
    error = caught.value
    assert (error.status, error.request_id, error.retryable) == (401, "req-401", False)
    assert error.message == "login answered 401: Invalid key pair (request id req-401)"


@pytest.mark.parametrize(
    ("status", "headers", "retryable", "retry_after"),
    [(429, {"Retry-After": "30"}, True, 30.0), (503, None, True, None), (400, None, False, None)],
)
def test_http_failures_are_classified(status, headers, retryable, retry_after) -> None:  # type: ignore[no-untyped-def]
    with pytest.raises(UpstreamError) as caught:
        fetch(FTS, failing(status, {"message": "nope"}, headers))
    assert not isinstance(caught.value, CredentialsRejected)
    assert (caught.value.status, caught.value.retryable, caught.value.retry_after) == (status, retryable, retry_after)


@pytest.mark.parametrize(
    ("status", "body", "expected"),
    [
        (200, "<html>502 Bad Gateway</html>", "not with JSON"),
        (200, {"data": {"type": "BEARER"}, "meta": {"request_id": "r9"}}, "no data.token (request id r9)"),
        (200, ["unexpected"], "no data.token"),
    ],
)
def test_garbled_answers_are_transient_errors(status, body, expected) -> None:  # type: ignore[no-untyped-def]
    with pytest.raises(UpstreamError) as caught:
        fetch(FELLOH, failing(status, body))
    assert expected in caught.value.message and caught.value.retryable


def test_transport_failures_are_wrapped_and_retryable() -> None:
    def refused(request: httpx.Request) -> httpx.Response:
        raise httpx.ConnectError("connection refused", request=request)

    def slow(request: httpx.Request) -> httpx.Response:
        raise httpx.ReadTimeout("timed out", request=request)

    def black_hole(request: httpx.Request) -> httpx.Response:
        raise httpx.ConnectTimeout("timed out", request=request)

    with pytest.raises(UpstreamError, match=re.escape("could not reach https://felloh.test/token")):
        fetch(FELLOH, refused)
    with pytest.raises(UpstreamError, match="login got no answer within 10s") as caught:
        fetch(FELLOH, slow)
    assert caught.value.retryable
    with pytest.raises(UpstreamError, match=re.escape("could not connect to https://felloh.test/token within 5s")):
        fetch(FELLOH, black_hole)


def test_connect_and_read_timeouts_are_per_provider_and_never_beyond_the_whole() -> None:
    from tokend.providers.exchange import http_timeout

    config = FELLOH.model_copy(update={"timeout": 4.0, "connect_timeout": 1.5, "read_timeout": 30.0})
    bounds = http_timeout(config)
    assert (bounds.connect, bounds.read, bounds.write, bounds.pool) == (1.5, 4.0, 4.0, 4.0)
    assert http_timeout(FELLOH).connect == 5.0 and http_timeout(FELLOH).read == 10.0


def test_an_upstream_echoing_secrets_gets_them_scrubbed() -> None:
    echo = {"message": "user ops@example.com with password pw-secret-1 and key ak-1234 is locked"}
    with pytest.raises(UpstreamError) as caught:
        fetch(FTS, failing(500, echo))
    assert "pw-secret-1" not in caught.value.message and "ak-1234" not in caught.value.message
    assert "password *** and key ***" in caught.value.message


def test_long_error_bodies_are_cut() -> None:
    with pytest.raises(UpstreamError) as caught:
        fetch(FTS, failing(502, "x" * 10_000))
    assert len(caught.value.message) < 300


def test_retry_after_accepts_seconds_and_http_dates() -> None:
    assert parse_retry_after("120") == 120.0
    assert parse_retry_after("Wed, 21 Oct 2015 07:28:00 GMT", now=1445412470.0) == 10.0
    assert parse_retry_after("soon") is None and parse_retry_after(None) is None


# -- the registry: login classes imported by name ----------------------------------------------------------------


def test_every_kind_names_its_login_class_by_module_and_class() -> None:
    from tokend.providers import PROVIDER_KINDS, all_kinds

    assert [kind.name for kind in all_kinds()] == list(PROVIDER_KINDS), "each name in the registry is its kind's"
    for kind in all_kinds():
        login = kind.login_class()
        assert kind.provider == f"{login.__module__}:{login.__qualname__}", kind.name
        assert callable(getattr(login, "fetch", None)), kind.name


_IMPORTED = """
import sys
from tokend.config.settings import Settings
from tokend.providers import import_logins
from pathlib import Path
settings = Settings.load(Path(sys.argv[1]))
before = 'tokend.providers.aws.sts' in sys.modules
import_logins(settings.providers.values())
print(before, 'tokend.providers.aws.sts' in sys.modules, 'tokend.providers.aws.sigv4' in sys.modules)
"""


def test_a_config_imports_only_the_login_modules_of_the_kinds_it_names(tmp_path: Any) -> None:
    import subprocess
    import sys

    static = '[providers.maps]\nkind = "static"\nkey = "k"\n'
    role = ('[providers.role]\nkind = "aws_assume_role"\nrole_arn = "arn:aws:iam::123456789012:role/app"\n'
            'access_key_id = "AKIAEXAMPLE"\nsecret_access_key = "s"\n')
    seen = []
    for name, body in (("static", static), ("aws", static + role)):
        config = tmp_path / f"{name}.toml"
        config.write_text(body)
        result = subprocess.run([sys.executable, "-c", _IMPORTED, str(config)], capture_output=True, text=True,
                                timeout=60, check=False)
        assert result.returncode == 0, result.stderr
        seen.append(result.stdout.split())
    # Loading a config never imports a login module; the daemon imports those of the kinds the config names.
    assert seen == [["False", "False", "False"], ["False", "True", "True"]]


_KIND_MODULES = """
import sys
from pathlib import Path
import tokend.daemon
from tokend.config.settings import Settings
settings = Settings.load(Path(sys.argv[1]))
print(" ".join(sorted(name for name in sys.modules if name in sys.argv[2:])))
"""


def test_a_config_loaded_imports_the_models_of_the_kinds_it_names_and_no_others(tmp_path: Any) -> None:
    """Every kind's model costs memory, built or not: the daemon's modules and its config bring in only the
    kinds the config names."""
    import subprocess
    import sys

    config = tmp_path / "config.toml"
    config.write_text('[providers.maps]\nkind = "static"\nkey = "k"\n')
    kind_modules = ["tokend.providers.static", "tokend.providers.aws", "tokend.providers.felloh.login",
                    "tokend.providers.github_app", "tokend.providers.google_workload_identity",
                    "tokend.providers.oauth2", "tokend.providers.oauth2_refresh_token.grant",
                    "tokend.providers.oauth2_token_exchange", "tokend.providers.jwt_bearer"]
    result = subprocess.run([sys.executable, "-c", _KIND_MODULES, str(config), *kind_modules],
                            capture_output=True, text=True, timeout=60, check=False)
    assert result.returncode == 0, result.stderr
    assert result.stdout.split() == ["tokend.providers.static"]
