"""`tokend demo`: the real daemon against the built-in fake providers, so a newcomer sees it work.

The fakes (tokend.testing) run in background threads; the daemon runs as `tokend run` would, from a
config file written to a private temporary directory, with its secrets in 0600 files. Beside the three
small APIs, a fake GitHub shows a login signed with a private key (a GitHub App's installation token), a fake
STS an AWS role served to the AWS CLI and SDKs through `[metadata.aws]`, and a keyless chain to Google (a
platform's OIDC token file, rotated on disk -> Google's STS -> a service account) through `[metadata.gce]`.
"""

from __future__ import annotations

import base64
import contextlib
import os
import socket
import tempfile
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx

from tokend.api.sockets import listen_tcp
from tokend.config.discovery import DEFAULT_PORT
from tokend.config.settings import Settings
from tokend.errors import TokendError
from tokend.renewal.policy import (
    FIRST_RENEW_WINDOW,
    RENEW_AT,
    RENEW_BEFORE_EXPIRY,
    RENEW_FLOOR,
    RENEW_JITTER,
    RENEW_LATEST,
)
from tokend.testing import (
    FakeAuthorizationServer,
    FakeGitHub,
    FakeGoogleFederation,
    FakeOIDCIssuer,
    FakeProviders,
    FakeServer,
    FakeSTS,
    serve_fakes,
    write_fake_config,
)

AWS_ROLE = "arn:aws:iam::123456789012:role/demo"
AWS_REGION = "us-east-1"


@dataclass
class Demo:
    settings: Settings
    sock: socket.socket
    banner: list[str]
    config_path: Path  # the demo's config file, read again on SIGHUP or `tokend reload`
    upstreams: dict[str, str]  # provider name -> an upstream URL that takes its credential
    url: str
    sts_url: str  # the fake STS, which answers GetCallerIdentity to whoever signed with the demo role's session
    google_api: str  # a fake Google API that takes the keyless chain's tokens
    metadata: dict[str, str]  # "aws", "gce" -> the host:port of that metadata endpoint


@contextlib.contextmanager
def demo_environment(*, port: int | None, lifetime: float) -> Iterator[Demo]:
    """Fakes started, a config written for them, the daemon's socket bound: all it needs is to be served.

    With no port given, 8765 if it is free, else any free port (a real tokend may already hold 8765).
    """
    github = FakeGitHub(lifetime=lifetime)
    authorization = FakeAuthorizationServer(lifetime=lifetime)
    sts = FakeSTS()  # AWS's own session lengths (an hour): the CLI and SDKs refresh anything shorter at once
    issuer = FakeOIDCIssuer(lifetime=max(lifetime, 60.0) / 0.8)
    google = FakeGoogleFederation(issuer, lifetime=lifetime)
    with (serve_fakes(lifetime=lifetime) as fakes, FakeServer(github.app) as github_server,
          FakeServer(authorization.app) as users, FakeServer(sts.app) as sts_server,
          FakeServer(issuer.app) as issuer_server, FakeServer(google.app) as google_server,
          tempfile.TemporaryDirectory(prefix="tokend-demo-") as tmp):
        issuer.url = issuer_server.url
        # Bind first, so that a free port is known before the config (and `tokend get`) names it.
        sock = _listen(port)
        actual_port = sock.getsockname()[1]
        metadata = {"aws": f"127.0.0.1:{_free_port()}", "gce": f"127.0.0.1:{_free_port()}"}
        with _rotating_token_file(Path(tmp) / "oidc_token", issuer, google.allowed_audience,
                                  every=max(lifetime, 60.0)) as token_file:
            extra = (_github_app(Path(tmp), github, github_server.url) + user_token_config(Path(tmp), users.url)
                     + _aws_role(Path(tmp), sts, sts_server.url)
                     + _keyless_google(token_file, google, google_server.url) + _metadata(metadata))
            config_path = write_fake_config(Path(tmp), fakes, actual_port, extra=extra)
            settings = Settings.load(config_path)
            lines = banner(config_path, actual_port, fakes, lifetime, users=users.url, sts=sts_server.url,
                           google=google_server.url + google.protected_path)
            if port is None and actual_port != DEFAULT_PORT:
                # Else a `tokend get` without --url would ask whatever holds 8765, and be puzzled by its answer.
                lines[:0] = [f"tokend demo: port {DEFAULT_PORT} is in use (another tokend?), so this demo listens "
                             f"on port {actual_port}: give clients --url http://127.0.0.1:{actual_port}, as below.",
                             ""]
            # Where each provider's served credential is accepted, for `tokend demo --check`.
            upstreams = {"felloh": fakes.felloh_url + fakes.felloh.protected_path,
                         "fts": fakes.fintech_studios_url + fakes.fintech_studios.protected_path,
                         "flotiq": fakes.flotiq_url + fakes.flotiq.protected_path,
                         "github": github_server.url + github.protected_path}
            yield Demo(settings, sock, lines, config_path, upstreams, f"http://127.0.0.1:{actual_port}",
                       sts_server.url, google_server.url + google.protected_path, metadata)


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port: int = probe.getsockname()[1]
        return port


