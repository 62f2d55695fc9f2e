"""Outcomes of cache operations: their names, the counters they move, and the one place they are reported.

Every outcome (a hit, a miss, a clone, a restore, a fetch, a stale copy served, an eviction) is named here once.
The index moves a counter in the same transaction as the state it counts (a hit's recency, a clone's row), so the
counters shared by every process never disagree with the rows; :class:`Events` is where the outcome becomes a log
line and a typed :class:`Event` for the hooks subscribed with ``RepoCache(on_event=...)`` or
:meth:`RepoCache.subscribe` (:mod:`repocache.metrics` is one such hook).
"""

from __future__ import annotations

import contextlib
import logging
import os
import sys
import threading
import time
import warnings
from collections.abc import Callable
from dataclasses import dataclass
from enum import Enum
from typing import TYPE_CHECKING, ClassVar

from repocache.counters import Counter

if TYPE_CHECKING:
    from repocache.models import MaintenanceReport

__all__ = [
    "BudgetWaitEvent",
    "CloneEvent",
    "Counter",
    "EvictionEvent",
    "Event",
    "EventHook",
    "Events",
    "FetchEvent",
    "HitEvent",
    "MaintenanceEvent",
    "MissEvent",
    "PublishEvent",
    "RestoreEvent",
    "ServeEvent",
    "Source",
    "StaleEvent",
    "warn_caller",
]

logger = logging.getLogger("repocache")


class _StrEnum(str, Enum):
    """A ``str`` enum whose members compare, format and serialize as their value (``Source.HIT == "hit"``)."""

    def __str__(self) -> str:
        return str(self.value)

    def __format__(self, spec: str) -> str:
        return format(str(self.value), spec)


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


# -- typed events handed to hooks ------------------------------------------------------------------------------


@dataclass(frozen=True)
class Event:
    """Something that happened to a repository in this process; hooks receive subclasses of this.

    Attributes:
        url: the repository's normalized URL (never with credentials).
        key: its directory name under the root.
        at: epoch seconds when it happened.
    """

    kind: ClassVar[str] = "event"
    url: str
    key: str
    at: float


@dataclass(frozen=True)
class HitEvent(Event):
    """A checkout or ensure found the repository on disk (``seconds``: until it was handed out, fetch included)."""

    kind: ClassVar[str] = "hit"
    seconds: float
    fetched: bool


@dataclass(frozen=True)
class MissEvent(Event):
    """A checkout or ensure cloned or restored the repository itself (``source``), then handed it out.

    Emitted, like :class:`HitEvent`, when the outcome is known: a call that found nothing on disk but was served
    by another worker's clone is a hit. ``seconds`` runs until the checkout was handed out.
    """

    kind: ClassVar[str] = "miss"
    seconds: float
    source: str


@dataclass(frozen=True)
class CloneEvent(Event):
    """A miss was cloned from upstream and published (``seconds``: the whole materialization)."""

    kind: ClassVar[str] = "clone"
    seconds: float
    size_bytes: int


@dataclass(frozen=True)
class RestoreEvent(Event):
    """A miss was restored from the cold store and published."""

    kind: ClassVar[str] = "restore"
    seconds: float
    size_bytes: int


@dataclass(frozen=True)
class FetchEvent(Event):
    """A fetch finished (``ok``) or failed; ``bytes_added`` is the growth of the mirror on disk."""

    kind: ClassVar[str] = "fetch"
    seconds: float
    ok: bool
    size_bytes: int
    bytes_added: int
    error: str | None = None


@dataclass(frozen=True)
class StaleEvent(Event):
    """A fetch failed and the cached copy was served (``on_fetch_error="warn"``)."""

    kind: ClassVar[str] = "stale"
    error: str


@dataclass(frozen=True)
class EvictionEvent(Event):
    """A repository was removed from disk; ``reason`` is ``"budget"``, ``"explicit"`` (``evict()``) or
    ``"invalid"`` (``verify(repair=True)`` removed a broken mirror)."""

    kind: ClassVar[str] = "eviction"
    size_bytes: int
    reason: str


@dataclass(frozen=True)
class BudgetWaitEvent(Event):
    """A miss waited for other workers to release held repositories before its bytes fitted."""

    kind: ClassVar[str] = "budget_wait"
    seconds: float
    needed_bytes: int


@dataclass(frozen=True)
class MaintenanceEvent(Event):
    """Maintenance (repacking, commit-graph, ...) ran on a mirror."""

    kind: ClassVar[str] = "maintenance"
    seconds: float
    size_bytes: int
    detail: str


