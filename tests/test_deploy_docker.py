"""deploy/docker under a real Docker engine: Debian's dockerd, started by the test with its state in a
temporary folder, builds deploy/docker/Dockerfile unchanged and runs the image as compose.yaml does:
read-only, no capabilities, no new privileges, the config and the secrets mounted where tokend.toml reads
them, and a second container sharing tokend's network namespace.

No registry can be reached here, so the base image the Dockerfile names (python:3.11-slim) is made
locally: a Debian bookworm tree with Python 3.11 (cached, see tests/machines.py), `docker import`ed
under that name. The providers are faked over TLS at the addresses tokend.toml names, inside the
network namespace the containers share (it belongs to a placeholder container that holds the
/etc/hosts entries); tokend trusts the fakes' CA through $SSL_CERT_FILE.
Skipped only without root, mount namespaces or cgroups.
"""

from __future__ import annotations

import hashlib
import json
import re
import shutil
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from tests.machines import (
    BASE_IMAGE,
    BASE_IMAGE_CHANGES,
    DOCKER,
    DockerEngine,
    TlsFakes,
    base_image_tar,
    request,
    require_machines,
    temporary_directory,
    wait_until,
)

ROOT = Path(__file__).resolve().parent.parent
DOCKER_DIR = ROOT / "deploy" / "docker"
CONFIG = DOCKER_DIR / "tokend.toml"
IMAGE = "tokend:0.1.0"  # compose.yaml's image name
UID = 10001

# The client in the second container: the token's digest, never the token, goes to its output.
CLIENT = """
import hashlib, urllib.request
request = urllib.request.Request("http://127.0.0.1:8765/token/felloh?format=raw",
                                 headers={"X-Tokend-Request": "1"})
with urllib.request.urlopen(request, timeout=10) as answer:
    print(hashlib.sha256(answer.read()).hexdigest())
"""


@dataclass
class Deployment:
    engine: DockerEngine
    fakes: TlsFakes
    pid: int  # tokend's PID 1 as the host sees it

    def docker(self, *args: str, check: bool = True) -> str:
        return self.engine.docker(*args, check=check).stdout

    def state(self) -> dict[str, object]:
        state: dict[str, object] = self.engine.inspect("tokend")["State"]
        return state


def hardening() -> list[str]:
    """compose.yaml's settings for both services."""
    return ["--read-only", "--cap-drop", "ALL", "--security-opt", "no-new-privileges:true"]


def mounts(directory: Path, fakes: TlsFakes) -> list[str]:
    """compose.yaml's volume and secrets, as files readable by the image's uid (docs/deployment.md's chown)."""
    secrets = directory / "secrets"
    secrets.mkdir()
    options = ["-v", f"{CONFIG}:/etc/tokend/config.toml:ro"]
    for name, value in fakes.secrets.items():
        path = secrets / name
        path.write_text(value + "\n")
        path.chmod(0o400)
        shutil.chown(path, UID, UID)
        options += ["-v", f"{path}:/run/secrets/{name}:ro"]
    ca = directory / "fakes-ca.pem"
    ca.write_bytes(fakes.ca_pem)
    return [*options, "-v", f"{ca}:/etc/tokend-tests/ca.pem:ro", "-e", "SSL_CERT_FILE=/etc/tokend-tests/ca.pem"]


@pytest.fixture(scope="module")
def deployment() -> Iterator[Deployment]:
    require_machines("dockerd", DOCKER, "debootstrap")
    began = time.monotonic()
    tar = base_image_tar()
    work = temporary_directory("tokend-docker-")
    engine = DockerEngine(work)
    fakes = TlsFakes(CONFIG, work)
    try:
        engine.start()
        engine.docker("import", *(arg for change in BASE_IMAGE_CHANGES for arg in ("--change", change)),
                      str(tar), BASE_IMAGE, timeout=300)
        imported = time.monotonic()
        # docs/deployment.md's build command, unchanged but for the network: this engine has no bridge, and pip
        # reaches PyPI through the host's.
        engine.docker("build", "--network", "host", "-f", "deploy/docker/Dockerfile", "-t", IMAGE, ".",
                      timeout=600, cwd=ROOT)
        built = time.monotonic()
        # A placeholder owns the network namespace (loopback only) and its /etc/hosts, so that the fakes
        # listen there before tokend starts.
        engine.docker("run", "-d", "--name", "net", "--network", "none",
                      *(f"--add-host={host}:{TlsFakes.ADDRESSES[name]}" for name, host in fakes.hosts.items()),
                      *hardening(), IMAGE, "python", "-c", "import time; time.sleep(3600)")
        fakes.serve_in(engine.inspect("net")["State"]["Pid"])
        engine.docker("run", "-d", "--name", "tokend", "--network", "container:net", *hardening(),
                      *mounts(work, fakes), "--health-interval=2s", IMAGE)
        print(f"\ndocker ({engine.storage_driver}): engine up and {BASE_IMAGE} imported in {imported - began:.0f}s, "
              f"image built in {built - imported:.0f}s, containers up in {time.monotonic() - built:.0f}s")
        yield Deployment(engine, fakes, engine.inspect("tokend")["State"]["Pid"])
    finally:
        engine.stop()
        fakes.stop()
        shutil.rmtree(work, ignore_errors=True)


