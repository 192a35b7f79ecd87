"""Keys and certificates for the signing kinds' fakes and tests, and the checks those fakes make of a JWT.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from datetime import UTC, datetime
from typing import Any, Literal

from tokend.testing.base import (
    Refused,
    b64url_decode,
)


def new_private_key(kind: Literal["RSA", "EC"] = "RSA", *, bits: int = 2048, passphrase: str | None = None) -> str:
    """A fresh private key as PKCS#8 PEM (encrypted when `passphrase` is given), for a fake and its config."""
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric import ec, rsa

    key: Any = (rsa.generate_private_key(public_exponent=65537, key_size=bits) if kind == "RSA"
                else ec.generate_private_key(ec.SECP256R1()))
    encryption: Any = (serialization.BestAvailableEncryption(passphrase.encode()) if passphrase
                       else serialization.NoEncryption())
    text: bytes = key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, encryption)
    return text.decode()


def self_signed_certificate(private_key_pem: str, common_name: str = "tokend test") -> str:
    """A PEM certificate for `private_key_pem`, as `openssl req -x509` makes for an Entra ID app."""
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.x509.oid import NameOID

    key: Any = serialization.load_pem_private_key(private_key_pem.encode(), password=None)
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common_name)])
    now = datetime.now(UTC)
    certificate = (x509.CertificateBuilder().subject_name(name).issuer_name(name).public_key(key.public_key())
                   .serial_number(x509.random_serial_number()).not_valid_before(now)
                   .not_valid_after(datetime.fromtimestamp(now.timestamp() + 86400 * 365, UTC))
                   .sign(key, hashes.SHA256()))
    return certificate.public_bytes(serialization.Encoding.PEM).decode()


def public_jwk(private_key_pem: str) -> Any:
    from joserfc.jwk import ECKey, RSAKey

    from tokend.providers.signing_keys import load_key

    key = load_key(private_key_pem)
    public: Any = key.key.public_key()
    return RSAKey.import_key(public) if key.type == "RSA" else ECKey.import_key(public)


def verified_jws(assertion: str, keys: Mapping[str, Any], algorithms: list[str], key_id: Any) -> tuple[dict[str, Any],
                                                                                                     dict[str, Any]]:
    """(header, claims) of a JWS whose signature one of `keys` verifies; `key_id(header)` picks which (a kid,
    an x5t#S256), None when the header names none. Refused with `invalid signature` otherwise."""
    from joserfc import jws
    from joserfc.errors import JoseError

    try:
        header = json.loads(b64url_decode(assertion.split(".")[0]))
    except (ValueError, IndexError):
        raise Refused(400, "invalid_grant", "malformed JWT") from None
    if not isinstance(header, dict) or header.get("alg") not in algorithms:
        raise Refused(400, "invalid_grant", f"unsupported alg {header.get('alg') if isinstance(header, dict) else ''}")
    chosen = key_id(header)
    candidates = [keys[chosen]] if chosen in keys else [] if chosen is not None else list(keys.values())
    for key in candidates:
        try:
            payload = jws.deserialize_compact(assertion, key, algorithms=algorithms).payload
        except JoseError:
            continue
        claims = json.loads(payload)
        if isinstance(claims, dict):
            return header, claims
    raise Refused(400, "invalid_grant", "invalid signature" if candidates else "unknown key id")


def check_times(claims: Mapping[str, Any], now: float, *, max_lifetime: float, leeway: float = 60.0) -> str | None:
    """What is wrong with an assertion's iat and exp seen from a clock reading `now`, or None."""
    iat, exp = claims.get("iat"), claims.get("exp")
    if not isinstance(iat, int | float) or not isinstance(exp, int | float):
        return "iat and exp are required"
    if iat > now + leeway:
        return "iat is in the future"
    if exp <= now - leeway:
        return "exp is in the past"
    if exp - iat > max_lifetime:
        return f"exp is more than {max_lifetime:g} seconds after iat"
    return None
