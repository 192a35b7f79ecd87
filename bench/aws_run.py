"""AWS figures, each a ratio against a baseline measured in the same run:

    /work/venv/bin/python bench/aws_run.py            # about a minute
    /work/venv/bin/python bench/aws_run.py --seconds 10 --rounds 5

- start-up RSS of a daemon with an AWS provider (aws_assume_role, logged in against the verifying fake STS)
  against the same daemon without it (one static provider in both);
- the container credentials endpoint's ([metadata.aws]) requests/s against GET /token of the same provider;
- the proxy's SigV4-signed requests/s (an AWS provider, aws_service = "dynamodb") against the same daemon's
  proxy adding a static key's header, both to one trivial upstream (a raw ASGI app that answers `{}`: the
  difference is the proxy's own cost, signing included).

All traffic goes to 127.0.0.1; every process started here is stopped on the way out.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import _load
import httpx
from _procs import rss_mib

from tokend.testing import FakeServer, FakeSTS
from tokend.testing.aws import ACCOUNT

ROLE = f"arn:aws:iam::{ACCOUNT}:role/bench"
HEADERS = ["X-Tokend-Request: 1"]
CONNECTIONS = 16
_UPSTREAM = """
import sys, uvicorn
async def app(scope, receive, send):
    if scope["type"] != "http":
        return
    while (await receive()).get("more_body"):
        pass
    await send({"type": "http.response.start", "status": 200, "headers": [(b"content-type", b"application/json"),
               (b"content-length", b"2")]})
    await send({"type": "http.response.body", "body": b"{}"})
uvicorn.run(app, host="127.0.0.1", port=int(sys.argv[1]), log_level="warning", access_log=False)
"""


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port: int = probe.getsockname()[1]
        return port


@contextlib.contextmanager
def process(command: list[str], port: int, ready: str = "/") -> Iterator[subprocess.Popen[bytes]]:
    started = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                               env={**os.environ, "PYTHONUNBUFFERED": "1"})
    try:
        deadline = time.monotonic() + 30
        while True:
            try:
                if httpx.get(f"http://127.0.0.1:{port}{ready}", headers={"X-Tokend-Request": "1"}).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            if time.monotonic() > deadline or started.poll() is not None:
                raise RuntimeError(f"{command[:4]} did not start")
            time.sleep(0.1)
        yield started
    finally:
        started.terminate()
        try:
            started.wait(10)
        except subprocess.TimeoutExpired:
            started.kill()


def daemon(config: str, folder: Path, name: str) -> tuple[list[str], int]:
    port = free_port()
    path = folder / f"{name}.toml"
    path.write_text(f"[server]\nport = {port}\n\n{config}")
    path.chmod(0o600)
    return [sys.executable, "-m", "tokend", "--config", str(path), "run"], port


def settled_rss(pid: int) -> float:
    """The daemon's RSS once start-up is over: the median of five reads, a tenth of a second apart."""
    time.sleep(1.0)
    reads = []
    for _ in range(5):
        reads.append(rss_mib(pid))
        time.sleep(0.1)
    return statistics.median(reads)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seconds", type=float, default=3.0, help="each load run (default 3)")
    parser.add_argument("--rounds", type=int, default=3, help="runs of each load, alternating (default 3)")
    args = parser.parse_args()
    sts = FakeSTS()
    sts.add_role(ROLE)
    key_id, secret = sts.add_user("bench")
    rows: list[tuple[str, str, str, str]] = []
    with tempfile.TemporaryDirectory(prefix="tokend-aws-bench-") as tmp, FakeServer(sts.app) as server:
        folder = Path(tmp)
        upstream_port = free_port()
        upstream = f"http://127.0.0.1:{upstream_port}"
        static = (f'[providers.key]\nkind = "static"\nkey = "bench-static-key-0123456789"\nproxy = true\n'
                  f'api_url = "{upstream}"\n\n')
        aws = (f'[providers.aws]\nkind = "aws_assume_role"\nrole_arn = "{ROLE}"\nsts_url = "{server.url}"\n'
               f'access_key_id = "{key_id}"\nsecret_access_key = "{secret}"\nproxy = true\n'
               f'aws_service = "dynamodb"\napi_url = "{upstream}"\n\n')
        listen = f"127.0.0.1:{free_port()}"
        with process([sys.executable, "-c", _UPSTREAM, str(upstream_port)], upstream_port):
            command, port = daemon(static, folder, "plain")
            with process(command, port, "/readyz") as started:
                plain_rss = settled_rss(started.pid)
            command, port = daemon(static + aws + f'[metadata.aws]\nlisten = "{listen}"\nprovider = "aws"\n',
                                   folder, "aws")
            with process(command, port, "/readyz") as started:
                aws_rss = settled_rss(started.pid)
                base = f"http://127.0.0.1:{port}"
                environment = httpx.get(f"{base}/metadata/environment", headers={"X-Tokend-Request": "1"}).json()
                token = environment["environment"]["AWS_CONTAINER_AUTHORIZATION_TOKEN"]
                loads = {"token": (f"{base}/token/aws", HEADERS), "endpoint": (f"http://{listen}/",
                         [f"Authorization: {token}"]), "unsigned": (f"{base}/proxy/key/", HEADERS),
                         "signed": (f"{base}/proxy/aws/", HEADERS)}
                # Each figure and its baseline in turn, seconds apart, `rounds` times: the median of each.
                measured: dict[str, list[float]] = {name: [] for name in loads}
                for _ in range(args.rounds):
                    for name, (url, headers) in loads.items():
                        measured[name].append(_load.run(url, connections=CONNECTIONS, seconds=args.seconds,
                                                        headers=headers).rps)
    rps = {name: statistics.median(values) for name, values in measured.items()}
    by_token, endpoint, unsigned, signed = (rps[name] for name in ("token", "endpoint", "unsigned", "signed"))
    rows.append(("start-up RSS, MiB: with an AWS provider / without", f"{aws_rss:.1f}", f"{plain_rss:.1f}",
                 f"{aws_rss / plain_rss:.2f}"))
    rows.append(("req/s: [metadata.aws] endpoint / GET /token/aws", f"{endpoint:.0f}", f"{by_token:.0f}",
                 f"{endpoint / by_token:.2f}"))
    rows.append(("req/s: proxy signed (SigV4) / unsigned (static key)", f"{signed:.0f}", f"{unsigned:.0f}",
                 f"{signed / unsigned:.2f}"))
    print(f"load generator: {_load.generator_name()}, {CONNECTIONS} connections, {args.rounds} rounds of "
          f"{args.seconds:g} s each (medians)")
    print(f"{'figure':<56} {'measured':>10} {'baseline':>10} {'ratio':>7}")
    for figure, measured, baseline, ratio in rows:
        print(f"{figure:<56} {measured:>10} {baseline:>10} {ratio:>7}")


if __name__ == "__main__":
    main()
