"""Soak: the real daemon against every provider kind with 8-second tokens, several clients, and a random
schedule of every upstream fault, for about ten minutes (not part of CI).

    python bench/soak.py                 # 10 minutes
    python bench/soak.py --minutes 3     # a shorter run
    python bench/soak.py --seed 7        # the same fault schedule again
    python bench/soak.py --user-minutes 2 --minutes 0   # only the user-token part

The fakes (tokend.testing) run in this process; the daemon is `tokend run` in a subprocess. A thread per
provider that logs in (felloh, fintech_studios, oauth2_client_credentials, http) breaks its upstream now and
then: 5xx, 429 with Retry-After, hangs past the login timeout, refused connections (the fake server stopped,
then restarted on its port), an HTML page with status 200, expiries reported in the past or in milliseconds,
and tokens revoked before their expiry. Client threads ask for tokens all along, use some of them against the
fake API, and after a 401 ask for a refresh naming the refused token, as the client libraries do.

What is counted, and what it must be:
- tokens served that were invalid or expired (0): a token no fake issued; one already past its real expiry
  when it was asked for; a refused token answered again after a refresh naming it had replaced it; a refresh
  naming a token answering 200 with that same token. Tokens whose login answer gave an expiry in the past
  are counted apart: tokend cannot know their real lifetime (it serves them for a short while, see
  tokend/expiry.py), and the refresh naming them is what recovers.
- avoidable 503s (0): a 503 while the upstream had been reachable (no fault, no Retry-After quiet) from one
  login timeout before the moment the last token stopped being served, up to the 503 itself.
- recovery (at most expired_retry_delay + one login timeout = 18 s): after an outage during which clients got
  503, the seconds from the upstream's recovery to the first 200.
- logins against the policy's ideal: one first login, one per two thirds of the lifetime, one per revocation.
- the daemon's RSS and open file descriptors at start and at end.

Then (`--user-minutes`, default 2) a user token: a daemon with a [state] folder against an authorization
server that rotates refresh tokens and revokes the family when a spent one is presented again. Clients ask
for tokens and force refreshes, the server has 5xx answers and hangs past the login timeout, and every few
seconds the daemon is stopped (SIGTERM), killed (SIGKILL) or reloaded (its `timeout` rewritten, then SIGHUP),
whatever it is doing. And (`--fleet-minutes`, default 2) three daemons in fleet mode sharing one user token
through a real redis-server (nothing saved), which is stopped (SIGTERM or SIGKILL) across renewals and
started again empty; between outages a daemon is stopped, killed or reloaded. Counted: refresh tokens
presented twice (must be 0), sign-ins asked for (/status `sign_in_reason`: where tokend cannot know whether
a refresh token was spent, after a kill or a refresh whose answer never came, it asks for one rather than
risk the family; the soak then signs in again with a new refresh token), invalid tokens served (0),
restarts, reloads and outages. SOAK_LOG=PATH keeps the daemons' logs there.

Exit status 0 when every bound holds, 1 otherwise.
"""

from __future__ import annotations

import argparse
import base64
import contextlib
import json
import os
import random
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from collections import Counter, defaultdict
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
from fleet_run import Redis

from tokend.renewal.policy import RENEW_AT
from tokend.testing import (
    FakeAuthorizationServer,
    FakeFelloh,
    FakeFintechStudios,
    FakeFlotiq,
    FakeOAuth2,
    FakeServer,
    FakeTokenAPI,
    FakeUpstream,
)

LIFETIME = 8.0
LOGIN_TIMEOUT = 3.0  # each provider's `timeout`
EXPIRED_RETRY_DELAY = 15.0  # tokend's default
SERVE_MARGIN = 1.0  # tokend withdraws a token this long before its expiry
RECOVERY_BOUND = EXPIRED_RETRY_DELAY + LOGIN_TIMEOUT
CLIENTS = 6
HEADERS = {"X-Tokend-Request": "soak"}
LOGIN_KINDS = ("felloh", "fts", "oauth", "http")
STATIC_KEY = "soak-static-key-0123456789"
FLOTIQ_KEY = "soak-flotiq-key-0123456789"


