"""Turning a miss into a published mirror: sweep, make room, try the sources in order, publish into place.

Every mirror is built through one template (pre-commit's ``_new_repo``): under the repository's exclusive lock,
delete the debris of earlier attempts, reserve its bytes when its size is known, fill a fresh staging directory
from the first source that works (a restore from the cold store, then a clone), validate, and publish it with one
atomic rename. On any failure the staging directory and the reservation are dropped: nothing half-made is ever
served, and a process killed at any instant leaves only debris that the next attempt sweeps.
"""

from __future__ import annotations

import os
import shutil
import time
from collections.abc import Callable, Sequence
from pathlib import Path

from repocache import gitops
from repocache.budget import Budget, RoomShortfall
from repocache.cold.manifest import Manifest
from repocache.cold_tier import ColdTier, Lookup
from repocache.consequences import Consequences
from repocache.context import Context
from repocache.counters import Counter
from repocache.errors import AuthenticationError, CloneError
from repocache.events import Source
from repocache.keys import RepoURL
from repocache.layout import ExclusiveHold, remove
from repocache.uses import Use

__all__ = ["materialize", "sweep_staging"]

Fill = Callable[[Path], bool]  # fills the staging directory; False when this source cannot be used


def materialize(
    context: Context,
    budget: Budget,
    cold: ColdTier | None,
    consequences: Consequences,
    hold: ExclusiveHold,
    progress: gitops.ProgressCallback | None,
    *,
    started: float,
    in_use: Sequence[Use] = (),
    lookup: Lookup | None = None,
) -> Source:
    """Restore or clone the held repository into place; returns where it came from.

    What follows is recorded by :meth:`Consequences.materialized` before the hold is released. ``started`` is when
    the request began (a clone is as fresh as that); ``in_use`` is what the caller is using under this root (it
    decides whether it may wait for held room). ``lookup`` keeps what the store said (the manifest, the clone
    lease) across the rounds of a wait for room; its owner releases it when the wait ends.

    Raises:
        BudgetError: it cannot fit (before any download when its size is known, else after the clone).
        RoomShortfall: the room is held by other workers (before anything was downloaded): release the lock,
            wait (:class:`~repocache.budget.RoomWait`) and try again.
        CloneError: no source could produce a valid mirror.
    """
    parsed = hold.url
    sweep_staging(context, hold)
    kept = lookup if lookup is not None else Lookup()
    manifest, claim = cold.look_up(parsed, kept) if cold is not None else (None, None)
    try:
        source = _fill(context, budget, cold, hold, parsed, progress, manifest, in_use)
    except RoomShortfall:
        if lookup is None:
            kept.release()
        raise  # the caller's lookup keeps the manifest and the lease for the next round
    except BaseException:
        kept.release()
        raise
    kept.hand_on()  # the lease is released once the clone is published
    consequences.materialized(hold, parsed, source, started=started, manifest=manifest, claim=claim)
    return source


def _fill(
    context: Context,
    budget: Budget,
    cold: ColdTier | None,
    hold: ExclusiveHold,
    parsed: RepoURL,
    progress: gitops.ProgressCallback | None,
    manifest: Manifest | None,
    in_use: Sequence[Use],
) -> Source:
    key = hold.key
    started = time.perf_counter()
    known = max(context.index.known_size(key), manifest.mirror_bytes if manifest is not None else 0)
    reservation = budget.make_room(hold, known, in_use)
    staging = context.layout.new_staging(key)

    def clone(staging: Path) -> bool:
        gitops.clone_mirror(parsed, staging, context.git, progress=progress)
        return True

    sources: list[tuple[Source, Fill]] = []
    if cold is not None and manifest is not None:
        sources.append((Source.RESTORE, lambda staging: cold.restore(hold, parsed, manifest, staging, progress)))
    sources.append((Source.CLONE, clone))
    try:
        source = _first_that_fills(context, sources, staging)
        size = gitops.disk_usage(staging)
        if size > known:  # its size was unknown (or it grew): refuse it now if it could never stay
            budget.check_fits(hold, size)
        os.rename(staging, context.layout.mirror(key))
        # A restored copy is as fresh as its artifact (bounded by its upload's time); a clone, as of now.
        restored_fetched = (
            manifest.fetched_at(time.time()) if source is Source.RESTORE and manifest is not None else None
        )
        context.index.put(
            key,
            parsed.url,
            size,
            time.time(),
            counter=source.counter,
            fetched=source is Source.CLONE,
            reservation=reservation,
            fetched_at=restored_fetched,
        )
        reservation = None  # dropped with the put: the bytes are now counted by the entry
        context.events.materialized(parsed.url, key, source, size, time.perf_counter() - started)
    finally:
        if staging.exists():
            shutil.rmtree(staging, ignore_errors=True)
        if reservation is not None:
            context.index.unreserve(reservation)
    if size > known:
        # More bytes than room was made for (a first clone, or a repository that grew): evict others now, while
        # the new mirror is held and so cannot be the victim. When its size was known, the room made before the
        # download is all the enforcement a miss needs.
        budget.enforce_if_over()
    return source


def _first_that_fills(context: Context, sources: list[tuple[Source, Fill]], staging: Path) -> Source:
    """The first source that fills ``staging``; a clone that fails is counted (``clone_errors``, and
    ``auth_errors`` when upstream refused the credentials) and raised."""
    for source, fill in sources:
        try:
            if fill(staging):
                return source
        except CloneError as exc:
            if source is Source.CLONE:
                context.index.count(Counter.CLONE_ERRORS)
                if isinstance(exc, AuthenticationError):
                    context.index.count(Counter.AUTH_ERRORS)
            raise
    raise CloneError("", "no source could fill the mirror")  # pragma: no cover - the clone source raises or fills


def sweep_staging(context: Context, hold: ExclusiveHold) -> None:
    """Delete staging debris of the held repository: its exclusive lock proves the debris is dead."""
    for path in context.layout.staged_of(hold.key):
        context.events.leftover_removed(str(path))
        remove(path)
