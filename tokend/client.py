"""The client side of the local API, for `tokend get`, `status` and `refresh`.

Standard library only (http.client), so that `tokend get` costs little more than starting Python.
"""

from __future__ import annotations

import http.client
import json
import socket
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlsplit

from tokend.discovery import Address
from tokend.errors import DaemonUnavailable


@dataclass(frozen=True)
class Reply:
    status: int
    body: bytes

    def json(self) -> Any:
        return json.loads(self.body)

    def error_message(self) -> str:
        """The daemon's error sentence, or a description of an unexpected answer."""
        try:
            data = self.json()
        except ValueError:
            return f"the daemon answered {self.status}"
        if isinstance(data, dict) and isinstance(data.get("message"), str):
            return str(data["message"])
        return f"the daemon answered {self.status}"

    @property
    def error_code(self) -> str | None:
        try:
            data = self.json()
        except ValueError:
            return None
        return data.get("error") if isinstance(data, dict) else None


class _UnixConnection(http.client.HTTPConnection):
    def __init__(self, path: str, timeout: float) -> None:
        super().__init__("localhost", timeout=timeout)
        self._path = path

    def connect(self) -> None:
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self.sock.settimeout(self.timeout)
        self.sock.connect(self._path)


class Client:
    def __init__(self, address: Address, *, timeout: float = 15.0) -> None:
        self.address = address
        self._timeout = timeout

    def request(self, method: str, path: str, body: Any = None) -> Reply:
        connection = self._connect()
        headers = {"X-Tokend-Request": "cli", "Accept": "application/json"}
        payload = None
        if body is not None:
            payload, headers["Content-Type"] = json.dumps(body).encode(), "application/json"
        try:
            connection.request(method, path, body=payload, headers=headers)
            response = connection.getresponse()
            return Reply(response.status, response.read())
        except (ConnectionRefusedError, FileNotFoundError):
            raise DaemonUnavailable(
                f"tokend is not running at {self.address.url} (connection refused); start it with `tokend run`"
            ) from None
        except TimeoutError:
            raise DaemonUnavailable(f"tokend at {self.address.url} did not answer in {self._timeout:g}s") from None
        except OSError as exc:
            raise DaemonUnavailable(f"cannot reach tokend at {self.address.url}: {exc.strerror or exc}") from None
        except http.client.HTTPException as exc:
            raise DaemonUnavailable(f"tokend at {self.address.url} answered garbage: {exc}") from None
        finally:
            connection.close()

    def _connect(self) -> http.client.HTTPConnection:
        if self.address.socket is not None:
            return _UnixConnection(self.address.socket, self._timeout)
        parts = urlsplit(self.address.url)
        if parts.scheme != "http" or not parts.hostname:
            raise DaemonUnavailable(f"{self.address.url!r} is not an http:// URL of a tokend daemon")
        return http.client.HTTPConnection(parts.hostname, parts.port or 80, timeout=self._timeout)