class Ledger:
    """Every token the fakes issued: its provider, its real expiry, whether its expiry was reported in the past."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.tokens: dict[str, tuple[str, float, bool]] = {}
        self.last_issued: dict[str, list[tuple[float, float]]] = defaultdict(list)  # provider -> (issued, expiry)


def _ledgered(base: type[FakeUpstream], provider: str, ledger: Ledger) -> Any:
    """A subclass of fake `base` that writes each token it issues into `ledger` (the fake forgets revoked ones)."""

    def _issue(self: Any, token: str, expires: int) -> None:
        garbled = getattr(self, "_expiry_style", None) == "past"
        with ledger.lock:
            ledger.tokens[token] = (provider, float(expires), garbled)
            ledger.last_issued[provider].append((time.time(), float(expires)))
        base._issue(self, token, expires)

    return type(f"Soak{base.__name__}", (base,), {"_issue": _issue})


@dataclass
class Fault:
    provider: str
    kind: str
    start: float
    end: float = float("inf")  # when the upstream answered well again, Retry-After's quiet included


@dataclass
class Upstream:
    name: str
    fake: Any
    server: FakeServer
    faults: list[Fault] = field(default_factory=list)
    revocations: int = 0

    def healthy(self, start: float, end: float) -> bool:
        return not any(f.start < end and start < f.end for f in self.faults if f.kind not in ("revoke", "ms"))


@dataclass
class Tally:
    lock: threading.Lock = field(default_factory=threading.Lock)
    answers: Counter[tuple[str, int]] = field(default_factory=Counter)
    invalid: list[str] = field(default_factory=list)
    garbled_expired: int = 0
    avoidable_503: list[str] = field(default_factory=list)
    refreshes: Counter[int] = field(default_factory=Counter)
    throttled: Counter[str] = field(default_factory=Counter)  # why refreshes naming a token answered 429
    # Refused tokens a refresh replaced, with when its answer came: a GET sent after that must not get them.
    replaced: dict[str, float] = field(default_factory=dict)
    events: list[tuple[float, str, int]] = field(default_factory=list)  # (received, provider, status)
    client_errors: Counter[str] = field(default_factory=Counter)


# --- set-up --------------------------------------------------------------------------------------------


def start_upstreams(ledger: Ledger, stack: contextlib.ExitStack) -> dict[str, Upstream]:
    fakes = {
        "felloh": _ledgered(FakeFelloh, "felloh", ledger)(lifetime=LIFETIME),
        "fts": _ledgered(FakeFintechStudios, "fts", ledger)(lifetime=LIFETIME),
        "oauth": _ledgered(FakeOAuth2, "oauth", ledger)(lifetime=LIFETIME),
        "http": _ledgered(FakeTokenAPI, "http", ledger)(lifetime=LIFETIME),
        "flotiq": FakeFlotiq(api_keys=[FLOTIQ_KEY]),
    }
    upstreams = {}
    for name, fake in fakes.items():
        server = FakeServer(fake.app).start()
        stack.callback(server.stop)
        upstreams[name] = Upstream(name, fake, server)
    return upstreams


def write_config(directory: Path, upstreams: dict[str, Upstream], port: int) -> Path:
    felloh, fts, oauth, http = (upstreams[n].fake for n in LOGIN_KINDS)
    secrets = {"felloh_public": felloh.public_key, "felloh_private": felloh.private_key, "fts_key": fts.api_key,
               "fts_password": fts.password, "oauth_secret": oauth.client_secret, "http_password": http.password,
               "flotiq_key": FLOTIQ_KEY, "static_key": STATIC_KEY}
    for name, value in secrets.items():
        (directory / name).touch(mode=0o600)
        (directory / name).write_text(value + "\n")

    def secret(name: str) -> str:
        return f'{{ file = "{directory / name}" }}'

    common = f"timeout = {LOGIN_TIMEOUT}\n"
    url = {name: upstream.server.url for name, upstream in upstreams.items()}
    config = directory / "tokend.toml"
    config.write_text(f"""\
[server]
host = "127.0.0.1"
port = {port}

[providers.felloh]
kind = "felloh"
base_url = "{url['felloh']}"
public_key = {secret('felloh_public')}
private_key = {secret('felloh_private')}
{common}
[providers.fts]
kind = "fintech_studios"
base_url = "{url['fts']}"
api_key = {secret('fts_key')}
email = "{fts.email}"
password = {secret('fts_password')}
{common}
[providers.oauth]
kind = "oauth2_client_credentials"
token_url = "{url['oauth']}/oauth/token"
client_id = "{oauth.client_id}"
client_secret = {secret('oauth_secret')}
{common}
[providers.http]
kind = "http"
url = "{url['http']}/session"
secrets = {{ pw = {secret('http_password')} }}
headers = {{ X-Client = "demo" }}
json = {{ user = "{http.user}", password = "{{pw}}" }}
token_pointer = "/result/session/key"
expiry_pointer = "/result/session/expiry"
request_id_pointer = "/trace"
serve_headers = {{ Authorization = "Session {{token}}" }}
{common}
[providers.flotiq]
kind = "flotiq"
base_url = "{url['flotiq']}"
api_key = {secret('flotiq_key')}

