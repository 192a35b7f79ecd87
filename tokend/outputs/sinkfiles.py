"""A sink's files, opened so that whoever can write their folder cannot point tokend somewhere else.

tokend may run as root while a sink's folder belongs to the program that reads it. That program could
replace the sink file (or its folder) with a symbolic link to /etc/shadow, hard-link a root-owned file in
its place, or put a FIFO there; it could write another process's id (tokend's own, or init's) into the
pid file a change is signalled to. So: the folder is opened once, without following a link, and every
name is looked up relative to it; a file is opened without following a link and, once open, must be a
regular file with one link, owned by tokend's user or the sink's owner, before a byte is written; every
write is checked whole and synced, file and folder. Anything else is refused with an OSError whose
`strerror` says why (shown in /status), and the file already there is left as it was.
"""

from __future__ import annotations

import contextlib
import errno
import os
import secrets
import signal
import stat
from collections.abc import Iterator
from pathlib import Path

__all__ = ["remove_sink_file", "send_signal", "write_sink_file"]

_NO_FOLLOW = os.O_NOFOLLOW | os.O_CLOEXEC
# O_NONBLOCK: opening a FIFO for writing would otherwise wait for a reader forever; a regular file ignores it.
_OPEN_EXISTING = os.O_WRONLY | os.O_CREAT | os.O_NONBLOCK | _NO_FOLLOW
_OPEN_TEMPORARY = os.O_WRONLY | os.O_CREAT | os.O_EXCL | _NO_FOLLOW


def write_sink_file(path: Path, content: bytes, *, mode: int, uid: int, gid: int, atomic: bool) -> None:
    """Put `content` in `path`: atomically (a new file beside it, renamed over), or in place (the inode
    stays, for a single-file bind mount). `uid`/`gid` -1 leave the owner as tokend's."""
    with _folder(path) as folder:
        if atomic:
            _replace(folder, path.name, content, mode, uid, gid)
        else:
            _overwrite(folder, path.name, content, mode, uid, gid)
        os.fsync(folder)  # the new entry (or the new size) survives a crash


def remove_sink_file(path: Path) -> None:
    """Remove `path` if it is there, from its folder as opened without following a link."""
    with _folder(path) as folder, contextlib.suppress(FileNotFoundError):
        os.unlink(path.name, dir_fd=folder)


def send_signal(pid_file: Path, number: int) -> None:
    """Send signal `number` to the process in `pid_file`, once it is shown to be safe to signal.

    The file must be a regular file with one link that only its owner may write, and it must not name
    tokend itself. A file of root's or tokend's own user may name any process (they could signal it
    anyway, and start-stop-daemon writes the pid of a process that then drops to its own user); a file of
    any other user only a process of that user: whoever can write a pid file may not aim tokend's signal
    at a process they could not signal themselves.
    """
    pid, file_owner = _pid_in(pid_file)
    if pid == os.getpid():
        raise _refused("the pid file names tokend itself")
    # A process descriptor first, the owner check after: the process checked is then the one signalled,
    # even if its id is reused in between.
    process = os.pidfd_open(pid) if hasattr(os, "pidfd_open") else None
    try:
        try:
            owner = os.stat(f"/proc/{pid}").st_uid
        except FileNotFoundError:
            raise OSError(errno.ESRCH, f"the pid file names process {pid}, which is not running") from None
        if file_owner not in (0, os.geteuid()) and owner != file_owner:
            raise _refused(f"the pid file names process {pid}, which does not run as the file's owner "
                           f"(uid {file_owner})")
        if process is None:
            os.kill(pid, number)
        else:
            signal.pidfd_send_signal(process, number)
    finally:
        if process is not None:
            os.close(process)


