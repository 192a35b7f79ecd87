"""Where tokend listens, found as the tokend command line finds it, and the client key to send it.

The order: an explicit `url`, else `$TOKEND_URL`, else the `[server]` table of the config file (an explicit
`config`, else `$TOKEND_CONFIG`, else `./tokend.toml`, else `/etc/tokend/config.toml`), with the daemon's
own `TOKEND_SERVER__SOCKET`, `__HOST` and `__PORT` overrides, else `http://127.0.0.1:8765`.

A unix socket is written `unix:/run/tokend/tokend.sock` (as `tokend --url` takes it), `unix:///run/...`, or
`http+unix://%2Frun%2Ftokend%2Ftokend.sock` (the percent-encoded path as the host, as requests-unixsocket
and similar libraries write it).
"""

from __future__ import annotations

import ipaddress
import os
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import unquote, urlsplit

from tokend_client._errors import TokendError

__all__ = ["Address", "check_key_destination", "find_address", "find_client_key"]

CONFIG_CANDIDATES = (Path("tokend.toml"), Path("/etc/tokend/config.toml"))
DEFAULT_HOST = "127.0.0.1"
DEFAULT_PORT = 8765


@dataclass(frozen=True)
class Address:
    """How to reach tokend: `host` and `port` over TCP, or `socket`, a unix socket's path.

    `url` is for messages only: `http://127.0.0.1:8765` or `unix:/path`.
    """

    url: str
    host: str = DEFAULT_HOST
    port: int = DEFAULT_PORT
    socket: str | None = None


def find_address(url: str | None = None, config: str | os.PathLike[str] | None = None) -> Address:
    """The daemon's address, by the rules of the module docstring."""
    url = url or os.environ.get("TOKEND_URL")
    if url:
        return _parse_url(url)
    server = _server_table(_find_config(config))
    socket = _configured_socket(server)
    if socket:
        return Address(f"unix:{socket}", socket=str(socket))
    host = str(os.environ.get("TOKEND_SERVER__HOST") or server.get("host", DEFAULT_HOST))
    port = os.environ.get("TOKEND_SERVER__PORT") or server.get("port", DEFAULT_PORT)
    if host in ("0.0.0.0", "::", ""):  # noqa: S104 (tokend listens on every address: reach it on loopback)
        host = DEFAULT_HOST
    return _parse_url(f"http://[{host}]:{port}" if ":" in host else f"http://{host}:{port}")


def check_key_destination(
    address: Address, config: str | os.PathLike[str] | None = None, *, allow_remote: bool = False
) -> None:
    """Refuse to send a client key where it may not be tokend that gets it, as the tokend command does.

    Whatever holds a TCP port gets the key: when the config says tokend listens on a unix socket, a port
    (named by a stale `url` or `$TOKEND_URL`) is someone else's. And tokend serves plain http on loopback:
    a key sent to another host crosses the network readable by anyone on the way, so that needs
    `allow_remote=True` (or `$TOKEND_ALLOW_REMOTE=1`).
    """
    if address.socket is not None:
        return
    if socket := _configured_socket(_server_table(_find_config(config))):
        raise TokendError(
            f"the config says tokend listens on the unix socket {socket}, not at {address.url}: refusing to send "
            "the client key there. Leave out the url and $TOKEND_URL, or name the socket: unix:PATH"
        )
    if not (allow_remote or os.environ.get("TOKEND_ALLOW_REMOTE") == "1" or _is_loopback(address.host)):
        raise TokendError(
            f"{address.url} is not a loopback address: refusing to send the client key over the network in plain "
            "http. If tokend really listens there, pass allow_remote=True (or set TOKEND_ALLOW_REMOTE=1)"
        )


def _configured_socket(server: dict[str, object]) -> str | None:
    socket = os.environ.get("TOKEND_SERVER__SOCKET") or server.get("socket")
    return str(socket) if socket else None


def _is_loopback(host: str) -> bool:
    if host.lower().rstrip(".") == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:  # a name other than localhost: it may resolve anywhere
        return False


def find_client_key(key: str | None = None, key_file: str | os.PathLike[str] | None = None) -> str | None:
    """The client key: `key`, else the file `key_file`, else `$TOKEND_CLIENT_KEY`, else the file named by
    `$TOKEND_CLIENT_KEY_FILE`, else None (tokend has no [clients])."""
    if key is None and key_file is None:
        key = os.environ.get("TOKEND_CLIENT_KEY") or None
        key_file = os.environ.get("TOKEND_CLIENT_KEY_FILE") or None
    if key is None and key_file is not None:
        key = _read_key_file(key_file)
    if key is not None and not (key and key.isascii() and key.isprintable()):
        # No CR or LF (a header injection), nothing a header cannot carry; and the key is not quoted.
        raise TokendError("the client key must be one line of printable ASCII text")
    return key


def _parse_url(url: str) -> Address:
    if url.startswith("unix:"):
        path = url.removeprefix("unix:").removeprefix("//")
        return Address(f"unix:{path}", socket=path)
    parts = urlsplit(url)
    if parts.scheme == "http+unix":
        path = unquote(parts.netloc)
        return Address(f"unix:{path}", socket=path)
    try:
        port = parts.port or 80
    except ValueError:  # not a number, or out of range
        port = 0
    if parts.scheme != "http" or not parts.hostname or not port:
        raise TokendError(f"{url!r} is not an http://, http+unix:// or unix: address of tokend")
    # Shown as scheme, host and port only: a user name or password in the URL must not reach a message.
    shown = f"[{parts.hostname}]" if ":" in parts.hostname else parts.hostname
    return Address(f"http://{shown}:{port}", host=parts.hostname, port=port)


def _find_config(explicit: str | os.PathLike[str] | None) -> Path | None:
    if explicit:
        return Path(explicit)
    if os.environ.get("TOKEND_CONFIG"):
        return Path(os.environ["TOKEND_CONFIG"])
    return next((path for path in CONFIG_CANDIDATES if path.is_file()), None)


def _server_table(config: Path | None) -> dict[str, object]:
    if config is None or not config.is_file():
        return {}
    import tomllib

    try:
        with config.open("rb") as file:
            server = tomllib.load(file).get("server", {})
    except OSError as exc:
        raise TokendError(f"the config file {config} cannot be read ({exc.strerror})") from None
    except tomllib.TOMLDecodeError as exc:
        raise TokendError(f"{config} is not valid TOML: {exc}") from None
    except UnicodeDecodeError as exc:
        raise TokendError(f"{config} is not UTF-8 text (byte {exc.start + 1} is not); TOML files are UTF-8, "
                          "comments included") from None
    except RecursionError:
        raise TokendError(f"{config} nests tables or arrays too deeply to be a tokend config") from None
    return server if isinstance(server, dict) else {}


def _read_key_file(path: str | os.PathLike[str]) -> str:
    try:
        with open(path, encoding="utf-8") as file:
            key = file.read().strip()
    except (OSError, UnicodeDecodeError) as exc:
        reason = exc.strerror if isinstance(exc, OSError) else "not UTF-8 text"
        raise TokendError(f"cannot read the client key file {os.fspath(path)} ({reason})") from None
    if not key:
        raise TokendError(f"the client key file {os.fspath(path)} is empty")
    return key
