"""The one place where a login's HTTP exchange becomes a result or an error, and the credential builders
the kinds share. Nothing above this module sees a raw httpx exception.
"""

from __future__ import annotations

import email.utils
import json
import math
import ssl
import time
import zlib
from collections.abc import AsyncIterator, Callable, Mapping
from dataclasses import dataclass
from typing import Any

import httpx

from tokend.config.fields import shown_url
from tokend.credential import Credential
from tokend.errors import CredentialsRejected, UpstreamError
from tokend.providers.base import ProviderBase
from tokend.providers.expiry import resolve_expiry
from tokend.redact import SHORT_FIELD_LENGTH, Redactor, excerpt, untrusted

# What a provider reads from an error body: (its request id, its message), either may be None.
Describe = Callable[[Any], tuple[str | None, str | None]]


@dataclass(frozen=True)
class LoginRequest:
    """One login call: everything `exchange` needs to make it and to explain its failure."""

    provider: str
    method: str
    url: str
    headers: Mapping[str, str]
    timeout: httpx.Timeout  # see http_timeout()
    redactor: Redactor
    describe: Describe
    json: Any = None  # a JSON body...
    form: Mapping[str, str | list[str]] | None = None  # ...or a form-encoded one (a list: a repeated field)
    content: bytes | None = None  # ...or bytes as they are (a body a signature covers)
    action: str = "login"  # what the call is, for its error messages ("list keys", ...)
    max_answer: int = 1024 * 1024  # bytes of answer, after decoding, beyond which the call fails


def http_timeout(config: ProviderBase) -> httpx.Timeout:
    """A provider's per-step bounds for one call; the manager bounds the whole login by `timeout`."""
    return httpx.Timeout(
        config.timeout, connect=min(config.connect_timeout, config.timeout),
        read=min(config.read_timeout or config.timeout, config.timeout),
    )


def limits(config: ProviderBase) -> dict[str, Any]:
    """A provider's bounds for one call, as LoginRequest fields: its timeouts and its answer size."""
    return {"timeout": http_timeout(config), "max_answer": config.max_answer_bytes}


async def exchange(client: httpx.AsyncClient, login: LoginRequest) -> tuple[Any, str | None]:
    """Make the login call; return (the decoded JSON body, the request id) of a 2xx answer."""
    response, content = await fetch_answer(client, login)
    body = _json_or_none(content)
    request_id, message = login.describe(body) if body is not None else (None, None)
    if request_id is not None:  # shown in /status, logs and errors: as untrusted as any upstream text
        request_id = untrusted(request_id, login.redactor, SHORT_FIELD_LENGTH) or None
    if not response.is_success:
        raise _http_error(login, response, _text(response, content), message, request_id)
    if body is None:
        text = excerpt(_text(response, content), login.redactor)
        raise UpstreamError(
            login.provider, f"{login.action} answered {response.status_code} but not with JSON: {text!r}",
            status=response.status_code,
        )
    return body, request_id


async def fetch_answer(client: httpx.AsyncClient, login: LoginRequest) -> tuple[httpx.Response, bytes]:
    """Make the call; return its answer, whatever the status, and the body (bounded, decoded). For a kind
    whose answers are not JSON; transport failures are UpstreamErrors already."""
    try:
        return await _answer(client, login)
    except httpx.ConnectTimeout:
        raise UpstreamError(
            login.provider, f"could not connect to {login.url} within {login.timeout.connect:g}s"
        ) from None
    except httpx.TimeoutException:
        raise UpstreamError(
            login.provider, f"{login.action} got no answer within {login.timeout.read:g}s"
        ) from None
    except httpx.HTTPError as exc:
        raise UpstreamError(login.provider, f"could not reach {shown_url(login.url)}: {_reason(exc)}") from None


async def text_exchange(client: httpx.AsyncClient, login: LoginRequest) -> bytes:
    """Make the call; return the body of a 2xx answer as it is (an answer that is not JSON: a token as text)."""
    response, content = await fetch_answer(client, login)
    if not response.is_success:
        body = _json_or_none(content)
        _, message = login.describe(body) if body is not None else (None, None)
        raise _http_error(login, response, _text(response, content), message, None)
    return content


