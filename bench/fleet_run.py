"""The fleet figure: twenty daemons sharing one login per provider per lifetime through Redis.

    /work/venvs/fleet/bin/python bench/fleet_run.py             # about 6 minutes on 2 cores
    /work/venvs/fleet/bin/python bench/fleet_run.py --seconds 40 --outage-seconds 40   # a quick look

Three runs, each against the same fakes (bench/_fleet.py: every login is real and written down):
  1. fleet: 20 daemons x 3 providers (felloh, fintech_studios, oauth2_client_credentials), 8-second tokens,
     `--seconds` under a client load over every daemon and provider: fleet-wide logins per provider against
     one daemon's ideal (tokend.renewal.policy.renewal_delay averaged over its jitter); Redis commands per daemon
     per second; memory per daemon.
  2. outage: the same fleet, Redis killed for 20 s in the middle: non-200 answers (503s) under load.
  3. alone: the same 20 daemons without [fleet]: logins per provider (about 20 times the ideal), memory.
Needs redis-server on PATH (Debian: apt-get install redis-server).

    python bench/fleet_run.py --mode sentinel --daemons 3 --seconds 60     # one deployment, a failover midway
    python bench/fleet_run.py --mode all --daemons 3 --seconds 60          # the three, side by side

With --mode, one run per deployment (standalone, sentinel: a primary, a replica and three sentinels; cluster:
three primaries, each with a replica), the primary failing in the middle: standalone, Redis killed and started
again after 5 s; sentinel and cluster, a primary killed (the sentinels or the cluster promote its replica).
Logins per provider against one daemon's ideal, and non-200 answers. Needs redis-sentinel and redis-cli too.
"""

from __future__ import annotations

import argparse
import base64
import http.client
import json
import os
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections import Counter
from pathlib import Path
from typing import Any

import _fleet
from _procs import HEADER, Helpers, Server, get, wait_until_ok

from tokend.api.sockets import listen_tcp

DAEMONS = 20
KINDS = ["felloh", "fintech_studios", "oauth2_client_credentials"]
LIFETIME = 8.0
LOAD_THREADS = 4


