"""What the command line says when a newcomer gets something slightly wrong: a near name is suggested, the
configured ones listed, and the message says what to do."""

from __future__ import annotations

import os
import socket
import subprocess
from pathlib import Path

import pytest

from tests.daemon import Daemon, tokend_command
from tests.test_cli import complete_in_bash
from tests.tools import DEBIAN, require_tool


def tokend(*args: str, cwd: Path | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(tokend_command(*args), capture_output=True, text=True, timeout=60, cwd=cwd,
                          env={key: value for key, value in os.environ.items() if not key.startswith("TOKEND_")})


def test_a_kind_typo_suggests_the_kind_in_the_config_and_in_init(tmp_path: Path) -> None:
    config = tmp_path / "tokend.toml"
    config.write_text('[providers.gh]\nkind = "github-app"\n')
    checked = tokend("--config", str(config), "check")
    assert checked.returncode == 3
    assert '  - provider "gh": unknown kind "github-app"; did you mean "github_app"? kind must be one of "felloh", ' \
           in checked.stderr
    started = tokend("init", "github-app")
    assert started.returncode == 2 and started.stdout == ""
    assert started.stderr.startswith("tokend: 'github-app' is not a provider kind; did you mean github_app? "
                                     "tokend init knows felloh, ")
    unlike = tokend("init", "nothing-like-it")
    assert "did you mean" not in unlike.stderr and "tokend init knows felloh, " in unlike.stderr


def test_an_unknown_provider_lists_the_configured_ones_and_the_near_one(daemon_factory) -> None:  # type: ignore[no-untyped-def]
    daemon: Daemon = daemon_factory()
    typo = tokend("--config", str(daemon.config), "get", "fltiq")
    assert typo.returncode == 6 and typo.stdout == ""
    assert typo.stderr == (f"tokend: No provider named 'fltiq' is configured. (asked the daemon at {daemon.url})\n"
                           "  configured: felloh, flotiq, fts; did you mean flotiq?\n")
    far = tokend("--config", str(daemon.config), "refresh", "zzz")
    assert far.returncode == 6 and far.stderr.endswith("\n  configured: felloh, flotiq, fts\n")


def test_a_port_in_use_asks_whether_tokend_already_runs(tmp_path: Path) -> None:
    taken = socket.socket()
    taken.bind(("127.0.0.1", 0))
    taken.listen()
    try:
        port = taken.getsockname()[1]
        config = tmp_path / "tokend.toml"
        config.write_text(f"[server]\nport = {port}\n")
        config.chmod(0o600)
        ran = tokend("--config", str(config), "run")
    finally:
        taken.close()
    assert ran.returncode == 1
    assert ran.stderr.endswith(f"tokend: cannot listen on 127.0.0.1:{port}: address already in use: is tokend already "
                               "running? `tokend status`, or change `[server] port`\n")


def test_bare_tokend_prints_the_help_and_help_names_a_commands(tmp_path: Path) -> None:
    bare = tokend()
    assert bare.returncode == 2 and bare.stdout.startswith("usage: tokend [-h]") and "get" in bare.stdout
    assert "exit codes:" in bare.stdout and bare.stderr == ""
    assert tokend("help").stdout == tokend("--help").stdout
    shown = tokend("help", "get")
    assert shown.returncode == 0 and shown.stdout == tokend("get", "--help").stdout
    assert tokend("help", "felloh", "keys").stdout.startswith("usage: tokend felloh keys")
    unknown = tokend("help", "nope")
    assert unknown.returncode == 2 and "invalid choice: 'nope'" in unknown.stderr


_CONFIG = '[server]\nport = 1\n\n[providers.github]  # the app\nkind = "github_app"\n[providers.gcp-prod]\n' \
          'kind = "static"\n[[providers.gcp-prod.sinks]]\npath = "/x"\n[providers."quoted one"]\n'


def test_provider_names_complete_from_the_config_in_bash_zsh_and_fish(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    home = tmp_path / "home"
    (home / ".config" / "tokend").mkdir(parents=True)
    (home / ".config" / "tokend" / "config.toml").write_text(_CONFIG)
    named = tmp_path / "named.toml"
    named.write_text('[providers.only-here]\nkind = "static"\n')
    scripts = {shell: tmp_path / f"tokend.{shell}" for shell in ("bash", "zsh", "fish")}
    for shell, script in scripts.items():
        script.write_text(tokend("completion", shell).stdout)
    monkeypatch.delenv("TOKEND_CONFIG", raising=False)
    monkeypatch.delenv("XDG_CONFIG_HOME", raising=False)
    monkeypatch.setenv("HOME", str(home))
    monkeypatch.chdir(tmp_path)  # no ./tokend.toml here: the per-user one is read
    bash = str(scripts["bash"])
    assert complete_in_bash(bash, "get", "")[-2:] == ["github", "gcp-prod"]
    assert complete_in_bash(bash, "get", "g") == ["github", "gcp-prod"]
    assert complete_in_bash(bash, "exec", "--provider", "gi") == ["github"]
    assert complete_in_bash(bash, "--config", str(named), "logout", "")[-1:] == ["only-here"]
    assert complete_in_bash(bash, "status", "g") == []  # status takes no provider
    zsh = require_tool("zsh", f"{DEBIAN} zsh")
    probe = f"source {scripts['zsh']} 2>/dev/null; _tokend_providers; config={named}; _tokend_providers"
    found = subprocess.run([zsh, "-f", "-c", probe], capture_output=True, text=True, timeout=30)
    assert found.stdout.split() == ["github", "gcp-prod", "only-here"], found.stderr
    fish = require_tool("fish", f"{DEBIAN} fish")
    for line, expected in (("tokend kube-credential gc", ["gcp-prod"]),
                           (f"tokend login --config {named} ", ["only-here"]),
                           ("tokend git-credential --provider ", ["gcp-prod", "github"])):
        offered = subprocess.run([fish, "--no-config", "-c", f"source {scripts['fish']}; complete -C '{line}'"],
                                 capture_output=True, text=True, timeout=30)
        names = sorted(c.split("\t")[0] for c in offered.stdout.splitlines() if not c.startswith("-"))
        assert names == expected, (line, offered.stdout, offered.stderr)


def test_init_of_a_user_token_offers_state_with_its_key_command_and_check_shows_no_empty_sources(
    tmp_path: Path
) -> None:
    started = tokend("init", "oauth2_refresh_token")
    assert started.returncode == 0
    assert started.stdout.endswith(
        "# each one. Make its key in this file's folder, readable by you alone, then uncomment:\n"
        "#   (umask 077; openssl rand -base64 32 > state_key)\n"
        "# [state]\n"
        '# encryption_key = { file = "state_key" }   # a relative path is read from this file\'s folder\n')
    assert "[state]" not in tokend("init", "static").stdout
    # Uncommented as it says, in the folder it says: the config holds and the key is found.
    text = started.stdout.replace("# [state]", "[state]").replace('# encryption_key = { file = "state_key" }',
                                                                  'encryption_key = { file = "state_key" }')
    config = tmp_path / "tokend.toml"
    config.write_text(text.replace('{ env = "ME_REFRESH_TOKEN" }', '"a-first-refresh-token-0123"'))
    config.chmod(0o600)
    shell = require_tool("sh", "any POSIX system has it")
    subprocess.run([shell, "-c", "umask 022; (umask 077; openssl rand -base64 32 > state_key)"], cwd=tmp_path,
                   check=True, timeout=60)
    checked = tokend("--config", str(config), "check")
    assert checked.returncode == 0, checked.stdout + checked.stderr
    assert f"(encryption_key from file {tmp_path / 'state_key'})" in checked.stdout
    keyless = tmp_path / "keyless.toml"
    keyless.write_text('[providers.open]\nkind = "http"\nurl = "https://auth.example.com/token"\n'
                       'token_pointer = "/access_token"\n')
    keyless.chmod(0o600)
    listed = tokend("--config", str(keyless), "check")
    assert "  open: http at https://auth.example.com/token\n" in listed.stdout, listed.stdout + listed.stderr


def test_status_durations_read_as_people_say_them_and_both_views_have_the_same_columns() -> None:
    import io
    import time

    from tokend.cli.status_watch import duration, status_rows, table, watch

    assert [duration(s) for s in (0, 42, 60, 3420, 3599, 3600, 7380, 86399, 90000, 86400 * 3)] == [
        "0s", "42s", "1m", "57m", "59m", "1h", "2h3m", "23h59m", "1d1h", "3d"]
    now = float(int(time.time()))  # whole seconds, as /status's times are
    stamp = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(now - 125))
    later = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(now + 3450))  # 57m30s: 57m for the next 30 s
    data = {"ready": True, "providers": {
        "api": {"kind": "oauth2_client_credentials", "state": "retrying", "source": "login", "expires_in": 7380,
                "next_refresh": later, "last_error": {"message": "login answered 503", "at": stamp}},
        "old": {"kind": "static", "state": "ok", "source": "static", "expires_in": None, "next_refresh": None,
                "last_error": {"message": "gone", "at": stamp, "since_last_success": False}},
    }}
    shown = table(status_rows(data, now)).splitlines()
    assert shown == [
        "PROVIDER  KIND                       STATE     SOURCE  EXPIRES IN  NEXT REFRESH  LAST ERROR",
        "api       oauth2_client_credentials  retrying  login   2h3m        in 57m        login answered 503 (2m ago)",
        "old       static                     ok        static  never       -             -",
    ]

    class Replying:
        def request(self, method: str, path: str) -> object:
            import json

            from tokend.api.client import Reply

            return Reply(200, json.dumps(data).encode())

    out = io.StringIO()
    assert watch(Replying(), out=out, rounds=1) == 0  # type: ignore[arg-type]
    assert out.getvalue().splitlines()[1:] == shown  # --watch: the same columns, KIND and LAST ERROR too