def dockerfile_healthcheck() -> list[str]:
    text = (DOCKER_DIR / "Dockerfile").read_text().replace("\\\n", " ")
    match = re.search(r"^HEALTHCHECK .*? CMD (\[.*\])$", text, re.MULTILINE)
    assert match
    argv: list[str] = json.loads(match.group(1))
    return argv


def test_the_health_check_reports_healthy(deployment: Deployment) -> None:
    config = deployment.engine.inspect(IMAGE)["Config"]
    assert config["Healthcheck"]["Test"] == ["CMD", *dockerfile_healthcheck()]  # the image's own command
    wait_until(lambda: deployment.state()["Health"]["Status"] == "healthy",  # type: ignore[index]
               what="the container to turn healthy", timeout=60, every=1)
    answer = request(deployment.pid, "GET", "/readyz")
    assert answer.status == 200 and answer.json()["providers"] == {"felloh": "ok", "fts": "ok", "flotiq": "ok"}


def test_tokend_runs_as_the_non_root_image_user(deployment: Deployment) -> None:
    assert deployment.engine.inspect(IMAGE)["Config"]["User"] == f"{UID}:{UID}"
    status = Path(f"/proc/{deployment.pid}/status").read_text()
    assert re.search(rf"^Uid:\s+{UID}\s+{UID}\s+{UID}\s+{UID}$", status, re.MULTILINE), status
    assert re.search(rf"^Gid:\s+{UID}\s+{UID}\s+{UID}\s+{UID}$", status, re.MULTILINE), status
    argv = Path(f"/proc/{deployment.pid}/cmdline").read_bytes().rstrip(b"\0").split(b"\0")
    assert argv[1].endswith(b"/tokend") and argv[2:] == [b"--config", b"/etc/tokend/config.toml", b"run"]


def test_the_root_file_system_is_read_only_and_no_capability_is_left(deployment: Deployment) -> None:
    host_config = deployment.engine.inspect("tokend")["HostConfig"]
    assert host_config["ReadonlyRootfs"] is True and host_config["CapDrop"] == ["ALL"]
    status = Path(f"/proc/{deployment.pid}/status").read_text()
    for field in ("CapInh", "CapPrm", "CapEff", "CapBnd", "CapAmb"):
        assert re.search(rf"^{field}:\s+0+$", status, re.MULTILINE), field
    assert re.search(r"^NoNewPrivs:\s+1$", status, re.MULTILINE)
    tried = deployment.docker("exec", "tokend", "python", "-c",
                              "import errno\ntry:\n    open('/tmp/probe', 'w')\nexcept OSError as e:\n"
                              "    print(errno.errorcode[e.errno])")
    assert tried.strip() == "EROFS"


def test_tokens_are_served_to_a_container_sharing_the_network_namespace(deployment: Deployment) -> None:
    # compose.yaml's app service: network_mode service:tokend, read-only, no capabilities.
    digest = deployment.docker("run", "--rm", "--network", "container:tokend", *hardening(), IMAGE,
                               "python", "-c", CLIENT).strip()
    issued = {hashlib.sha256(token.encode()).hexdigest() for token in deployment.fakes.felloh.issued}
    assert digest in issued
    logs = deployment.engine.docker("logs", "tokend").stderr + deployment.engine.docker("logs", "tokend").stdout
    assert not any(token in logs for token in deployment.fakes.felloh.issued)


def test_docker_stop_is_clean(deployment: Deployment) -> None:
    began = time.monotonic()
    deployment.docker("stop", "tokend")  # SIGTERM to PID 1, SIGKILL after 10 s
    took = time.monotonic() - began
    state = deployment.state()
    assert (state["Status"], state["ExitCode"], state["OOMKilled"]) == ("exited", 0, False)
    assert took < 10
    print(f"\ndocker stop took {took:.1f}s")
