"""docker-credential-tokend, driven as the Docker CLI drives a credential helper: the operation as the only
argument, the request on stdin, the answer (or the error) on stdout, and the exit status."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.daemon import Daemon, add_settings, tokend_command, write_config
from tokend.testing import FakeProviders

NOT_FOUND = "credentials not found in native keychain"


@pytest.fixture
def daemon(tmp_path: Path, fakes: FakeProviders) -> Iterator[Daemon]:
    config = add_settings(write_config(tmp_path, fakes), {
        "felloh": 'docker_registries = ["registry.example.com:5000", "https://index.docker.io/v1/"]\n'
                  'registry_username = "robot"',
        "fts": 'docker_registries = ["ghcr.io"]\nregistry_username = "x-access-token"\n'
               'git_hosts = ["git.example.com"]\ngit_username = "bot"',
    })
    started = Daemon(config, log_path=tmp_path / "daemon.log")
    started.start()
    yield started
    started.kill()


def _helper_program() -> str:
    """The installed docker-credential-tokend: Docker runs it by that name from the PATH."""
    program = shutil.which("docker-credential-tokend", path=str(Path(sys.executable).parent))
    assert program is not None, "docker-credential-tokend is not installed beside this Python (pip install -e .)"
    return program


def docker_asks(operation: str, stdin: str, *, env: dict[str, str], cwd: Path | None = None
                ) -> subprocess.CompletedProcess[str]:
    environment = {key: value for key, value in os.environ.items() if not key.startswith("TOKEND_")}
    return subprocess.run([_helper_program(), operation], input=stdin, capture_output=True, text=True,
                          timeout=60, env={**environment, **env}, cwd=cwd, check=False)


def test_get_answers_the_registrys_provider_as_docker_reads_it(daemon: Daemon) -> None:
    env = {"TOKEND_CONFIG": str(daemon.config)}
    answer = docker_asks("get", "ghcr.io\n", env=env)
    assert answer.returncode == 0, answer.stdout + answer.stderr
    assert json.loads(answer.stdout) == {"ServerURL": "ghcr.io", "Username": "x-access-token",
                                         "Secret": daemon.get("/token/fts").json()["token"]}
    # As Docker writes them: a scheme, a trailing slash, Docker Hub's index URL, a port.
    felloh = daemon.get("/token/felloh").json()["token"]
    for server in ("https://index.docker.io/v1/", "registry.example.com:5000", "https://Registry.Example.com:5000"):
        found = json.loads(docker_asks("get", server, env=env).stdout)
        assert (found["ServerURL"], found["Username"], found["Secret"]) == (server, "robot", felloh)


def test_an_unknown_registry_is_dockers_not_found(daemon: Daemon) -> None:
    answer = docker_asks("get", "quay.io\n", env={"TOKEND_CONFIG": str(daemon.config)})
    assert (answer.returncode, answer.stdout.strip()) == (1, NOT_FOUND)
    # The port is part of the registry's name.
    assert docker_asks("get", "registry.example.com", env={"TOKEND_CONFIG": str(daemon.config)}).returncode == 1


def test_list_store_and_erase(daemon: Daemon, tmp_path: Path) -> None:
    # No config path from Docker: ./tokend.toml, as `tokend get` finds it.
    assert daemon.config == tmp_path / "tokend.toml"
    listed = docker_asks("list", "", env={}, cwd=tmp_path)
    assert listed.returncode == 0, listed.stdout
    assert json.loads(listed.stdout) == {"registry.example.com:5000": "robot", "index.docker.io/v1": "robot",
                                         "ghcr.io": "x-access-token"}
    stored = docker_asks("store", json.dumps({"ServerURL": "ghcr.io", "Username": "u", "Secret": "s"}), env={},
                         cwd=tmp_path)
    erased = docker_asks("erase", "ghcr.io", env={}, cwd=tmp_path)
    assert (stored.returncode, stored.stdout, erased.returncode, erased.stdout) == (0, "", 0, "")
    assert json.loads(docker_asks("get", "ghcr.io", env={}, cwd=tmp_path).stdout)["Secret"] != "s"


def test_a_daemon_that_is_not_running_is_said_on_stdout(tmp_path: Path) -> None:
    answer = docker_asks("get", "ghcr.io", env={"TOKEND_URL": "http://127.0.0.1:9"})
    assert answer.returncode == 1 and "not running" in answer.stdout
    garbled = docker_asks("get", "ghcr.io", env={"TOKEND_URL": "ftp://127.0.0.1:9"})
    assert garbled.returncode == 1 and "TOKEND_URL" in garbled.stdout and "Traceback" not in garbled.stderr
    assert docker_asks("frobnicate", "", env={}).returncode == 2


def test_with_clients_the_key_comes_from_the_environment(tmp_path: Path, fakes: FakeProviders) -> None:
    key = "docker-helper-client-key-012345"
    config = add_settings(write_config(tmp_path, fakes, extra=f'[clients.ci]\nkey = "{key}"\nproviders = ["fts"]\n'),
                          {"fts": 'docker_registries = ["ghcr.io"]\nregistry_username = "x-access-token"',
                           "felloh": 'docker_registries = ["quay.io"]\nregistry_username = "robot"'})
    daemon = Daemon(config, log_path=tmp_path / "daemon.log")
    daemon.client.headers["Authorization"] = f"Bearer {key}"
    try:
        daemon.start()
        env = {"TOKEND_CONFIG": str(config)}
        assert docker_asks("get", "ghcr.io", env=env).returncode == 1
        env["TOKEND_CLIENT_KEY"] = key
        assert json.loads(docker_asks("get", "ghcr.io", env=env).stdout)["Secret"] == \
            daemon.get("/token/fts").json()["token"]
        # A registry of a provider outside the key's list is not found, and not listed.
        assert docker_asks("get", "quay.io", env=env).stdout.strip() == NOT_FOUND
        assert json.loads(docker_asks("list", "", env=env).stdout) == {"ghcr.io": "x-access-token"}
    finally:
        daemon.kill()


def test_registries_without_a_user_name_are_a_config_error(tmp_path: Path, fakes: FakeProviders) -> None:
    config = add_settings(write_config(tmp_path, fakes), {"fts": 'docker_registries = ["ghcr.io"]'})
    checked = subprocess.run(tokend_command("--config", str(config), "check"), capture_output=True, text=True,
                             timeout=60, check=False)
    assert checked.returncode == 3
    assert 'provider "fts"' in checked.stderr and "docker_registries needs registry_username" in checked.stderr
    assert "Traceback" not in checked.stderr


HEAVY = ("fastapi", "starlette", "pydantic", "httpx", "uvicorn", "apscheduler", "asyncio", "ssl", "http.client")


@pytest.mark.parametrize("helper", [
    ("tokend.cli.main", "docker_credential_main", ["get"], "ghcr.io"),
    ("tokend.cli.main", "main", ["git-credential", "get"], "protocol=https\nhost=git.example.com\n"),
    ("tokend.cli.main", "main", ["kube-credential", "fts"], ""),
])
def test_the_helpers_import_no_web_framework(daemon: Daemon, helper: tuple[str, str, list[str], str]) -> None:
    module, function, argv, stdin = helper
    probe = (f"import sys; from {module} import {function}; code = {function}({argv!r}); "
             f"heavy = sorted(m for m in {HEAVY!r} if m in sys.modules); print(heavy, code, file=sys.stderr)")
    result = subprocess.run([sys.executable, "-c", probe], input=stdin, capture_output=True, text=True, timeout=60,
                            env={**os.environ, "TOKEND_CONFIG": str(daemon.config)}, check=False)
    assert result.stderr.strip().splitlines()[-1] == "[] 0", result.stderr
    assert daemon.get("/token/fts").json()["token"] in result.stdout


def test_check_shows_what_each_helper_answers(daemon: Daemon) -> None:
    checked = subprocess.run(tokend_command("--config", str(daemon.config), "check"), capture_output=True, text=True,
                             timeout=60, check=False)
    assert checked.returncode == 0, checked.stderr
    assert "    docker: ghcr.io as x-access-token\n" in checked.stdout
    assert "    git: git.example.com as bot\n" in checked.stdout


def test_a_request_with_a_control_character_or_plain_http_is_refused_whole(daemon: Daemon) -> None:
    env = {"TOKEND_CONFIG": str(daemon.config)}
    token = daemon.get("/token/fts").json()["token"]
    # Python's str.strip() takes these off as white space; Docker never writes them: a smuggled registry name.
    for server in ("ghcr.io\x1c", "\x0bghcr.io", "ghcr.io\x85", "ghcr.io\u2028", "ghcr.io\x00",
                   "quay.io\x1cghcr.io"):
        answer = docker_asks("get", server, env=env)
        assert answer.returncode == 1 and token not in answer.stdout, repr(server)
        assert "control character" in answer.stdout, repr(server)
    # As the git helper: never a token over plain http but to a loopback address.
    plain = docker_asks("get", "http://ghcr.io", env=env)
    assert plain.returncode == 1 and token not in plain.stdout and "https" in plain.stdout
    for server in ("http://127.0.0.1.evil.test", "HTTP://ghcr.io/"):
        assert token not in docker_asks("get", server, env=env).stdout, server
    # Docker's own trailing line feed is fine.
    assert json.loads(docker_asks("get", "https://ghcr.io/\n", env=env).stdout)["Secret"] == token
