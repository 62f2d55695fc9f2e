"""The byte budget: deficits, reservations, choosing victims, eviction and the trash.

Room is made under the root's budget lock (:class:`~repocache.layout.BudgetHold`); a victim's lock is only
*tried* from under it (never waited for), which is what keeps the lock order of :mod:`repocache.locks`.
Which repositories are victims first is an :class:`EvictionPolicy`, a row of :data:`POLICIES`, the way diskcache
keeps its policies in a table: a second policy is a row, not a rewrite.
"""

from __future__ import annotations

import os
import shutil
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import TYPE_CHECKING

import psutil

from repocache.context import Context
from repocache.errors import BudgetError, LockTimeoutError
from repocache.events import Counter
from repocache.index import Index, Row
from repocache.keys import RepoURL
from repocache.layout import BudgetHold, ExclusiveHold, key_of, listing, remove
from repocache.models import Entry

if TYPE_CHECKING:
    from repocache.cold.tier import ColdTier

__all__ = ["POLICIES", "Budget", "EvictionPolicy", "entry_of_row"]


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

    def make_room(self, parsed: RepoURL, needed: int) -> int | None:
        """Evict so that ``needed`` bytes fit, then reserve them; returns the reservation (None when unbudgeted).

        Raises:
            BudgetError: the bytes cannot fit even after evicting everything evictable.
        """
        settings = self._context.settings
        if not settings.budgeted:
            return None
        if settings.max_bytes is not None and needed > settings.max_bytes:
            raise BudgetError(parsed.url, needed, settings.max_bytes, max_bytes=settings.max_bytes)
        with self.lock() as budget:
            reserved = self._context.index.reserved_bytes()
            _evicted, deficit = self.free(budget, needed, reserved=reserved, all_or_nothing=True)
            if deficit > 0:
                raise BudgetError(parsed.url, needed, needed - deficit)
            return self._context.index.reserve(parsed.key, needed) if needed else None

    def free(
        self, budget: BudgetHold, needed: int, *, reserved: int, all_or_nothing: bool = False
    ) -> tuple[list[Entry], int]:
        """Evict victims (not pinned, not held) until ``needed`` fits; returns (evicted, remaining deficit).

        With ``all_or_nothing``, nothing is evicted unless enough can be.
        """
        del budget  # held by the caller: the signature is the proof
        context = self._context
        deficit = self.deficit(needed, reserved)
        if deficit <= 0:
            return [], 0
        context.pins.refresh()
        chosen: list[tuple[Row, ExclusiveHold]] = []
        freeable = 0
        try:
            for row in self.policy.candidates(context.index):
                if freeable >= deficit:
                    break
                if context.pins.matches(row.url):
                    continue
                hold = context.layout.try_exclusive(row.key)
                if hold is None:
                    continue  # held by a reader or being cloned/evicted by another worker: skip, never wait
                chosen.append((row, hold))
                freeable += row.size_bytes
                if not all_or_nothing:
                    self.evict_locked(hold, row)
                    hold.release()
            if all_or_nothing:
                if freeable < deficit:
                    return [], deficit - freeable
                for row, hold in chosen:
                    self.evict_locked(hold, row)
                    hold.release()
            evicted = [entry_of_row(context, row) for row, _hold in chosen]
            return evicted, max(0, deficit - freeable)
        finally:
            for _row, hold in chosen:
                hold.release()

    def enforce(self) -> list[Entry]:
        """Evict until the budget and the free-space floor hold; returns what was evicted."""
        with self.lock() as budget:
            evicted, _ = self.free(budget, 0, reserved=self._context.index.reserved_bytes())
        return evicted

    def enforce_if_over(self) -> None:
        """Enforce, but only when the budget is exceeded now (one index read otherwise)."""
        if self._context.settings.budgeted and self.deficit(0, 0) > 0:
            self.enforce()

    def evict_locked(self, hold: ExclusiveHold, row: Row | None, reason: str = "budget") -> None:
        """Offload the mirror to the cold store (if configured) and remove it from disk and from the index.

        ``reason`` (``"budget"``, ``"explicit"``, ``"invalid"``) is reported with the eviction event.
        """
        context = self._context
        mirror = context.layout.mirror(hold.key)
        if mirror.is_dir() and row is not None and self._cold is not None:
            self._cold.offload(hold, row)
        if mirror.is_dir():
            trash = context.layout.new_trash(hold.key)
            os.rename(mirror, trash)
            context.index.remove(hold.key, counter=Counter.EVICTIONS)
            shutil.rmtree(trash, ignore_errors=True)
            context.events.evicted(row.url if row else hold.key, hold.key, row.size_bytes if row else 0, reason)
        else:
            context.index.remove(hold.key, counter=None)

    def empty_trash(self) -> None:
        """Finish deleting what evictions of dead processes left in trash/ (live evictions hold the key's lock)."""
        layout = self._context.layout
        for entry in listing(layout.trash):
            hold = layout.try_exclusive(key_of(entry.name))
            if hold is not None:
                with hold:
                    remove(layout.trash / entry.name)
