"""A declarative login, for any token API: the request to make, and JSON pointers into its answer.

Values in the request (headers, JSON or form body) are secret references or templates over the
provider's `secrets`; what is served (`serve_headers`, `serve_query`) are templates over the same
secrets and `{token}`. See HttpConfig for the settings and README for worked examples.
"""

from __future__ import annotations

import time
from datetime import UTC, datetime
from typing import Any

import httpx

from tokend import pointer, template
from tokend.config import HttpConfig, SecretValue
from tokend.credential import Credential
from tokend.errors import UpstreamError
from tokend.expiry import jwt_expiry
from tokend.providers.base import LoginRequest, exchange, http_timeout, login_credential, number_or_none
from tokend.redact import Redactor

_MESSAGE_KEYS = ("message", "error_description", "error", "detail", "title")


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
            timeout=http_timeout(config),
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
            return None  # tokend.expiry falls back to a JWT's exp, else default_lifetime
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
        except ValueError:
            return None
        return (when if when.tzinfo else when.replace(tzinfo=UTC)).timestamp()
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
