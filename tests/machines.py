"""Real machines for the live deploy tests: a minimal Debian booted by systemd-nspawn, a Docker engine, and
the fake providers served over TLS inside their network namespaces.

Everything here needs root, mount namespaces and cgroups; `require_machines()` skips (saying why) where one
of them is missing. The Debian root file system and the Docker base image built from it are cached in
CACHE between runs, never in the repository; a first run builds them with debootstrap (about a minute).
"""

from __future__ import annotations

import contextlib
import ctypes
import fcntl
import hashlib
import http.client
import json
import os
import shutil
import signal
import socket
import subprocess
import tarfile
import tempfile
import threading
import time
import tomllib
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, ClassVar
from urllib.parse import urlsplit

import pytest
import trustme
import uvicorn
from starlette.types import ASGIApp

from tests.tools import DEBIAN, require_tool
from tokend.providers.felloh.login import FELLOH_URLS
from tokend.providers.flotiq import FLOTIQ_URL
from tokend.testing import FakeFelloh, FakeFintechStudios, FakeFlotiq

ROOT = Path(__file__).resolve().parent.parent
DEPLOY_PACKAGES = f"{DEBIAN} debootstrap systemd-container docker.io; .ci/run installs them"
CACHE = Path(os.environ.get("TOKEND_TEST_CACHE", "/var/cache/tokend-tests"))
# The host's trust store: on these machines PyPI is reached through a TLS-intercepting proxy whose CA is
# only in it, so pip inside the container and the image build is given it.
HOST_CA = Path(os.environ.get("PIP_CERT") or "/etc/ssl/certs/ca-certificates.crt")

SUITE = "bookworm"
MIRROR = os.environ.get("TOKEND_TEST_MIRROR", "http://deb.debian.org/debian")
# One tree for both machines: systemd for the nspawn boot; Python, pip and useradd for the stand-in of
# python:3.11-slim (bookworm's Python is 3.11); setpriv (util-linux) to act as another user.
PACKAGES = ("systemd", "systemd-sysv", "python3", "python3-venv", "python3-pip", "python-is-python3",
            "ca-certificates", "procps")
BASE_IMAGE = "python:3.11-slim"
DOCKER = "/usr/bin/docker"  # Debian's client, of the same version as its dockerd (not a newer one on PATH)

CLONE_NEWNET = 0x40000000


def tool(name: str) -> str:
    """The full path of a command (a missing one is a package .ci/run installs: see require_machines)."""
    return require_tool(name, DEPLOY_PACKAGES)


def run(argv: list[str], *, timeout: float = 120, check: bool = True, **kwargs: Any,
        ) -> subprocess.CompletedProcess[str]:
    argv = [tool(argv[0]), *argv[1:]]
    # A session of its own: no signal meant for the machine's processes can reach the test's group.
    kwargs.setdefault("start_new_session", True)
    result = subprocess.run(argv, capture_output=True, text=True, timeout=timeout, **kwargs)
    if check and result.returncode != 0:
        raise AssertionError(f"{argv[:6]} exited {result.returncode}:\n{result.stdout}\n{result.stderr}")
    return result


# --- what the host must offer -------------------------------------------------------------------------------


def require_machines(*commands: str) -> None:
    """Skip unless this is root with mount namespaces and writable cgroups (limits of the machine); a missing
    command is a package to install: skipped, saying which, or a failure under CI."""
    if os.geteuid() != 0:
        pytest.skip("the live deploy tests need root (debootstrap, mounts, cgroups, dockerd)")
    if subprocess.run([tool("unshare"), "-m", "true"], capture_output=True).returncode != 0:
        pytest.skip("the live deploy tests need mount namespaces (unshare -m failed here)")
    if not cgroup_roots():
        pytest.skip("the live deploy tests need a writable cgroup file system (/sys/fs/cgroup)")
    for command in commands:
        tool(command)


def cgroup_roots() -> list[Path]:
    """Where a cgroup of our own must be made: the unified hierarchy, and systemd's named v1 one on a
    hybrid host (nspawn uses both)."""
    base = Path("/sys/fs/cgroup")
    if (base / "cgroup.controllers").exists():
        roots = [base]
    else:
        roots = [base / name for name in ("unified", "systemd") if (base / name / "cgroup.procs").exists()]
    return [root for root in roots if os.access(root, os.W_OK)]


