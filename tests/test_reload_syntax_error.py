"""A reload refused for a TOML syntax error: the message is logged once (it used to come again as its own
"problem"), and `tokend reload`, which reads the same file to find the daemon, fails with it once too."""

from __future__ import annotations

import signal
import subprocess

from tests.daemon import tokend_command

BROKEN = "\nthis is = not TOML\n"


def test_a_toml_syntax_error_on_sighup_is_logged_once(daemon_factory, fakes):  # type: ignore[no-untyped-def]
    daemon = daemon_factory()
    daemon.config.write_text(daemon.config.read_text() + BROKEN)
    assert daemon.process is not None
    daemon.process.send_signal(signal.SIGHUP)
    daemon.wait_until(lambda: "reload_refused reason=" in daemon.log(), what="the SIGHUP refusal")
    assert daemon.log().count("is not valid TOML") == 1, daemon.log()
    assert daemon.get("/readyz").status_code == 200  # still serving, with the running config


def test_tokend_reload_fails_on_a_toml_syntax_error_saying_so_once(daemon_factory, fakes):  # type: ignore[no-untyped-def]
    daemon = daemon_factory()
    daemon.config.write_text(daemon.config.read_text() + BROKEN)
    result = subprocess.run(tokend_command("--config", str(daemon.config), "reload"),
                            capture_output=True, text=True, timeout=30)
    assert result.returncode == 3, result
    assert result.stderr.count("is not valid TOML") == 1, result.stderr
