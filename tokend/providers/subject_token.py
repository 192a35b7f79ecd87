"""Subject tokens: the identity a platform already gives a workload, read for an exchange.

A setting such as `subject_token`, `client_assertion` or `web_identity_token` takes one of

    { file = "/var/run/secrets/tokens/token" }   read anew at every exchange (never kept)
    { provider = "github" }                      another provider's current token
    { env = "..." } / { command = [...] } / ...   any secret reference (tokend.config.secrets)

A file is read again for every login, because platforms rotate it in place: the kubelet rewrites a projected
service account token at 80 % of its life, and Azure's workload identity webhook points
AZURE_FEDERATED_TOKEN_FILE at such a file. A library that reads it once fails hours later; tokend does not.

`read_subject_token(setting, ...)` is the one call a kind makes: it returns the token text, or raises
UpstreamError with a sentence that names where the token was looked for and what to check. The token itself
never appears in a message, and the redactor masks it from the moment it is read.
"""

from __future__ import annotations

import json
import os
import stat
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Any

from pydantic import PlainSerializer, PlainValidator

from tokend.config.secrets import SecretValue, config_relative, resolve_secret
from tokend.credential import iso_utc
from tokend.errors import TokendError, UpstreamError
from tokend.providers.base import Tokens
from tokend.providers.expiry import jwt_expiry
from tokend.redact import Redactor

__all__ = ["MAX_SUBJECT_TOKEN_BYTES", "SubjectFile", "SubjectProvider", "SubjectSource", "SubjectToken",
           "check_not_expired", "read_subject_token", "read_token_file", "source_names", "token_text"]

# A JWT from a platform is a few KiB; a file far larger is the wrong file, and is not read into memory.
MAX_SUBJECT_TOKEN_BYTES = 64 * 1024


@dataclass(frozen=True)
class SubjectFile:
    """A token file the platform rewrites: read at every exchange."""

    path: Path

    def __str__(self) -> str:
        return f"file {self.path}"


@dataclass(frozen=True)
class SubjectProvider:
    """Another tokend provider, whose current token is the subject token."""

    name: str

    def __str__(self) -> str:
        return f"provider {self.name}"


SubjectSource = SubjectFile | SubjectProvider | SecretValue


def _parse(raw: Any) -> SubjectSource:
    if isinstance(raw, SubjectFile | SubjectProvider | SecretValue):
        return raw
    if isinstance(raw, dict) and len(raw) == 1:
        (how, where), = raw.items()
        if how == "file":
            if not isinstance(where, str) or not where:
                raise ValueError("{ file = PATH } needs the path of the token file")
            return SubjectFile(config_relative(Path(where)))
        if how == "provider":
            if not isinstance(where, str) or not where:
                raise ValueError('{ provider = "NAME" } needs the name of another provider')
            return SubjectProvider(where)
    try:
        return resolve_secret(raw)
    except ValueError as exc:
        raise ValueError(f"{exc}; or {{ provider = \"NAME\" }} for another provider's token") from None


def _shown(source: SubjectSource) -> str:
    # What `tokend check` and fleet mode's login identity see: where the token comes from, never the token.
    return "secret" if isinstance(source, SecretValue) else str(source)


SubjectToken = Annotated[SubjectSource, PlainValidator(_parse), PlainSerializer(_shown, return_type=str)]


def source_names(*settings: SubjectSource | None) -> tuple[str, ...]:
    """The providers these settings read tokens from (for ProviderBase.sources)."""
    return tuple(setting.name for setting in settings if isinstance(setting, SubjectProvider))


async def read_subject_token(
    setting: SubjectSource, *, provider: str, field: str, tokens: Tokens | None, redactor: Redactor | None,
) -> str:
    """The subject token `setting` names, as it is now. `field` is the setting's name, for the messages;
    `tokens` reads other providers' tokens (the manager); `redactor` masks the token from now on.

    UpstreamError (retried with backoff: the platform may put a new token in place) when the token is
    missing, empty, not text, or a JWT whose `exp` has passed."""
    if isinstance(setting, SubjectFile):
        token = read_token_file(setting.path, provider, field)
    elif isinstance(setting, SubjectProvider):
        token = await _read_provider(setting.name, provider, field, tokens)
    else:
        token = setting.get()
    if redactor is not None:
        redactor.set_tokens(f"{provider} ({field})", [token])
    check_not_expired(token, setting, provider, field)
    return token


