"""tokend's benchmark: one table of figures, each against a baseline measured in the same run.

    /work/venv/bin/python bench/run.py           # about 4 minutes
    /work/venv/bin/python bench/run.py --quick   # about two minutes

The machine is shared and noisy, so each figure is read against a baseline measured seconds away from it:
the daemon's req/s against a bare ASGI app under the same uvicorn set-up, `tokend get` against
`python -c pass`, the daemon's memory against the bare app's, a 1,000-provider daemon against the
3-provider one, logins against what the renewal policy makes ideal. bench/README.md says how to read it.
All traffic goes to 127.0.0.1; every process started here is stopped on the way out, whatever happens.

The run has two phases. While it is quiet (nothing else running but idle fakes): the req/s rounds,
memory, the CLI timings, then the 1,000-provider daemon's start. Then, for `upstream_seconds`, two daemons
with 8-second tokens, one under a saturating client load and one with none, side by side; the
1,000-provider daemon idles and then renews meanwhile, its logins per second counted to the end.
"""

from __future__ import annotations

import argparse
import itertools
import json
import os
import platform
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from collections import Counter
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from types import FrameType
from typing import Any

import _fleet
import _load
import _proxy
from _procs import HEADER, CpuSampler, Helpers, Server, get, wait_until_ok

import tokend
from tokend.api.server import GRACEFUL_SHUTDOWN
from tokend.api.sockets import listen_tcp
from tokend.renewal.policy import RENEW_JITTER

ROOT = Path(__file__).resolve().parent.parent
RESULTS = Path(__file__).with_name("results") / "latest.json"

PROVIDER = "felloh"  # a 128-character bearer token with an expiry: the common case
HELPER_SETTINGS = ('git_hosts = ["git.example.com"]\ngit_username = "bench"\n'
                   'docker_registries = ["registry.example.com"]\nregistry_username = "bench"\n')
GIT_ASKS = "protocol=https\nhost=git.example.com\n\n"
# Each credential helper, as git, Docker and kubectl start it, against `python -c pass`: they run one per
# fetch, pull or command. Found as ./tokend.toml, as the helpers are.
HELPERS = {
    "tokend git-credential get": (("tokend", "git-credential", "get"), GIT_ASKS),
    "git-credential-tokend get": (("git-credential-tokend", "get"), GIT_ASKS),
    "docker-credential-tokend get": (("docker-credential-tokend", "get"), "registry.example.com"),
    "tokend kube-credential": (("tokend", "kube-credential", PROVIDER), ""),
}
TOKEN_PATH = f"/token/{PROVIDER}"
CONNECTIONS = 32
GROWTH_TOLERANCE_MIB = 1.0  # allocator noise; a real per-request leak over 100k+ requests is far larger
FURTHER_REQUESTS = 100_000  # the memory-growth run: at least this many requests

SCALE_PROVIDERS = 1000
SCALE_LIFETIME = 60.0  # short: three waves of renewals fall inside a full run, the first in a quick one
SCALE_READY_TIMEOUT = 20.0  # four times the target: long enough to tell slow from stuck
IDLE_WINDOW_MIN = 5.0  # the shortest stretch with no login that idle CPU is read over
UPSTREAM_LIFETIME = 8.0
UPSTREAM_PER_KIND = 5  # providers of each kind that logs in, in each of the two daemons
B_FIRST_INDEX = 10_000  # the loaded daemon's providers, at the fakes both share


@dataclass(frozen=True)
class Plan:
    load_seconds: float  # one measured load run
    warmup_seconds: float  # one unmeasured run per server first: imports, caches and pools settle
    rounds: int  # measured runs per server, taken in turns
    cli_runs: int  # timed runs of each command
    upstream_seconds: float  # the side-by-side run of the loaded and the idle 8-second-token daemons


PLANS = {"full": Plan(5, 1, 2, 15, 120), "quick": Plan(3, 1, 1, 10, 30)}


@dataclass
class Measured:
    loads: dict[str, list[_load.Load]] = field(default_factory=dict)  # the measured req/s runs of each server
    rss_mib: dict[str, float] = field(default_factory=dict)
    requests: dict[str, int] = field(default_factory=dict)  # the daemon's answered requests at each RSS reading
    cli_ms: dict[str, list[float]] = field(default_factory=dict)
    body_bytes: int = 0
    ready_s: dict[str, float | None] = field(default_factory=dict)  # process start to /readyz 200
    idle_cpu_percent: dict[str, float | None] = field(default_factory=dict)
    scale: dict[str, Any] = field(default_factory=dict)
    upstream: dict[str, Any] = field(default_factory=dict)
    proxy: _proxy.ProxyMeasured = field(default_factory=_proxy.ProxyMeasured)


