"""The state folder: one sealed record per provider, written whenever a login succeeds and read back at
start (and when a reload adds or changes a provider), so that a restart within a token's lifetime makes
no login and a rotated refresh token outlives the process that received it.

Each record is bound (its associated data) to the provider's name and a keyed digest of its login
settings: a record copied to another provider's file, or left from settings that have changed since,
does not open. What does not open is logged once and ignored: a fresh login follows, never an old token.

Files are 0600 in a 0700 folder and replaced atomically (a temporary file, fsync, rename, fsync of the
folder): a crash leaves the old record or the new one, never half of either.
"""

from __future__ import annotations

import contextlib
import errno
import hashlib
import hmac
import logging
import os
import secrets
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

from tokend.config.secret_files import NotAFile, read_regular_file
from tokend.credential import Credential
from tokend.errors import ConfigError, SignInNeeded, UnknownProvider
from tokend.providers import ProviderConfig
from tokend.renewal.events import LoginEvent
from tokend.sealing import RecordError, RecordKey, open_record, seal
from tokend.state.config import StateConfig

if TYPE_CHECKING:
    from tokend.renewal.manager import Manager

__all__ = ["StateStore", "persisted"]

log = logging.getLogger("tokend")

_SUFFIX = ".record"
_LEDGER = ".spent"
# A ledger is rewritten, keeping its newest lines and every configured token's, when it grows past this: the
# older rotations' digests are no longer needed, the generation noted in it refuses their records anyway.
_LEDGER_LINES = 512
_LEDGER_KEEP = 128


@dataclass
class _Ledger:
    """One provider's ledger as read: digests sent (and those the server has shown it keeps), the highest
    generation spent from, and the lines as written (for a rewrite)."""

    key_id: str
    spent: set[str] = field(default_factory=set)
    kept: set[str] = field(default_factory=set)
    generation: int = 0
    lines: list[str] = field(default_factory=list)
    foreign: bool = False  # written with another state key: its digests say nothing of this key's tokens

    def take(self, line: str) -> None:
        what, _, rest = line.partition(" ")
        if what == "key":
            self.foreign = self.foreign or rest != self.key_id
            return
        generation, _, digest = rest.partition(" ")
        if what == "g" and generation.isdigit():
            self.generation = max(self.generation, int(generation))
            return
        if what not in ("s", "k") or len(digest) != 32:
            return  # not a line this tokend wrote: ignored
        (self.spent if what == "s" else self.kept).add(digest)
        if generation.isdigit():
            self.generation = max(self.generation, int(generation))
        self.lines.append(line)


def persisted(config: ProviderConfig) -> bool:
    """Whether a provider's credentials are kept: it logs in (a static key is a secret, never stored) and
    has not opted out (`persist = false`)."""
    return config.persist and config.url is not None


