"""The proxy's request checks: exactly those of /token, and no Sec-Fetch-Site / Sec-Fetch-Mode.

The proxy spends the credential on the caller's behalf, so it is guarded as a token read is: a web page
that could reach it could act as the provider's account. Browsers send the Sec-Fetch headers on every
request they make (and no program needs to), so their presence alone is refused too.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping

from starlette.types import Scope

from tokend.api.guard import NOT_YOURS, Denial, RequestGuard
from tokend.config.tables import ClientConfig
from tokend.outputs.proxy.app import Check

__all__ = ["FROM_BROWSER", "request_check"]

FROM_BROWSER = Denial(403, "forbidden", "Requests from web browsers (Sec-Fetch-Site, Sec-Fetch-Mode) are refused.")
_BROWSER_HEADERS = frozenset({b"sec-fetch-site", b"sec-fetch-mode"})


def request_check(guard: RequestGuard, clients: Callable[[], Mapping[str, ClientConfig]]) -> Check:
    """The check for one listener: its guard (Host, marker header, peer), then the client key, if any."""

    def check(scope: Scope, provider: str | None) -> Denial | None:
        denial = guard.check(scope)
        if denial is not None:
            return denial
        if any(name in _BROWSER_HEADERS for name, _ in scope["headers"]):
            return FROM_BROWSER
        if configured := clients():
            caller = guard.identify(scope, configured)
            if isinstance(caller, Denial):
                return caller
            if provider is not None and not caller.may_read(provider):
                return NOT_YOURS
        return None

    return check
