"""Secrets kept where a developer keeps them: `{ command = [...] }` (a password manager's CLI) and
`{ keyring = "service/username" }` (the OS keyring), with real small scripts and a real keyring backend."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tests.daemon import Daemon, tokend_command, write_config
from tokend.config.settings import Settings
from tokend.errors import ConfigError
from tokend.testing import FakeProviders

SECRET = "s3cret-from-the-vault"


def script(directory: Path, name: str, body: str) -> Path:
    path = directory / name
    path.write_text("#!/bin/sh\n" + body)
    path.chmod(0o700)
    return path


def static_config(tmp_path: Path, key: str) -> Path:
    config = tmp_path / "tokend.toml"
    config.write_text(f'[providers.k]\nkind = "static"\nkey = {key}\n')
    config.chmod(0o600)
    return config


def problem(tmp_path: Path, key: str) -> str:
    with pytest.raises(ConfigError) as caught:
        Settings.load(static_config(tmp_path, key))
    (found,) = caught.value.problems
    return found


def test_a_command_secret_is_the_first_line_it_prints_run_without_a_shell(tmp_path: Path) -> None:
    vault = script(tmp_path, "vault", f'echo "{SECRET}"\necho "a second line"\necho "noise" >&2\n')
    settings = Settings.load(static_config(tmp_path, f'{{ command = ["{vault}", "read", "op://v/item/f"] }}'))
    secret = settings.providers["k"].secrets()["key"]
    assert secret.get() == SECRET and secret.source == f"command {vault}"
    # No shell: an argument is passed as it is, never expanded.
    echo = script(tmp_path, "echo-args", 'echo "$1"\n')
    settings = Settings.load(static_config(tmp_path, f'{{ command = ["{echo}", "$HOME;*"] }}'))
    assert settings.providers["k"].secrets()["key"].get() == "$HOME;*"


def test_a_failing_command_is_a_config_error_that_never_shows_its_output(tmp_path: Path) -> None:
    leaky = script(tmp_path, "leaky", f'echo "{SECRET}"\necho "the secret is {SECRET}" >&2\nexit 3\n')
    found = problem(tmp_path, f'{{ command = ["{leaky}"] }}')
    assert found.startswith(f'provider "k", field "key": command {leaky} exited 3;') and SECRET not in found
    assert "not found" in problem(tmp_path, '{ command = ["/no/such/program"] }')
    unrunnable = tmp_path / "unrunnable"
    unrunnable.write_text("#!/bin/sh\necho x\n")
    assert "permission denied" in problem(tmp_path, f'{{ command = ["{unrunnable}"] }}')
    silent = script(tmp_path, "silent", "true\n")
    assert "printed nothing" in problem(tmp_path, f'{{ command = ["{silent}"] }}')
    assert "must be a list of strings" in problem(tmp_path, '{ command = "op read op://v/i/f" }')
    assert "takes only timeout" in problem(tmp_path, f'{{ command = ["{silent}"], shell = true }}')


def test_a_command_that_hangs_is_stopped_at_its_timeout_children_and_all(tmp_path: Path) -> None:
    # The sleep is the script's child: it must not keep the pipe (and tokend) waiting past the timeout.
    hangs = script(tmp_path, "hangs", "sleep 30\necho late\n")
    started = time.monotonic()
    found = problem(tmp_path, f'{{ command = ["{hangs}"], timeout = 0.5 }}')
    assert "did not finish within 0.5s" in found and time.monotonic() - started < 10


def test_a_refused_login_runs_the_command_again_and_a_reload_does_too(tmp_path: Path, fakes: FakeProviders) -> None:
    held = tmp_path / "vault-entry"  # where the password manager keeps the password
    held.write_text(fakes.fintech_studios.password + "\n")
    vault = script(tmp_path, "vault", f'head -n 1 "{held}"\n')
    config = write_config(tmp_path, fakes)
    text = config.read_text().replace(f'password = {{ file = "{tmp_path / "fts_password"}" }}',
                                      f'password = {{ command = ["{vault}"] }}')
    assert f'command = ["{vault}"]' in text
    config.write_text(text)
    daemon = Daemon(config, log_path=tmp_path / "daemon.log")
    try:
        daemon.start()
        first = daemon.get("/token/fts").json()["token"]
        # The password is changed upstream and in the password manager: the next login is refused, the
        # command runs again, and the new password logs in at once.
        fakes.fintech_studios.password = "a-new-password-1"
        held.write_text("a-new-password-1\n")
        refreshed = daemon.post("/token/fts/refresh", json={"rejected": first})
        assert refreshed.status_code == 200, refreshed.text
        assert refreshed.json()["token"] != first
        assert "secrets_changed provider=" in daemon.log()
        assert daemon.get("/status").json()["providers"]["fts"]["state"] == "ok"
        # A reload runs it again too.
        fakes.fintech_studios.password = "a-newer-password-2"
        held.write_text("a-newer-password-2\n")
        reloaded = daemon.post("/reload")
        assert reloaded.status_code == 200 and reloaded.json()["changed"] == ["fts"], reloaded.text
        daemon.wait_until(lambda: daemon.get("/token/fts").json()["token"] != refreshed.json()["token"],
                          what="a login with the password the reload read")
        log = daemon.log()
        for password in (fakes.fintech_studios.password, "a-new-password-1"):
            assert password not in log
    finally:
        daemon.kill()


# --- the keyring -----------------------------------------------------------------------------------------------

_BACKEND = '''\
"""A keyring backend for the tests: the entries of the JSON file named by $TEST_KEYRING_FILE."""
import json
import os
import time

from keyring.backend import KeyringBackend


class FileKeyring(KeyringBackend):
    priority = 1

    def get_password(self, service, username):
        if os.environ.get("TEST_KEYRING_MODE") == "hang":  # a backend waiting on a desktop that never answers
            time.sleep(3600)
        if os.environ.get("TEST_KEYRING_MODE") == "raise":  # a backend whose error quotes what it read
            raise RuntimeError(f"D-Bus reply for {service}: hunter2-in-the-error")
        with open(os.environ["TEST_KEYRING_FILE"]) as file:
            return json.load(file).get(f"{service}/{username}")

    def set_password(self, service, username, password):
        raise NotImplementedError

    def delete_password(self, service, username):
        raise NotImplementedError
'''


def keyring_environment(tmp_path: Path, entries: dict[str, str]) -> dict[str, str]:
    pytest.importorskip("keyring", reason="the keyring extra is not installed (pip install -e '.[test]')")
    (tmp_path / "test_keyring_backend.py").write_text(_BACKEND)
    store = tmp_path / "keyring.json"
    store.write_text(json.dumps(entries))
    store.chmod(0o600)
    return {**os.environ, "PYTHONPATH": str(tmp_path), "PYTHON_KEYRING_BACKEND": "test_keyring_backend.FileKeyring",
            "TEST_KEYRING_FILE": str(store), "PYTHONUNBUFFERED": "1"}


def test_a_keyring_secret_logs_in_and_a_missing_entry_is_a_config_error(tmp_path: Path, fakes: FakeProviders) -> None:
    env = keyring_environment(tmp_path, {"tokend-fts/ops": fakes.fintech_studios.password})
    config = write_config(tmp_path, fakes)
    config.write_text(config.read_text().replace(f'password = {{ file = "{tmp_path / "fts_password"}" }}',
                                                 'password = { keyring = "tokend-fts/ops" }'))
    check = subprocess.run(tokend_command("--config", str(config), "check"), capture_output=True, text=True,
                           timeout=60, env=env)
    assert check.returncode == 0, check.stderr
    assert "password from keyring tokend-fts/ops" in check.stdout
    assert fakes.fintech_studios.password not in check.stdout + check.stderr
    with (tmp_path / "daemon.log").open("wb") as log:
        process = subprocess.Popen(tokend_command("--config", str(config), "run"), stdout=log,
                                   stderr=subprocess.STDOUT, env=env)
    daemon = Daemon(config, log_path=tmp_path / "daemon.log")
    daemon.process = process
    try:
        daemon.wait_listening()
        daemon.wait_until(lambda: daemon.get("/token/fts").status_code == 200, what="a login with the keyring's")
        assert fakes.fintech_studios.logins == 1
    finally:
        daemon.kill()

    (tmp_path / "keyring.json").write_text("{}")
    missing = subprocess.run(tokend_command("--config", str(config), "check"), capture_output=True, text=True,
                             timeout=60, env=env)
    assert missing.returncode == 3 and "Traceback" not in missing.stderr
    assert ('provider "fts", field "password": keyring tokend-fts/ops: no password for service \'tokend-fts\', '
            "username 'ops' in the keyring (FileKeyring)") in missing.stderr


def test_a_keyring_secret_without_the_extra_names_it(tmp_path: Path) -> None:
    shadow = tmp_path / "shadow" / "keyring"
    shadow.mkdir(parents=True)
    (shadow / "__init__.py").write_text('raise ImportError("No module named \'keyring\'")\n')
    config = static_config(tmp_path, '{ keyring = "maps/me" }')
    result = subprocess.run([sys.executable, "-m", "tokend", "--config", str(config), "check"], capture_output=True,
                            text=True, timeout=60, env={**os.environ, "PYTHONPATH": str(shadow.parent)})
    assert result.returncode == 3 and "Traceback" not in result.stderr
    assert "{ keyring } needs the keyring extra" in result.stderr and "pip install '.[keyring]'" in result.stderr


def test_a_command_for_a_secret_that_spans_lines_gives_all_it_prints(tmp_path: Path) -> None:
    from tokend.config.secrets import resolve_secret_text

    pem = "-----BEGIN PRIVATE KEY-----\nMIIB\nVQIB\n-----END PRIVATE KEY-----"
    vault = script(tmp_path, "vault", f"printf '%s\\n' '{pem}'\n")
    assert resolve_secret_text({"command": [str(vault)]}).get() == pem


@pytest.mark.parametrize("mode", ["hang", "raise"])
def test_a_keyring_backend_that_hangs_or_fails_is_a_sentence_without_its_text(tmp_path: Path, mode: str) -> None:
    env = keyring_environment(tmp_path, {"maps/me": SECRET})
    env.update(TEST_KEYRING_MODE=mode, PYTHONPATH=f"{tmp_path}:{os.environ.get('PYTHONPATH', '')}")
    config = static_config(tmp_path, '{ keyring = "maps/me", timeout = 1 }')
    started = time.monotonic()
    checked = subprocess.run(tokend_command("--config", str(config), "check"), capture_output=True, text=True,
                             timeout=30, env=env, check=False)
    assert checked.returncode == 3 and time.monotonic() - started < 20
    shown = checked.stdout + checked.stderr
    assert "Traceback" not in shown and "hunter2" not in shown and 'field "key": keyring maps/me' in shown
    assert ("did not answer within 1s" if mode == "hang" else "the keyring failed (RuntimeError)") in shown


def test_a_commands_output_is_read_to_its_first_line_within_a_bound(tmp_path: Path) -> None:
    import tracemalloc

    from tokend.config.secrets import resolve_secret

    flood = [sys.executable, "-c", "import sys; sys.stdout.write('s3cret\\n'); "
             "[sys.stdout.buffer.write(b'x' * 1048576) for _ in range(200)]"]
    tracemalloc.start()
    try:
        assert resolve_secret({"command": flood}).get() == "s3cret"
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert peak < 4 * 1024 * 1024  # 200 MiB printed after the first line: none of it kept
    long_line = [sys.executable, "-c", "import sys; sys.stdout.write('x' * 70000 + '\\n')"]
    assert "longer than 65536 bytes" in problem(tmp_path, "{ command = " + json.dumps(long_line) + " }")
    key = [sys.executable, "-c", "import sys; sys.stdout.write('k' * (2 * 1024 * 1024))"]
    from tokend.config.secrets import resolve_secret_text

    with pytest.raises(ValueError, match="more than 1048576 bytes"):
        resolve_secret_text({"command": key})
