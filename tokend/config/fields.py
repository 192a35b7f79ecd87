"""Value types the config and the provider kinds share: upstream URLs, durations, socket modes."""

from __future__ import annotations

import ipaddress
import math
import re
from typing import Annotated, Any
from urllib.parse import urlsplit

from pydantic import Field, PlainValidator

from tokend.config.tool_names import registry_key

__all__ = ["Duration", "GitHost", "LoopbackListen", "ProxyListen", "Registry", "Seconds", "SocketMode", "UpstreamURL",
           "is_loopback_host", "shown_url"]



def is_loopback_host(host: str) -> bool:
    """True for 127.0.0.0/8, ::1 and localhost: the only hosts allowed without TLS or allow_remote."""
    host = host.strip("[]").lower()
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def shown_url(url: str) -> str:
    """`url` fit for a message: never its user name, password, query or fragment, where keys end up."""
    try:
        parts = urlsplit(url)
        host = parts.hostname or ""
        port = f":{parts.port}" if parts.port else ""
    except ValueError:
        return "(a URL that does not parse)"
    host = f"[{host}]" if ":" in host else host
    hidden = "?…" if parts.query or parts.fragment else ""
    return f"{parts.scheme}://{host}{port}{parts.path}{hidden}" if parts.scheme else "(not a URL)"


def _upstream_url(url: str) -> str:
    try:
        parts = urlsplit(url)
        parts.port  # noqa: B018 (a bad port raises only when read)
    except ValueError:
        raise ValueError(f"{shown_url(url)!r} is not a valid URL") from None
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise ValueError(f"{shown_url(url)!r} is not an http(s) URL")
    if parts.username or parts.password:
        raise ValueError("must not hold a user name or password; use the provider's secret fields")
    if parts.scheme == "http" and not is_loopback_host(parts.hostname):
        raise ValueError(f"{shown_url(url)!r} must use https:// (plain http:// is allowed only for loopback hosts)")
    if parts.query or parts.fragment:
        raise ValueError(f"{shown_url(url)!r} must not have a query or fragment (keys belong in secret fields)")
    if any(ord(char) < 0x21 or ord(char) == 0x7F for char in url):
        raise ValueError(f"{shown_url(url)!r} holds spaces or control characters")
    return url.rstrip("/")


UpstreamURL = Annotated[str, PlainValidator(lambda v: _upstream_url(_expect_str(v)))]


def _proxy_listen(value: Any) -> str:
    """A proxy listener: "host:port" on a loopback address, or an absolute unix socket path."""
    text = _expect_str(value)
    return text if text.startswith("/") else _loopback_listen(text, " or an absolute unix socket path")


ProxyListen = Annotated[str, PlainValidator(_proxy_listen)]


def _git_host(value: Any) -> str:
    """A host as git's credential helpers are told it: a name, and `:port` when the remote URL has one."""
    text = _expect_str(value).strip().lower()
    host, colon, port = text.rpartition(":") if not text.endswith("]") else (text, "", "")
    if colon and not (port.isdigit() and 1 <= int(port) <= 65535):
        raise ValueError(f"{text!r} is not a host or host:port (git gives the port only when the URL has one)")
    if not (host if colon else text) or "/" in text or any(char.isspace() for char in text):
        raise ValueError(f"{text!r} is not a host or host:port, such as \"github.com\" or \"git.example.com:8443\"")
    return text


GitHost = Annotated[str, PlainValidator(_git_host)]


def _registry(value: Any) -> str:
    text = registry_key(_expect_str(value))
    if not text or any(char.isspace() for char in text):
        raise ValueError(f"{value!r} is not a registry, such as \"ghcr.io\" or \"europe-docker.pkg.dev\"")
    return text


Registry = Annotated[str, PlainValidator(_registry)]


def _loopback_listen(value: Any, alternative: str = "") -> str:
    """A listener other programs reach over TCP: "host:port" on a loopback address."""
    text = _expect_str(value)
    host, _, port = text.rpartition(":")
    if not port.isdigit() or not 1 <= int(port) <= 65535 or not host:
        raise ValueError(f'{text!r} must be "127.0.0.1:PORT"{alternative}')
    if not is_loopback_host(host):
        raise ValueError(f"{text!r} is not a loopback address; tokend serves local programs only")
    return text


LoopbackListen = Annotated[str, PlainValidator(_loopback_listen)]


def _expect_str(value: Any) -> str:
    if not isinstance(value, str):
        raise ValueError("must be a string")
    return value


# --- models ---------------------------------------------------------------------------------------------

Seconds = Annotated[float, Field(gt=0, allow_inf_nan=False)]

_DURATION = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*([smhd])\s*$")
_UNIT = {"s": 1, "m": 60, "h": 3600, "d": 86400}


def _duration(value: Any) -> float:
    """Seconds, given as a number or as "45s", "15m", "12h", "30d"."""
    if isinstance(value, int | float) and not isinstance(value, bool) and 0 < value < math.inf:
        return float(value)
    match = _DURATION.match(value) if isinstance(value, str) else None
    if match is None or float(match.group(1)) <= 0:
        raise ValueError('must be a positive duration: seconds, or a string such as "12h" or "30d"')
    seconds = float(match.group(1)) * _UNIT[match.group(2)]
    if not math.isfinite(seconds):
        raise ValueError("is too long a duration")
    return seconds


Duration = Annotated[float, PlainValidator(_duration)]


def _socket_mode(value: Any) -> int:
    """A unix socket's file mode: 0o660 in TOML, or "0660" / "660" as a string of octal digits."""
    if isinstance(value, str) and re.fullmatch(r"0?o?[0-7]{3}", value):
        value = int(value.removeprefix("0").removeprefix("o"), 8)
    if not isinstance(value, int) or isinstance(value, bool) or not 0 <= value <= 0o777:
        raise ValueError('must be a file mode such as 0o600 (or "0600")')
    if value & 0o600 != 0o600:
        raise ValueError(f"{value:#o} must let tokend's own user read and write the socket (0o600 at least)")
    return value


SocketMode = Annotated[int, PlainValidator(_socket_mode)]

