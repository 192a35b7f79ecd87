"""`tokend kube-credential`: real kubectl, with tokend as its exec plugin, against an API server over TLS
that takes only the provider's live tokens; after a renewal kubectl gets the new one."""

from __future__ import annotations

import base64
import json
import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.daemon import Daemon, tokend_command, write_config
from tests.kube_server import KubeServer
from tests.tools import require_tool
from tokend.testing import FakeProviders, serve_fakes

LIFETIME = 6.0  # renewed at about two thirds: a few seconds


@pytest.fixture
def kubectl() -> str:
    return require_tool("kubectl", "Debian: apt-get install kubernetes-client; or kubectl from kubernetes.io")


@pytest.fixture
def short_fakes() -> Iterator[FakeProviders]:
    with serve_fakes(lifetime=LIFETIME) as providers:
        yield providers


@pytest.fixture
def daemon(tmp_path: Path, short_fakes: FakeProviders) -> Iterator[Daemon]:
    started = Daemon(write_config(tmp_path, short_fakes), log_path=tmp_path / "daemon.log")
    started.start()
    yield started
    started.kill()


def _kubeconfig(path: Path, server: KubeServer, daemon: Daemon, api_version: str) -> Path:
    plugin = {"apiVersion": api_version, "command": sys.executable,
              "args": ["-m", "tokend", "--config", str(daemon.config), "kube-credential", "felloh"]}
    if api_version.endswith("/v1"):
        plugin["interactiveMode"] = "Never"  # required from v1 on
    config = {
        "apiVersion": "v1", "kind": "Config", "current-context": "tokend",
        "clusters": [{"name": "fake", "cluster": {
            "server": server.url,
            "certificate-authority-data": base64.b64encode(server.ca.cert_pem.bytes()).decode()}}],
        "users": [{"name": "tokend", "user": {"exec": plugin}}],
        "contexts": [{"name": "tokend", "context": {"cluster": "fake", "user": "tokend"}}],
    }
    path.write_text(json.dumps(config))  # YAML is a superset of JSON
    return path


def _minor_version(kubectl: str) -> int:
    shown = subprocess.run([kubectl, "version", "--client", "-o", "json"], capture_output=True, text=True,
                           timeout=60, check=False)
    return int("".join(char for char in json.loads(shown.stdout)["clientVersion"]["minor"] if char.isdigit()))


def _kubectl(kubectl: str, kubeconfig: Path, home: Path) -> subprocess.CompletedProcess[str]:
    env = {key: value for key, value in os.environ.items() if not key.startswith(("KUBE", "TOKEND_"))}
    return subprocess.run([kubectl, "--kubeconfig", str(kubeconfig), "get", "--raw", "/api"], capture_output=True,
                          text=True, timeout=60, env={**env, "HOME": str(home)}, check=False)


@pytest.mark.parametrize("api_version", ["client.authentication.k8s.io/v1", "client.authentication.k8s.io/v1beta1"])
def test_kubectl_gets_the_token_and_after_a_renewal_the_new_one(
    kubectl: str, daemon: Daemon, short_fakes: FakeProviders, tmp_path: Path, api_version: str
) -> None:
    if api_version.endswith("/v1") and _minor_version(kubectl) < 22:
        pytest.skip("this kubectl predates client.authentication.k8s.io/v1 (kubectl 1.22; Debian bookworm's "
                    "kubernetes-client is 1.20): v1beta1 is tested with it")
    with KubeServer(short_fakes.felloh.is_valid) as server:
        kubeconfig = _kubeconfig(tmp_path / "kubeconfig", server, daemon, api_version)
        first = daemon.get("/token/felloh").json()["token"]
        answered = _kubectl(kubectl, kubeconfig, tmp_path)
        assert answered.returncode == 0, answered.stderr
        assert json.loads(answered.stdout)["kind"] == "APIVersions"
        assert server.tokens[-1] in (first, daemon.get("/token/felloh").json()["token"])
        seen = server.tokens[-1]
        daemon.wait_until(lambda: daemon.get("/token/felloh").json()["token"] != seen, timeout=LIFETIME * 4,
                          what="the renewal")
        again = _kubectl(kubectl, kubeconfig, tmp_path)
        assert again.returncode == 0, again.stderr
        assert server.tokens[-1] != seen and short_fakes.felloh.is_valid(server.tokens[-1])


def _plugin(daemon: Daemon, exec_info: str | None) -> subprocess.CompletedProcess[str]:
    env = {key: value for key, value in os.environ.items() if key != "KUBERNETES_EXEC_INFO"}
    if exec_info is not None:
        env["KUBERNETES_EXEC_INFO"] = exec_info
    return subprocess.run(tokend_command("--config", str(daemon.config), "kube-credential", "felloh"),
                          capture_output=True, text=True, timeout=60, env=env, check=False)


def test_the_exec_credential_as_asked(daemon: Daemon) -> None:
    plain = _plugin(daemon, None)
    assert plain.returncode == 0, plain.stderr
    credential = json.loads(plain.stdout)
    token = daemon.get("/token/felloh").json()
    assert credential == {"apiVersion": "client.authentication.k8s.io/v1", "kind": "ExecCredential",
                          "status": {"token": token["token"], "expirationTimestamp": token["expires_at"]}}
    asked = json.dumps({"apiVersion": "client.authentication.k8s.io/v1beta1", "kind": "ExecCredential",
                        "spec": {"interactive": False}})
    assert json.loads(_plugin(daemon, asked).stdout)["apiVersion"] == "client.authentication.k8s.io/v1beta1"
    unknown = _plugin(daemon, json.dumps({"apiVersion": "client.authentication.k8s.io/v2"}))
    assert unknown.returncode != 0 and "v2" in unknown.stderr and unknown.stdout == ""
    assert _plugin(daemon, "not json").returncode != 0


def test_exec_info_is_read_as_strictly_as_the_other_helpers_requests(daemon: Daemon) -> None:
    deep = '{"apiVersion": "client.authentication.k8s.io/v1", "spec": ' + "[" * 20_000 + "]" * 20_000 + "}"
    nested = _plugin(daemon, deep)
    assert nested.returncode != 0 and nested.stdout == "" and "Traceback" not in nested.stderr
    assert "nested" in nested.stderr
    twice = _plugin(daemon, '{"apiVersion": "client.authentication.k8s.io/v1", '
                            '"apiVersion": "client.authentication.k8s.io/v1beta1"}')
    assert twice.returncode != 0 and twice.stdout == "" and "twice" in twice.stderr
    smuggled = _plugin(daemon, json.dumps({"apiVersion": "client.authentication.k8s.io/v1\u2028"}))
    assert smuggled.returncode != 0 and smuggled.stdout == ""
    assert _plugin(daemon, json.dumps(["client.authentication.k8s.io/v1"])).returncode != 0