class Cgroup:
    """A cgroup of the tests' own in every hierarchy nspawn uses, removed (with what is left in it) at the end."""

    def __init__(self, name: str) -> None:
        self.dirs = [root / name for root in cgroup_roots()]
        for directory in self.dirs:
            directory.mkdir(exist_ok=True)

    def enter(self) -> None:
        """Move the calling process here (a Popen preexec_fn: the child, before it runs anything)."""
        for directory in self.dirs:
            (directory / "cgroup.procs").write_text(str(os.getpid()))

    def remove(self) -> None:
        for directory in self.dirs:
            for _ in range(50):
                left = [int(pid) for procs in directory.rglob("cgroup.procs") for pid in procs.read_text().split()]
                for pid in left:
                    with contextlib.suppress(ProcessLookupError):
                        os.kill(pid, signal.SIGKILL)
                # Deepest first: a cgroup with children cannot be removed.
                for child in sorted((p for p in directory.rglob("*") if p.is_dir()), key=lambda p: -len(p.parts)):
                    with contextlib.suppress(OSError):
                        child.rmdir()
                with contextlib.suppress(OSError):
                    directory.rmdir()
                if not directory.exists():
                    break
                time.sleep(0.1)
            assert not directory.exists(), f"cannot remove {directory}"


# --- the cached Debian tree and base image ------------------------------------------------------------------


@contextlib.contextmanager
def _cache_lock() -> Iterator[None]:
    CACHE.mkdir(parents=True, exist_ok=True)
    with (CACHE / ".lock").open("w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        yield


def _key(*parts: str) -> str:
    return hashlib.sha256("\n".join(parts).encode()).hexdigest()[:12]


def debian_root() -> Path:
    """A minimal Debian tree with PACKAGES, made by debootstrap once and kept in CACHE (never changed:
    containers run on an overlay of it)."""
    target = CACHE / f"debian-{SUITE}-{_key(SUITE, MIRROR, *PACKAGES)}"
    with _cache_lock():
        if not target.is_dir():
            building = target.with_name(target.name + ".building")
            shutil.rmtree(building, ignore_errors=True)
            run(["debootstrap", "--variant=minbase", f"--include={','.join(PACKAGES)}", SUITE, str(building),
                 MIRROR], timeout=900)
            building.rename(target)  # only a finished tree ever has the name
    return target


def base_image_tar() -> Path:
    """The Debian tree as a tarball for `docker import`, made to stand in for python:3.11-slim: pip may
    install into the system Python (no EXTERNALLY-MANAGED marker, as in the official image), and the
    host's trust store is at the path PIP_CERT names (see BASE_IMAGE_CHANGES)."""
    root = debian_root()
    target = CACHE / f"{root.name}-{_key(HOST_CA.read_text(), *_LEFT_OUT)}.image.tar"
    with _cache_lock():
        if not target.exists():
            building = target.with_name(target.name + ".building")

            def keep(info: tarfile.TarInfo) -> tarfile.TarInfo | None:
                name = info.name.removeprefix("./")
                return None if any(name == out or name.startswith(f"{out}/") for out in _LEFT_OUT) else info

            with tarfile.open(building, "w") as tar:
                tar.add(root, arcname=".", filter=keep)
                tar.add(HOST_CA, arcname="./etc/ssl/certs/host-ca.pem")
            building.rename(target)
    return target


# Out of the image, as out of the slim one: every container and layer is a full copy under the vfs driver,
# so each megabyte here costs time several times over.
_LEFT_OUT = ("usr/lib/python3.11/EXTERNALLY-MANAGED", "usr/share/doc", "usr/share/man", "usr/share/info",
             "usr/share/locale", "var/cache/apt", "var/lib/apt/lists", "var/cache/debconf", "var/log")

BASE_IMAGE_CHANGES = ["ENV PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin",
                      "ENV LANG=C.UTF-8", "ENV PIP_CERT=/etc/ssl/certs/host-ca.pem", 'CMD ["python3"]']


def source_copy(into: Path) -> Path:
    """What docs/deployment.md's `pip install .` and the Dockerfile's COPY lines take from the repository."""
    into.mkdir(parents=True)
    for name in ("pyproject.toml", "README.md"):
        shutil.copy2(ROOT / name, into / name)
    shutil.copytree(ROOT / "tokend", into / "tokend", ignore=shutil.ignore_patterns("__pycache__"))
    return into


# --- network namespaces: the fakes and the test's client live in the machine's own network -------------------


def socket_in(pid: int) -> socket.socket:
    """A TCP socket in the network namespace of process `pid` (it stays there once made). setns() changes
    only the calling thread, so a thread of its own makes it and ends."""
    made: list[socket.socket | BaseException] = []

    def make() -> None:
        try:
            libc = ctypes.CDLL(None, use_errno=True)
            with open(f"/proc/{pid}/ns/net", "rb") as namespace:
                if libc.setns(namespace.fileno(), CLONE_NEWNET) != 0:
                    raise OSError(ctypes.get_errno(), "setns into the container's network namespace failed")
            made.append(socket.socket(socket.AF_INET, socket.SOCK_STREAM, socket.IPPROTO_TCP))
        except BaseException as exc:  # handed to the caller's thread
            made.append(exc)

    thread = threading.Thread(target=make)
    thread.start()
    thread.join()
    [result] = made
    if isinstance(result, BaseException):
        raise result
    return result


class Answer:
    def __init__(self, status: int, body: bytes) -> None:
        self.status = status
        self.body = body

    def json(self) -> Any:
        return json.loads(self.body)


def request(pid: int, method: str, path: str, *, port: int = 8765, timeout: float = 15) -> Answer:
    """An HTTP request to 127.0.0.1:`port` as a program inside that network namespace would make it."""
    sock = socket_in(pid)
    sock.settimeout(timeout)
    try:
        sock.connect(("127.0.0.1", port))
        connection = http.client.HTTPConnection("127.0.0.1", port, timeout=timeout)
        connection.sock = sock
        connection.request(method, path, headers={"X-Tokend-Request": "1"})
        response = connection.getresponse()
        return Answer(response.status, response.read())
    finally:
        sock.close()


def answer_or_none(pid: int, path: str) -> Answer | None:
    """None while nothing listens yet (connection refused)."""
    try:
        return request(pid, "GET", path, timeout=5)
    except (TimeoutError, ConnectionRefusedError, ConnectionResetError):
        return None


def wait_until(condition: Callable[[], Any], *, what: str, timeout: float = 30, every: float = 0.2) -> Any:
    deadline = time.monotonic() + timeout
    while True:
        value = condition()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout:.0f}s waiting for {what}")
        time.sleep(every)


