"""Reload (SIGHUP, `tokend reload`) and secret files changed on disk, against the real daemon and fakes.

The number of upstream logins is the promise: an unchanged provider keeps its token with no login, and a
changed or added one logs in once.
"""

from __future__ import annotations

import os
import signal
import subprocess
from pathlib import Path

from tests.daemon import Daemon, tokend_command
from tokend.testing import FakeProviders


def _token(daemon: Daemon, name: str) -> str:
    reply = daemon.get(f"/token/{name}")
    assert reply.status_code == 200, reply.text
    return str(reply.json()["token"])


def _sighup(daemon: Daemon) -> None:
    assert daemon.process is not None
    daemon.process.send_signal(signal.SIGHUP)


def _without_table(text: str, table: str) -> str:
    """The config text with one [providers.NAME] table taken out."""
    head, _, rest = text.partition(f"[{table}]\n")
    _, sep, tail = rest.partition("\n[")
    return head + (sep.lstrip("\n") + tail if sep else "")


def test_sighup_applies_added_changed_and_removed_providers_and_keeps_the_unchanged(daemon_factory, fakes):
    daemon = daemon_factory()
    felloh_token = _token(daemon, "felloh")
    fts_token = _token(daemon, "fts")
    logins = (fakes.felloh.logins, fakes.fintech_studios.logins)
    text = daemon.config.read_text()
    felloh_table = text[text.index("[providers.felloh]"):text.index("[providers.fts]")]
    text = _without_table(text, "providers.flotiq")
    text = text.replace('email = "', 'timeout = 9.0\nemail = "')  # fts changed
    text += "\n" + felloh_table.replace("[providers.felloh]", "[providers.felloh2]")  # added
    daemon.config.write_text(text)

    _sighup(daemon)
    daemon.wait_until(lambda: daemon.get("/status").json()["providers"].get("felloh2", {}).get("state") == "ok",
                      what="felloh2 to log in after SIGHUP")
    daemon.wait_until(lambda: daemon.get("/status").json()["providers"]["fts"]["logins"]["ok"] == 1
                      and daemon.get("/status").json()["providers"]["fts"]["state"] == "ok", what="fts to log in")

    assert _token(daemon, "felloh") == felloh_token  # unchanged: same token...
    assert fakes.felloh.logins == logins[0] + 1  # ...and the only new Felloh login is felloh2's
    assert fakes.fintech_studios.logins == logins[1] + 1  # changed: replaced and logged in once
    assert _token(daemon, "fts") != fts_token
    assert fakes.fintech_studios.is_valid(_token(daemon, "fts"))
    gone = daemon.get("/token/flotiq")
    assert gone.status_code == 404 and gone.json()["error"] == "unknown_provider"
    assert "reload reason=SIGHUP added=felloh2 changed=fts removed=flotiq unchanged=1" in daemon.log()


def test_a_bad_config_is_refused_whole_and_the_running_one_stays(daemon_factory, fakes, tmp_path):
    daemon = daemon_factory()
    token = _token(daemon, "fts")
    logins = fakes.fintech_studios.logins
    good = daemon.config.read_text()
    bad = good.replace('kind = "flotiq"', 'kind = "flotiqq"') + '\n[providers.new]\nkind = "static"\n'
    daemon.config.write_text(bad)

    result = subprocess.run(tokend_command("--config", str(daemon.config), "reload"),
                            capture_output=True, text=True, timeout=30)
    assert result.returncode == 3, result
    assert 'provider "flotiq"' in result.stderr and "flotiqq" in result.stderr
    assert 'provider "new", field "key": is required but missing' in result.stderr
    assert "the running config stays" in result.stderr

    _sighup(daemon)  # the same refusal through the signal: logged, and the daemon carries on
    daemon.wait_until(lambda: daemon.log().count("reload_refused reason=") >= 2, what="SIGHUP refusal")
    assert daemon.process is not None and daemon.process.poll() is None
    assert _token(daemon, "fts") == token and _token(daemon, "flotiq")
    assert fakes.fintech_studios.logins == logins
    assert daemon.get("/token/new").status_code == 404