# --- starting the servers ---------------------------------------------------------------------------------


def _spawn_daemon(helpers: Helpers, name: str, config: Path, sock: Any, cpu: list[str]) -> Server:
    """The real daemon, serving on `sock` (made by tokend's own listen_tcp, so it is the socket `tokend run`
    would make: backlog, TCP_NODELAY), bound here first so that the config can name its port."""
    with sock:
        process = helpers.start("daemon", f"--fd={sock.fileno()}", f"--config={config}", *cpu, log=name,
                                fds=(sock.fileno(),))
        return Server(name, sock.getsockname()[1], process)


def _ready(helpers: Helpers, daemon: Server, timeout: float = 30.0, every: float = 0.05) -> float:
    """Seconds from the daemon's process start until /readyz answers 200 (every provider holds a token)."""
    ready = wait_until_ok(helpers, daemon, "/readyz", timeout=timeout, every=every)
    if ready is None:
        raise RuntimeError(f"the {daemon.name} was not ready in {timeout:g}s:\n{helpers.log_tail(daemon.name)}")
    return ready


def _start_main_daemon(helpers: Helpers, tmp: Path, cpus: Cpus) -> tuple[Server, float, Path]:
    sock = listen_tcp("127.0.0.1", 0)
    fakes = helpers.start("fakes", f"--dir={tmp}", f"--port={sock.getsockname()[1]}", *cpus.free)
    config = Path(helpers.first_line(fakes, "fakes"))
    header = f"[providers.{PROVIDER}]\n"  # what the credential helpers' rows ask for
    config.write_text(config.read_text().replace(header, f"{header}{HELPER_SETTINGS}", 1))
    daemon = _spawn_daemon(helpers, "daemon", config, sock, cpus.measured)
    return daemon, _ready(helpers, daemon), config


def _start_bare(helpers: Helpers, body_size: int, cpu: list[str]) -> Server:
    with listen_tcp("127.0.0.1", 0) as sock:
        process = helpers.start("bare", f"--fd={sock.fileno()}", f"--body-size={body_size}",
                                f"--graceful={GRACEFUL_SHUTDOWN}", *cpu, fds=(sock.fileno(),))
        bare = Server("bare", sock.getsockname()[1], process)
    if wait_until_ok(helpers, bare, TOKEN_PATH) is None:
        raise RuntimeError(f"the bare app did not start:\n{helpers.log_tail('bare')}")
    return bare


def _start_fleet_fakes(helpers: Helpers, name: str, lifetime: float, record: Path, cpus: Cpus) -> dict[str, Any]:
    process = helpers.start("fleet-fakes", f"--lifetime={lifetime}", f"--record={record}", *cpus.free, log=name)
    fakes: dict[str, Any] = json.loads(helpers.first_line(process, name))
    return fakes


@dataclass(frozen=True)
class Cpus:
    measured: list[str]  # the helper argument that pins a measured server to its CPU
    free: list[str]  # the one for every other helper: all the CPUs, not only the runner's
    text: str


def _pin_cpus() -> Cpus:
    """The measured servers on one CPU, this runner (so the load generator and the CLI runs) on another."""
    cpus = sorted(os.sched_getaffinity(0))
    free = [f"--cpus={','.join(map(str, cpus))}"]
    if len(cpus) < 2:
        return Cpus([], free, "not pinned (one CPU)")
    os.sched_setaffinity(0, {cpus[1]})
    return Cpus([f"--cpus={cpus[0]}"], free,
                f"measured servers on CPU {cpus[0]}, load generator and CLI runs on CPU {cpus[1]}")


# --- phase 1, quiet: req/s, memory, the CLI, the 1,000-provider start ----------------------------------------


def _load_server(server: Server, seconds: float, force_python: bool) -> _load.Load:
    load = _load.run(server.url(TOKEN_PATH), connections=CONNECTIONS, seconds=seconds, headers=[HEADER],
                     force_python=force_python)
    server.requests += load.requests
    server.seconds += load.seconds
    return load


def _rps_rounds(servers: list[Server], plan: Plan, force_python: bool) -> dict[str, list[_load.Load]]:
    for server in servers:
        _load_server(server, plan.warmup_seconds, force_python)
    loads: dict[str, list[_load.Load]] = {server.name: [] for server in servers}
    for round_ in range(plan.rounds):
        # A B, B A, A B...: a slow spell on the shared machine lands on both servers alike.
        for server in servers if round_ % 2 == 0 else servers[::-1]:
            loads[server.name].append(_load_server(server, plan.load_seconds, force_python))
    return loads


