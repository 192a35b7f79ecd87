"""Sealed credential records: the one format in which a credential leaves memory (fleet mode's Redis, the
state folder), encrypted and authenticated with AES-256-GCM:

    v1.<key id>.<base64 of nonce + ciphertext>

The key id (8 bytes of an HMAC of the key, in hex) says which key wrote it, so a key can be rotated: the
old one stays accepted for reading. The caller's binding (what the record is for: a fleet's share key, a
provider's name and login settings) is the associated data, so a record moved to where it does not belong
fails to open.

Inside, the token appears once; the served headers and query (and a refresh token) are templates in which
the token and any of the provider's secrets (FinTech Studios serves its static x-api-key; a refresh token
that never rotated is the configured one) are placeholders that the reader fills from its own config.
Keys, passwords and private keys therefore never reach a record, even encrypted.
"""

from __future__ import annotations

import base64
import binascii
import dataclasses
import hashlib
import hmac
import json
import os
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from tokend.credential import AwsKeys, Credential

__all__ = ["KEY_BYTES", "RecordError", "RecordKey", "decode_key", "from_template", "key_id", "open_record", "seal",
           "to_template"]

VERSION = "v1"
_NONCE = 12
KEY_BYTES = 32  # AES-256-GCM


def decode_key(text: str, where: str) -> bytes:
    """32 random bytes, given as standard or url-safe base64 (`openssl rand -base64 32`); ValueError naming
    `where` (the setting) otherwise."""
    text = text.strip()
    try:
        raw = base64.b64decode(text.replace("-", "+").replace("_", "/") + "=" * (-len(text) % 4), validate=True)
    except (binascii.Error, ValueError):
        raise ValueError(f"{where} is not base64: make one with `openssl rand -base64 32`") from None
    if len(raw) != KEY_BYTES:
        raise ValueError(f"{where} must be {KEY_BYTES} bytes (it is {len(raw)}): "
                         "make one with `openssl rand -base64 32`")
    return raw


class RecordError(Exception):
    """A record that cannot be served: wrong key, tampered, or not one of ours. Says which, never the content."""


@dataclass(frozen=True)
class RecordKey:
    """One encryption key and what is derived from it: a key id, a key for encryption and one for bindings.
    `domain` separates the uses of one key (the fleet's records never open as state records, and back)."""

    id: str
    encryption: bytes
    binding: bytes

    @classmethod
    def derive(cls, key: bytes, domain: bytes) -> RecordKey:
        def derived(purpose: bytes) -> bytes:
            return hmac.new(key, domain + purpose, hashlib.sha256).digest()

        return cls(derived(b"key id").hex()[:16], derived(b"encryption"), derived(b"share key"))

    def bind(self, described: Any) -> str:
        """A keyed hash of `described` (as JSON): equal descriptions give equal bindings, and whoever stores
        the record learns nothing from it."""
        text = json.dumps(described, sort_keys=True, separators=(",", ":"), default=str)
        return hmac.new(self.binding, text.encode(), hashlib.sha256).hexdigest()


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


def seal(credential: Credential, key: RecordKey, binding: str, secrets: Mapping[str, str]) -> str:
    """The record for `credential`, encrypted with `key`, bound to `binding`."""
    return seal_json(credential_body(credential, secrets), key, binding)


def credential_body(credential: Credential, secrets: Mapping[str, str]) -> dict[str, Any]:
    """What a record holds of `credential`: the token once, and every value that repeats it or a secret as
    a template, so that no secret is ever sealed (tokend.fleet.envelope seals the same body)."""
    token = credential.token
    body: dict[str, Any] = {
        "token": token, "token_type": credential.token_type, "expires_at": credential.expires_at,
        "obtained_at": credential.obtained_at, "request_id": credential.request_id,
        "renew_at": credential.renew_at,
        "headers": {name: to_template(value, token, secrets) for name, value in credential.headers.items()},
        "query": {name: to_template(value, token, secrets) for name, value in credential.query.items()},
    }
    if credential.refresh_token is not None:  # a user token's: the next login spends it
        body["refresh_token"] = to_template(credential.refresh_token, token, secrets)
        body["generation"] = credential.generation
    if credential.aws is not None:  # temporary keys STS issued: the credential itself, never a configured secret
        body["aws"] = dataclasses.asdict(credential.aws)
    if credential.registry is not None:
        body["registry"] = credential.registry
    return body


