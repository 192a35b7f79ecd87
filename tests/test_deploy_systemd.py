"""deploy/systemd under a real systemd: a minimal Debian booted with systemd-nspawn on a network of its own,
tokend installed into it by docs/deployment.md's steps, the unit and config.toml installed unchanged, and the
three providers faked over TLS at the addresses config.toml names (the container's /etc/hosts points them
at the fakes, and tokend's trust store gets the fakes' throwaway CA).

The tests share one booted container and run in this file's order, each leaving tokend stopped or running
as the next one expects. Skipped only without root, mount namespaces or cgroups.
"""

from __future__ import annotations

import re
import shutil
import subprocess
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from tests.machines import (
    CACHE,
    HOST_CA,
    Container,
    TlsFakes,
    answer_or_none,
    debian_root,
    request,
    require_machines,
    source_copy,
    temporary_directory,
    tool,
    wait_until,
)

ROOT = Path(__file__).resolve().parent.parent
UNIT = ROOT / "deploy" / "systemd" / "tokend.service"
CONFIG = ROOT / "deploy" / "systemd" / "config.toml"
WHERE = "http://127.0.0.1:8765"
CREDENTIALS = "/run/credentials/tokend.service"
SLOW_LOGIN = 4.0  # seconds the fakes hold each first login


@dataclass
class Machine:
    container: Container
    fakes: TlsFakes

    def sh(self, *argv: str, check: bool = True, timeout: float = 60) -> subprocess.CompletedProcess[str]:
        return self.container.sh(*argv, check=check, timeout=timeout)

    def systemctl(self, *argv: str) -> subprocess.CompletedProcess[str]:
        return self.container.sh("systemctl", *argv, "tokend", check=False, timeout=90)

    def show(self, *properties: str) -> dict[str, str]:
        return self.container.show("tokend", *properties)

    def status_text(self) -> str:
        return self.show("StatusText")["StatusText"]

    def get(self, path: str) -> tuple[int, bytes]:
        answer = request(self.container.pid, "GET", path)
        return answer.status, answer.body

    def journal(self, since: float) -> list[str]:
        out = self.sh("journalctl", "--no-pager", "-o", "cat", "-u", "tokend", f"--since=@{since:.0f}").stdout
        return out.splitlines()


def install(container: Container, fakes: TlsFakes) -> None:
    """docs/deployment.md's systemd steps 1-3 and 5 (the unit is started by the tests), into the container's tree."""
    source = source_copy(container.upper.parent / "src")
    pip_cache = CACHE / "pip"
    pip_cache.mkdir(parents=True, exist_ok=True)
    # 1. tokend in /opt/tokend, linked to /usr/local/bin/tokend (on the host's network, before the boot).
    container.run_once(
        "sh", "-c", "python3 -m venv /opt/tokend && /opt/tokend/bin/pip install --disable-pip-version-check -q . "
        "&& ln -s /opt/tokend/bin/tokend /usr/local/bin/tokend",
        options=(f"--bind={source}:/src", "--chdir=/src", f"--bind-ro={HOST_CA}:/etc/host-ca.pem",
                 "--setenv=PIP_CERT=/etc/host-ca.pem", f"--bind={pip_cache}:/root/.cache/pip"),
    )
    # 2. The config, unchanged, mode 0644.
    config = container.file("/etc/tokend/config.toml")
    config.parent.chmod(0o755)
    shutil.copyfile(CONFIG, config)
    config.chmod(0o644)
    # 3. One root-only file per secret.
    credentials = container.file("/etc/tokend/credentials/x").parent
    credentials.chmod(0o700)
    for name, value in fakes.secrets.items():
        path = credentials / name
        path.touch(mode=0o600)
        path.write_text(value + "\n")
    # 5. The unit, unchanged.
    unit = container.file("/etc/systemd/system/tokend.service")
    shutil.copyfile(UNIT, unit)
    unit.chmod(0o644)
    # Not from docs/deployment.md: the fakes stand in for the providers at the addresses config.toml names.
    container.file("/etc/hosts").write_text("127.0.0.1 localhost\n" + fakes.hosts_lines())
    [bundle] = container.upper.glob("opt/tokend/lib/python3*/site-packages/certifi/cacert.pem")
    with bundle.open("ab") as file:
        file.write(b"\n" + fakes.ca_pem)


