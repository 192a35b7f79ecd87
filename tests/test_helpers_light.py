"""The helpers git, Docker, kubectl and scripts start again and again import no more than they need, read
their command line as argparse would, and find the daemon from any directory (the per-user config)."""

from __future__ import annotations

import os
import subprocess
import sys
import tomllib
from collections.abc import Iterator
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from tests.daemon import Daemon, add_settings, tokend_command, write_config
from tokend.cli.parser import build_parser
from tokend.cli.quickargs import quick_args
from tokend.config.discovery import _plain_server_table, config_candidates, find_config
from tokend.testing import FakeProviders

ROOT = Path(__file__).resolve().parent.parent
# Beyond the frameworks: what the helpers used to import and no longer need for a well-formed call.
HEAVY = {"fastapi", "starlette", "pydantic", "pydantic_core", "httpx", "httpcore", "anyio", "uvicorn", "apscheduler",
         "asyncio", "http.client", "email", "ssl", "dataclasses", "inspect", "argparse", "shutil", "tomllib",
         "typing", "hashlib", "secrets", "_strptime", "calendar", "datetime"}


@pytest.fixture
def daemon(tmp_path: Path, fakes: FakeProviders) -> Iterator[Daemon]:
    config = add_settings(write_config(tmp_path, fakes), {
        "felloh": 'git_hosts = ["git.example.com"]\ngit_username = "bot"\n'
                  'docker_registries = ["registry.example.com"]\nregistry_username = "bot"',
    })
    started = Daemon(config, log_path=tmp_path / "daemon.log")
    started.start()
    yield started
    started.kill()


def _script(name: str) -> list[str]:
    """pyproject.toml's console script `name`, run as its installed script runs it."""
    module, function = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["scripts"][name].split(":")
    return [sys.executable, "-c", f"import sys; from {module} import {function}; sys.exit({function}())"]


HELPERS = {
    "tokend get": (["tokend", "get", "felloh"], ""),
    "tokend git-credential": (["tokend", "git-credential", "get"], "protocol=https\nhost=git.example.com\n\n"),
    "git-credential-tokend": (["git-credential-tokend", "get"], "protocol=https\nhost=git.example.com\n\n"),
    "docker-credential-tokend": (["docker-credential-tokend", "get"], "registry.example.com"),
    "tokend kube-credential": (["tokend", "kube-credential", "felloh"], ""),
}