def seal_json(body: Any, key: RecordKey, binding: str) -> str:
    # Imported here: every config load reads decode_key from this module, and `tokend get` must start fast.
    from cryptography.hazmat.primitives.ciphers.aead import AESGCM

    nonce = os.urandom(_NONCE)
    sealed = AESGCM(key.encryption).encrypt(nonce, json.dumps(body).encode(), _associated(key.id, binding))
    return f"{VERSION}.{key.id}.{base64.b64encode(nonce + sealed).decode()}"


def key_id(record: str, version: str = VERSION) -> str | None:
    """The id of the key that wrote `record` (a record of format `version`), or None when it is not one."""
    parts = record.split(".", 2)
    return parts[1] if len(parts) == 3 and parts[0] == version else None


def open_json(record: str, keys: Mapping[str, RecordKey], binding: str, what: str = "record") -> Any:
    """The body sealed in `record`; RecordError when it is not ours, not for `binding`, or tampered with."""
    from cryptography.exceptions import InvalidTag
    from cryptography.hazmat.primitives.ciphers.aead import AESGCM

    version, _, rest = record.partition(".")
    kid, _, data = rest.partition(".")
    if version != VERSION or not data:
        raise RecordError(f"the {what} is not in a format this tokend reads")
    key = keys.get(kid)
    if key is None:
        raise RecordError(f"the {what} was written with key id {kid}, which is not among this daemon's keys")
    try:
        raw = base64.b64decode(data, validate=True)
        return json.loads(AESGCM(key.encryption).decrypt(raw[:_NONCE], raw[_NONCE:], _associated(kid, binding)))
    except (InvalidTag, ValueError):
        raise RecordError(f"the {what} does not decrypt with key id {kid}: it was tampered with, or it "
                          "belongs to other settings") from None


def open_record(
    record: str, keys: Mapping[str, RecordKey], binding: str, secrets: Mapping[str, str], *, source: str = "fleet"
) -> Credential:
    """The credential in `record`, as this daemon serves it; RecordError when it must not be served."""
    return credential_from_body(open_json(record, keys, binding), secrets, source)


def credential_from_body(body: Any, secrets: Mapping[str, str], source: str) -> Credential:
    """The credential a record's body describes (see credential_body); RecordError when it describes none."""
    try:
        token = body["token"]
        refresh = body.get("refresh_token")
        return Credential(
            token=token, token_type=body["token_type"], expires_at=body["expires_at"],
            headers={name: from_template(parts, token, secrets) for name, parts in body["headers"].items()},
            query={name: from_template(parts, token, secrets) for name, parts in body["query"].items()},
            request_id=body["request_id"], obtained_at=body["obtained_at"], renew_at=body.get("renew_at"),
            source=source, refresh_token=None if refresh is None else from_template(refresh, token, secrets),
            generation=_generation(body.get("generation", 0)),
            aws=None if body.get("aws") is None else AwsKeys(**body["aws"]), registry=body.get("registry"),
        )
    except (KeyError, TypeError, AttributeError):
        raise RecordError("the record decrypts but does not hold a credential this tokend reads") from None


def _generation(value: Any) -> int:
    if type(value) is not int or not 0 <= value < 2**53:
        raise TypeError("generation")  # a RecordError to the caller
    return value


def _associated(kid: str, binding: str) -> bytes:
    return f"{VERSION}.{kid}.{binding}".encode()