def _further_requests(daemon: Server, force_python: bool) -> None:
    """At least FURTHER_REQUESTS more requests, however fast the daemon is today."""
    before = daemon.requests
    rate = daemon.requests / daemon.seconds
    while daemon.requests - before < FURTHER_REQUESTS:
        _load_server(daemon, max(1.0, (FURTHER_REQUESTS - (daemon.requests - before)) / rate * 1.2), force_python)


def _script(name: str) -> list[str]:
    """The installed console script `name`, or what it runs (an install older than the script)."""
    script = Path(sys.executable).with_name(name)
    if script.exists():
        return [str(script)]
    import tomllib

    module, function = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["scripts"][name].split(":")
    return [sys.executable, "-c", f"import sys; from {module} import {function}; sys.exit({function}())"]


def _cli_commands(daemon: Server, cwd: Path) -> dict[str, tuple[list[str], dict[str, str]]]:
    """What is timed, each with its environment: no TOKEND_* from the caller's shell, and bytecode cached
    (in a directory of this run) as an installed package has it, except where the name says otherwise."""
    tokend_get = _script("tokend")
    base = {k: v for k, v in os.environ.items() if not k.startswith("TOKEND_") and k != "PYTHONDONTWRITEBYTECODE"}
    cached = {**base, "PYTHONPYCACHEPREFIX": str(cwd / "pycache")}
    commands = {
        "tokend get --url": ([*tokend_get, "get", PROVIDER, "--url", daemon.url("")], cached),
        "tokend get (./tokend.toml)": ([*tokend_get, "get", PROVIDER], cached),
        "python -c pass": ([sys.executable, "-c", "pass"], cached),
        "tokend get --url, no .pyc": ([*tokend_get, "get", PROVIDER, "--url", daemon.url("")],
                                      {**base, "PYTHONDONTWRITEBYTECODE": "1"}),
    }
    for name, ((program, *args), _) in HELPERS.items():
        commands[name] = ([*_script(program), *args], cached)
    if shutil.which("curl"):
        commands["curl"] = (["curl", "-s", "-f", "-H", HEADER, daemon.url(TOKEN_PATH)], base)
    return commands


def _time_cli(daemon: Server, config: Path, runs: int, cwd: Path) -> dict[str, list[float]]:
    cwd.mkdir()
    (cwd / "tokend.toml").write_text(config.read_text())  # found as ./tokend.toml: its [server] table only
    commands = _cli_commands(daemon, cwd)
    samples: dict[str, list[float]] = {name: [] for name in commands}
    for round_ in range(runs + 1):
        for name, (command, env) in commands.items():  # in turns, so a noisy second hits them all alike
            started = time.perf_counter()
            result = subprocess.run(command, cwd=cwd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                                    input=HELPERS.get(name, ((), ""))[1], text=True, check=False, timeout=30)
            elapsed_ms = (time.perf_counter() - started) * 1000
            if result.returncode != 0:
                raise RuntimeError(f"{name} exited with {result.returncode}: {result.stderr.strip()}")
            if round_:  # the first round only warms the page cache and writes the bytecode
                samples[name].append(elapsed_ms)
    return samples


@dataclass
class _Fleet:
    """A daemon of many providers, its fakes' login record, and when it started (Unix time)."""

    daemon: Server
    providers: list[_fleet.Provider]
    record: Path
    started_at: float
    ready_at: float
    cpu: CpuSampler  # its CPU time from the moment it was ready


def _start_scale(helpers: Helpers, tmp: Path, cpus: Cpus, m: Measured) -> _Fleet | None:
    """The 1,000-provider daemon: time to ready and memory; its CPU is sampled from then on.

    One that is not ready within SCALE_READY_TIMEOUT is stopped there, so that it cannot disturb the
    measurements that follow; its remaining rows then read "-".
    """
    record = tmp / "scale-logins.txt"
    fakes = _start_fleet_fakes(helpers, "scale-fakes", SCALE_LIFETIME, record, cpus)
    sock = listen_tcp("127.0.0.1", 0)
    config, providers = _fleet.write_fleet_config(tmp / "scale", fakes, _fleet.mix(SCALE_PROVIDERS),
                                                  port=sock.getsockname()[1])
    started_at = time.time()
    daemon = _spawn_daemon(helpers, "scale", config, sock, cpus.free)
    # Polled every 0.1 s: with 1,000 providers /readyz is a sizeable answer, and must not slow the start.
    m.ready_s["scale"] = wait_until_ok(helpers, daemon, "/readyz", timeout=SCALE_READY_TIMEOUT, every=0.1)
    m.rss_mib["scale when ready"] = daemon.rss_mib()
    m.scale.update(providers=len(providers), lifetime=SCALE_LIFETIME,
                   providers_logging_in=sum(p.kind in _fleet.LOGIN_KINDS for p in providers))
    if m.ready_s["scale"] is None:
        states = json.loads(get(daemon.port, "/readyz")[1])["providers"]
        m.scale["states_at_timeout"] = dict(Counter(states.values()))
        m.scale["cpu_seconds_at_timeout"] = daemon.cpu_seconds()
        helpers.stop(daemon.process)
        m.scale["logins_at_fakes"] = len(_fleet.read_logins(record))
        return None
    return _Fleet(daemon, providers, record, started_at, time.time(), CpuSampler(daemon.process.pid))