@dataclass(frozen=True)
class PublishEvent(Event):
    """A mirror was uploaded to the cold store (``reason``: ``"evict"``, ``"clone"``, ``"fetch"``, ``"explicit"``)."""

    kind: ClassVar[str] = "publish"
    seconds: float
    size_bytes: int
    reason: str


@dataclass(frozen=True)
class ServeEvent(Event):
    """The git server (:mod:`repocache.serve`) answered a request.

    Attributes:
        service: ``info/refs`` or ``git-upload-pack`` (or what was refused).
        outcome: ``served``, ``stale`` (served from a copy whose fetch failed), ``refused`` (the path or the
            request), ``busy`` (503, no slot or queue place), ``upstream`` (the clone or fetch failed), ``failed``
            (upload-pack failed before answering, or an internal error), ``gone`` (the client left),
            ``unauthorized`` (upstream refused the client's credentials: 401).
        status: the HTTP status answered.
        bytes_sent: body bytes sent.
        seconds: from the request to its end.
        shared: the answer was a pack generation another request started.
        remembered: the answer (an advertisement or a ref listing) was sent from the server's memory, without
            running upload-pack (:mod:`repocache.serve.answers`).
        queued_seconds: how long its pack generation waited for a slot.
        queue_length: pack generations waiting for a slot when it ended.
        auth: what the check of the client's credentials against upstream came to: ``allowed``, ``refused``
            (answered 401), ``error`` (upstream gave no usable answer, 502), ``trusted`` (the prefix's clients
            are not checked) or ``""`` (refused before the check). Never the credential.
        auth_cached: the check's answer was reused from the server's short-lived table (no upstream contact).
    """

    kind: ClassVar[str] = "serve"
    service: str
    outcome: str
    status: int
    bytes_sent: int
    seconds: float
    shared: bool = False
    remembered: bool = False
    queued_seconds: float = 0.0
    queue_length: int = 0
    auth: str = ""
    auth_cached: bool = False


EventHook = Callable[[Event], None]


