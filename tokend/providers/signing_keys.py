"""Private keys that sign, and the JWT assertions they sign: what the signing kinds (github_app,
google_service_account, jwt_bearer, oauth2's private_key_jwt) share.

A key is PEM (PKCS#1, PKCS#8 or SEC1, optionally encrypted), RSA of 2048 bits or more, or EC on P-256 or
P-384: what every one of those services accepts, and nothing weaker. `cryptography` and `joserfc` are
imported inside the functions below, never at import time, so that a daemon with no signing kind
configured does not load them (they cost several megabytes of memory at start).
"""

from __future__ import annotations

import base64
import functools
import hashlib
import re
import secrets
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Literal

from tokend.config.secrets import SecretValue
from tokend.errors import UpstreamError

if TYPE_CHECKING:
    from cryptography.hazmat.primitives.asymmetric.ec import EllipticCurvePrivateKey
    from cryptography.hazmat.primitives.asymmetric.rsa import RSAPrivateKey
    from pydantic import ValidationInfo

    from tokend.redact import Redactor

__all__ = [
    "ALGORITHMS",
    "Algorithm",
    "SigningKey",
    "assertion_claims",
    "certificate_thumbprints",
    "checked_key",
    "clock_skew_hint",
    "describe_key",
    "key_identity",
    "load_key",
    "login_key",
    "masked",
    "optional_secret",
]

Algorithm = Literal["RS256", "RS384", "RS512", "PS256", "PS384", "PS512", "ES256", "ES384"]
ALGORITHMS: tuple[Algorithm, ...] = ("RS256", "RS384", "RS512", "PS256", "PS384", "PS512", "ES256", "ES384")

MIN_RSA_BITS = 2048  # NIST's floor since 2013, and GitHub's, Google's and Entra ID's
# The curves every one of these services accepts, by cryptography's name: (the JOSE name, its algorithm).
_CURVES = {"secp256r1": ("P-256", "ES256"), "secp384r1": ("P-384", "ES384")}
# `iat` is set this far in the past: a server whose clock runs a little behind ours would otherwise see an
# assertion issued in its future and refuse it.
ISSUED_BEFORE = 30.0


@dataclass(frozen=True, eq=False)
class SigningKey:
    """A loaded private key, and what may be shown of it: its type, size and public key's fingerprint."""

    key: RSAPrivateKey | EllipticCurvePrivateKey = field(repr=False)
    type: Literal["RSA", "EC"]
    size: int  # bits
    curve: str | None  # the JOSE name, for EC keys
    fingerprint: str  # SHA256:<base64> of the DER SubjectPublicKeyInfo, as GitHub shows an app's keys

    def describe(self) -> str:
        kind = f"RSA {self.size} bits" if self.type == "RSA" else f"EC {self.curve}"
        return f"{kind}, public key fingerprint {self.fingerprint}"

    def check_algorithm(self, alg: str) -> None:
        """ValueError unless this key can sign with `alg`."""
        if alg.startswith(("RS", "PS")) and self.type != "RSA":
            raise ValueError(f"{alg} needs an RSA key, and this is an EC {self.curve} key")
        if alg.startswith("ES"):
            if self.type != "EC":
                raise ValueError(f"{alg} needs an EC key, and this is an RSA key")
            wanted = "P-256" if alg == "ES256" else "P-384"
            if self.curve != wanted:
                raise ValueError(f"{alg} needs a {wanted} key, and this one is {self.curve}")

    def sign(self, claims: Mapping[str, Any], *, alg: str, header: Mapping[str, Any] | None = None) -> str:
        """A compact JWS of `claims`, with `typ` JWT, `alg` and the extra `header` fields."""
        from cryptography.hazmat.primitives.asymmetric.rsa import RSAPrivateKey
        from joserfc import jwt
        from joserfc.jwk import ECKey, RSAKey

        jwk = RSAKey.import_key(self.key) if isinstance(self.key, RSAPrivateKey) else ECKey.import_key(self.key)
        return jwt.encode({"alg": alg, "typ": "JWT", **(header or {})}, dict(claims), jwk, algorithms=[alg])


# Loading an RSA key checks it (tens of milliseconds); the config check, `tokend check`, fleet mode's share key
# and the login all load the same one. A few only: a rotated-away key should not linger for long.
@functools.lru_cache(maxsize=8)
def load_key(pem: str, passphrase: str | None = None) -> SigningKey:
    """The private key in `pem`, or ValueError with a sentence saying what is wrong (never the key)."""
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric import ec, rsa

    if "-----BEGIN" not in pem:
        raise ValueError("is not a PEM private key (no -----BEGIN ... PRIVATE KEY----- line)")
    password = passphrase.encode() if passphrase is not None else None
    try:
        key = serialization.load_pem_private_key(pem.encode(), password=password)
    except TypeError:
        if password is None:
            raise ValueError("is an encrypted key: its passphrase is needed (the _passphrase setting)") from None
        raise ValueError("is not encrypted, but a passphrase was given: remove the passphrase setting") from None
    except ValueError:
        if password is not None:
            raise ValueError("cannot be decrypted with the passphrase given, or is not a valid PEM key") from None
        raise ValueError("is not a valid PEM private key (PKCS#1, PKCS#8 or SEC1)") from None
    except Exception:  # cryptography's UnsupportedAlgorithm and kin: a key type it cannot load
        raise ValueError("is a PEM private key of a type tokend cannot use (RSA or EC only)") from None
    if isinstance(key, rsa.RSAPrivateKey):
        if key.key_size < MIN_RSA_BITS:
            raise ValueError(f"is an RSA key of {key.key_size} bits; at least {MIN_RSA_BITS} are required: "
                             "make a new key")
        return SigningKey(key, "RSA", key.key_size, None, _fingerprint(key))
    if isinstance(key, ec.EllipticCurvePrivateKey):
        curve = _CURVES.get(key.curve.name)
        if curve is None:
            raise ValueError(f"is an EC key on the curve {key.curve.name}; only P-256 and P-384 are accepted")
        return SigningKey(key, "EC", key.key_size, curve[0], _fingerprint(key))
    raise ValueError(f"is a {type(key).__name__.removesuffix('PrivateKey') or 'kind of'} key; "
                     "only RSA and EC (P-256, P-384) keys are accepted")


