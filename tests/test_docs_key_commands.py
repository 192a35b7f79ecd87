"""Every command the documentation gives for making or storing a key makes a file only its owner can read:
`tokend check` refuses a secret file other users can read, so a documented command must not make one. The
commands are taken from the pages' own text and run as they are written (paths moved into a folder of the test)."""

from __future__ import annotations

import re
import shlex
import stat
import subprocess
from pathlib import Path

import pytest

from tests.tools import require_tool

ROOT = Path(__file__).resolve().parent.parent
_KEY_WORDS = ("openssl rand", "-keyout", "gcloud iam service-accounts keys create", "install -m 600", "install -m 0600")


def _documented_key_commands() -> dict[str, str]:
    """command -> the file it is shown in: code spans, code block lines and `(umask 077; ...)` in comments."""
    found: dict[str, str] = {}
    files = [*ROOT.glob("docs/**/*.md"), ROOT / "README.md", ROOT / "config.example.toml", *ROOT.glob("deploy/**/*")]
    for path in (path for path in files if path.is_file()):
        text = path.read_text(errors="replace")
        blocks = re.findall(r"```[a-z]*\n(.*?)```", text, re.S)
        pieces = [*re.findall(r"`([^`\n]+)`", text), *(line for block in blocks for line in block.splitlines()),
                  *re.findall(r"\(umask 077; [^()]*\)", text)]
        for piece in pieces:
            # A command that writes a file (a bare `openssl rand` prints, for a Kubernetes secret); not a TOML line.
            writes = any(word in piece for word in (">", "-keyout", "install -m", "keys create"))
            if any(word in piece for word in _KEY_WORDS) and writes and " = " not in piece:
                found.setdefault(piece.strip().removeprefix("#").strip(), str(path.relative_to(ROOT)))
    return found


COMMANDS = _documented_key_commands()


def test_the_documented_key_commands_are_found() -> None:
    shown = " ".join(COMMANDS)
    assert "openssl rand -base64 32" in shown and "-keyout" in shown and "install -m 600" in shown, COMMANDS


@pytest.mark.parametrize("command", COMMANDS, ids=lambda command: COMMANDS[command])
def test_each_documented_key_command_makes_a_file_only_its_owner_reads(command: str, tmp_path: Path) -> None:
    assert "(umask 077; " in command or command.startswith("install -m 600 "), (
        f"{COMMANDS[command]}: {command!r} would make a key file other users can read")
    program = command.removeprefix("(umask 077; ").split()[0]
    if program not in ("openssl", "install"):
        return  # a vendor's tool (gcloud): its output is covered by the umask, checked above
    require_tool(program, "Debian/Ubuntu: apt-get install openssl coreutils")
    runnable = (command.removeprefix("sudo sh -c ").replace("/etc/tokend/", "").replace("/home/me/.config/tokend/", "")
                .replace("FILE", "key_file"))
    if program == "install":  # the downloaded file it stores, as a browser saves it
        (tmp_path / shlex.split(runnable)[3]).write_text("-----BEGIN PRIVATE KEY-----\n")
    (tmp_path / "secrets").mkdir()
    (tmp_path / "credentials").mkdir()
    before = set(tmp_path.rglob("*"))
    shell = require_tool("sh", "any POSIX system has it")
    result = subprocess.run([shell, "-c", f"umask 022; {runnable}"], cwd=tmp_path, capture_output=True, text=True,
                            timeout=60)
    assert result.returncode == 0, result.stderr
    made = [path for path in set(tmp_path.rglob("*")) - before if path.suffix != ".crt"]  # certificates are public
    assert made, runnable
    for path in made:
        assert stat.S_IMODE(path.stat().st_mode) == 0o600, (COMMANDS[command], path.name)
