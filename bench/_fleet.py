"""Many providers for bench/run.py: fake upstreams that record every login, and configs of any size for them.

The fakes of tokend.testing hold one set of credentials each. Here every provider of a kind logs in with
that kind's set, but under its own path prefix (`{fake}/p/{index}/token`), which a thin ASGI layer strips
before the fake sees the request and records after the fake answered: each login is a real one (a POST
the fake checks and answers with a fresh token), and the record says which provider made it, when, and
with what outcome. Every provider reads its secrets from its own files, as a real deployment would.
"""

from __future__ import annotations

import contextlib
import json
import threading
import time
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from statistics import fmean
from typing import Any

# The kinds the bench mixes, in the order the mix cycles through them; the last two never log in.
KINDS = ("felloh", "fintech_studios", "oauth2_client_credentials", "http", "flotiq", "static")
LOGIN_KINDS = KINDS[:4]
_SHORT = {"felloh": "felloh", "fintech_studios": "fts", "oauth2_client_credentials": "oauth2", "http": "http",
          "flotiq": "flotiq", "static": "static"}
_LOGIN_PATHS = ("/token", "/auth/token", "/oauth/token", "/session")  # where each fake takes its logins


@dataclass(frozen=True)
class Login:
    at: float  # Unix time the fake answered
    index: int  # the provider's index (its path prefix)
    status: int