def read_token_file(path: Path, provider: str, field: str, *, json_field: str | None = None) -> str:
    """The token in file `path` (bounded, a regular file), or in its JSON object's `json_field`; UpstreamError
    with a sentence naming `field` and the file otherwise."""
    what = f"{field} file {path}"
    try:
        # Non-blocking, so that a FIFO put there by mistake cannot hang the login; symlinks are followed
        # (a Kubernetes projected volume swaps a ..data symlink to rotate its files).
        descriptor = os.open(path, os.O_RDONLY | os.O_NONBLOCK | os.O_CLOEXEC)
    except FileNotFoundError:
        raise UpstreamError(provider, f"{what} does not exist: check that the platform's token is mounted there "
                            "(a projected service account token volume, AZURE_FEDERATED_TOKEN_FILE, the CI job's "
                            "token step)") from None
    except OSError as exc:
        raise UpstreamError(provider, f"{what} cannot be read ({exc.strerror}): check its owner and mode") from None
    with os.fdopen(descriptor, "rb") as handle:
        if not stat.S_ISREG(os.fstat(handle.fileno()).st_mode):
            raise UpstreamError(provider, f"{what} is not a regular file")
        data = handle.read(MAX_SUBJECT_TOKEN_BYTES + 1)
    if len(data) > MAX_SUBJECT_TOKEN_BYTES:
        raise UpstreamError(provider, f"{what} is larger than {MAX_SUBJECT_TOKEN_BYTES} bytes: it is not a token "
                            "file")
    return token_text(data, what, provider, json_field=json_field)


def token_text(data: bytes, what: str, provider: str, *, json_field: str | None = None) -> str:
    """The token in `data` (the whole text, or its JSON object's `json_field`), checked to be one."""
    if json_field is not None:
        data = _json_field(data, what, provider, json_field)
    try:
        token = data.decode("ascii").strip()
    except UnicodeDecodeError:
        raise UpstreamError(provider, f"{what} does not hold a token (it is not ASCII text)") from None
    if not token:
        raise UpstreamError(provider, f"{what} is empty: the platform has not written the token yet, or the "
                            "volume is not the token's")
    if any(ord(char) < 0x21 or ord(char) == 0x7F for char in token):
        raise UpstreamError(provider, f"{what} does not hold a token (it has spaces or control characters inside)")
    return token


def _json_field(data: bytes, what: str, provider: str, field: str) -> bytes:
    try:
        value = json.loads(data)
    except (ValueError, RecursionError):
        raise UpstreamError(provider, f"{what} is not JSON, and its format says it is") from None
    token = value.get(field) if isinstance(value, dict) else None
    if not isinstance(token, str):
        raise UpstreamError(provider, f"{what} has no string field {field!r} (its subject_token_field_name)")
    return token.encode("utf-8", "replace")


async def _read_provider(source: str, provider: str, field: str, tokens: Tokens | None) -> str:
    if tokens is None:
        raise UpstreamError(provider, f"{field} is provider {source}'s token, which cannot be read here")
    try:
        credential = await tokens.get(source)
    except TokendError as exc:
        raise UpstreamError(provider, f"{field} is provider {source}'s token, and it has none now "
                            f"({exc.message.rstrip('.')}): see that provider's status") from None
    return credential.token


def check_not_expired(token: str, setting: SubjectSource | str, provider: str, field: str) -> None:
    expires = jwt_expiry(token)
    if expires is None or expires > time.time():
        return
    hint = {SubjectFile: "check that the platform still rewrites it (the kubelet renews a projected token "
                         "before 80 % of its life; a stopped node agent does not)",
            SubjectProvider: "that provider should have renewed it: see its status"}.get(
        type(setting), "check that its source hands out a current one")
    shown = setting if isinstance(setting, str) else _shown(setting)
    raise UpstreamError(provider, f"{field} ({shown}) is a JWT that expired at {iso_utc(expires)}: {hint}")