def _secret_file(path: Path, value: str) -> Path:
    path.touch(mode=0o600)
    path.write_text(value)
    return path


def _aws_role(directory: Path, sts: FakeSTS, url: str) -> str:
    """An AWS role assumed with an IAM user's key pair (kept in 0600 files), against the fake STS."""
    key_id, secret = sts.add_user("demo")
    sts.add_role(AWS_ROLE)
    return (f'\n[providers.aws]\nkind = "aws_assume_role"\nrole_arn = "{AWS_ROLE}"\nsts_url = "{url}"\n'
            f'access_key_id = {{ file = "{_secret_file(directory / "aws_access_key_id", key_id)}" }}\n'
            f'secret_access_key = {{ file = "{_secret_file(directory / "aws_secret_access_key", secret)}" }}\n')


def _keyless_google(token_file: Path, google: FakeGoogleFederation, url: str) -> str:
    """Keyless: the platform's OIDC token file exchanged at Google's STS, then a service account's token."""
    account = min(google.service_accounts)
    return (f'\n[providers.gcp]\nkind = "google_workload_identity"\naudience = "{google.pool_provider}"\n'
            f'subject_token = {{ file = "{token_file}" }}\nsts_url = "{url}/v1/token"\niam_url = "{url}"\n'
            f'service_account = "{account}"\n')


def _metadata(listen: dict[str, str]) -> str:
    return (f'\n[metadata.aws]\nlisten = "{listen["aws"]}"\nprovider = "aws"\n'
            f'\n[metadata.gce]\nlisten = "{listen["gce"]}"\nprovider = "gcp"\n')


@contextlib.contextmanager
def _rotating_token_file(path: Path, issuer: FakeOIDCIssuer, audience: str, *, every: float) -> Iterator[Path]:
    """A platform's token file (a Kubernetes projected service account token): a new token written over it
    every `every` seconds, at 80 % of each one's life, as the kubelet rotates it."""
    issuer.write(path, audience)
    stop = threading.Event()

    def rotate() -> None:
        while not stop.wait(every):
            issuer.write(path, audience)

    rotating = threading.Thread(target=rotate, name="demo-token-file", daemon=True)
    rotating.start()
    try:
        yield path
    finally:
        stop.set()
        rotating.join(timeout=5)


def _github_app(directory: Path, github: FakeGitHub, url: str) -> str:
    """The demo's GitHub App provider: its private key in a 0600 file, as the app's page downloads it."""
    key = directory / "github_app.pem"
    key.touch(mode=0o600)
    key.write_text(github.private_key)
    return (f'[providers.github]\nkind = "github_app"\nclient_id = "{github.client_id}"\n'
            f'installation_id = {min(github.installations)}\nprivate_key = {{ file = "{key}" }}\n'
            f'base_url = "{url}"\nproxy = true\n')


def user_token_config(directory: Path, url: str) -> str:
    """A user token waiting for its user (`tokend login user`), kept in a state folder of the demo's own."""
    key = directory / "state_key"
    key.touch(mode=0o600)
    key.write_text(base64.b64encode(os.urandom(32)).decode() + "\n")
    return f"""
[state]
path = "{directory / 'state'}"
encryption_key = {{ file = "{key}" }}

[providers.user]
kind = "oauth2_refresh_token"
token_url = "{url}/oauth/token"
client_id = "demo-user-app"
auth_method = "none"
scope = "openid offline_access"
device_authorization_url = "{url}/oauth/device"
revocation_url = "{url}/oauth/revoke"
"""


