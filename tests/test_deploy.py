"""The files under deploy/: the systemd unit as systemd itself reads it, the configs as tokend loads them,
and the wiring of the Dockerfile, compose.yaml and the Kubernetes manifests (no Docker engine or cluster
runs here, so names, paths, ports and probes are checked against each other and against the configs).
"""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import sys
import tomllib
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

from tests.daemon import Daemon, write_config
from tests.tools import DEBIAN, require_tool
from tokend.cli import main as cli
from tokend.config.settings import Settings
from tokend.testing import FakeProviders

ROOT = Path(__file__).resolve().parent.parent
DEPLOY = ROOT / "deploy"
UNIT = DEPLOY / "systemd" / "tokend.service"
SYSTEMD_CONFIG = DEPLOY / "systemd" / "config.toml"
DOCKERFILE = DEPLOY / "docker" / "Dockerfile"
DOCKER_IGNORE = DEPLOY / "docker" / "Dockerfile.dockerignore"
COMPOSE = DEPLOY / "docker" / "compose.yaml"
DOCKER_CONFIG = DEPLOY / "docker" / "tokend.toml"
KUBERNETES = DEPLOY / "kubernetes"

PROVIDERS = {"felloh", "fts", "flotiq"}
LOCAL_URL = re.compile(r"http://127\.0\.0\.1:(\d+)(/[A-Za-z0-9_/.-]*)")


# --- helpers ----------------------------------------------------------------------------------------------


def unit_settings(text: str) -> dict[str, dict[str, list[str]]]:
    """A unit file as {section: {key: [values, in order]}} (a key may repeat, as LoadCredential= does)."""
    sections: dict[str, dict[str, list[str]]] = {}
    current: dict[str, list[str]] | None = None
    for raw in text.splitlines():
        line = raw.strip()
        if not line or line[0] in "#;":
            continue
        if line.startswith("["):
            current = sections.setdefault(line.strip("[]"), {})
            continue
        assert current is not None, f"a setting outside any section: {line!r}"
        key, _, value = line.partition("=")
        current.setdefault(key.strip(), []).append(value.strip())
    return sections


def service() -> dict[str, list[str]]:
    return unit_settings(UNIT.read_text())["Service"]


def tokend_script() -> Path:
    """The tokend console script of the Python running the tests (a venv's bin/, or wherever pip put it)."""
    beside = Path(sys.executable).parent / "tokend"
    found = beside if beside.exists() else Path(shutil.which("tokend") or "tokend")
    assert found.is_file(), "the tokend script is not installed: pip install '.[test]' first"
    return found


def systemd_analyze() -> str:
    return require_tool("systemd-analyze", f"{DEBIAN} systemd")


def secret_references(config: dict[str, Any], how: str) -> dict[tuple[str, str], str]:
    """{(provider, field): target} for every `{ how = target }` in the providers' tables."""
    found = {}
    for provider, table in config["providers"].items():
        for field, value in table.items():
            if isinstance(value, dict):
                assert set(value) == {how}, f"{provider}.{field} should be a {{ {how} = ... }} reference"
                found[(provider, field)] = value[how]
    return found


def assert_loads_with_secrets(config_text: str, references: dict[tuple[str, str], str], path: Path,
                              secret_file: dict[str, Path]) -> Settings:
    """Load the config at `path`, with each referenced secret written to its file first; check that every
    secret field reads the file it names, and that there is no other secret (a plain string, say)."""
    for target, file in secret_file.items():
        file.write_text(f"placeholder for {target}\n")
        file.chmod(0o600)
    path.write_text(config_text)
    settings = Settings.load(path)
    assert set(settings.providers) == PROVIDERS
    read = {(name, field): secret.get() for name, provider in settings.providers.items()
            for field, secret in provider.secrets().items()}
    assert read == {where: f"placeholder for {target}" for where, target in references.items()}
    assert settings.server.host == "127.0.0.1" and settings.server.socket is None
    return settings


