"""Where a proxied request goes: the provider's API origin from the config, plus the client's path and query.

The origin never comes from the request: only the path and the query do, and the path is refused (400) when it
could leave the configured origin or base path, or smuggle a second request line or header:

- a `.` or `..` segment, raw or percent-encoded (`%2e%2e`), or followed by `;`: an upstream that normalises
  the path would climb out of the api_url's base path;
- an encoded slash or backslash (`%2f`, `%5c`), or a raw backslash: servers disagree on whether they separate
  segments, which is what makes them useful for escaping;
- `@`, raw or encoded, and `//` at the start or `://` anywhere: the shapes of a user-info or absolute URL, which
  some upstreams (and some HTTP libraries behind them) read as a new authority;
- a control character, raw or encoded (CR, LF, NUL, ...), or a space: a request line cannot carry one, and
  an encoded one is decoded by some upstreams into a header injection.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass
from urllib.parse import quote, urlsplit

__all__ = ["BadPath", "Origin", "bad_path", "request_target", "with_query"]

# One search each, as the data path runs them on every request: bytes that no request line may hold;
# \ and @ raw or encoded, encoded controls and slashes; the shapes of an absolute URL; a dot segment.
_UNSAFE = re.compile(rb"[\x00-\x20\x7f-\xff]")
_ESCAPING = re.compile(rb"[\\@]|%(?:[01][0-9a-f]|7f|2f|5c|40)", re.IGNORECASE)
_ABSOLUTE = re.compile(rb"^//|://")
_DOT_SEGMENT = re.compile(rb"(?:^|/)(?:\.|%2e){1,2}(?:[/;]|$)", re.IGNORECASE)  # "..;": Tomcat's ".."
_UNSAFE_QUERY = re.compile(rb"[\x00-\x20\x7f-\xff#]")
# All four at once: the common path matches none of them, and one search costs a quarter of four.
_ANY = re.compile(b"|".join(b"(?:%b)" % each.pattern for each in (_UNSAFE, _ESCAPING, _ABSOLUTE, _DOT_SEGMENT)),
                  re.IGNORECASE)


class BadPath(ValueError):
    """The path could leave the configured origin; the message says why, without echoing the path."""


@dataclass(frozen=True)
class Origin:
    """An upstream origin (scheme, host, port) and the base path of its api_url."""

    scheme: str
    host: str
    port: int
    base_path: bytes  # the api_url's path without its trailing slash: b"" or b"/v2"

    @classmethod
    def from_url(cls, url: str) -> Origin:
        parts = urlsplit(url)
        assert parts.hostname is not None  # the config validated it
        port = parts.port or (443 if parts.scheme == "https" else 80)
        return cls(parts.scheme, parts.hostname, port, parts.path.rstrip("/").encode())

    @property
    def tls(self) -> bool:
        return self.scheme == "https"

    @property
    def host_header(self) -> bytes:
        host = f"[{self.host}]" if ":" in self.host else self.host
        default = 443 if self.tls else 80
        return (host if self.port == default else f"{host}:{self.port}").encode("idna")


def bad_path(path: bytes) -> str | None:
    """Why `path` (raw, as the client sent it) is refused, or None when it may be forwarded."""
    if not _ANY.search(path):
        return None
    if _UNSAFE.search(path):
        return "the path holds a control character, a space or a non-ASCII byte"
    if _ESCAPING.search(path):
        return "the path holds an encoded slash, a backslash, an @ or an encoded control character"
    if _ABSOLUTE.search(path):
        return "the path looks like an absolute URL"
    if _DOT_SEGMENT.search(path):
        return "the path holds a . or .. segment"
    return None


def request_target(origin: Origin, path: bytes, query: bytes) -> bytes:
    """The upstream request-target: the base path, the client's path, its query. Raises BadPath."""
    reason = bad_path(path)
    if reason is not None:
        raise BadPath(reason)
    if query and _UNSAFE_QUERY.search(query):
        raise BadPath("the query holds a control character, a space, a # or a non-ASCII byte")
    if not path.startswith(b"/"):
        path = b"/" + path
    target = origin.base_path + path
    return target + b"?" + query if query else target


def with_query(target: bytes, extra: Mapping[str, str]) -> bytes:
    """`target` with the credential's query parameters, replacing any the client sent under those names."""
    if not extra:
        return target
    path, _, query = target.partition(b"?")
    names = {quote(name, safe="").encode() for name in extra}
    kept = [pair for pair in query.split(b"&") if pair and pair.partition(b"=")[0] not in names]
    added = [f"{quote(name, safe='')}={quote(value, safe='')}".encode() for name, value in extra.items()]
    return path + b"?" + b"&".join(kept + added)
