"""A declarative login, for any token API: the request to make, and JSON pointers into its answer.

Values in the request (headers, JSON or form body) are secret references or templates over the
provider's `secrets`; what is served (`serve_headers`, `serve_query`) are templates over the same
secrets and `{token}`. See HttpConfig for the settings and docs/providers/http.md for worked examples.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from datetime import UTC, datetime
from typing import Annotated, Any, Literal

import httpx
from pydantic import AfterValidator, Field, PlainValidator, model_validator

import tokend.providers.json_pointer as pointer
from tokend.config import templates as template
from tokend.config.fields import UpstreamURL
from tokend.config.secrets import Secret, SecretValue, resolve_secret
from tokend.credential import Credential
from tokend.errors import UpstreamError
from tokend.providers.base import Kind, ProviderBase
from tokend.providers.exchange import (
    LoginRequest,
    exchange,
    limits,
    login_credential,
    number_or_none,
)
from tokend.providers.expiry import jwt_expiry
from tokend.providers.json_pointer import check_pointer
from tokend.redact import Redactor

_MESSAGE_KEYS = ("message", "error_description", "error", "detail", "title")


JsonPointer = Annotated[str, AfterValidator(check_pointer)]
TemplateName = Annotated[str, Field(pattern=r"^[A-Za-z_][A-Za-z0-9_]*$")]


def _resolve_body(value: Any) -> Any:
    """A request body or header value: secret references become SecretValue, the rest stays as written."""
    if isinstance(value, dict):
        if len(value) == 1 and next(iter(value)) in ("env", "file", "credential"):
            return resolve_secret(value)
        return {key: _resolve_body(item) for key, item in value.items()}
    if isinstance(value, list):
        return [_resolve_body(item) for item in value]
    return value


Body = Annotated[Any, PlainValidator(_resolve_body)]


class HttpConfig(ProviderBase):
    """A declarative login: any token API described by its request and where its answer holds the token."""

    kind: Literal["http"]
    login_url: UpstreamURL = Field(alias="url")  # `url` in the file; a property on every kind
    method: Literal["GET", "POST", "PUT"] = "POST"
    secrets_: dict[TemplateName, Secret] = Field(default={}, alias="secrets")
    headers: dict[str, Body] = {}
    json_body: Body = Field(default=None, alias="json")
    form: dict[str, Body] | None = None
    token_pointer: JsonPointer
    expiry_pointer: JsonPointer | None = None
    expiry_format: Literal["unix", "unix_ms", "iso8601", "seconds", "jwt"] = "unix"
    token_type: str = "Bearer"
    token_type_pointer: JsonPointer | None = None
    request_id_pointer: JsonPointer | None = None
    serve_headers: dict[str, str] = {"Authorization": "Bearer {token}"}
    serve_query: dict[str, str] = {}

    @model_validator(mode="after")
    def _consistent(self) -> HttpConfig:
        if self.json_body is not None and self.form is not None:
            raise ValueError("set json or form as the login body, not both")
        if self.expiry_format == "jwt" and self.expiry_pointer is not None:
            raise ValueError('expiry_format = "jwt" reads the token\'s exp claim; remove expiry_pointer')
        known = set(self.secrets_)
        for where, text in _strings({"headers": self.headers, "json": self.json_body, "form": self.form}):
            _check_template(where, text, known)
        for where, text in _strings({"serve_headers": self.serve_headers, "serve_query": self.serve_query}):
            _check_template(where, text, known | {"token"})
        if not self.serve_headers and not self.serve_query:
            raise ValueError("serve_headers and serve_query are both empty: clients would get nothing to send")
        return self

    @property
    def url(self) -> str:
        return self.login_url


def _strings(value: Any, where: str = "") -> Iterator[tuple[str, str]]:
    if isinstance(value, str):
        yield where, value
    elif isinstance(value, dict):
        for key, item in value.items():
            yield from _strings(item, f"{where}.{key}" if where else str(key))
    elif isinstance(value, list):
        for index, item in enumerate(value):
            yield from _strings(item, f"{where}[{index}]")


def _check_template(where: str, text: str, known: set[str]) -> None:
    try:
        template.check(text, known)
    except ValueError as exc:
        raise ValueError(f"{where}: {exc}") from None


class HttpLogin:
    def __init__(self, name: str, config: HttpConfig, redactor: Redactor) -> None:
        self.name = name
        self.config = config
        self._redactor = redactor

    async def fetch(self, client: httpx.AsyncClient) -> Credential:
        config = self.config
        values = {name: secret.get() for name, secret in config.secrets_.items()}
        login = LoginRequest(
            provider=self.name,
            method=config.method,
            url=config.url,
            headers={"Accept": "application/json", **{k: str(_fill(v, values)) for k, v in config.headers.items()}},
            json=None if config.json_body is None else _fill(config.json_body, values),
            form=None if config.form is None else {k: str(_fill(v, values)) for k, v in config.form.items()},
            **limits(config),
            redactor=self._redactor,
            describe=self._describe,
        )
        body, request_id = await exchange(client, login)
        token = self._find(body, "token_pointer", config.token_pointer, request_id)
        if not isinstance(token, str) or not token:
            raise self._missing("token_pointer", config.token_pointer, "non-empty string", request_id)
        token_type = config.token_type
        if config.token_type_pointer is not None:
            token_type = str(self._find(body, "token_type_pointer", config.token_type_pointer, request_id))
        values["token"] = token
        return login_credential(
            config, token, self._expiry(body, token, request_id),
            headers={k: template.render(v, values) for k, v in config.serve_headers.items()},
            query={k: template.render(v, values) for k, v in config.serve_query.items()},
            token_type=token_type, request_id=request_id,
            # A date, milliseconds or a lifetime say what they are: no guessing at the unit.
            exact_expiry=config.expiry_format in ("iso8601", "unix_ms", "seconds"),
        )

    def _describe(self, body: Any) -> tuple[str | None, str | None]:
        request_id = None
        if self.config.request_id_pointer is not None:
            try:
                found = pointer.resolve(body, self.config.request_id_pointer)
                request_id = str(found) if found is not None else None
            except KeyError:
                pass
        message = next((body[k] for k in _MESSAGE_KEYS if isinstance(body, dict) and isinstance(body.get(k), str)),
                       None)
        return request_id, message

    def _find(self, body: Any, field: str, where: str, request_id: str | None) -> Any:
        try:
            return pointer.resolve(body, where)
        except KeyError:
            raise self._missing(field, where, "value", request_id) from None

    def _missing(self, field: str, where: str, wanted: str, request_id: str | None) -> UpstreamError:
        # Most likely the config does not match the API: not retried fast, and the message says where to look.
        suffix = f" (request id {request_id})" if request_id else ""
        return UpstreamError(
            self.name, f'the login answer holds no {wanted} at {field} "{where}"{suffix}',
            request_id=request_id, retryable=False,
        )

    def _expiry(self, body: Any, token: str, request_id: str | None) -> float | None:
        config = self.config
        if config.expiry_format == "jwt":
            expires = jwt_expiry(token)
            if expires is None:
                raise UpstreamError(self.name, 'expiry_format = "jwt" but the token has no exp claim',
                                    retryable=False)
            return expires
        if config.expiry_pointer is None:
            return None  # tokend.providers.expiry falls back to a JWT's exp, else default_lifetime
        raw = self._find(body, "expiry_pointer", config.expiry_pointer, request_id)
        expires = _parse_expiry(raw, config.expiry_format)
        if expires is None:
            raise self._missing("expiry_pointer", config.expiry_pointer, f"{config.expiry_format} expiry",
                                request_id)
        return expires


def _parse_expiry(raw: Any, form: str) -> float | None:
    if form == "iso8601":
        if not isinstance(raw, str):
            return None
        try:
            when = datetime.fromisoformat(raw)
            return (when if when.tzinfo else when.replace(tzinfo=UTC)).timestamp()
        except (ValueError, OverflowError):
            return None
    number = number_or_none(raw)
    if number is None:
        return None
    if form == "unix_ms":
        return number / 1000
    if form == "seconds":
        return time.time() + number
    return number


def _fill(value: Any, values: dict[str, str]) -> Any:
    """A request value with its secrets filled in: references resolved, templates rendered."""
    if isinstance(value, SecretValue):
        return value.get()
    if isinstance(value, str):
        return template.render(value, values)
    if isinstance(value, dict):
        return {key: _fill(item, values) for key, item in value.items()}
    if isinstance(value, list):
        return [_fill(item, values) for item in value]
    return value


EXAMPLE = """\
[providers.legacy]
kind = "http"                              # a login described in the config alone
url = "https://legacy.example.com/session"
method = "POST"
secrets = { password = { env = "LEGACY_PASSWORD" } }   # named, for the {templates} below
json = { user = "ops", password = "{password}" }       # or form = { ... }
token_pointer = "/token"                   # JSON pointers (RFC 6901) into the answer
expiry_pointer = "/expires_at"
expiry_format = "unix"                     # unix, unix_ms, iso8601, seconds (from now), jwt (no pointer)
serve_headers = { Authorization = "Bearer {token}" }
"""

KIND = Kind("http", HttpConfig, "tokend.providers.http:HttpLogin", example=EXAMPLE)
