"""The byte budget: deficits, reservations, choosing victims, eviction and the trash.

Room is made under the root's budget lock (:class:`~repocache.layout.BudgetHold`); a victim's lock is only
*tried* from under it (never waited for), which is what keeps the lock order of :mod:`repocache.locks`.
Which repositories are victims first is an :class:`EvictionPolicy`, a row of :data:`POLICIES`, the way diskcache
keeps its policies in a table: a second policy is a row, not a rewrite.

When room is short, :meth:`Budget.make_room` tells a lasting shortfall from a passing one. It refuses at once
(:class:`BudgetError`) when the repository cannot fit even with nothing held: its bytes and the pinned ones exceed
``max_bytes``, or the free-space floor cannot be kept with every unpinned repository gone. Otherwise the missing
room is held by readers or reserved by clones in flight, both temporary: it raises :class:`RoomShortfall`, which
the acquire loop catches once it has released every lock it holds, and :class:`RoomWait` waits for the holders
to let go before the loop tries again. A caller that holds repositories of this root itself never waits for held
room (:mod:`repocache.uses`): only callers holding nothing wait on holders, so no cycle of waits can form.
"""

from __future__ import annotations

import os
import shutil
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

import psutil

from repocache import cancel, locks
from repocache.context import Context
from repocache.errors import BudgetError, LockTimeoutError, RepoCacheError
from repocache.events import Counter
from repocache.index import Index, Row
from repocache.keys import RepoURL
from repocache.layout import BudgetHold, ExclusiveHold, Layout, key_of, listing, remove
from repocache.models import Entry, Progress
from repocache.uses import Use

if TYPE_CHECKING:
    from repocache.cold_tier import ColdTier

__all__ = [
    "POLICIES",
    "Budget",
    "EvictionPolicy",
    "Freed",
    "Handover",
    "RoomShortfall",
    "RoomWait",
    "dead_trash",
    "entry_of",
    "entry_of_row",
]

#: The longest a waiting miss blocks on one holder before it looks at the whole budget again (reservations that
#: dropped, other holders that let go).
WAIT_WINDOW = 0.25
#: How often a long wait for room is logged again.
WAIT_LOG_EVERY = 10.0


@dataclass(frozen=True)
class EvictionPolicy:
    """An order in which eviction considers repositories.

    Attributes:
        name: the policy's name.
        candidates: yields the index's rows, first victim first, in pages (so a caller may delete as it goes).
    """

    name: str
    candidates: Callable[[Index], Iterator[Row]]


POLICIES = {
    "least-recently-used": EvictionPolicy("least-recently-used", lambda index: index.lru()),
}


def entry_of(context: Context, key: str) -> Entry | None:
    """The entry of ``key`` as the index has it now, or None when it is not indexed."""
    row = context.index.get(key)
    return None if row is None else entry_of_row(context, row)


def entry_of_row(context: Context, row: Row) -> Entry:
    """The public :class:`Entry` of an index row."""
    return Entry(
        url=row.url,
        key=row.key,
        path=context.layout.mirror(row.key),
        size_bytes=row.size_bytes,
        last_used=row.last_used,
        last_fetched=row.last_fetched,
        pinned=context.pins.matches(row.url),
        in_cold_store=row.in_cold_store,
    )


@dataclass
class Handover:
    """An evicted mirror handed over for its upload: renamed to ``trash/<key>.<id>`` under the budget lock, uploaded
    to the cold store and deleted once that lock is released (:meth:`Budget.finish`).

    Its bytes are still on disk, so they stay counted against the budget, as a reservation, until it is deleted.
    The lock file ``trash/<key>.<id>.lock`` is held by its owner the whole time (made locked, before the rename):
    a copy whose lock is free was left by a process that died, and is deleted (:func:`dead_trash`).

    Attributes:
        row: the index row it had (URL, size, last fetch).
        path: where it is now.
        owner: the held lock of ``path``.
        reservation: the reservation counting its bytes (None when the miss that evicted it counts them).
    """

    row: Row
    path: Path
    owner: locks.FileLockHandle
    reservation: int | None


