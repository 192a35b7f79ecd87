"""The processes bench/run.py starts: the fake upstreams, the tokend daemon, and a bare ASGI app.

    python bench/_servers.py fakes --dir DIR --port PORT   # prints the config path, serves until stdin closes
    python bench/_servers.py fleet-fakes --lifetime S --record PATH  # prints URLs and credentials as JSON
    python bench/_servers.py daemon --fd FD --config PATH  # the real daemon, on the inherited socket FD
    python bench/_servers.py bare --fd FD --body-size N --graceful S  # the baseline: uvicorn alone
    python bench/_servers.py nginx --conf PATH             # nginx in the foreground, for the proxy figures

Each runs in its own process, so that the daemon's RSS counts the daemon alone and a server's CPU is its own.
run.py binds the listening sockets and passes them down, so it knows every port before anything starts.
Every role ends when its stdin closes, so a runner killed with SIGKILL leaves nothing behind.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import socket
import sys
import threading
from pathlib import Path
from typing import Any


def main() -> None:
    args = _parser().parse_args()
    if args.cpus:
        os.sched_setaffinity(0, {int(cpu) for cpu in args.cpus.split(",")})
    args.role(args)


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    # Every role takes --cpus: the runner pins itself to one CPU, and a child inherits that unless told.
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("--cpus", help="run on these CPUs, e.g. 0 or 0,1 (default: where run.py runs)")
    roles = parser.add_subparsers(required=True)
    fakes = roles.add_parser("fakes", parents=[common])
    fakes.add_argument("--dir", type=Path, required=True)
    fakes.add_argument("--port", type=int, required=True, help="the daemon's port, for the config file")
    fakes.set_defaults(role=_fakes)
    fleet = roles.add_parser("fleet-fakes", parents=[common])
    fleet.add_argument("--lifetime", type=float, required=True, help="seconds each token lives")
    fleet.add_argument("--record", type=Path, required=True, help="append one line per login here")
    fleet.set_defaults(role=_fleet_fakes)
    daemon = _server_parser(roles, "daemon", _daemon, common)
    daemon.add_argument("--config", type=Path, required=True)
    bare = _server_parser(roles, "bare", _bare, common)
    bare.add_argument("--body-size", type=int, required=True)
    bare.add_argument("--graceful", type=float, required=True, help="tokend.api.server.GRACEFUL_SHUTDOWN")
    nginx = roles.add_parser("nginx", parents=[common])
    nginx.add_argument("--conf", type=Path, required=True)
    nginx.set_defaults(role=_nginx)
    return parser


def _server_parser(roles: Any, name: str, role: Any, common: argparse.ArgumentParser) -> argparse.ArgumentParser:
    server: argparse.ArgumentParser = roles.add_parser(name, parents=[common])
    server.add_argument("--fd", type=int, required=True, help="an inherited, listening TCP socket")
    server.set_defaults(role=role)
    return server


def _fakes(args: argparse.Namespace) -> None:
    from tokend.testing import serve_fakes, write_fake_config

    # A lifetime of an hour: no renewal falls inside a run, so every request takes the same path.
    with serve_fakes(lifetime=3600) as fakes:
        print(write_fake_config(args.dir, fakes, args.port), flush=True)
        sys.stdin.read()  # until run.py closes the pipe or dies


def _fleet_fakes(args: argparse.Namespace) -> None:
    from _fleet import serve_fleet_fakes

    with serve_fleet_fakes(args.lifetime, args.record) as fakes:
        print(json.dumps(fakes), flush=True)
        sys.stdin.read()


def _daemon(args: argparse.Namespace) -> None:
    from tokend.cli.daemon_commands import run_daemon

    _exit_with_stdin()
    # `tokend run --config PATH` once its arguments are read, on the socket run.py bound: the same imports in
    # the same order (which decide the heap the RSS figures read), the audit, the log handler, and
    # SIGHUP and POST /reload reading the file again, as in production.
    run_daemon(args.config, sock=socket.socket(fileno=args.fd))


def _bare(args: argparse.Namespace) -> None:
    # The keyword arguments of tokend.daemon.serve(), so that only the app differs between the two servers,
    # the HTTP protocol with tokend's connection limits included. Of tokend only that module is imported
    # (it imports nothing but uvicorn's protocol): this process's RSS is the floor uvicorn alone sets.
    import uvicorn

    from tokend.api.connections import Budget, limited_protocol

    config = uvicorn.Config(
        _bare_app(_body(args.body_size)),
        proxy_headers=False,
        log_config=None,
        access_log=False,
        lifespan="on",
        ws="none",
        server_header=False,
        timeout_graceful_shutdown=args.graceful,
        http=limited_protocol(Budget.from_limit()),
    )
    _exit_with_stdin()
    uvicorn.Server(config).run(sockets=[socket.socket(fileno=args.fd)])


def _body(size: int) -> bytes:
    """A JSON object of exactly `size` bytes, shaped like a token answer."""
    frame = json.dumps({"provider": "bare", "token": ""}).encode()
    return frame[:-2] + b"x" * (size - len(frame)) + frame[-2:]


def _bare_app(body: bytes) -> Any:
    # The same headers as tokend's fast path sends, so that both servers write the same bytes per answer.
    headers = [
        (b"content-type", b"application/json"),
        (b"cache-control", b"no-store"),
        (b"x-content-type-options", b"nosniff"),
        (b"content-length", str(len(body)).encode()),
    ]
    start = {"type": "http.response.start", "status": 200, "headers": headers}
    answer = {"type": "http.response.body", "body": body}

    async def app(scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] == "lifespan":  # lifespan="on", as tokend has it, wants both answers
            while (await receive())["type"] != "lifespan.shutdown":
                await send({"type": "lifespan.startup.complete"})
            await send({"type": "lifespan.shutdown.complete"})
            return
        await send(start)
        await send(answer)

    return app


def _nginx(args: argparse.Namespace) -> None:
    import subprocess

    from _proxy import nginx

    binary = nginx()
    assert binary is not None
    process = subprocess.Popen([binary, "-p", str(args.conf.parent), "-c", str(args.conf)])
    try:
        sys.stdin.read()  # until run.py closes the pipe or dies
    finally:
        process.terminate()
        process.wait(timeout=5)


def _exit_with_stdin() -> None:
    """Shut uvicorn down gracefully (as Ctrl-C does) once stdin closes: the runner is gone or done."""

    def watch() -> None:
        sys.stdin.read()
        os.kill(os.getpid(), signal.SIGINT)

    threading.Thread(target=watch, daemon=True).start()


if __name__ == "__main__":
    main()
