"""The objects handed to callers inside ``with cache.checkout(url)`` and ``with cache.worktree(url)`` blocks."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from repocache import gitops

__all__ = ["Checkout", "Worktree"]


class Checkout:
    """A shared hold on a cached bare mirror, valid inside its ``with`` block.

    While the block runs, no process evicts the mirror; fetches by other callers may move its refs.

    Attributes:
        path: the bare mirror (every ref, as ``git clone --mirror``).
        url: the normalized URL (no credentials).
        key: the mirror's directory name in the cache.
        source: ``"hit"`` (was on disk), ``"clone"`` (cloned by this call) or ``"restore"`` (from cold storage).
        fetched: True if this call contacted upstream (a clone, or a fetch on a hit).
        stale: True if the fetch failed and the cached copy is being served.
        filter: the mirror's partial-clone filter (``"blob:none"``, ``"tree:0"``), or None for a full mirror (a
            full mirror may serve a request for a partial one: it holds more). Reading what a partial mirror left
            out with pygit2 directly raises ``KeyError`` or ``pygit2.GitError``; :meth:`read_object` raises
            :class:`~repocache.errors.MissingObjectError` instead, and ``cache.fetch_missing`` fetches it.
    """

    def __init__(
        self,
        *,
        path: Path,
        url: str,
        key: str,
        source: str,
        fetched: bool,
        stale: bool,
        filter: str | None = None,
    ) -> None:
        self.path = path
        self.filter = filter
        self.url = url
        self.key = key
        self.source = source
        self.fetched = fetched
        self.stale = stale
        self._repo: Any = None

    @property
    def repo(self) -> Any:
        """A ``pygit2.Repository`` opened on :attr:`path` on first use and freed when the block exits."""
        if self._repo is None:
            self._repo = gitops.open_repository(self.path)
        return self._repo

    def read_object(self, oid: Any) -> Any:
        """The ``pygit2.Object`` with the id ``oid`` (hex text or ``pygit2.Oid``), read from the mirror.

        Raises:
            MissingObjectError: the mirror does not hold it (a partial mirror's filter left it out, and it was not
                fetched since); it names the URL, the object and the filter.
            ValueError: ``oid`` is not an object id.
        """
        return gitops.read_object(self.repo, oid, self.url, self.filter)

    def _close(self) -> None:
        repo, self._repo = self._repo, None
        if repo is not None:
            repo.free()

    def __repr__(self) -> str:
        return (
            f"Checkout(url={self.url!r}, path={str(self.path)!r}, source={self.source!r}, "
            f"fetched={self.fetched}, stale={self.stale}, filter={self.filter!r})"
        )


class Worktree:
    """A temporary working tree checked out from a cached mirror, removed when its ``with`` block exits.

    Attributes:
        path: the working tree's directory.
        commit: the hex id of the checked-out commit.
        ref: the ref or commit the caller asked for.
        url: the normalized URL.
        key: the key of the mirror it borrows from (a partial mirror's differs from the full one's).
    """

    def __init__(self, *, path: Path, commit: str, ref: str, url: str, key: str = "") -> None:
        self.key = key
        self.path = path
        self.commit = commit
        self.ref = ref
        self.url = url

    def __repr__(self) -> str:
        return f"Worktree(url={self.url!r}, ref={self.ref!r}, commit={self.commit!r}, path={str(self.path)!r})"
