"""Keys that sign: loading and refusing keys, and what each signing kind sends, against an injected transport."""

from __future__ import annotations

import asyncio
import base64
import hashlib
import json
import time
import urllib.parse
from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx
import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from joserfc import jwt
from joserfc.jwk import ECKey, RSAKey

from tokend.credential import Credential
from tokend.errors import ConfigError, CredentialsRejected
from tokend.providers import build_provider
from tokend.providers.base import ProviderBase
from tokend.providers.google_service_account import GoogleServiceAccountConfig
from tokend.providers.signing_keys import clock_skew_hint, load_key
from tokend.redact import Redactor
from tokend.testing import FakeGoogle, new_private_key

Handler = Callable[[httpx.Request], httpx.Response]
_RSA = new_private_key()


def weak_rsa_key() -> Any:
    return rsa.generate_private_key(public_exponent=65537, key_size=1024)  # noqa: S505 (the one being refused)


def pem(key: Any, fmt: serialization.PrivateFormat, passphrase: str | None = None) -> str:
    encryption: Any = (serialization.BestAvailableEncryption(passphrase.encode()) if passphrase
                       else serialization.NoEncryption())
    return key.private_bytes(serialization.Encoding.PEM, fmt, encryption).decode()


def fetch_with(provider: Any, handler: Handler, **kwargs: Any) -> Credential:
    async def go() -> Credential:
        async with httpx.AsyncClient(transport=httpx.MockTransport(handler)) as client:
            if kwargs:
                return await provider.mint(client, **kwargs)  # type: ignore[no-any-return]
            return await provider.fetch(client)  # type: ignore[no-any-return]

    return asyncio.run(go())


def provider_for(config: ProviderBase) -> Any:
    return build_provider("p", config, Redactor(secret.get() for secret in config.secrets().values()))


def decoded(assertion: str, private_key_pem: str) -> Any:
    key = load_key(private_key_pem)
    public = key.key.public_key()
    jwk = RSAKey.import_key(public) if key.type == "RSA" else ECKey.import_key(public)  # type: ignore[arg-type]
    return jwt.decode(assertion, jwk, algorithms=["RS256", "PS256", "ES256"])


def load_config(tmp_path: Path, table: str) -> Any:
    from tokend.config.settings import Settings

    path = tmp_path / "tokend.toml"
    path.write_text(table)
    return Settings.load(path)


# --- keys --------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("fmt", [serialization.PrivateFormat.TraditionalOpenSSL, serialization.PrivateFormat.PKCS8])
def test_rsa_and_ec_keys_load_from_pkcs1_pkcs8_and_sec1_with_the_fingerprint_of_their_public_key(fmt: Any) -> None:
    rsa_key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    ec_key = ec.generate_private_key(ec.SECP384R1())
    for key, kind, size in ((rsa_key, "RSA", 2048), (ec_key, "EC", 384)):
        loaded = load_key(pem(key, fmt))  # TraditionalOpenSSL is PKCS#1 for RSA and SEC1 for EC
        der = key.public_key().public_bytes(serialization.Encoding.DER,
                                            serialization.PublicFormat.SubjectPublicKeyInfo)
        assert loaded.type == kind and loaded.size == size
        assert loaded.fingerprint == "SHA256:" + base64.b64encode(hashlib.sha256(der).digest()).decode()
    assert load_key(pem(ec_key, fmt)).curve == "P-384"
    assert "RSA 2048 bits, public key fingerprint SHA256:" in load_key(pem(rsa_key, fmt)).describe()


def test_an_encrypted_key_needs_its_passphrase_and_a_wrong_one_is_named() -> None:
    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    encrypted = pem(key, serialization.PrivateFormat.PKCS8, "s3cret-pass")
    assert load_key(encrypted, "s3cret-pass").type == "RSA"
    with pytest.raises(ValueError, match="encrypted key: its passphrase is needed"):
        load_key(encrypted)
    with pytest.raises(ValueError, match="cannot be decrypted with the passphrase"):
        load_key(encrypted, "wrong")
    with pytest.raises(ValueError, match="not encrypted, but a passphrase was given"):
        load_key(pem(key, serialization.PrivateFormat.PKCS8), "s3cret-pass")