def _listen(port: int | None) -> socket.socket:
    if port is not None:
        return listen_tcp("127.0.0.1", port)
    try:
        return listen_tcp("127.0.0.1", DEFAULT_PORT)
    except TokendError:
        return listen_tcp("127.0.0.1", 0)


def banner(config: Path, port: int, fakes: FakeProviders, lifetime: float, *, users: str, sts: str,
           google: str) -> list[str]:
    base = f"http://127.0.0.1:{port}"
    header = "-H 'X-Tokend-Request: 1'"
    felloh_token = f"$(curl -s {header} '{base}/token/felloh?format=raw')"
    first, later = (renewal_window(lifetime, *FIRST_RENEW_WINDOW),
                    renewal_window(lifetime, RENEW_AT - RENEW_JITTER, RENEW_AT + RENEW_JITTER))
    return [
        f"tokend demo: four fake providers (one a GitHub App, whose login is signed with a private key), a "
        f"keyless Google service account (a rotating OIDC token file exchanged at a fake Google STS) and a "
        f"user token, whose tokens live {lifetime:g}s, and an AWS role (hour-long sessions from a fake STS). "
        f"Each token is renewed first at "
        f"{_span(*first)} (a random {FIRST_RENEW_WINDOW[0]:.0%}-{FIRST_RENEW_WINDOW[1]:.0%} of its "
        f"lifetime, so that providers started together do not renew together), then at {_span(*later)} "
        f"into each new token's life. Config: {config}",
        "",
        "Try, in another terminal:",
        f"  curl -s {header} {base}/token/felloh",
        f"  curl -s {header} '{base}/token/fts?format=raw'",
        f"  curl -s {header} {base}/token/flotiq",
        f"  curl -s {header} {base}/token/github",
        f"  curl -s {header} {base}/status",
        f"  tokend get felloh --url {base}",
        "Use a token against the fake Felloh API:",
        f'  curl -s -H "Authorization: Bearer {felloh_token}" {fakes.felloh_url}{fakes.felloh.protected_path}',
        "Or let tokend add the GitHub App's installation token itself (its proxy):",
        f"  curl -s {header} {base}/proxy/github/installation/repositories",
        "AWS's and Google's own tools, with no key in the program (tokend exec points them at tokend):",
        f"  tokend exec --url {base} -- aws sts get-caller-identity --endpoint-url {sts} --region {AWS_REGION}",
        f"  tokend exec --url {base} -- python -c 'import google.auth, google.auth.transport.requests as r; "
        f'print(r.AuthorizedSession(google.auth.default()[0]).get("{google}").text)\'',
        "The client snippets in docs/index.md (curl, Python, Node) run against this demo after:",
        f"  export TOKEND_URL={base} FELLOH_API={fakes.felloh_url} FTS_API={fakes.fintech_studios_url} "
        f"FLOTIQ_API={fakes.flotiq_url}",
        "Sign the user token in (a device login: tokend prints a code and waits for its approval):",
        f"  tokend login user --url {base}",
        f"  then open the page it prints and press Approve, or: curl -s -d user_code=CODE {users}/activate",
        f"  tokend get user --url {base}; tokend logout user --url {base}",
        "",
        "Each login and renewal shows below as a 'login provider=...' line. Press Ctrl-C to stop.",
        "",
    ]


def self_check(demo: Demo, *, timeout: float = 30.0) -> tuple[bool, list[str]]:
    """Once the demo is ready: each provider's token asked for through the local API, as a client would, and
    used against its fake upstream; the AWS role's and the keyless chain's asked for as their SDKs ask, through
    the metadata endpoints. Whether all passed, and one line per provider (never a token)."""
    with httpx.Client(base_url=demo.url, headers={"X-Tokend-Request": "1"}, timeout=10) as local:
        # Each token asked for, not /readyz: the user token, waiting for `tokend login user`, serves nothing yet.
        if not _ready(local, [*demo.upstreams, "aws", "gcp"], timeout):
            return False, [f"not ready within {timeout:g}s: {local.get('/readyz').text}"]
        results = [_check_one(local, name, upstream) for name, upstream in demo.upstreams.items()]
        results += [_check_aws(local, demo), _check_gce(demo)]
    return all(ok for ok, _ in results), [line for _, line in results]


