"""A git server over HTTP for the credential helper tests: `git http-backend` (the CGI program git ships)
behind a small server that lets in only requests whose Basic password the `accepts` callable takes."""

from __future__ import annotations

import base64
import os
import subprocess
from collections.abc import Callable
from http.server import BaseHTTPRequestHandler
from pathlib import Path
from urllib.parse import urlsplit

from tests.tools import ThreadedHTTPServer


class GitServer(ThreadedHTTPServer):
    """Serves the bare repositories under `root` at http://127.0.0.1:PORT/NAME.git."""

    def __init__(self, root: Path, backend: str, accepts: Callable[[str, str], bool]) -> None:
        self.root = root
        self.refused: list[str] = []  # the passwords refused, in order
        self.users: list[str] = []  # the user names of the requests let in
        super().__init__(lambda request: self._handle(request, backend, accepts))
        self.url = f"http://{self.host}"

    def _handle(self, request: BaseHTTPRequestHandler, backend: str, accepts: Callable[[str, str], bool]) -> None:
        user, password = _basic(request.headers.get("Authorization", ""))
        if user is None or not accepts(user, password or ""):
            if password:
                self.refused.append(password)
            request.send_response(401)
            request.send_header("WWW-Authenticate", 'Basic realm="git"')
            request.send_header("Content-Length", "0")
            request.end_headers()
            return
        self.users.append(user)
        parts = urlsplit(request.path)
        body = request.rfile.read(int(request.headers.get("Content-Length") or 0))
        env = {"PATH": os.environ.get("PATH", ""), "GIT_PROJECT_ROOT": str(self.root), "GIT_HTTP_EXPORT_ALL": "1",
               "REQUEST_METHOD": request.command, "PATH_INFO": parts.path, "QUERY_STRING": parts.query,
               "CONTENT_TYPE": request.headers.get("Content-Type", ""), "CONTENT_LENGTH": str(len(body)),
               "REMOTE_USER": user, "REMOTE_ADDR": "127.0.0.1"}
        output = subprocess.run([backend], input=body, env=env, capture_output=True, check=False).stdout
        head, _, content = output.partition(b"\r\n\r\n")
        headers = [line.split(":", 1) for line in head.decode("latin-1").split("\r\n") if ":" in line]
        status = next((int(value.split()[0]) for name, value in headers if name.lower() == "status"), 200)
        request.send_response(status)
        for name, value in headers:
            if name.lower() != "status":
                request.send_header(name, value.strip())
        request.send_header("Content-Length", str(len(content)))
        request.end_headers()
        request.wfile.write(content)


def _basic(header: str) -> tuple[str | None, str | None]:
    scheme, _, encoded = header.partition(" ")
    if scheme.lower() != "basic":
        return None, None
    try:
        user, _, password = base64.b64decode(encoded).decode().partition(":")
    except (ValueError, UnicodeDecodeError):
        return None, None
    return user, password
