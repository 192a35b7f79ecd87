"""Secret files: read without ever blocking or without bound, and written so that no reader ever sees half a
secret, and no one else can read it."""

from __future__ import annotations

import contextlib
import os
import stat
import tempfile
from pathlib import Path

SECRET_FILE_MODE = 0o600
KEY_FILE_LIMIT = 1024 * 1024  # bytes: a key, a key file, a state record is a few kilobytes at most

_NOT_REGULAR = {stat.S_IFIFO: "a FIFO", stat.S_IFCHR: "a character device", stat.S_IFBLK: "a block device",
                stat.S_IFSOCK: "a socket", stat.S_IFDIR: "a folder"}


class NotAFile(ValueError):
    """What was opened is not a regular file of at most the bound: a sentence, never the content."""


def read_regular_file(path: Path, limit: int = KEY_FILE_LIMIT, *, follow: bool = True) -> bytes:
    """The bytes of `path`, which must be a regular file of at most `limit` bytes; NotAFile otherwise, OSError
    when it cannot be opened. Opened without blocking (a FIFO with no writer would wait for ever) and read
    up to the bound (a symlink to /dev/zero never ends); `follow = False` refuses a symlink (ELOOP)."""
    flags = os.O_RDONLY | os.O_NONBLOCK | os.O_NOCTTY | os.O_CLOEXEC | (0 if follow else os.O_NOFOLLOW)
    descriptor = os.open(path, flags)
    try:
        kind = stat.S_IFMT(os.fstat(descriptor).st_mode)
        if kind != stat.S_IFREG:
            raise NotAFile(f"is not a regular file (it is {_NOT_REGULAR.get(kind, 'something else')})")
        os.set_blocking(descriptor, True)
        chunks, size = [], 0
        while size <= limit and (chunk := os.read(descriptor, min(65536, limit + 1 - size))):
            chunks.append(chunk)
            size += len(chunk)
    finally:
        os.close(descriptor)
    if size > limit:
        raise NotAFile(f"is larger than {limit} bytes, more than any key")
    return b"".join(chunks)


def write_secret_file(path: Path, value: str) -> None:
    """Replace `path` with `value` (and a newline): a 0600 temporary file beside it, synced, renamed over."""
    descriptor, temporary = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        os.fchmod(descriptor, SECRET_FILE_MODE)
        with os.fdopen(descriptor, "w", encoding="utf-8") as file:
            file.write(value + "\n")
            file.flush()
            os.fsync(file.fileno())
        os.replace(temporary, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(temporary)
        raise
    _sync_directory(path.parent)


def write_new_secret_file(path: Path, value: str) -> None:
    """Create `path` holding `value`, mode 0600 from the start; FileExistsError rather than overwrite."""
    descriptor = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, SECRET_FILE_MODE)
    with os.fdopen(descriptor, "w", encoding="utf-8") as file:
        file.write(value + "\n")


def _sync_directory(directory: Path) -> None:
    # The rename is durable only once the directory entry is on disk too.
    descriptor = os.open(directory, os.O_RDONLY)
    try:
        os.fsync(descriptor)
    finally:
        os.close(descriptor)