def test_tokend_reload_reports_what_changed(daemon_factory, fakes):
    daemon = daemon_factory()
    logins = fakes.felloh.logins + fakes.fintech_studios.logins
    result = subprocess.run(tokend_command("--config", str(daemon.config), "reload"),
                            capture_output=True, text=True, timeout=30)
    assert result.returncode == 0, result
    assert result.stdout.strip() == "reloaded: added -; changed -; removed -; 3 unchanged"
    assert fakes.felloh.logins + fakes.fintech_studios.logins == logins  # nothing changed: no login

    daemon.config.write_text(daemon.config.read_text().replace("[server]\n", "[server]\nwait_timeout = 7\n"))
    result = subprocess.run(tokend_command("--config", str(daemon.config), "reload"),
                            capture_output=True, text=True, timeout=30)
    assert result.returncode == 0, result
    assert "[server] changed; restart tokend to apply it" in result.stderr


def _rewrite(path: Path, value: str) -> None:
    """Replace a secret file the way operators and Kubernetes do: a new file renamed over the old."""
    new = path.with_suffix(".new")
    new.write_text(value + "\n")
    os.chmod(new, 0o600)
    os.replace(new, path)


def test_a_static_key_changed_on_disk_is_served_within_seconds(daemon_factory, fakes: FakeProviders, tmp_path):
    daemon = daemon_factory()
    old = _token(daemon, "flotiq")
    fakes.flotiq.api_keys = {"regenerated-after-a-leak-0001"}  # the old key is revoked upstream
    _rewrite(tmp_path / "flotiq_api_key", "regenerated-after-a-leak-0001")
    daemon.wait_until(lambda: _token(daemon, "flotiq") != old, timeout=20, what="the new Flotiq key")
    assert _token(daemon, "flotiq") == "regenerated-after-a-leak-0001"
    assert "provider=flotiq secret file changed" in daemon.log()


def test_a_felloh_key_pair_changed_on_disk_logs_in_again_once(daemon_factory, fakes: FakeProviders, tmp_path):
    daemon = daemon_factory()
    old_token = _token(daemon, "felloh")
    logins = fakes.felloh.logins
    # Rotated elsewhere: the old pair stops working upstream, the new one is written to the files.
    fakes.felloh.public_key, fakes.felloh.private_key = "rotated-public", "rotated-private"
    _rewrite(tmp_path / "felloh_public_key", "rotated-public")
    _rewrite(tmp_path / "felloh_private_key", "rotated-private")

    daemon.wait_until(lambda: _token(daemon, "felloh") != old_token, timeout=20, what="a login with the new pair")
    assert fakes.felloh.is_valid(_token(daemon, "felloh"))
    daemon.wait_until(lambda: daemon.get("/status").json()["providers"]["felloh"]["state"] == "ok", what="ok")
    # One login with the new pair; at most one more if the two files were seen in two separate looks.
    assert 1 <= fakes.felloh.logins - logins <= 2
    assert fakes.felloh.login_attempts == fakes.felloh.logins  # and never a failed one with a half-new pair


def test_a_secret_file_rewritten_unchanged_or_emptied_keeps_the_running_key(daemon_factory, fakes, tmp_path):
    daemon = daemon_factory()
    token = _token(daemon, "fts")
    logins = fakes.fintech_studios.logins
    _rewrite(tmp_path / "fts_password", fakes.fintech_studios.password)  # same content, new inode
    (tmp_path / "fts_api_key").write_text("")  # truncated, as mid-way through a careless rewrite
    daemon.wait_until(lambda: "secret file changed but cannot be used" in daemon.log(), timeout=20,
                      what="the empty file to be noticed")
    assert "is empty" in daemon.log()
    assert _token(daemon, "fts") == token
    assert fakes.fintech_studios.logins == logins