def assert_cli_accepts(argv: list[str], tmp_path: Path) -> None:
    """The daemon's command line, with --config pointed at a missing file, must get as far as reading the
    config (exit 3): arguments in an order the CLI refuses end in a usage error (exit 2) instead."""
    assert Path(argv[0]).name == "tokend"
    args = argv[1:]
    args[args.index("--config") + 1] = str(tmp_path / "missing.toml")
    try:
        code = cli.main(args)
    except SystemExit as exc:
        pytest.fail(f"`tokend {' '.join(argv[1:])}` is a usage error (exit {exc.code})")
    assert code == cli.Exit.CONFIG
    assert argv[argv.index("--config") + 1] == "/etc/tokend/config.toml"


def dockerfile_instructions() -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) pairs, continuation lines joined, comments dropped."""
    instructions, pending = [], ""
    for raw in DOCKERFILE.read_text().splitlines():
        line = raw.strip()
        if line.startswith("#") or (not line and not pending):
            continue
        pending += line.removesuffix("\\").strip() + " "
        if not line.endswith("\\"):
            word, _, rest = pending.strip().partition(" ")
            instructions.append((word.upper(), rest.strip()))
            pending = ""
    return instructions


def dockerfile(name: str) -> list[str]:
    return [args for word, args in dockerfile_instructions() if word == name]


def image_user() -> tuple[int, int]:
    user, _, group = dockerfile("USER")[-1].partition(":")
    assert user.isdigit() and group.isdigit(), "USER should be numeric, so that runAsNonRoot can check it"
    return int(user), int(group)


def image_uid() -> int:
    return image_user()[0]


def local_urls(text: str) -> list[tuple[int, str]]:
    return [(int(port), path) for port, path in LOCAL_URL.findall(text)]


def compose() -> dict[str, Any]:
    loaded: dict[str, Any] = yaml.safe_load(COMPOSE.read_text())
    return loaded


def kubernetes_objects() -> dict[str, dict[str, Any]]:
    """Every object of deploy/kubernetes/*.yaml by kind (one of each)."""
    objects: dict[str, dict[str, Any]] = {}
    for path in sorted(KUBERNETES.glob("*.yaml")):
        for document in yaml.safe_load_all(path.read_text()):
            assert document["kind"] not in objects, f"a second {document['kind']} in {path.name}"
            objects[document["kind"]] = document
    assert set(objects) == {"Deployment", "ConfigMap", "Secret"}
    return objects


def pod_spec() -> dict[str, Any]:
    spec: dict[str, Any] = kubernetes_objects()["Deployment"]["spec"]["template"]["spec"]
    return spec


def sidecar() -> dict[str, Any]:
    tokend: dict[str, Any]
    [tokend] = [c for c in pod_spec()["initContainers"] if c["name"] == "tokend"]
    return tokend


def app_container() -> dict[str, Any]:
    app: dict[str, Any]
    [app] = pod_spec()["containers"]
    return app


def kubernetes_config() -> dict[str, Any]:
    return tomllib.loads(kubernetes_objects()["ConfigMap"]["data"]["config.toml"])


def mebibytes(quantity: str) -> float:
    units = {"Ki": 1 / 1024, "Mi": 1, "Gi": 1024}
    match = re.fullmatch(r"(\d+)(Ki|Mi|Gi)", quantity)
    assert match, f"memory quantity {quantity!r} is not in Ki, Mi or Gi"
    return int(match.group(1)) * units[match.group(2)]


# --- systemd ----------------------------------------------------------------------------------------------


def test_unit_passes_systemd_analyze_verify(tmp_path: Path) -> None:
    # verify refuses a unit whose ExecStart or ExecReload binary does not exist, and /usr/local/bin/tokend
    # need not exist here: the copy runs the tokend script installed for these tests instead.
    text = UNIT.read_text()
    assert text.count("ExecStart=/usr/local/bin/tokend ") == 1
    unit = tmp_path / "tokend.service"
    unit.write_text(text.replace("=/usr/local/bin/tokend ", f"={tokend_script()} "))  # ExecStart, ExecReload
    result = subprocess.run([systemd_analyze(), "verify", "--man=no", str(unit)],
                            capture_output=True, text=True, timeout=60)
    # An unknown or misspelt setting is only a warning (exit 0) that names the file: fail on it too.
    ours = [line for line in (result.stdout + result.stderr).splitlines() if unit.name in line]
    assert result.returncode == 0 and ours == [], result.stdout + result.stderr


def test_unit_hardening_scores_well_with_systemd() -> None:
    # systemd's own exposure score, 0 (locked down) to 10; --threshold is in tenths. The unit before
    # this hardening scored 3.5.
    result = subprocess.run([systemd_analyze(), "security", "--offline=yes", "--threshold=20", str(UNIT)],
                            capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stdout + result.stderr


def test_unit_is_a_notify_service_with_watchdog_reload_and_restart(tmp_path: Path) -> None:
    settings = service()
    assert settings["Type"] == ["notify"]
    assert settings["NotifyAccess"] == ["main"]
    assert settings["WatchdogSec"] == ["30s"]
    assert settings["Restart"] == ["on-failure"]
    # 243 is systemd's EXIT_CREDENTIALS: a LoadCredential= file missing.
    assert settings["RestartPreventExitStatus"] == [f"{int(cli.Exit.CONFIG)} 243"]
    [exec_start] = settings["ExecStart"]
    assert_cli_accepts(exec_start.split(), tmp_path)
    # The reload waits for tokend's answer, so that a refused config fails `systemctl reload`.
    [exec_reload] = settings["ExecReload"]
    assert exec_reload.split()[-1] == "reload" and exec_reload.split()[:-1] == exec_start.split()[:-1]
    assert_cli_accepts([*exec_reload.split()[:-1], "run"], tmp_path)


def test_unit_hardening_is_in_place() -> None:
    settings = service()
    expected = {
        "DynamicUser": "yes", "RuntimeDirectory": "tokend", "ProtectSystem": "strict", "ProtectHome": "yes",
        "PrivateTmp": "yes", "PrivateDevices": "yes", "NoNewPrivileges": "yes", "CapabilityBoundingSet": "",
        "RestrictAddressFamilies": "AF_UNIX AF_INET AF_INET6", "MemoryDenyWriteExecute": "yes",
        "RestrictNamespaces": "yes", "LockPersonality": "yes", "SystemCallArchitectures": "native",
        "SystemCallErrorNumber": "EPERM", "UMask": "0077",
        # The state folder ([state]): kept across restarts, readable by the service alone.
        "StateDirectory": "tokend", "StateDirectoryMode": "0700",
    }
    assert {key: settings.get(key, [None])[-1] for key in expected} == expected
    assert settings["SystemCallFilter"][0] == "@system-service"
    assert "Environment" not in settings  # secrets come as credentials, never through the environment


def test_load_credentials_match_the_config() -> None:
    loaded = {}
    for line in service()["LoadCredential"]:
        name, _, source = line.partition(":")
        assert source == f"/etc/tokend/credentials/{name}"
        loaded[name] = source
    references = secret_references(tomllib.loads(SYSTEMD_CONFIG.read_text()), "credential")
    assert len(loaded) == len(service()["LoadCredential"])
    assert sorted(loaded) == sorted(references.values())


def test_systemd_config_loads_with_its_credentials(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    text = SYSTEMD_CONFIG.read_text()
    references = secret_references(tomllib.loads(text), "credential")
    credentials = tmp_path / "credentials"
    credentials.mkdir()
    monkeypatch.setenv("CREDENTIALS_DIRECTORY", str(credentials))
    files = {name: credentials / name for name in references.values()}
    settings = assert_loads_with_secrets(text, references, tmp_path / "config.toml", files)
    assert settings.server.port == 8765


# --- Docker and compose -----------------------------------------------------------------------------------


def test_dockerfile_runs_tokend_as_a_non_root_user(tmp_path: Path) -> None:
    [base] = dockerfile("FROM")
    assert base.startswith("python:3.11-slim")
    assert image_uid() != 0
    [cmd] = dockerfile("CMD")
    assert_cli_accepts(json.loads(cmd), tmp_path)


def test_dockerfile_copies_only_what_pip_needs_and_the_ignore_file_lets_it_through() -> None:
    sources = [source for args in dockerfile("COPY") for source in args.split()[:-1]]
    assert sorted(sources) == ["README.md", "pyproject.toml", "tokend/"]
    for source in sources:
        assert (ROOT / source).exists(), f"{source} is not in the build context (the repository root)"
    patterns = [line for line in DOCKER_IGNORE.read_text().splitlines() if line and not line.startswith("#")]
    assert patterns[0] == "*"  # everything else stays out of the build context
    assert {f"!{source}" for source in sources} <= set(patterns)
    assert not any(args.startswith("--mount=type=secret") for args in dockerfile("RUN"))


def test_dockerfile_holds_no_secret_in_env_or_arg() -> None:
    secret_like = {"KEY", "SECRET", "PASSWORD", "PASSWD", "TOKEN", "CREDENTIAL", "CREDENTIALS", "PRIVATE", "AUTH"}
    names = []
    for word in ("ENV", "ARG"):
        for args in dockerfile(word):
            names += [pair.split("=")[0] for pair in args.split()] if "=" in args else [args.split()[0]]
    assert names, "the test should see the Dockerfile's ENV lines"
    for name in names:
        assert not set(name.upper().split("_")) & secret_like, f"{name} looks like it holds a secret"


def test_dockerfile_healthcheck_asks_livez_on_loopback_with_a_timeout() -> None:
    [healthcheck] = dockerfile("HEALTHCHECK")
    options, _, command = healthcheck.partition(" CMD ")
    assert "--timeout=" in options
    argv = json.loads(command)
    assert argv[:2] == ["python", "-c"]
    assert local_urls(argv[2]) == [(8765, "/livez")]
    assert "timeout=" in argv[2]


def test_compose_builds_the_image_from_the_repository_root() -> None:
    build = compose()["services"]["tokend"]["build"]
    context = (COMPOSE.parent / build["context"]).resolve()
    assert context == ROOT
    assert (context / build["dockerfile"]).resolve() == DOCKERFILE


def test_compose_mounts_the_config_and_every_secret_it_reads() -> None:
    tokend = compose()["services"]["tokend"]
    mount, state = tokend["volumes"]
    source, target, mode = mount.split(":")
    # The state folder is a named volume (it outlives the container) where the image made it for uid 10001.
    volume, folder = state.split(":")
    assert volume in compose()["volumes"] and folder == "/var/lib/tokend"
    assert "install -d -o 10001 -g 10001 -m 0700 /var/lib/tokend" in DOCKERFILE.read_text()
    assert (COMPOSE.parent / source).resolve() == DOCKER_CONFIG and mode == "ro"
    assert target == json.loads(dockerfile("CMD")[0])[2]  # where the image's CMD reads its config

    declared = compose()["secrets"]
    assert sorted(tokend["secrets"]) == sorted(declared)
    for name, secret in declared.items():
        assert secret == {"file": f"./secrets/{name}"}
    references = secret_references(tomllib.loads(DOCKER_CONFIG.read_text()), "file")
    assert sorted(references.values()) == sorted(f"/run/secrets/{name}" for name in declared)
    assert "ports" not in tokend  # tokend answers on loopback, to its network namespace only


def test_compose_config_loads(tmp_path: Path) -> None:
    text = DOCKER_CONFIG.read_text()
    references = secret_references(tomllib.loads(text), "file")
    moved = {where: target.replace("/run/secrets/", f"{tmp_path}/") for where, target in references.items()}
    files = {target: Path(target) for target in moved.values()}
    settings = assert_loads_with_secrets(text.replace("/run/secrets/", f"{tmp_path}/"), moved,
                                         tmp_path / "tokend.toml", files)
    assert settings.server.port == 8765


def test_compose_app_shares_tokends_network_and_waits_for_it() -> None:
    app = compose()["services"]["app"]
    assert app["network_mode"] == "service:tokend"
    assert app["depends_on"]["tokend"]["condition"] == "service_healthy"
    script = "\n".join(app["command"])
    config = tomllib.loads(DOCKER_CONFIG.read_text())
    urls = local_urls(script)
    assert urls and all(port == config["server"]["port"] for port, _ in urls)
    assert all(path.startswith("/token/") and path.split("/")[2] in config["providers"] for _, path in urls)
    assert "X-Tokend-Request:" in script
    assert "$(" not in script.replace("$$(", "")  # compose would substitute a single $; $$ is the shell's


# --- Kubernetes -------------------------------------------------------------------------------------------


def test_tokend_is_a_native_sidecar() -> None:
    assert sidecar()["restartPolicy"] == "Always"
    assert [c["name"] for c in pod_spec()["containers"]] == ["app"]


def test_sidecar_command_reads_the_configmap(tmp_path: Path) -> None:
    tokend = sidecar()
    assert_cli_accepts(tokend["command"], tmp_path)
    config_path = Path(tokend["command"][tokend["command"].index("--config") + 1])
    volumes = {volume["name"]: volume for volume in pod_spec()["volumes"]}
    [mount] = [m for m in tokend["volumeMounts"] if "configMap" in volumes[m["name"]]]
    assert mount["readOnly"] is True and Path(mount["mountPath"]) == config_path.parent
    configmap = kubernetes_objects()["ConfigMap"]
    assert volumes[mount["name"]]["configMap"]["name"] == configmap["metadata"]["name"]
    assert config_path.name in configmap["data"]


def test_sidecar_mounts_every_secret_the_config_reads_read_only() -> None:
    tokend, secret = sidecar(), kubernetes_objects()["Secret"]
    volumes = {volume["name"]: volume for volume in pod_spec()["volumes"]}
    [mount] = [m for m in tokend["volumeMounts"] if "secret" in volumes[m["name"]]]
    volume = volumes[mount["name"]]["secret"]
    assert volume["secretName"] == secret["metadata"]["name"]
    assert mount["readOnly"] is True
    assert volume["defaultMode"] & 0o007 == 0 and volume["defaultMode"] & 0o040  # the group's, nobody else's
    assert pod_spec()["securityContext"]["fsGroup"] == image_uid()
    references = secret_references(kubernetes_config(), "file")
    assert sorted(references.values()) == sorted(f"{mount['mountPath']}/{key}" for key in secret["stringData"])
    # The app sees tokens only: no secret volume in its container.
    assert not any("secret" in volumes[m["name"]] for m in app_container().get("volumeMounts", []))


def test_secret_example_holds_placeholders_only() -> None:
    values = kubernetes_objects()["Secret"]["stringData"]
    assert values and all(value == f"REPLACE_ME_{key}" for key, value in values.items())
    assert "data" not in kubernetes_objects()["Secret"]


def test_kubernetes_config_loads(tmp_path: Path) -> None:
    config = kubernetes_config()
    references = secret_references(config, "file")
    [directory] = {str(Path(target).parent) for target in references.values()}
    text = kubernetes_objects()["ConfigMap"]["data"]["config.toml"].replace(directory, str(tmp_path))
    moved = {where: target.replace(directory, str(tmp_path)) for where, target in references.items()}
    files = {target: Path(target) for target in moved.values()}
    settings = assert_loads_with_secrets(text, moved, tmp_path / "config.toml", files)
    assert settings.server.port == 8765


def test_probes_run_inside_the_container_against_loopback() -> None:
    tokend = sidecar()
    port = kubernetes_config()["server"]["port"]
    expected = {"startupProbe": "/livez", "readinessProbe": "/readyz", "livenessProbe": "/livez"}
    for probe, path in expected.items():
        # httpGet and tcpSocket probes come from the pod IP, where tokend does not listen.
        assert set(tokend[probe]) & {"httpGet", "tcpSocket", "grpc"} == set(), probe
        command = tokend[probe]["exec"]["command"]
        assert command[:2] == ["python", "-c"]
        assert local_urls(command[2]) == [(port, path)], probe
        assert "timeout=" in command[2]


def test_app_container_asks_tokend_on_loopback() -> None:
    script = "\n".join(app_container()["command"] + app_container()["args"])
    config = kubernetes_config()
    urls = local_urls(script)
    assert urls and all(port == config["server"]["port"] for port, _ in urls)
    assert all(path.startswith("/token/") and path.split("/")[2] in config["providers"] for _, path in urls)
    assert "X-Tokend-Request:" in script


@pytest.mark.parametrize("container", ["tokend", "app"])
def test_containers_are_locked_down(container: str) -> None:
    spec = sidecar() if container == "tokend" else app_container()
    effective = {**pod_spec()["securityContext"], **spec["securityContext"]}
    assert effective["runAsNonRoot"] is True
    assert (effective["runAsUser"], effective["runAsGroup"]) == image_user()
    assert effective["readOnlyRootFilesystem"] is True
    assert effective["allowPrivilegeEscalation"] is False
    assert effective["capabilities"] == {"drop": ["ALL"]}
    assert effective["seccompProfile"] == {"type": "RuntimeDefault"}


def test_sidecar_resources_are_modest() -> None:
    resources = sidecar()["resources"]
    request, limit = mebibytes(resources["requests"]["memory"]), mebibytes(resources["limits"]["memory"])
    assert 64 <= request <= limit <= 256  # tokend runs at about 60 MiB
    assert "cpu" in resources["requests"]


# --- the probes against a real daemon ---------------------------------------------------------------------


def probe_commands() -> Iterator[tuple[str, list[str]]]:
    """Every health command the deploy files hold, as (where, argv)."""
    [healthcheck] = dockerfile("HEALTHCHECK")
    yield "Dockerfile HEALTHCHECK", json.loads(healthcheck.partition(" CMD ")[2])
    for probe in ("startupProbe", "readinessProbe", "livenessProbe"):
        yield f"Kubernetes {probe}", sidecar()[probe]["exec"]["command"]


def run_probe(argv: list[str], daemon: Daemon) -> int:
    port = daemon.url.rsplit(":", 1)[1]
    command = [sys.executable, *argv[1:-1], argv[-1].replace("127.0.0.1:8765", f"127.0.0.1:{port}")]
    return subprocess.run(command, capture_output=True, timeout=30).returncode


def test_probes_while_one_provider_fails(tmp_path: Path, fakes: FakeProviders) -> None:
    fakes.fintech_studios.fail(503)  # every login, until recover()
    daemon = Daemon(write_config(tmp_path, fakes), log_path=tmp_path / "daemon.log")
    try:
        daemon.start(ready=False)
        expected = {"felloh": "ok", "fts": "failed", "flotiq": "ok"}
        daemon.wait_until(lambda: daemon.get("/readyz").json()["providers"] == expected, what="fts to fail")
        answer = daemon.get("/readyz")
        assert answer.status_code == 503 and answer.json() == {"ready": False, "providers": expected}
        codes = {where: run_probe(argv, daemon) for where, argv in probe_commands()}
        # Not ready, but alive: Kubernetes stops routing to the pod and does not restart tokend.
        assert codes == {"Dockerfile HEALTHCHECK": 0, "Kubernetes startupProbe": 0,
                         "Kubernetes readinessProbe": 1, "Kubernetes livenessProbe": 0}

        fakes.fintech_studios.recover()
        # A retry that began before recover() may still be failing; a forced refresh joins it, so ask again.
        daemon.wait_until(lambda: daemon.post("/token/fts/refresh").status_code == 200, what="fts to recover")
        assert daemon.get("/readyz").status_code == 200
        assert {where: run_probe(argv, daemon) for where, argv in probe_commands()} == dict.fromkeys(codes, 0)
    finally:
        daemon.kill()
