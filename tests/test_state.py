"""The state folder without a daemon: what a record holds, when it opens, how it is written, where it lives;
and the config errors of [state] and of oauth2_refresh_token, as `tokend check` reports them."""

from __future__ import annotations

import base64
import os
import stat
import subprocess
from pathlib import Path

import pytest

from tests.daemon import tokend_command
from tokend.config.settings import Settings
from tokend.credential import Credential
from tokend.state.config import default_state_path
from tokend.state.store import StateStore

KEY = base64.b64encode(os.urandom(32)).decode()


def settings(tmp_path: Path, *, key: str = KEY, provider: str = "", name: str = "user",
             folder: Path | None = None) -> Settings:
    tmp_path.mkdir(parents=True, exist_ok=True)
    (tmp_path / "key").write_text(key)
    (tmp_path / "key").chmod(0o600)  # as the documented command makes it: tokend runs no config exposing a key
    (tmp_path / "refresh").write_text("configured-refresh-token")
    (tmp_path / "refresh").chmod(0o600)
    config = tmp_path / "tokend.toml"
    config.write_text(f"""
[state]
path = "{folder or tmp_path / 'state'}"
encryption_key = {{ file = "{tmp_path / 'key'}" }}

[providers.{name}]
kind = "oauth2_refresh_token"
token_url = "https://auth.example.com/oauth/token"
client_id = "app"
refresh_token = {{ file = "{tmp_path / 'refresh'}" }}
{provider}
""")
    return Settings.load(config)


def credential(refresh: str = "rotated-refresh-token-1") -> Credential:
    return Credential(token="access-token-abc", token_type="Bearer", expires_at=2_000_000_000.0,
                      headers={"Authorization": "Bearer access-token-abc"}, obtained_at=1_999_996_400.0,
                      refresh_token=refresh)


_open: list[StateStore] = []


def store(loaded: Settings) -> StateStore:
    """The folder's store; the one opened before is closed first (one store holds a folder at a time)."""
    assert loaded.state is not None
    while _open:
        _open.pop().close()
    _open.append(StateStore(loaded.state).open())
    return _open[-1]


def test_a_record_opens_for_its_provider_and_settings_only(tmp_path: Path) -> None:
    loaded = settings(tmp_path)
    kept = store(loaded)
    config = loaded.providers["user"]
    kept.write("user", config, credential())
    opened = kept.restore("user", config)
    assert opened is not None and opened.source == "state"
    assert (opened.token, opened.refresh_token, opened.expires_at) == ("access-token-abc", "rotated-refresh-token-1",
                                                                       2_000_000_000.0)
    text = kept.path("user").read_text()
    for secret in ("access-token-abc", "rotated-refresh-token-1", "configured-refresh-token", KEY):
        assert secret not in text
    # Other settings (a scope), another key: the same file does not open.
    changed = settings(tmp_path / "b", provider='scope = "other"', folder=tmp_path / "state")
    assert store(changed).restore("user", changed.providers["user"]) is None
    other_key = settings(tmp_path / "c", key=base64.b64encode(os.urandom(32)).decode(), folder=tmp_path / "state")
    assert store(other_key).restore("user", other_key.providers["user"]) is None
    # Timing settings are no part of the login: the record still opens.
    timing = settings(tmp_path / "d", provider="timeout = 3\nmin_refresh_interval = 60", folder=tmp_path / "state")
    assert store(timing).restore("user", timing.providers["user"]) is not None


def test_a_refresh_token_that_never_rotated_is_kept_as_a_reference_to_the_config(tmp_path: Path) -> None:
    loaded = settings(tmp_path)
    kept = store(loaded)
    kept.write("user", loaded.providers["user"], credential("configured-refresh-token"))
    assert "configured-refresh-token" not in kept.path("user").read_text()
    opened = kept.restore("user", loaded.providers["user"])
    assert opened is not None and opened.refresh_token == "configured-refresh-token"


