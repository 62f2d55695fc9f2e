"""Value objects handed to callers: entries, statistics, progress events and verification problems."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

from repocache.counters import Counter

__all__ = ["Entry", "MaintenanceReport", "Problem", "Progress", "Stats"]


@dataclass(frozen=True)
class Entry:
    """A repository held in the cache.

    Attributes:
        url: the normalized URL (never with credentials).
        key: the repository's directory name under ``<root>/repos``.
        path: the bare mirror's directory.
        size_bytes: allocated bytes of the mirror, measured after the last clone, fetch or restore.
        last_used: epoch seconds of the last checkout, worktree or ensure.
        last_fetched: epoch seconds when the mirror last matched upstream (clone or successful fetch), or None.
        pinned: True when a never-evict pin matches the URL.
        in_cold_store: True when the cold store holds an artifact of this repository.
    """

    url: str
    key: str
    path: Path
    size_bytes: int
    last_used: float
    last_fetched: float | None
    pinned: bool
    in_cold_store: bool


@dataclass(frozen=True)
class Stats:
    """Counters shared by every process using the cache root, and the current budget.

    Attributes:
        hits, misses, clones, fetches, restores, evictions, fetch_errors, clone_errors, restore_errors, auth_errors:
            the root's counters, one field per
            :class:`~repocache.counters.Counter` (each described there). Each call that is handed a repository
            counts once, as a hit or a miss; a call that fails (clone error, budget, lock timeout, fetch error
            with ``on_fetch_error="raise"``) counts as neither.
        bytes_used: allocated bytes of all mirrors on disk.
        bytes_limit: ``max_bytes``, or None when there is no limit.
        entries: number of repositories on disk.
    """

    hits: int
    misses: int
    clones: int
    fetches: int
    restores: int
    evictions: int
    fetch_errors: int
    clone_errors: int
    restore_errors: int
    auth_errors: int
    bytes_used: int
    bytes_limit: int | None
    entries: int

    @classmethod
    def of(cls, counters: Mapping[str, int], *, bytes_used: int, bytes_limit: int | None, entries: int) -> Stats:
        """The stats of a root whose index holds ``counters`` (a counter never counted is 0)."""
        counted = {counter.value: counters.get(counter.value, 0) for counter in Counter}
        return cls(**counted, bytes_used=bytes_used, bytes_limit=bytes_limit, entries=entries)


@dataclass(frozen=True)
class Progress:
    """One throttled progress report of a clone, fetch or restore.

    Attributes:
        url: the normalized URL.
        operation: ``"clone"``, ``"fetch"`` or ``"restore"``.
        phase: what git reports it is doing, e.g. ``"receiving"``, ``"resolving"``, ``"counting"``, ``"done"``.
        objects: objects processed so far in this phase.
        total_objects: objects expected in this phase (0 when unknown).
        bytes: bytes received so far (0 when unknown).
    """

    url: str
    operation: str
    phase: str
    objects: int
    total_objects: int
    bytes: int


@dataclass(frozen=True)
class Problem:
    """A disagreement between the index and the disk found by :meth:`RepoCache.verify`.

    Attributes:
        kind: ``"missing"`` (indexed, not on disk), ``"orphan"`` (on disk, not indexed), ``"invalid"`` (on disk
            but not a usable mirror), ``"size"`` (recorded size is wrong), ``"leftover"`` (staging or trash debris),
            ``"index"`` (the index file was damaged and rebuilt from the disk; ``path`` is where the damaged file
            was kept; ``verify(repair=True)`` acknowledges it).
        key: the repository key or leftover name.
        path: the path concerned.
        detail: a sentence describing the problem.
        repaired: True when ``verify(repair=True)`` fixed it.
    """

    kind: str
    key: str
    path: Path
    detail: str
    repaired: bool = False


@dataclass(frozen=True)
class MaintenanceReport:
    """What :meth:`RepoCache.maintain` (or automatic maintenance) did to one mirror.

    Attributes:
        url: the normalized URL.
        key: the mirror's directory name in the cache.
        tasks: what ran, in order: ``"sweep"`` (debris of killed git processes removed), ``"repack"``
            (geometric: small packs and loose objects rolled up), ``"pack-refs"``, ``"commit-graph"``,
            ``"prune"`` (full repack dropping unreachable objects older than the grace period).
        skipped: why some or all of the work was not done (the mirror was busy or gone), else None.
        packs_before: pack files before.
        packs_after: pack files after.
        loose_objects_before: loose objects before (exact count).
        loose_objects_after: loose objects after.
        loose_refs_before: loose refs before.
        loose_refs_after: loose refs after.
        size_before: allocated bytes of the mirror before (as the index had it).
        size_after: allocated bytes after, now recorded in the index (the budget sees it).
        seconds: wall time of the whole maintenance.
        peak_rss_bytes: the largest peak resident memory of the git processes it ran.
    """

    url: str
    key: str
    tasks: tuple[str, ...]
    skipped: str | None
    packs_before: int
    packs_after: int
    loose_objects_before: int
    loose_objects_after: int
    loose_refs_before: int
    loose_refs_after: int
    size_before: int
    size_after: int
    seconds: float
    peak_rss_bytes: int
