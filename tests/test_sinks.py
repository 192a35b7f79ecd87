"""File sinks against the real daemon: formats, modes, atomic rewrites, change-only writes, the command
and the signal after a change, a sink that cannot be written, removal at exit."""

from __future__ import annotations

import json
import os
import shutil
import signal
import stat
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from tests.daemon import Daemon
from tokend.testing import FakeProviders


def sink(provider: str, path: Path, **options: object) -> str:
    lines = [f"[[providers.{provider}.sinks]]", f'path = "{path}"']
    lines += [f"{key} = {json.dumps(value)}" for key, value in options.items()]
    return "\n".join(lines) + "\n"


def eventually(condition: Callable[[], bool], what: str, timeout: float = 30) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.05)


SH = shutil.which("sh") or "/bin/sh"


def sourced(path: Path, variable: str) -> str:
    """What a POSIX shell holds in `variable` after sourcing `path`."""
    shell = subprocess.run([SH, "-c", f'. "$1" && printf %s "${variable}"', "sh", str(path)],
                           capture_output=True, check=True, cwd=path.parent)
    assert shell.stderr == b"", shell.stderr
    return shell.stdout.decode()


def test_every_format_holds_what_get_token_serves(tmp_path: Path, daemon_factory: Callable[..., Daemon]) -> None:
    out = tmp_path / "out"
    out.mkdir()
    extra = "".join([
        sink("fts", out / "fts.raw"), sink("fts", out / "fts.json", format="json", mode="0640"),
        sink("fts", out / "fts.headers", format="header"), sink("fts", out / "fts.env", format="env"),
        sink("flotiq", out / "flotiq.env", format="env", env_prefix="FLOTIQ_"),
    ])
    daemon = daemon_factory(extra=extra)
    served = daemon.get("/token/fts").json()
    eventually(lambda: (out / "fts.env").exists() and (out / "flotiq.env").exists(), "the sinks")
    assert (out / "fts.raw").read_text() == served["token"]
    written = json.loads((out / "fts.json").read_text())
    assert {key: written[key] for key in ("token", "headers", "query")} == \
        {key: served[key] for key in ("token", "headers", "query")}
    assert (out / "fts.headers").read_text() == "".join(f"{k}: {v}\n" for k, v in served["headers"].items())
    assert sourced(out / "fts.env", "TOKEND_TOKEN") == served["token"]
    assert sourced(out / "fts.env", "TOKEND_HEADER_X_API_KEY") == served["headers"]["x-api-key"]
    assert sourced(out / "flotiq.env", "FLOTIQ_QUERY_AUTH_TOKEN") == daemon.get("/token/flotiq").json()["token"]
    assert stat.S_IMODE((out / "fts.raw").stat().st_mode) == 0o600
    assert stat.S_IMODE((out / "fts.json").stat().st_mode) == 0o640
    assert [p.name for p in out.iterdir() if p.name.startswith(".")] == []  # no temporary file left behind
    sinks = daemon.get("/status").json()["providers"]["fts"]["sinks"]
    assert len(sinks) == 4 and all(s["ok"] and s["written_at"] for s in sinks)


def test_a_reader_never_sees_a_partial_file_while_tokens_change(
    tmp_path: Path, fakes: FakeProviders, daemon_factory: Callable[..., Daemon]
) -> None:
    path = tmp_path / "fts.json"
    daemon = daemon_factory(extra=sink("fts", path, format="json"), min_refresh_interval=0.01)
    eventually(path.exists, "the first write")
    seen: set[str] = set()
    broken: list[str] = []
    stop = threading.Event()

    def read() -> None:
        while not stop.is_set():
            text = path.read_text()
            try:
                seen.add(json.loads(text)["token"])
            except ValueError:
                broken.append(text)

    reader = threading.Thread(target=read)
    reader.start()
    try:
        for _ in range(40):
            assert daemon.post("/token/fts/refresh").status_code == 200
        eventually(lambda: json.loads(path.read_text())["token"] == daemon.get("/token/fts").json()["token"],
                   "the last token in the file")
    finally:
        stop.set()
        reader.join()
    assert broken == [] and len(seen) > 5, (len(broken), len(seen))


