"""A Kubernetes API server as far as kubectl's authentication goes: HTTPS with a throwaway CA (trustme),
and every request refused with 401 unless it carries a bearer token the `accepts` callable takes."""

from __future__ import annotations

import json
import ssl
from collections.abc import Callable
from http.server import BaseHTTPRequestHandler

import trustme

from tests.tools import ThreadedHTTPServer


class KubeServer(ThreadedHTTPServer):
    def __init__(self, accepts: Callable[[str], bool]) -> None:
        self.ca = trustme.CA()
        self.tokens: list[str] = []  # every bearer token presented, in order
        context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
        self.ca.issue_cert("127.0.0.1").configure_cert(context)
        super().__init__(lambda request: self._handle(request, accepts), tls=context)
        self.url = f"https://{self.host}"

    def _handle(self, request: BaseHTTPRequestHandler, accepts: Callable[[str], bool]) -> None:
        scheme, _, token = request.headers.get("Authorization", "").partition(" ")
        if scheme.lower() == "bearer" and token:
            self.tokens.append(token)
        if scheme.lower() != "bearer" or not accepts(token):
            status, body = 401, {"kind": "Status", "apiVersion": "v1", "status": "Failure", "reason": "Unauthorized",
                                 "message": "Unauthorized", "code": 401}
        elif request.path.split("?")[0] == "/api":
            status, body = 200, {"kind": "APIVersions", "versions": ["v1"], "serverAddressByClientCIDRs": [
                {"clientCIDR": "0.0.0.0/0", "serverAddress": self.url.removeprefix("https://")}]}
        else:
            status, body = 404, {"kind": "Status", "apiVersion": "v1", "status": "Failure", "reason": "NotFound",
                                 "code": 404}
        data = json.dumps(body).encode()
        request.send_response(status)
        request.send_header("Content-Type", "application/json")
        request.send_header("Content-Length", str(len(data)))
        request.end_headers()
        request.wfile.write(data)