async def _answer(client: httpx.AsyncClient, login: LoginRequest) -> tuple[httpx.Response, bytes]:
    """The answer and its body, read up to `max_answer` bytes after decoding: a small compressed answer
    that inflates to gigabytes fails here instead of filling the memory. The body is decoded here, a
    bounded piece at a time, rather than by httpx, which inflates each network chunk whole (64 KiB of a
    gzip bomb is 64 MiB)."""
    headers = {"accept-encoding": ACCEPTED_ENCODINGS, **dict(login.headers)}
    request = client.build_request(
        login.method, login.url, json=login.json, data=login.form, content=login.content, headers=headers,
        timeout=login.timeout,
    )
    response = await client.send(request, stream=True)
    try:
        chunks, size = [], 0
        async for chunk in _decoded(response, login):
            size += len(chunk)
            if size > login.max_answer:
                raise UpstreamError(login.provider, f"{login.action} answer is larger than {login.max_answer} "
                                    "bytes once decoded; refused (max_answer_bytes)", status=response.status_code)
            chunks.append(chunk)
    finally:
        await response.aclose()
    return response, b"".join(chunks)


ACCEPTED_ENCODINGS = "gzip, deflate"  # the codings _inflated can bound; no brotli or zstd
_WBITS = {"gzip": zlib.MAX_WBITS | 16, "x-gzip": zlib.MAX_WBITS | 16, "deflate": zlib.MAX_WBITS}
_PIECE = 64 * 1024  # the most one step of decoding may produce


def _decoded(response: httpx.Response, login: LoginRequest) -> AsyncIterator[bytes]:
    """The body as sent, its content codings undone in reverse order of application (RFC 9110 8.4)."""
    if response.is_stream_consumed:  # an in-memory answer (a test's MockTransport), already read and decoded
        return _pieces(response.content)
    codings = [c.strip().lower() for c in response.headers.get("content-encoding", "").split(",") if c.strip()]
    stream: AsyncIterator[bytes] = response.aiter_raw()
    for coding in reversed(codings):
        if coding != "identity":
            if coding not in _WBITS:
                shown = untrusted(coding, None, SHORT_FIELD_LENGTH)
                raise UpstreamError(login.provider, f"{login.action} answer is encoded with {shown!r}, which tokend "
                                    f"does not accept ({ACCEPTED_ENCODINGS})", status=response.status_code)
            stream = _inflated(stream, coding, login)
    return stream


async def _pieces(content: bytes) -> AsyncIterator[bytes]:
    for start in range(0, len(content), _PIECE):
        yield content[start:start + _PIECE]


async def _inflated(stream: AsyncIterator[bytes], coding: str, login: LoginRequest) -> AsyncIterator[bytes]:
    decompressor = zlib.decompressobj(_WBITS[coding])
    started = False
    async for data in stream:
        while data and not decompressor.eof:
            try:
                out = decompressor.decompress(data, _PIECE)
            except zlib.error:
                if coding != "deflate" or started:
                    raise UpstreamError(login.provider, f"{login.action} answer is not valid {coding} data") from None
                # Some servers send a raw deflate stream under "deflate", without the zlib wrapper.
                decompressor, started = zlib.decompressobj(-zlib.MAX_WBITS), True
                continue
            started = True
            data = decompressor.unconsumed_tail
            if out:
                yield out
            # A full piece may leave output pending with no input left: ask again until it comes out short.
            while len(out) == _PIECE and not data and not decompressor.eof:
                out = decompressor.decompress(b"", _PIECE)
                if out:
                    yield out


def _reason(exc: httpx.HTTPError) -> str:
    """Why a request failed, in words of our own: an HTTP library's message may quote a request header,
    secret and all (`Illegal header value b'...'`), so it is never shown."""
    if isinstance(exc, httpx.LocalProtocolError):
        return "the request could not be sent: one of its header or body values is not valid HTTP"
    if isinstance(exc, httpx.RemoteProtocolError):
        return "the server broke the HTTP protocol or closed the connection"
    if isinstance(exc, httpx.ConnectError | httpx.NetworkError):
        cause: BaseException | None = exc
        while cause is not None and not isinstance(cause, OSError):
            cause = cause.__cause__ or cause.__context__
        if isinstance(cause, ssl.SSLCertVerificationError):
            return f"TLS certificate not trusted ({cause.reason}: {cause.verify_message})"
        if isinstance(cause, ssl.SSLError):
            return f"TLS failed ({cause.reason})"
        if isinstance(cause, OSError) and cause.strerror:
            return cause.strerror
        return "the connection failed" if isinstance(exc, httpx.ConnectError) else "the connection broke"
    return f"the request failed ({type(exc).__name__})"