@pytest.mark.parametrize("helper", HELPERS)
def test_each_helper_finds_the_daemon_from_the_user_config_and_imports_little(
    daemon: Daemon, tmp_path: Path, helper: str
) -> None:
    home = tmp_path / "home"
    (home / ".config" / "tokend").mkdir(parents=True)
    (home / ".config" / "tokend" / "config.toml").write_text(daemon.config.read_text())
    elsewhere = tmp_path / "elsewhere"  # a repository, a build context: no ./tokend.toml here
    elsewhere.mkdir()
    words, stdin = HELPERS[helper]
    command = [*_script(words[0]), *words[1:]]
    env = {key: value for key, value in os.environ.items() if not key.startswith(("TOKEND_", "XDG_"))}
    result = subprocess.run([command[0], "-X", "importtime", *command[1:]], input=stdin, cwd=elsewhere,
                            env={**env, "HOME": str(home)}, capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stdout + result.stderr
    assert daemon.get("/token/felloh").json()["token"] in result.stdout
    imported = {line.rsplit("|", 1)[1].strip() for line in result.stderr.splitlines()
                if line.startswith("import time:")}
    assert "tokend.api.client" in imported  # the parse found the imports
    assert sorted(imported & HEAVY) == []


def test_no_config_and_no_daemon_says_where_it_looked_and_what_it_tried(tmp_path: Path) -> None:
    from tests.daemon import free_port

    port = free_port()
    env = {key: value for key, value in os.environ.items() if not key.startswith(("TOKEND_", "XDG_"))}
    env.update(HOME=str(tmp_path), TOKEND_SERVER__PORT=str(port))
    result = subprocess.run(tokend_command("get", "me"), cwd=tmp_path, env=env, capture_output=True, text=True,
                            timeout=60)
    assert result.returncode == 4
    assert result.stderr == (
        f"tokend: tokend is not running at http://127.0.0.1:{port} (connection refused); start it with `tokend run`\n"
        "  no config file was found (looked at ./tokend.toml, ~/.config/tokend/config.toml, "
        "/etc/tokend/config.toml), so tokend tried the default address; name the config with --config PATH or "
        "$TOKEND_CONFIG, or the daemon with --url or $TOKEND_URL\n")
    docker = subprocess.run([*_script("docker-credential-tokend"), "get"], input="ghcr.io", cwd=tmp_path,
                            env={**env, "XDG_CONFIG_HOME": str(tmp_path / "xdg")}, capture_output=True, text=True,
                            timeout=60)
    assert docker.returncode == 1 and docker.stderr == ""  # Docker shows stdout
    assert "looked at ./tokend.toml, ~/xdg/tokend/config.toml, ~/.config/tokend/config.toml" in docker.stdout


def test_the_per_user_places_are_found_in_order(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("TOKEND_CONFIG", raising=False)
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    monkeypatch.setenv("XDG_CONFIG_HOME", str(tmp_path / "xdg"))
    user, xdg = tmp_path / "home" / ".config" / "tokend", tmp_path / "xdg" / "tokend"
    assert config_candidates() == [Path("tokend.toml"), xdg / "config.toml", user / "config.toml",
                                   Path("/etc/tokend/config.toml")]
    for folder in (user, xdg):
        folder.mkdir(parents=True)
        (folder / "config.toml").write_text("[server]\nport = 9\n")
        assert find_config(None) == folder / "config.toml"  # XDG's before ~/.config
    (tmp_path / "tokend.toml").write_text("")
    assert find_config(None) == Path("tokend.toml")


# --- the command line, read without argparse -------------------------------------------------------------

SAME_AS_ARGPARSE = [
    ["get", "fts"],
    ["get", "fts", "--format", "json"],
    ["get", "--format=headers", "fts", "--url", "http://127.0.0.1:9"],
    ["--config", "x.toml", "get", "fts"],
    ["get", "fts", "--config", "y.toml", "--client-key-file", "k"],
    ["git-credential", "get"],
    ["git-credential", "--provider", "gitea", "erase", "--url=unix:/run/t.sock"],
    ["kube-credential", "k8s", "--client-key-file=/k"],
    ["aws-credential", "prod", "--url", "unix:/run/tokend.sock"],
]


@pytest.mark.parametrize("argv", SAME_AS_ARGPARSE, ids=" ".join)
def test_the_quick_reading_is_argparses(argv: list[str]) -> None:
    quick = quick_args(argv)
    assert quick is not None
    expected = vars(build_parser().parse_args(argv))
    expected.pop("handler")
    expected.setdefault("config", None)
    assert {key: value for key, value in vars(quick).items() if key in expected} == expected


@pytest.mark.parametrize("argv", [
    [], ["get"], ["get", "a", "b"], ["get", "fts", "-h"], ["--help"], ["--version"], ["get", "fts", "--format", "xml"],
    ["get", "fts", "--form", "raw"], ["get", "fts", "--url"], ["git-credential", "fetch"], ["status"],
    ["--url", "http://x", "get", "fts"], ["get", "fts", "--provider", "p"], ["kube-credential", "k", "--", "x"],
], ids=" ".join)
def test_anything_else_is_left_to_argparse(argv: list[str]) -> None:
    assert quick_args(argv) is None


# --- the [server] table, read without tomllib ------------------------------------------------------------

_line = st.one_of(
    st.sampled_from(["", "# a comment", "[server]", "[providers.a]", "[[providers.a.sinks]]", "[server.x]",
                     'server.port = 1', "x = [", "]", '"port" = 1', "port = 08", 'host = "a\\"b"', "kind = 'x'",
                     "text = '''", "[ server ] # c", "[server", "port = 0x10", "this is = not TOML"]),
    st.builds(lambda key, value: f"{key} = {value}", st.sampled_from(["host", "port", "socket", "other"]),
              st.one_of(st.integers(0, 70000).map(str), st.text("ab.:/ #'\"", max_size=8).map(lambda t: f'"{t}"'),
                        st.text("ab.:/ #\"", max_size=8).map(lambda t: f"'{t}'"), st.just("true"))),
)


@settings(max_examples=400, deadline=None)
@given(st.lists(_line, max_size=8))
def test_the_plain_reading_agrees_with_tomllib_or_leaves_it_to_tomllib(lines: list[str]) -> None:
    text = "\n".join(lines)
    plain = _plain_server_table(text)
    try:
        server = tomllib.loads(text).get("server", {})
    except tomllib.TOMLDecodeError:
        return  # the daemon takes no such file: the helper asks the daemon, which runs with the last it took
    if plain is not None:
        assert plain == {key: server[key] for key in ("host", "port", "socket") if key in server}


def test_the_plain_reading_takes_the_usual_files() -> None:
    example = (ROOT / "config.example.toml").read_text()
    assert _plain_server_table(example) == {"host": "127.0.0.1", "port": 8765}
    assert _plain_server_table('[server]\nsocket = "/run/tokend/tokend.sock"  # c\n') == {
        "socket": "/run/tokend/tokend.sock"}