def test_weak_keys_and_other_curves_are_refused_with_a_sentence() -> None:
    weak = weak_rsa_key()
    with pytest.raises(ValueError, match="RSA key of 1024 bits; at least 2048"):
        load_key(pem(weak, serialization.PrivateFormat.PKCS8))
    k1 = ec.generate_private_key(ec.SECP256K1())
    with pytest.raises(ValueError, match="curve secp256k1; only P-256 and P-384"):
        load_key(pem(k1, serialization.PrivateFormat.PKCS8))
    with pytest.raises(ValueError, match="not a PEM private key"):
        load_key("just text")
    ec256 = load_key(pem(ec.generate_private_key(ec.SECP256R1()), serialization.PrivateFormat.PKCS8))
    with pytest.raises(ValueError, match="RS256 needs an RSA key"):
        ec256.check_algorithm("RS256")
    with pytest.raises(ValueError, match="ES256 needs an EC key"):
        load_key(_RSA).check_algorithm("ES256")


def test_a_refusal_of_the_assertions_times_names_clock_skew_first() -> None:
    hinted = clock_skew_hint("login answered 401: 'Expiration time' claim ('exp') is too far in the future")
    assert hinted.startswith("the assertion's times (iat/exp) were refused; first check this machine's clock")
    assert clock_skew_hint("login answered 401: A JSON web token could not be decoded") == (
        "login answered 401: A JSON web token could not be decoded")
    assert clock_skew_hint("unexpected answer") == "unexpected answer"


# --- google_service_account ---------------------------------------------------------------------------------


def google_config(fake: FakeGoogle, **settings: Any) -> GoogleServiceAccountConfig:
    return GoogleServiceAccountConfig(kind="google_service_account", key=fake.key_file("https://oauth2.test/token"),
                                      **settings)


def test_google_signs_an_rs256_jwt_with_the_key_id_and_posts_the_jwt_bearer_grant() -> None:
    fake = FakeGoogle()
    seen: list[httpx.Request] = []

    def handler(request: httpx.Request) -> httpx.Response:
        seen.append(request)
        return httpx.Response(200, json={"access_token": "ya29.abc", "expires_in": 3599, "token_type": "Bearer"})

    provider = provider_for(google_config(fake, subject="admin@example.com"))
    before = time.time()
    credential = fetch_with(provider, handler)
    request = seen[0]
    assert str(request.url) == "https://oauth2.test/token"
    form = dict(urllib.parse.parse_qsl(request.content.decode()))
    assert form["grant_type"] == "urn:ietf:params:oauth:grant-type:jwt-bearer" and set(form) == {"grant_type",
                                                                                                  "assertion"}
    token = decoded(form["assertion"], fake.private_key)
    assert token.header == {"alg": "RS256", "typ": "JWT", "kid": fake.private_key_id}
    claims = token.claims
    assert claims["iss"] == fake.client_email and claims["aud"] == "https://oauth2.test/token"
    assert claims["scope"] == "https://www.googleapis.com/auth/cloud-platform"
    assert claims["sub"] == "admin@example.com" and claims["exp"] - claims["iat"] == 3600
    assert before - 120 < claims["iat"] < before and claims["jti"]
    assert credential.headers == {"Authorization": "Bearer ya29.abc"}
    assert 3500 < credential.expires_at - before <= 3600  # type: ignore[operator]
    again = fetch_with(provider, handler)
    assert again.token == "ya29.abc"
    second = dict(urllib.parse.parse_qsl(seen[1].content.decode()))["assertion"]
    assert decoded(second, fake.private_key).claims["jti"] != claims["jti"]


