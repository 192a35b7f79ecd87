"""The upstream HTTP client: how tokend reaches the providers, through which proxy and trusting which CAs.

TLS certificates are always verified, host names included; no setting or environment variable turns that
off. The trust store is the one httpx uses by default (certifi's Mozilla bundle, or `$SSL_CERT_FILE` /
`$SSL_CERT_DIR` when set) plus `[upstream] ca_bundle` when given. The bundle adds to the store and never
replaces it: a corporate CA that re-signs intercepted TLS is trusted, and the public CAs stay trusted for
the providers that the interception leaves alone.

Proxies come from the environment as curl reads it: `HTTPS_PROXY`, `HTTP_PROXY` and `ALL_PROXY` (either
case), with `NO_PROXY` naming the hosts to reach directly (`*`, or names that cover their subdomains). A
loopback upstream (127.0.0.0/8, `localhost`, `::1`) is always reached directly, listed in `NO_PROXY` or
not: a proxy would connect to its own loopback rather than this machine's, and would see the login on the
way. The choice is made per request from the URL's host, so it holds for any loopback address, whatever
the settings name now or after a reload.
"""

from __future__ import annotations

import ssl
import urllib.request
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

import httpx

from tokend._version import __version__
from tokend.config.fields import is_loopback_host
from tokend.errors import ConfigError

__all__ = ["Proxies", "build_client", "trust_store"]

_SCHEMES = ("https", "http", "all")  # getproxies_environment() keys: HTTPS_PROXY, HTTP_PROXY, ALL_PROXY


def build_client(ca_bundle: Path | None = None, transport: httpx.AsyncBaseTransport | None = None) -> httpx.AsyncClient:
    """The client for every upstream call: verified TLS, the environment's proxies, loopback always direct.

    `ca_bundle`: [upstream]'s, added to the trust store. A `transport` handed in (tests give an
    httpx.MockTransport) is used as it is, with no proxy.
    Raises ConfigError when the trust store or a proxy variable cannot be used.
    """
    if transport is None:
        transport = _Router(trust_store(ca_bundle), Proxies.from_environment())
    return httpx.AsyncClient(
        transport=transport,
        trust_env=False,  # the environment's proxies are _Router's to apply, so that loopback stays direct
        follow_redirects=False,  # a redirected login would carry the credentials to another place
        headers={"User-Agent": f"tokend/{__version__}"},
    )


def trust_store(ca_bundle: Path | None = None) -> ssl.SSLContext:
    """httpx's default trust store, plus the CAs in `ca_bundle` (PEM) when given."""
    try:
        context = httpx.create_ssl_context()
        if ca_bundle is not None:
            context.load_verify_locations(cafile=ca_bundle)
    except OSError as exc:  # ssl.SSLError too: the bundle changed since the config was loaded, or $SSL_CERT_*
        where = f"upstream.ca_bundle {ca_bundle}" if ca_bundle is not None else "$SSL_CERT_FILE / $SSL_CERT_DIR"
        raise ConfigError(f"the upstream trust store cannot be loaded ({where}): {exc}") from None
    # Set rather than assumed: these are what keep a login's secrets from an impostor.
    context.verify_mode = ssl.CERT_REQUIRED
    context.check_hostname = True
    return context


@dataclass(frozen=True)
class Proxies:
    """The environment's proxy settings: a proxy URL by URL scheme ("https", "http", "all"), and NO_PROXY."""

    by_scheme: Mapping[str, str]
    no_proxy: tuple[str, ...] = ()

    @classmethod
    def from_environment(cls) -> Proxies:
        found = urllib.request.getproxies_environment()
        # A proxy given as "host:port" is an HTTP proxy, as curl and httpx read it.
        by_scheme = {
            scheme: url if "://" in url else f"http://{url}"
            for scheme in _SCHEMES if (url := found.get(scheme, "").strip())
        }
        no_proxy = tuple(
            entry.strip().lstrip(".").strip("[]").lower() for entry in found.get("no", "").split(",")
        )
        return cls(by_scheme, tuple(entry for entry in no_proxy if entry))

    def for_url(self, url: httpx.URL) -> str | None:
        """The proxy URL a request to `url` goes through, or None to connect directly."""
        if is_loopback_host(url.host) or self._bypassed(url.host.lower()):
            return None
        return self.by_scheme.get(url.scheme) or self.by_scheme.get("all")

    def _bypassed(self, host: str) -> bool:
        return any(entry == "*" or host == entry or host.endswith(f".{entry}") for entry in self.no_proxy)


class _Router(httpx.AsyncBaseTransport):
    """Sends each request directly or through its proxy, as Proxies.for_url decides."""

    def __init__(self, context: ssl.SSLContext, proxies: Proxies) -> None:
        self._proxies = proxies
        self._direct = httpx.AsyncHTTPTransport(verify=context)
        self._through: dict[str, httpx.AsyncHTTPTransport] = {}
        for scheme, url in proxies.by_scheme.items():
            if url not in self._through:
                self._through[url] = _proxy_transport(scheme, url, context)

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        proxy = self._proxies.for_url(request.url)
        transport = self._direct if proxy is None else self._through[proxy]
        return await transport.handle_async_request(request)

    async def aclose(self) -> None:
        for transport in (self._direct, *self._through.values()):
            await transport.aclose()


def _proxy_transport(scheme: str, url: str, context: ssl.SSLContext) -> httpx.AsyncHTTPTransport:
    try:
        # The proxy's own TLS (an https:// proxy) is verified against the same trust store; httpcore
        # refuses a proxy TLS context for a plain http:// proxy.
        proxy_tls = context if url.lower().startswith("https://") else None
        return httpx.AsyncHTTPTransport(verify=context, proxy=httpx.Proxy(url, ssl_context=proxy_tls))
    except ImportError:
        reason = "a SOCKS proxy needs the socksio package (pip install 'httpx[socks]')"
    except (ValueError, httpx.InvalidURL):
        reason = "it must be a URL such as http://proxy.example.com:3128 (http, https, socks5 or socks5h)"
    # Never the URL itself in the message: it may hold the proxy's user name and password.
    raise ConfigError(f"the proxy in ${scheme.upper()}_PROXY cannot be used: {reason}")
