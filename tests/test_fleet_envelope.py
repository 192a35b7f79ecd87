"""Fleet records and share keys, without Redis: what is sealed, what opens, and what two configs share."""

from __future__ import annotations

import base64
import contextlib
import os
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from tokend.config.settings import Settings
from tokend.credential import Credential
from tokend.errors import ConfigError, UpstreamError
from tokend.fleet.envelope import (
    MAX_FAILURE_HOLD,
    FleetKey,
    RecordError,
    from_template,
    open_failure,
    open_record,
    seal,
    seal_failure,
    to_template,
)

KEY_A, KEY_B = os.urandom(32), os.urandom(32)
FTS = """
[providers.fts]
kind = "fintech_studios"
base_url = "https://fts.example.com"
api_key = {{ file = "{dir}/api_key" }}
email = "{email}"
password = {{ file = "{dir}/password" }}
"""


def settings(tmp_path: Path, *, email: str = "ops@example.com", password: str = "hunter2-password",
             api_key: str = "static-api-key-123", extra: str = "", name: str = "a") -> Settings:
    directory = tmp_path / name
    directory.mkdir()
    for field, value in (("api_key", api_key), ("password", password)):
        (directory / field).write_text(value)
        (directory / field).chmod(0o600)
    path = directory / "tokend.toml"
    path.write_text(FTS.format(dir=directory, email=email) + extra)
    return Settings.load(path)


def credential(api_key: str = "static-api-key-123") -> Credential:
    return Credential(token="tok-abc.def", token_type="Bearer", expires_at=2_000_000_000.0,
                      headers={"Authorization": "Bearer tok-abc.def", "x-api-key": api_key},
                      query={"access_token": "tok-abc.def"}, request_id="req-1", obtained_at=1_999_996_400.0,
                      renew_at=1_999_998_800.0)


def test_the_same_login_shares_and_any_difference_in_kind_url_identity_or_secret_does_not(tmp_path) -> None:  # type: ignore[no-untyped-def]
    key = FleetKey.of(KEY_A, "tokend")
    base = key.share_key(settings(tmp_path).providers["fts"])
    # Where a secret is read from, and how often to log in, are no part of the login.
    same = settings(tmp_path, name="b", extra="timeout = 3\nmin_refresh_interval = 60\n").providers["fts"]
    assert key.share_key(same) == base
    for index, differing in enumerate([{"email": "other@example.com"}, {"password": "another-password"},
                                       {"api_key": "another-api-key"}]):
        config = settings(tmp_path, name=f"c{index}", **differing).providers["fts"]
        assert key.share_key(config) != base, differing
    moved = settings(tmp_path, name="d").providers["fts"].model_copy(update={"base_url": "https://x.example.com"})
    assert key.share_key(moved) != base
    # Keyed: another encryption key gives another share key, and none shows a secret.
    assert FleetKey.of(KEY_B, "tokend").share_key(settings(tmp_path, name="e").providers["fts"]) != base
    assert len(base) == 64 and all(c in "0123456789abcdef" for c in base)


def test_a_record_holds_no_secret_and_opens_to_the_same_credential(tmp_path) -> None:  # type: ignore[no-untyped-def]
    key = FleetKey.of(KEY_A, "tokend")
    secrets = {"api_key": "static-api-key-123", "password": "hunter2-password"}
    record = seal(credential(), key, "share-1", secrets)
    assert record.startswith(f"v2.{key.id}.")
    for text in (*secrets.values(), "tok-abc", base64.b64encode(KEY_A).decode()):
        assert text not in record
    opened = open_record(record, {key.id: key}, "share-1", secrets)
    original = credential()
    assert (opened.token, opened.token_type, opened.expires_at, opened.request_id, opened.obtained_at,
            opened.renew_at) == (original.token, original.token_type, original.expires_at, original.request_id,
                                 original.obtained_at, original.renew_at)
    assert dict(opened.headers) == dict(original.headers) and dict(opened.query) == dict(original.query)
    assert opened.source == "fleet"


def test_templates_take_out_the_token_and_secrets_and_put_them_back() -> None:
    parts = to_template("Bearer T and key K, T again", "T", {"api_key": "K"})
    assert parts == ["Bearer ", {"t": 1}, " and key ", {"s": "api_key"}, ", ", {"t": 1}, " again"]
    assert from_template(parts, "T", {"api_key": "K"}) == "Bearer T and key K, T again"
    with pytest.raises(RecordError, match="api_key"):
        from_template(parts, "T", {})


