"""Outcomes of cache operations: their names, the counters they move, and the one place they are reported.

Every outcome (a hit, a miss, a clone, a restore, a fetch, a stale copy served, an eviction) is named here once.
The index moves a counter in the same transaction as the state it counts (a hit's recency, a clone's row), so the
counters shared by every process never disagree with the rows; :class:`Events` is where the outcome becomes a log
line, and is the seam for user hooks and metrics.
"""

from __future__ import annotations

import contextlib
import logging
import os
import sys
import warnings
from enum import Enum
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from repocache.models import MaintenanceReport

__all__ = ["Counter", "Events", "Source", "warn_caller"]

logger = logging.getLogger("repocache")


class _StrEnum(str, Enum):
    """A ``str`` enum whose members compare, format and serialize as their value (``Source.HIT == "hit"``)."""

    def __str__(self) -> str:
        return str(self.value)

    def __format__(self, spec: str) -> str:
        return format(str(self.value), spec)


class Counter(_StrEnum):
    """The counters kept in the index and shown by :meth:`RepoCache.stats`."""

    HITS = "hits"
    MISSES = "misses"
    CLONES = "clones"
    FETCHES = "fetches"
    RESTORES = "restores"
    EVICTIONS = "evictions"
    FETCH_ERRORS = "fetch_errors"


class Source(_StrEnum):
    """Where a checkout's mirror came from (:attr:`Checkout.source`)."""

    HIT = "hit"
    CLONE = "clone"
    RESTORE = "restore"

    @property
    def counter(self) -> Counter:
        """The counter that a checkout from this source moves."""
        return _SOURCE_COUNTERS[self]


_SOURCE_COUNTERS = {Source.HIT: Counter.HITS, Source.CLONE: Counter.CLONES, Source.RESTORE: Counter.RESTORES}


class Events:
    """Reports outcomes: today as log lines on the ``repocache`` logger."""

    def materialized(self, url: str, source: Source, size_bytes: int) -> None:
        """A miss was cloned or restored and published."""
        verb = "restored" if source is Source.RESTORE else "cloned"
        logger.info("%s %s (%d bytes)", verb, url, size_bytes)

    def adopted(self, url: str) -> None:
        """A mirror found on disk without an index row was indexed."""
        logger.info("adopted %s found on disk without an index entry", url)

    def fetch_retried(self, url: str, detail: str) -> None:
        """A fetch failed fast and is tried once more."""
        logger.info("fetch of %s failed (%s); trying once more", url, detail)

    def stale_served(self, url: str, detail: str) -> None:
        """A fetch failed and the cached copy is served: logged for operators, warned to the caller."""
        logger.warning("serving a stale copy of %s: %s", url, detail)

    def evicted(self, url: str, size_bytes: int) -> None:
        """A repository was removed from disk."""
        logger.info("evicted %s (%d bytes)", url, size_bytes)

    def leftover_removed(self, path: str) -> None:
        """Debris of an interrupted operation was deleted."""
        logger.info("removing leftover %s", path)

    def offloaded(self, url: str, size_bytes: int) -> None:
        """A mirror was uploaded to the cold store."""
        logger.info("offloaded %s to the cold store (%d bytes)", url, size_bytes)

    def cold_problem(self, action: str, url: str, detail: object) -> None:
        """The cold store could not be used for ``action``; the cache carries on without it."""
        logger.warning("cold store: could not %s %s: %s", action, url, detail)

    def maintained(self, report: MaintenanceReport) -> None:
        """A mirror was maintained (repacked, refs packed, commit-graph written)."""
        logger.info(
            "maintained %s: %s; packs %d -> %d, loose objects %d -> %d, loose refs %d -> %d, %d -> %d bytes, "
            "%.3fs, peak memory %d bytes",
            report.url,
            ", ".join(report.tasks),
            report.packs_before,
            report.packs_after,
            report.loose_objects_before,
            report.loose_objects_after,
            report.loose_refs_before,
            report.loose_refs_after,
            report.size_before,
            report.size_after,
            report.seconds,
            report.peak_rss_bytes,
        )

    def maintenance_failed(self, url: str, detail: object) -> None:
        """Automatic maintenance failed; the mirror keeps every object and the caller is not disturbed."""
        logger.warning("maintenance of %s failed: %s", url, detail)

    def restore_unusable(self, url: str, detail: object) -> None:
        """A cold artifact could not be restored and the repository is cloned: logged, and warned to the caller."""
        logger.warning("cannot restore %s from the cold store, cloning instead: %s", url, detail)


_PACKAGE = os.path.dirname(os.path.abspath(__file__)) + os.sep
_CONTEXTLIB = os.path.abspath(contextlib.__file__)


def warn_caller(message: str) -> None:
    """Issue a ``RuntimeWarning`` attributed to the user's line that called into the cache.

    The frames of this package and of :mod:`contextlib` (``with cache.checkout(...)`` enters through it) are
    skipped, whatever depth the warning is raised at.
    """
    level = 2
    frame = sys._getframe(1)
    while frame is not None:
        filename = os.path.abspath(frame.f_code.co_filename)
        if not filename.startswith(_PACKAGE) and filename != _CONTEXTLIB:
            break
        frame = frame.f_back  # type: ignore[assignment]
        level += 1
    warnings.warn(message, RuntimeWarning, stacklevel=level)