@pytest.fixture(scope="module")
def machine() -> Iterator[Machine]:
    require_machines("debootstrap", "systemd-nspawn", "nsenter", "unshare")
    began = time.monotonic()
    root = debian_root()
    work = temporary_directory("tokend-nspawn-")
    container = Container(root, work)
    fakes = TlsFakes(CONFIG, work)
    try:
        install(container, fakes)
        installed = time.monotonic()
        container.boot()
        fakes.serve_in(container.pid)
        print(f"\nsystemd machine: tree {installed - began:.0f}s (debootstrap when not cached, pip install), "
              f"boot {time.monotonic() - installed:.0f}s")
        yield Machine(container, fakes)
    finally:
        container.stop()  # first: tokend's connections to the fakes close with it
        fakes.stop()
        shutil.rmtree(work, ignore_errors=True)


def test_readme_check_step_accepts_the_installed_config(machine: Machine) -> None:
    # docs/deployment.md's step 4, with the files the service will get.
    result = machine.sh("env", "CREDENTIALS_DIRECTORY=/etc/tokend/credentials", "tokend", "--config",
                        "/etc/tokend/config.toml", "check")
    assert result.stdout.startswith("config OK: 3 provider(s)"), result.stdout
    assert not any(value in result.stdout + result.stderr for value in machine.fakes.secrets.values())


def test_systemd_analyze_security_of_the_installed_unit(machine: Machine) -> None:
    out = machine.sh("systemd-analyze", "security", "--no-pager", "tokend.service").stdout
    match = re.search(r"Overall exposure level for tokend\.service: (\d+\.\d+) (\S+)", out)
    assert match, out[-2000:]
    print(f"\nsystemd-analyze security tokend.service (live, systemd 252): {match.group(1)} {match.group(2)}")
    assert float(match.group(1)) <= 2.0


def test_a_missing_credential_fails_the_start_at_once_without_restarts(machine: Machine) -> None:
    machine.sh("mv", "/etc/tokend/credentials/fts_password", "/root/fts_password")
    try:
        assert machine.systemctl("start").returncode != 0
        # With Restart= at work the unit would be "activating (auto-restart)" now, and fail only after
        # five tries; RestartPreventExitStatus=243 makes it fail on the spot.
        state = machine.show("ActiveState", "SubState", "Result", "ExecMainStatus", "NRestarts")
        assert state == {"ActiveState": "failed", "SubState": "failed", "Result": "exit-code",
                         "ExecMainStatus": "243", "NRestarts": "0"}
    finally:
        machine.sh("mv", "/root/fts_password", "/etc/tokend/credentials/fts_password")
        machine.systemctl("reset-failed")


