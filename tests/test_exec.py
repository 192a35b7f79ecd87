"""`tokend exec` and `tokend status --watch` against the real daemon, as a user runs them."""

from __future__ import annotations

import os
import pty
import select
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import pytest

from tests.daemon import Daemon, tokend_command


def run_exec(daemon: Daemon, *args: str, **kwargs: object) -> subprocess.CompletedProcess[str]:
    return subprocess.run(tokend_command("--config", str(daemon.config), "exec", *args), capture_output=True,
                          text=True, timeout=60, **kwargs)  # type: ignore[call-overload]


def test_the_child_gets_the_url_and_only_its_own_output_is_on_its_streams(
    daemon_factory: Callable[..., Daemon], tmp_path: Path
) -> None:
    daemon = daemon_factory()
    key_file = tmp_path / "client-key"
    key_file.write_text("not-a-configured-key-but-passed-on\n")
    shown = run_exec(daemon, "--provider", "fts", "--client-key-file", str(key_file), "--", sys.executable, "-c",
                     "import os; print(os.environ['TOKEND_URL']); print(os.environ['TOKEND_CLIENT_KEY'])")
    assert shown.returncode == 0, shown.stderr
    assert shown.stdout == f"{daemon.url}\nnot-a-configured-key-but-passed-on\n" and shown.stderr == ""


def test_a_token_is_in_the_environment_only_when_asked_for(daemon_factory: Callable[..., Daemon]) -> None:
    daemon = daemon_factory()
    code = "import os; print(os.environ.get('FTS_TOKEN', 'none'))"
    assert run_exec(daemon, "--", sys.executable, "-c", code).stdout == "none\n"
    asked = run_exec(daemon, "--env", "fts=FTS_TOKEN", "--", sys.executable, "-c", code)
    assert asked.stdout.strip() == daemon.get("/token/fts").json()["token"]


def test_exit_statuses_are_passed_through_as_a_shell_would(daemon_factory: Callable[..., Daemon]) -> None:
    daemon = daemon_factory()
    assert run_exec(daemon, "--", sys.executable, "-c", "raise SystemExit(7)").returncode == 7
    killed = run_exec(daemon, "--", sys.executable, "-c", "import os, signal; os.kill(os.getpid(), signal.SIGKILL)")
    assert killed.returncode == 128 + signal.SIGKILL
    missing = run_exec(daemon, "--", "no-such-command-anywhere")
    assert missing.returncode == 127 and "command not found: no-such-command-anywhere" in missing.stderr
    unknown = run_exec(daemon, "--provider", "nope", "--", sys.executable, "-c", "print('ran')")
    assert unknown.returncode == 6 and "nope" in unknown.stderr and "ran" not in unknown.stdout  # as `get` exits
    unknown_env = run_exec(daemon, "--env", "nope=TOKEN", "--", sys.executable, "-c", "print('ran')")
    assert unknown_env.returncode == 6 and "nope" in unknown_env.stderr and "ran" not in unknown_env.stdout
    assert run_exec(daemon, "--env", "fts", "--", "true").returncode == 2
    assert run_exec(daemon).returncode == 2


def test_signals_reach_the_child(daemon_factory: Callable[..., Daemon], tmp_path: Path) -> None:
    daemon = daemon_factory()
    ready = tmp_path / "ready"
    child = (
        "import signal, sys, time, pathlib\n"
        "signal.signal(signal.SIGTERM, lambda *a: sys.exit(42))\n"
        f"pathlib.Path({str(ready)!r}).touch()\n"
        "time.sleep(60)\n"
    )
    process = subprocess.Popen(tokend_command("--config", str(daemon.config), "exec", "--", sys.executable, "-c",
                                              child))
    try:
        deadline = time.monotonic() + 30
        while not ready.exists():
            assert time.monotonic() < deadline and process.poll() is None
            time.sleep(0.05)
        process.send_signal(signal.SIGTERM)
        assert process.wait(timeout=30) == 42
    finally:
        if process.poll() is None:
            process.kill()


# A test run in the background (a shell's `&`, some CI runners) inherits SIGINT ignored, and a Python
# started that way never installs its Ctrl-C handler: the watched command is given SIGINT's default back,
# and every wait on it is bounded, so that a command that does not stop fails the test instead of hanging it.
WITH_SIGINT = ("import os, signal, sys; signal.signal(signal.SIGINT, signal.SIG_DFL); "
               "os.execv(sys.argv[1], sys.argv[1:])")


def read_until(fd: int, done: Callable[[bytes], bool], *, timeout: float = 30) -> bytes:
    seen = b""
    deadline = time.monotonic() + timeout
    while not done(seen) and (left := deadline - time.monotonic()) > 0:
        if select.select([fd], [], [], left)[0]:
            try:
                chunk = os.read(fd, 65536)
            except OSError:  # a pty whose other side has closed
                break
            if not chunk:
                break
            seen += chunk
    return seen