[providers.static]
kind = "static"
key = {secret('static_key')}
header = "X-Api-Key"
scheme = ""
""")
    return config


@contextlib.contextmanager
def daemon(config: Path, port: int, log_path: Path) -> Iterator[subprocess.Popen[bytes]]:
    with log_path.open("wb") as log:
        process = subprocess.Popen([sys.executable, "-m", "tokend", "--config", str(config), "run"],
                                   stdout=log, stderr=subprocess.STDOUT)
    try:
        deadline = time.monotonic() + 60
        while True:
            with contextlib.suppress(httpx.TransportError):
                if httpx.get(f"http://127.0.0.1:{port}/readyz").status_code == 200:
                    break
            if process.poll() is not None or time.monotonic() > deadline:
                raise SystemExit(f"tokend did not become ready:\n{log_path.read_text()}")
            time.sleep(0.1)
        yield process
    finally:
        process.send_signal(signal.SIGTERM)
        try:
            process.wait(timeout=15)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


def resources(pid: int) -> tuple[float, int]:
    """RSS in MiB and open file descriptors of a process."""
    status = Path(f"/proc/{pid}/status").read_text()
    kib = next(line.split()[1] for line in status.splitlines() if line.startswith("VmRSS:"))
    return int(kib) / 1024, len(os.listdir(f"/proc/{pid}/fd"))


# --- faults --------------------------------------------------------------------------------------------


def fault_kinds(name: str) -> list[str]:
    kinds = ["5xx", "429", "hang", "refuse", "html200", "revoke"]
    # Only Felloh's and FinTech Studios' answers hold an expiry timestamp to get wrong.
    return kinds + (["past", "ms"] if name in ("felloh", "fts") else [])


def break_upstream(upstream: Upstream, rng: random.Random, stop: threading.Event) -> None:
    """Healthy spells and faults, one after another, until `stop`."""
    fake = upstream.fake
    while not stop.wait(rng.uniform(4, 20)):
        kind = rng.choice(fault_kinds(upstream.name))
        fault = Fault(upstream.name, kind, time.time())
        upstream.faults.append(fault)
        if kind == "revoke":
            fake.revoke()
            upstream.revocations += 1
            fault.end = fault.start
            continue
        # Short ones ride on the current token; long ones (past the 8 s lifetime) make it run out.
        duration = rng.choice([rng.uniform(1, 5), rng.uniform(9, 30)])
        retry_after = rng.randint(1, 6) if kind == "429" else 0
        start_fault(upstream, kind, rng, retry_after)
        stop.wait(duration)
        if kind == "refuse":
            upstream.server.restart()
        elif kind in ("past", "ms"):
            fake.report_expiry(None)
        else:
            fake.recover()
        fault.end = time.time() + retry_after  # Retry-After asks for quiet beyond the last 429


def start_fault(upstream: Upstream, kind: str, rng: random.Random, retry_after: int) -> None:
    fake = upstream.fake
    if kind == "5xx":
        fake.fail(rng.choice([500, 502, 503, 504]))
    elif kind == "429":
        fake.fail(429, retry_after=retry_after)
    elif kind == "hang":
        fake.hang(LOGIN_TIMEOUT + 3)  # past the login timeout: tokend gives up on each attempt
    elif kind == "refuse":
        upstream.server.stop()
    elif kind == "html200":
        fake.fail(200, body="<html><body>Down for maintenance</body></html>")
    else:
        fake.report_expiry({"past": "past", "ms": "milliseconds"}[kind])


# --- clients -------------------------------------------------------------------------------------------


def client(base: str, upstreams: dict[str, Upstream], ledger: Ledger, tally: Tally, rng: random.Random,
           stop: threading.Event) -> None:
    names = [*LOGIN_KINDS, "flotiq", "static"]
    with httpx.Client(base_url=base, headers=HEADERS, timeout=15) as local, httpx.Client(timeout=5) as remote:
        while not stop.wait(rng.uniform(0.02, 0.15)):
            name = rng.choice(names)
            sent = time.time()
            try:
                answer = local.get(f"/token/{name}")
            except httpx.TransportError as exc:
                with tally.lock:
                    tally.client_errors[type(exc).__name__] += 1
                continue
            received = time.time()
            with tally.lock:
                tally.answers[(name, answer.status_code)] += 1
                tally.events.append((received, name, answer.status_code))
            if answer.status_code == 503:
                judge_503(name, received, upstreams, ledger, tally)
            elif answer.status_code == 200:
                token = answer.json()["token"]
                judge_token(name, token, sent, ledger, tally)
                if name in LOGIN_KINDS and rng.random() < 0.3:
                    use(name, answer.json(), upstreams[name], local, remote, ledger, tally)


def judge_token(name: str, token: str, sent: float, ledger: Ledger, tally: Tally) -> None:
    if name == "static" or name == "flotiq":
        if token != (STATIC_KEY if name == "static" else FLOTIQ_KEY):
            with tally.lock:
                tally.invalid.append(f"{name}: a key that is not the configured one")
        return
    with ledger.lock:
        issued = ledger.tokens.get(token)
    with tally.lock:
        if issued is None or issued[0] != name:
            tally.invalid.append(f"{name}: a token its fake never issued")
        elif issued[1] <= sent:
            if issued[2]:
                tally.garbled_expired += 1
            else:
                tally.invalid.append(f"{name}: a token {sent - issued[1]:.2f}s past its expiry when asked for")
        elif token in tally.replaced and tally.replaced[token] < sent:
            tally.invalid.append(f"{name}: a refused token served again after a refresh had replaced it")


def judge_503(name: str, received: float, upstreams: dict[str, Upstream], ledger: Ledger, tally: Tally) -> None:
    with ledger.lock:
        issued = [expires for at, expires in ledger.last_issued[name] if at < received]
    if not issued:
        return
    withdrawn = issued[-1] - SERVE_MARGIN  # when the last token stopped being served
    if upstreams[name].healthy(withdrawn - LOGIN_TIMEOUT, received):
        with tally.lock:
            tally.avoidable_503.append(f"{name} at {received:.1f}: token withdrawn at {withdrawn:.1f}, upstream "
                                       "reachable throughout")


def use(name: str, credential: dict[str, Any], upstream: Upstream, local: httpx.Client, remote: httpx.Client,
        ledger: Ledger, tally: Tally) -> None:
    """Call the fake API with the token; after a 401, a refresh naming it, as the client libraries do."""
    token = credential["token"]
    try:
        answer = remote.get(upstream.server.url + upstream.fake.protected_path, headers=credential["headers"],
                            params=credential["query"])
    except httpx.TransportError:
        return  # the upstream is down (a refused-connection fault): nothing learnt about the token
    if answer.status_code != 401:
        return
    sent = time.time()
    refreshed = local.post(f"/token/{name}/refresh", json={"rejected": token})
    with tally.lock:
        tally.refreshes[refreshed.status_code] += 1
        if refreshed.status_code == 429:  # the reason, without its times: "not attempted: the provider asked..."
            tally.throttled[" ".join(refreshed.json()["message"].split()[:8])] += 1
    if refreshed.status_code == 200:
        new = refreshed.json()["token"]
        with tally.lock:
            if new == token:
                tally.invalid.append(f"{name}: a refresh naming a refused token answered 200 with it")
            else:
                tally.replaced.setdefault(token, time.time())
        judge_token(name, new, sent, ledger, tally)


# --- the run and its table -----------------------------------------------------------------------------


def recoveries(upstreams: dict[str, Upstream], tally: Tally, until: float) -> dict[str, list[float]]:
    """Per provider: seconds from each recovery after an outage that caused 503s to the first 200 after it."""
    found: dict[str, list[float]] = defaultdict(list)
    by_provider: dict[str, list[tuple[float, int]]] = defaultdict(list)
    for at, name, status in sorted(tally.events):
        by_provider[name].append((at, status))
    for upstream in upstreams.values():
        outages = [f for f in upstream.faults if f.kind not in ("revoke", "ms", "past") and f.end < until]
        events = by_provider[upstream.name]
        for fault in outages:
            if not any(status == 503 for at, status in events if fault.start <= at <= fault.end):
                continue
            later = [f.start for f in upstream.faults if fault.end < f.start]
            first_ok = next((at for at, status in events if at > fault.end and status == 200), None)
            if first_ok is not None and (not later or first_ok < min(later)):
                found[upstream.name].append(first_ok - fault.end)
    return found


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--minutes", type=float, default=10.0)
    parser.add_argument("--seed", type=int, default=None)
    parser.add_argument("--user-minutes", type=float, default=2.0,
                        help="the user-token part: stops, kills and reloads of one daemon")
    parser.add_argument("--fleet-minutes", type=float, default=2.0,
                        help="the fleet user-token part: three daemons, Redis outages, stops and reloads")
    args = parser.parse_args()
    seed = args.seed if args.seed is not None else random.SystemRandom().randrange(2**32)
    rng = random.Random(seed)
    code = main_soak(args.minutes, seed, rng) if args.minutes > 0 else 0
    if args.user_minutes > 0:
        code |= user_soak(args.user_minutes, random.Random(rng.random()))
    if args.fleet_minutes > 0:
        code |= fleet_soak(args.fleet_minutes, random.Random(rng.random()))
    return code


def main_soak(minutes: float, seed: int, rng: random.Random) -> int:
    ledger, tally, stop = Ledger(), Tally(), threading.Event()
    with contextlib.ExitStack() as stack, tempfile.TemporaryDirectory(prefix="tokend-soak-") as tmp:
        upstreams = start_upstreams(ledger, stack)
        with contextlib.closing(__import__("socket").socket()) as probe:
            probe.bind(("127.0.0.1", 0))
            port = probe.getsockname()[1]
        config = write_config(Path(tmp), upstreams, port)
        log_path = Path(tmp) / "tokend.log"
        with daemon(config, port, log_path) as process:
            start_rss, start_fds = resources(process.pid)
            started = time.time()
            threads = [threading.Thread(target=break_upstream, args=(upstreams[name], random.Random(rng.random()),
                                                                     stop)) for name in LOGIN_KINDS]
            threads += [threading.Thread(target=client, args=(f"http://127.0.0.1:{port}", upstreams, ledger, tally,
                                                              random.Random(rng.random()), stop))
                        for _ in range(CLIENTS)]
            for thread in threads:
                thread.start()
            stop.wait(minutes * 60)
            stop.set()
            for thread in threads:
                thread.join(timeout=60)
            ended = time.time()
            # The same conditions as at the start: every upstream healthy, every provider ready again.
            deadline = time.monotonic() + 60
            while httpx.get(f"http://127.0.0.1:{port}/readyz").status_code != 200 and time.monotonic() < deadline:
                time.sleep(0.2)
            end_rss, end_fds = resources(process.pid)
        log = log_path.read_text(errors="replace")
    return report(upstreams, tally, started, ended, seed, (start_rss, start_fds, end_rss, end_fds), log)


def report(upstreams: dict[str, Upstream], tally: Tally, started: float, ended: float, seed: int,
           usage: tuple[float, int, float, int], log: str) -> int:
    seconds = ended - started
    found = recoveries(upstreams, tally, ended)
    worst = max((value for values in found.values() for value in values), default=0.0)
    ok200 = sum(count for (_, status), count in tally.answers.items() if status == 200)
    n503 = sum(count for (_, status), count in tally.answers.items() if status == 503)
    other = {key: count for key, count in tally.answers.items() if key[1] not in (200, 503)}
    print(f"soak: {seconds / 60:.1f} min, seed {seed}, {CLIENTS} clients, {LIFETIME:g}s tokens, "
          f"login timeout {LOGIN_TIMEOUT:g}s")
    print("\n| measure | value | bound |\n|---|---|---|")
    rows = [
        ("token requests answered 200 / 503 / other", f"{ok200} / {n503} / {sum(other.values())}", ""),
        ("invalid or expired tokens served", str(len(tally.invalid)), "0"),
        ("tokens served past a real expiry that the upstream reported in the past (tokend cannot know it)",
         str(tally.garbled_expired), "(counted apart)"),
        ("503s while the upstream had been reachable for a login timeout before the token's end",
         str(len(tally.avoidable_503)), "0"),
        ("recovery to the first 200 after an outage with 503s: count, median, worst (s)",
         _recovery_cell(found), f"worst <= {RECOVERY_BOUND:g}"),
        ("refreshes naming a refused token: 200 / 429 / 502",
         " / ".join(str(tally.refreshes[code]) for code in (200, 429, 502)), ""),
        ("daemon RSS MiB, start -> end", f"{usage[0]:.1f} -> {usage[2]:.1f}", ""),
        ("daemon open fds, start -> end", f"{usage[1]} -> {usage[3]}", "no growth"),
        ("client transport errors", str(sum(tally.client_errors.values())), "0"),
        ("tracebacks in the daemon's log", str(log.count("Traceback")), "0"),
    ]
    for row in rows:
        print(f"| {row[0]} | {row[1]} | {row[2]} |")
    print("\n| provider | faults (kinds) | revocations | logins ok | login attempts | ideal logins | ok / ideal |")
    print("|---|---|---|---|---|---|---|")
    for name in LOGIN_KINDS:
        upstream = upstreams[name]
        kinds = Counter(f.kind for f in upstream.faults)
        ideal = 1 + seconds / (LIFETIME * RENEW_AT) + upstream.revocations
        fake = upstream.fake
        print(f"| {name} | {sum(kinds.values())} ({', '.join(f'{k} {n}' for k, n in sorted(kinds.items()))}) | "
              f"{upstream.revocations} | {fake.logins} | {fake.login_attempts} | {ideal:.0f} | "
              f"{fake.logins / ideal:.2f} |")
    for label, items in (("invalid", tally.invalid), ("avoidable 503", tally.avoidable_503)):
        for item in items[:10]:
            print(f"{label}: {item}")
    for reason, count in tally.throttled.most_common():
        print(f"429 to a refresh naming a token, {count}x: {reason} ...")
    if other:
        print("other answers:", json.dumps({f"{name} {status}": count for (name, status), count in other.items()}))
    failed = (tally.invalid or tally.avoidable_503 or worst > RECOVERY_BOUND or usage[3] > usage[1] + 5
              or "Traceback" in log)
    return 1 if failed else 0


def _recovery_cell(found: dict[str, list[float]]) -> str:
    values = sorted(value for values in found.values() for value in values)
    if not values:
        return "0"
    return f"{len(values)}, {values[len(values) // 2]:.1f}, {values[-1]:.1f}"


# --- user tokens, with stops, reloads and Redis outages ----------------------------------------------

USER_LIFETIME = 30.0  # long enough that most restarts come within a token's life
FLEET_LIFETIME = 6.0  # short enough that every Redis outage spans renewals


def free_port() -> int:
    with contextlib.closing(socket.socket()) as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def write_secret(path: Path, value: str) -> Path:
    path.touch(mode=0o600)
    path.write_text(value + "\n")
    return path


def user_config(directory: Path, url: str, client_id: str, refresh_token: str, timeout: float,
                extra: str = "") -> tuple[Path, int]:
    """A config with a [state] folder and one oauth2_refresh_token provider `user`, and its port."""
    directory.mkdir(parents=True, exist_ok=True)
    port = free_port()
    state_key = write_secret(directory / "state_key", base64.b64encode(os.urandom(32)).decode())
    client_secret = write_secret(directory / "client_secret", "soak-user-secret")
    write_secret(directory / "refresh_token", refresh_token)
    config = directory / "tokend.toml"
    config.write_text(f"""\