def test_a_wrong_key_a_tampered_record_or_another_place_never_opens() -> None:
    key, other = FleetKey.of(KEY_A, "tokend"), FleetKey.of(KEY_B, "tokend")
    record = seal(credential(), key, "share-1", {})
    with pytest.raises(RecordError, match="not among this daemon's keys"):
        open_record(record, {other.id: other}, "share-1", {})
    # A key id that matches but a key that differs: the tag does not check.
    with pytest.raises(RecordError, match="tampered"):
        open_record(record, {key.id: other}, "share-1", {})
    body = record.rsplit(".", 1)[1]
    flipped = record[: -len(body)] + ("A" if body[0] != "A" else "B") + body[1:]
    with pytest.raises(RecordError, match="tampered"):
        open_record(flipped, {key.id: key}, "share-1", {})
    with pytest.raises(RecordError, match="tampered"):  # copied under another provider's share key
        open_record(record, {key.id: key}, "share-2", {})
    with pytest.raises(RecordError, match="format"):
        open_record("garbage", {key.id: key}, "share-1", {})


def test_an_old_key_still_reads_during_a_rotation() -> None:
    old, new = FleetKey.of(KEY_A, "tokend"), FleetKey.of(KEY_B, "tokend")
    record = seal(credential(), old, "share-1", {})
    assert open_record(record, {new.id: new, old.id: old}, "share-1", {}).token == "tok-abc.def"


def test_fleet_config_is_checked_and_felloh_rotation_is_refused(tmp_path) -> None:  # type: ignore[no-untyped-def]
    (tmp_path / "key").write_text(base64.b64encode(KEY_A).decode())
    (tmp_path / "short").write_text(base64.b64encode(b"x" * 16).decode())
    for path in (tmp_path / "key", tmp_path / "short"):
        path.chmod(0o600)
    fleet = f'[fleet]\nredis_url = "redis://127.0.0.1:1"\nencryption_key = {{ file = "{tmp_path}/key" }}\n'
    for name in ("public", "private"):
        (tmp_path / name).write_text(f"{name}-key")
        (tmp_path / name).chmod(0o600)
    felloh = (f'[providers.felloh]\nkind = "felloh"\nenvironment = "sandbox"\n'
              f'public_key = {{ file = "{tmp_path}/public" }}\nprivate_key = {{ file = "{tmp_path}/private" }}\n'
              'organisation = "org"\n')
    config = tmp_path / "tokend.toml"
    config.write_text(fleet + felloh + 'rotate_every = "30d"\n')
    with pytest.raises(ConfigError) as caught:
        Settings.load(config)
    assert "rotate_every cannot be used in fleet mode" in " ".join(caught.value.problems)
    config.write_text(fleet + felloh + 'rotate_every = "30d"\nfleet = false\n')
    assert Settings.load(config).fleet is not None
    config.write_text(fleet.replace("/key", "/short") + felloh)
    with pytest.raises(ConfigError) as caught:
        Settings.load(config)
    assert "must be 32 bytes" in " ".join(caught.value.problems)
    config.write_text(fleet.replace("redis://", "http://") + felloh)
    with pytest.raises(ConfigError) as caught:
        Settings.load(config)
    assert "redis://" in " ".join(caught.value.problems)