def _quiet_phase(helpers: Helpers, tmp: Path, plan: Plan, cpus: Cpus, force_python: bool,
                 m: Measured) -> _Fleet | None:
    daemon, m.ready_s["daemon"], config = _start_main_daemon(helpers, tmp, cpus)
    m.rss_mib["daemon at start"] = daemon.rss_mib()
    m.body_bytes = len(get(daemon.port, TOKEN_PATH)[1])
    bare = _start_bare(helpers, m.body_bytes, cpus.measured)
    m.rss_mib["bare at start"] = bare.rss_mib()
    m.loads = _rps_rounds([bare, daemon], plan, force_python)
    m.rss_mib["bare after load"] = bare.rss_mib()
    helpers.stop(bare.process)
    m.requests["N"] = daemon.requests
    m.rss_mib["daemon after N"] = daemon.rss_mib()
    _further_requests(daemon, force_python)
    m.requests["N+M"] = daemon.requests
    m.rss_mib["daemon after N+M"] = daemon.rss_mib()
    m.cli_ms = _time_cli(daemon, config, plan.cli_runs, tmp / "cli")

    # Last, so that nothing of it runs beside the figures above. The 3-provider daemon idles while the
    # 1,000-provider one starts: its CPU meanwhile is the idle baseline.
    before, wall = daemon.cpu_seconds(), time.monotonic()
    scale = _start_scale(helpers, tmp, cpus, m)
    m.idle_cpu_percent["daemon"] = 100 * (daemon.cpu_seconds() - before) / (time.monotonic() - wall)
    helpers.stop(daemon.process)
    return scale


def _proxy_phase(helpers: Helpers, tmp: Path, plan: Plan, cpus: Cpus, force_python: bool) -> _proxy.ProxyMeasured:
    """The proxy against nginx (bench/_proxy.py), while nothing else runs."""

    def start_daemon(name: str, config: Path, sock: Any) -> Server:
        daemon = _spawn_daemon(helpers, name, config, sock, cpus.measured)
        _ready(helpers, daemon)
        return daemon

    return _proxy.measure(helpers, tmp, max(plan.rounds, 2), plan.load_seconds, cpus, force_python, start_daemon)


# --- phase 2: logins under client load, and the 1,000 providers' renewals --------------------------------------


def _upstream_phase(helpers: Helpers, tmp: Path, plan: Plan, cpus: Cpus, force_python: bool,
                    m: Measured) -> None:
    """Two daemons with 8-second tokens side by side, one loaded flat out, one left alone; their logins in
    the same window, counted at the fakes."""
    record = tmp / "upstream-logins.txt"
    fakes = m.upstream.pop("fakes")
    kinds = _fleet.mix(UPSTREAM_PER_KIND * len(_fleet.LOGIN_KINDS), _fleet.LOGIN_KINDS, (1,) * len(_fleet.LOGIN_KINDS))
    daemons: dict[str, tuple[Server, list[_fleet.Provider]]] = {}
    for name, first_index, pin in (("idle", 0, cpus.free), ("loaded", B_FIRST_INDEX, cpus.measured)):
        sock = listen_tcp("127.0.0.1", 0)
        config, providers = _fleet.write_fleet_config(tmp / f"upstream-{name}", fakes, kinds,
                                                      port=sock.getsockname()[1], first_index=first_index)
        daemons[name] = (_spawn_daemon(helpers, f"upstream-{name}", config, sock, pin), providers)
    for daemon, _ in daemons.values():
        _ready(helpers, daemon)
    loaded, loaded_providers = daemons["loaded"]
    window_start = time.time()
    load = _load.run(loaded.url(""), connections=CONNECTIONS, seconds=plan.upstream_seconds, headers=[HEADER],
                     force_python=force_python, paths=[f"/token/{p.name}" for p in loaded_providers],
                     allow_errors=True)
    window_end = time.time()
    for daemon, _ in daemons.values():
        helpers.stop(daemon.process)
    logins = _fleet.logins_by_provider(_fleet.read_logins(record))
    m.upstream = {"window": [window_start, window_end], "load": asdict(load)}
    for name, (_, providers) in daemons.items():
        m.upstream[name] = _logins_per_provider(providers, logins, window_end - window_start)


