"""The metadata listeners ([metadata.gce], [metadata.azure]): their settings, their sockets, the request
checks every one of them makes, and the ASGI wrapper that sends a request to the one it came in on.

Cloud SDKs ask a metadata endpoint with no key of tokend's: so each listener takes only what the local
API would (a loopback peer and Host, nothing relayed by a proxy, nothing from a web page), plus the
protocol's own proof that the caller is an SDK (Google's `Metadata-Flavor: Google` header, Azure's
per-run secret). The sockets are opened by tokend.api.sockets, like every listener, and served by the same
server as the API; the app tells them apart by the address a request came in on.
"""

from __future__ import annotations

import contextlib
import secrets
import socket
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from starlette.types import ASGIApp, Receive, Scope, Send

from tokend.api.sockets import listen_each
from tokend.config.fields import is_loopback_host
from tokend.config.tables import ServerConfig
from tokend.outputs.config import MetadataConfig, MetadataProtocol, split_listen

if TYPE_CHECKING:
    import httpx

    from tokend.redact import Redactor
    from tokend.renewal.manager import Manager

__all__ = ["Metadata", "MetadataListener", "open_metadata_listeners"]



@dataclass(frozen=True)
class MetadataListener:
    protocol: MetadataProtocol
    sock: socket.socket

    @property
    def address(self) -> tuple[str, int]:
        """As an ASGI scope's "server" shows it."""
        host, port = self.sock.getsockname()[:2]
        return str(host), int(port)


def open_metadata_listeners(config: MetadataConfig) -> list[MetadataListener]:
    """A socket per listener that is on; TokendError (all closed) if one cannot be had."""

    wanted = [(protocol, ServerConfig(host=split_listen(listen)[0], port=split_listen(listen)[1]))
              for protocol, listen in config.listening().items()]
    return [MetadataListener(protocol, sock) for protocol, sock in listen_each(wanted)]


@contextlib.contextmanager
def closed_at_exit(listeners: Sequence[MetadataListener]) -> Iterator[None]:
    try:
        yield
    finally:
        for listener in listeners:
            listener.sock.close()


class Metadata:
    """The daemon's metadata endpoints, by the address each listens on. `identity_header` is this run's
    Azure secret (IDENTITY_HEADER): random, never written anywhere, told only to authorised callers."""

    def __init__(self, manager: Manager, client: httpx.AsyncClient, redactor: Redactor,
                 listeners: Sequence[MetadataListener]) -> None:
        self._manager = manager
        self.identity_header = secrets.token_urlsafe(32)
        aws = manager.settings.metadata.aws
        # The AWS endpoint's token: configured (shared with programs started otherwise), or made for this run.
        self.aws_token = (aws.authorization_token.get() if aws is not None and aws.authorization_token is not None
                          else secrets.token_urlsafe(32))
        self.listeners = list(listeners)
        self._apps: dict[Any, ASGIApp] = {}
        # Each protocol's module imported only for its listener: most daemons open none.
        for listener in self.listeners:
            app: ASGIApp
            if listener.protocol == "azure":
                from tokend.outputs.azure import AzureIdentityEndpoint

                app = AzureIdentityEndpoint(manager, self.identity_header)
            elif listener.protocol == "aws":
                from tokend.outputs.aws import ContainerCredentials

                app = ContainerCredentials(manager, self.aws_token)
            else:
                from tokend.outputs.gce import GoogleMetadataServer

                app = GoogleMetadataServer(manager, client, redactor)
            self._apps[listener.address] = _Checked(app, google=listener.protocol == "gce")

    @property
    def addresses(self) -> frozenset[Any]:
        return frozenset(self._apps)

    def where(self, protocol: MetadataProtocol) -> str | None:
        """host:port of the listener, as the environment variables name it; None when it is off."""
        for listener in self.listeners:
            if listener.protocol == protocol:
                host, port = listener.address
                return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"
        return None

    def environment(self, may_read: Any) -> dict[str, str]:
        """What `tokend exec` puts in a child's environment for a caller (`may_read(provider)`)."""
        env: dict[str, str] = {}
        if (gce := self.where("gce")) is not None:
            env["GCE_METADATA_HOST"] = env["GCE_METADATA_IP"] = gce
        azure = self._manager.settings.metadata.azure
        if ((where := self.where("azure")) is not None and azure is not None
                and all(may_read(provider) for provider in azure.resources.values())):
            from tokend.outputs.azure import PATH as AZURE_PATH

            env["IDENTITY_ENDPOINT"] = f"http://{where}{AZURE_PATH}"
            env["IDENTITY_HEADER"] = self.identity_header
        if (where := self.where("aws")) is None:
            return env
        from tokend.outputs.aws import default_provider

        aws = default_provider(self._manager.settings)
        if aws is not None and may_read(aws):
            # The token goes to `tokend exec`, which writes it to a 0600 file for the child (never its environment).
            env["AWS_CONTAINER_CREDENTIALS_FULL_URI"] = f"http://{where}/{aws}"
            env["AWS_CONTAINER_AUTHORIZATION_TOKEN"] = self.aws_token
        return env

    def wrap(self, app: ASGIApp) -> ASGIApp:
        if not self._apps:
            return app
        apps = self._apps

        async def routed(scope: Scope, receive: Receive, send: Send) -> None:
            if scope["type"] == "http" and (own := apps.get(scope.get("server"))) is not None:
                await own(scope, receive, send)
                return
            await app(scope, receive, send)

        return routed


_RELAYED = frozenset({b"x-forwarded-for", b"forwarded"})
_FROM_BROWSER = frozenset({b"origin", b"sec-fetch-site", b"sec-fetch-mode", b"sec-fetch-dest", b"sec-fetch-user"})


class _Checked:
    """ASGI: the request checks of every metadata listener, then the protocol's app."""

    def __init__(self, app: ASGIApp, *, google: bool) -> None:
        self._app = app
        self._google = google

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        refusal = _refusal(scope, google=self._google)
        if refusal is None:
            await self._app(scope, receive, send)
            return
        body = refusal.encode()
        headers = [(b"content-type", b"text/plain; charset=utf-8"), (b"content-length", str(len(body)).encode())]
        if self._google:
            headers.append((b"metadata-flavor", b"Google"))
        await send({"type": "http.response.start", "status": 403, "headers": headers})
        await send({"type": "http.response.body", "body": body})


def _refusal(scope: Scope, *, google: bool) -> str | None:
    client = scope.get("client")
    if not client or not is_loopback_host(str(client[0]).removeprefix("::ffff:")):
        return "Only processes on this machine may ask for tokens.\n"
    flavor = host = None
    for name, value in scope["headers"]:
        if name in _RELAYED:
            return "Requests relayed by a proxy (X-Forwarded-For, Forwarded) are refused.\n"
        if name in _FROM_BROWSER:
            return "Requests from web pages are refused.\n"
        if name == b"host":
            if host is not None:  # two: which one a proxy or the app would read is anybody's guess
                return "A request may carry one Host header.\n"
            host = value.decode("latin-1")
        elif name == b"metadata-flavor":
            flavor = value
    if host is None or not is_loopback_host(_hostname(host)):
        return "The Host header must name this machine's loopback address.\n"
    if google and flavor != b"Google":
        return "Missing required header: Metadata-Flavor: Google\n"
    return None


def _hostname(host: str) -> str:
    return host[1:host.find("]")] if host.startswith("[") else host.partition(":")[0]
