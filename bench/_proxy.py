"""The proxy's figures for bench/run.py, each against nginx measured in the same run.

    upstream   nginx (Debian's package), one process, answering a small JSON body; also /big, a 1 GiB
               file (sparse, so the disk is not in the way), and /upload, which reads a body and drops it
    reference  a second nginx, one process, as a reverse proxy to the upstream that adds a fixed
               Authorization header, with keep-alive connections to it
    daemon     the real daemon with one static-key provider whose api_url is the upstream, proxy = true

The reference and the daemon run on the measured CPU, the load generator on the other. Without nginx
there is no upstream to proxy to: `measure` says so and the proxy rows read "-".
"""

from __future__ import annotations

import shutil
import subprocess
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import _load
from _procs import HEADER, Helpers, Server, get

from tokend.api.sockets import listen_tcp

PROVIDER = "bench"
JSON_PATH = "/json"
BIG = 1 << 30  # the streamed transfer, each way
CONNECTIONS = 32
BODY = '{"ok": true, "data": [{"id": "f3b2c1d0-5e6f-4a7b-8c9d-0e1f2a3b4c5d", "name": "Demo Travel Ltd"}]}'


@dataclass
class ProxyMeasured:
    skipped: str | None = None  # why there are no figures (nginx missing)
    loads: dict[str, list[dict[str, Any]]] = field(default_factory=dict)  # server -> runs at 32 connections
    single: dict[str, list[dict[str, Any]]] = field(default_factory=dict)  # server -> runs at 1 connection
    stream: dict[str, float] = field(default_factory=dict)


def nginx() -> str | None:
    return shutil.which("nginx") or next((p for p in ("/usr/sbin/nginx",) if Path(p).exists()), None)


def _nginx_config(directory: Path, port: int, body: str) -> str:
    temp = "\n".join(f"  {kind}_temp_path {directory / kind};" for kind in
                     ("client_body", "proxy", "fastcgi", "uwsgi", "scgi"))
    return f"""daemon off;
master_process off;
pid {directory / 'nginx.pid'};
error_log {directory / 'error.log'} warn;
events {{ worker_connections 4096; }}
http {{
  access_log off;
{temp}
  keepalive_requests 10000000;
{body}
}}
"""


def _upstream_config(directory: Path, port: int, big: Path) -> str:
    body = BODY.replace("'", "\\'")
    return _nginx_config(directory, port, f"""  server {{
    listen 127.0.0.1:{port};
    location / {{ default_type application/json; return 200 '{body}'; }}
    location = /big {{ alias {big}; default_type application/octet-stream; }}
    location = /upload {{ client_max_body_size 0; default_type application/json; return 200 '{{"ok": true}}'; }}
  }}""")


def _reference_config(directory: Path, port: int, upstream: int) -> str:
    return _nginx_config(directory, port, f"""  upstream up {{ server 127.0.0.1:{upstream}; keepalive 64; }}
  server {{
    listen 127.0.0.1:{port};
    location / {{
      proxy_pass http://up;
      proxy_http_version 1.1;
      proxy_set_header Connection "";
      proxy_set_header Authorization "Bearer bench-fixed-token";
    }}
  }}""")


def _daemon_config(path: Path, port: int, upstream: int) -> Path:
    path.write_text(f"""[server]
host = "127.0.0.1"
port = {port}

[providers.{PROVIDER}]
kind = "static"
key = {{ file = "{path.with_name('key')}" }}
api_url = "http://127.0.0.1:{upstream}"
proxy = true
""")
    key = path.with_name("key")
    key.touch(mode=0o600)
    key.write_text("bench-static-key-0123456789\n")
    return path


def _start_nginx(helpers: Helpers, name: str, directory: Path, config: str, port: int, cpu: list[str]) -> Server:
    directory.mkdir(parents=True)
    conf = directory / "nginx.conf"
    conf.write_text(config)
    process = helpers.start("nginx", f"--conf={conf}", *cpu, log=name)
    server = Server(name, port, process)
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        try:
            if get(port, "/")[0] in (200, 404):
                return server
        except OSError:
            time.sleep(0.05)
    raise RuntimeError(f"the {name} nginx did not start:\n{helpers.log_tail(name)}")


def _free_port() -> int:
    with listen_tcp("127.0.0.1", 0) as sock:
        return int(sock.getsockname()[1])