class Redis:
    def __init__(self, directory: Path) -> None:
        self.directory = directory
        with socket.socket() as probe:
            probe.bind(("127.0.0.1", 0))
            self.port = probe.getsockname()[1]
        self.process: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        binary = shutil.which("redis-server")
        if binary is None:
            raise SystemExit("redis-server is not installed (Debian: apt-get install redis-server)")
        self.process = subprocess.Popen(
            [binary, "--port", str(self.port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no",
             "--dir", str(self.directory), "--logfile", str(self.directory / "redis.log")],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline:
            try:
                self.command("PING")
                return
            except OSError:
                time.sleep(0.05)
        raise RuntimeError("redis-server did not start")

    def command(self, *args: str) -> bytes:
        """One command over a raw socket, its reply unparsed: enough for PING and INFO."""
        with socket.create_connection(("127.0.0.1", self.port), timeout=2) as sock:
            sock.sendall(b"".join([f"*{len(args)}\r\n".encode(),
                                   *(f"${len(a)}\r\n{a}\r\n".encode() for a in args)]))
            data = b""
            while True:
                chunk = sock.recv(65536)
                data += chunk
                if not chunk or (data.startswith(b"+") and data.endswith(b"\r\n")) or _complete_bulk(data):
                    return data

    def commands_processed(self) -> int:
        info = self.command("INFO", "stats").decode()
        return int(next(line.split(":")[1] for line in info.splitlines()
                        if line.startswith("total_commands_processed")))

    def kill(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.kill()
            self.process.wait()


def _complete_bulk(data: bytes) -> bool:
    if not data.startswith(b"$"):
        return False
    head, _, rest = data.partition(b"\r\n")
    return len(rest) >= int(head[1:]) + 2


class Load:
    """GETs over every daemon and provider from a few threads, keep-alive; every answer's status tallied."""

    def __init__(self, targets: list[tuple[int, str]]) -> None:
        self.targets = targets
        self.statuses: Counter[int] = Counter()
        self.errors = 0
        self._stop = threading.Event()
        self._threads = [threading.Thread(target=self._run, args=(i,), daemon=True) for i in range(LOAD_THREADS)]
        self._lock = threading.Lock()

    def __enter__(self) -> Load:
        for thread in self._threads:
            thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        for thread in self._threads:
            thread.join(timeout=10)

    def _run(self, offset: int) -> None:
        connections: dict[int, http.client.HTTPConnection] = {}
        headers = dict([HEADER.split(": ")])
        tally: Counter[int] = Counter()
        errors = 0
        i = offset
        while not self._stop.is_set():
            port, path = self.targets[i % len(self.targets)]
            i += 1
            connection = connections.get(port) or http.client.HTTPConnection("127.0.0.1", port, timeout=10)
            connections[port] = connection
            try:
                connection.request("GET", path, headers=headers)
                response = connection.getresponse()
                response.read()
                tally[response.status] += 1
            except (OSError, http.client.HTTPException):
                errors += 1
                connection.close()
                connections.pop(port, None)
        with self._lock:
            self.statuses.update(tally)
            self.errors += errors


def _write_configs(tmp: Path, fakes: dict[str, Any], redis_port: int | None, run: str,
                   where: str | None = None) -> list[tuple[Path, Any]]:
    """`where`: the [fleet] lines naming Redis (sentinels, cluster_nodes), instead of a redis_url on `redis_port`."""
    key_file = tmp / "fleet.key"
    if not key_file.exists():
        key_file.touch(mode=0o600)
        key_file.write_text(base64.b64encode(os.urandom(32)).decode() + "\n")
    configs = []
    for n in range(DAEMONS):
        sock = listen_tcp("127.0.0.1", 0)
        # Every daemon has the same three providers (indices 0-2 at the fakes): the same logins, to share.
        config, _ = _fleet.write_fleet_config(tmp / run / f"d{n}", fakes, KINDS, port=sock.getsockname()[1])
        if redis_port is not None or where is not None:
            where = where or f'redis_url = "redis://127.0.0.1:{redis_port}"\n'
            with config.open("a") as out:
                out.write(f'\n[fleet]\n{where}encryption_key = {{ file = "{key_file}" }}\nnamespace = "bench"\n')
        configs.append((config, sock))
    return configs


def _start_daemons(helpers: Helpers, configs: list[tuple[Path, Any]], run: str, cpus: list[str]) -> list[Server]:
    daemons = []
    for n, (config, sock) in enumerate(configs):
        with sock:
            process = helpers.start("daemon", f"--fd={sock.fileno()}", f"--config={config}", *cpus,
                                    log=f"{run}-d{n}", fds=(sock.fileno(),))
            daemons.append(Server(f"{run}-d{n}", sock.getsockname()[1], process))
    for daemon in daemons:
        if wait_until_ok(helpers, daemon, "/readyz", timeout=120) is None:
            raise RuntimeError(f"{daemon.name} not ready:\n{helpers.log_tail(daemon.name)}")
    return daemons


def _round_trips(daemons: list[Server]) -> int:
    return sum(json.loads(get(d.port, "/status")[1])["fleet"]["redis_calls"] for d in daemons)


def _anonymous_mib(pid: int) -> float:
    """Memory of the process's own (heap, not shared libraries), from /proc/PID/smaps_rollup."""
    for line in Path(f"/proc/{pid}/smaps_rollup").read_text().splitlines():
        if line.startswith("Anonymous:"):
            return int(line.split()[1]) / 1024
    return 0.0


def _rates(record: Path, start: float, end: float) -> dict[str, Any]:
    """Fleet-wide logins per provider in [start, end], as a count and against one daemon's ideal."""
    logins = [login for login in _fleet.read_logins(record) if start <= login.at <= end and login.status == 200]
    seconds = end - start
    out: dict[str, Any] = {}
    for index, kind in enumerate(KINDS):
        count = sum(1 for login in logins if login.index == index)
        ideal = seconds / _fleet.mean_renewal_interval(kind, LIFETIME)
        out[kind] = {"logins": count, "ideal": round(ideal, 1), "ratio": round(count / ideal, 3)}
    return out


def _run(helpers: Helpers, tmp: Path, fakes: dict[str, Any], record: Path, redis: Redis | None, run: str,
         seconds: float, outage: tuple[float, float] | None, cpus: list[str]) -> dict[str, Any]:
    configs = _write_configs(tmp, fakes, redis.port if redis else None, run)
    daemons = _start_daemons(helpers, configs, run, cpus)
    targets = [(d.port, f"/token/{name}") for d in daemons
               for name in (f"{_fleet._SHORT[kind]}-{i}" for i, kind in enumerate(KINDS))]
    time.sleep(2 * LIFETIME)  # past the start's logins: the window holds only renewals
    commands_before = redis.commands_processed() if redis else 0
    calls_before = _round_trips(daemons) if redis else 0
    start = time.time()
    killed_at = None
    with Load(targets) as load:
        while (elapsed := time.time() - start) < seconds:
            if redis is not None and outage is not None:
                if killed_at is None and elapsed >= outage[0]:
                    redis.kill()
                    killed_at = time.time()
                elif killed_at is not None and redis.process is not None and redis.process.poll() is not None \
                        and elapsed >= outage[1]:
                    redis.start()
            time.sleep(0.1)
    end = time.time()
    commands = (redis.commands_processed() - commands_before - 1) if redis and outage is None else None
    calls = (_round_trips(daemons) - calls_before) if redis and outage is None else None
    rss = [d.rss_mib() for d in daemons]
    anonymous = [_anonymous_mib(d.process.pid) for d in daemons]
    for daemon in daemons:
        helpers.stop(daemon.process)
    answers = sum(load.statuses.values())
    return {
        "seconds": round(end - start, 1), "logins": _rates(record, start, end),
        "answers": answers, "non_200": answers - load.statuses[200], "statuses": dict(load.statuses),
        "transport_errors": load.errors,
        # As Redis counts them: a pipeline of three is three, and so is each call a script makes.
        "redis_commands_per_daemon_per_s": None if commands is None else round(commands / DAEMONS / (end - start), 3),
        # As the daemons count them: a round trip each (one per renewal for most daemons).
        "redis_round_trips_per_daemon_per_s": None if calls is None else round(calls / DAEMONS / (end - start), 3),
        "rss_mib_mean": round(statistics.fmean(rss), 1), "rss_mib_max": round(max(rss), 1),
        "anonymous_mib_mean": round(statistics.fmean(anonymous), 1),
    }


def _deployment(mode: str, directory: Path) -> tuple[Any, str, Any]:
    """The deployment started (tests/fleet_redis.py's), its [fleet] lines, and what makes it fail over."""
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
    from tests.fleet_redis import Cluster, RedisServer, SentinelSet

    if mode == "sentinel":
        sentinels = SentinelSet(directory).start()
        where = "sentinels = [" + ", ".join(f'"{a}"' for a in sentinels.addresses) + ']\nsentinel_service = "tokend"\n'
        return sentinels, where, sentinels.kill_primary
    if mode == "cluster":
        cluster = Cluster(directory, count=6, replicas=1).start()
        return cluster, f'cluster_nodes = ["{cluster.addresses[0]}"]\n', cluster.kill_a_primary
    server = RedisServer(directory).start()

    def restart() -> None:
        server.kill()
        time.sleep(5)
        server.start()

    return server, f'redis_url = "{server.url}"\n', restart


def _failover_run(helpers: Helpers, tmp: Path, fakes: dict[str, Any], record: Path, mode: str, seconds: float,
                  cpus: list[str]) -> dict[str, Any]:
    deployment, where, fail = _deployment(mode, tmp / f"redis-{mode}")
    try:
        daemons = _start_daemons(helpers, _write_configs(tmp, fakes, None, mode, where), mode, cpus)
        targets = [(d.port, f"/token/{name}") for d in daemons
                   for name in (f"{_fleet._SHORT[kind]}-{i}" for i, kind in enumerate(KINDS))]
        time.sleep(2 * LIFETIME)  # past the start's logins: the window holds only renewals
        start = time.time()
        with Load(targets) as load:
            time.sleep(seconds / 2)
            failed_at = time.time() - start
            fail()
            time.sleep(max(0.0, seconds - (time.time() - start)))
        end = time.time()
        alone = sum(t["logins_alone"] for d in daemons
                    for t in json.loads(get(d.port, "/status")[1])["fleet"]["providers"].values())
        for daemon in daemons:
            helpers.stop(daemon.process)
    finally:
        deployment.kill()
    answers = sum(load.statuses.values())
    return {"mode": mode, "seconds": round(end - start, 1), "failover_at": round(failed_at, 1),
            "logins": _rates(record, start, end), "logins_alone": alone, "answers": answers,
            "non_200": answers - load.statuses[200] + load.errors}


def _modes(args: argparse.Namespace, cpus: list[str]) -> int:
    global DAEMONS
    DAEMONS = args.daemons
    modes = ["standalone", "sentinel", "cluster"] if args.mode == "all" else [args.mode]
    results = {}
    with tempfile.TemporaryDirectory(prefix="tokend-fleet-bench-") as name, Helpers(Path(name)) as helpers:
        tmp = Path(name)
        record = tmp / "logins.txt"
        process = helpers.start("fleet-fakes", f"--lifetime={LIFETIME}", f"--record={record}", *cpus)
        fakes = json.loads(helpers.first_line(process, "fleet-fakes"))
        for mode in modes:
            results[mode] = _failover_run(helpers, tmp, fakes, record, mode, args.seconds, cpus)
            print(f"{mode}:", json.dumps(results[mode]), flush=True)
    print(f"\n{DAEMONS} daemons x {len(KINDS)} providers, {LIFETIME:g}-second tokens, a failover midway")
    print(f"{'deployment':12} " + " ".join(f"{kind:>26}" for kind in KINDS) + f" {'alone':>6} {'non-200':>8}")
    for mode, result in results.items():
        cells = [f"{result['logins'][k]['logins']} = {result['logins'][k]['ratio']:.2f}x" for k in KINDS]
        print(f"{mode:12} " + " ".join(f"{c:>26}" for c in cells)
              + f" {result['logins_alone']:>6} {result['non_200']:>8}")
    out = Path(__file__).with_name("results")
    out.mkdir(exist_ok=True)
    (out / "fleet_modes.json").write_text(json.dumps(results, indent=2))
    return 0


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seconds", type=float, default=120.0, help="the fleet and alone runs")
    parser.add_argument("--outage-seconds", type=float, default=60.0, help="the outage run (Redis down 20 s)")
    parser.add_argument("--mode", choices=["standalone", "sentinel", "cluster", "all"],
                        help="instead: one run per deployment, with a failover midway")
    parser.add_argument("--daemons", type=int, default=DAEMONS, help="with --mode: how many daemons")
    args = parser.parse_args()
    cpus = [f"--cpus={','.join(map(str, sorted(os.sched_getaffinity(0))))}"]
    if args.mode is not None:
        return _modes(args, cpus)
    results: dict[str, Any] = {}
    with tempfile.TemporaryDirectory(prefix="tokend-fleet-bench-") as name, Helpers(Path(name)) as helpers:
        tmp = Path(name)
        redis = Redis(tmp)
        record = tmp / "logins.txt"
        try:
            redis.start()
            process = helpers.start("fleet-fakes", f"--lifetime={LIFETIME}", f"--record={record}", *cpus)
            fakes = json.loads(helpers.first_line(process, "fleet-fakes"))
            results["fleet"] = _run(helpers, tmp, fakes, record, redis, "fleet", args.seconds, None, cpus)
            print("fleet:", json.dumps(results["fleet"]), flush=True)
            middle = args.outage_seconds / 2
            results["outage"] = _run(helpers, tmp, fakes, record, redis, "outage", args.outage_seconds,
                                     (middle - 10, middle + 10), cpus)
            print("outage:", json.dumps(results["outage"]), flush=True)
            results["alone"] = _run(helpers, tmp, fakes, record, None, "alone", args.seconds, None, cpus)
            print("alone:", json.dumps(results["alone"]), flush=True)
        finally:
            redis.kill()
    _table(results)
    out = Path(__file__).with_name("results")
    out.mkdir(exist_ok=True)
    (out / "fleet.json").write_text(json.dumps(results, indent=2))
    return 0


def _table(r: dict[str, Any]) -> None:
    fleet, alone, outage = r["fleet"], r["alone"], r["outage"]
    print(f"\n{DAEMONS} daemons x {len(KINDS)} providers, {LIFETIME:g}-second tokens, "
          f"{fleet['seconds']:g} s under load")
    print(f"{'figure':58} {'measured':>14} {'target':>12}")
    for kind in KINDS:
        f, a = fleet["logins"][kind], alone["logins"][kind]
        print(f"{'fleet-wide logins, ' + kind + ' (vs one daemon ideal)':58} "
              f"{f['logins']:>5} = {f['ratio']:5.2f}x {'<= 1.05x':>12}")
        print(f"{'  same run without [fleet]':58} {a['logins']:>5} = {a['ratio']:5.2f}x {'(~20x)':>12}")
    print(f"{'non-200 answers, Redis killed 20 s (' + str(outage['answers']) + ' answers)':58} "
          f"{outage['non_200'] + outage['transport_errors']:>14} {'0':>12}")
    print(f"{'Redis round trips per daemon per second (8 s tokens)':58} "
          f"{fleet['redis_round_trips_per_daemon_per_s']:>14} {'<= 1':>12}")
    print(f"{'  commands Redis executed, scripts and pipelines unrolled':58} "
          f"{fleet['redis_commands_per_daemon_per_s']:>14}")
    print(f"{'memory per daemon, RSS, fleet vs alone (MiB)':58} "
          f"{fleet['rss_mib_mean']:>6} vs {alone['rss_mib_mean']:<6} {'+5 MiB max':>12}")
    print(f"{'  anonymous (heap) only':58} "
          f"{fleet['anonymous_mib_mean']:>6} vs {alone['anonymous_mib_mean']:<6}")


if __name__ == "__main__":
    sys.exit(main())
