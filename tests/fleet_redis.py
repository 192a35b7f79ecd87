"""A real redis-server for the fleet tests: on a free port, in a directory of its own,
started and stopped (or killed, and started again on the same port) by the test."""

from __future__ import annotations

import subprocess
import time
from pathlib import Path

import redis

from tests.daemon import free_port
from tests.tools import DEBIAN, require_tool


class RedisServer:
    def __init__(self, directory: Path, *, tls: tuple[Path, Path, Path] | None = None) -> None:
        """`tls`: (certificate, key, CA) to listen with TLS only."""
        self.directory = directory
        self.directory.mkdir(parents=True, exist_ok=True)
        self.port = free_port()
        self.tls = tls
        self.process: subprocess.Popen[bytes] | None = None
        self.url = f"{'rediss' if tls else 'redis'}://127.0.0.1:{self.port}"

    def start(self) -> RedisServer:
        binary = require_tool("redis-server", f"{DEBIAN} redis-server")
        ports = ["--port", str(self.port)]
        if self.tls is not None:
            cert, key, ca = self.tls
            ports = ["--port", "0", "--tls-port", str(self.port), "--tls-cert-file", str(cert), "--tls-key-file",
                     str(key), "--tls-ca-cert-file", str(ca), "--tls-auth-clients", "no"]
        self.process = subprocess.Popen(
            [binary, *ports, "--bind", "127.0.0.1", "--save", "", "--appendonly", "no", "--dir", str(self.directory),
             "--logfile", str(self.directory / "redis.log")],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
        )
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline:
            try:
                if self.client().ping():
                    return self
            except redis.RedisError:
                time.sleep(0.05)
        raise AssertionError(f"redis-server did not start on {self.port}")

    def client(self) -> redis.Redis:
        options: dict[str, object] = {"socket_timeout": 2, "decode_responses": True}
        if self.tls is not None:
            options["ssl_ca_certs"] = str(self.tls[2])
        return redis.Redis.from_url(self.url, **options)  # type: ignore[arg-type]

    def kill(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.kill()
            self.process.wait(timeout=10)

    def everything(self) -> dict[str, str]:
        """Every key and its value (strings as they are, hashes and others as their printed contents)."""
        client = self.client()
        out = {}
        for key in client.scan_iter("*"):
            kind = client.type(key)
            if kind == "string":
                out[key] = str(client.get(key))
            elif kind == "hash":
                out[key] = repr(client.hgetall(key))
            else:
                out[key] = kind
        return out

    def commands_processed(self) -> int:
        return int(self.client().info("stats")["total_commands_processed"])
