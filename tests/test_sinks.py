"""File sinks against the real daemon: formats, modes, atomic rewrites, change-only writes, the command
and the signal after a change, a sink that cannot be written, removal at exit."""

from __future__ import annotations

import json
import signal
import stat
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path

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
    env = dict(line.split("=", 1) for line in (out / "fts.env").read_text().splitlines())
    assert env["TOKEND_TOKEN"] == served["token"] and env["TOKEND_HEADER_X_API_KEY"] == served["headers"]["x-api-key"]
    flotiq = dict(line.split("=", 1) for line in (out / "flotiq.env").read_text().splitlines())
    assert flotiq["FLOTIQ_QUERY_AUTH_TOKEN"] == daemon.get("/token/flotiq").json()["token"]
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
    from tokend.cli import main

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