def config_hosts(config: Path) -> dict[str, str]:
    """{provider: https host} for the three providers of a shipped config (defaults where it names none)."""
    providers = tomllib.loads(config.read_text())["providers"]
    urls = {
        "felloh": providers["felloh"].get("base_url") or FELLOH_URLS[providers["felloh"]["environment"]],
        "fts": providers["fts"]["base_url"],
        "flotiq": providers["flotiq"].get("base_url") or FLOTIQ_URL,
    }
    return {name: str(urlsplit(url).hostname) for name, url in urls.items()}


class TlsFakes:
    """The three fake providers, answering over TLS at the host names a shipped config names, on
    127.0.0.2-4:443 of another network namespace (its /etc/hosts must map them: see hosts_lines()).
    The certificate comes from a throwaway CA (ca_pem) that the machine under test must trust."""

    ADDRESSES: ClassVar[dict[str, str]] = {"felloh": "127.0.0.2", "fts": "127.0.0.3", "flotiq": "127.0.0.4"}

    def __init__(self, config: Path, directory: Path) -> None:
        email = tomllib.loads(config.read_text())["providers"]["fts"]["email"]
        self.felloh = FakeFelloh(lifetime=3600.0)
        self.fts = FakeFintechStudios(email=email, lifetime=3600.0)
        self.flotiq = FakeFlotiq()
        self.hosts = config_hosts(config)
        ca = trustme.CA()
        self.ca_pem = ca.cert_pem.bytes()
        certificate = ca.issue_cert(*self.hosts.values())
        self._cert, self._key = directory / "fake-cert.pem", directory / "fake-key.pem"
        certificate.private_key_pem.write_to_path(self._key)
        for blob in certificate.cert_chain_pems:
            blob.write_to_path(self._cert, append=True)
        self._servers: list[tuple[uvicorn.Server, threading.Thread, socket.socket]] = []

    @property
    def secrets(self) -> dict[str, str]:
        """The credential names the shipped configs use, with the values these fakes accept."""
        return {
            "felloh_public_key": self.felloh.public_key,
            "felloh_private_key": self.felloh.private_key,
            "fts_api_key": self.fts.api_key,
            "fts_password": self.fts.password,
            "flotiq_api_key": sorted(self.flotiq.api_keys)[0],
        }

    def hosts_lines(self) -> str:
        return "".join(f"{self.ADDRESSES[name]} {host}\n" for name, host in self.hosts.items())

    def serve_in(self, pid: int) -> None:
        """Start serving inside the network namespace of process `pid`."""
        for name, fake in (("felloh", self.felloh), ("fts", self.fts), ("flotiq", self.flotiq)):
            sock = socket_in(pid)
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            sock.bind((self.ADDRESSES[name], 443))
            try:
                self._serve(fake.app, sock, name)
            except BaseException:
                sock.close()
                raise

    def _serve(self, app: ASGIApp, sock: socket.socket, name: str) -> None:
        config = uvicorn.Config(app, log_level="warning", lifespan="off", loop="asyncio", ws="none",
                                access_log=False, ssl_certfile=str(self._cert), ssl_keyfile=str(self._key))
        server = uvicorn.Server(config)
        thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, name=f"fake {name}", daemon=True)
        thread.start()
        wait_until(lambda: server.started or not thread.is_alive(), what=f"the fake {name} to start", timeout=10)
        assert server.started, f"the fake {name} did not start"
        self._servers.append((server, thread, sock))

    def stop(self) -> None:
        for server, _, _ in self._servers:
            server.should_exit = True
        for server, thread, sock in self._servers:
            thread.join(timeout=5)
            if thread.is_alive():
                server.force_exit = True
                thread.join(timeout=5)
            sock.close()  # uvicorn leaves a socket it was handed open
        self._servers.clear()


