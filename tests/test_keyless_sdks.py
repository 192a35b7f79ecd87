"""Cloud SDKs from PyPI, run by `tokend exec`, through the metadata endpoints backed by keyless providers:
google-auth's default(), compute_engine.Credentials and fetch_id_token through [metadata.gce] backed by
workload identity and by impersonation; azure-identity's ManagedIdentityCredential through [metadata.azure]
backed by Entra's federated credential."""

from __future__ import annotations

import base64
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from tests.daemon import Daemon, free_port, tokend_command
from tests.test_outputs_gce import ASK as GOOGLE_ASK
from tokend.testing import FakeEntraFederated, FakeGoogleFederation, FakeOIDCIssuer, FakeServer

SA = "deployer@demo-project.iam.gserviceaccount.com"


def _start(tmp_path: Path, providers: str) -> Daemon:
    config = tmp_path / "tokend.toml"
    config.write_text(f'[server]\nhost = "127.0.0.1"\nport = {free_port()}\n\n{providers}')
    daemon = Daemon(config, log_path=tmp_path / "daemon.log")
    daemon.start()
    return daemon


def _exec(daemon: Daemon, home: Path, code: str, *args: str) -> str:
    env = {key: value for key, value in os.environ.items()
           if not key.startswith(("GOOGLE_", "GCE_", "CLOUDSDK_", "AZURE_", "IDENTITY_", "MSI_"))}
    env.update(HOME=str(home), CLOUDSDK_CONFIG=str(home / "gcloud"))
    asked = subprocess.run(tokend_command("--config", str(daemon.config), "exec", "--", sys.executable, "-c", code,
                                          *args), capture_output=True, text=True, timeout=120, env=env, check=False)
    assert asked.returncode == 0, asked.stderr
    return asked.stdout


def _claims(jwt: str) -> dict[str, object]:
    part = jwt.split(".")[1]
    claims: dict[str, object] = json.loads(base64.urlsafe_b64decode(part + "=" * (-len(part) % 4)))
    return claims


@pytest.mark.parametrize("backing", ["workload_identity", "impersonation"])
def test_google_auth_through_the_metadata_server(tmp_path: Path, issuer: FakeOIDCIssuer, backing: str) -> None:
    google = FakeGoogleFederation(issuer)
    token_file = tmp_path / "token"
    issuer.write(token_file, google.allowed_audience)
    with FakeServer(google.app) as server:
        federated = f"""
[providers.federated]
kind = "google_workload_identity"
audience = "{google.pool_provider}"
subject_token = {{ file = "{token_file}" }}
sts_url = "{server.url}/v1/token"
iam_url = "{server.url}"
"""
        if backing == "workload_identity":
            providers = federated + f'service_account = "{SA}"\n'
            name = "federated"
        else:
            providers = federated + f"""
[providers.deployer]
kind = "google_impersonation"
source = "federated"
service_account = "{SA}"
iam_url = "{server.url}"
"""
            name = "deployer"
        daemon = _start(tmp_path, providers + f"""
[metadata.gce]
listen = "127.0.0.1:{free_port()}"
provider = "{name}"
project_id = "demo-project"
""")
        try:
            answer = json.loads(_exec(daemon, tmp_path, GOOGLE_ASK))
        finally:
            daemon.kill()
    assert answer["kind"] == "google.auth.compute_engine.credentials"
    assert (answer["project"], answer["email"]) == ("demo-project", SA)
    assert google.is_valid(answer["token"]) and google.is_valid(answer["scoped"])
    assert answer["scoped"] != answer["token"]
    claims = _claims(answer["id_token"])
    assert (claims["aud"], claims["email"]) == ("https://run.example", SA)


def test_managed_identity_credential_through_a_federated_credential(tmp_path: Path, issuer: FakeOIDCIssuer) -> None:
    entra = FakeEntraFederated(issuer)
    token_file = tmp_path / "azure-identity-token"
    issuer.write(token_file, "api://AzureADTokenExchange")
    resource = "https://management.azure.com"
    with FakeServer(entra.app) as server:
        daemon = _start(tmp_path, f"""
[providers.arm]
kind = "oauth2_client_credentials"
token_url = "{server.url}{entra.token_path}"
client_id = "{entra.client_id}"
auth_method = "client_assertion"
client_assertion = {{ file = "{token_file}" }}
scope = "{resource}/.default"

[metadata.azure]
listen = "127.0.0.1:{free_port()}"
resources = {{ "{resource}" = "arm" }}
""")
        try:
            ask = ("import sys; from azure.identity import ManagedIdentityCredential\n"
                   "print(ManagedIdentityCredential().get_token(sys.argv[1]).token)\n")
            token = _exec(daemon, tmp_path, ask, f"{resource}/.default").strip()
        finally:
            daemon.kill()
    assert entra.is_valid(token)