def test_without_a_fleet_table_no_redis_library_is_imported(tmp_path) -> None:  # type: ignore[no-untyped-def]
    config = tmp_path / "tokend.toml"
    config.write_text('[providers.felloh]\nkind = "felloh"\nenvironment = "sandbox"\npublic_key = "p"\n'
                      'private_key = "s"\n')
    code = ("import sys; from pathlib import Path; import tokend.api.server, tokend.cli.main; "
            "from tokend.config.settings import Settings; from tokend.daemon import Daemon; "
            "Daemon(Settings.load(Path(sys.argv[1]))); "
            "print(sorted(m for m in sys.modules if m.split('.')[0] in ('redis', 'cryptography')))")
    out = subprocess.run([sys.executable, "-c", code, str(config)], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"


def test_a_record_copied_into_another_namespace_does_not_open() -> None:
    here, there = FleetKey.of(KEY_A, "billing"), FleetKey.of(KEY_A, "payments")
    assert here.id == there.id  # the same key: only the namespace differs
    record = seal(credential(), here, "share-1", {})
    assert open_record(record, {here.id: here}, "share-1", {}).token == "tok-abc.def"
    with pytest.raises(RecordError, match="tampered"):
        open_record(record, {there.id: there}, "share-1", {})


def test_settings_that_do_not_change_the_login_do_not_change_the_share_key(tmp_path) -> None:  # type: ignore[no-untyped-def]
    key = FleetKey.of(KEY_A, "tokend")
    base = key.share_key(settings(tmp_path).providers["fts"])
    sink = tmp_path / "sink"
    neutral = ('expired_retry_delay = 3\nproxy_retry_body_limit = 10\nmax_answer_bytes = 4096\nproxy = true\n'
               'api_url = "https://api.example.com"\nproxy_listen = "127.0.0.1:9199"\nmax_retry_delay = 9\n'
               f'[[providers.fts.sinks]]\npath = "{sink}"\n')
    assert key.share_key(settings(tmp_path, name="b", extra=neutral).providers["fts"]) == base
    # The list is named once, on the settings model, and every name in it is a setting.
    config = settings(tmp_path, name="c").providers["fts"]
    assert set(type(config).NOT_LOGIN) <= set(type(config).model_fields)
    assert {"sinks", "proxy", "expired_retry_delay", "proxy_retry_body_limit"} <= type(config).NOT_LOGIN


def test_a_failure_record_holds_off_only_for_its_own_time() -> None:
    key = FleetKey.of(KEY_A, "tokend")
    error = UpstreamError("fts", "login answered 503", status=503)
    fresh = seal_failure(error, key, "share-1", hold=5)
    assert "failed" in open_failure(fresh, {key.id: key}, "share-1", "fts").message
    # A failure from long ago put back (its Redis expiry gone): it holds no one off.
    with freeze(time.time() - 3600):
        old = seal_failure(error, key, "share-1", hold=5)
    with pytest.raises(RecordError, match="out of its time"):
        open_failure(old, {key.id: key}, "share-1", "fts")
    # Nor one "from the future", nor one asking for a hold past the cap (it is cut to the cap when sealed).
    with freeze(time.time() + 3600):
        ahead = seal_failure(error, key, "share-1", hold=5)
    with pytest.raises(RecordError, match="out of its time"):
        open_failure(ahead, {key.id: key}, "share-1", "fts")
    long = seal_failure(error, key, "share-1", hold=10 * MAX_FAILURE_HOLD)
    with freeze(time.time() + MAX_FAILURE_HOLD + 1), pytest.raises(RecordError, match="out of its time"):
        open_failure(long, {key.id: key}, "share-1", "fts")


@contextlib.contextmanager
def freeze(at: float) -> Iterator[None]:
    """time.time() answers `at` inside (for sealing a record at another time, as another daemon's clock would)."""
    real = time.time
    time.time = lambda: at  # type: ignore[assignment]
    try:
        yield
    finally:
        time.time = real  # type: ignore[assignment]


def test_a_signing_key_enters_the_share_key_by_its_fingerprint_never_its_text() -> None:
    from cryptography.hazmat.primitives import serialization

    from tokend.providers.github_app import GitHubAppConfig
    from tokend.providers.signing_keys import load_key
    from tokend.testing import new_private_key

    pkcs8 = new_private_key()
    raw = load_key(pkcs8).key
    pkcs1 = raw.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.TraditionalOpenSSL,
                              serialization.NoEncryption()).decode()
    encrypted = raw.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                  serialization.BestAvailableEncryption(b"passphrase-1")).decode()

    def app(private_key: str, **settings: object) -> GitHubAppConfig:
        return GitHubAppConfig.model_validate({"kind": "github_app", "client_id": "Iv1", "installation_id": 7,
                                               "private_key": private_key, **settings})

    key = FleetKey.of(KEY_A, "tokend")
    base = key.share_key(app(pkcs8))
    # The same key written another way, or encrypted, is the same login.
    assert key.share_key(app(pkcs1)) == key.share_key(app(encrypted, private_key_passphrase="passphrase-1")) == base
    assert key.share_key(app(new_private_key())) != base
    assert key.share_key(app(pkcs8, installation_id=8)) != base
    identity = repr(app(encrypted, private_key_passphrase="passphrase-1").login_identity())
    assert load_key(pkcs8).fingerprint in identity
    assert "PRIVATE KEY" not in identity and "passphrase-1" not in identity
