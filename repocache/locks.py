"""Per-repository locks shared by threads and processes.

Each repository has a lock file in ``<root>/locks/``. Readers (``checkout``, ``worktree``) hold it shared; clone
and eviction take it exclusive; a second file serializes fetches, so readers are never blocked by a fetch.

These are whole-file ``flock(2)`` locks on a descriptor opened per acquisition. That gives what the cache needs:
shared and exclusive modes, contention between threads of one process (each acquisition is its own open file
description), and release by the kernel when the holder dies, even by SIGKILL. filelock's ``FileLock`` is
exclusive only and its ``ReadWriteLock`` is SQLite-based and refuses to make two threads of one instance wait for
each other, so the primitive is used directly.

Lock files can be deleted, under one rule. Unlinking a lock file while another process has it open (waiting on
it, or about to lock it) would let two holders in: that one on the old file, a newcomer on a new file at the same
path. So a lock file is only ever unlinked by a holder of its exclusive lock, as the last thing it does before
releasing (:func:`discard`), and every locker checks, once its ``flock`` succeeded, that the path still names the
file it locked; if not, it drops that lock and starts again on the path's current file (:func:`acquire`). A holder
therefore always holds the lock of the file the path names, and nobody can lock that file while it is unlinked.

The lock order, for every process (the one place it is stated; :mod:`repocache.layout` names the files):

1. a repository's main lock (``<key>.lock``), shared or exclusive, waited for;
2. then its fetch lock (``<key>.fetch``), waited for, only while holding 1 shared;
3. then the root's budget lock (``budget.lock``), waited for, while holding at most 1 of the repository being
   cloned; from under the budget lock other repositories' main locks are only *tried* (timeout 0), never waited
   for, so a budget decision can never wait on a reader and no cycle can form;
4. last, the root's index lock (``index.lock``), waited for by a process that found the index damaged and
   rebuilds it, under any of 1-3: its holder takes no other lock and runs only SQLite and file operations, so it
   cannot close a cycle. (SQLite's own locks inside the index are held for one statement or one transaction and
   are never held while a lock above is waited for.)

A miss short of room held by other workers waits for a held repository's main lock only while holding no lock at
all (:class:`repocache.budget.RoomWait`), and a caller holding a checkout never waits for held room, so that wait
cannot close a cycle either.

Worktree lock files (``worktrees/<key>.<id>.lock``) are taken only by their creator (already locked, see
:func:`create_locked`) and tried without waiting by ``verify``.

A lock file must be a regular file, opened without following a symbolic link (:mod:`repocache.safe_read`): a
FIFO, a device, a directory or a link planted at a lock path is refused at once with
:class:`~repocache.errors.UnsafeFileError` naming it, never waited on, locked or followed (a dangling link would
otherwise make the locker create a file wherever it points).
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import os
import secrets
import time
from collections.abc import Callable
from pathlib import Path
from types import TracebackType

from repocache import cancel
from repocache.errors import UnsafeFileError
from repocache.safe_read import open_regular_fd

__all__ = ["FileLockHandle", "acquire", "create_locked", "discard", "sweep"]

# A contended lock is polled (flock has no timeout). The pause grows with the time already waited, so a waiter
# notices the release within about 2% of its wait (plus 1 ms) while a long wait costs a few wake-ups a second.
_POLL_START = 0.001
_POLL_FRACTION = 0.02
_POLL_MAX = 0.05


class FileLockHandle:
    """A held lock; release it with :meth:`release` or by leaving its ``with`` block. Releasing twice is a no-op."""

    __slots__ = ("_fd", "path", "shared")

    def __init__(self, fd: int, path: Path, shared: bool) -> None:
        self._fd: int | None = fd
        self.path = path
        self.shared = shared

    def is_current(self) -> bool:
        """True while ``path`` still names the locked file (False once a holder unlinked or replaced it)."""
        if self._fd is None:
            return False
        try:
            here, there = os.fstat(self._fd), os.stat(self.path)
        except FileNotFoundError:
            return False
        return (here.st_dev, here.st_ino) == (there.st_dev, there.st_ino)

    def release(self) -> None:
        """Release the lock (closing the descriptor releases the flock)."""
        fd, self._fd = self._fd, None
        if fd is not None:
            os.close(fd)

    def __enter__(self) -> FileLockHandle:
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.release()

    def __del__(self) -> None:
        self.release()


def acquire(
    path: Path, *, shared: bool, timeout: float, create: bool = True, unless: Callable[[], bool] | None = None
) -> FileLockHandle | None:
    """Take the lock at ``path``.

    Once locked, the file is checked to be the one ``path`` still names: a file unlinked meanwhile by
    :func:`discard` is let go and the path's current file locked instead (see the module docstring).

    Args:
        path: the lock file; created if missing (its directory must exist).
        shared: shared (reader) mode when True, exclusive otherwise.
        timeout: seconds to wait; 0 makes one attempt; a negative value waits forever.
        create: create the lock file if it is missing; with False a missing file raises FileNotFoundError.
        unless: asked between attempts while the lock is contended; when it answers True the wait is given up
            (None is returned), e.g. because what the lock was wanted for has been done by its holder.

    Returns:
        The held lock, or None if it could not be taken within ``timeout`` (or ``unless`` answered True).

    Raises:
        repocache.cancel.Cancelled: the calling thread's cancel token was cancelled while waiting.
        repocache.errors.UnsafeFileError: ``path`` is not a regular file (a FIFO, a device, a directory, or a
            symbolic link, which is never followed).
    """
    flags = os.O_RDWR | os.O_CLOEXEC | (os.O_CREAT if create else 0)
    operation = (fcntl.LOCK_SH if shared else fcntl.LOCK_EX) | fcntl.LOCK_NB
    started = time.monotonic()
    deadline = None if timeout < 0 else started + timeout
    try:
        fd = open_regular_fd(path, flags, 0o644)
    except OSError as exc:
        # A read-only root (mount or permissions): flock needs no write access, it works on a descriptor opened
        # for reading (what the lock guards cannot be changed there anyway; the cache refuses writes earlier).
        if exc.errno not in (errno.EROFS, errno.EACCES, errno.EPERM) or not path.exists():
            raise
        flags = os.O_RDONLY | os.O_CLOEXEC
        fd = open_regular_fd(path, flags)
    try:
        while True:
            try:
                fcntl.flock(fd, operation)
            except BlockingIOError:
                pass
            else:
                if _names(path, fd):
                    return FileLockHandle(fd, path, shared)
                # Unlinked by a holder before we locked it: not contention, so try the new file at once.
                os.close(fd)
                fd = -1
                fd = open_regular_fd(path, flags, 0o644)
                continue
            if unless is not None and unless():
                os.close(fd)
                return None
            now = time.monotonic()
            delay = min(max(_POLL_START, (now - started) * _POLL_FRACTION), _POLL_MAX)
            if deadline is not None:
                remaining = deadline - now
                if remaining <= 0:
                    os.close(fd)
                    return None
                delay = min(delay, remaining)
            cancel.check()  # an async caller that gave up stops waiting (the descriptor is closed below)
            time.sleep(delay)
    except BaseException:
        if fd >= 0:
            os.close(fd)
        raise


def _names(path: Path, fd: int) -> bool:
    """True when ``path`` names the file open as ``fd``."""
    try:
        here, there = os.fstat(fd), os.stat(path)
    except FileNotFoundError:
        return False
    return (here.st_dev, here.st_ino) == (there.st_dev, there.st_ino)


def discard(handle: FileLockHandle) -> bool:
    """Unlink the file of ``handle`` (held exclusively), then release it.

    Safe against every other user of the path, because they lock through :func:`acquire`: anyone who opened the
    file before it was unlinked finds, once it gets the lock, that the path no longer names it and starts over.
    Nothing may be done under the lock after this: a newcomer may hold the path's new file at once.

    Returns:
        True if the file was unlinked (False if it was not the path's file any more, or the handle was released).
    """
    if handle.shared:
        raise ValueError(f"discard needs an exclusive lock; {handle.path} is held shared")
    try:
        if not handle.is_current():
            return False
        with contextlib.suppress(FileNotFoundError):
            os.unlink(handle.path)
        return True
    finally:
        handle.release()


def sweep(directory: Path, unused: Callable[[str], bool], *, suffixes: tuple[str, ...]) -> list[Path]:
    """Delete the lock files in ``directory`` whose lock is free and whose owner says they are unused.

    For each file ``<name><suffix>`` that ``unused(name)`` says is unused, the lock is taken exclusively without
    waiting (a held one is skipped), ``unused(name)`` is asked again while it is held, and the file is unlinked by
    :func:`discard` if it still answers True.

    Returns:
        The paths deleted.
    """
    removed: list[Path] = []
    try:
        names = sorted(os.listdir(directory))
    except FileNotFoundError:
        return removed
    for name in names:
        suffix = next((s for s in suffixes if name.endswith(s) and len(name) > len(s)), None)
        if suffix is None or name.startswith(".") or not unused(name[: -len(suffix)]):
            continue
        path = directory / name
        try:
            handle = acquire(path, shared=False, timeout=0, create=False)
        except FileNotFoundError:
            continue
        except UnsafeFileError:
            continue  # not a lock file this module made: left for a person to look at, never unlinked blindly
        if handle is None:
            continue
        if unused(name[: -len(suffix)]) and discard(handle):
            removed.append(path)
        handle.release()
    return removed


def create_locked(path: Path) -> FileLockHandle:
    """Create the lock file ``path`` already locked exclusively: no one can ever see it there unlocked.

    On Linux the file is made with ``O_TMPFILE`` (no name), locked, then linked into place. Elsewhere, or on a
    filesystem without ``O_TMPFILE``, it is made under a hidden temporary name (``.<name>.<random>.tmp``), locked,
    hard-linked into place and the temporary name removed.

    Raises:
        FileExistsError: ``path`` exists already.
    """
    tmpfile = getattr(os, "O_TMPFILE", 0)
    if tmpfile and os.path.isdir("/proc/self/fd"):
        try:
            fd = os.open(path.parent, os.O_RDWR | os.O_CLOEXEC | tmpfile, 0o644)
        except OSError as exc:
            if exc.errno not in (errno.EOPNOTSUPP, errno.EISDIR, errno.EINVAL):
                raise
        else:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                # linkat(AT_SYMLINK_FOLLOW) of /proc/self/fd/N names the unnamed file; os.link only passes that
                # flag when a dir_fd is given (without one it calls link(), which fails with EXDEV).
                proc = os.open("/proc/self/fd", os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
                try:
                    os.link(str(fd), path, src_dir_fd=proc, follow_symlinks=True)
                finally:
                    os.close(proc)
            except BaseException:
                os.close(fd)
                raise
            return FileLockHandle(fd, path, shared=False)
    temporary = path.with_name(f".{path.name}.{secrets.token_hex(6)}.tmp")
    fd = os.open(temporary, os.O_RDWR | os.O_CLOEXEC | os.O_CREAT | os.O_EXCL, 0o644)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        os.link(temporary, path)
    except BaseException:
        os.close(fd)
        raise
    finally:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(temporary)
    return FileLockHandle(fd, path, shared=False)