# --- a Debian booted by systemd-nspawn ----------------------------------------------------------------------

# In a mount namespace of its own: the host's /run is not a tmpfs here, and nspawn wants /run/systemd to
# be one it may write; the container's root is an overlay on the cached tree, thrown away afterwards.
_NSPAWN = """set -e
mkdir -p /run/systemd
mount -t tmpfs tmpfs /run/systemd
mount -t overlay overlay -o "lowerdir=$1,upperdir=$2,workdir=$3" "$4"
root=$4
shift 4
exec systemd-nspawn --quiet --register=no --keep-unit -D "$root" "$@"
"""


class Container:
    """A Debian booted with `systemd-nspawn -b --private-network`, driven with nsenter into its PID 1."""

    def __init__(self, root: Path, workdir: Path) -> None:
        self.lower = root
        self.upper, self._work, self._merged = workdir / "upper", workdir / "work", workdir / "merged"
        for directory in (self.upper, self._work, self._merged):
            directory.mkdir(parents=True)
        self.log = workdir / "console.log"
        self.cgroup = Cgroup(f"tokend-tests-{os.getpid()}-{workdir.name}")
        self._nspawn: subprocess.Popen[bytes] | None = None
        self.pid = 0  # the container's PID 1 (systemd), as the host sees it

    def file(self, path: str) -> Path:
        """Where to write `path` of the container before it boots (its overlay's upper layer)."""
        target = self.upper / path.lstrip("/")
        target.parent.mkdir(parents=True, exist_ok=True)
        return target

    def _argv(self, *nspawn: str) -> list[str]:
        return ["unshare", "-m", "--propagation", "private", "sh", "-c", _NSPAWN, "nspawn",
                str(self.lower), str(self.upper), str(self._work), str(self._merged), *nspawn]

    def run_once(self, *command: str, options: tuple[str, ...] = (), timeout: float = 600) -> str:
        """Run `command` in the container's tree, not booted and on the host's network (to install)."""
        result = run(self._argv("--pipe", *options, "--", *command), timeout=timeout, preexec_fn=self.cgroup.enter)
        return result.stdout

    def boot(self) -> None:
        with self.log.open("wb") as console:
            self._nspawn = subprocess.Popen(self._argv("-b", "--private-network"),
                                            stdin=subprocess.DEVNULL, stdout=console, stderr=subprocess.STDOUT,
                                            preexec_fn=self.cgroup.enter, start_new_session=True)
        self.pid = wait_until(self._init_pid, what="the container's systemd to start", timeout=30)
        wait_until(lambda: self.sh("systemctl", "is-system-running", check=False).stdout.strip()
                   in ("running", "degraded"), what="the container to finish booting", timeout=60)

    def _init_pid(self) -> int | None:
        assert self._nspawn is not None
        if self._nspawn.poll() is not None:
            raise AssertionError(f"systemd-nspawn exited {self._nspawn.returncode}: {self.log.read_text()[-2000:]}")
        children = Path(f"/proc/{self._nspawn.pid}/task/{self._nspawn.pid}/children").read_text().split()
        for child in children:
            with contextlib.suppress(OSError):
                if Path(f"/proc/{child}/comm").read_text().strip() == "systemd":
                    return int(child)
        return None

    def sh(self, *argv: str, check: bool = True, timeout: float = 60, input: str | None = None,
           ) -> subprocess.CompletedProcess[str]:
        """Run a command inside the booted container (every namespace of its PID 1), as root."""
        return run(["nsenter", "-t", str(self.pid), "-a", *argv], check=check, timeout=timeout, input=input)

    def write(self, path: str, text: str, mode: str = "0644") -> None:
        self.sh("sh", "-c", f"umask 077 && cat > {path} && chmod {mode} {path}", input=text)

    def show(self, unit: str, *properties: str) -> dict[str, str]:
        out = self.sh("systemctl", "show", unit, *(f"--property={name}" for name in properties)).stdout
        return dict(line.split("=", 1) for line in out.splitlines() if "=" in line)

    def stop(self) -> None:
        if self._nspawn is not None and self._nspawn.poll() is None:
            self._nspawn.terminate()  # nspawn asks the container's systemd to power off
            try:
                self._nspawn.wait(timeout=30)
            except subprocess.TimeoutExpired:
                self._nspawn.kill()
                self._nspawn.wait(timeout=10)
        self.cgroup.remove()