def test_only_a_change_rewrites_and_the_command_runs_once_per_change(
    tmp_path: Path, daemon_factory: Callable[..., Daemon]
) -> None:
    path, counter = tmp_path / "flotiq.token", tmp_path / "changes"
    command = [sys.executable, "-c", f"open({str(counter)!r}, 'a').write('x')"]
    daemon = daemon_factory(extra=sink("flotiq", path, command=command), min_refresh_interval=0.01)
    eventually(lambda: counter.exists() and counter.read_text() == "x", "the command after the first write")
    before = path.stat()
    for _ in range(3):  # a static key logs in again with the same key: the same bytes
        assert daemon.post("/token/flotiq/refresh").status_code == 200
    time.sleep(0.5)  # what is checked is that nothing happens; half a second is plenty for a local write
    after = path.stat()
    assert (after.st_ino, after.st_mtime_ns) == (before.st_ino, before.st_mtime_ns)
    assert counter.read_text() == "x"


def test_a_signal_goes_to_the_process_in_the_pid_file(tmp_path: Path, daemon_factory: Callable[..., Daemon]) -> None:
    hups, pid_file = tmp_path / "hups", tmp_path / "app.pid"
    app = subprocess.Popen([sys.executable, "-c", (
        "import signal, time\n"
        f"signal.signal(signal.SIGHUP, lambda *a: open({str(hups)!r}, 'a').write('h'))\n"
        "while True: time.sleep(0.05)\n"
    )])
    try:
        pid_file.write_text(f"{app.pid}\n")
        time.sleep(0.3)  # let the child install its handler before any signal can come
        daemon = daemon_factory(extra=sink("fts", tmp_path / "fts.token", signal="HUP", pid_file=str(pid_file)),
                                min_refresh_interval=0.01)
        eventually(lambda: hups.exists() and hups.read_text() == "h", "the first SIGHUP")
        assert daemon.post("/token/fts/refresh").status_code == 200
        eventually(lambda: hups.read_text() == "hh", "a SIGHUP for the new token")
    finally:
        app.send_signal(signal.SIGTERM)
        app.wait(10)


def test_a_sink_that_cannot_be_written_is_shown_and_stops_nothing_else(
    tmp_path: Path, daemon_factory: Callable[..., Daemon]
) -> None:
    good = tmp_path / "fts.token"
    extra = sink("fts", tmp_path / "missing-folder" / "fts.token") + sink("fts", good)
    daemon = daemon_factory(extra=extra)
    eventually(good.exists, "the good sink")
    assert daemon.get("/token/fts").status_code == 200
    sinks = daemon.get("/status").json()["providers"]["fts"]["sinks"]
    assert not sinks[0]["ok"] and "No such file or directory" in sinks[0]["error"] and sinks[1]["ok"]
    assert daemon.get("/token/fts").json()["token"] not in daemon.get("/status").text
    assert "sink provider=fts" in daemon.log()


def test_in_place_writes_keep_the_inode_and_remove_on_exit_cleans_up(
    tmp_path: Path, daemon_factory: Callable[..., Daemon]
) -> None:
    bound, temporary = tmp_path / "bound.token", tmp_path / "gone.token"
    bound.write_text("placeholder")
    inode = bound.stat().st_ino
    daemon = daemon_factory(extra=sink("fts", bound, atomic=False) + sink("fts", temporary, remove_on_exit=True),
                            min_refresh_interval=0.01)
    eventually(lambda: temporary.exists() and bound.read_text() != "placeholder", "both sinks")
    assert daemon.post("/token/fts/refresh").status_code == 200
    eventually(lambda: bound.read_text() == daemon.get("/token/fts").json()["token"], "the in-place rewrite")
    assert bound.stat().st_ino == inode
    code, _ = daemon.terminate()
    assert code == 0 and not temporary.exists() and bound.exists()


def test_bad_sink_settings_are_config_errors(tmp_path: Path, fakes: FakeProviders) -> None:
    from tests.daemon import write_config
    from tokend.cli.main import main

    for options, message in (
        ({"path": "relative/file"}, "path must be absolute"),
        ({"path": "/srv/app/token", "signal": "HUP"}, "signal and pid_file go together"),
        ({"path": "/srv/app/token", "signal": "KILL", "pid_file": "/srv/app/pid"}, "is not a signal"),
        ({"path": "/srv/app/token", "mode": "0444"}, "0o600 at least"),
        ({"path": "/srv/app/token", "format": "yaml"}, "format"),
    ):
        path = options.pop("path")
        config = write_config(tmp_path, fakes, extra=sink("fts", Path(str(path)), **options))
        assert main(["--config", str(config), "check"]) == 3, message


