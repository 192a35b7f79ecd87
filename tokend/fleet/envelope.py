"""What the fleet keeps in Redis, and the keys it keeps it under.

A record is a credential with its secrets taken out, encrypted and authenticated with AES-256-GCM:

    v1.<key id>.<base64 of nonce + ciphertext>

The key id (8 bytes of an HMAC of the key, in hex) says which key wrote it, so a key can be rotated: the
old one stays accepted for reading. The share key binds the record to where it is stored (it is the
associated data), so a record copied under another provider's key fails to decrypt.

Inside, the token appears once; the served headers and query are templates in which the token, and any of
the provider's secrets (FinTech Studios serves its static x-api-key), are placeholders that each daemon
fills from its own config. Keys, passwords and private keys therefore never reach Redis, even encrypted.
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
from typing import Any

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from tokend.credential import Credential
from tokend.errors import CredentialsRejected, UpstreamError
from tokend.providers import ProviderConfig

VERSION = "v1"
_NONCE = 12

# Settings that change when or how often a login happens, not what it logs in as: two daemons that
# differ only here still share. Everything else (kind, URL, identity, secrets) goes into the share key.
_NOT_IDENTITY = frozenset({
    "timeout", "connect_timeout", "read_timeout", "min_refresh_interval", "max_retry_delay", "default_lifetime",
    "max_lifetime", "fleet", "rotate_every", "organisation",
})


class RecordError(Exception):
    """A record that cannot be served: wrong key, tampered, or not one of ours. Says which, never the content."""


def _derive(key: bytes, purpose: bytes) -> bytes:
    return hmac.new(key, b"tokend fleet " + purpose, hashlib.sha256).digest()


@dataclass(frozen=True)
class FleetKey:
    """One encryption key and what is derived from it: separate keys for encryption and for share keys."""

    id: str
    encryption: bytes
    sharing: bytes

    @classmethod
    def of(cls, key: bytes) -> FleetKey:
        return cls(_derive(key, b"key id").hex()[:16], _derive(key, b"encryption"), _derive(key, b"share key"))

    def share_key(self, config: ProviderConfig) -> str:
        """A keyed hash of how the provider logs in: kind, login URL, identity and secrets. Two configs that
        would log in differently never get the same one, and Redis learns nothing from it."""
        described = json.dumps(login_identity(config), sort_keys=True, separators=(",", ":"), default=str)
        return hmac.new(self.sharing, described.encode(), hashlib.sha256).hexdigest()


def login_identity(config: ProviderConfig) -> dict[str, Any]:
    """What makes a provider's logins the same: every setting but the timing ones, and the secrets by value
    (not by where they are read from: the same password in another file is the same login), a private key
    by its public key's fingerprint. The secrets only ever enter the keyed hash."""
    secrets = config.secrets()
    secret_fields = {where.split(".")[0].split("[")[0] for where in secrets}
    identity: dict[str, Any] = {"kind": config.kind, "url": config.url}
    # An unset optional secret (a key's passphrase) is skipped too: set or not, it is no part of the identity
    # (the key it opens is, by its fingerprint).
    skipped = {name for name, field in type(config).model_fields.items()
               if name in _NOT_IDENTITY or (field.alias or name) in secret_fields
               or (getattr(config, name) is None and "SecretValue" in str(field.annotation))}
    identity.update(config.model_dump(by_alias=True, mode="json", exclude=skipped))
    identity.update({f"secret:{where}": value for where, value in config.login_secrets().items()})
    return identity


# --- templates -----------------------------------------------------------------------------------------------

# A template is a list of parts: a plain string, {"t": 1} for the token, {"s": "field"} for a config secret.
Part = str | dict[str, Any]


def to_template(value: str, token: str, secrets: Mapping[str, str]) -> list[Part]:
    needles: list[tuple[str, Part]] = [(token, {"t": 1}), *((text, {"s": name}) for name, text in secrets.items())]
    needles.sort(key=lambda pair: -len(pair[0]))
    parts: list[Part] = [value]
    for needle, placeholder in needles:
        if not needle:
            continue
        split: list[Part] = []
        for part in parts:
            if not isinstance(part, str):
                split.append(part)
                continue
            pieces = part.split(needle)
            for index, piece in enumerate(pieces):
                if index:
                    split.append(placeholder)
                if piece:
                    split.append(piece)
        parts = split
    return parts