def _fingerprint(key: RSAPrivateKey | EllipticCurvePrivateKey) -> str:
    from cryptography.hazmat.primitives import serialization

    der = key.public_key().public_bytes(serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo)
    return "SHA256:" + base64.b64encode(hashlib.sha256(der).digest()).decode()


def certificate_thumbprints(pem: str, key: SigningKey) -> dict[str, str]:
    """The `x5t` (SHA-1) and `x5t#S256` header values of a PEM certificate, which must be `key`'s own:
    Entra ID finds the registered certificate by them, and refuses an assertion signed by another key."""
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization

    try:
        certificate = x509.load_pem_x509_certificate(pem.encode())
    except ValueError:
        raise ValueError("is not a PEM certificate (-----BEGIN CERTIFICATE-----)") from None
    spki = serialization.PublicFormat.SubjectPublicKeyInfo
    ours = key.key.public_key().public_bytes(serialization.Encoding.DER, spki)
    if certificate.public_key().public_bytes(serialization.Encoding.DER, spki) != ours:
        raise ValueError("is the certificate of another key than the one configured beside it")
    return {
        "x5t": _b64url(certificate.fingerprint(hashes.SHA1())),  # noqa: S303 (a name, not a signature)
        "x5t#S256": _b64url(certificate.fingerprint(hashes.SHA256())),
    }


def assertion_claims(lifetime: float, *, issued_before: float = ISSUED_BEFORE, **claims: Any) -> dict[str, Any]:
    """`claims` with a fresh `jti`, `iat` a little in the past and `exp` `lifetime` seconds after it. A
    claim given as None is left out."""
    iat = int(time.time() - issued_before)
    return {"jti": secrets.token_urlsafe(16), "iat": iat, "exp": int(iat + lifetime),
            **{name: value for name, value in claims.items() if value is not None}}


# Words in an upstream's refusal that point at the assertion's times rather than at the key.
_TIME_WORDS = re.compile(r"\b(iat|exp|nbf|issued at|expiration time|not yet valid|timeframe|time range|"
                         r"valid time|clock|in the future|short-lived|AADSTS700024|AADSTS700025)\b", re.IGNORECASE)


def clock_skew_hint(message: str) -> str:
    """`message`, led by the likely cause when an upstream refused the assertion's times: a clock off."""
    if _TIME_WORDS.search(message):
        return ("the assertion's times (iat/exp) were refused; first check this machine's clock (clock skew: "
                f"is NTP running?): {message}")
    return message


# --- for the signing kinds' settings and logins ---------------------------------------------------------------


def optional_secret(secret: SecretValue | None) -> str | None:
    return None if secret is None else secret.get()


def login_key(provider: str, field: str, key: SecretValue, passphrase: SecretValue | None) -> SigningKey:
    """A signing kind's key for a login: a key file rotated into something unusable fails the login (and
    is retried slowly), saying what is wrong with it, as the config check would have."""
    try:
        return load_key(key.get(), optional_secret(passphrase))
    except ValueError as exc:
        raise UpstreamError(provider, f"{field} (from {key.source}) {exc}", retryable=False) from None


def masked(redactor: Redactor, provider: str, assertion: str) -> str:
    """`assertion`, which the redactor masks from now on: a signed assertion is a credential for minutes
    (Google's for an hour), and an upstream that echoes the request in its error would echo it."""
    redactor.set_tokens(f"{provider} (assertion)", [assertion])
    return assertion


def checked_key(key: SecretValue, info: ValidationInfo, passphrase_field: str) -> SecretValue:
    """A key field's validator: the key loads (with the passphrase validated before it) and is strong enough."""
    passphrase = info.data.get(passphrase_field)
    load_key(key.get(), passphrase.get() if isinstance(passphrase, SecretValue) else None)
    return key


def describe_key(key: SecretValue, passphrase: SecretValue | None) -> str:
    try:
        return load_key(key.get(), optional_secret(passphrase)).describe()
    except ValueError as exc:  # rotated since the config was checked
        return f"unusable: {exc}"


def key_identity(key: SecretValue, passphrase: SecretValue | None) -> str:
    """A key as fleet mode's share hash sees it: its public key's fingerprint (the raw text's hash when it no
    longer loads, so that a broken key never shares a login with a working one)."""
    try:
        return load_key(key.get(), optional_secret(passphrase)).fingerprint
    except ValueError:
        return "unloadable:" + hashlib.sha256(key.get().encode()).hexdigest()


def _b64url(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode("ascii")
