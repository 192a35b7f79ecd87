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
from tokend.redact import Redactor
from tokend.signing import clock_skew_hint, load_key
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
    from tokend.config import Settings

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
