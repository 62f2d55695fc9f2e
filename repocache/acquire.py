"""The acquire room: hold a repository as a reader, as a hit or a miss, and let it go with all that follows.

:meth:`Acquirer.acquire` is the loop every reader goes through (the facade's ``checkout``, ``worktree``,
``ensure`` and ``refresh``, and anything else that serves a repository, such as a git server's request):

1. hold the repository shared; if its mirror is on disk, refresh it when due (:func:`repocache.refresh.refresh`),
   record the hit or the miss and hand it out;
2. else release, hold it exclusively (a wait that ends as soon as another worker publishes it), and materialize it
   (:func:`repocache.materialize.materialize`: restore or clone, room made first); a miss whose room is held by
   other workers releases the lock and waits for them holding nothing (:class:`~repocache.budget.RoomWait`);
3. come round to 1; an eviction can slip in between, hence a bounded count of materializations.

Every wait of one call is bounded by one deadline, ``lock_timeout`` from its start. :meth:`Acquirer.try_hit` is
step 1 for a hit that needs no wait and no work, made of tries (an event loop calls it; None sends the caller to
:meth:`Acquirer.acquire`). :meth:`Acquirer.release`
lets the repository go and settles what follows (:meth:`~repocache.consequences.Consequences.settle`: republish,
automatic maintenance), then brings the cache back within its budget; its halves :meth:`Acquirer.let_go` (the
unlock) and :meth:`Acquirer.settle` (the rest, skipped when :meth:`Acquirer.settled_at_once`) let an event loop do
the first itself.
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import Iterator
from dataclasses import dataclass

from repocache import gitops, locks, refresh, uses
from repocache.budget import Budget, RoomShortfall, RoomWait
from repocache.checkout import Checkout
from repocache.cold_tier import ColdTier, Lookup
from repocache.consequences import Consequences, Fetched
from repocache.context import Context
from repocache.errors import LockTimeoutError, RepoCacheError
from repocache.events import Counter, Source
from repocache.keys import RepoURL
from repocache.layout import SharedHold
from repocache.lifecycle import Lifecycle
from repocache.materialize import materialize
from repocache.models import MaintenanceReport
from repocache.refresh import USE_TTL, Background, MaxAge, Request

__all__ = ["MAX_MATERIALIZATIONS", "Acquired", "Acquirer"]

MAX_MATERIALIZATIONS = 8
"""Materializations one acquire may make before it gives up: each was evicted before it could be held."""


@dataclass
class Acquired:
    """A repository held as a reader by :meth:`Acquirer.acquire`, until :meth:`Acquirer.release`.

    Attributes:
        hold: the shared hold (it carries the repository's parsed URL).
        checkout: what the caller is handed.
        fetched: the fetch this call made, settled on release.
    """

    hold: SharedHold
    checkout: Checkout
    fetched: Fetched | None


class Acquirer:
    """The acquire loop of one cache, over the parts it orchestrates."""

    def __init__(
        self,
        context: Context,
        budget: Budget,
        cold: ColdTier | None,
        consequences: Consequences,
        background: Background,
        lifecycle: Lifecycle,
    ) -> None:
        self._context = context
        self._budget = budget
        self._cold = cold
        self._consequences = consequences
        self._background = background
        self._lifecycle = lifecycle

    @contextlib.contextmanager
    def held(
        self, parsed: RepoURL, progress: gitops.ProgressCallback | None, max_age: MaxAge = USE_TTL
    ) -> Iterator[Checkout]:
        """Hold ``parsed`` as a reader for the ``with`` block, recorded as this process's reader of it."""
        acquired = self.acquire(parsed, progress, max_age)
        use = uses.begin(self._context.layout.root, parsed.key, parsed.url)
        try:
            yield acquired.checkout
        finally:
            use.close()
            self.release(acquired)

    def acquire(
        self,
        parsed: RepoURL,
        progress: gitops.ProgressCallback | None,
        max_age: MaxAge = USE_TTL,
        *,
        strict: bool = False,
    ) -> Acquired:
        """Hold ``parsed`` shared, cloning, restoring or refreshing it as needed.

        Args:
            parsed: the repository.
            progress: progress callback for the clone, restore or fetch.
            max_age: how old the copy may be (``USE_TTL``: the cache's schedule).
            strict: a failed fetch raises whatever ``on_fetch_error`` says (``refresh()``).

        Raises:
            LockTimeoutError: another worker held the repository longer than ``lock_timeout``.
            RepoCacheError: what the refresh or the materialization raised.
        """
        deadline = time.monotonic() + self._context.settings.lock_timeout
        request = Request(started=time.time(), deadline=deadline, max_age=max_age, strict=strict)
        room = RoomWait(self._context, parsed, deadline, progress)
        lookup = Lookup()  # the store's answer, kept across the rounds of a wait for room
        try:
            return self._loop(parsed, progress, request, room, lookup)
        finally:
            lookup.release()  # a lease still held (the wait ended without a clone) is given up
            room.finish()  # a wait for room is reported when the call ends, whatever its outcome

    def try_hit(self, parsed: RepoURL, max_age: MaxAge = USE_TTL) -> Acquired | None:
        """Hold ``parsed`` as a hit if that takes neither a wait nor any work; else None, holding nothing.

        The hit is what :meth:`acquire` would make of it, recorded the same way (recency, the ``hits`` counter,
        the hit event): the mirror is on disk, its shared lock is free now (tried once), the index answers at once
        with its row, and no fetch is due under ``max_age`` (not even one for the background). Anything else (a
        miss, the lock held exclusively, a busy, damaged or read-only index, a mirror without a row, a fetch due)
        gives None, and the caller goes through :meth:`acquire`, which may wait. What this does is a few system
        calls on small local files, one SQLite read that does not wait, and the bookkeeping of a hit (a thread lock
        held only for a few dictionary updates), so an event loop may call it (:class:`~repocache.AsyncRepoCache`).
        """
        clock = time.perf_counter()
        started = time.time()
        context = self._context
        hold = context.layout.hold_shared(parsed, 0)
        if hold is None:
            return None
        try:
            row, fresh = context.index.get_with_freshness_at_once(hold.key) or (None, None)
            if row is None or not context.layout.mirror(hold.key).is_dir():
                hold.release()
                return None
            limit = refresh.age_limit(context.settings, row, fresh, max_age)
            if refresh.needs_fetch(row, fresh, started, limit, time.time()):
                hold.release()
                return None
            self._record(hold, Source.HIT, False, time.perf_counter() - clock)
            return Acquired(hold, self._checkout(hold, Source.HIT, fetched=False, stale=False), None)
        except BaseException:
            hold.release()
            raise

    def release(self, acquired: Acquired) -> MaintenanceReport | None:
        """Let the repository go, settle what followed its fetch, and bring the cache back within its budget.

        Returns:
            The report of the automatic maintenance, when it ran.
        """
        self.let_go(acquired)
        return self.settle(acquired)

    def let_go(self, acquired: Acquired) -> None:
        """The first half of :meth:`release`: the checkout closed and the lock released (never waits)."""
        acquired.checkout._close()
        acquired.hold.release()

    def settle(self, acquired: Acquired) -> MaintenanceReport | None:
        """The second half of :meth:`release`, once :meth:`let_go` ran: what followed the fetch, then the budget
        (this may run git, evict, and wait for the budget lock).

        Returns:
            The report of the automatic maintenance, when it ran.
        """
        report = self._consequences.settle(acquired.fetched)
        if self._lifecycle.is_open:
            self._budget.enforce_if_over()
        return report

    def settled_at_once(self, acquired: Acquired) -> bool:
        """True when :meth:`settle` would do nothing (no fetch to settle, the budget surely holds), as far as can
        be told without waiting; the caller may then skip it."""
        if not self._lifecycle.is_open:
            return True  # settle does nothing on a closed cache
        return acquired.fetched is None and self._budget.surely_within()

    def _loop(
        self,
        parsed: RepoURL,
        progress: gitops.ProgressCallback | None,
        request: Request,
        room: RoomWait,
        lookup: Lookup,
    ) -> Acquired:
        clock = time.perf_counter()
        source = Source.HIT
        mirror = self._context.layout.mirror(parsed.key)
        materialized = 0
        while True:
            hold = self._hold_shared(parsed, request)
            try:
                if mirror.is_dir():
                    return self._serve(hold, request, progress, source, clock)
            except BaseException:
                hold.release()
                raise
            hold.release()
            if materialized == MAX_MATERIALIZATIONS:
                break
            made = self._materialize(parsed, progress, request, room, lookup)
            if made is not None:
                source, materialized = made, materialized + 1
        raise RepoCacheError(
            f"{parsed.url} was evicted {MAX_MATERIALIZATIONS} times between being cloned and being held; "
            "the budget is too small for the working set"
        )

    def _hold_shared(self, parsed: RepoURL, request: Request) -> SharedHold:
        hold = self._context.layout.hold_shared(parsed, max(0.0, request.deadline - time.monotonic()))
        if hold is None:
            raise LockTimeoutError(parsed.url, self._context.settings.lock_timeout, "checkout")
        return hold

    def _serve(
        self,
        hold: SharedHold,
        request: Request,
        progress: gitops.ProgressCallback | None,
        source: Source,
        clock: float,
    ) -> Acquired:
        """The mirror is on disk and held: refresh it when due, record the outcome, hand it out."""
        context = self._context
        fetched, stale = None, False
        if source is not Source.CLONE:  # a restored mirror is as old as its artifact: fetch it when due
            fetched, stale = refresh.refresh(context, self._consequences, hold, request, progress, self._background)
        was_fetched = fetched is not None or source is Source.CLONE
        self._record(hold, source, was_fetched, time.perf_counter() - clock)
        return Acquired(hold, self._checkout(hold, source, fetched=was_fetched, stale=stale), fetched)

    def _checkout(self, hold: SharedHold, source: Source, *, fetched: bool, stale: bool) -> Checkout:
        return Checkout(
            path=self._context.layout.mirror(hold.key),
            url=hold.url.url,
            key=hold.key,
            source=source,
            fetched=fetched,
            stale=stale,
            filter=hold.url.filter,
        )

    def _record(self, hold: SharedHold, source: Source, fetched: bool, seconds: float) -> None:
        """Count the call once, when its outcome is known: a miss is a call that cloned or restored it."""
        context = self._context
        context.index.touch(hold.key, time.time(), counter=Counter.HITS if source is Source.HIT else Counter.MISSES)
        if source is Source.HIT:
            context.events.hit(hold.url.url, hold.key, seconds, fetched)  # logs at debug even with no hook
        elif context.events.active:
            context.events.miss(hold.url.url, hold.key, seconds, source)

    def _materialize(
        self,
        parsed: RepoURL,
        progress: gitops.ProgressCallback | None,
        request: Request,
        room: RoomWait,
        lookup: Lookup,
    ) -> Source | None:
        """Hold the repository exclusively and put its mirror into place; None when another worker did.

        While another worker clones it, the wait ends as soon as the mirror is published: back to the shared path
        beside the other readers instead of waiting for every reader's block to end.
        """
        context = self._context
        mirror = context.layout.mirror(parsed.key)
        exclusive = context.layout.hold_exclusive(
            parsed, max(0.0, request.deadline - time.monotonic()), unless=mirror.is_dir
        )
        if exclusive is None:
            if mirror.is_dir():
                return None
            raise LockTimeoutError(parsed.url, context.settings.lock_timeout, "clone")
        shortfall = source = None
        with exclusive:
            if mirror.is_dir():
                return None
            try:
                source = materialize(
                    context,
                    self._budget,
                    self._cold,
                    self._consequences,
                    exclusive,
                    progress,
                    started=request.started,
                    in_use=uses.open_in(context.layout.root),
                    lookup=lookup,
                )
            except RoomShortfall as short:
                shortfall = short  # waited for below, once the exclusive lock is released
            except BaseException:
                if not mirror.is_dir():  # a failed miss (a typo, a dead URL) leaves no lock file behind
                    locks.discard(exclusive.handle)
                raise
        if shortfall is not None:
            room.wait(shortfall)
        return source
