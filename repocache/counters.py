"""The root's counters: one list, from which the index's rows, :class:`~repocache.models.Stats`, the metrics and
the CLI's ``stats`` take their names and their descriptions."""

from __future__ import annotations

from enum import Enum

__all__ = ["Counter"]


class Counter(str, Enum):
    """A counter kept in the index (shared by every process using the root) and shown by ``RepoCache.stats()``.

    Each member's :attr:`description` is the sentence the docs, the metrics' help and the CLI show.
    """

    HITS = "hits", "Checkouts (and ensures) served from disk, including those that waited for another worker's clone."
    MISSES = "misses", "Checkouts (and ensures) that cloned or restored the repository."
    CLONES = "clones", "Successful clones from upstream."
    FETCHES = "fetches", "Fetches that contacted upstream successfully."
    RESTORES = "restores", "Repositories restored from the cold store."
    EVICTIONS = "evictions", "Repositories removed from disk."
    FETCH_ERRORS = "fetch_errors", "Fetches that failed (stale copies served or errors raised)."
    CLONE_ERRORS = "clone_errors", "Clones that failed (nothing was kept)."
    RESTORE_ERRORS = "restore_errors", "Restores from the cold store that failed (the repository was cloned instead)."
    AUTH_ERRORS = "auth_errors", "Clones and fetches refused by upstream for their credentials (never retried)."

    description: str

    def __new__(cls, value: str, description: str) -> Counter:
        member = str.__new__(cls, value)
        member._value_ = value
        member.description = description
        return member

    def __str__(self) -> str:
        return str(self.value)

    def __format__(self, spec: str) -> str:
        return format(str(self.value), spec)