def _ready(local: httpx.Client, names: list[str], timeout: float) -> bool:
    deadline = time.monotonic() + timeout
    while any(local.get(f"/token/{name}").status_code != 200 for name in names):
        if time.monotonic() > deadline:
            return False
        time.sleep(0.1)
    return True


def _check_one(local: httpx.Client, name: str, upstream_url: str) -> tuple[bool, str]:
    answer = local.get(f"/token/{name}")
    if answer.status_code != 200:
        return False, f"{name}: tokend answered {answer.status_code}: {answer.json().get('message')}"
    served = answer.json()
    upstream = httpx.get(upstream_url, headers=served["headers"], params=served["query"], timeout=10)
    what = f"{served['token_type']}, " + ("no expiry" if served["expires_in"] is None else
                                          f"expires in {served['expires_in']}s")
    if upstream.status_code != 200:
        return False, f"{name}: served ({what}), but the fake API refused it ({upstream.status_code})"
    return True, f"{name}: ok: served ({what}) and accepted by the fake API"


def _check_aws(local: httpx.Client, demo: Demo) -> tuple[bool, str]:
    """The role's session from the container credentials endpoint, as an AWS SDK under `tokend exec` gets it,
    signing the fake STS's GetCallerIdentity."""
    import hashlib

    from tokend.providers.aws.sigv4 import Keys, sign

    token = local.get("/metadata/environment").json()["environment"]["AWS_CONTAINER_AUTHORIZATION_TOKEN"]
    answer = httpx.get(f"http://{demo.metadata['aws']}/", headers={"Authorization": token}, timeout=10)
    if answer.status_code != 200:
        return False, f"aws: the container credentials endpoint answered {answer.status_code}"
    served = answer.json()
    body = b"Action=GetCallerIdentity&Version=2011-06-15"
    headers = sign("POST", demo.sts_url + "/", {"content-type": "application/x-www-form-urlencoded"},
                   Keys(served["AccessKeyId"], served["SecretAccessKey"], served["Token"]), region=AWS_REGION,
                   service="sts", payload_hash=hashlib.sha256(body).hexdigest())
    upstream = httpx.post(demo.sts_url + "/", content=body, headers=headers, timeout=10)
    what = f"aws, expires {served['Expiration']}, through [metadata.aws]"
    if upstream.status_code != 200 or f"assumed-role/{AWS_ROLE.rpartition('/')[2]}/" not in upstream.text:
        return False, f"aws: served ({what}), but the fake STS refused it ({upstream.status_code})"
    return True, f"aws: ok: served ({what}) and accepted by the fake API"


def _check_gce(demo: Demo) -> tuple[bool, str]:
    """The keyless chain's token from the GCE metadata endpoint, as google-auth asks for it."""
    path = "/computeMetadata/v1/instance/service-accounts/default/token"
    answer = httpx.get(f"http://{demo.metadata['gce']}{path}", headers={"Metadata-Flavor": "Google"}, timeout=10)
    if answer.status_code != 200:
        return False, f"gcp: the GCE metadata endpoint answered {answer.status_code}"
    served = answer.json()
    upstream = httpx.get(demo.google_api, headers={"Authorization": f"Bearer {served['access_token']}"}, timeout=10)
    what = f"Bearer, expires in {served['expires_in']}s, through [metadata.gce]"
    if upstream.status_code != 200:
        return False, f"gcp: served ({what}), but the fake API refused it ({upstream.status_code})"
    return True, f"gcp: ok: served ({what}) and accepted by the fake API"


def _span(low: float, high: float) -> str:
    return f"{low:g}s" if low == high else f"{low:g}-{high:g}s"


def renewal_window(lifetime: float, low: float, high: float) -> tuple[float, float]:
    """Seconds into a token's life between which a renewal drawn from [low, high] of it comes (policy's rule)."""
    latest = min(RENEW_LATEST * lifetime, lifetime - RENEW_BEFORE_EXPIRY)

    def bounded(share: float) -> float:
        return round(max(RENEW_FLOOR, min(share * lifetime, latest)), 1)

    return bounded(low), bounded(high)
