"""The config file: loading, secret references, and errors that name the provider and the field."""

from __future__ import annotations

import base64
import re
from pathlib import Path

import pytest

from tokend.config.audit import audit
from tokend.config.settings import Settings
from tokend.errors import ConfigError

FELLOH = '[providers.felloh]\nkind = "felloh"\nenvironment = "sandbox"\npublic_key = "pub-1234"\n'


def load(tmp_path: Path, text: str) -> Settings:
    path = tmp_path / "tokend.toml"
    path.write_text(text)
    return Settings.load(path)


def problems(tmp_path: Path, text: str) -> list[str]:
    with pytest.raises(ConfigError) as caught:
        load(tmp_path, text)
    return caught.value.problems


def test_secret_references_resolve_from_env_file_credential_and_plain(tmp_path, monkeypatch) -> None:  # type: ignore[no-untyped-def]
    (tmp_path / "fts_password").write_text("from-a-file\n")
    (tmp_path / "creds").mkdir()
    (tmp_path / "creds" / "fts_key").write_text("from-systemd")
    for secret_file in (tmp_path / "fts_password", tmp_path / "creds" / "fts_key"):
        secret_file.chmod(0o600)  # else tokend's audit reports them as readable by every user
    monkeypatch.setenv("CREDENTIALS_DIRECTORY", str(tmp_path / "creds"))
    monkeypatch.setenv("FELLOH_PRIVATE", "from-env")
    settings = load(tmp_path, FELLOH + f"""private_key = {{ env = "FELLOH_PRIVATE" }}
[providers.fts]
kind = "fintech_studios"
base_url = "https://fts.example.com/"
api_key = {{ credential = "fts_key" }}
email = "ops@example.com"
password = {{ file = "{tmp_path / 'fts_password'}" }}
""")
    felloh, fts = settings.providers["felloh"], settings.providers["fts"]
    assert felloh.url == "https://sandbox.felloh.com"
    assert felloh.private_key.get() == "from-env" and felloh.public_key.get() == "pub-1234"
    assert fts.api_key.get() == "from-systemd" and fts.password.get() == "from-a-file"
    assert fts.url == "https://fts.example.com"
    assert [str(finding) for finding in audit(settings)] == [
        'warning: provider "felloh", field "public_key": a plain-string secret in the config file; '
        'prefer { env = "..." }, { file = "..." } or { credential = "..." }'
    ]
    assert "pub-1234" not in repr(settings) and "from-env" not in repr(settings)


def test_defaults(tmp_path) -> None:  # type: ignore[no-untyped-def]
    settings = load(tmp_path, '[providers.ro]\nkind = "flotiq"\napi_key = "k"\n'
                    '[providers.prod]\nkind = "felloh"\nenvironment = "production"\npublic_key = "a"\n'
                    'private_key = "b"\n')
    assert (settings.server.host, settings.server.port) == ("127.0.0.1", 8765)
    ro = settings.providers["ro"]
    assert ro.base_url == "https://api.flotiq.com" and ro.url is None and ro.token_type == "api_key"  # no login
    assert (ro.timeout, ro.min_refresh_interval, ro.max_lifetime) == (10.0, 10.0, 86400.0)
    assert settings.providers["prod"].url == "https://api.felloh.com"


def test_environment_overrides_the_file(tmp_path, monkeypatch) -> None:  # type: ignore[no-untyped-def]
    monkeypatch.setenv("TOKEND_SERVER__PORT", "9100")
    assert load(tmp_path, "[server]\nport = 9000\n").server.port == 9100