def _idle_window(logins: list[_fleet.Login], start: float, end: float) -> tuple[float, float]:
    """The longest stretch between `start` and `end` in which no login reached the fakes, less half a
    second at each end (a login's own work on either side of its arrival)."""
    times = sorted(login.at for login in logins if start <= login.at <= end)
    edges = [start, *times, end]
    before, after = max(itertools.pairwise(edges), key=lambda gap: gap[1] - gap[0])
    return (before + 0.5 if before != start else before), (after - 0.5 if after != end else after)


def _logins_per_provider(providers: list[_fleet.Provider], logins: dict[int, list[float]],
                         seconds: float) -> dict[str, Any]:
    """Each provider's logins over `seconds`, from its mean time between two logins.

    Not a count inside the window: every provider logged in at the same moment, just before it opened, so a
    count would come out about half a login short of the rate (the window starts right after a login).
    """
    intervals = {p.name: _mean_interval(logins.get(p.index, [])) for p in providers}
    ideal = {p.name: _fleet.mean_renewal_interval(p.kind, UPSTREAM_LIFETIME) for p in providers}
    per_provider = {name: seconds / interval if interval else 0.0 for name, interval in intervals.items()}
    return {"mean_interval_s": intervals, "ideal_interval_s": ideal, "per_provider": per_provider,
            "logins": {p.name: len(logins.get(p.index, [])) for p in providers},
            "mean": statistics.fmean(per_provider.values()),
            "ideal_mean": statistics.fmean(seconds / interval for interval in ideal.values())}


def _mean_interval(times: list[float]) -> float | None:
    return (times[-1] - times[0]) / (len(times) - 1) if len(times) >= 2 else None


def _scale_results(helpers: Helpers, scale: _Fleet, m: Measured) -> None:
    status = get(scale.daemon.port, "/status")[1]
    providers = json.loads(status)["providers"]
    scale.cpu.stop()
    helpers.stop(scale.daemon.process)
    logins = _fleet.read_logins(scale.record)
    # From the moment every provider held a token: the first logins before it are the start's, and the
    # readiness row's business; after it, every login is a renewal (or a retry).
    per_second = _fleet.logins_per_second(logins, since=scale.ready_at)
    window = _idle_window(logins, scale.ready_at + 1.0, time.time())
    m.idle_cpu_percent["scale"] = scale.cpu.percent(*window) if window[1] - window[0] >= IDLE_WINDOW_MIN else None
    m.scale["idle_window"] = {"from_s": window[0] - scale.started_at, "to_s": window[1] - scale.started_at}
    peak_second, peak = max(per_second.items(), key=lambda item: item[1], default=(scale.started_at, 0))
    m.scale.update({
        "seconds_observed": time.time() - scale.started_at,
        "logins_at_fakes": len(logins),
        "failed_at_fakes": sum(login.status != 200 for login in logins),
        "failed_in_daemon": sum(p["logins"]["failed"] for p in providers.values()),
        "logins_after_ready": sum(per_second.values()),
        "peak_logins_per_second": peak,
        "peak_second_after_start": peak_second - scale.started_at,
        "logins_per_second_after_start": {str(int(second - scale.started_at)): n
                                          for second, n in sorted(per_second.items())},
    })


def _measure(helpers: Helpers, tmp: Path, plan: Plan, cpus: Cpus, force_python: bool) -> Measured:
    m = Measured()
    # Started first, as they idle until phase 2: so that their start does not fall in the quiet phase.
    m.upstream["fakes"] = _start_fleet_fakes(helpers, "upstream-fakes", UPSTREAM_LIFETIME,
                                             tmp / "upstream-logins.txt", cpus)
    m.proxy = _proxy_phase(helpers, tmp, plan, cpus, force_python)
    scale = _quiet_phase(helpers, tmp, plan, cpus, force_python, m)
    _upstream_phase(helpers, tmp, plan, cpus, force_python, m)
    if scale is not None:
        _scale_results(helpers, scale, m)
    return m


# --- the report ----------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Target:
    on: str  # "value", "ratio" (value / baseline) or "growth" (value - baseline)
    op: str  # "<=", "<" or ">="
    limit: float

    def met(self, row: Row) -> bool:
        if row.value is None:
            return False
        x = {"value": row.value, "ratio": row.ratio, "growth": row.value - (row.baseline or 0.0)}[self.on]
        if x is None:
            return False
        return {"<=": x <= self.limit, "<": x < self.limit, ">=": x >= self.limit}[self.op]

    def __str__(self) -> str:
        return f"{self.on}{self.op}{self.limit:g}"


