"""Every path and name under a cache root, and the typed holds on a repository's locks.

Layout of a cache root::

    <root>/index.sqlite          the LRU index (WAL), shared by every process
    <root>/repos/<key>/          bare mirrors, each published by one atomic rename
    <root>/staging/<key>.<id>/   clones and restores in progress (swept under the repository's lock)
    <root>/staging/<key>.<id>.upload   a cold-store upload: a hard-linked snapshot being published, or a packed file
    <root>/trash/<key>.<id>/     evicted mirrors being deleted (renamed out first, so nobody sees half a repo)
    <root>/worktrees/<key>.<id>/ temporary working trees, each beside its lock file ``<key>.<id>.lock``
    <root>/locks/<key>.lock      shared by readers, exclusive for clone and eviction
    <root>/locks/<key>.fetch     one fetch at a time per repository
    <root>/locks/budget.lock     one budget decision (room-making or enforcement) at a time

Staging, trash and upload names are ``<key>.<id>``: :func:`key_of` reads the key back, so a sweep can take the
owner's lock before it deletes anything. The lock order is stated once, in :mod:`repocache.locks`; a function
that needs a lock held takes the hold (:class:`SharedHold`, :class:`ExclusiveHold`, :class:`FetchHold`,
:class:`BudgetHold`) as a parameter, so the rule is in its signature.
"""

from __future__ import annotations

import contextlib
import os
import re
import shutil
import uuid
from collections.abc import Callable
from pathlib import Path
from types import TracebackType
from typing import TypeVar

from repocache import locks
from repocache.keys import RepoURL

__all__ = [
    "BudgetHold",
    "ExclusiveHold",
    "FetchHold",
    "Hold",
    "Layout",
    "SharedHold",
    "key_of",
    "listing",
    "remove",
]

_PATHS_KEPT = 16384  # joined paths a layout remembers (four per repository at most)
_STAGED_KEY = re.compile(r"\.[0-9a-f]{12}(\.upload|\.lock)?$")  # <key>.<id>[.upload|.lock]


def key_of(name: str) -> str:
    """The repository key of a staging, trash, upload or worktree name (``<key>.<id>[.upload]``)."""
    return _STAGED_KEY.sub("", name)


def _unique(key: str) -> str:
    return f"{key}.{uuid.uuid4().hex[:12]}"


def listing(directory: Path) -> list[os.DirEntry[str]]:
    """The entries of ``directory`` sorted by name (empty when it does not exist)."""
    try:
        with os.scandir(directory) as entries:
            return sorted(entries, key=lambda e: e.name)
    except FileNotFoundError:
        return []


_H = TypeVar("_H", bound="Hold")


class Hold:
    """A held lock of one repository (or of the budget); release it with :meth:`release` or ``with``.

    A hold taken for a parsed URL carries it (:attr:`url`), so the key it guards has one source: code that has
    the hold never takes the repository's identity from a second argument.
    """

    __slots__ = ("_repo", "handle", "key")

    def __init__(self, key: str, handle: locks.FileLockHandle, repo: RepoURL | None = None) -> None:
        self.key = key
        self.handle = handle
        self._repo = repo

    @property
    def url(self) -> RepoURL:
        """The repository held, as its caller parsed it (with the caller's credentials, for transfers).

        Raises:
            TypeError: the hold was taken by key alone (an eviction or a sweep of an index row).
        """
        if self._repo is None:
            raise TypeError(f"the hold of {self.key} was taken by key alone and carries no URL")
        return self._repo

    def release(self) -> None:
        """Release the lock; releasing twice is a no-op."""
        self.handle.release()

    def __enter__(self: _H) -> _H:
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.release()


class SharedHold(Hold):
    """The repository's lock held shared: a reader; nobody evicts or replaces the mirror meanwhile."""

    __slots__ = ()


class ExclusiveHold(Hold):
    """The repository's lock held exclusively: no reader, so the mirror may be created, replaced or deleted."""

    __slots__ = ()


class FetchHold(Hold):
    """The repository's fetch lock: the one fetch in flight for it."""

    __slots__ = ()


class BudgetHold(Hold):
    """The root's budget lock: one room-making or enforcement decision at a time."""

    __slots__ = ()