def _json_or_none(content: bytes) -> Any:
    try:
        return json.loads(content)
    except (ValueError, UnicodeDecodeError, RecursionError):
        return None


def _text(response: httpx.Response, content: bytes) -> str:
    return content.decode(response.encoding or "utf-8", errors="replace")


def _http_error(
    login: LoginRequest, response: httpx.Response, text: str, message: str | None, request_id: str | None
) -> UpstreamError:
    status = response.status_code
    detail = excerpt(message or text, login.redactor) or response.reason_phrase
    text = f"{login.action} answered {status}: {detail}"
    if request_id:
        text += f" (request id {request_id})"
    if status in (401, 403):
        return CredentialsRejected(login.provider, text, status=status, request_id=request_id)
    retryable = status in (408, 425, 429) or status >= 500
    return UpstreamError(
        login.provider, text, status=status, request_id=request_id, retryable=retryable,
        retry_after=parse_retry_after(response.headers.get("retry-after")),
    )


def parse_retry_after(value: str | None, now: float | None = None) -> float | None:
    """Retry-After as seconds from now: either delta-seconds or an HTTP date (RFC 9110 10.2.3)."""
    if not value:
        return None
    value = value.strip()
    if value.isdigit():
        return float(value)
    try:
        when = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    return max(0.0, when.timestamp() - (time.time() if now is None else now))


def malformed(provider: str, what: str, request_id: str | None = None) -> UpstreamError:
    """The upstream said 2xx but the body lacks what its documentation promises: transient, retried."""
    suffix = f" (request id {request_id})" if request_id else ""
    return UpstreamError(provider, f"login answer is malformed: {what}{suffix}", request_id=request_id)


def bearer_credential(
    config: ProviderBase,
    token: str,
    reported_expiry: float | None,
    *,
    extra_headers: Mapping[str, str] | None = None,
    request_id: str | None = None,
) -> Credential:
    """A bearer token credential, with its expiry made sensible (tokend.providers.expiry)."""
    headers = {**(extra_headers or {}), "Authorization": f"Bearer {token}"}
    return login_credential(config, token, reported_expiry, headers=headers, request_id=request_id)


def login_credential(
    config: ProviderBase,
    token: str,
    reported_expiry: float | None,
    *,
    headers: Mapping[str, str],
    query: Mapping[str, str] | None = None,
    token_type: str = "Bearer",
    request_id: str | None = None,
    exact_expiry: bool = False,
) -> Credential:
    """The credential a login produced, with its expiry made sensible (tokend.providers.expiry). `exact_expiry`: the
    expiry's unit is known for sure (see resolve_expiry)."""
    now = time.time()
    expires_at, note = resolve_expiry(
        reported_expiry, token, now=now,
        default_lifetime=config.default_lifetime, max_lifetime=config.max_lifetime, exact=exact_expiry,
    )
    return Credential(
        token=token, token_type=token_type, expires_at=expires_at, headers=headers, query=query or {},
        request_id=request_id, obtained_at=now, expiry_note=note,
    )


def static_credential(
    key: str, *, token_type: str, header: str | None, scheme: str, query_param: str | None
) -> Credential:
    """A key that needs no login and never expires, served as a header and/or a query parameter."""
    return Credential(
        token=key,
        token_type=token_type,
        expires_at=None,
        headers={header: f"{scheme} {key}" if scheme else key} if header else {},
        query={query_param: key} if query_param else {},
        obtained_at=time.time(),
        source="static",
    )


def number_or_none(value: Any) -> float | None:
    """A number from a JSON answer: NaN is no number; an integer too large for a float is infinity (far away)."""
    if isinstance(value, bool):
        return None
    if isinstance(value, str):
        try:
            value = float(value)
        except ValueError:
            return None
    if isinstance(value, int):
        try:
            value = float(value)
        except OverflowError:
            return math.inf if value > 0 else -math.inf
    if not isinstance(value, float) or math.isnan(value):
        return None
    return value