@dataclass(frozen=True)
class Row:
    metric: str
    unit: str
    value: float | None
    baseline: float | None
    baseline_name: str = ""
    targets: tuple[Target, ...] = ()

    @property
    def ratio(self) -> float | None:
        return self.value / self.baseline if self.value is not None and self.baseline else None

    def verdict(self) -> str:
        if not self.targets:
            return "-"
        return "PASS" if all(target.met(self) for target in self.targets) else "FAIL"

    def target_text(self) -> str:
        return " & ".join(map(str, self.targets)) or "-"


def _within(share: float) -> tuple[Target, Target]:
    return Target("ratio", ">=", 1 - share), Target("ratio", "<=", 1 + share)


def _rows(m: Measured) -> list[Row]:
    return [*_http_rows(m), *_proxy_rows(m), *_cli_rows(m), *_memory_rows(m), *_scale_rows(m), *_upstream_rows(m)]


def _http_rows(m: Measured) -> list[Row]:
    # Each server's best round, and that round's p99: noise on a shared machine only ever slows a run
    # down, so the fastest run is the closest to what the server can do.
    best = {server: max(loads, key=lambda load: load.rps) for server, loads in m.loads.items()}
    return [
        Row(f"GET {TOKEN_PATH} req/s", "req/s", best["daemon"].rps, best["bare"].rps, "bare ASGI app",
            (Target("ratio", ">=", 0.85),)),
        Row(f"p99 latency at {CONNECTIONS} conns", "ms", best["daemon"].p99_ms, best["bare"].p99_ms, "bare ASGI app",
            (Target("value", "<", 2),)),
    ]


def _proxy_rows(m: Measured) -> list[Row]:
    """tokend's proxy against nginx as a proxy, and the latency each adds over calling the upstream directly."""
    p = m.proxy
    best = {name: max(loads, key=lambda load: load["rps"]) for name, loads in p.loads.items()}
    # The lowest p50 of the rounds: on a shared machine the quietest round is the truest.
    p50 = {name: min(load["p50_ms"] for load in loads) for name, loads in p.single.items()}

    def pick(table: dict[str, Any], name: str, key: str | None = None) -> float | None:
        value = table.get(name)
        return value if key is None or value is None else value[key]

    def added(name: str) -> float | None:
        return p50[name] - p50["direct"] if name in p50 and "direct" in p50 else None

    s = p.stream
    growth = (s["rss_peak_after_mib"], s["rss_peak_before_mib"]) if s else (None, None)
    return [
        Row(f"proxy req/s at {CONNECTIONS} conns", "req/s", pick(best, "tokend proxy", "rps"),
            pick(best, "nginx proxy", "rps"), "nginx proxy", (Target("ratio", ">=", 0.3),)),
        Row(f"proxy p99 at {CONNECTIONS} conns", "ms", pick(best, "tokend proxy", "p99_ms"),
            pick(best, "nginx proxy", "p99_ms"), "nginx proxy", (Target("ratio", "<=", 2),)),
        Row("proxy p50 added over direct, 1 conn", "ms", added("tokend proxy"), added("nginx proxy"),
            "nginx proxy's", (Target("value", "<=", 0.15),)),
        Row(f"proxy peak RSS, {_proxy.BIG >> 30} GiB down + up", "MiB", growth[0], growth[1], "peak before",
            (Target("growth", "<", 16),)),
        Row(f"proxy {_proxy.BIG >> 30} GiB download", "s", s.get("download_proxy_s"), s.get("download_direct_s"),
            "direct from nginx", (Target("ratio", "<=", 1.5),)),
        Row(f"proxy {_proxy.BIG >> 30} GiB upload", "s", s.get("upload_proxy_s"), s.get("upload_direct_s"),
            "direct to nginx", (Target("ratio", "<=", 1.5),)),
    ]


def _cli_rows(m: Measured) -> list[Row]:
    cli = {name: statistics.median(samples) for name, samples in m.cli_ms.items()}
    rows = [
        Row("tokend get --url URL", "ms", cli["tokend get --url"], cli["python -c pass"], "python -c pass",
            (Target("ratio", "<=", 2),)),
        Row("tokend get (./tokend.toml)", "ms", cli["tokend get (./tokend.toml)"], cli["python -c pass"],
            "python -c pass", (Target("ratio", "<=", 1.5),)),
        Row("tokend get --url, no .pyc", "ms", cli["tokend get --url, no .pyc"], cli["python -c pass"],
            "python -c pass"),
    ]
    for name in HELPERS:
        rows.append(Row(name, "ms", cli[name], cli["python -c pass"], "python -c pass", (Target("ratio", "<=", 1.5),)))
    if "curl" in cli:
        rows.append(Row("tokend get --url URL", "ms", cli["tokend get --url"], cli["curl"], "curl"))
    return rows