# -- a sink's folder in the hands of its reader: tokend runs as root, the reader as `nobody` ---------------

NOBODY = 65534


def as_root_with_a_reader(tmp_path: Path) -> tuple[Path, Path]:
    """A folder the reader owns (as a sink's folder often is), and a root-owned file it must not reach."""
    if os.geteuid() != 0:
        pytest.skip("needs root: the attack is a reader's folder under a root tokend")
    tmp_path.chmod(0o755)
    folder = tmp_path / "reader"
    folder.mkdir()
    os.chown(folder, NOBODY, NOBODY)
    victim = tmp_path / "victim"
    victim.write_text("root's own file\n")
    victim.chmod(0o644)
    return folder, victim


def sinks_of(daemon: Daemon, provider: str) -> list[dict[str, Any]]:
    sinks: list[dict[str, Any]] = daemon.get("/status").json()["providers"][provider]["sinks"]
    return sinks


def sink_error(daemon: Daemon, provider: str, index: int = 0) -> str | None:
    error: str | None = sinks_of(daemon, provider)[index]["error"]
    return error


def test_an_in_place_sink_replaced_by_a_symlink_is_refused(
    tmp_path: Path, daemon_factory: Callable[..., Daemon]
) -> None:
    folder, victim = as_root_with_a_reader(tmp_path)
    path = folder / "fts.token"
    daemon = daemon_factory(extra=sink("fts", path, atomic=False, owner=str(NOBODY)), min_refresh_interval=0.01)
    eventually(path.exists, "the first write")
    path.unlink()
    path.symlink_to(victim)  # what the reader can do in its own folder
    assert daemon.post("/token/fts/refresh").status_code == 200
    eventually(lambda: sink_error(daemon, "fts") is not None, "the refusal in /status")
    assert "symbolic link" in str(sink_error(daemon, "fts"))
    assert victim.read_text() == "root's own file\n"
    assert (victim.stat().st_uid, stat.S_IMODE(victim.stat().st_mode)) == (0, 0o644)
    assert daemon.get("/token/fts").json()["token"] not in daemon.get("/status").text


def test_a_hard_link_or_a_fifo_in_place_of_an_in_place_sink_is_refused(
    tmp_path: Path, daemon_factory: Callable[..., Daemon]
) -> None:
    folder, victim = as_root_with_a_reader(tmp_path)
    linked, fifo = folder / "fts.token", folder / "felloh.token"
    os.link(victim, linked)
    os.mkfifo(fifo)
    daemon = daemon_factory(extra=sink("fts", linked, atomic=False) + sink("felloh", fifo, atomic=False))
    eventually(lambda: sink_error(daemon, "fts") is not None and sink_error(daemon, "felloh") is not None,
               "both refusals")
    assert "2 links" in str(sink_error(daemon, "fts"))
    # Without a reader a FIFO does not even open for writing (ENXIO); with one, it is no regular file.
    assert any(why in str(sink_error(daemon, "felloh")) for why in ("not a regular file", "No such device"))
    assert victim.read_text() == "root's own file\n"


def test_a_sink_folder_swapped_for_a_symlink_is_not_written_through(
    tmp_path: Path, daemon_factory: Callable[..., Daemon]
) -> None:
    folder, _ = as_root_with_a_reader(tmp_path)
    elsewhere = tmp_path / "etc"
    elsewhere.mkdir()
    (elsewhere / "fts.token").write_text("root's own file\n")  # neither overwritten nor removed at exit
    inner = folder / "app"
    inner.mkdir()
    daemon = daemon_factory(extra=sink("fts", inner / "fts.token", remove_on_exit=True), min_refresh_interval=0.01)
    eventually((inner / "fts.token").exists, "the first write")
    (inner / "fts.token").unlink()
    inner.rmdir()
    inner.symlink_to(elsewhere)
    assert daemon.post("/token/fts/refresh").status_code == 200
    eventually(lambda: sink_error(daemon, "fts") is not None, "the refusal in /status")
    assert "its folder is a symbolic link" in str(sink_error(daemon, "fts"))
    assert daemon.terminate()[0] == 0
    assert [(p.name, p.read_text()) for p in elsewhere.iterdir()] == [("fts.token", "root's own file\n")]