def from_template(parts: list[Part], token: str, secrets: Mapping[str, str]) -> str:
    out = []
    for part in parts:
        if isinstance(part, str):
            out.append(part)
        elif part.get("t") == 1:
            out.append(token)
        elif isinstance(name := part.get("s"), str) and name in secrets:
            out.append(secrets[name])
        else:
            raise RecordError(f"the record names a secret ({name}) this daemon's config does not have")
    return "".join(out)


# --- sealing and opening -------------------------------------------------------------------------------------


def seal(credential: Credential, key: FleetKey, share_key: str, secrets: Mapping[str, str]) -> str:
    """The record for `credential`, encrypted with `key`, bound to `share_key`."""
    token = credential.token
    body = {
        "token": token, "token_type": credential.token_type, "expires_at": credential.expires_at,
        "obtained_at": credential.obtained_at, "request_id": credential.request_id,
        "renew_at": credential.renew_at,
        "headers": {name: to_template(value, token, secrets) for name, value in credential.headers.items()},
        "query": {name: to_template(value, token, secrets) for name, value in credential.query.items()},
    }
    nonce = os.urandom(_NONCE)
    sealed = AESGCM(key.encryption).encrypt(nonce, json.dumps(body).encode(), _associated(key.id, share_key))
    return f"{VERSION}.{key.id}.{base64.b64encode(nonce + sealed).decode()}"


def key_id(record: str) -> str | None:
    parts = record.split(".", 2)
    return parts[1] if len(parts) == 3 and parts[0] == VERSION else None


def open_record(record: str, keys: Mapping[str, FleetKey], share_key: str, secrets: Mapping[str, str]) -> Credential:
    """The credential in `record`, as this daemon serves it; RecordError when it must not be served."""
    version, _, rest = record.partition(".")
    kid, _, data = rest.partition(".")
    if version != VERSION or not data:
        raise RecordError("the record is not in a format this tokend reads")
    key = keys.get(kid)
    if key is None:
        raise RecordError(f"the record was written with key id {kid}, which is not among this daemon's keys")
    try:
        raw = base64.b64decode(data, validate=True)
        plain = AESGCM(key.encryption).decrypt(raw[:_NONCE], raw[_NONCE:], _associated(kid, share_key))
        body = json.loads(plain)
    except (InvalidTag, ValueError):
        raise RecordError(f"the record does not decrypt with key id {kid}: it was tampered with") from None
    token = body["token"]
    return Credential(
        token=token, token_type=body["token_type"], expires_at=body["expires_at"],
        headers={name: from_template(parts, token, secrets) for name, parts in body["headers"].items()},
        query={name: from_template(parts, token, secrets) for name, parts in body["query"].items()},
        request_id=body["request_id"], obtained_at=body["obtained_at"], renew_at=body.get("renew_at"),
        source="fleet",
    )


def seal_failure(error: UpstreamError, key: FleetKey, share_key: str) -> str:
    """A failed login, for the fleet to hold off on: encrypted like a record, since an upstream's error
    text is not ours to show Redis."""
    body = {"message": error.message, "status": error.status, "request_id": error.request_id,
            "retryable": error.retryable, "rejected": isinstance(error, CredentialsRejected), "at": time.time()}
    nonce = os.urandom(_NONCE)
    associated = _associated(key.id, "failed " + share_key)
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
                                                         _associated(kid, "failed " + share_key)))
    except (InvalidTag, ValueError):
        raise RecordError(f"the failure record does not decrypt with key id {kid}: it was tampered with") from None
    age = max(0, int(time.time() - body["at"]))
    message = f"another daemon of the fleet tried this login {age}s ago and failed: {body['message']}"
    if body["rejected"]:
        return CredentialsRejected(provider, message, status=body["status"] or 401, request_id=body["request_id"])
    return UpstreamError(provider, message, status=body["status"], request_id=body["request_id"],
                         retryable=body["retryable"])


def _associated(kid: str, share_key: str) -> bytes:
    return f"{VERSION}.{kid}.{share_key}".encode()