def test_every_problem_is_named_by_provider_and_field(tmp_path) -> None:  # type: ignore[no-untyped-def]
    found = problems(tmp_path, """
[server]
host = "0.0.0.0"
[providers.felloh]
kind = "felloh"
public_key = { env = "TOKEND_TEST_UNSET" }
private_key = { file = "/nonexistent/secret" }
[providers.fts]
kind = "fintech_studios"
base_url = "http://fts.example.com"
api_key = "k"
email = "a@b.c"
pasword = "x"
[providers.odd]
kind = "vault"
[providers.nokind]
api_key = "k"
""")
    assert any(p.startswith('field "server": ') and "loopback" in p for p in found)
    from tokend.providers import PROVIDER_KINDS

    kinds = ", ".join(f'"{kind}"' for kind in PROVIDER_KINDS)
    assert kinds.startswith('"felloh", "fintech_studios", "flotiq", "oauth2_client_credentials", "http", "static"')
    expected = [
        'provider "felloh", field "public_key": environment variable TOKEND_TEST_UNSET is not set',
        'provider "felloh", field "private_key": secret file /nonexistent/secret does not exist',
        'provider "fts", field "base_url": \'http://fts.example.com\' must use https:// '
        "(plain http:// is allowed only for loopback hosts)",
        'provider "fts", field "password": is required but missing',
        'provider "fts", field "pasword": is not a known setting; did you mean password?',
        f'provider "odd": unknown kind "vault"; kind must be one of {kinds}',
        f'provider "nokind": kind is missing; it must be one of {kinds}',
    ]
    for problem in expected:
        assert problem in found, (problem, found)


def test_felloh_needs_an_environment_or_a_url(tmp_path) -> None:  # type: ignore[no-untyped-def]
    found = problems(tmp_path, '[providers.felloh]\nkind = "felloh"\npublic_key = "a"\nprivate_key = "b"\n')
    assert found == ['provider "felloh": set environment = "production" or "sandbox" (or base_url)']


def test_loopback_http_upstreams_are_allowed(tmp_path) -> None:  # type: ignore[no-untyped-def]
    for host in ("127.0.0.1:8080", "localhost", "[::1]:9000", "127.1.2.3"):
        text = f'[providers.f]\nkind = "flotiq"\napi_key = "k"\nbase_url = "http://{host}"\n'
        assert load(tmp_path, text).providers["f"].base_url == f"http://{host}"
    assert problems(tmp_path, '[providers.f]\nkind = "flotiq"\napi_key = "k"\nbase_url = "http://10.0.0.1"\n')


def test_remote_bind_needs_allow_remote_and_allowed_hosts(tmp_path) -> None:  # type: ignore[no-untyped-def]
    assert "allowed_hosts" in problems(tmp_path, '[server]\nhost = "0.0.0.0"\nallow_remote = true\n')[0]
    settings = load(tmp_path, '[server]\nhost = "0.0.0.0"\nallow_remote = true\nallowed_hosts = ["tokend"]\n')
    assert settings.server.allowed_hosts == ("tokend",)


def test_secret_values_never_appear_in_errors(tmp_path) -> None:  # type: ignore[no-untyped-def]
    found = problems(tmp_path, FELLOH + 'private_key = "s3cr3t-value"\ntimeout = "s3cr3t-other"\n')
    assert found == ['provider "felloh", field "timeout": Input should be a valid number, unable to parse string '
                     "as a number"]
    assert "s3cr3t" not in "".join(found)


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("[server\n", "is not valid TOML"),
        ('[providers.f]\nkind = "flotiq"\napi_key = ""\n', 'field "api_key": is empty'),
        ('[providers.f]\nkind = "flotiq"\napi_key = { vault = "x" }\n', 'must be { env = "NAME" }'),
        ('[providers.f]\nkind = "flotiq"\napi_key = { credential = "k" }\n', "CREDENTIALS_DIRECTORY"),
        ('[providers."bad name"]\nkind = "flotiq"\napi_key = "k"\n', "String should match pattern"),
    ],
)
def test_bad_values_are_explained(tmp_path, text, message) -> None:  # type: ignore[no-untyped-def]
    with pytest.raises(ConfigError) as caught:
        load(tmp_path, text)
    assert message in caught.value.message + " ".join(caught.value.problems)


def test_a_missing_file_is_a_config_error(tmp_path) -> None:  # type: ignore[no-untyped-def]
    with pytest.raises(ConfigError, match="not found"):
        Settings.load(tmp_path / "absent.toml")