def test_a_pid_file_naming_tokend_or_another_users_process_or_a_symlink_is_refused(
    tmp_path: Path, daemon_factory: Callable[..., Daemon]
) -> None:
    folder, _ = as_root_with_a_reader(tmp_path)
    own, linked = folder / "own.pid", folder / "linked.pid"
    # A root process, named in a pid file the reader wrote.
    root_process = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    try:
        own.write_text(f"{root_process.pid}\n")
        os.chown(own, NOBODY, NOBODY)
        real_pid = tmp_path / "app.pid"
        real_pid.write_text(f"{root_process.pid}\n")
        linked.symlink_to(real_pid)
        self_pid = folder / "self.pid"  # filled with tokend's own id once it runs
        self_pid.write_text("2\n")
        extra = (sink("fts", folder / "a.token", signal="TERM", pid_file=str(own))
                 + sink("fts", folder / "b.token", signal="TERM", pid_file=str(linked))
                 + sink("felloh", folder / "c.token", signal="TERM", pid_file=str(self_pid)))
        daemon = daemon_factory(extra=extra, min_refresh_interval=0.01)
        assert daemon.process is not None
        self_pid.write_text(f"{daemon.process.pid}\n")
        assert daemon.post("/token/felloh/refresh").status_code == 200
        eventually(lambda: all(sink_error(daemon, p, i) for p, i in (("fts", 0), ("fts", 1), ("felloh", 0))),
                   "three refusals")
        assert "does not run as the file's owner" in str(sink_error(daemon, "fts", 0))
        assert "symbolic link" in str(sink_error(daemon, "fts", 1))
        assert "names tokend itself" in str(sink_error(daemon, "felloh", 0))
        assert root_process.poll() is None and daemon.process.poll() is None
    finally:
        root_process.kill()
        root_process.wait(10)


def test_env_values_read_back_unchanged_in_a_shell_and_run_nothing(
    tmp_path: Path, daemon_factory: Callable[..., Daemon]
) -> None:
    marker = tmp_path / "ran"
    nasty = f"it's $(touch {marker}) `touch {marker}`; touch {marker} \" \\ end"
    path = tmp_path / "nasty.env"
    extra = (f'[providers.nasty]\nkind = "static"\nkey = {json.dumps(nasty)}\nheader = "X-Key"\nscheme = "Bearer"\n'
             + sink("nasty", path, format="env"))
    daemon = daemon_factory(extra=extra)
    eventually(path.exists, "the env sink")
    token = daemon.get("/token/nasty").json()["token"]
    assert token == nasty
    assert sourced(path, "TOKEND_TOKEN") == token
    assert sourced(path, "TOKEND_HEADER_X_KEY") == f"Bearer {token}"
    assert not marker.exists()


def test_a_value_no_shell_can_carry_is_refused() -> None:
    # A secret in the config cannot hold a control character; a token from an upstream's JSON can.
    from tokend.credential import Credential
    from tokend.outputs.sinks import SinkConfig, render

    credential = Credential(token="before\0after", token_type="Bearer", expires_at=None, headers={})
    with pytest.raises(ValueError, match="NUL"):
        render("nul", credential, SinkConfig(path=Path("/run/app/nul.env"), format="env"))
    assert render("nul", credential, SinkConfig(path=Path("/run/app/nul.token"))) == b"before\0after"


def test_a_short_write_leaves_the_old_file_and_fails(tmp_path: Path) -> None:
    path = tmp_path / "fts.token"
    path.write_text("the old token")
    # A file size limit makes the kernel write less than asked, as a full disk does.
    script = (
        "import resource, sys\n"
        "from pathlib import Path\n"
        "from tokend.outputs.sinkfiles import write_sink_file\n"
        "resource.setrlimit(resource.RLIMIT_FSIZE, (100, 100))\n"
        "try:\n"
        f"    write_sink_file(Path({str(path)!r}), b'x' * 1000, mode=0o600, uid=-1, gid=-1, atomic=True)\n"
        "except OSError as exc:\n"
        "    print(exc.strerror)\n"
        "    sys.exit(0)\n"
        "sys.exit('written')\n"
    )
    result = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stderr or result.stdout
    assert "too large" in result.stdout.lower(), result.stdout
    assert path.read_text() == "the old token"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["fts.token"]