def _memory_rows(m: Measured) -> list[Row]:
    rss, limit = m.rss_mib, Target("value", "<=", 60)
    n, more = _count(m.requests["N"]), _count(m.requests["N+M"] - m.requests["N"])
    return [
        Row("RSS at start, 3 providers", "MiB", rss["daemon at start"], rss["bare at start"], "bare at start",
            (limit,)),
        Row(f"RSS after {n} req", "MiB", rss["daemon after N"], rss["bare after load"], "bare after its load",
            (limit,)),
        Row(f"RSS after {more} more req", "MiB", rss["daemon after N+M"], rss["daemon after N"], f"after {n}",
            (limit, Target("growth", "<=", GROWTH_TOLERANCE_MIB))),
    ]


def _scale_rows(m: Measured) -> list[Row]:
    s, providers = m.scale, f"{SCALE_PROVIDERS:,} providers"
    peak = s["peak_logins_per_second"] / s["providers"] * 100 if "peak_logins_per_second" in s else None
    # The policy's jitter alone spreads a wave of renewals begun together over 2 * RENEW_JITTER of the
    # lifetime: the peak it would give, evenly spread, as a share of the providers.
    even = s["providers_logging_in"] / (2 * RENEW_JITTER * SCALE_LIFETIME) / s["providers"] * 100
    return [
        Row(f"{providers}: process start to ready", "s", m.ready_s["scale"], m.ready_s["daemon"], "3 providers",
            (Target("value", "<=", 5),)),
        Row(f"{providers}: RSS when ready", "MiB", m.rss_mib["scale when ready"], m.rss_mib["daemon at start"],
            "3 providers", (Target("value", "<=", 150),)),
        # .get: a 1,000-provider daemon not ready in time was stopped, and has no idle CPU to show.
        Row(f"{providers}: idle CPU", "%", m.idle_cpu_percent.get("scale"), m.idle_cpu_percent.get("daemon"),
            "3 providers", (Target("value", "<", 1),)),
        Row(f"{providers}, {SCALE_LIFETIME:g} s tokens: most logins in 1 s", "%", peak, even,
            "policy jitter, even", (Target("value", "<=", 5),)),
    ]


def _upstream_rows(m: Measured) -> list[Row]:
    u = m.upstream
    seconds = u["window"][1] - u["window"][0]
    loaded = f"{_count(u['load']['requests'])} req"
    what = f"logins/provider, {UPSTREAM_LIFETIME:g} s tokens, {seconds:.0f} s"
    return [
        Row(f"{what}, no client load", "", u["idle"]["mean"], u["idle"]["ideal_mean"], "policy ideal",
            _within(0.05)),
        Row(f"{what}, under {loaded}", "", u["loaded"]["mean"], u["loaded"]["ideal_mean"], "policy ideal",
            _within(0.05)),
    ]


def _count(n: int) -> str:
    return f"{n / 1e6:.2f}M" if n >= 1e6 else f"{n / 1e3:.0f}k"


def _number(value: float | None, unit: str) -> str:
    if value is None:
        return "-"
    if unit == "req/s":
        return f"{value:,.0f}"
    return f"{value:.2f}" if unit in ("s", "%") else f"{value:.1f}"


def _table(rows: list[Row]) -> str:
    cells = [("metric", "unit", "value", "baseline", "(baseline is)", "ratio", "target", "result")]
    for row in rows:
        ratio = "-" if row.ratio is None else f"{row.ratio:.2f}"
        cells.append((row.metric, row.unit, _number(row.value, row.unit), _number(row.baseline, row.unit),
                      row.baseline_name, ratio, row.target_text(), row.verdict()))
    widths = [max(len(line[i]) for line in cells) for i in range(len(cells[0]))]
    numeric = {2, 3, 5}
    return "\n".join(
        "  ".join(cell.rjust(width) if i in numeric else cell.ljust(width)
                  for i, (cell, width) in enumerate(zip(line, widths, strict=True))).rstrip()
        for line in cells
    )


def _report(m: Measured, rows: list[Row], context: dict[str, object]) -> dict[str, object]:
    return {
        **context,
        "rows": [{**asdict(row), "ratio": row.ratio, "target": row.target_text(), "result": row.verdict()}
                 for row in rows],
        "loads": {name: [asdict(load) for load in loads] for name, loads in m.loads.items()},
        "rss_mib": m.rss_mib,
        "daemon_requests": m.requests,
        "cli_ms": m.cli_ms,
        "body_bytes": m.body_bytes,
        "ready_s": m.ready_s,
        "idle_cpu_percent": m.idle_cpu_percent,
        "scale": m.scale,
        "upstream": m.upstream,
        "proxy": asdict(m.proxy),
    }


