"""Where the config file is, and where the daemon listens.

Standard library only: the client commands use this, and must start fast: no pydantic, no web framework,
tomllib only when there is a config file to read, and neither dataclasses (it imports inspect, ~8 ms) nor
typing at run time.
"""

from __future__ import annotations

import os
from pathlib import Path

from tokend.errors import ConfigError, TokendError

DEFAULT_HOST = "127.0.0.1"
DEFAULT_PORT = 8765


def config_candidates() -> list[Path]:
    """Where a config file is looked for, in order: ./tokend.toml; the user's own, in
    $XDG_CONFIG_HOME/tokend/config.toml and ~/.config/tokend/config.toml (so that git, Docker and kubectl,
    which start the helpers in their own working directory, find the daemon too); /etc/tokend/config.toml."""
    places = [Path("tokend.toml")]
    if os.environ.get("XDG_CONFIG_HOME"):
        places.append(Path(os.environ["XDG_CONFIG_HOME"], "tokend", "config.toml"))
    home = os.path.expanduser("~")
    if home != "~":  # no $HOME and no password entry: no home to look in
        places.append(Path(home, ".config", "tokend", "config.toml"))
    places.append(Path("/etc/tokend/config.toml"))
    return list(dict.fromkeys(places))


def find_config(explicit: str | None) -> Path | None:
    """`--config`, else $TOKEND_CONFIG, else the first of config_candidates() that exists."""
    if explicit:
        return Path(explicit)
    if os.environ.get("TOKEND_CONFIG"):
        return Path(os.environ["TOKEND_CONFIG"])
    return next((path for path in config_candidates() if path.is_file()), None)


def looked_for_config() -> str:
    """Where find_config() looked, for a message: `./tokend.toml, ~/.config/tokend/config.toml, ...`."""
    home = os.path.expanduser("~")
    shown = [f"./{path}" if not path.is_absolute() else str(path) for path in config_candidates()]
    return ", ".join(f"~{place.removeprefix(home)}" if home != "~" and place.startswith(f"{home}/") else place
                     for place in shown)


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


def daemon_address(url: str | None, config: Path | None, *, plain: bool = False) -> Address:
    """`--url`, else $TOKEND_URL, else the config file's [server] table, else 127.0.0.1:8765. `plain`: for the
    credential helpers, read the table without tomllib where the file allows (_plain_server_table)."""
    url = url or os.environ.get("TOKEND_URL")
    if url:
        if url.startswith("unix:"):
            path = url.removeprefix("unix:").removeprefix("//")
            return Address(f"unix:{path}", path)
        if "://" not in url:  # `--url 127.0.0.1:8765`: the daemon speaks plain http, so say it for the user
            url = f"http://{url}"
        return Address(url.rstrip("/"))
    server = _server_table(config, plain)
    socket = _configured_socket(server)
    if socket:
        return Address(f"unix:{socket}", str(socket))
    host = os.environ.get("TOKEND_SERVER__HOST") or server.get("host", DEFAULT_HOST)
    port = os.environ.get("TOKEND_SERVER__PORT") or server.get("port", DEFAULT_PORT)
    if host in ("0.0.0.0", "::", ""):
        host = DEFAULT_HOST
    host = f"[{host}]" if ":" in str(host) else host
    return Address(f"http://{host}:{port}")


def check_key_destination(address: Address, config: Path | None, *, plain: bool = False) -> None:
    """Refuse to send a client key over TCP when the config says tokend listens on a unix socket.

    Whatever holds a TCP port gets the key: a program that took the port while tokend was down (or one
    never meant to be tokend, named by a stale --url or $TOKEND_URL) would collect it. A unix socket's path
    and file mode say who may be behind it; a port says nothing.
    """
    if address.socket is None and (socket := _configured_socket(_server_table(config, plain))):
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


def _server_table(config: Path | None, plain: bool = False) -> dict[str, object]:
    if config is None or not config.is_file():
        return {}
    try:
        text = config.read_bytes().decode()
    except (OSError, UnicodeDecodeError) as exc:
        raise unreadable_config(config, exc) from None
    server = _plain_server_table(text) if plain else None
    if server is not None:
        return server
    import tomllib

    try:
        server = tomllib.loads(text).get("server", {})
    except (ValueError, RecursionError) as exc:  # TOMLDecodeError is a ValueError
        raise unreadable_config(config, exc) from None
    return server if isinstance(server, dict) else {}


_BARE_KEY = frozenset("ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789_-.")
_ADDRESS_KEYS = ("host", "port", "socket")


def _plain_server_table(text: str) -> dict[str, object] | None:
    """The [server] table's host, port and socket, read line by line; None for tomllib to read the file.

    tomllib (with typing, datetime and its regular expressions) is a fifth of what a credential helper's run
    costs, for three values. This reads only files made of the plainest lines: comments, table headers, and
    `key = value` on one line; where the address keys have a string without escapes or a decimal integer.
    A multi-line string or array, a quoted key, a dotted `server.` key or a [server.x] table, a key given
    twice: tomllib reads the file instead. Other keys' values are not read: a file tomllib would refuse for
    one of them may be read here, and the helper asks the daemon, which runs with the last config it took
    (the commands that change the daemon's config, like `tokend reload`, read the file with tomllib).
    """
    server: dict[str, object] = {}
    table: str | None = None
    tables: set[str] = set()
    for raw in text.split("\n"):
        line = raw.strip(" \t\r")
        if not line or line.startswith("#"):
            continue
        if "'''" in line or '"""' in line:
            return None
        if line.startswith("["):
            header = line.partition("#")[0].rstrip(" \t")
            array = header.startswith("[[")
            name = header.removeprefix("[[" if array else "[").removesuffix("]]" if array else "]").strip(" \t")
            if not header.endswith("]]" if array else "]") or not name or set(name) - _BARE_KEY:
                return None
            if name.startswith("server.") or (name == "server" and array) or (name in tables and not array):
                return None
            tables.add(name)
            table = name
            continue
        key, equals, value = line.partition("=")
        key = key.strip(" \t")
        if not equals or not key or set(key) - _BARE_KEY or (table is None and key.split(".")[0] == "server"):
            return None
        if table == "server" and key in _ADDRESS_KEYS:
            if key in server or (parsed := _plain_value(value.strip(" \t"))) is None:
                return None
            server[key] = parsed
    return server


def _plain_value(text: str) -> object | None:
    """A one-line string with no escape, or a decimal integer, each with an optional comment after it."""
    if text[:1] in ('"', "'"):
        end = text.find(text[0], 1)
        if end < 0 or "\\" in text[:end] or text[end + 1:].strip(" \t")[:1] not in ("", "#"):
            return None
        return text[1:end]
    number = text.partition("#")[0].rstrip(" \t")
    if number.isascii() and number.isdigit() and (number == "0" or not number.startswith("0")):
        return int(number)
    return None


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
