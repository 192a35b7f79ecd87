"""Key files, secret files and state records that are not what they should be: a FIFO, a symlink to
/dev/zero, an unusable key rewritten over a working one, a `.lock` that is a symlink. The real daemon, the
real CLI: what a user sees is a sentence, the daemon keeps answering, and a working key stays in use."""

from __future__ import annotations

import base64
import os
import subprocess
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import httpx
import pytest

from tests.daemon import Daemon, tokend_command, write_config
from tests.test_signing_e2e import github_table, replace_file
from tokend.testing import FakeGitHub, FakeProviders, FakeServer, new_private_key

STATE_KEY = base64.b64encode(b"k" * 32).decode()


@pytest.fixture
def github() -> Iterator[tuple[FakeGitHub, str]]:
    fake = FakeGitHub()
    with FakeServer(fake.app) as server:
        yield fake, server.url


@pytest.fixture
def start(tmp_path: Path, fakes: FakeProviders) -> Iterator[Callable[..., Daemon]]:
    started: list[Daemon] = []

    def run(extra: str, *, ready: bool = True) -> Daemon:
        daemon = Daemon(write_config(tmp_path, fakes, extra=extra), log_path=tmp_path / f"daemon-{len(started)}.log")
        started.append(daemon)
        daemon.start(ready=ready)
        return daemon

    yield run
    for daemon in started:
        daemon.kill()


def _check(config: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(tokend_command("--config", str(config), "check"), capture_output=True, text=True,
                          timeout=30, check=False)


def _refusal(daemon: Daemon) -> str | None:
    refused = daemon.get("/status").json()["providers"]["gh"].get("secret_file_refused")
    return None if refused is None else str(refused["message"])


@pytest.mark.parametrize("what", ["fifo", "dev-zero"])
def test_check_refuses_a_key_file_that_is_not_a_regular_file(
    tmp_path: Path, fakes: FakeProviders, github: tuple[FakeGitHub, str], what: str
) -> None:
    fake, url = github
    config = write_config(tmp_path, fakes, extra=github_table(tmp_path, fake, url))
    key = tmp_path / "github-app.pem"
    key.unlink()
    if what == "fifo":
        os.mkfifo(key, 0o600)  # nothing ever writes it: a blocking open would wait for ever
    else:
        key.symlink_to("/dev/zero")  # endless: a read without a bound would fill the memory
    checked = _check(config)
    assert checked.returncode == 3 and "Traceback" not in checked.stderr
    assert "not a regular file" in checked.stdout + checked.stderr


@pytest.mark.parametrize("what", ["fifo", "dev-zero", "too-big"])
def test_a_key_file_replaced_by_what_is_not_a_key_file_at_run_time_changes_nothing(
    tmp_path: Path, start: Callable[..., Daemon], github: tuple[FakeGitHub, str], what: str
) -> None:
    fake, url = github
    daemon = start(github_table(tmp_path, fake, url))
    first = daemon.get("/token/gh").json()["token"]
    key = tmp_path / "github-app.pem"
    swapped = tmp_path / "swapped"
    if what == "fifo":
        os.mkfifo(swapped, 0o600)
    elif what == "dev-zero":
        swapped.symlink_to("/dev/zero")
    else:
        swapped.write_text(fake.private_key + "#" * (2 * 1024 * 1024))
    os.replace(swapped, key)
    daemon.wait_until(lambda: _refusal(daemon) is not None, what="the refusal in /status")
    assert "regular file" in (_refusal(daemon) or "") or "larger than" in (_refusal(daemon) or "")
    # The daemon goes on answering, with the token of the key it runs with.
    deadline = time.monotonic() + 5
    while time.monotonic() < deadline:
        assert httpx.get(f"{daemon.url}/livez", timeout=2).status_code == 200
        time.sleep(0.2)
    assert daemon.get("/token/gh").json()["token"] == first and fake.logins == 1


@pytest.mark.parametrize("what", ["rsa-1024", "garbage", "half-written"])
def test_a_rewritten_unusable_key_keeps_the_running_key_and_its_token(
    tmp_path: Path, start: Callable[..., Daemon], github: tuple[FakeGitHub, str], what: str
) -> None:
    fake, url = github
    daemon = start(github_table(tmp_path, fake, url))
    first = daemon.get("/token/gh").json()["token"]
    key = tmp_path / "github-app.pem"
    unusable = {"rsa-1024": new_private_key(bits=1024), "garbage": "not a key at all\n",
                "half-written": fake.private_key[: len(fake.private_key) // 2]}[what]
    replace_file(key, unusable)
    daemon.wait_until(lambda: _refusal(daemon) is not None, what="the refusal in /status")
    why = _refusal(daemon) or ""
    assert str(key) in why and ("1024 bits" in why if what == "rsa-1024" else "PEM" in why), why
    assert unusable.strip().splitlines()[-1] not in why
    answer = daemon.get("/token/gh")
    assert answer.status_code == 200 and answer.json()["token"] == first and fake.logins == 1
    # A usable key then is taken at once, and the refusal is gone.
    fake.rotate_key()
    replace_file(key, fake.private_key)
    daemon.wait_until(lambda: daemon.get("/token/gh").json()["token"] != first, what="a login with the new key")
    assert _refusal(daemon) is None


def _state(tmp_path: Path) -> str:
    return f'[state]\npath = "{tmp_path / "state"}"\nencryption_key = "{STATE_KEY}"\n'


def test_a_lock_file_that_is_a_symlink_is_a_sentence(tmp_path: Path, fakes: FakeProviders) -> None:
    folder = tmp_path / "state"
    folder.mkdir(mode=0o700)
    (folder / ".lock").symlink_to(tmp_path / "elsewhere")
    daemon = Daemon(write_config(tmp_path, fakes, extra=_state(tmp_path)), log_path=tmp_path / "daemon.log")
    try:
        with pytest.raises(AssertionError, match="exited"):
            daemon.start()
        assert "Traceback" not in daemon.log() and ".lock" in daemon.log() and "symlink" in daemon.log()
    finally:
        daemon.kill()


def test_a_state_record_symlinked_to_dev_zero_is_ignored_with_a_sentence(
    tmp_path: Path, start: Callable[..., Daemon]
) -> None:
    folder = tmp_path / "state"
    folder.mkdir(mode=0o700)
    (folder / "felloh.record").symlink_to("/dev/zero")
    daemon = start(_state(tmp_path))
    assert daemon.get("/token/felloh").status_code == 200
    log = daemon.log()
    assert "Traceback" not in log and "felloh.record" in log and "symlink" in log