@dataclass
class Freed:
    """What :meth:`Budget.free` did.

    Attributes:
        evicted: the entries evicted, first victim first.
        deficit: bytes still missing after that (0: ``needed`` fits).
        held: rows skipped because a worker held them (a reader, or a clone or eviction in progress), first victim
            first; complete only when ``deficit`` is positive (the search stops once enough was found).
        pinned_bytes: bytes of the pinned rows seen (complete, like ``held``, when ``deficit`` is positive).
        handed: the evicted mirrors still to upload and delete, once the budget lock is released
            (:meth:`Budget.finish`).
    """

    evicted: list[Entry] = field(default_factory=list)
    deficit: int = 0
    held: list[Row] = field(default_factory=list)
    pinned_bytes: int = 0
    handed: list[Handover] = field(default_factory=list)


class RoomShortfall(Exception):
    """Room for a miss is held by other workers or reserved by clones in flight: wait for them, then try again.

    Raised by :meth:`Budget.make_room` under the repository's exclusive lock; the acquire loop catches it after
    releasing that lock and waits with :class:`RoomWait`, holding nothing.

    Attributes:
        needed: bytes the miss needs.
        available: bytes that could be freed now.
        held: ``(key, url, bytes)`` of the held rows in the way, first victim first.
    """

    def __init__(self, needed: int, available: int, held: tuple[tuple[str, str, int], ...]) -> None:
        super().__init__(needed, available, held)
        self.needed = needed
        self.available = available
        self.held = held