def test_one_providers_slow_command_does_not_hold_up_anothers_sinks(
    tmp_path: Path, daemon_factory: Callable[..., Daemon]
) -> None:
    slow, other = tmp_path / "fts.token", tmp_path / "felloh.token"
    daemon = daemon_factory(extra=sink("fts", slow, command=["sleep", "12"]) + sink("felloh", other),
                            min_refresh_interval=0.01)
    eventually(lambda: slow.exists() and other.exists(), "the first writes")
    assert daemon.post("/token/fts/refresh").status_code == 200  # a new token: the slow command again
    eventually(lambda: slow.read_text() == daemon.get("/token/fts").json()["token"], "the slow sink's write")
    started = time.monotonic()
    token = daemon.post("/token/felloh/refresh").json()["token"]
    eventually(lambda: other.read_text() == token, "the other provider's write", timeout=60)
    assert time.monotonic() - started < 6, "felloh's sink waited for fts's command"


def test_a_pid_file_of_root_or_of_the_process_owner_is_signalled(
    tmp_path: Path, daemon_factory: Callable[..., Daemon]
) -> None:
    folder, _ = as_root_with_a_reader(tmp_path)
    # The reader's own processes, as start-stop-daemon leaves them; shells (tokend's Python and pytest's
    # folders may be out of their reach), telling of each SIGHUP on their stdout. Two, because two SIGHUPs
    # that come together to one process may be one.
    # A shell cannot trap a signal ignored when it started: under `nohup` (which ignores SIGHUP for all it
    # starts) the shells are given SIGHUP's default, as a service manager would start them.
    ignored = signal.signal(signal.SIGHUP, signal.SIG_DFL)
    try:
        apps = [subprocess.Popen([SH, "-c", 'trap "printf h" HUP; printf r; while :; do sleep 0.05; done'],
                                 stdout=subprocess.PIPE, user=NOBODY, group=NOBODY) for _ in range(2)]
    finally:
        signal.signal(signal.SIGHUP, ignored)
    told: list[list[bytes]] = [[], []]
    readers = [threading.Thread(target=lambda app=app, out=out: out.extend(iter(lambda: app.stdout.read(1), b"")),
                                daemon=True) for app, out in zip(apps, told, strict=True)]
    for reader in readers:
        reader.start()
    try:
        eventually(lambda: told == [[b"r"], [b"r"]], "the reader's processes to set their traps")
        by_root, by_reader = tmp_path / "root.pid", folder / "reader.pid"
        by_root.write_text(f"{apps[0].pid}\n")
        by_reader.write_text(f"{apps[1].pid}\n")
        os.chown(by_reader, NOBODY, NOBODY)
        extra = (sink("fts", tmp_path / "fts.token", signal="HUP", pid_file=str(by_root))
                 + sink("felloh", tmp_path / "felloh.token", signal="HUP", pid_file=str(by_reader)))
        daemon = daemon_factory(extra=extra)
        # Each sink written (and so its signal sent, or its error recorded), then each SIGHUP told: waits on
        # states, which a loaded machine only delays.
        eventually(lambda: all(s["written_at"] for p in ("fts", "felloh") for s in sinks_of(daemon, p)),
                   "both sinks written")
        assert all(s["ok"] for p in ("fts", "felloh") for s in sinks_of(daemon, p)), daemon.get("/status").text
        # At least one each: a sink rewritten signals again, and may be before this looks.
        try:
            eventually(lambda: all(out[:2] == [b"r", b"h"] for out in told), "a SIGHUP through each pid file")
        except AssertionError:
            raise AssertionError(f"told: {told}; sinks: {[sinks_of(daemon, p) for p in ('fts', 'felloh')]}") from None
    finally:
        for app in apps:
            app.kill()
            app.wait(10)
        for reader, app in zip(readers, apps, strict=True):
            reader.join(10)
            assert app.stdout is not None
            app.stdout.close()
