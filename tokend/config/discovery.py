"""Where the config file is, and where the daemon listens.

Standard library only: the client commands use this, and must start fast: no pydantic, no web framework,
tomllib only when there is a config file to read, and neither dataclasses (it imports inspect, ~8 ms) nor
typing at run time.
"""

from __future__ import annotations

import os
from pathlib import Path

from tokend.errors import ConfigError, TokendError

CONFIG_CANDIDATES = (Path("tokend.toml"), Path("/etc/tokend/config.toml"))
DEFAULT_HOST = "127.0.0.1"
DEFAULT_PORT = 8765


def find_config(explicit: str | None) -> Path | None:
    """`--config`, else $TOKEND_CONFIG, else ./tokend.toml, else /etc/tokend/config.toml (if it exists)."""
    if explicit:
        return Path(explicit)
    if os.environ.get("TOKEND_CONFIG"):
        return Path(os.environ["TOKEND_CONFIG"])
    return next((path for path in CONFIG_CANDIDATES if path.is_file()), None)


class Address:
    """How to reach the daemon: a base URL, or a unix socket path (then `url` is only for display)."""

    __slots__ = ("socket", "url")

    def __init__(self, url: str, socket: str | None = None) -> None:
        self.url = url
        self.socket = socket

    def __repr__(self) -> str:
        return f"Address({self.url!r}, socket={self.socket!r})"

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Address) and (self.url, self.socket) == (other.url, other.socket)

    def __hash__(self) -> int:
        return hash((self.url, self.socket))


def daemon_address(url: str | None, config: Path | None) -> Address:
    """`--url`, else $TOKEND_URL, else the config file's [server] table, else 127.0.0.1:8765."""
    url = url or os.environ.get("TOKEND_URL")
    if url:
        if url.startswith("unix:"):
            path = url.removeprefix("unix:").removeprefix("//")
            return Address(f"unix:{path}", path)
        if "://" not in url:  # `--url 127.0.0.1:8765`: the daemon speaks plain http, so say it for the user
            url = f"http://{url}"
        return Address(url.rstrip("/"))
    server = _server_table(config)
    socket = _configured_socket(server)
    if socket:
        return Address(f"unix:{socket}", str(socket))
    host = os.environ.get("TOKEND_SERVER__HOST") or server.get("host", DEFAULT_HOST)
    port = os.environ.get("TOKEND_SERVER__PORT") or server.get("port", DEFAULT_PORT)
    if host in ("0.0.0.0", "::", ""):
        host = DEFAULT_HOST
    host = f"[{host}]" if ":" in str(host) else host
    return Address(f"http://{host}:{port}")


def check_key_destination(address: Address, config: Path | None) -> None:
    """Refuse to send a client key over TCP when the config says tokend listens on a unix socket.

    Whatever holds a TCP port gets the key: a program that took the port while tokend was down (or one
    never meant to be tokend, named by a stale --url or $TOKEND_URL) would collect it. A unix socket's path
    and file mode say who may be behind it; a port says nothing.
    """
    if address.socket is None and (socket := _configured_socket(_server_table(config))):
        raise TokendError(
            f"the config says tokend listens on the unix socket {socket}, not at {address.url}: refusing to send "
            "the client key there. Leave out --url and $TOKEND_URL, or name the socket: --url unix:PATH"
        )


def _configured_socket(server: dict[str, object]) -> str | None:
    socket = os.environ.get("TOKEND_SERVER__SOCKET") or server.get("socket")
    return str(socket) if socket else None


def address_problem(address: Address) -> str | None:
    """Why `address` cannot be a tokend daemon's (a sentence's end), or None when it may be."""
    if address.socket is not None:
        return None if address.socket else "names no socket path"
    from urllib.parse import urlsplit

    parts = urlsplit(address.url)
    try:
        port = parts.port
    except ValueError:
        return "has a port that is not a number from 1 to 65535"
    if parts.scheme != "http":
        return "is not an http:// URL: tokend serves plain http on loopback (or unix:/path for a socket)"
    if not parts.hostname or port == 0:
        return "names no host and port (e.g. http://127.0.0.1:8765)"
    return None


def _server_table(config: Path | None) -> dict[str, object]:
    if config is None or not config.is_file():
        return {}
    import tomllib

    try:
        with config.open("rb") as file:
            server = tomllib.load(file).get("server", {})
    except (OSError, ValueError, RecursionError) as exc:  # TOMLDecodeError and UnicodeDecodeError are ValueErrors
        raise unreadable_config(config, exc) from None
    return server if isinstance(server, dict) else {}


def unreadable_config(path: Path, exc: OSError | ValueError | RecursionError) -> ConfigError:
    """The sentence for a config file that cannot be read as TOML, the same for every command."""
    import tomllib

    if isinstance(exc, UnicodeDecodeError):
        return ConfigError(f"{path} is not UTF-8 text (byte {exc.start + 1} is not); TOML files are UTF-8, "
                           "comments included")
    if isinstance(exc, tomllib.TOMLDecodeError):
        return ConfigError(f"{path} is not valid TOML: {exc}")
    if isinstance(exc, RecursionError):
        return ConfigError(f"{path} nests tables or arrays too deeply to be a tokend config")
    if isinstance(exc, OSError):
        return ConfigError(f"config file {path} cannot be read ({exc.strerror})")
    return ConfigError(f"{path} cannot be read as TOML ({exc})")