class _Recorder:
    """ASGI: `/p/{index}/rest` reaches the wrapped fake as `/rest`; each answered login is written down."""

    def __init__(self, app: Any, out: Any, lock: threading.Lock) -> None:
        self._app, self._out, self._lock = app, out, lock

    async def __call__(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        index = -1
        if scope["type"] == "http" and scope["path"].startswith("/p/"):
            number, _, rest = scope["path"][3:].partition("/")
            index = int(number)
            scope = {**scope, "path": f"/{rest}", "raw_path": f"/{rest}".encode()}
        status = 0

        async def send_noting_status(message: dict[str, Any]) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
            await send(message)

        await self._app(scope, receive, send_noting_status)
        if scope["type"] == "http" and scope["method"] == "POST" and scope["path"] in _LOGIN_PATHS:
            with self._lock:
                self._out.write(f"{time.time():.4f} {index} {status}\n")
                self._out.flush()


@contextlib.contextmanager
def serve_fleet_fakes(lifetime: float, record: Path) -> Iterator[dict[str, Any]]:
    """One fake per kind that logs in, tokens living `lifetime` seconds, logins written to `record`.

    Yields what a config needs: each fake's base URL and the credentials it accepts.
    """
    from tokend.testing import FakeFelloh, FakeFintechStudios, FakeOAuth2, FakeServer, FakeTokenAPI

    felloh, fts = FakeFelloh(lifetime=lifetime), FakeFintechStudios(lifetime=lifetime)
    oauth2, token_api = FakeOAuth2(lifetime=lifetime), FakeTokenAPI(lifetime=lifetime)
    lock = threading.Lock()
    with record.open("a") as out, contextlib.ExitStack() as stack:
        urls = [stack.enter_context(FakeServer(_Recorder(fake.app, out, lock))).url
                for fake in (felloh, fts, oauth2, token_api)]
        yield {
            "urls": dict(zip(LOGIN_KINDS, urls, strict=True)),
            "secrets": {
                "felloh_public_key": felloh.public_key, "felloh_private_key": felloh.private_key,
                "fts_api_key": fts.api_key, "fts_password": fts.password, "fts_email": fts.email,
                "oauth2_client_id": oauth2.client_id, "oauth2_client_secret": oauth2.client_secret,
                "http_user": token_api.user, "http_password": token_api.password,
                "flotiq_api_key": "bench-flotiq-key", "static_key": "bench-static-key",
            },
        }


def read_logins(record: Path) -> list[Login]:
    logins = []
    for line in record.read_text().splitlines():
        at, index, status = line.split()
        logins.append(Login(float(at), int(index), int(status)))
    return logins


def mix(total: int, kinds: tuple[str, ...] = KINDS, weights: tuple[int, ...] = (2, 2, 2, 2, 1, 1)) -> list[str]:
    """`total` kinds in the proportions of `weights` (by default a fifth each for the four that log in,
    a tenth each for the two static ones), interleaved, so that any prefix of the list is a mix too."""
    pattern = [kind for kind, weight in zip(kinds, weights, strict=True) for _ in range(weight)]
    return [pattern[i % len(pattern)] for i in range(total)]


@dataclass(frozen=True)
class Provider:
    name: str
    kind: str
    index: int  # its path prefix at its fake, and so its number in the login records


def write_fleet_config(directory: Path, fakes: dict[str, Any], kinds: list[str], *, port: int,
                       first_index: int = 0) -> tuple[Path, list[Provider]]:
    """A config with one provider per entry of `kinds`, on `port`; returns it and the providers.

    Every provider has its own secret files (so the daemon watches as many files as a real fleet would)
    and its own path prefix at its fake, `first_index` onwards, so that several configs can share fakes.
    """
    directory.mkdir(parents=True, exist_ok=True)
    secrets = fakes["secrets"]
    tables = [f'[server]\nhost = "127.0.0.1"\nport = {port}\n']
    providers = []
    for offset, kind in enumerate(kinds):
        index = first_index + offset
        name = f"{_SHORT[kind]}-{index}"
        providers.append(Provider(name, kind, index))
        url = f"{fakes['urls'].get(kind, '')}/p/{index}"

        def secret(field: str, value: str, name: str = name) -> str:
            path = directory / f"{name}.{field}"
            path.touch(mode=0o600)
            path.write_text(value + "\n")
            return f"{{ file = {json.dumps(str(path))} }}"

        tables.append(f"[providers.{name}]\nkind = \"{kind}\"\n" + _fields(kind, url, secrets, secret))
    config = directory / "tokend.toml"
    config.write_text("\n".join(tables))
    return config, providers


def _fields(kind: str, url: str, s: dict[str, str], secret: Any) -> str:
    match kind:
        case "felloh":
            return (f'base_url = "{url}"\npublic_key = {secret("public_key", s["felloh_public_key"])}\n'
                    f'private_key = {secret("private_key", s["felloh_private_key"])}\n')
        case "fintech_studios":
            return (f'base_url = "{url}"\napi_key = {secret("api_key", s["fts_api_key"])}\n'
                    f'email = "{s["fts_email"]}"\npassword = {secret("password", s["fts_password"])}\n')
        case "oauth2_client_credentials":
            return (f'token_url = "{url}/oauth/token"\nclient_id = "{s["oauth2_client_id"]}"\n'
                    f'client_secret = {secret("client_secret", s["oauth2_client_secret"])}\n')
        case "http":
            return (f'url = "{url}/session"\nsecrets = {{ pw = {secret("password", s["http_password"])} }}\n'
                    f'headers = {{ X-Client = "demo" }}\njson = {{ user = "{s["http_user"]}", password = "{{pw}}" }}\n'
                    'token_pointer = "/result/session/key"\nexpiry_pointer = "/result/session/expiry"\n')
        case "flotiq":
            return f'base_url = "http://127.0.0.1:9"\napi_key = {secret("api_key", s["flotiq_api_key"])}\n'
        case "static":
            return f'key = {secret("key", s["static_key"])}\n'
    raise ValueError(kind)


# --- reading the records --------------------------------------------------------------------------------------


def logins_by_provider(logins: list[Login]) -> dict[int, list[float]]:
    """The times of each provider's successful logins, in order."""
    times: dict[int, list[float]] = {}
    for login in logins:
        if login.status == 200:
            times.setdefault(login.index, []).append(login.at)
    return {index: sorted(at) for index, at in times.items()}


def logins_per_second(logins: list[Login], since: float) -> Counter[int]:
    """How many successful logins fell in each second (of Unix time) from `since` on."""
    return Counter(int(login.at) for login in logins if login.status == 200 and login.at >= since)


class _Fixed:
    """A stand-in for random.Random whose uniform() returns the point `share` of the way from a to b."""

    def __init__(self, share: float) -> None:
        self._share = share

    def uniform(self, a: float, b: float) -> float:
        return a + (b - a) * self._share


def mean_renewal_interval(kind: str, lifetime: float, steps: int = 200) -> float:
    """The mean time between two renewals of a provider whose fake issues `lifetime`-second tokens, by the
    daemon's own policy (tokend.renewal.policy.renewal_delay) averaged over its jitter.

    Felloh, FinTech Studios and the `http` fake write the expiry as whole Unix seconds, as the real APIs do,
    so the lifetime the daemon sees is `lifetime` less the fraction of a second cut off: uniform in
    (lifetime - 1, lifetime]. The OAuth 2 fake answers `expires_in`, whole seconds from now: `lifetime`.
    """
    from tokend.renewal.policy import renewal_delay

    points = [(i + 0.5) / steps for i in range(steps)]
    lifetimes = [lifetime] if kind == "oauth2_client_credentials" else [lifetime - cut for cut in points]
    return fmean(renewal_delay(seen, _Fixed(share)) for seen in lifetimes for share in points)
