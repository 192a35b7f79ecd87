"""AWS Signature Version 4 for proxied requests: an AWS provider's credential is three values that sign each
request (its method, path, query, some headers and the body's hash), not a header to add.

The client's own signature (`Authorization`, `X-Amz-Date`, `X-Amz-Security-Token`, `X-Amz-Content-Sha256`:
an SDK given dummy keys still signs) is dropped; the proxy signs what it sends: `Host`, `Content-Type`,
`Content-MD5` and every other `X-Amz-*` header the client sent, and the body's SHA-256. S3 signs by its own
rules: the path as sent (encoded once), `x-amz-content-sha256` always, and `UNSIGNED-PAYLOAD` for a body too
large to hold (streamed); every other service needs the hash, so such a body is refused.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass

from tokend.credential import Credential
from tokend.outputs.proxy.paths import Origin
from tokend.providers.aws.sigv4 import UNSIGNED_PAYLOAD, Keys, sign

__all__ = ["AwsSigning"]

_SIGNED = frozenset({b"content-type", b"content-md5"})  # with every x-amz-* header
_ADDED = ("x-amz-date", "x-amz-security-token", "x-amz-content-sha256", "authorization")


@dataclass(frozen=True)
class AwsSigning:
    """How one provider's requests are signed: for `service` in `region`."""

    service: str
    region: str

    @property
    def streams(self) -> bool:
        """Whether a body too large to hold can be signed (S3's UNSIGNED-PAYLOAD), so streamed upstream."""
        return self.service == "s3"

    def refusal(self, name: str, limit: int) -> str:
        return (f"The request body is larger than proxy_retry_body_limit ({limit} bytes) of provider {name}: a "
                f"request to AWS service {self.service} is signed with its body's SHA-256, so the proxy must hold "
                "the body whole first. Raise proxy_retry_body_limit, or send smaller bodies.")

    def head(self, method: str, origin: Origin, target: bytes, client: list[tuple[bytes, bytes]],
             credential: Credential, body: bytes | None) -> bytes:
        """The signature's header lines for this request (`body` None: streamed, S3 only)."""
        assert credential.aws is not None
        keys = Keys(credential.aws.access_key_id, credential.aws.secret_access_key, credential.token)
        payload = UNSIGNED_PAYLOAD if body is None else hashlib.sha256(body).hexdigest()
        headers = {name.decode("latin-1"): value.decode("latin-1") for name, value in client
                   if name in _SIGNED or name.startswith(b"x-amz-")}
        url = f"{origin.scheme}://{origin.host_header.decode()}{target.decode('latin-1')}"
        signed = sign(method, url, headers, keys, region=self.region, service=self.service, payload_hash=payload,
                      s3=self.service == "s3")
        return "".join(f"{name}: {signed[name]}\r\n" for name in _ADDED if name in signed).encode("latin-1")