def test_google_mints_an_id_token_for_an_audience_and_an_access_token_for_other_scopes() -> None:
    fake = FakeGoogle()
    exp = int(time.time()) + 1800
    id_token = load_key(_RSA).sign({"aud": "https://run.example", "exp": exp}, alg="RS256")
    claims_seen: list[dict[str, Any]] = []

    def handler(request: httpx.Request) -> httpx.Response:
        assertion = dict(urllib.parse.parse_qsl(request.content.decode()))["assertion"]
        claims = decoded(assertion, fake.private_key).claims
        claims_seen.append(claims)
        if "target_audience" in claims:
            return httpx.Response(200, json={"id_token": id_token})
        return httpx.Response(200, json={"access_token": "ya29.other", "expires_in": 3599})

    provider = provider_for(google_config(fake, scopes=["https://www.googleapis.com/auth/devstorage.read_only"]))
    assert provider.client_email == fake.client_email
    assert provider.scopes == ("https://www.googleapis.com/auth/devstorage.read_only",)
    credential = fetch_with(provider, handler, audience="https://run.example")
    assert credential.token == id_token and credential.expires_at == exp and credential.expiry_note is None
    assert claims_seen[0]["target_audience"] == "https://run.example" and "scope" not in claims_seen[0]
    other = fetch_with(provider, handler, scopes=["a", "b"])
    assert other.token == "ya29.other" and claims_seen[1]["scope"] == "a b"
    served = provider_for(google_config(fake, target_audience="https://run.example"))
    assert fetch_with(served, handler).token == id_token


def test_google_invalid_grant_is_a_refused_credential_and_a_timeframe_refusal_names_the_clock() -> None:
    fake = FakeGoogle()
    provider = provider_for(google_config(fake))

    def wrong_key(request: httpx.Request) -> httpx.Response:
        return httpx.Response(400, json={"error": "invalid_grant", "error_description": "Invalid JWT Signature."})

    with pytest.raises(CredentialsRejected, match="Invalid JWT Signature"):
        fetch_with(provider, wrong_key)

    def skewed(request: httpx.Request) -> httpx.Response:
        return httpx.Response(400, json={"error": "invalid_grant", "error_description":
                                         "Invalid JWT: Token must be a short-lived token (60 minutes) and in a "
                                         "reasonable timeframe. Check your iat and exp values in the JWT claim."})

    with pytest.raises(CredentialsRejected, match="first check this machine's clock"):
        fetch_with(provider, skewed)


def test_google_key_file_problems_are_sentences_naming_provider_and_field(tmp_path: Path) -> None:
    fake = FakeGoogle()
    weak = pem(weak_rsa_key(), serialization.PrivateFormat.PKCS8)
    cases = {
        "not json": "is not a service account JSON key file (it is not JSON)",
        json.dumps({"type": "service_account", "client_email": "a@b"}): "without private_key, private_key_id, "
                                                                         "token_uri",
        json.dumps({**json.loads(fake.key_file("https://oauth2.test/token")), "private_key": weak}):
            "holds a private_key that is an RSA key of 1024 bits",
        fake.key_file("http://oauth2.example/token"): "token_uri that cannot be used",
    }
    for content, expected in cases.items():
        (tmp_path / "key.json").write_text(content)
        with pytest.raises(ConfigError) as caught:
            load_config(tmp_path, f'[providers.gcs]\nkind = "google_service_account"\nkey = {{ file = '
                                  f'"{tmp_path / "key.json"}" }}\n')
        problem = caught.value.problems[0]
        assert problem.startswith('provider "gcs", field "key": ') and expected in problem, problem
        assert "PRIVATE KEY" not in problem and "MII" not in problem


# --- github_app --------------------------------------------------------------------------------------------


def github_config(**settings: Any) -> Any:
    from tokend.providers.github_app import GitHubAppConfig

    return GitHubAppConfig(kind="github_app", client_id="Iv23liABC", installation_id=42, private_key=_RSA,
                           **settings)


def test_github_app_sends_a_short_rs256_jwt_with_githubs_headers_and_reads_the_201() -> None:
    seen: list[httpx.Request] = []

    def handler(request: httpx.Request) -> httpx.Response:
        seen.append(request)
        return httpx.Response(201, json={"token": "ghs_x", "expires_at": "2099-01-01T00:00:00Z",
                                         "permissions": {"contents": "read"}})

    before = int(time.time())
    credential = fetch_with(provider_for(github_config(repositories=["demo"], permissions={"contents": "read"},
                                                       max_lifetime=1e10)), handler)
    request = seen[0]
    assert str(request.url) == "https://api.github.com/app/installations/42/access_tokens"
    assert request.headers["accept"] == "application/vnd.github+json"
    assert request.headers["x-github-api-version"] == "2022-11-28"
    assert request.headers["user-agent"].startswith("tokend/")
    assert json.loads(request.content) == {"repositories": ["demo"], "permissions": {"contents": "read"}}
    scheme, _, assertion = request.headers["authorization"].partition(" ")
    token = decoded(assertion, _RSA)
    assert scheme == "Bearer" and token.header["alg"] == "RS256"
    claims = token.claims
    assert claims["iss"] == "Iv23liABC" and before - 62 <= claims["iat"] <= before - 58
    assert claims["exp"] <= time.time() + 600 and claims["jti"]
    assert credential.token == "ghs_x" and credential.headers == {"Authorization": "Bearer ghs_x"}
    assert credential.expires_at == 4070908800


