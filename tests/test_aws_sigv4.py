"""The SigV4 signer against AWS's published test suite (tests/aws4_testsuite, as botocore runs it): every
request's canonical form, string to sign and Authorization header."""

from __future__ import annotations

from datetime import UTC, datetime
from pathlib import Path

import pytest

from tokend.providers.aws.sigv4 import (
    EMPTY_SHA256,
    Keys,
    canonical_request,
    sign,
    signature,
    string_to_sign,
)

SUITE = Path(__file__).parent / "aws4_testsuite"
KEYS = Keys("AKIDEXAMPLE", "wJalrXUtnFEMI/K7MDENG+bPxRfiCYEXAMPLEKEY")
WHEN = datetime(2015, 8, 30, 12, 36, tzinfo=UTC)
SCOPE = "20150830/us-east-1/service/aws4_request"
# Applied after signing, by definition: the vector's signature does not cover it.
NOT_SIGNED = {"post-sts-token/post-sts-header-after"}


def _cases() -> list[str]:
    return sorted(str(req.parent.relative_to(SUITE)) for req in SUITE.rglob("*.req"))


def _parsed(raw: str) -> tuple[str, str, str, list[tuple[str, str]], bytes]:
    head, _, body = raw.partition("\n\n")
    request_line, *lines = head.rstrip("\n").split("\n")
    method, _, rest = request_line.partition(" ")
    target = rest.rsplit(" ", 1)[0]
    path, _, query = target.partition("?")
    headers: list[tuple[str, str]] = []
    for line in lines:
        if line[:1] in (" ", "\t"):  # a folded value continues the header above
            name, value = headers.pop()
            headers.append((name, f"{value} {line.strip()}"))
        else:
            name, _, value = line.partition(":")
            headers.append((name, value.strip()))
    return method, path, query, headers, body.encode()


def _read(case: str, suffix: str) -> str:
    return (SUITE / case / f"{Path(case).name}.{suffix}").read_text().replace("\r", "")


def _request(case: str) -> tuple[str, str, str, list[tuple[str, str]], bytes]:
    """The vector's request, with the session token its canonical form names (which one vector signs
    without showing it in the request)."""
    method, path, query, headers, body = _parsed(_read(case, "req"))
    token = next((line.partition(":")[2] for line in _read(case, "creq").split("\n")
                  if line.startswith("x-amz-security-token:")), None)
    if token is not None and not any(name.lower() == "x-amz-security-token" for name, _ in headers):
        headers.append(("X-Amz-Security-Token", token))
    return method, path, query, headers, body


@pytest.mark.parametrize("case", _cases())
def test_canonical_request_string_to_sign_and_signature(case: str) -> None:
    import hashlib

    method, path, query, headers, body = _request(case)
    signed = [name for name, _ in headers]
    if case in NOT_SIGNED:
        signed = [name for name in signed if name.lower() != "x-amz-security-token"]
    canonical = canonical_request(method, path, query, headers, signed, hashlib.sha256(body).hexdigest())
    assert canonical == _read(case, "creq")
    text = string_to_sign("20150830T123600Z", SCOPE, canonical)
    assert text == _read(case, "sts")
    names = ";".join(sorted({name.lower() for name in signed}))
    expected = (f"AWS4-HMAC-SHA256 Credential=AKIDEXAMPLE/{SCOPE}, SignedHeaders={names}, "
                f"Signature={signature(KEYS.secret_access_key, '20150830', 'us-east-1', 'service', text)}")
    assert expected == _read(case, "authz")


def _unique_header_cases() -> list[str]:
    found = []
    for case in _cases():
        headers = [name.lower() for name, _ in _request(case)[3]]
        if len(headers) == len(set(headers)) and case not in NOT_SIGNED:
            found.append(case)
    return found


@pytest.mark.parametrize("case", _unique_header_cases())
def test_sign_adds_the_suites_authorization_header(case: str) -> None:
    import hashlib

    method, path, query, headers, body = _request(case)
    given = {name: value for name, value in headers if name.lower() not in ("host", "x-amz-date",
                                                                             "x-amz-security-token")}
    token = dict((name.lower(), value) for name, value in headers).get("x-amz-security-token")
    url = "https://example.amazonaws.com" + path + (f"?{query}" if query else "")
    out = sign(method, url, given, Keys(KEYS.access_key_id, KEYS.secret_access_key, token), region="us-east-1",
               service="service", payload_hash=hashlib.sha256(body).hexdigest(), when=WHEN)
    assert out["authorization"] == _read(case, "authz")
    assert out["x-amz-date"] == "20150830T123600Z" and out["host"] == "example.amazonaws.com"


def test_the_suite_is_all_there() -> None:
    # A vector directory lost in a copy would silently test less.
    assert len(_cases()) >= 30 and len(_unique_header_cases()) >= 25


def test_s3_signs_the_path_as_sent_with_the_payload_hash_header() -> None:
    out = sign("GET", "https://bucket.s3.amazonaws.com/my-object//example//photo.user", {}, KEYS,
               region="us-east-1", service="s3", payload_hash=EMPTY_SHA256, when=WHEN, s3=True)
    assert out["x-amz-content-sha256"] == EMPTY_SHA256
    assert "SignedHeaders=host;x-amz-content-sha256;x-amz-date," in out["authorization"]
    canonical = canonical_request("GET", "/my-object//example//photo.user", "", out.items(), out, EMPTY_SHA256,
                                  normalize=False)
    assert canonical.split("\n")[1] == "/my-object//example//photo.user"
