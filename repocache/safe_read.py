"""Reading files that others can write without blocking forever or reading forever.

Every file repocache reads from a place another user or host can write (cold store objects and leases, the root's
index and lock files, the pin file) goes through this module. A planted FIFO would block ``open`` or ``read``
forever whatever ``lock_timeout`` says; a symbolic link to ``/dev/zero`` would be read until memory runs out; a
symbolic link to a file elsewhere would make repocache read, lock or create a file outside the place it trusts.
So such a file is:

- opened with ``O_NONBLOCK`` (opening a FIFO returns at once instead of waiting for a writer), and with
  ``O_NOFOLLOW`` unless its reader accepts symbolic links (only the pin file, a path the user gave, does);
- checked with ``fstat`` on the open descriptor, so what is checked is what is read: anything but a regular file
  (a FIFO, a character or block device, a directory, a socket) is refused with
  :class:`~repocache.errors.UnsafeFileError` naming the path and what it is;
- read to a bound: a file larger than its reader's bound is refused naming its size and the bound, and at most
  bound + 1 bytes are ever read, even from a file that grows meanwhile.

``O_NONBLOCK`` changes nothing for a regular file (reads of regular files never block on it), so the descriptor
is used as it is.
"""

from __future__ import annotations

import contextlib
import errno
import os
import stat
from typing import BinaryIO

from repocache.errors import UnsafeFileError

__all__ = ["check_regular", "kind_of", "open_regular", "open_regular_fd", "read_regular"]

_READ_FLAGS = os.O_RDONLY | os.O_NONBLOCK | os.O_CLOEXEC
_NOFOLLOW = getattr(os, "O_NOFOLLOW", 0)


def kind_of(mode: int) -> str:
    """What a file of ``mode`` (``st_mode``) is, in words: "a regular file", "a FIFO", "a directory"..."""
    if stat.S_ISREG(mode):
        return "a regular file"
    if stat.S_ISDIR(mode):
        return "a directory"
    if stat.S_ISLNK(mode):
        return "a symbolic link"
    if stat.S_ISFIFO(mode):
        return "a FIFO"
    if stat.S_ISCHR(mode):
        return "a character device"
    if stat.S_ISBLK(mode):
        return "a block device"
    if stat.S_ISSOCK(mode):
        return "a socket"
    return "a special file"


def _refusal(path: str | os.PathLike[str], mode: int, follow_symlinks: bool) -> UnsafeFileError:
    what = kind_of(mode)
    if stat.S_ISLNK(mode):
        with contextlib.suppress(OSError):
            what += f" to {os.readlink(path)}"
    accepted = "a regular file" if follow_symlinks else "a regular file, not a symbolic link"
    return UnsafeFileError(os.fspath(path), f"it is {what}; expected {accepted}")


def open_regular_fd(
    path: str | os.PathLike[str], flags: int = _READ_FLAGS, mode: int = 0o644, *, follow_symlinks: bool = False
) -> int:
    """Open ``path`` without blocking and return its descriptor, only if it is a regular file.

    Args:
        path: the file.
        flags: ``os.open`` flags; ``O_NONBLOCK``, ``O_CLOEXEC`` and (unless ``follow_symlinks``) ``O_NOFOLLOW``
            are added.
        mode: the permissions of a file created by ``O_CREAT``.
        follow_symlinks: accept a symbolic link (to a regular file); by default a link is refused.

    Returns:
        The open descriptor (the caller closes it).

    Raises:
        FileNotFoundError: ``path`` does not exist (and ``O_CREAT`` was not given).
        UnsafeFileError: ``path`` is a FIFO, a device, a directory, a socket, or a symbolic link where none is
            accepted.
        OSError: it cannot be opened for another reason.
    """
    flags |= os.O_NONBLOCK | os.O_CLOEXEC | (0 if follow_symlinks else _NOFOLLOW)
    try:
        fd = os.open(path, flags, mode)
    except OSError as exc:
        # O_NOFOLLOW on a link fails with ELOOP; opening a directory for writing with EISDIR; a FIFO without a
        # reader, opened for writing only, with ENXIO. Say what the file is rather than quoting errno.
        if exc.errno in (errno.ELOOP, errno.EISDIR, errno.ENXIO, errno.EMLINK):
            try:
                found = os.lstat(path)
            except OSError:
                raise exc from None
            if not stat.S_ISREG(found.st_mode):
                raise _refusal(path, found.st_mode, follow_symlinks) from None
        raise
    try:
        found = os.fstat(fd)
        if not stat.S_ISREG(found.st_mode):
            raise _refusal(path, found.st_mode, follow_symlinks)
    except BaseException:
        os.close(fd)
        raise
    return fd


def read_regular(path: str | os.PathLike[str], *, limit: int, follow_symlinks: bool = False) -> bytes:
    """Return the bytes of the regular file ``path``, refusing anything else and anything over ``limit`` bytes.

    At most ``limit + 1`` bytes are read, so a file that grows while it is read is refused too, never read whole.

    Raises:
        FileNotFoundError: ``path`` does not exist.
        UnsafeFileError: ``path`` is not a regular file (see :func:`open_regular_fd`) or is larger than ``limit``
            bytes (the message says its size and the bound).
        OSError: it cannot be read.
    """
    fd = open_regular_fd(path, follow_symlinks=follow_symlinks)
    try:
        size = os.fstat(fd).st_size
        if size > limit:
            raise UnsafeFileError(os.fspath(path), f"it holds {size} bytes, more than the bound of {limit} bytes")
        chunks: list[bytes] = []
        count = 0
        while count <= limit:
            chunk = os.read(fd, limit + 1 - count)
            if not chunk:
                break
            chunks.append(chunk)
            count += len(chunk)
    finally:
        os.close(fd)
    if count > limit:
        raise UnsafeFileError(os.fspath(path), f"it grew past the bound of {limit} bytes while it was read")
    return b"".join(chunks)


def open_regular(path: str | os.PathLike[str], *, buffering: int = -1, follow_symlinks: bool = False) -> BinaryIO:
    """Open the regular file ``path`` for streaming binary reads; anything else is refused before any read.

    No size bound is applied: a streamed reader bounds what it reads itself (an artifact by its manifest).

    Raises:
        FileNotFoundError: ``path`` does not exist.
        UnsafeFileError: ``path`` is not a regular file (see :func:`open_regular_fd`).
        OSError: it cannot be opened.
    """
    fd = open_regular_fd(path, follow_symlinks=follow_symlinks)
    try:
        return os.fdopen(fd, "rb", buffering=buffering)
    except BaseException:
        os.close(fd)
        raise


def check_regular(path: str | os.PathLike[str], *, missing_ok: bool = True) -> None:
    """Refuse ``path`` unless it is a regular file itself (not a symbolic link), or missing when ``missing_ok``.

    For files opened by a library that cannot be handed a descriptor (SQLite opens the index by name): the check
    is made with ``lstat`` just before, which stops a FIFO, a device or a link planted in advance.

    Raises:
        FileNotFoundError: ``path`` does not exist and ``missing_ok`` is False.
        UnsafeFileError: it is anything but a regular file.
    """
    try:
        found = os.lstat(path)
    except FileNotFoundError:
        if missing_ok:
            return
        raise
    if not stat.S_ISREG(found.st_mode):
        raise _refusal(path, found.st_mode, False)