def test_github_app_without_narrowing_sends_no_body_and_app_id_is_the_issuer() -> None:
    from tokend.providers.github_app import GitHubAppConfig

    seen: list[httpx.Request] = []

    def handler(request: httpx.Request) -> httpx.Response:
        seen.append(request)
        return httpx.Response(201, json={"token": "ghs_y", "expires_at": "2099-01-01T00:00:00Z"})

    config = GitHubAppConfig(kind="github_app", app_id=1234, installation_id=5, private_key=_RSA,
                             base_url="https://github.example.com/api/v3")
    fetch_with(provider_for(config), handler)
    assert seen[0].content == b"" and str(seen[0].url).startswith("https://github.example.com/api/v3/app/")
    assert decoded(seen[0].headers["authorization"][7:], _RSA).claims["iss"] == "1234"
    assert config.proxy_target == "https://github.example.com/api/v3"


def test_github_404_names_the_installation_and_a_refused_jwt_names_the_clock_or_the_key() -> None:
    provider = provider_for(github_config())

    def missing(request: httpx.Request) -> httpx.Response:
        return httpx.Response(404, json={"message": "Not Found", "documentation_url": "https://docs.github.com"})

    with pytest.raises(CredentialsRejected, match="GitHub has no installation 42 of app Iv23liABC"):
        fetch_with(provider, missing)

    def too_far(request: httpx.Request) -> httpx.Response:
        return httpx.Response(401, json={"message": "'Expiration time' claim ('exp') is too far in the future"})

    with pytest.raises(CredentialsRejected, match="first check this machine's clock"):
        fetch_with(provider, too_far)

    def undecodable(request: httpx.Request) -> httpx.Response:
        return httpx.Response(401, json={"message": "A JSON web token could not be decoded"})

    with pytest.raises(CredentialsRejected, match="is private_key this app's key"):
        fetch_with(provider, undecodable)


def test_github_app_config_wants_an_issuer_and_an_rsa_key(tmp_path: Path) -> None:
    ec_key = new_private_key("EC")
    (tmp_path / "ec.pem").write_text(ec_key)
    with pytest.raises(ConfigError) as caught:
        load_config(tmp_path, f'[providers.gh]\nkind = "github_app"\ninstallation_id = 1\n'
                              f'private_key = {{ file = "{tmp_path / "ec.pem"}" }}\n')
    problems = caught.value.problems
    assert any(p.startswith('provider "gh", field "private_key": is not an RSA key') for p in problems), problems
    (tmp_path / "rsa.pem").write_text(_RSA)
    with pytest.raises(ConfigError) as caught:
        load_config(tmp_path, f'[providers.gh]\nkind = "github_app"\ninstallation_id = 1\n'
                              f'private_key = {{ file = "{tmp_path / "rsa.pem"}" }}\n')
    assert caught.value.problems == ['provider "gh": client_id (or app_id) is required: the app\'s Client ID from '
                                     'its settings page']


# --- oauth2_client_credentials with private_key_jwt ------------------------------------------------------


def private_key_jwt_config(key: str = _RSA, **settings: Any) -> Any:
    from tokend.providers.oauth2 import OAuth2ClientCredentialsConfig

    return OAuth2ClientCredentialsConfig(
        kind="oauth2_client_credentials", token_url="https://login.example/tenant/oauth2/v2.0/token",
        client_id="app-1", auth_method="private_key_jwt", client_assertion_key=key,
        scope="https://graph.microsoft.com/.default", **settings)