def measure(helpers: Helpers, tmp: Path, rounds: int, seconds: float, cpus: Any, force_python: bool,
            start_daemon: Any) -> ProxyMeasured:
    """Req/s and latency through tokend's proxy and through nginx's, then a 1 GiB transfer each way.

    `start_daemon(name, config, sock)` starts the real daemon (run.py's, so that it is started alike)."""
    m = ProxyMeasured()
    binary = nginx()
    if binary is None:
        m.skipped = "nginx is not installed (apt-get install nginx): no proxy figures"
        return m
    big = tmp / "proxy" / "big"
    big.parent.mkdir()
    with big.open("wb") as file:
        file.truncate(BIG)  # sparse: nginx sends it from the page cache of nothing
    upstream_port, reference_port = _free_port(), _free_port()
    upstream = _start_nginx(helpers, "nginx-upstream", tmp / "proxy" / "upstream",
                            _upstream_config(tmp / "proxy" / "upstream", upstream_port, big), upstream_port,
                            cpus.free)
    reference = _start_nginx(helpers, "nginx-reference", tmp / "proxy" / "reference",
                             _reference_config(tmp / "proxy" / "reference", reference_port, upstream_port),
                             reference_port, cpus.measured)
    sock = listen_tcp("127.0.0.1", 0)
    config = _daemon_config(tmp / "proxy" / "tokend.toml", sock.getsockname()[1], upstream_port)
    daemon = start_daemon("proxy-daemon", config, sock)
    urls = {"direct": upstream.url(JSON_PATH), "nginx proxy": reference.url(JSON_PATH),
            "tokend proxy": daemon.url(f"/proxy/{PROVIDER}{JSON_PATH}")}
    if get(daemon.port, f"/proxy/{PROVIDER}{JSON_PATH}")[0] != 200:
        raise RuntimeError(f"the proxy does not answer 200:\n{helpers.log_tail('proxy-daemon')}")
    for connections, into in ((CONNECTIONS, m.loads), (1, m.single)):
        for url in urls.values():  # warm-up: pools, caches
            _load.run(url, connections=connections, seconds=1, headers=[HEADER], force_python=force_python)
        for round_ in range(rounds):
            names = list(urls) if round_ % 2 == 0 else list(urls)[::-1]
            for name in names:
                load = _load.run(urls[name], connections=connections, seconds=seconds, headers=[HEADER],
                                 force_python=force_python)
                into.setdefault(name, []).append(asdict(load))
    m.stream = _stream(daemon, upstream)
    for server in (daemon, reference, upstream):
        helpers.stop(server.process)
    return m


def _stream(daemon: Server, upstream: Server) -> dict[str, float]:
    """1 GiB down and 1 GiB up through the proxy (curl), and the daemon's peak RSS before and after."""
    if not shutil.which("curl"):
        return {}
    before = _peak_rss_mib(daemon.process.pid)
    timings: dict[str, float] = {"rss_peak_before_mib": before}
    for name, server, path in (("direct", upstream, ""), ("proxy", daemon, f"/proxy/{PROVIDER}")):
        started = time.perf_counter()
        _curl("-o", "/dev/null", server.url(f"{path}/big"))
        timings[f"download_{name}_s"] = time.perf_counter() - started
        started = time.perf_counter()
        # From a generator of zeroes rather than a file, so the upload streams (curl sends it chunked).
        _curl("-X", "POST", "-T", "-", "-o", "/dev/null", server.url(f"{path}/upload"), stdin_bytes=BIG)
        timings[f"upload_{name}_s"] = time.perf_counter() - started
    timings["rss_peak_after_mib"] = _peak_rss_mib(daemon.process.pid)
    return timings


def _curl(*args: str, stdin_bytes: int = 0) -> None:
    command = ["curl", "-s", "-f", "-H", HEADER, *args]
    if stdin_bytes:
        zeros = subprocess.Popen(["head", "-c", str(stdin_bytes), "/dev/zero"], stdout=subprocess.PIPE)
        result = subprocess.run(command, stdin=zeros.stdout, capture_output=True, timeout=300, check=False)
        zeros.wait()
    else:
        result = subprocess.run(command, capture_output=True, timeout=300, check=False)
    if result.returncode != 0:
        raise RuntimeError(f"curl {' '.join(args)} failed ({result.returncode}): {result.stderr.decode()[:200]}")


def _peak_rss_mib(pid: int) -> float:
    status = Path(f"/proc/{pid}/status").read_text()
    kib = next(line.split()[1] for line in status.splitlines() if line.startswith("VmHWM:"))
    return int(kib) / 1024
