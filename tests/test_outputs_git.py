"""`tokend git-credential`: real git (ls-remote, clone) against `git http-backend` behind a server that
takes only the provider's live tokens, with the real daemon as a subprocess."""

from __future__ import annotations

import calendar
import datetime
import os
import shlex
import subprocess
import sys
import time
import tomllib
from collections.abc import Iterator
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from tests.daemon import Daemon, add_settings, tokend_command, write_config
from tests.git_server import GitServer
from tests.tools import require_tool
from tokend.outputs.git import unix_seconds
from tokend.testing import FakeProviders

USER = "tokend-bot"
ROOT = Path(__file__).resolve().parent.parent


@pytest.fixture
def git() -> str:
    return require_tool("git", "apt-get install git")


@pytest.fixture
def server(tmp_path: Path, fakes: FakeProviders, git: str) -> Iterator[GitServer]:
    backend = require_tool("/usr/lib/git-core/git-http-backend", "it comes with git: apt-get install git")
    root = tmp_path / "served"
    root.mkdir()
    work = tmp_path / "work"
    _git(git, "init", "-q", "-b", "main", str(work), home=tmp_path)
    (work / "README").write_text("served through tokend\n")
    _git(git, "-C", str(work), "add", "README", home=tmp_path)
    _git(git, "-C", str(work), "-c", "user.name=t", "-c", "user.email=t@example.com", "commit", "-qm", "first",
         home=tmp_path)
    _git(git, "clone", "-q", "--bare", str(work), str(root / "repo.git"), home=tmp_path)

    def accepts(user: str, password: str) -> bool:
        return user == USER and fakes.felloh.is_valid(password)

    with GitServer(root, backend, accepts) as served:
        yield served


@pytest.fixture
def daemon(tmp_path: Path, fakes: FakeProviders, server: GitServer) -> Iterator[Daemon]:
    config = add_settings(write_config(tmp_path, fakes), {
        "felloh": f'git_hosts = ["{server.host}"]\ngit_username = "{USER}"',
        "fts": 'git_hosts = ["git.example.com"]\ngit_username = "someone"',
    })
    started = Daemon(config, log_path=tmp_path / "daemon.log")
    started.start()
    yield started
    started.kill()


def _environment(home: Path, daemon: Daemon | None = None) -> dict[str, str]:
    env = {key: value for key, value in os.environ.items() if not key.startswith(("GIT_", "TOKEND_"))}
    env.update(HOME=str(home), GIT_CONFIG_NOSYSTEM="1", GIT_TERMINAL_PROMPT="0", GIT_ASKPASS="", SSH_ASKPASS="")
    if daemon is not None:
        env["TOKEND_CONFIG"] = str(daemon.config)  # found as `tokend get` finds it: git passes no options
    return env


def _git(git: str, *args: str, home: Path, daemon: Daemon | None = None) -> subprocess.CompletedProcess[str]:
    helper = "!" + shlex.join([sys.executable, "-m", "tokend", "git-credential"])
    # An empty helper first clears any configured before ours.
    return subprocess.run([git, "-c", "credential.helper=", "-c", f"credential.helper={helper}", *args],
                          capture_output=True, text=True, timeout=60, env=_environment(home, daemon), check=False)