def test_an_empty_secret_file_is_refused(tmp_path) -> None:  # type: ignore[no-untyped-def]
    (tmp_path / "key").write_text("\n")
    found = problems(tmp_path, f'[providers.f]\nkind = "flotiq"\napi_key = {{ file = "{tmp_path / "key"}" }}\n')
    assert found == [f'provider "f", field "api_key": secret file {tmp_path / "key"} is empty']


def test_the_example_config_is_valid(tmp_path, monkeypatch) -> None:  # type: ignore[no-untyped-def]
    example = (Path(__file__).parent.parent / "config.example.toml").read_text()
    (tmp_path / "felloh_private_key").write_text("sk-of-the-example\n")
    (tmp_path / "felloh_private_key").chmod(0o600)
    for name in ("FELLOH_PUBLIC_KEY", "FTS_API_KEY", "FTS_PASSWORD", "FLOTIQ_API_KEY"):
        monkeypatch.setenv(name, f"value-of-{name}")
    example = example.replace("/run/secrets/felloh_private_key", str(tmp_path / "felloh_private_key"))
    settings = load(tmp_path, example)
    assert sorted(settings.providers) == ["felloh", "flotiq", "fts"]
    assert audit(settings) == []
    # The commented-out examples of the generic kinds and of client keys are valid too, once uncommented
    # (lines that read as TOML: a [table] or a key = value).
    head, _, generic = example.partition("# --- any other token API")
    for name in ("BILLING_CLIENT_SECRET", "LEGACY_PASSWORD", "MAPS_API_KEY", "ME_REFRESH_TOKEN", "AWS_KEY_ID",
                 "AWS_SECRET"):
        monkeypatch.setenv(name, "x")
    monkeypatch.setenv("TOKEND_OPS_KEY", "an-ops-key-of-32-characters-long")
    client_key = tmp_path / "billing-app"
    client_key.write_text("a-billing-key-of-32-characters-x\n")
    client_key.chmod(0o600)
    generic = generic.replace("/etc/tokend/clients/billing-app", str(client_key))
    for name, value in (("redis_url", "redis://127.0.0.1:6379/0"), ("fleet_key", base64.b64encode(b"k" * 32).decode()),
                        ("state_key", base64.b64encode(b"s" * 32).decode())):
        (tmp_path / name).write_text(value + "\n")
        (tmp_path / name).chmod(0o600)
        generic = generic.replace(f"/etc/tokend/{name}", str(tmp_path / name))
    generic = _with_signing_keys(tmp_path, generic)
    uncommented = load(tmp_path, head + "#" + re.sub(r"(?m)^# (?=\[|[\w-]+ = )", "", generic))
    assert sorted(uncommented.providers) == ["aws", "billing", "felloh", "flotiq", "fts", "gcp", "gcs", "github",
                                             "graph", "legacy", "maps", "me", "salesforce"]
    assert uncommented.metadata.aws is not None and uncommented.metadata.aws.provider == "aws"
    assert uncommented.providers["salesforce"].default_lifetime == 7200
    assert uncommented.state is not None and str(uncommented.state.folder) == "/var/lib/tokend"
    assert sorted(uncommented.clients) == ["billing-app", "ops"] and uncommented.clients["ops"].admin
    assert uncommented.fleet is not None and uncommented.fleet.namespace == "payments-prod"


def _with_signing_keys(directory: Path, example: str) -> str:
    """The example's key files made real (fresh keys, a certificate, a service account's JSON key file)."""
    from tokend.testing import FakeGoogle, new_private_key, self_signed_certificate

    entra_key = new_private_key()
    files = {"github-app.pem": new_private_key(), "entra.pem": entra_key, "salesforce.pem": new_private_key(),
             "entra.crt": self_signed_certificate(entra_key),
             "gcs-key.json": FakeGoogle().key_file("https://oauth2.googleapis.com/token")}
    for name, content in files.items():
        (directory / name).write_text(content)
        (directory / name).chmod(0o600)
        example = example.replace(f"/etc/tokend/{name}", str(directory / name))
    return example