class Budget:
    """Keeps the bytes of one root within ``max_bytes`` and above ``min_free_bytes``."""

    def __init__(
        self, context: Context, cold: ColdTier | None, policy: EvictionPolicy = POLICIES["least-recently-used"]
    ) -> None:
        self._context = context
        self._cold = cold
        self.policy = policy

    def lock(self) -> BudgetHold:
        """Hold the budget lock (waiting up to ``lock_timeout``).

        Raises:
            LockTimeoutError: another process held it longer.
        """
        context = self._context
        hold = context.layout.hold_budget(context.settings.lock_timeout)
        if hold is None:
            raise LockTimeoutError(str(context.layout.root), context.settings.lock_timeout, "budget")
        return hold

    def deficit(self, needed: int, reserved: int) -> int:
        """Bytes that must be freed so that ``needed`` more bytes fit the budget and the free-space floor."""
        settings = self._context.settings
        used, _count = self._context.index.totals()
        deficit = 0
        if settings.max_bytes is not None:
            deficit = used + reserved + needed - settings.max_bytes
        if settings.min_free_bytes:
            free = psutil.disk_usage(str(self._context.layout.root)).free
            deficit = max(deficit, settings.min_free_bytes + needed + reserved - free)
        return max(0, deficit)

    def make_room(self, hold: ExclusiveHold, needed: int, in_use: Sequence[Use] = ()) -> int | None:
        """Evict so that ``needed`` bytes fit, then reserve them; returns the reservation (None when unbudgeted).

        Args:
            hold: the exclusive hold of the repository being materialized (it carries its URL).
            needed: its known size (0 when unknown).
            in_use: what the caller is using under this root (:func:`repocache.uses.open_in`).

        Raises:
            BudgetError: the bytes cannot fit even with nothing held, or the room is held and the caller holds
                repositories itself (``reason="holding"``).
            RoomShortfall: the room is held by other workers or reserved by clones in flight: wait and retry.
        """
        parsed = hold.url
        settings = self._context.settings
        if not settings.budgeted:
            return None
        if settings.max_bytes is not None and needed > settings.max_bytes:
            raise BudgetError(parsed.url, needed, settings.max_bytes, max_bytes=settings.max_bytes)
        with self.lock() as budget:
            reserved = self._context.index.reserved_bytes()
            freed = self.free(budget, needed, reserved=reserved, all_or_nothing=True, covered=needed)
            if freed.deficit > 0:
                self._refuse_or_wait(parsed, needed, freed, in_use)
            reservation = self._context.index.reserve(parsed.key, needed) if needed else None
        try:
            # The victims are uploaded (when they must be) and deleted outside the budget lock: other misses make
            # room meanwhile. This one waits for them: its download takes the room they still occupy.
            self.finish(freed.handed)
        except BaseException:
            if reservation is not None:
                self._context.index.unreserve(reservation)
            raise
        return reservation

    def evicted_on_release(self, parsed: RepoURL, entry: Entry | None) -> RepoCacheError:
        """The error for a repository evicted as soon as its caller released it (``ensure`` never returns a path
        that is gone): a :class:`BudgetError` with the room left when the budget did it, else who did."""
        settings = self._context.settings
        if entry is not None and settings.budgeted:
            used, _count = self._context.index.totals()
            room = max(0, settings.max_bytes - used) if settings.max_bytes is not None else 0
            return BudgetError(parsed.url, entry.size_bytes, room, reason="")
        return RepoCacheError(f"{parsed.url} was evicted by another process as soon as it was released")

    def check_fits(self, hold: ExclusiveHold, size: int) -> None:
        """Refuse a mirror of ``size`` bytes, just downloaded, that could never stay: larger than the budget, or
        than the room the pinned repositories leave (``max_bytes`` less their bytes), whatever is evicted.

        Its size is remembered first, so the next miss is refused before it downloads anything. A pinned mirror
        is never refused (the budget yields to pins).

        Raises:
            BudgetError: it cannot fit; ``available`` is the real room (the budget less the pinned bytes).
        """
        context = self._context
        max_bytes = context.settings.max_bytes
        parsed = hold.url
        if max_bytes is None or context.pins.matches(parsed.url):
            return
        if size > max_bytes:
            context.index.remember_size(hold.key, parsed.url, size)
            raise BudgetError(parsed.url, size, max_bytes, max_bytes=max_bytes)
        context.pins.refresh()
        pinned = sum(
            row.size_bytes for row in context.index.rows() if row.key != hold.key and context.pins.matches(row.url)
        )
        if size + pinned > max_bytes:
            context.index.remember_size(hold.key, parsed.url, size)
            raise BudgetError(parsed.url, size, max(0, max_bytes - pinned), reason="pinned")

    def _refuse_or_wait(self, parsed: RepoURL, needed: int, freed: Freed, in_use: Sequence[Use]) -> None:
        """Raise BudgetError for a lasting shortfall, RoomShortfall for a passing one (held or reserved room)."""
        context = self._context
        settings = context.settings
        available = max(0, needed - freed.deficit)
        if settings.max_bytes is not None and needed + freed.pinned_bytes > settings.max_bytes:
            raise BudgetError(parsed.url, needed, max(0, settings.max_bytes - freed.pinned_bytes), reason="pinned")
        if settings.min_free_bytes:
            used, _count = context.index.totals()
            floor = psutil.disk_usage(str(context.layout.root)).free + used - freed.pinned_bytes
            if settings.min_free_bytes + needed > floor:
                raise BudgetError(parsed.url, needed, max(0, floor - settings.min_free_bytes), reason="pinned")
        if freed.held and in_use:
            sizes = {row.key: row.size_bytes for row in freed.held}
            mine = tuple((h.url, sizes.get(h.key, 0)) for h in in_use)
            raise BudgetError(parsed.url, needed, available, reason="holding", held=mine)
        raise RoomShortfall(needed, available, tuple((row.key, row.url, row.size_bytes) for row in freed.held))

    def free(
        self, budget: BudgetHold, needed: int, *, reserved: int, all_or_nothing: bool = False, covered: int = 0
    ) -> Freed:
        """Evict victims (not pinned, not held) until ``needed`` fits.

        With ``all_or_nothing``, nothing is evicted unless enough can be. A victim that must be uploaded first is
        only handed over (:class:`Handover`): the caller must pass :attr:`Freed.handed` to :meth:`finish` once it
        has released the budget lock. ``covered`` bytes of those victims are counted by a reservation the caller
        makes under the same hold (the miss they make room for, which downloads nothing until they are deleted);
        the rest stay reserved until each is deleted.
        """
        del budget  # held by the caller: the signature is the proof
        context = self._context
        deficit = self.deficit(needed, reserved)
        if deficit <= 0:
            return Freed()
        context.pins.refresh()
        chosen: list[tuple[Row, ExclusiveHold]] = []
        handed: list[Handover] = []
        held: list[Row] = []
        pinned_bytes = 0
        freeable = 0
        try:
            for row in self.policy.candidates(context.index):
                if freeable >= deficit:
                    break
                if context.pins.matches(row.url):
                    pinned_bytes += row.size_bytes
                    continue
                hold = context.layout.try_exclusive(row.key)
                if hold is None:
                    held.append(row)  # held by a reader or being cloned/evicted by another worker: never waited
                    continue
                chosen.append((row, hold))
                freeable += row.size_bytes
                if not all_or_nothing:
                    covered = self._evict_deferred(hold, row, handed, covered)
            if all_or_nothing:
                if freeable < deficit:
                    return Freed([], deficit - freeable, held, pinned_bytes)
                for row, hold in chosen:
                    covered = self._evict_deferred(hold, row, handed, covered)
            evicted = [entry_of_row(context, row) for row, _hold in chosen]
            return Freed(evicted, max(0, deficit - freeable), held, pinned_bytes, handed)
        except BaseException:
            for handover in handed:  # interrupted: delete them, never upload under the budget lock
                self._delete(handover)
            raise
        finally:
            for _row, hold in chosen:
                hold.release()

    def _evict_deferred(self, hold: ExclusiveHold, row: Row, handed: list[Handover], covered: int) -> int:
        """Evict ``row`` under the budget lock, handing it over when it must be uploaded; returns what is left of
        ``covered``."""
        handover = self.evict_locked(hold, row, defer=True, covered=min(covered, row.size_bytes))
        hold.release()
        if handover is None:
            return covered
        handed.append(handover)
        return covered - min(covered, row.size_bytes)

    def enforce(self) -> list[Entry]:
        """Evict until the budget and the free-space floor hold; returns what was evicted."""
        with self.lock() as budget:
            freed = self.free(budget, 0, reserved=self._context.index.reserved_bytes())
        self.finish(freed.handed)
        return freed.evicted

    def enforce_if_over(self) -> None:
        """Enforce, but only when the budget is exceeded now (one index read otherwise)."""
        if self._context.settings.budgeted and self.deficit(0, 0) > 0:
            self.enforce()

    def surely_within(self) -> bool:
        """True when :meth:`enforce_if_over` would do nothing, as far as can be told without waiting: the cache is
        unbudgeted, or the index answered at once and the budget holds. False means: call it (it may evict)."""
        settings = self._context.settings
        if not settings.budgeted:
            return True
        totals = self._context.index.totals_at_once()
        if totals is None:
            return False
        used = totals[0]
        if settings.max_bytes is not None and used > settings.max_bytes:
            return False
        if settings.min_free_bytes:
            return psutil.disk_usage(str(self._context.layout.root)).free >= settings.min_free_bytes
        return True

    def evict_now(self, parsed: RepoURL, *, force: bool) -> bool:
        """Evict one repository at its caller's request, unless it is pinned (and not ``force``) or held.

        Returns:
            True if it was evicted; False if it was not on disk, is held by a reader in any process, or is pinned.
        """
        context = self._context
        if not force and context.pins.matches(parsed.url):
            return False
        hold = context.layout.try_exclusive(parsed)
        if hold is None:
            return False
        with hold:
            if not context.layout.mirror(parsed.key).is_dir():
                context.index.remove(parsed.key, counter=None)
                return False
            self.evict_locked(hold, context.index.get(parsed.key), reason="explicit")
            return True

    def evict_locked(
        self, hold: ExclusiveHold, row: Row | None, reason: str = "budget", *, defer: bool = False, covered: int = 0
    ) -> Handover | None:
        """Remove the mirror from disk and from the index, offloading it to the cold store (if configured) first.

        ``reason`` (``"budget"``, ``"explicit"``, ``"invalid"``) is reported with the eviction event. An invalid
        mirror is never offloaded: its artifact would be refused by every restore and shadow a good one.

        A mirror to offload is first handed over: renamed into ``trash/`` (no reader resolves it there; a miss of
        the repository clones or restores afresh) with its bytes kept reserved. With ``defer`` (under the budget
        lock) the :class:`Handover` is returned, for :meth:`finish` to upload and delete once the lock is
        released; else that is done now. ``covered`` bytes of it are counted by the caller's own reservation.
        """
        context = self._context
        mirror = context.layout.mirror(hold.key)
        if not mirror.is_dir():
            context.index.remove(hold.key, counter=None)
            return None
        if row is not None and self._cold is not None and reason != "invalid":
            handover = self._hand_over(hold, row, reason, covered)
            if not defer:
                self.finish([handover])
                return None
            return handover
        trash = context.layout.new_trash(hold.key)
        os.rename(mirror, trash)
        context.index.remove(hold.key, counter=Counter.EVICTIONS)
        shutil.rmtree(trash, ignore_errors=True)
        context.events.evicted(row.url if row else hold.key, hold.key, row.size_bytes if row else 0, reason)
        return None

    def _hand_over(self, hold: ExclusiveHold, row: Row, reason: str, covered: int) -> Handover:
        """Rename the held mirror into ``trash/`` beside its held lock file, its index row traded for a
        reservation of the bytes ``covered`` does not count."""
        context = self._context
        trash = context.layout.new_trash(hold.key)
        owner = locks.create_locked(_owner_file(trash))  # before the rename: a copy is never there unowned
        try:
            os.rename(context.layout.mirror(hold.key), trash)
        except BaseException:
            locks.discard(owner)
            raise
        reservation = context.index.hand_over(hold.key, row.size_bytes - covered, counter=Counter.EVICTIONS)
        context.events.evicted(row.url, hold.key, row.size_bytes, reason)
        return Handover(row, trash, owner, reservation)

    def finish(self, handed: Sequence[Handover]) -> None:
        """Upload the handed-over mirrors (when the store lacks them) and delete them; never under the budget lock.

        A store that fails is reported and the copy deleted all the same (the mirror is a cache of its upstream);
        an interrupted upload never commits a manifest, so nothing in the store names a partial artifact.
        """
        for number, handover in enumerate(handed):
            try:
                if self._cold is not None:
                    self._cold.offload(handover.row, handover.path)
            except BaseException:
                for rest in handed[number:]:
                    self._delete(rest)
                raise
            self._delete(handover)

    def _delete(self, handover: Handover) -> None:
        remove(handover.path)
        if handover.reservation is not None:
            self._context.index.unreserve(handover.reservation)
        locks.discard(handover.owner)

    def empty_trash(self) -> None:
        """Finish deleting what evictions of dead processes left in trash/ (live evictions hold their locks)."""
        dead_trash(self._context.layout, repair=True)