@pytest.mark.parametrize("alg", ["RS256", "PS256", "ES256"])
def test_private_key_jwt_signs_rfc_7523_claims_and_sends_no_secret(tmp_path: Path, alg: str) -> None:
    from tokend.testing import self_signed_certificate

    key = new_private_key("EC") if alg == "ES256" else _RSA
    certificate = tmp_path / "cert.pem"
    certificate.write_text(self_signed_certificate(key))
    seen: list[httpx.Request] = []

    def handler(request: httpx.Request) -> httpx.Response:
        seen.append(request)
        return httpx.Response(200, json={"access_token": "at-1", "expires_in": 3599, "token_type": "Bearer"})

    config = private_key_jwt_config(key, client_assertion_alg=alg, client_certificate=certificate,
                                    client_assertion_kid="kid-7")
    credential = fetch_with(provider_for(config), handler)
    form = dict(urllib.parse.parse_qsl(seen[0].content.decode()))
    assert set(form) == {"grant_type", "scope", "client_id", "client_assertion_type", "client_assertion"}
    assert form["grant_type"] == "client_credentials" and form["client_id"] == "app-1"
    assert form["client_assertion_type"] == "urn:ietf:params:oauth:client-assertion-type:jwt-bearer"
    assert "authorization" not in seen[0].headers
    token = decoded(form["client_assertion"], key)
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes

    cert = x509.load_pem_x509_certificate(certificate.read_bytes())
    assert token.header["alg"] == alg and token.header["kid"] == "kid-7"
    assert token.header["x5t#S256"] == base64.urlsafe_b64encode(cert.fingerprint(hashes.SHA256())).rstrip(b"=").decode()
    assert token.header["x5t"] == base64.urlsafe_b64encode(cert.fingerprint(hashes.SHA1())).rstrip(b"=").decode()  # noqa: S303
    claims = token.claims
    assert claims["iss"] == claims["sub"] == "app-1" and claims["aud"] == config.token_url
    assert claims["nbf"] == claims["iat"] and claims["exp"] - claims["iat"] == 300 and claims["jti"]
    assert credential.token == "at-1"


def test_private_key_jwt_settings_are_checked_together(tmp_path: Path) -> None:
    from tokend.testing import self_signed_certificate

    (tmp_path / "key.pem").write_text(_RSA)
    (tmp_path / "other.pem").write_text(self_signed_certificate(new_private_key()))
    head = ('[providers.entra]\nkind = "oauth2_client_credentials"\ntoken_url = "https://login.example/t"\n'
            'client_id = "app"\n')
    key = f'client_assertion_key = {{ file = "{tmp_path / "key.pem"}" }}\n'
    cases = {
        'auth_method = "private_key_jwt"\n': 'needs client_assertion_key',
        'auth_method = "private_key_jwt"\nclient_secret = "s"\n' + key: 'sends no client secret',
        key: "client_assertion_key need auth_method",
        "": "client_secret is required",
        'auth_method = "private_key_jwt"\nclient_assertion_alg = "ES256"\n' + key: "client_assertion_alg: ES256 "
                                                                                   "needs an EC key",
        f'auth_method = "private_key_jwt"\nclient_certificate = "{tmp_path / "other.pem"}"\n' + key:
            "is the certificate of another key",
    }
    for table, expected in cases.items():
        with pytest.raises(ConfigError) as caught:
            load_config(tmp_path, head + table)
        assert any(p.startswith('provider "entra"') and expected in p for p in caught.value.problems), (
            table, caught.value.problems)


def test_entra_style_refusals_are_refused_credentials_and_a_time_range_names_the_clock() -> None:
    provider = provider_for(private_key_jwt_config())

    def answer(description: str) -> Handler:
        return lambda request: httpx.Response(401, json={"error": "invalid_client", "error_description": description})

    with pytest.raises(CredentialsRejected, match="AADSTS700027"):
        fetch_with(provider, answer("AADSTS700027: The certificate with identifier used to sign the client "
                                    "assertion is not registered on application."))
    with pytest.raises(CredentialsRejected, match=r"first check this machine's clock.*AADSTS700024"):
        fetch_with(provider, answer("AADSTS700024: Client assertion is not within its valid time range."))


# --- jwt_bearer -------------------------------------------------------------------------------------------


