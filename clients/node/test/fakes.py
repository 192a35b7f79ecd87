"""The fake upstreams for the Node client's tests, driven from Node over a small control endpoint.

Run by test/harness.mjs with the Python that has tokend installed. It starts tokend.testing's fakes,
writes a tokend config for them, prints one JSON line (the URLs and the config path) and serves until its
standard input closes. The control server (127.0.0.1, a free port) also plays the API a client calls:

    GET  /counts                      logins and login attempts per fake
    POST /revoke/{fake}               fake.revoke(): every token issued so far is refused from now on
    POST /fail/{fake}?status=&times=  fake.fail(status, times=times): the next logins fail
    ANY  /echo                        a Felloh-protected resource that takes a body: 200 with what it
                                      received, or 401 for a token Felloh never issued or revoked
    ANY  /open-echo                   the same with no check at all: what a client sent, headers too
    ANY  /deny                        401 to every request, whatever the token
    GET  /echo-count                  how many requests /echo and /deny have answered, and how many with 401
"""

from __future__ import annotations

import argparse
import json
import sys
import threading
import urllib.parse
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import ClassVar

from tokend.testing import FakeProviders, FakeUpstream, serve_fakes, write_fake_config


class _Control(BaseHTTPRequestHandler):
    fakes: FakeProviders
    lock: ClassVar[threading.Lock] = threading.Lock()
    echoes: ClassVar[dict[str, int]] = {"total": 0, "unauthorized": 0, "denied": 0}

    def log_message(self, format: str, *args: object) -> None:
        pass  # the test's output is for the test's own lines

    def do_GET(self) -> None:
        path = urllib.parse.urlsplit(self.path).path
        if path == "/counts":
            counts = {name: {"logins": fake.logins, "login_attempts": fake.login_attempts}
                      for name, fake in self._by_name().items()}
            self._send(200, counts)
        elif path == "/echo-count":
            with self.lock:
                self._send(200, dict(self.echoes))
        else:
            self._echo()

    def do_POST(self) -> None:
        parts = urllib.parse.urlsplit(self.path)
        action, _, name = parts.path.strip("/").partition("/")
        fake = self._by_name().get(name)
        if action == "revoke" and fake is not None:
            fake.revoke()
            self._send(200, {})
        elif action == "fail" and fake is not None:
            query = dict(urllib.parse.parse_qsl(parts.query))
            fake.fail(int(query["status"]), times=int(query["times"]) if "times" in query else None)
            self._send(200, {})
        else:
            self._echo()

    do_PUT = do_PATCH = do_DELETE = do_POST

    def _echo(self) -> None:
        parts = urllib.parse.urlsplit(self.path)
        length = int(self.headers.get("content-length") or 0)
        if self.headers.get("transfer-encoding", "").lower() == "chunked":
            body = self._read_chunked()
        else:
            body = self.rfile.read(length)
        if parts.path == "/deny":
            with self.lock:
                self.echoes["denied"] += 1
            self._send(401, {"message": "A valid bearer token is required"})
            return
        if parts.path == "/echo" and not self._authorized():
            self._send(401, {"message": "A valid bearer token is required"})
            return
        self._send(200, {"method": self.command, "body": body.decode("utf-8", "replace"),
                         "query": urllib.parse.parse_qs(parts.query),
                         "headers": {name.lower(): value for name, value in self.headers.items()}})

    def _authorized(self) -> bool:
        scheme, _, token = (self.headers.get("authorization") or "").partition(" ")
        authorized = scheme.lower() == "bearer" and self.fakes.felloh.is_valid(token.strip())
        with self.lock:
            self.echoes["total"] += 1
            self.echoes["unauthorized"] += 0 if authorized else 1
        return authorized

    def _read_chunked(self) -> bytes:
        chunks = []
        while size := int(self.rfile.readline().split(b";")[0].strip() or b"0", 16):
            chunks.append(self.rfile.read(size))
            self.rfile.readline()
        while self.rfile.readline().strip():
            pass
        return b"".join(chunks)

    def _by_name(self) -> dict[str, FakeUpstream]:
        return {"felloh": self.fakes.felloh, "fts": self.fakes.fintech_studios, "flotiq": self.fakes.flotiq}

    def _send(self, status: int, body: object) -> None:
        data = json.dumps(body).encode()
        self.send_response(status)
        self.send_header("content-type", "application/json")
        self.send_header("content-length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)


class _Server(ThreadingHTTPServer):
    request_queue_size = 128  # the tests open 50 connections at once; the default backlog is 5
    daemon_threads = True


def _serve_on_socket(config: Path, socket: str) -> None:
    """Serve on a unix socket instead of the TCP port write_fake_config chose."""
    lines = config.read_text().splitlines()
    lines = [f"socket = {json.dumps(socket)}" if line.startswith("host =") else line
             for line in lines if not line.startswith("port =")]
    config.write_text("\n".join(lines) + "\n")


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--dir", required=True, type=Path)
    parser.add_argument("--port", required=True, type=int)
    parser.add_argument("--lifetime", type=float, default=3600.0)
    parser.add_argument("--socket")
    parser.add_argument("--extra", default="", help="TOML appended to the config, e.g. [clients.*] tables")
    args = parser.parse_args()
    with serve_fakes(lifetime=args.lifetime) as fakes:
        # The tests refuse token after token: tokend logs in for one refused right after another refused
        # one at most once per min_refresh_interval, so a short one keeps the tests fast. The client's own
        # single flight, not this interval, is what keeps a storm of 401s down to one refresh.
        config = write_fake_config(args.dir, fakes, args.port, extra=args.extra, min_refresh_interval=0.05)
        if args.socket:
            _serve_on_socket(config, args.socket)
        _Control.fakes = fakes
        control = _Server(("127.0.0.1", 0), _Control)
        threading.Thread(target=control.serve_forever, daemon=True).start()
        print(json.dumps({"config": str(config), "control_url": f"http://127.0.0.1:{control.server_port}",
                          "felloh_url": fakes.felloh_url, "fts_url": fakes.fintech_studios_url,
                          "flotiq_url": fakes.flotiq_url}), flush=True)
        sys.stdin.read()  # until the test closes the pipe (or dies)
        control.shutdown()


if __name__ == "__main__":
    main()