class Events:
    """Where outcomes are reported: a log line on the ``repocache`` logger and a typed :class:`Event` to hooks.

    Hooks run synchronously in the thread that caused the event; they must be quick. A hook that raises is logged
    and otherwise ignored: it never breaks the operation that caused the event. With no hook subscribed, no event
    object is built, so the hot path (a hit within ``fetch_ttl``) pays one attribute test and one logger level test.
    """

    def __init__(self) -> None:
        self._hooks: tuple[EventHook, ...] = ()
        self._lock = threading.Lock()

    @property
    def active(self) -> bool:
        """Whether any hook is subscribed (build events only then)."""
        return bool(self._hooks)

    def subscribe(self, hook: EventHook) -> Callable[[], None]:
        """Call ``hook`` with every event from now on; returns a function that unsubscribes it."""
        if not callable(hook):
            from repocache.errors import ConfigError

            raise ConfigError(f"on_event={hook!r} is not callable; expected a function taking an Event")
        with self._lock:
            self._hooks = (*self._hooks, hook)

        def unsubscribe() -> None:
            with self._lock:
                self._hooks = tuple(h for h in self._hooks if h is not hook)

        return unsubscribe

    def emit(self, event: Event) -> None:
        """Hand ``event`` to every hook."""
        for hook in self._hooks:
            try:
                hook(event)
            except Exception:
                logger.exception("event hook %r failed on %s", hook, event.kind)

    # -- outcomes, named once ------------------------------------------------------------------------------------

    def hit(self, url: str, key: str, seconds: float, fetched: bool) -> None:
        """A repository was found on disk and handed out: a debug line (``repocache -vv``) and a hook event."""
        if logger.isEnabledFor(logging.DEBUG):
            logger.debug("hit %s (%s, %.3f s)", url, "fetched" if fetched else "not fetched", seconds)
        if self._hooks:
            self.emit(HitEvent(url, key, time.time(), seconds, fetched))

    def miss(self, url: str, key: str, seconds: float, source: Source) -> None:
        """A repository was cloned or restored by this call and handed out."""
        if self._hooks:
            self.emit(MissEvent(url, key, time.time(), seconds, str(source)))

    def materialized(self, url: str, key: str, source: Source, size_bytes: int, seconds: float) -> None:
        """A miss was cloned or restored and published."""
        verb = "restored" if source is Source.RESTORE else "cloned"
        logger.info("%s %s (%d bytes)", verb, url, size_bytes)
        if self._hooks:
            kind = RestoreEvent if source is Source.RESTORE else CloneEvent
            self.emit(kind(url, key, time.time(), seconds, size_bytes))

    def fetched(
        self, url: str, key: str, seconds: float, size_bytes: int, bytes_added: int, error: str | None = None
    ) -> None:
        """A fetch finished (``error`` None) or failed."""
        if self._hooks:
            ok = error is None
            self.emit(FetchEvent(url, key, time.time(), seconds, ok, size_bytes, bytes_added, error))

    def adopted(self, url: str) -> None:
        """A mirror found on disk without an index row was indexed."""
        logger.info("adopted %s found on disk without an index entry", url)

    def fetch_retried(self, url: str, detail: str) -> None:
        """A fetch failed fast and is tried once more."""
        logger.info("fetch of %s failed (%s); trying once more", url, detail)

    def stale_served(self, url: str, key: str, detail: str) -> None:
        """A fetch failed and the cached copy is served: logged for operators, warned to the caller."""
        logger.warning("serving a stale copy of %s: %s", url, detail)
        if self._hooks:
            self.emit(StaleEvent(url, key, time.time(), detail))

    def marked_stale(self, url: str) -> None:
        """A repository was marked stale: its next hit fetches whatever its age."""
        logger.info("marked %s stale", url)

    def background_fetch_failed(self, url: str, detail: str) -> None:
        """A background fetch failed: logged for operators (its caller is gone, so no warning)."""
        logger.warning("background fetch of %s failed; the cached copy is served until a fetch works: %s", url, detail)

    def background_fetch_cancelled(self, url: str) -> None:
        """A background fetch was cancelled by ``close()`` once its timeout had passed (not a failure)."""
        logger.info("background fetch of %s cancelled by close()", url)

    def background_fetches_left(self, count: int, timeout: float) -> None:
        """``close()`` stopped waiting for background fetches still running; they finish on their own."""
        logger.warning(
            "%d background fetches still running %gs after close(); they finish on their own", count, timeout
        )

    def evicted(self, url: str, key: str, size_bytes: int, reason: str) -> None:
        """A repository was removed from disk."""
        logger.info("evicted %s (%d bytes, %s)", url, size_bytes, reason)
        if self._hooks:
            self.emit(EvictionEvent(url, key, time.time(), size_bytes, reason))

    def budget_waited(self, url: str, key: str, seconds: float, needed_bytes: int) -> None:
        """A miss waited for held repositories to be released."""
        logger.info("%s waited %.3f s for %d bytes held by other workers", url, seconds, needed_bytes)
        if self._hooks:
            self.emit(BudgetWaitEvent(url, key, time.time(), seconds, needed_bytes))

    def budget_waiting(self, url: str, needed_bytes: int, available_bytes: int, held: str, seconds: float) -> None:
        """A miss is waiting for room held by other workers (logged when it starts and every few seconds)."""
        logger.info(
            "%s waits for room: needs %d bytes, %d can be freed now; held: %s (waiting %.0f s so far)",
            url,
            needed_bytes,
            available_bytes,
            held,
            seconds,
        )

    def published(self, url: str, key: str, seconds: float, size_bytes: int, reason: str) -> None:
        """A mirror was uploaded to the cold store."""
        logger.info("offloaded %s to the cold store (%d bytes, %s)", url, size_bytes, reason)
        if self._hooks:
            self.emit(PublishEvent(url, key, time.time(), seconds, size_bytes, reason))

    def leftover_removed(self, path: str) -> None:
        """Debris of an interrupted operation was deleted."""
        logger.info("removing leftover %s", path)

    def cold_problem(self, action: str, url: str, detail: object) -> None:
        """The cold store could not be used for ``action``; the cache carries on without it."""
        logger.warning("cold store: could not %s %s: %s", action, url, detail)

    def fleet_wait(self, url: str, outcome: str, seconds: float) -> None:
        """A miss waited for another host's clone of the same repository: ``outcome`` says how the wait ended."""
        logger.info("waited %.2fs for another host's clone of %s: %s", seconds, url, outcome)

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
        if self._hooks:
            detail = ", ".join(report.tasks) or (report.skipped or "nothing to do")
            self.emit(MaintenanceEvent(report.url, report.key, time.time(), report.seconds, report.size_after, detail))

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