def test_a_damaged_record_is_logged_once_and_ignored(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    loaded = settings(tmp_path)
    kept = store(loaded)
    config = loaded.providers["user"]
    kept.write("user", config, credential())
    record = kept.path("user")
    text = record.read_text()
    record.write_text(text[:-10] + ("A" if text[-10] != "A" else "B") + text[-9:])
    for _ in range(3):
        assert kept.restore("user", config) is None
    assert caplog.text.count("does not open") == 1
    record.write_bytes(b"\xff\xfe not a record")
    assert kept.restore("user", config) is None


def test_writes_are_atomic_and_private(tmp_path: Path) -> None:
    loaded = settings(tmp_path)
    kept = store(loaded)
    for index in range(5):
        kept.write("user", loaded.providers["user"], credential(f"rotated-{index}"))
    # No temporary file left behind (.lock is the folder's lock, see below).
    assert sorted(path.name for path in kept.folder.iterdir()) == [".lock", "user.record"]
    assert stat.S_IMODE(kept.folder.stat().st_mode) == 0o700
    assert stat.S_IMODE(kept.path("user").stat().st_mode) == 0o600
    opened = kept.restore("user", loaded.providers["user"])
    assert opened is not None and opened.refresh_token == "rotated-4"
    kept.forget("user")
    assert not kept.path("user").exists()


def test_an_open_folder_is_tightened_to_0700(tmp_path: Path) -> None:
    folder = tmp_path / "state"
    folder.mkdir(mode=0o755)
    folder.chmod(0o755)
    store(settings(tmp_path))
    assert stat.S_IMODE(folder.stat().st_mode) == 0o700


def test_the_default_folder(tmp_path: Path) -> None:
    assert default_state_path({"STATE_DIRECTORY": "/var/lib/tokend:/var/lib/other"}) == Path("/var/lib/tokend")
    assert default_state_path({}, root=True) == Path("/var/lib/tokend")
    assert default_state_path({"XDG_STATE_HOME": "/home/u/.state"}, root=False) == Path("/home/u/.state/tokend")
    assert default_state_path({}, root=False) == Path.home() / ".local" / "state" / "tokend"


@pytest.mark.parametrize(("table", "expected"), [
    ('[state]\nencryption_key = "c2hvcnQ="\n', 'field "state": encryption_key must be 32 bytes'),
    # An id of its own: the random key must not be in the test's name, which every xdist worker must agree on.
    pytest.param(f'[state]\npath = "relative"\nencryption_key = "{KEY}"\n', "path relative must be absolute",
                 id="relative-path"),
    ('[providers.u]\nkind = "oauth2_refresh_token"\ntoken_url = "https://a.example.com/t"\nclient_id = "c"\n',
     'provider "u": needs refresh_token, or device_authorization_url'),
    ('[providers.u]\nkind = "oauth2_refresh_token"\ntoken_url = "https://a.example.com/t"\nclient_id = "c"\n'
     'refresh_token = "r"\nauth_method = "client_secret_post"\n', "auth_method client_secret_post needs client_secret"),
    ('[providers.u]\nkind = "oauth2_refresh_token"\ntoken_url = "https://a.example.com/t"\nclient_id = "c"\n'
     'refresh_token = "r"\nauth_method = "none"\nclient_secret = "s"\n', 'auth_method = "none" is for a public client'),
])
def test_bad_config_is_a_sentence_and_exit_3(tmp_path: Path, table: str, expected: str) -> None:
    config = tmp_path / "tokend.toml"
    config.write_text(table)
    result = subprocess.run(tokend_command("--config", str(config), "check"), capture_output=True, text=True,
                            timeout=60)
    assert result.returncode == 3, result.stdout + result.stderr
    assert expected in result.stderr and "Traceback" not in result.stderr, result.stderr


def test_check_shows_the_state_folder_and_warns_of_a_plain_string_key(tmp_path: Path) -> None:
    config = tmp_path / "tokend.toml"
    config.write_text(f'[state]\npath = "{tmp_path / "kept"}"\nencryption_key = "{KEY}"\n')
    config.chmod(0o600)
    result = subprocess.run(tokend_command("--config", str(config), "check"), capture_output=True, text=True,
                            timeout=60)
    assert result.returncode == 0, result.stdout + result.stderr
    assert f"state folder: {tmp_path / 'kept'} (encryption_key from plain string)" in result.stdout
    assert 'field "state.encryption_key": a plain-string secret' in result.stdout
    assert KEY not in result.stdout + result.stderr


def test_machine_credentials_survive_a_restart_too_and_static_keys_are_never_stored(tmp_path, fakes) -> None:  # type: ignore[no-untyped-def]
    from tests.daemon import Daemon, write_config

    (tmp_path / "state_key").write_text(KEY + "\n")
    (tmp_path / "state_key").chmod(0o600)
    config = write_config(tmp_path, fakes, extra=f'[state]\npath = "{tmp_path / "kept"}"\n'
                          f'encryption_key = {{ file = "{tmp_path / "state_key"}" }}\n')
    served: dict[str, dict[str, object]] = {}
    for run in range(2):
        daemon = Daemon(config, log_path=tmp_path / f"daemon-{run}.log")
        daemon.start()
        try:
            answers = {name: daemon.get(f"/token/{name}").json() for name in ("felloh", "fts", "flotiq")}
        finally:
            code, _ = daemon.terminate()
            daemon.client.close()
        assert code == 0
        if run == 0:
            served = answers
    assert answers == {**served, **{name: {**served[name], "expires_in": answers[name]["expires_in"]}
                                    for name in ("felloh", "fts")}}  # the same tokens and headers, x-api-key too
    assert fakes.felloh.logins == 1 and fakes.fintech_studios.logins == 1
    assert sorted(path.name for path in (tmp_path / "kept").glob("*.record")) == ["felloh.record", "fts.record"]
    sealed = "".join(path.read_text() for path in (tmp_path / "kept").glob("*.record"))
    for secret in (fakes.fintech_studios.api_key, fakes.fintech_studios.password, fakes.felloh.private_key,
                   *(answer["token"] for answer in answers.values())):
        assert str(secret) not in sealed


def test_one_daemon_per_state_folder(tmp_path: Path) -> None:
    first = settings(tmp_path)
    held = store(first)
    config = tmp_path / "tokend.toml"
    config.chmod(0o600)
    result = subprocess.run(tokend_command("--config", str(config), "run"), capture_output=True, text=True,
                            timeout=60)
    assert result.returncode == 3, result.stdout + result.stderr
    assert f"state: another tokend uses the state folder {held.folder}" in result.stderr
