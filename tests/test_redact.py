"""Scrubbing secrets and tokens out of text and log records."""

from __future__ import annotations

import logging

from tokend.redact import RedactingFilter, Redactor, excerpt


def test_secrets_and_live_tokens_are_masked_longest_first() -> None:
    redactor = Redactor(["pass", "password123"])
    redactor.set_tokens("fts", ["tok-1", ""])
    assert redactor.scrub("password123 then pass then tok-1") == "*** then *** then ***"
    redactor.set_tokens("fts", ["tok-2", "tok-1"])
    redactor.add_secrets(["rotated-key"])
    assert redactor.scrub("tok-1 tok-2 rotated-key") == "*** *** ***"


def test_excerpts_are_single_line_short_and_scrubbed() -> None:
    redactor = Redactor(["hunter2"])
    text = excerpt("<html>\n  <body>hunter2 " + "x" * 500 + "</body>", redactor)
    assert "\n" not in text and "hunter2" not in text and len(text) == 200 and text.endswith("…")


def test_the_log_filter_scrubs_messages_arguments_and_tracebacks() -> None:
    record = logging.LogRecord("x", logging.ERROR, __file__, 1, "login with %s failed", ("hunter2",), None)
    try:
        raise ValueError("the password was hunter2")
    except ValueError:
        import sys

        record.exc_info = sys.exc_info()
    assert RedactingFilter(Redactor(["hunter2"])).filter(record)
    rendered = logging.Formatter().format(record)
    assert "hunter2" not in rendered and "login with *** failed" in rendered and "the password was ***" in rendered


def test_a_short_secret_is_masked_as_a_word_only_so_other_messages_stay_readable() -> None:
    redactor = Redactor(["a", "ab1"])
    assert redactor.scrub("login answered 401: Invalid email") == "login answered 401: Invalid email"
    # Wherever it stands alone (as an upstream would echo it: quoted, a form field, a header) it is masked.
    echoed = '{"password": "a"} password=a&x=1 Authorization: ab1, a'
    assert redactor.scrub(echoed) == '{"password": "***"} password=***&x=1 Authorization: ***, ***'
    redactor.set_tokens("static", ["tok"])
    assert redactor.scrub("token tok, not stokes") == "token ***, not stokes"
    # A secret of eight characters or more is masked wherever it occurs, inside words too.
    assert Redactor(["hunter22"]).scrub("xhunter22y") == "x***y"


def test_a_short_secret_leaves_another_providers_error_readable_end_to_end(tmp_path, fakes) -> None:  # type: ignore[no-untyped-def]
    import subprocess

    from tests.daemon import Daemon, tokend_command, write_config

    config = write_config(tmp_path, fakes, extra='[providers.short]\nkind = "static"\nkey = "a"\n')
    config.chmod(0o600)
    (tmp_path / "fts_password").write_text("not-the-password\n")
    check = subprocess.run(tokend_command("--config", str(config), "check"), capture_output=True, text=True,
                           timeout=60)
    assert 'provider "short", field "key": the secret from plain string is shorter than 8 characters' in check.stdout
    daemon = Daemon(config, log_path=tmp_path / "daemon.log")
    try:
        daemon.start(ready=False)
        daemon.wait_until(lambda: daemon.get("/status").json()["providers"]["fts"]["last_error"], what="fts to fail")
        message = daemon.get("/status").json()["providers"]["fts"]["last_error"]["message"]
        assert "Invalid email or password" in message, message
        assert "Invalid email or password" in daemon.log()
        assert "not-the-password" not in daemon.log() + message
    finally:
        daemon.kill()