class Layout:
    """The directories and file names of one cache root, and the locks on them."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self._paths: dict[tuple[str, str], Path] = {}  # (kind, key) -> path: a hit joins none
        self.index = root / "index.sqlite"
        self.repos = root / "repos"
        self.staging = root / "staging"
        self.trash = root / "trash"
        self.locks = root / "locks"
        self.worktrees = root / "worktrees"

    def create(self) -> None:
        """Create the directories (raises OSError when the root cannot be written)."""
        for directory in (self.repos, self.staging, self.trash, self.locks, self.worktrees):
            directory.mkdir(parents=True, exist_ok=True)

    # -- names -----------------------------------------------------------------------------------------------

    def mirror(self, key: str) -> Path:
        """Where the mirror of ``key`` is published."""
        return self._path("", key)

    def mirror_keys(self) -> set[str]:
        """The keys of every mirror directory on disk."""
        return {entry.name for entry in listing(self.repos) if entry.is_dir()}

    def new_staging(self, key: str) -> Path:
        """A fresh staging directory name for a clone or restore of ``key`` (not created)."""
        return self.staging / _unique(key)

    def new_upload(self, key: str) -> Path:
        """A fresh name for a cold-store upload of ``key``: a snapshot directory, or a file packed for a plain store."""
        return self.staging / (_unique(key) + ".upload")

    def new_trash(self, key: str) -> Path:
        """A fresh name to rename an evicted mirror of ``key`` to before it is deleted."""
        return self.trash / _unique(key)

    def new_worktree(self, key: str) -> Path:
        """A fresh default worktree directory for ``key`` (its lock file is :meth:`worktree_lock`)."""
        return self.worktrees / _unique(key)

    @staticmethod
    def worktree_lock(tree: Path) -> Path:
        """The lock file that a live worktree's owner holds."""
        return tree.with_name(tree.name + ".lock")

    def staged_of(self, key: str) -> list[Path]:
        """Staging entries (clones, restores, uploads) of ``key``."""
        prefix = key + "."
        return [Path(e.path) for e in listing(self.staging) if e.name.startswith(prefix) and key_of(e.name) == key]

    def _lock_file(self, key: str, kind: str) -> Path:
        return self._path(kind, key)

    def _path(self, kind: str, key: str) -> Path:
        """The mirror (``kind`` empty) or lock file (``kind`` its suffix) of ``key``, joined once per key."""
        path = self._paths.get((kind, key))
        if path is None:
            if len(self._paths) >= _PATHS_KEPT:
                self._paths.clear()
            path = self.repos / key if not kind else self.locks / f"{key}.{kind}"
            self._paths[(kind, key)] = path
        return path

    # -- holds -------------------------------------------------------------------------------------------------

    def hold_shared(self, repo: RepoURL | str, timeout: float) -> SharedHold | None:
        """Hold ``repo`` (a parsed URL, or a key) as a reader, waiting up to ``timeout`` seconds (None when it could
        not)."""
        key, parsed = _identify(repo)
        handle = locks.acquire(self._lock_file(key, "lock"), shared=True, timeout=timeout)
        return None if handle is None else SharedHold(key, handle, parsed)

    def hold_exclusive(
        self, repo: RepoURL | str, timeout: float, *, unless: Callable[[], bool] | None = None
    ) -> ExclusiveHold | None:
        """Hold ``repo`` exclusively, waiting up to ``timeout`` seconds; 0 tries once without waiting.

        ``unless`` is asked while the lock is contended: when it answers True the wait ends (None is returned).
        """
        key, parsed = _identify(repo)
        handle = locks.acquire(self._lock_file(key, "lock"), shared=False, timeout=timeout, unless=unless)
        return None if handle is None else ExclusiveHold(key, handle, parsed)

    def try_exclusive(self, repo: RepoURL | str) -> ExclusiveHold | None:
        """Hold ``repo`` exclusively if nobody holds it now; never waits (safe under the budget lock)."""
        return self.hold_exclusive(repo, 0)

    def hold_fetch(self, repo: RepoURL | str, timeout: float) -> FetchHold | None:
        """Become the one fetch in flight for ``repo``, waiting up to ``timeout`` seconds."""
        key, parsed = _identify(repo)
        handle = locks.acquire(self._lock_file(key, "fetch"), shared=False, timeout=timeout)
        return None if handle is None else FetchHold(key, handle, parsed)

    def hold_budget(self, timeout: float) -> BudgetHold | None:
        """Hold the root's budget lock, waiting up to ``timeout`` seconds."""
        handle = locks.acquire(self.locks / "budget.lock", shared=False, timeout=timeout)
        return None if handle is None else BudgetHold("", handle)


def _identify(repo: RepoURL | str) -> tuple[str, RepoURL | None]:
    return (repo, None) if isinstance(repo, str) else (repo.key, repo)


def remove(path: Path) -> None:
    """Delete a file or a directory tree, whichever ``path`` is; a missing path is fine."""
    if path.is_dir() and not path.is_symlink():
        shutil.rmtree(path, ignore_errors=True)
    else:
        with contextlib.suppress(FileNotFoundError):
            path.unlink()