def test_jwt_bearer_posts_the_grant_with_claims_and_uses_default_lifetime_without_expires_in() -> None:
    from tokend.providers.jwt_bearer import JWTBearerConfig

    seen: list[httpx.Request] = []

    def handler(request: httpx.Request) -> httpx.Response:
        seen.append(request)
        return httpx.Response(200, json={"access_token": "00Dabc", "instance_url": "https://x.my.salesforce.com",
                                         "token_type": "Bearer"})

    config = JWTBearerConfig(kind="jwt_bearer", token_url="https://login.salesforce.com/services/oauth2/token",
                             private_key=_RSA, issuer="3MVG9key", subject="user@example.com",
                             audience="https://login.salesforce.com", scope=["api", "refresh_token"],
                             claims={"tenant": "t1"}, kid="k1", default_lifetime=7200)
    before = time.time()
    credential = fetch_with(provider_for(config), handler)
    form = dict(urllib.parse.parse_qsl(seen[0].content.decode()))
    assert form["grant_type"] == "urn:ietf:params:oauth:grant-type:jwt-bearer" and form["scope"] == "api refresh_token"
    token = decoded(form["assertion"], _RSA)
    assert token.header["kid"] == "k1"
    claims = token.claims
    assert (claims["iss"], claims["sub"], claims["aud"], claims["tenant"]) == (
        "3MVG9key", "user@example.com", "https://login.salesforce.com", "t1")
    assert claims["exp"] - claims["iat"] == 180 and claims["jti"]
    assert 7190 < credential.expires_at - before <= 7201  # type: ignore[operator]
    assert credential.expiry_note == "no expiry given; default_lifetime used"
    default_aud = config.model_copy(update={"audience": None})
    fetch_with(provider_for(default_aud), handler)
    again = dict(urllib.parse.parse_qsl(seen[1].content.decode()))["assertion"]
    assert decoded(again, _RSA).claims["aud"] == config.token_url


def test_jwt_bearer_refuses_claims_it_sets_itself(tmp_path: Path) -> None:
    (tmp_path / "key.pem").write_text(_RSA)
    with pytest.raises(ConfigError) as caught:
        load_config(tmp_path, f'[providers.sf]\nkind = "jwt_bearer"\ntoken_url = "https://login.example/token"\n'
                              f'private_key = {{ file = "{tmp_path / "key.pem"}" }}\nissuer = "i"\nsubject = "s"\n'
                              'claims = { exp = 1 }\n')
    assert "claims must not set exp" in caught.value.problems[0]


def test_an_upstream_echoing_the_signed_assertion_never_gets_it_into_an_error() -> None:
    from tokend.providers.github_app import GitHubAppConfig  # noqa: F401 (the kinds register on import)
    from tokend.providers.jwt_bearer import JWTBearerConfig

    def echo(request: httpx.Request) -> httpx.Response:
        body = request.content.decode()
        sent = dict(urllib.parse.parse_qsl(body)) if body and not body.startswith("{") else {}
        assertion = (sent.get("assertion") or sent.get("client_assertion")
                     or request.headers.get("authorization", "")[7:])
        return httpx.Response(401, json={"error": "invalid_client", "error_description": f"bad {assertion}",
                                         "message": f"bad {assertion}"})

    jwt_bearer = JWTBearerConfig(kind="jwt_bearer", token_url="https://sf.test/token", private_key=_RSA,
                                 issuer="i", subject="s")
    for config in (github_config(), google_config(FakeGoogle()), private_key_jwt_config(), jwt_bearer):
        with pytest.raises(CredentialsRejected) as caught:
            fetch_with(provider_for(config), echo)
        assert "bad ***" in caught.value.message and "eyJ" not in caught.value.message, caught.value.message


def test_google_delegation_applies_to_access_tokens_not_to_id_tokens() -> None:
    fake = FakeGoogle()
    id_token = load_key(_RSA).sign({"exp": int(time.time()) + 600}, alg="RS256")
    seen: list[dict[str, Any]] = []

    def handler(request: httpx.Request) -> httpx.Response:
        seen.append(decoded(dict(urllib.parse.parse_qsl(request.content.decode()))["assertion"], fake.private_key)
                    .claims)
        return httpx.Response(200, json={"access_token": "ya29.a", "expires_in": 3599, "id_token": id_token})

    provider = provider_for(google_config(fake, subject="admin@example.com"))
    fetch_with(provider, handler, audience="https://iap.example")
    fetch_with(provider, handler, scopes=["https://www.googleapis.com/auth/admin.directory.user.readonly"])
    assert "sub" not in seen[0] and seen[1]["sub"] == "admin@example.com"