def exit_code_after_sigint(pid: int, *, timeout: float = 15) -> int:
    os.kill(pid, signal.SIGINT)
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        done, status = os.waitpid(pid, os.WNOHANG)
        if done:
            return os.waitstatus_to_exitcode(status)
        time.sleep(0.05)
    os.kill(pid, signal.SIGKILL)
    os.waitpid(pid, 0)
    raise AssertionError(f"the command did not stop within {timeout} s of SIGINT")


def test_status_watch_prints_plain_blocks_when_piped(daemon_factory: Callable[..., Daemon]) -> None:
    daemon = daemon_factory()
    command = tokend_command("--config", str(daemon.config), "status", "--watch")
    process = subprocess.Popen([sys.executable, "-c", WITH_SIGINT, *command], stdout=subprocess.PIPE,
                               stderr=subprocess.PIPE, start_new_session=True)
    assert process.stdout is not None and process.stderr is not None
    try:
        # Piped, a block is printed at start and again only when something changes; flotiq's line ends one.
        out = read_until(process.stdout.fileno(), lambda seen: b"flotiq" in seen and seen.endswith(b"\n")).decode()
    finally:
        process.send_signal(signal.SIGINT)
        try:
            code = process.wait(timeout=15)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait(timeout=15)
            raise AssertionError("tokend status --watch did not stop within 15 s of SIGINT") from None
    err = process.stderr.read().decode()
    process.stdout.close()
    process.stderr.close()
    assert code == 0, err
    assert "\x1b" not in out and out.count("PROVIDER") >= 1, out
    assert all(name in out for name in ("felloh", "fts", "flotiq")) and "ok" in out


def test_status_watch_redraws_in_place_on_a_terminal(daemon_factory: Callable[..., Daemon]) -> None:
    daemon = daemon_factory()
    pid, fd = pty.fork()
    if pid == 0:  # the child: tokend on a terminal
        signal.signal(signal.SIGINT, signal.SIG_DFL)
        os.execv(sys.executable, tokend_command("--config", str(daemon.config), "status", "--watch"))  # noqa: S606
    try:
        seen = read_until(fd, lambda seen: seen.count(b"\x1b[H\x1b[2J") >= 2)
    finally:
        code = exit_code_after_sigint(pid)
        os.close(fd)
    assert seen.count(b"\x1b[H\x1b[2J") >= 2 and b"fts" in seen
    assert code == 0


def test_the_proxy_url_of_each_asked_provider_is_in_the_environment(daemon_factory: Callable[..., Daemon]) -> None:
    daemon = daemon_factory(proxy=True)
    shown = run_exec(daemon, "--provider", "fts", "--provider", "flotiq", "--", sys.executable, "-c",
                     "import os; print(os.environ['TOKEND_PROXY_URL_FTS'], os.environ['TOKEND_PROXY_URL_FLOTIQ'])")
    assert shown.stdout.split() == [f"{daemon.url}/proxy/fts", f"{daemon.url}/proxy/flotiq"], shown.stderr
    proxied = daemon.get("/proxy/fts/v1/news")
    assert proxied.status_code == 200, proxied.text


def test_a_file_with_no_interpreter_line_is_126_with_a_sentence(
    daemon_factory: Callable[..., Daemon], tmp_path: Path
) -> None:
    daemon = daemon_factory()
    script = tmp_path / "report.sh"
    script.write_text("echo ran\n")  # no #!: a shell would guess; tokend runs no shell
    script.chmod(0o755)
    ran = run_exec(daemon, "--", str(script))
    assert ran.returncode == 126 and ran.stdout == ""
    assert ran.stderr == f"tokend exec: cannot run {script}: not a program this system can start (a script " \
        "needs a #! line)\n"
    folder = run_exec(daemon, "--", str(tmp_path))
    assert folder.returncode == 126 and "Traceback" not in folder.stderr


def test_env_refuses_variables_that_change_how_the_command_runs(daemon_factory: Callable[..., Daemon]) -> None:
    daemon = daemon_factory()
    for variable in ("LD_PRELOAD", "PATH", "PYTHONPATH", "PYTHONSTARTUP", "NODE_OPTIONS", "TOKEND_URL",
                     "BASH_ENV", "ENV", "IFS", "DYLD_INSERT_LIBRARIES", "ld_preload"):
        refused = run_exec(daemon, "--env", f"fts={variable}", "--", sys.executable, "-c", "print('ran')")
        assert refused.returncode == 2 and refused.stdout == "", (variable, refused)
        assert f"refusing to put a token in {variable}: " in refused.stderr
        assert daemon.get("/token/fts").json()["token"] not in refused.stderr
    allowed = run_exec(daemon, "--env", "fts=FTS_TOKEN", "--", sys.executable, "-c", "print('ran')")
    assert allowed.returncode == 0 and allowed.stdout == "ran\n"


def test_the_library_refuses_an_unsafe_variable_too() -> None:
    from tokend.errors import TokendError
    from tokend.outputs.execute import child_environment

    with pytest.raises(TokendError, match="refusing to put a token in LD_PRELOAD"):
        child_environment(None, "http://127.0.0.1:1", None, [], {"fts": "LD_PRELOAD"})  # type: ignore[arg-type]