def test_start_returns_after_the_first_logins_and_readyz_is_503_until_then(machine: Machine) -> None:
    fakes = machine.fakes
    fakes.felloh.hang(SLOW_LOGIN)  # (Flotiq has static keys: no login to slow down)
    fakes.fts.fail(503)  # down at start: the start must not wait for it to come back
    began = time.monotonic()
    start = subprocess.Popen([tool("nsenter"), "-t", str(machine.container.pid), "-a", "systemctl", "start", "tokend"],
                             stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    seen: list[int] = []
    while start.poll() is None:
        if time.monotonic() - began > 120:
            start.kill()
            start.wait(timeout=10)
            raise AssertionError("systemctl start did not return within 120 s")
        answer = answer_or_none(machine.container.pid, "/readyz")
        if answer is not None:
            seen.append(answer.status)
        time.sleep(0.1)
    took = time.monotonic() - began
    output = start.communicate(timeout=10)[0]
    assert start.returncode == 0, output
    assert fakes.felloh.logins == 1  # the slow login was done by then
    assert took >= SLOW_LOGIN
    assert seen and set(seen) == {503}, seen  # tokend was answering, and not ready, while start waited
    answer = request(machine.container.pid, "GET", "/readyz")
    assert (answer.status, answer.json()["providers"]) == (503, {"felloh": "ok", "fts": "failed", "flotiq": "ok"})
    assert machine.status_text() == f"serving 3 provider(s) on {WHERE}: felloh ok, fts failed, flotiq ok"
    print(f"\nsystemctl start took {took:.1f}s with {SLOW_LOGIN:.0f}s logins")


def test_the_status_line_follows_a_recovery(machine: Machine) -> None:
    for fake in (machine.fakes.felloh, machine.fakes.fts, machine.fakes.flotiq):
        fake.recover()
    # fts retries on its own schedule; a forced refresh joins or starts a login now.
    pid = machine.container.pid
    wait_until(lambda: request(pid, "POST", "/token/fts/refresh").status == 200, what="fts to recover", every=1)
    assert request(pid, "GET", "/readyz").status == 200
    expected = f"serving 3 provider(s) on {WHERE}: felloh ok, fts ok, flotiq ok"
    wait_until(lambda: machine.status_text() == expected, what=f"the status line to say {expected!r}", timeout=20)


def test_tokens_are_served(machine: Machine) -> None:
    fakes = machine.fakes
    for name, fake in (("felloh", fakes.felloh), ("fts", fakes.fts)):
        status, body = machine.get(f"/token/{name}?format=raw")
        assert status == 200 and body.decode() in fake.issued, name
    assert machine.get("/token/flotiq?format=raw")[0] == 200
    # docs/deployment.md's client commands, inside the machine.
    assert machine.sh("tokend", "status").returncode == 0
    assert machine.sh("tokend", "get", "felloh").stdout.strip() in fakes.felloh.issued


def test_credentials_come_from_the_credentials_directory_and_only_tokend_reads_them(machine: Machine) -> None:
    main = machine.show("MainPID")["MainPID"]
    environ = dict(entry.split("=", 1) for entry in
                   machine.sh("cat", f"/proc/{main}/environ").stdout.split("\0") if "=" in entry)
    assert environ["CREDENTIALS_DIRECTORY"] == CREDENTIALS
    assert not any(value in "".join(environ.values()) for value in machine.fakes.secrets.values())
    uid = machine.sh("stat", "-c", "%u", f"/proc/{main}").stdout.strip()
    assert 61184 <= int(uid) <= 65519  # the range systemd allocates DynamicUser= ids from
    listing = machine.sh("stat", "-c", "%a %u %n", CREDENTIALS, *(f"{CREDENTIALS}/{name}" for name in
                                                               machine.fakes.secrets)).stdout.splitlines()
    for line in listing:
        mode, owner, _ = line.split(" ", 2)
        assert int(mode, 8) & 0o077 == 0 and owner in (uid, "0"), line
    for user in ("nobody", "65533"):
        for target in (CREDENTIALS, f"{CREDENTIALS}/fts_password"):
            as_other = machine.sh("setpriv", f"--reuid={user}", "--regid=65534", "--clear-groups", "cat", target,
                                  check=False)
            assert as_other.returncode != 0 and "Permission denied" in as_other.stderr, (user, target)
            assert machine.fakes.fts.password not in as_other.stdout


def test_reload_applies_a_good_config(machine: Machine) -> None:
    without_flotiq = CONFIG.read_text().split("[providers.flotiq]")[0]
    machine.container.write("/etc/tokend/config.toml", without_flotiq)
    reload = machine.systemctl("reload")
    assert reload.returncode == 0, reload.stdout + reload.stderr
    assert request(machine.container.pid, "GET", "/readyz").json()["providers"] == {"felloh": "ok", "fts": "ok"}
    expected = f"serving 2 provider(s) on {WHERE}: felloh ok, fts ok"
    wait_until(lambda: machine.status_text() == expected, what=f"the status line to say {expected!r}", timeout=20)


# A syntax error is found by `tokend reload` itself, which reads the [server] table to find the daemon:
# the message is its own, once. A config that parses but fails validation is refused by the daemon, which
# logs why; `tokend reload` prints the daemon's answer too, for systemctl's reader: once each.
@pytest.mark.parametrize(("broken", "message", "times"), [
    ("this is = not TOML\n", "is not valid TOML", 1),
    ('[providers.extra]\nkind = "no-such-kind"\n', "has 1 problem(s)", 2),
])
def test_a_refused_reload_fails_systemctl_reload_and_serving_goes_on(machine: Machine, broken: str,
                                                                       message: str, times: int) -> None:
    before = machine.show("MainPID", "NRestarts")
    good = CONFIG.read_text().split("[providers.flotiq]")[0]
    since = time.time() - 1
    machine.container.write("/etc/tokend/config.toml", good + broken)
    reload = machine.systemctl("reload")
    assert reload.returncode != 0, reload.stdout
    assert "failed" in reload.stderr  # systemctl says so: "Job for tokend.service failed ..."
    assert machine.show("ActiveState", "MainPID", "NRestarts") == {"ActiveState": "active", **before}
    status, body = machine.get("/token/felloh?format=raw")
    assert status == 200 and body.decode() in machine.fakes.felloh.issued
    assert machine.status_text().startswith("serving 2 provider(s)")
    said = [line for line in machine.journal(since) if message in line]
    assert len(said) == times, machine.journal(since)


def test_reload_back_to_the_shipped_config(machine: Machine) -> None:
    machine.container.write("/etc/tokend/config.toml", CONFIG.read_text())
    assert machine.systemctl("reload").returncode == 0
    pid = machine.container.pid
    wait_until(lambda: request(pid, "GET", "/readyz").status == 200, what="flotiq to log in again")
    expected = f"serving 3 provider(s) on {WHERE}: felloh ok, fts ok, flotiq ok"
    wait_until(lambda: machine.status_text() == expected, what=f"the status line to say {expected!r}", timeout=20)


def test_the_watchdog_restarts_a_stopped_tokend(machine: Machine) -> None:
    before = machine.show("MainPID", "NRestarts")
    assert before["MainPID"] != "0", "tokend is not running"
    since = time.time() - 1
    machine.sh("kill", "-STOP", before["MainPID"])
    # WatchdogSec=30s: the pings stop, systemd aborts the process and Restart= starts a new one.
    restarted = wait_until(
        lambda: (state := machine.show("MainPID", "NRestarts", "ActiveState"))["ActiveState"] == "active"
        and state["MainPID"] not in ("0", before["MainPID"]) and state,
        what="systemd to restart tokend", timeout=75, every=1)
    assert int(restarted["NRestarts"]) == int(before["NRestarts"]) + 1
    print(f"\nthe watchdog restarted a stopped tokend in {time.time() - since:.0f}s (WatchdogSec=30s)")
    assert any("Watchdog timeout" in line for line in machine.journal(since)), machine.journal(since)
    pid = machine.container.pid
    wait_until(lambda: (answer := answer_or_none(pid, "/readyz")) is not None and answer.status == 200,
               what="the new tokend to be ready")


def test_stop_is_clean(machine: Machine) -> None:
    since = time.time() - 1
    began = time.monotonic()
    assert machine.systemctl("stop").returncode == 0
    took = time.monotonic() - began
    assert machine.show("ActiveState", "Result", "ExecMainStatus") == {
        "ActiveState": "inactive", "Result": "success", "ExecMainStatus": "0"}
    # tokend exited by itself on SIGTERM, well within TimeoutStopSec=30s: nothing was killed.
    journal = machine.journal(since)
    assert any("Deactivated successfully" in line for line in journal), journal
    assert not any(word in line for line in journal for word in ("SIGKILL", "timed out", "Traceback")), journal
    assert took < 10
    assert answer_or_none(machine.container.pid, "/livez") is None
    print(f"\nsystemctl stop took {took:.1f}s")
