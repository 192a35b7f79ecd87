"""AWS Signature Version 4, as the AWS General Reference describes it and AWS's own test suite checks it
(tests/aws4_testsuite): a canonical request, a string to sign, a key derived from the secret for the day,
region and service, and the `Authorization` header that carries the result.

Small on purpose: botocore's signer comes with botocore, whose import costs a daemon hundreds of
milliseconds and tens of MiB; this one is the standard library's hashlib and hmac. The same functions
sign a request (STS, ECR, the proxy) and check one (tokend.testing's verifying fakes).
"""

from __future__ import annotations

import hashlib
import hmac
import posixpath
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from functools import lru_cache
from urllib.parse import quote, unquote, urlsplit

__all__ = [
    "ALGORITHM", "EMPTY_SHA256", "UNSIGNED_PAYLOAD", "Keys", "canonical_request", "sign", "signature",
    "string_to_sign",
]

ALGORITHM = "AWS4-HMAC-SHA256"
EMPTY_SHA256 = hashlib.sha256(b"").hexdigest()
# S3's placeholder for a body that is not hashed (streamed): the signature then covers the headers only.
UNSIGNED_PAYLOAD = "UNSIGNED-PAYLOAD"
_UNRESERVED = "-_.~"


@dataclass(frozen=True)
class Keys:
    """What a request is signed with: an access key pair, and the session token of temporary credentials."""

    access_key_id: str
    secret_access_key: str = field(repr=False)
    session_token: str | None = field(default=None, repr=False)


def amz_date(when: datetime) -> str:
    return when.astimezone(UTC).strftime("%Y%m%dT%H%M%SZ")


def sign(
    method: str,
    url: str,
    headers: Mapping[str, str],
    keys: Keys,
    *,
    region: str,
    service: str,
    payload_hash: str,
    when: datetime | None = None,
    s3: bool = False,
) -> dict[str, str]:
    """The headers to send: `headers` with Host, X-Amz-Date, the session token (and for S3
    x-amz-content-sha256) added, and Authorization. Every header given is signed: give only those the
    request sends as they are (a proxy leaves hop-by-hop and client-specific ones out)."""
    parts = urlsplit(url)
    signed = {name.lower(): value for name, value in headers.items()}
    signed["host"] = parts.netloc
    signed["x-amz-date"] = stamp = amz_date(when or datetime.now(UTC))
    if keys.session_token:
        signed["x-amz-security-token"] = keys.session_token
    if s3:
        signed["x-amz-content-sha256"] = payload_hash
    canonical = canonical_request(method, parts.path or "/", parts.query, signed.items(), signed, payload_hash,
                                  normalize=not s3)
    scope = f"{stamp[:8]}/{region}/{service}/aws4_request"
    proof = signature(keys.secret_access_key, stamp[:8], region, service, string_to_sign(stamp, scope, canonical))
    signed["authorization"] = (f"{ALGORITHM} Credential={keys.access_key_id}/{scope}, "
                               f"SignedHeaders={';'.join(sorted(signed_names(signed)))}, Signature={proof}")
    return signed


def signed_names(headers: Iterable[str]) -> list[str]:
    return sorted({name.lower() for name in headers} - {"authorization"})


def canonical_request(
    method: str,
    path: str,
    query: str,
    headers: Iterable[tuple[str, str]],
    signed: Iterable[str],
    payload_hash: str,
    *,
    normalize: bool = True,
) -> str:
    """The canonical request. `path` and `query` as on the wire; `headers` every (name, value) sent, of
    which those named in `signed` are signed. `normalize`: every service but S3 removes dot segments and
    repeated slashes and encodes the path once more (S3 signs the path as sent)."""
    names = signed_names(signed)
    values: dict[str, list[str]] = {name: [] for name in names}
    for name, value in headers:
        if (lower := name.lower()) in values:
            values[lower].append(" ".join(value.split()))  # trimmed, inner runs of spaces made one
    lines = "".join(f"{name}:{','.join(values[name])}\n" for name in names)
    return "\n".join([method.upper(), canonical_uri(path, normalize=normalize), canonical_query(query), lines,
                      ";".join(names), payload_hash])


def canonical_uri(path: str, *, normalize: bool = True) -> str:
    if not normalize:
        return path or "/"
    normalized = posixpath.normpath("/" + path.lstrip("/")) if path not in ("", "/") else "/"
    normalized = "/" + normalized.lstrip("/")  # normpath keeps a leading "//"
    if path.endswith("/") and not normalized.endswith("/"):
        normalized += "/"
    return quote(normalized, safe="/~")


def canonical_query(query: str) -> str:
    pairs = []
    for item in query.split("&") if query else ():
        name, _, value = item.partition("=")
        pairs.append((quote(unquote(name), safe=_UNRESERVED), quote(unquote(value), safe=_UNRESERVED)))
    return "&".join(f"{name}={value}" for name, value in sorted(pairs))


def string_to_sign(stamp: str, scope: str, canonical: str) -> str:
    return "\n".join([ALGORITHM, stamp, scope, hashlib.sha256(canonical.encode()).hexdigest()])


def signature(secret: str, day: str, region: str, service: str, text: str) -> str:
    return hmac.digest(_signing_key(secret, day, region, service), text.encode(), "sha256").hex()


# The key of a day, region and service: the same for every request the proxy signs with one credential that
# day, so derived once (four HMACs saved per request). The secrets it holds are held by the credentials anyway.
@lru_cache(maxsize=16)
def _signing_key(secret: str, day: str, region: str, service: str) -> bytes:
    key = f"AWS4{secret}".encode()
    for part in (day, region, service, "aws4_request"):
        key = hmac.digest(key, part.encode(), "sha256")
    return key