def _pid_in(pid_file: Path) -> tuple[int, int]:
    """The process id `pid_file` holds, and the file's owner."""
    descriptor = _open(pid_file, os.O_RDONLY | os.O_NONBLOCK | _NO_FOLLOW)
    try:
        info = os.fstat(descriptor)
        if not stat.S_ISREG(info.st_mode):
            raise _refused("the pid file is not a regular file")
        if info.st_nlink != 1:
            raise _refused(f"the pid file has {info.st_nlink} links (a hard link to another file?)")
        if info.st_mode & (stat.S_IWGRP | stat.S_IWOTH):
            raise _refused("the pid file may be written by others than its owner")
        words = os.read(descriptor, 64).split()
    finally:
        os.close(descriptor)
    if not words or not words[0].isdigit() or int(words[0]) <= 1:
        raise OSError(errno.EINVAL, "the pid file holds no process id")
    return int(words[0]), info.st_uid


@contextlib.contextmanager
def _folder(path: Path) -> Iterator[int]:
    descriptor = _open(path.parent, os.O_RDONLY | os.O_DIRECTORY | _NO_FOLLOW, what="its folder")
    try:
        yield descriptor
    finally:
        os.close(descriptor)


def _replace(folder: int, name: str, content: bytes, mode: int, uid: int, gid: int) -> None:
    temporary = f".{name}.{secrets.token_hex(6)}.tmp"
    descriptor = _open(Path(temporary), _OPEN_TEMPORARY, 0o600, dir_fd=folder, what="the temporary file")
    try:
        try:
            _fill(descriptor, content, mode, uid, gid)
        finally:
            os.close(descriptor)
        # rename() replaces whatever is at `name`, a link included, and never follows it: a reader sees
        # the old file or the new one, never a part.
        os.rename(temporary, name, src_dir_fd=folder, dst_dir_fd=folder)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(temporary, dir_fd=folder)
        raise


def _overwrite(folder: int, name: str, content: bytes, mode: int, uid: int, gid: int) -> None:
    descriptor = _open(Path(name), _OPEN_EXISTING, mode, dir_fd=folder, what="the file")
    try:
        _fill(descriptor, content, mode, uid, gid, truncate=True)
    finally:
        os.close(descriptor)


def _fill(descriptor: int, content: bytes, mode: int, uid: int, gid: int, *, truncate: bool = False) -> None:
    """Check what `descriptor` is, then make it hold `content` alone, with its mode and owner."""
    info = os.fstat(descriptor)
    if not stat.S_ISREG(info.st_mode):
        raise _refused("the file is not a regular file")
    if info.st_nlink != 1:
        raise _refused(f"the file has {info.st_nlink} links (a hard link to another file?)")
    if info.st_uid not in (os.geteuid(), uid):
        raise _refused(f"the file belongs to uid {info.st_uid}, neither tokend's user nor the sink's owner")
    os.fchmod(descriptor, mode)  # before the content is in it: never readable by others
    if uid != -1 or gid != -1:
        os.fchown(descriptor, uid, gid)
    if truncate:
        os.ftruncate(descriptor, 0)
    _write_all(descriptor, content)
    os.fsync(descriptor)


def _write_all(descriptor: int, content: bytes) -> None:
    # os.write() may write less than asked (a full disk, a file size limit): what is left is written
    # again, and a write that makes no progress is the disk being full.
    view = memoryview(content)
    while view:
        written = os.write(descriptor, view)
        if written <= 0:
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        view = view[written:]


def _open(path: Path, flags: int, mode: int = 0o600, *, dir_fd: int | None = None, what: str = "the pid file") -> int:
    try:
        return os.open(path, flags, mode, dir_fd=dir_fd)
    except OSError as exc:
        # O_NOFOLLOW makes a link at the last step ELOOP (ENOTDIR with O_DIRECTORY, for some systems).
        if exc.errno in (errno.ELOOP, errno.ENOTDIR) and _is_link(path, dir_fd):
            raise _refused(f"{what} is a symbolic link") from None
        raise


def _is_link(path: Path, dir_fd: int | None) -> bool:
    try:
        return stat.S_ISLNK(os.lstat(path, dir_fd=dir_fd).st_mode)
    except OSError:
        return False


def _refused(why: str) -> OSError:
    return OSError(errno.EPERM, f"{why}: refusing to use it")
