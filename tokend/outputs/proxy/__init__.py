"""The auth-injecting reverse proxy: `ANY /proxy/{name}/{path}` forwarded to the provider's API with the
credential added, so that an app changes its base URL and never handles a token.

    paths.py    the upstream URL from the config and the client's path; what could escape it is refused
    headers.py  what is stripped each way
    pool.py     the upstream connections: keep-alive and TLS per origin, answers framed by llhttp, bounded
    app.py      the ASGI app: checks, forwards, streams both ways, one retry after a 401
    cycle.py    how a proxied request is read and answered by the local server (one write per answer)
    checks.py   the request checks (those of /token, plus the browser's Sec-Fetch headers)
    stats.py    the figures for /metrics
    listen.py   the optional listener of a provider's own
    router.py   the proxy's parts for one daemon, and the ASGI wrapper that puts it in front of the local API

Importing this package is cheap: the names below load when first used (the data path only once a
request is proxied).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

__all__ = ["Check", "Credentials", "Listener", "Pool", "Proxy", "ProxyApp", "ProxyRouter", "ProxyStats",
           "open_listeners", "request_check"]

_LAZY = {
    "Check": "tokend.outputs.proxy.app",
    "Credentials": "tokend.outputs.proxy.app",
    "Listener": "tokend.outputs.proxy.listen",
    "Pool": "tokend.outputs.proxy.pool",
    "Proxy": "tokend.outputs.proxy.router",
    "ProxyApp": "tokend.outputs.proxy.app",
    "ProxyRouter": "tokend.outputs.proxy.router",
    "ProxyStats": "tokend.outputs.proxy.stats",
    "open_listeners": "tokend.outputs.proxy.listen",
    "request_check": "tokend.outputs.proxy.checks",
}

if TYPE_CHECKING:
    from tokend.outputs.proxy.app import Check, Credentials, ProxyApp
    from tokend.outputs.proxy.checks import request_check
    from tokend.outputs.proxy.listen import Listener, open_listeners
    from tokend.outputs.proxy.pool import Pool
    from tokend.outputs.proxy.router import Proxy, ProxyRouter
    from tokend.outputs.proxy.stats import ProxyStats


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        import importlib

        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'tokend.outputs.proxy' has no attribute {name!r}")