def _owner_file(trash: Path) -> Path:
    """The lock file held by the owner of a handed-over copy at ``trash``."""
    return trash.with_name(trash.name + ".lock")


def dead_trash(layout: Layout, *, repair: bool) -> list[Path]:
    """What evictions of dead processes left in ``trash/``; with ``repair``, deleted.

    A plain eviction's copy belongs to the holder of its key's exclusive lock; a handed-over copy (one being
    uploaded outside the budget lock) to the holder of its own ``<name>.lock`` file. Either is debris only while
    that lock is free. A lock file whose copy is gone is debris too (its owner died between the two deletions).
    """
    found: list[Path] = []
    names = [entry.name for entry in listing(layout.trash)]
    owned = {name.removesuffix(".lock") for name in names if name.endswith(".lock")}
    for name in sorted({name.removesuffix(".lock") for name in names}):
        path = layout.trash / name
        if name in owned:
            try:
                handle = locks.acquire(_owner_file(path), shared=False, timeout=0, create=False)
            except FileNotFoundError:
                continue  # its owner finished just now
            except RepoCacheError:
                continue  # not a lock file this module made (UnsafeFileError): left for a person to look at
            if handle is None:
                continue  # its owner is alive: an upload in progress
            found.append(path if os.path.lexists(path) else _owner_file(path))
            if repair:
                remove(path)
                locks.discard(handle)
            else:
                handle.release()
            continue
        hold = layout.try_exclusive(key_of(name))
        if hold is None:
            continue
        with hold:
            if not os.path.lexists(path):
                continue
            found.append(path)
            if repair:
                remove(path)
    return found