# --- a Docker engine of the tests' own ----------------------------------------------------------------------


class DockerEngine:
    """dockerd with its state in a temporary folder, no bridge and no iptables rules: containers get a
    network namespace with loopback only, or share another container's."""

    def __init__(self, directory: Path) -> None:
        self.directory = directory
        self.socket = directory / "docker.sock"
        self.env = {**os.environ, "DOCKER_HOST": f"unix://{self.socket}", "DOCKER_BUILDKIT": "1",
                    "DOCKER_CONFIG": str(directory / "client")}
        self.log = directory / "dockerd.log"
        self.cgroup = Cgroup(f"tokend-tests-docker-{os.getpid()}")
        self._process: subprocess.Popen[bytes] | None = None
        self.storage_driver = ""

    def start(self) -> None:
        """overlay2 where the temporary folder's file system allows it (a container then starts in under
        a second), else vfs, which works anywhere but copies the whole image for every container and layer
        (5-20 s each on a busy machine)."""
        for driver in ("overlay2", "vfs"):
            self.storage_driver = driver
            with self.log.open("ab") as log:
                self._process = subprocess.Popen(
                    [tool("dockerd"), "--host", f"unix://{self.socket}", "--data-root", str(self.directory / "data"),
                     "--exec-root", str(self.directory / "exec"), "--pidfile", str(self.directory / "dockerd.pid"),
                     f"--storage-driver={driver}", "--iptables=false", "--ip-masq=false", "--bridge=none",
                     "--userland-proxy=false"],
                    stdout=log, stderr=subprocess.STDOUT, preexec_fn=self.cgroup.enter, start_new_session=True)
            with contextlib.suppress(AssertionError):
                wait_until(self._answers, what="dockerd to answer", timeout=60)
                return
            self._process.kill()
            self._process.wait(timeout=30)
            shutil.rmtree(self.directory / "data", ignore_errors=True)
        raise AssertionError(f"dockerd does not start: {self.log.read_text()[-3000:]}")

    def _answers(self) -> bool:
        assert self._process is not None
        if self._process.poll() is not None:
            raise AssertionError(f"dockerd exited {self._process.returncode}: {self.log.read_text()[-3000:]}")
        return self.docker("version", check=False, timeout=10).returncode == 0

    def docker(self, *args: str, check: bool = True, timeout: float = 120, input: str | None = None,
               cwd: Path | None = None) -> subprocess.CompletedProcess[str]:
        return run([DOCKER, *args], check=check, timeout=timeout, env=self.env, input=input, cwd=cwd)

    def inspect(self, name: str) -> Any:
        return json.loads(self.docker("inspect", name).stdout)[0]

    def stop(self) -> None:
        if self._process is not None and self._process.poll() is None:
            with contextlib.suppress(subprocess.SubprocessError, AssertionError):
                running = self.docker("ps", "-q", check=False, timeout=30).stdout.split()
                if running:
                    self.docker("kill", *running, check=False, timeout=30)
            self._process.terminate()
            try:
                self._process.wait(timeout=30)
            except subprocess.TimeoutExpired:
                self._process.kill()
                self._process.wait(timeout=10)
        self.cgroup.remove()
        # vfs layers are plain directories; the data root is the bulk of the temporary folder.
        subprocess.run([tool("umount"), "-R", str(self.directory / "exec")], capture_output=True)
        shutil.rmtree(self.directory / "data", ignore_errors=True)


def temporary_directory(prefix: str) -> Path:
    """Outside /tmp's pytest folders: the overlay and vfs trees hold hundreds of megabytes."""
    return Path(tempfile.mkdtemp(prefix=prefix, dir=os.environ.get("TOKEND_TEST_TMP") or None))