def _helper(daemon: Daemon, operation: str, text: str, *options: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(tokend_command("--config", str(daemon.config), "git-credential", *options, operation),
                          input=text, capture_output=True, text=True, timeout=60, check=False)


def test_ls_remote_and_clone_get_the_providers_token(
    git: str, server: GitServer, daemon: Daemon, tmp_path: Path
) -> None:
    listed = _git(git, "ls-remote", f"{server.url}/repo.git", home=tmp_path, daemon=daemon)
    assert listed.returncode == 0, listed.stderr
    assert "refs/heads/main" in listed.stdout
    cloned = _git(git, "clone", "-q", f"{server.url}/repo.git", str(tmp_path / "clone"), home=tmp_path,
                  daemon=daemon)
    assert cloned.returncode == 0, cloned.stderr
    assert (tmp_path / "clone" / "README").read_text() == "served through tokend\n"
    assert server.users and set(server.users) == {USER} and server.refused == []


def test_a_refused_token_makes_git_erase_it_and_the_next_command_succeeds(
    git: str, server: GitServer, daemon: Daemon, fakes: FakeProviders, tmp_path: Path
) -> None:
    first = daemon.get("/token/felloh").json()["token"]
    assert _git(git, "ls-remote", f"{server.url}/repo.git", home=tmp_path, daemon=daemon).returncode == 0
    logins = fakes.felloh.logins
    fakes.felloh.revoke()  # the server now refuses the token tokend holds
    refused = _git(git, "ls-remote", f"{server.url}/repo.git", home=tmp_path, daemon=daemon)
    assert refused.returncode != 0 and first in server.refused
    # git's erase named the refused token: the daemon logged in again at once.
    daemon.wait_until(lambda: fakes.felloh.logins > logins, what="the login that replaces the refused token")
    again = _git(git, "ls-remote", f"{server.url}/repo.git", home=tmp_path, daemon=daemon)
    assert again.returncode == 0, again.stderr
    assert daemon.get("/token/felloh").json()["token"] != first


def test_get_answers_username_password_and_expiry_for_the_listed_host(daemon: Daemon, server: GitServer) -> None:
    answer = _helper(daemon, "get", f"protocol=http\nhost={server.host}\npath=repo.git\n\n")
    assert answer.returncode == 0, answer.stderr
    lines = dict(line.split("=", 1) for line in answer.stdout.splitlines())
    token = daemon.get("/token/felloh").json()
    assert lines["username"] == USER and lines["password"] == token["token"]
    assert abs(int(lines["password_expiry_utc"]) - (time.time() + token["expires_in"])) <= 2
    assert set(lines) == {"username", "password", "password_expiry_utc"}


def test_a_host_no_provider_lists_gets_no_answer_so_git_asks_on(daemon: Daemon) -> None:
    answer = _helper(daemon, "get", "protocol=https\nhost=elsewhere.example.com\n")
    assert (answer.returncode, answer.stdout) == (0, "")
    # The host is matched as git gives it, the port included.
    assert _helper(daemon, "get", "protocol=https\nhost=git.example.com:8443\n").stdout == ""
    named = _helper(daemon, "get", "protocol=https\nhost=git.example.com\n")
    assert named.stdout.startswith("username=someone\npassword=")


def test_provider_option_and_the_refusals(daemon: Daemon) -> None:
    token = daemon.get("/token/fts").json()["token"]
    named = _helper(daemon, "get", "protocol=https\nhost=anything.example.com\n", "--provider", "fts")
    assert f"password={token}\n" in named.stdout
    # A token over plain http to another machine would be readable on the way: no answer.
    plain = _helper(daemon, "get", "protocol=http\nhost=git.example.com\n")
    assert plain.returncode != 0 and plain.stdout == "" and "https" in plain.stderr
    nameless = _helper(daemon, "get", "protocol=https\nhost=x\n", "--provider", "flotiq")
    assert nameless.returncode != 0 and "git_username" in nameless.stderr and nameless.stdout == ""
    unknown = _helper(daemon, "get", "protocol=https\nhost=x\n", "--provider", "nope")
    assert unknown.returncode != 0 and "nope" in unknown.stderr
    stored = _helper(daemon, "store", f"protocol=https\nhost=git.example.com\nusername=u\npassword={token}\n")
    assert (stored.returncode, stored.stdout, stored.stderr) == (0, "", "")
    assert daemon.get("/token/fts").json()["token"] == token


def test_erase_of_a_password_that_is_not_the_current_token_makes_no_login(
    daemon: Daemon, fakes: FakeProviders
) -> None:
    logins = fakes.fintech_studios.logins
    erased = _helper(daemon, "erase", "protocol=https\nhost=git.example.com\nusername=someone\npassword=old\n")
    assert erased.returncode == 0, erased.stderr
    assert fakes.fintech_studios.logins == logins


def test_with_clients_the_helper_needs_its_key(tmp_path: Path, fakes: FakeProviders) -> None:
    key = "git-helper-client-key-0123456789"
    config = add_settings(write_config(tmp_path, fakes, extra=f'[clients.ci]\nkey = "{key}"\nproviders = ["fts"]\n'),
                          {"fts": 'git_hosts = ["git.example.com"]\ngit_username = "someone"'})
    daemon = Daemon(config, log_path=tmp_path / "daemon.log")
    daemon.client.headers["Authorization"] = f"Bearer {key}"
    try:
        daemon.start()
        ask = "protocol=https\nhost=git.example.com\n"
        refused = _helper(daemon, "get", ask)
        assert refused.returncode != 0 and refused.stdout == ""
        key_file = tmp_path / "key"
        key_file.write_text(key)
        allowed = _helper(daemon, "get", ask, "--client-key-file", str(key_file))
        assert f"password={daemon.get('/token/fts').json()['token']}" in allowed.stdout
    finally:
        daemon.kill()


def _documented_git_lines() -> list[list[str]]:
    """The `git config` lines of docs/tools.md's git section, as a shell would split them."""
    section = (ROOT / "docs" / "tools.md").read_text().split("\n## git\n", 1)[1].split("\n## ", 1)[0]
    return [shlex.split(line) for line in section.splitlines() if line.startswith("git config --global credential.")]


def _installed_script(name: str, folder: Path) -> Path:
    """The console script pyproject.toml declares as `name`, written as pip writes it, in `folder`."""
    target = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["scripts"][name]
    module, function = target.split(":")
    folder.mkdir(exist_ok=True)
    script = folder / name
    script.write_text(f"#!{sys.executable}\nimport sys\nfrom {module} import {function}\nsys.exit({function}())\n")
    script.chmod(0o755)
    return script


@pytest.mark.parametrize("which", [0, 1], ids=["the-host-line", "the-provider-line"])
def test_the_documented_git_setup_works_from_another_directory_with_the_per_user_config(
    git: str, server: GitServer, daemon: Daemon, tmp_path: Path, which: int
) -> None:
    words = _documented_git_lines()[which]
    assert words[:3] == ["git", "config", "--global"] and words[3].startswith("credential.https://")
    assert words[4].split()[0] == "tokend"  # the helper is named, not spelled out as a command
    host = words[3].removeprefix("credential.").removesuffix(".helper")
    words[3] = f"credential.{server.url}.helper"  # the test's git server stands in for the documented host
    words[4] = words[4].replace("--provider gitea", "--provider felloh")
    home = tmp_path / "home"
    (home / ".config" / "tokend").mkdir(parents=True)
    (home / ".config" / "tokend" / "config.toml").write_text(daemon.config.read_text())
    elsewhere = tmp_path / "elsewhere"  # git runs the helper here: no ./tokend.toml, no $TOKEND_CONFIG
    elsewhere.mkdir()
    env = {key: value for key, value in _environment(home).items() if key != "XDG_CONFIG_HOME"}
    env["PATH"] = f"{_installed_script('git-credential-tokend', tmp_path / 'bin').parent}{os.pathsep}{env['PATH']}"
    configured = subprocess.run([git, *words[1:]], env=env, cwd=elsewhere, capture_output=True, text=True,
                                timeout=60, check=False)
    assert configured.returncode == 0, configured.stderr
    assert host in (ROOT / "docs" / "tools.md").read_text()
    listed = subprocess.run([git, "ls-remote", f"{server.url}/repo.git"], env=env, cwd=elsewhere,
                            capture_output=True, text=True, timeout=60, check=False)
    assert listed.returncode == 0, listed.stderr
    assert "refs/heads/main" in listed.stdout and set(server.users) == {USER}


def test_the_bang_helper_of_earlier_setups_still_works(git: str, server: GitServer, daemon: Daemon,
                                                       tmp_path: Path) -> None:
    helper = "!" + shlex.join([sys.executable, "-m", "tokend", "git-credential"])
    env = _environment(tmp_path, daemon)
    configured = subprocess.run([git, "config", "--global", f"credential.{server.url}.helper", helper], env=env,
                                capture_output=True, text=True, timeout=60, check=False)
    assert configured.returncode == 0, configured.stderr
    listed = subprocess.run([git, "ls-remote", f"{server.url}/repo.git"], env=env, capture_output=True, text=True,
                            timeout=60, check=False)
    assert listed.returncode == 0 and "refs/heads/main" in listed.stdout, listed.stderr


def test_git_credential_help_shows_the_helper_line_the_docs_show() -> None:
    shown = subprocess.run(tokend_command("git-credential", "--help"), capture_output=True, text=True, timeout=60)
    said = "".join(shown.stdout.split())  # argparse wraps lines, at spaces and after hyphens
    assert "credential.https://HOST.helpertokend(gitrunsgit-credential-tokend" in said
    assert "'!tokendgit-credential'workstoo" in said


def _injecting_url(server: GitServer, host: str) -> str:
    """A remote whose user name, percent-decoded by git, holds separators `str.splitlines()` would break at
    (git refuses only LF and CR there): a reader that splits on them sees `protocol` and `host` of its own."""
    return f"http://x%1Cprotocol=https%1Chost={host}%0Bpath=y%1D@{server.host}/repo.git"


@pytest.mark.parametrize("per_host", [False, True], ids=["global-helper", "per-host-helper"])
def test_a_user_name_smuggling_attributes_gets_no_token_of_another_host(
    git: str, server: GitServer, daemon: Daemon, tmp_path: Path, per_host: bool
) -> None:
    other = daemon.get("/token/fts").json()["token"]  # fts serves git.example.com, not this server
    helper = "!" + shlex.join([sys.executable, "-m", "tokend", "git-credential"])
    scope = f"credential.http://{server.host}.helper" if per_host else "credential.helper"
    listed = subprocess.run([git, "-c", "credential.helper=", "-c", f"{scope}={helper}", "ls-remote",
                             _injecting_url(server, "git.example.com")],
                            capture_output=True, text=True, timeout=60, env=_environment(tmp_path, daemon),
                            check=False)
    assert listed.returncode != 0  # no credential at all: the request was refused whole
    assert other not in server.refused and server.users == []
    assert "control character" in listed.stderr


def test_the_helper_reads_lines_as_git_writes_them(daemon: Daemon) -> None:
    token = daemon.get("/token/fts").json()["token"]
    for smuggled in ("\x0b", "\x0c", "\x1c", "\x1d", "\x1e", "\x85", "\u2028", "\u2029", "\r", "\x00", "\x7f"):
        answer = _helper(daemon, "get", f"protocol=https\nhost=127.0.0.1\nusername=x{smuggled}host=git.example.com"
                                        "\n")
        assert answer.returncode != 0 and answer.stdout == "", repr(smuggled)
        assert token not in answer.stderr
    # A key given twice, a line that is not key=value, an unterminated last line: the whole request is refused.
    for text in ("protocol=https\nhost=127.0.0.1\nhost=git.example.com\n", "protocol=https\nhost\n",
                 "protocol=https\nhost=git.example.com"):
        refused = _helper(daemon, "get", text)
        assert refused.returncode != 0 and refused.stdout == "", repr(text)
    # The first `=` splits: the rest is the value, `=` and all. Arrays (`wwwauth[]`) may repeat.
    kept = _helper(daemon, "get", "capability[]=authtype\nprotocol=https\nhost=git.example.com\n"
                                  "wwwauth[]=Basic realm=\"a=b\"\nwwwauth[]=Bearer\n\n")
    assert f"password={token}\n" in kept.stdout


def test_plain_http_is_answered_only_for_a_loopback_address(daemon: Daemon) -> None:
    for host in ("127.0.0.1.evil.test", "127.evil.test", "localhost.evil.test", "[::1].evil.test:80"):
        refused = _helper(daemon, "get", f"protocol=http\nhost={host}\n", "--provider", "fts")
        assert refused.returncode != 0 and refused.stdout == "" and "https" in refused.stderr, host
    for protocol in ("HTTP", "Http"):
        upper = _helper(daemon, "get", f"protocol={protocol}\nhost=git.example.com\n")
        assert upper.returncode != 0 and upper.stdout == "", protocol
    for host in ("127.0.0.1:8080", "127.1.2.3", "localhost", "[::1]:443"):
        allowed = _helper(daemon, "get", f"protocol=http\nhost={host}\n", "--provider", "fts")
        assert allowed.returncode == 0 and "password=" in allowed.stdout, host


@given(st.datetimes(min_value=datetime.datetime(1970, 1, 1), max_value=datetime.datetime(9999, 12, 31, 23, 59, 59)))
def test_an_expiry_is_counted_in_seconds_as_the_calendar_counts_them(moment: datetime.datetime) -> None:
    stamp = moment.strftime("%Y-%m-%dT%H:%M:%SZ")
    assert unix_seconds(stamp) == calendar.timegm(moment.timetuple())


@pytest.mark.parametrize("stamp", ["", "2026-12-07", "2026-12-07T05:00:00", "2026-12-07T05:00:00.5Z",
                                   "2026-13-07T05:00:00Z", "2026-12-07 05:00:00Z", "2026-12-07T25:00:00Z",
                                   "२०२६-12-07T05:00:00Z", "-026-12-07T05:00:00Z"])
def test_an_expiry_in_another_form_is_left_out(stamp: str) -> None:
    assert unix_seconds(stamp) is None