[server]
host = "127.0.0.1"
port = {port}

[state]
path = "{directory / 'state'}"
encryption_key = {{ file = "{state_key}" }}

[providers.user]
kind = "oauth2_refresh_token"
token_url = "{url}/oauth/token"
client_id = "{client_id}"
client_secret = {{ file = "{client_secret}" }}
refresh_token = {{ file = "{directory / 'refresh_token'}" }}
timeout = {timeout}
min_refresh_interval = 1
{extra}""")
    return config, port


def retime(config: Path, timeout: float) -> None:
    """Rewrite the provider's `timeout` (a timing setting only), as an operator's edit before a SIGHUP."""
    text = config.read_text()
    lines = [f"timeout = {timeout}" if line.startswith("timeout = ") else line for line in text.splitlines()]
    config.write_text("\n".join(lines) + "\n")


class UserDaemon:
    """`tokend run` on a user-token config, stopped, killed, reloaded and started again on the same files."""

    def __init__(self, config: Path, port: int) -> None:
        self.config, self.base = config, f"http://127.0.0.1:{port}"
        self.log_path = config.parent / "tokend.log"
        self.process: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        with self.log_path.open("ab") as log:
            self.process = subprocess.Popen([sys.executable, "-m", "tokend", "--config", str(self.config), "run"],
                                            stdout=log, stderr=subprocess.STDOUT)
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            with contextlib.suppress(httpx.TransportError):
                if httpx.get(f"{self.base}/livez").status_code == 200:
                    return
            if self.process.poll() is not None:
                break
            time.sleep(0.05)
        raise SystemExit(f"tokend did not start:\n{self.log()[-4000:]}")

    def stop(self, sig: signal.Signals = signal.SIGTERM) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.send_signal(sig)
            try:
                self.process.wait(timeout=30)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()

    def reload(self) -> None:
        assert self.process is not None
        self.process.send_signal(signal.SIGHUP)

    def sign_in_reason(self) -> str | None:
        with contextlib.suppress(httpx.HTTPError, ValueError, KeyError):
            reason = httpx.get(f"{self.base}/status", headers=HEADERS).json()["providers"]["user"].get(
                "sign_in_reason")
            return str(reason) if reason else None
        return None

    def log(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""


@dataclass
class UserTally:
    lock: threading.Lock = field(default_factory=threading.Lock)
    answers: Counter[str] = field(default_factory=Counter)
    invalid: list[str] = field(default_factory=list)
    sign_ins: Counter[str] = field(default_factory=Counter)  # sign-ins asked for, by reason


def ask_tokens(daemons: list[UserDaemon], fake: Any, tally: UserTally, seed: float, stop: threading.Event) -> None:
    """A client: tokens and now and then a forced refresh, from any daemon; every token served checked."""
    rng = random.Random(seed)
    while not stop.is_set():
        daemon = rng.choice(daemons)
        forced = rng.random() < 0.2
        try:
            with httpx.Client(base_url=daemon.base, headers=HEADERS, timeout=30) as local:
                answer = local.post("/token/user/refresh") if forced else local.get("/token/user")
        except httpx.TransportError:
            stop.wait(0.2)  # the daemon is restarting
            continue
        key = str(answer.status_code)
        if answer.status_code == 503:
            with contextlib.suppress(ValueError, KeyError):
                key = f"503 {answer.json()['error']}"
        with tally.lock:
            tally.answers[key] += 1
            if answer.status_code == 200 and not fake.is_valid(token := answer.json()["token"]):
                tally.invalid.append(token[:6])
        stop.wait(rng.uniform(0.05, 0.3))


def upstream_faults(fake: Any, rng: random.Random, stop: threading.Event) -> None:
    while not stop.wait(rng.uniform(5, 15)):
        if rng.random() < 0.5:
            fake.fail(503, times=rng.randint(1, 3))
        else:
            fake.hang(LOGIN_TIMEOUT + 1)
            stop.wait(rng.uniform(2, 6))
        fake.recover()


def watch_sign_ins(daemons: list[UserDaemon], tally: UserTally, stop: threading.Event) -> None:
    """Counts each time a daemon starts asking for a sign-in (its /status `sign_in_reason`)."""
    asking = [False] * len(daemons)
    while not stop.wait(0.5):
        for index, daemon in enumerate(daemons):
            reason = daemon.sign_in_reason()
            if reason and not asking[index]:
                with tally.lock:
                    tally.sign_ins[reason] += 1
            asking[index] = reason is not None


def print_rows(rows: list[tuple[str, str, str]]) -> None:
    print("\n| measure | value | bound |\n|---|---|---|")
    for row in rows:
        print(f"| {row[0]} | {row[1]} | {row[2]} |")


def user_soak(minutes: float, rng: random.Random) -> int:
    """One daemon with a [state] folder: stopped (SIGTERM), killed (SIGKILL) and reloaded (its `timeout`
    rewritten, then SIGHUP) at random points, renewals included."""
    fake = FakeAuthorizationServer(client_secret="soak-user-secret", lifetime=USER_LIFETIME)
    stop, tally = threading.Event(), UserTally()
    with FakeServer(fake.app) as server, tempfile.TemporaryDirectory(prefix="tokend-soak-user-") as tmp:
        directory = Path(tmp)
        config, port = user_config(directory, server.url, fake.client_id, fake.sign_in(), LOGIN_TIMEOUT)
        daemon = UserDaemon(config, port)
        restarts = kills = reloads = restart_logins = 0
        threads = [threading.Thread(target=ask_tokens, args=([daemon], fake, tally, rng.random(), stop))
                   for _ in range(4)]
        threads += [threading.Thread(target=upstream_faults, args=(fake, random.Random(rng.random()), stop)),
                    threading.Thread(target=watch_sign_ins, args=([daemon], tally, stop))]
        ended_at = time.monotonic() + minutes * 60
        daemon.start()
        try:
            for thread in threads:
                thread.start()
            while time.monotonic() < ended_at:
                time.sleep(rng.uniform(2, 8))
                if daemon.sign_in_reason() is not None:
                    # A refresh token whose fate tokend cannot know (a kill, or a timeout, between sending it and
                    # keeping the answer) is not sent again: a person signs in (a new refresh token, no record).
                    daemon.stop()
                    write_secret(directory / "refresh_token", fake.sign_in())
                    (directory / "state" / "user.record").unlink(missing_ok=True)
                    daemon.start()
                    continue
                action = rng.random()
                if action < 0.35:  # a reload that changes only a timing setting, maybe during a login
                    retime(config, LOGIN_TIMEOUT + rng.choice([0, 0.5, 1]))
                    daemon.reload()
                    reloads += 1
                    continue
                kill = action > 0.8
                daemon.stop(signal.SIGKILL if kill else signal.SIGTERM)
                kills += kill
                before = fake.logins
                daemon.start()
                time.sleep(0.5)  # a first login, if the restart made one, is done by now
                restart_logins += fake.logins - before
                restarts += 1
        finally:
            stop.set()
            for thread in threads:
                if thread.ident is not None:
                    thread.join(timeout=60)
            daemon.stop()
        log = daemon.log()
        if os.environ.get("SOAK_LOG"):
            Path(os.environ["SOAK_LOG"]).write_text(log)
    print(f"\nuser-token soak: {minutes:g} min, {USER_LIFETIME:g}s tokens, {restarts} restarts ({kills} SIGKILL), "
          f"{reloads} reloads")
    applied = log.count("reload reason=SIGHUP")
    print_rows([
        ("token requests answered", json.dumps(dict(sorted(tally.answers.items()))), ""),
        ("refresh tokens presented twice (the server's reuse detection)", str(fake.reuse_detected), "0"),
        ("sign-ins asked for (/status sign_in_reason)", _sign_in_cell(tally.sign_ins), ""),
        ("refreshes whose answer never came (login timed out) / SIGKILLs: what may ask for a sign-in",
         f"{log.count('login timed out')} / {kills}", ""),
        ("invalid tokens served", str(len(tally.invalid)), "0"),
        ("access tokens issued (logins ok) / refresh grants", f"{fake.logins} / {fake.refreshes}", ""),
        ("reloads (timeout rewritten + SIGHUP) / applied by the daemon", f"{reloads} / {applied}", ""),
        ("restarts and reloads that served the kept token (restored from the state folder)",
         f"{log.count('restored provider=user')} of {restarts + reloads}", ""),
        ("logins within 0.5 s of a restart (forced refreshes by the clients included)", str(restart_logins), ""),
        ("tracebacks in the daemon's log", str(log.count("Traceback")), "0"),
    ])
    failed = fake.reuse_detected or tally.invalid or "Traceback" in log
    return 1 if failed else 0


def _sign_in_cell(sign_ins: Counter[str]) -> str:
    total = sum(sign_ins.values())
    return f"{total} ({', '.join(f'{reason} {n}' for reason, n in sorted(sign_ins.items()))})" if total else "0"


class StoppableRedis(Redis):
    """bench/fleet_run.py's redis-server, nothing saved (started again, it comes back empty, as after a failover
    to a node that had nothing), also stopped with SIGTERM."""

    def stop(self, sig: signal.Signals = signal.SIGTERM) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.send_signal(sig)
            self.process.wait(timeout=15)


def fleet_soak(minutes: float, rng: random.Random) -> int:
    """Three daemons in fleet mode sharing one user token through a real redis-server that is stopped (SIGTERM
    or SIGKILL) across renewals and started again empty; now and then a daemon is stopped, killed or reloaded."""
    fake = FakeAuthorizationServer(client_secret="soak-user-secret", lifetime=FLEET_LIFETIME)
    stop, tally = threading.Event(), UserTally()
    with FakeServer(fake.app) as server, tempfile.TemporaryDirectory(prefix="tokend-soak-fleet-") as tmp:
        directory = Path(tmp)
        (directory / "redis").mkdir()
        redis = StoppableRedis(directory / "redis")
        redis.start()
        key = write_secret(directory / "fleet_key", base64.b64encode(os.urandom(32)).decode())
        fleet = (f'\n[fleet]\nredis_url = "redis://127.0.0.1:{redis.port}"\nnamespace = "soak"\nlease = 2\n'
                 f'timeout = 0.5\nretry_after = 1\nencryption_key = {{ file = "{key}" }}\n')
        first = fake.sign_in()
        daemons = [UserDaemon(*user_config(directory / f"daemon-{index}", server.url, fake.client_id, first,
                                           LOGIN_TIMEOUT, fleet)) for index in range(3)]
        outages = restarts = kills = reloads = 0
        outage_seconds = 0.0
        threads = [threading.Thread(target=ask_tokens, args=(daemons, fake, tally, rng.random(), stop))
                   for _ in range(4)]
        threads.append(threading.Thread(target=watch_sign_ins, args=(daemons, tally, stop)))
        ended_at = time.monotonic() + minutes * 60
        try:
            for daemon in daemons:
                daemon.start()
            for thread in threads:
                thread.start()
            while time.monotonic() < ended_at:
                time.sleep(rng.uniform(3, 8))
                if any(daemon.sign_in_reason() is not None for daemon in daemons):
                    # A person signs in again: a new refresh token for every daemon, no record kept anywhere.
                    for daemon in daemons:
                        daemon.stop()
                    redis.command("FLUSHALL")
                    first = fake.sign_in()
                    for daemon in daemons:
                        write_secret(daemon.config.parent / "refresh_token", first)
                        (daemon.config.parent / "state" / "user.record").unlink(missing_ok=True)
                        daemon.start()
                    continue
                action = rng.random()
                if action < 0.5:  # Redis down across one or more renewals, then back empty
                    redis.stop(signal.SIGKILL if rng.random() < 0.5 else signal.SIGTERM)
                    down = rng.uniform(2, 3 * FLEET_LIFETIME)
                    time.sleep(down)
                    redis.start()
                    outages += 1
                    outage_seconds += down
                elif action < 0.75:
                    daemon = rng.choice(daemons)
                    retime(daemon.config, LOGIN_TIMEOUT + rng.choice([0, 0.5, 1]))
                    daemon.reload()
                    reloads += 1
                else:
                    daemon = rng.choice(daemons)
                    kill = rng.random() < 0.3
                    daemon.stop(signal.SIGKILL if kill else signal.SIGTERM)
                    daemon.start()
                    restarts += 1
                    kills += kill
            # Redis up and a lifetime for every daemon to catch up: all serve the fleet's token again.
            recovered = 0
            deadline = time.monotonic() + 4 * FLEET_LIFETIME
            while time.monotonic() < deadline:
                recovered = sum(_serves(daemon) for daemon in daemons)
                if recovered == len(daemons):
                    break
                time.sleep(0.5)
        finally:
            stop.set()
            for thread in threads:
                if thread.ident is not None:
                    thread.join(timeout=60)
            for daemon in daemons:
                daemon.stop()
            redis.stop()
        log = "".join(daemon.log() for daemon in daemons)
        if os.environ.get("SOAK_LOG"):
            for index, daemon in enumerate(daemons):
                Path(f"{os.environ['SOAK_LOG']}.{index}").write_text(daemon.log())
    print(f"\nfleet user-token soak: {minutes:g} min, 3 daemons, {FLEET_LIFETIME:g}s tokens, {outages} Redis "
          f"outages ({outage_seconds:.0f} s down in all), {restarts} restarts ({kills} SIGKILL), {reloads} reloads")
    print_rows([
        ("token requests answered", json.dumps(dict(sorted(tally.answers.items()))), ""),
        ("refresh tokens presented twice (the server's reuse detection)", str(fake.reuse_detected), "0"),
        ("sign-ins asked for (/status sign_in_reason)", _sign_in_cell(tally.sign_ins), ""),
        ("invalid tokens served", str(len(tally.invalid)), "0"),
        ("access tokens issued (logins ok) / refresh grants", f"{fake.logins} / {fake.refreshes}", ""),
        ("live refresh tokens at the server at the end", str(len(fake.live_refresh_tokens())), "1"),
        ("daemons serving the fleet's token at the end", f"{recovered} of {len(daemons)}", "all"),
        ("tracebacks in the daemons' logs", str(log.count("Traceback")), "0"),
    ])
    failed = fake.reuse_detected or tally.invalid or "Traceback" in log or recovered < len(daemons)
    return 1 if failed else 0


def _serves(daemon: UserDaemon) -> bool:
    with contextlib.suppress(httpx.TransportError):
        return httpx.get(f"{daemon.base}/token/user", headers=HEADERS).status_code == 200
    return False


if __name__ == "__main__":
    sys.exit(main())