class StateStore:
    def __init__(self, config: StateConfig) -> None:
        self.folder = config.folder
        self._key = RecordKey.derive(config.key_bytes(), b"tokend state ")
        self._ledger_key = hmac.new(config.key_bytes(), b"tokend state spent refresh tokens", hashlib.sha256).digest()
        self._ledgers: dict[str, _Ledger] = {}
        self._refused: dict[str, str] = {}  # provider -> the record it refused last (logged once)
        self._manager: Manager | None = None
        self._lock_descriptor: int | None = None

    def open(self) -> StateStore:
        """Create the folder (0700) if need be, and tighten one that others could read."""
        try:
            self.folder.mkdir(mode=0o700, parents=True, exist_ok=True)
            mode = self.folder.stat().st_mode & 0o777
            if mode & 0o077:
                os.chmod(self.folder, 0o700)
                log.warning("state_folder_tightened path=%s mode=%04o now=0700", self.folder, mode)
        except OSError as exc:
            raise ConfigError(f"state: cannot use {self.folder} as the state folder ({exc.strerror}); set "
                              "[state] path to a folder tokend's user may write") from None
        if not self.folder.is_dir():
            raise ConfigError(f"state: {self.folder} is not a folder; set [state] path to one")
        self._lock()
        return self

    def _lock(self) -> None:
        """One daemon per folder: two would each spend a user token's refresh token, which the server takes
        for theft. The lock dies with the process (a crash leaves no stale lock)."""
        import fcntl

        try:
            descriptor = os.open(self.folder / ".lock", os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW | os.O_NONBLOCK, 0o600)
        except OSError as exc:
            # ELOOP: a symlink put there, which tokend never follows in its state folder.
            why = "it is a symlink" if exc.errno == errno.ELOOP else exc.strerror
            raise ConfigError(f"state: cannot use {self.folder / '.lock'} as the state folder's lock ({why}); "
                              "remove it: tokend creates it") from None
        try:
            fcntl.flock(descriptor, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(descriptor)
            raise ConfigError(f"state: another tokend uses the state folder {self.folder}; give each daemon a "
                              "folder of its own (or share tokens through [fleet])") from None
        self._lock_descriptor = descriptor

    def close(self) -> None:
        if self._lock_descriptor is not None:
            os.close(self._lock_descriptor)  # and with it the lock
            self._lock_descriptor = None

    def follow(self, manager: Manager) -> None:
        """Write each new credential as the manager announces it, before any client can be served it (the
        announcement is made, synchronously, as the credential is swapped in)."""
        self._manager = manager
        manager.announcements.add_listener(self._on_login)

    # --- records -----------------------------------------------------------------------------------------

    def path(self, name: str) -> Path:
        return self.folder / f"{name}{_SUFFIX}"

    def restore(self, name: str, config: ProviderConfig) -> Credential | None:
        """The provider's stored credential, if there is one and it opens for these settings."""
        if not persisted(config):
            return None
        try:
            record = read_regular_file(self.path(name), follow=False).decode("ascii").strip()
        except FileNotFoundError:
            return None
        except OSError as exc:
            why = "is a symlink, which tokend never follows here" if exc.errno == errno.ELOOP else exc.strerror
            self._refuse(name, "unreadable", f"cannot be read ({why})")
            return None
        except NotAFile as exc:
            self._refuse(name, "unreadable", f"{exc}; it is ignored and a fresh login made")
            return None
        except UnicodeDecodeError:
            self._refuse(name, "unreadable", "cannot be read (not text)")
            return None
        try:
            credential = open_record(record, {self._key.id: self._key}, self._binding(name, config),
                                     _secrets(config), source="state")
        except RecordError as exc:
            self._refuse(name, record, f"does not open ({exc}); it is ignored and a fresh login made")
            return None
        self._refused.pop(name, None)
        return credential

    def write(self, name: str, config: ProviderConfig, credential: Credential) -> None:
        record = seal(credential, self._key, self._binding(name, config), _secrets(config))
        _replace(self.path(name), (record + "\n").encode("ascii"))

    def forget(self, name: str) -> None:
        with contextlib.suppress(FileNotFoundError):
            self.path(name).unlink()
            _sync_folder(self.folder)

    # --- the ledger of refresh tokens sent (tokend.logins.Ledger) ------------------------------------------

    def spent(self, name: str, token: str, generation: int | None) -> str | None:
        ledger = self._ledger(name)
        digest = self._digest(name, token)
        if digest in ledger.spent and digest not in ledger.kept:
            return f"it was sent before, as the ledger {self._ledger_path(name)} notes"
        if generation is None and ledger.foreign:
            return f"the ledger {self._ledger_path(name)} was written with another state key, so whether the " \
                   "configured one was sent cannot be known"
        if generation is not None and generation < ledger.generation:
            return f"its record is of generation {generation}, older than generation {ledger.generation}, " \
                   "already spent: an old record put back"
        return None

    def spend(self, name: str, token: str, generation: int | None) -> None:
        digest = self._digest(name, token)
        if digest not in self._ledger(name).kept:  # a token the server keeps is sent as often as need be
            self._note(name, f"s {'-' if generation is None else generation} {digest}")

    def keep(self, name: str, token: str) -> None:
        digest = self._digest(name, token)
        if digest not in self._ledger(name).kept:
            with contextlib.suppress(OSError):  # not noted: the token counts as spent, which is the safe side
                self._note(name, f"k - {digest}")

    def forget_holder(self, name: str, configured: bool) -> bool:
        if configured:
            return False  # the config holds it: nothing to remove, it would be sent again after a restart
        try:
            self.forget(name)
        except OSError as exc:
            log.warning("state provider=%s: cannot remove %s (%s)", name, self.path(name), exc.strerror)
            return False
        log.warning("state provider=%s: the ledger %s cannot be written; the record is removed so that no restart "
                    "can send its refresh token again", name, self._ledger_path(name))
        return True

    def highest(self, name: str) -> int:
        return self._ledger(name).generation

    def _ledger_path(self, name: str) -> Path:
        return self.folder / f"{name}{_LEDGER}"

    def _digest(self, name: str, token: str) -> str:
        return hmac.new(self._ledger_key, f"{name}\0{token}".encode(), hashlib.sha256).hexdigest()[:32]

    def _ledger(self, name: str) -> _Ledger:
        ledger = self._ledgers.get(name)
        if ledger is None:
            ledger = self._ledgers[name] = _Ledger(self._key.id)
            with contextlib.suppress(FileNotFoundError):
                for line in self._ledger_path(name).read_text(encoding="ascii", errors="replace").splitlines():
                    ledger.take(line.strip())
        return ledger

    def _note(self, name: str, line: str) -> None:
        """Append `line` to the provider's ledger, on disk (fsync) before this returns; OSError if it cannot."""
        ledger = self._ledger(name)
        path = self._ledger_path(name)
        if len(ledger.lines) >= _LEDGER_LINES:
            self._compact(name, ledger)
        created = not path.exists()
        descriptor = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_APPEND | os.O_NOFOLLOW, 0o600)
        try:
            size = os.fstat(descriptor).st_size
            data = (("" if size else f"key {self._key.id}\n") + line + "\n").encode("ascii")
            try:
                if os.write(descriptor, data) != len(data):
                    raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
                os.fsync(descriptor)
            except OSError:
                with contextlib.suppress(OSError):
                    os.ftruncate(descriptor, size)  # no half line for the next one to run into
                raise
        finally:
            os.close(descriptor)
        if created:
            _sync_folder(self.folder)
        ledger.take(line)

    def _compact(self, name: str, ledger: _Ledger) -> None:
        configured = dict.fromkeys(line for line in ledger.lines[:-_LEDGER_KEEP] if line.split(" ")[1] == "-")
        kept = [*configured, *ledger.lines[-_LEDGER_KEEP:]]
        with contextlib.suppress(OSError):  # not rewritten: it grows a little more, which is no harm
            _replace(self._ledger_path(name), "".join(f"{line}\n" for line in [
                f"key {self._key.id}", *(["key foreign"] if ledger.foreign else []), f"g {ledger.generation}", *kept])
                     .encode("ascii"))
            ledger.lines = kept

    def _binding(self, name: str, config: ProviderConfig) -> str:
        return self._key.bind({"provider": name, "login": config.login_identity()})

    def _refuse(self, name: str, record: str, why: str) -> None:
        if self._refused.get(name) != record:
            log.warning("state provider=%s: the stored record %s %s", name, self.path(name), why)
        self._refused[name] = record

    def _on_login(self, event: LoginEvent) -> None:
        assert self._manager is not None
        try:
            config = self._manager.provider_config(event.name)
        except UnknownProvider:  # removed by a reload meanwhile: nothing to keep
            return
        if not persisted(config):
            return
        try:
            if event.outcome == "ok" and event.credential is not None:
                if _worth_keeping(config, event.credential):
                    self.write(event.name, config, event.credential)
            elif isinstance(event.error, SignInNeeded):
                self.forget(event.name)  # a refused refresh token, or a logout: nothing left worth keeping
        except OSError as exc:
            log.warning("state_write_failed provider=%s path=%s error=%s hint=%s", event.name, self.path(event.name),
                        exc.strerror, "the credential is served but will not survive a restart")


def _worth_keeping(config: ProviderConfig, credential: Credential) -> bool:
    """A credential that expires, and is not itself a secret of the config (Flotiq's key is its token): a
    key that never expires costs no login to serve again, and a secret is never written down."""
    return credential.expires_at is not None and credential.token not in _secrets(config).values()


def _secrets(config: ProviderConfig) -> dict[str, str]:
    return {where: secret.get() for where, secret in config.secrets().items()}


def _replace(path: Path, data: bytes) -> None:
    """Write `path` whole or not at all: a crash at any point leaves the old content or the new."""
    temporary = path.with_name(f".{path.name}.{secrets.token_hex(4)}.tmp")
    descriptor = os.open(temporary, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, 0o600)
    try:
        with os.fdopen(descriptor, "wb") as file:
            file.write(data)
            file.flush()
            os.fsync(file.fileno())
        os.replace(temporary, path)
    except BaseException:
        with contextlib.suppress(OSError):
            temporary.unlink()
        raise
    _sync_folder(path.parent)


def _sync_folder(folder: Path) -> None:
    # The rename is durable only once the folder's own entry list is on disk.
    descriptor = os.open(folder, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(descriptor)
    finally:
        os.close(descriptor)