class RoomWait:
    """One miss's wait for room held by other workers, across the rounds of the acquire loop.

    Each round the caller holds nothing: it blocks on the lock of the first held victim (shared by its readers) for
    at most :data:`WAIT_WINDOW` seconds, taking it exclusively and letting go at once, so it wakes as soon as that
    victim's last reader leaves; holders pay nothing. Room reserved by clones in flight is polled instead. The
    wait is reported through ``progress`` and the log when it starts (and every :data:`WAIT_LOG_EVERY` seconds),
    and as a :class:`~repocache.events.BudgetWaitEvent` when it ends; it is bounded by the acquire loop's deadline.
    """

    def __init__(
        self,
        context: Context,
        parsed: RepoURL,
        deadline: float,
        progress: Callable[[Progress], None] | None,
    ) -> None:
        self._context = context
        self._parsed = parsed
        self._deadline = deadline
        self._progress = progress
        self._started: float | None = None
        self._logged = 0.0
        self._needed = 0

    @property
    def waited(self) -> float:
        """Seconds waited so far."""
        return 0.0 if self._started is None else time.monotonic() - self._started

    def wait(self, shortfall: RoomShortfall) -> None:
        """Wait (holding nothing) until the room may have come free, for at most one window.

        Raises:
            BudgetError: the deadline has passed; it names the repositories that were held.
        """
        context = self._context
        now = time.monotonic()
        self._needed = shortfall.needed
        held_text = ", ".join(f"{url} ({size} bytes)" for _key, url, size in shortfall.held) or "none"
        if self._started is None:
            self._started = self._logged = now
            context.events.budget_waiting(self._parsed.url, shortfall.needed, shortfall.available, held_text, 0.0)
            if self._progress is not None:
                self._progress(Progress(self._parsed.url, "clone", "waiting for room", 0, 0, 0))
        elif now - self._logged >= WAIT_LOG_EVERY:
            self._logged = now
            context.events.budget_waiting(
                self._parsed.url, shortfall.needed, shortfall.available, held_text, now - self._started
            )
        remaining = self._deadline - now
        if remaining <= 0:
            raise BudgetError(
                self._parsed.url,
                shortfall.needed,
                shortfall.available,
                reason="timeout",
                held=tuple((url, size) for _key, url, size in shortfall.held),
                waited=now - self._started,
            )
        window = min(remaining, WAIT_WINDOW)
        if shortfall.held:
            hold = context.layout.hold_exclusive(shortfall.held[0][0], window)
            if hold is not None:
                hold.release()
        else:
            _pause(window)

    def finish(self) -> None:
        """Report the wait (if there was one) as ended; call once, whatever the outcome."""
        if self._started is not None:
            self._context.events.budget_waited(
                self._parsed.url, self._parsed.key, time.monotonic() - self._started, self._needed
            )
            self._started = None


def _pause(seconds: float) -> None:
    """Sleep ``seconds`` in short steps, stopping early when the caller is cancelled."""
    deadline = time.monotonic() + seconds
    while (left := deadline - time.monotonic()) > 0:
        cancel.check()
        time.sleep(min(left, 0.05))
