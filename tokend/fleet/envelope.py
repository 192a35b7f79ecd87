"""What the fleet keeps in Redis: credential records in tokend.sealing's format, bound to a share key, and
the fleet's failed logins, sealed alike.

The share key binds a record to where it is stored (it is the associated data), so a record copied under
another provider's key fails to decrypt. A refresh token travels inside the record: the daemon that wins
the next lease logs in with the fleet's latest one, never with an older one of its own.
"""

from __future__ import annotations

import time
from collections.abc import Mapping

from tokend.credential import Credential
from tokend.errors import CredentialsRejected, UpstreamError
from tokend.providers import ProviderConfig
from tokend.sealing import (
    RecordError,
    RecordKey,
    from_template,
    key_id,
    login_identity,
    open_json,
    seal,
    seal_json,
    to_template,
)
from tokend.sealing import open_record as _open_record

__all__ = ["FleetKey", "RecordError", "from_template", "key_id", "login_identity", "open_failure", "open_record",
           "seal", "seal_failure", "to_template"]


class FleetKey(RecordKey):
    """A fleet encryption key and its derived keys; the share key names a login, whatever the provider's name."""

    @classmethod
    def of(cls, key: bytes) -> FleetKey:
        derived = RecordKey.derive(key, b"tokend fleet ")
        return cls(derived.id, derived.encryption, derived.binding)

    @property
    def sharing(self) -> bytes:
        return self.binding

    def share_key(self, config: ProviderConfig) -> str:
        """A keyed hash of how the provider logs in: kind, login URL, identity and secrets. Two configs that
        would log in differently never get the same one, and Redis learns nothing from it."""
        return self.bind(login_identity(config))


def open_record(record: str, keys: Mapping[str, RecordKey], share_key: str, secrets: Mapping[str, str]) -> Credential:
    return _open_record(record, keys, share_key, secrets, source="fleet")


def seal_failure(error: UpstreamError, key: RecordKey, share_key: str) -> str:
    """A failed login, for the fleet to hold off on: encrypted like a record, since an upstream's error
    text is not ours to show Redis."""
    body = {"message": error.message, "status": error.status, "request_id": error.request_id,
            "retryable": error.retryable, "rejected": isinstance(error, CredentialsRejected), "at": time.time()}
    return seal_json(body, key, "failed " + share_key)


def open_failure(record: str, keys: Mapping[str, RecordKey], share_key: str, provider: str) -> UpstreamError:
    """The fleet's failed login as this daemon's own error; RecordError when it cannot be read."""
    body = open_json(record, keys, "failed " + share_key, what="failure record")
    age = max(0, int(time.time() - body["at"]))
    message = f"another daemon of the fleet tried this login {age}s ago and failed: {body['message']}"
    if body["rejected"]:
        return CredentialsRejected(provider, message, status=body["status"] or 401, request_id=body["request_id"])
    return UpstreamError(provider, message, status=body["status"], request_id=body["request_id"],
                         retryable=body["retryable"])
