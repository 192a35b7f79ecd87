"""A file sink's `format = "template"`: the file other programs read, written as they want it.

    [[providers.api.sinks]]
    path = "/etc/nginx/tokend/api.conf"
    format = "template"
    template = 'proxy_set_header Authorization "{header:Authorization}";\\n'
    signal = "HUP"
    pid_file = "/run/nginx.pid"

The names are those of `GET /token`: `{token}`, `{token_type}`, `{expires_at}` (RFC 3339, empty for a key
that never expires), and `{header:NAME}` for each header a client must send (its name in any case);
`{{` and `}}` are literal braces. The rules are the `http` kind's templates' (tokend.config.templates).
"""

from __future__ import annotations

from tokend.config import templates as template
from tokend.credential import Credential, iso_utc

__all__ = ["check", "render"]

_FIELDS = ("token", "token_type", "expires_at")
_HEADER = "header:"


def check(text: str) -> str:
    """The template, or ValueError naming what it may not name."""
    unknown = sorted(name for name in template.names(text) if name not in _FIELDS and not name.startswith(_HEADER))
    if unknown:
        known = ", ".join(f"{{{name}}}" for name in (*_FIELDS, f"{_HEADER}NAME"))
        raise ValueError(f"template names {', '.join(unknown)}; known: {known}")
    return text


def render(text: str, credential: Credential) -> bytes:
    """The file's bytes; ValueError when it names a header the credential does not have."""
    values = {"token": credential.token, "token_type": credential.token_type,
              "expires_at": iso_utc(credential.expires_at) or ""}
    headers = {name.lower(): value for name, value in credential.headers.items()}
    for name in template.names(text):
        if name.startswith(_HEADER):
            wanted = name.removeprefix(_HEADER)
            if wanted.lower() not in headers:
                raise ValueError(f"the template names header {wanted}, which this provider's token does not come "
                                 f"with (it has: {', '.join(credential.headers) or 'none'})")
            values[name] = headers[wanted.lower()]
    return template.render(text, values).encode()