def _git_revision() -> str:
    result = subprocess.run(["git", "-C", str(ROOT), "describe", "--always", "--dirty"], capture_output=True,
                            text=True, check=False)
    return result.stdout.strip() or "unknown"


# --- main -----------------------------------------------------------------------------------------------------


def _stop_on_sigterm(signum: int, frame: FrameType | None) -> None:
    raise SystemExit(128 + signum)  # so that the `finally`s and `with`s below stop every helper


def _context(plan: Plan, pinning: str, python_load: bool, seconds: float) -> dict[str, object]:
    """What a reader of latest.json needs to compare two runs."""
    return {
        "date": datetime.now(UTC).isoformat(timespec="seconds"),
        "command": " ".join([sys.executable, *sys.argv]),
        "git": _git_revision(),
        "plan": asdict(plan),
        "load_generator": "python asyncio client (--python-load)" if python_load else _load.generator_name(),
        "pinning": pinning,
        "python": platform.python_version(),
        "cpus": os.cpu_count(),
        "seconds": round(seconds, 1),
    }


def _footer(m: Measured, plan: Plan, context: dict[str, object]) -> str:
    s, u = m.scale, m.upstream
    scale = f"scale: {s['providers']} providers ({s['providers_logging_in']} log in), {s['lifetime']:g} s tokens, "
    if "states_at_timeout" in s:
        scale += (f"NOT READY after {SCALE_READY_TIMEOUT:g} s and stopped there: states {s['states_at_timeout']}, "
                  f"{s['logins_at_fakes']} logins at the fakes, {s['cpu_seconds_at_timeout']:.1f} s of CPU.")
    else:
        scale += (f"{s['logins_at_fakes']} logins at the fakes over {s['seconds_observed']:.0f} s "
                  f"({s['failed_at_fakes']} refused there, {s['failed_in_daemon']} failed in the daemon); "
                  f"idle CPU from {s['idle_window']['from_s']:.0f} to {s['idle_window']['to_s']:.0f} s after "
                  f"start; busiest second {s['peak_second_after_start']:.0f} s after start.")
    return (
        f"\nload: {context['load_generator']}, {CONNECTIONS} connections, {plan.rounds} x {plan.load_seconds:g}s "
        f"per server (best shown), {m.body_bytes}-byte bodies; {context['pinning']}; "
        f"CLI: median of {plan.cli_runs}, bytecode cached unless 'no .pyc'.\n{scale}\n"
        f"upstream: {len(u['idle']['per_provider'])} providers per daemon, logins/provider from their mean "
        f"interval; loaded with {u['load']['requests']:,} requests ({u['load']['non_2xx']} not 2xx).\n"
        f"proxy: {m.proxy.skipped or _proxy_note(m)}\n"
        f"took {context['seconds']}s; git {context['git']}"
    )


def _proxy_note(m: Measured) -> str:
    single = {name: min(load["p50_ms"] for load in loads) for name, loads in m.proxy.single.items()}
    direct = single.get("direct")
    return (f"upstream and reference are nginx ({_proxy.nginx()}), one process each; p50 at 1 connection: direct "
            f"{direct:.3f} ms, nginx proxy {single.get('nginx proxy', 0):.3f} ms, tokend proxy "
            f"{single.get('tokend proxy', 0):.3f} ms" if direct is not None else "no load figures")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="shorter runs: about two minutes in all")
    parser.add_argument("--python-load", action="store_true", help="use the Python load generator even if wrk is there")
    args = parser.parse_args()
    if Path(tokend.__file__).resolve().parent.parent != ROOT:
        sys.exit(f"tokend is imported from {tokend.__file__}, not this checkout: pip install -e {ROOT}")
    signal.signal(signal.SIGTERM, _stop_on_sigterm)
    plan = PLANS["quick" if args.quick else "full"]
    started = time.monotonic()
    cpus = _pin_cpus()
    try:
        with tempfile.TemporaryDirectory(prefix="tokend-bench-") as tmp, Helpers(Path(tmp)) as helpers:
            measured = _measure(helpers, Path(tmp), plan, cpus, args.python_load)
    except (RuntimeError, subprocess.SubprocessError) as exc:
        print(f"bench: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:  # the helpers are stopped by now
        return 130
    rows = _rows(measured)
    context = _context(plan, cpus.text, args.python_load, time.monotonic() - started)
    print(_table(rows))
    print(_footer(measured, plan, context))
    RESULTS.parent.mkdir(exist_ok=True)
    RESULTS.write_text(json.dumps(_report(measured, rows, context), indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
