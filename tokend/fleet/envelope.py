"""What the fleet keeps in Redis, and the keys it keeps it under.

A record is a credential with its secrets taken out, encrypted and authenticated with AES-256-GCM:

    v1.<key id>.<base64 of nonce + ciphertext>

The key id (8 bytes of an HMAC of the key, in hex) says which key wrote it, so a key can be rotated: the
old one stays accepted for reading. The namespace and the share key bind the record to where it is stored
(they are the associated data), so a record copied under another provider's key, or into another
namespace, fails to decrypt.

Inside, the token appears once; the served headers and query are templates in which the token, and any of
the provider's secrets (FinTech Studios serves its static x-api-key), are placeholders that each daemon
fills from its own config. Keys, passwords and private keys therefore never reach Redis, even encrypted.
A user token's refresh token travels inside too: the daemon that wins the next lease spends the fleet's
latest one, never an older one of its own. The templates and what makes two logins the same are
tokend.sealing's, shared with the state folder.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import os
import time
from collections.abc import Mapping
from dataclasses import dataclass

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from tokend.credential import Credential
from tokend.errors import CredentialsRejected, UpstreamError
from tokend.providers import ProviderConfig
from tokend.sealing import (
    RecordError,
    credential_body,
    credential_from_body,
    from_template,
    to_template,
)

__all__ = ["FleetKey", "Lineage", "RecordError", "from_template", "open_failure", "open_record", "open_with_lineage",
           "seal", "seal_failure", "to_template"]

VERSION = "v2"  # v2: the namespace is part of the associated data
_NONCE = 12
MAX_FAILURE_HOLD = 600.0  # seconds: the longest a failed login holds the fleet off, whatever Retry-After said
MAX_SPENT = 16  # digests of spent refresh tokens a record carries: the last ones, enough to know a rollback
CLOCK_SKEW = 60.0  # seconds: how far ahead another daemon's clock may be and its failure still count

def _derive(key: bytes, purpose: bytes) -> bytes:
    return hmac.new(key, b"tokend fleet " + purpose, hashlib.sha256).digest()


@dataclass(frozen=True)
class FleetKey:
    """One encryption key and what is derived from it: separate keys for encryption and for share keys;
    and the namespace the records it seals belong to."""

    id: str
    encryption: bytes
    sharing: bytes
    namespace: str

    @classmethod
    def of(cls, key: bytes, namespace: str) -> FleetKey:
        return cls(_derive(key, b"key id").hex()[:16], _derive(key, b"encryption"), _derive(key, b"share key"),
                   namespace)

    def share_key(self, config: ProviderConfig) -> str:
        """A keyed hash of how the provider logs in: kind, login URL, identity and secrets. Two configs that
        would log in differently never get the same one, and Redis learns nothing from it."""
        described = json.dumps(config.login_identity(), sort_keys=True, separators=(",", ":"), default=str)
        return hmac.new(self.sharing, described.encode(), hashlib.sha256).hexdigest()

    def spent_digest(self, share_key: str, refresh_token: str) -> str:
        """A keyed digest of a refresh token spent under `share_key`: the record lists them, never the tokens."""
        text = f"spent\0{share_key}\0{refresh_token}".encode()
        return hmac.new(self.sharing, text, hashlib.sha256).hexdigest()[:32]


@dataclass(frozen=True)
class Lineage:
    """What a user token's record says besides the credential: the daemon that rotated it last (`spender`, a
    random id each daemon draws at start), and the keyed digests of the last refresh tokens spent before it."""

    spender: str | None = None
    spent: tuple[str, ...] = ()


# --- sealing and opening -------------------------------------------------------------------------------------


def seal(credential: Credential, key: FleetKey, share_key: str, secrets: Mapping[str, str],
         lineage: Lineage | None = None) -> str:
    """The record for `credential`, encrypted with `key`, bound to `share_key`."""
    body = credential_body(credential, secrets)
    if lineage is not None:
        body["spender"] = lineage.spender
        body["spent"] = list(lineage.spent[-MAX_SPENT:])
    nonce = os.urandom(_NONCE)
    sealed = AESGCM(key.encryption).encrypt(nonce, json.dumps(body).encode(), _associated(key, share_key))
    return f"{VERSION}.{key.id}.{base64.b64encode(nonce + sealed).decode()}"


def open_record(record: str, keys: Mapping[str, FleetKey], share_key: str, secrets: Mapping[str, str]) -> Credential:
    """The credential in `record`, as this daemon serves it; RecordError when it must not be served."""
    return open_with_lineage(record, keys, share_key, secrets)[0]


def open_with_lineage(
    record: str, keys: Mapping[str, FleetKey], share_key: str, secrets: Mapping[str, str]
) -> tuple[Credential, Lineage]:
    """The credential in `record` and its lineage; RecordError when it must not be served."""
    version, _, rest = record.partition(".")
    kid, _, data = rest.partition(".")
    if version != VERSION or not data:
        raise RecordError("the record is not in a format this tokend reads")
    key = keys.get(kid)
    if key is None:
        raise RecordError(f"the record was written with key id {kid}, which is not among this daemon's keys")
    try:
        raw = base64.b64decode(data, validate=True)
        plain = AESGCM(key.encryption).decrypt(raw[:_NONCE], raw[_NONCE:], _associated(key, share_key))
        body = json.loads(plain)
    except (InvalidTag, ValueError):
        raise RecordError(f"the record does not decrypt with key id {kid}: it was tampered with") from None
    credential = credential_from_body(body, secrets, source="fleet")
    spender, spent = body.get("spender"), body.get("spent", [])
    if not isinstance(spender, str | None) or not isinstance(spent, list) \
            or not all(isinstance(digest, str) for digest in spent):
        raise RecordError("the record decrypts but its lineage is not one this tokend reads")
    return credential, Lineage(spender, tuple(spent[-MAX_SPENT:]))


def seal_failure(error: UpstreamError, key: FleetKey, share_key: str, hold: float) -> str:
    """A failed login, for the fleet to hold off on for `hold` seconds: encrypted like a record, since an
    upstream's error text is not ours to show Redis. The hold is inside, not only Redis's expiry, so that
    a record put back after its time holds no one off."""
    now = time.time()
    body = {"message": error.message, "status": error.status, "request_id": error.request_id,
            "retryable": error.retryable, "rejected": isinstance(error, CredentialsRejected), "at": now,
            "until": now + min(hold, MAX_FAILURE_HOLD)}
    nonce = os.urandom(_NONCE)
    associated = _associated(key, "failed " + share_key)
    sealed = AESGCM(key.encryption).encrypt(nonce, json.dumps(body).encode(), associated)
    return f"{VERSION}.{key.id}.{base64.b64encode(nonce + sealed).decode()}"


def open_failure(record: str, keys: Mapping[str, FleetKey], share_key: str, provider: str) -> UpstreamError:
    """The fleet's failed login as this daemon's own error; RecordError when it cannot be read."""
    _, _, rest = record.partition(".")
    kid, _, data = rest.partition(".")
    key = keys.get(kid)
    if key is None:
        raise RecordError(f"the failure was written with key id {kid}, which is not among this daemon's keys")
    try:
        raw = base64.b64decode(data, validate=True)
        body = json.loads(AESGCM(key.encryption).decrypt(raw[:_NONCE], raw[_NONCE:],
                                                         _associated(key, "failed " + share_key)))
    except (InvalidTag, ValueError):
        raise RecordError(f"the failure record does not decrypt with key id {kid}: it was tampered with") from None
    now = time.time()
    at, until = body.get("at"), body.get("until")
    if (not isinstance(at, float) or not isinstance(until, float) or not at - CLOCK_SKEW <= now < until
            or until - at > MAX_FAILURE_HOLD):
        raise RecordError("the failure record is out of its time (replayed, or from a clock far off): ignored")
    age = max(0, int(now - at))
    message = f"another daemon of the fleet tried this login {age}s ago and failed: {body['message']}"
    if body["rejected"]:
        return CredentialsRejected(provider, message, status=body["status"] or 401, request_id=body["request_id"])
    return UpstreamError(provider, message, status=body["status"], request_id=body["request_id"],
                         retryable=body["retryable"])


def _associated(key: FleetKey, share_key: str) -> bytes:
    return f"{VERSION}.{key.id}.{key.namespace}.{share_key}".encode()


def provider_secrets(config: ProviderConfig) -> dict[str, str]:
    """The provider's secrets, by where they sit in its config: what binds a record to one set of credentials."""
    return {where: secret.get() for where, secret in config.secrets().items()}
