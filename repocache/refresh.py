"""Freshness of a hit: the rule that decides whether to fetch, the fetch with its retry, and the error policy.

A hit is fetched when its copy is older than the age limit that applies to the call, or when it was marked stale:

- the **age limit** is the call's ``max_age`` when given (0: fresh now; None: any age will do), else the cache's
  ``fetch_ttl``, else (``fetch_ttl="auto"``) the repository's own interval from the **adaptive schedule**: half the
  time between its last fetch and the last time upstream was seen to change, clamped to ``[fetch_ttl_min,
  fetch_ttl_max]`` (Sourcegraph's rule; :func:`fetch_interval`). A fetch that moves refs records when it began as
  the change time; a clone records its newest commit's time. Both live in the index (table ``freshness``), so a
  restart keeps every repository's schedule and causes no fetch storm.
- a **stale mark** (:meth:`RepoCache.mark_stale`, a webhook, ``repocache stale``) is stored in the index, so any
  process or host sharing the root sees it; it is consumed by the first successful fetch that *began* after it (a
  fetch that began before the mark may have missed the push it announces). ``max_age=None`` ignores marks too.
- a copy fetched after the request began is fresh (another caller's fetch, finished while this one waited for the
  fetch lock, counts: concurrent fetches coalesce into one), unless a mark arrived after that fetch began.

Fetches run under the repository's fetch lock while readers keep their shared holds: readers are never blocked
by a fetch. With ``refresh="background"`` (stale-while-revalidate, in RFC 5861's sense) a hit whose copy is due
but at most ``max_stale`` seconds past its age limit (a marked copy counts as not past it) is handed out at once,
and one fetch runs in :class:`Background`, a small pool of threads owned by the cache; beyond ``max_stale``, or
when the call gives ``max_age``, the hit waits for the fetch as it does in the foreground mode.
"""

from __future__ import annotations

import concurrent.futures
import enum
import logging
import os
import threading
import time
from dataclasses import dataclass
from typing import Literal

from repocache import cancel, gitops
from repocache.consequences import Consequences, Fetched
from repocache.context import Context
from repocache.errors import AuthenticationError, FetchError, LockTimeoutError
from repocache.events import Counter, warn_caller
from repocache.index import Freshness, Row
from repocache.layout import FetchHold, SharedHold
from repocache.lifecycle import Lifecycle
from repocache.settings import Settings, parse_seconds

__all__ = [
    "FETCH_RETRY_WITHIN",
    "USE_TTL",
    "Background",
    "MaxAge",
    "Request",
    "adopt",
    "age_limit",
    "fetch_interval",
    "fetch_with_retry",
    "is_fresh",
    "needs_fetch",
    "parse_max_age",
    "refresh",
]

logger = logging.getLogger("repocache")

FETCH_RETRY_WITHIN = 5.0  # seconds: a fetch that failed faster than this is tried once more
BACKGROUND_WORKERS = 2  # background fetches running at once per cache (more wait in the pool's queue)
CANCEL_GRACE = 10.0  # seconds close() waits for cancelled background fetches to unwind (git is killed in 50 ms)


class _UseTTL(enum.Enum):
    USE_TTL = "use the cache's fetch_ttl"


USE_TTL = _UseTTL.USE_TTL
"""The default of ``max_age``: the cache's ``fetch_ttl`` (or adaptive schedule) applies (None means any age)."""

MaxAge = float | None | Literal[_UseTTL.USE_TTL]


def parse_max_age(value: object) -> MaxAge:
    """Validate a call's ``max_age``: :data:`USE_TTL`, None (any age) or finite seconds >= 0.

    Raises:
        ConfigError: anything else (raised by :func:`~repocache.settings.parse_seconds`).
    """
    if value is USE_TTL or value is None:
        return value
    return parse_seconds("max_age", value)


@dataclass(frozen=True)
class Request:
    """One call's view of freshness.

    Attributes:
        started: epoch seconds at which the call began (a fetch finished after it makes the copy fresh).
        deadline: ``time.monotonic()`` by which every wait of the call must end.
        max_age: the call's age limit (:data:`USE_TTL`: the cache's).
        strict: raise :class:`FetchError` when the fetch fails, whatever ``on_fetch_error`` says (``refresh``).
    """

    started: float
    deadline: float
    max_age: MaxAge = USE_TTL
    strict: bool = False


def fetch_interval(last_fetched: float, last_changed: float | None, *, minimum: float, maximum: float) -> float:
    """The adaptive schedule: half the quiet time before the last fetch, clamped to ``[minimum, maximum]``.

    A repository last seen to change 8 hours before its last fetch is fetched again about 4 hours later; one that
    changed just before is fetched again after ``minimum``. With no change ever observed, ``minimum``.
    """
    if last_changed is None:
        return minimum
    quiet = max(0.0, last_fetched - last_changed)
    return min(max(quiet / 2, minimum), maximum)


def age_limit(settings: Settings, row: Row, fresh: Freshness | None, max_age: MaxAge) -> float | None:
    """Seconds a copy of ``row`` may be old for this call (None: any age)."""
    if max_age is not USE_TTL:
        return max_age
    if settings.adaptive:
        return fetch_interval(
            row.last_fetched or 0.0,
            fresh.last_changed if fresh is not None else None,
            minimum=settings.fetch_ttl_min,
            maximum=settings.fetch_ttl_max,
        )
    return settings.fetch_ttl_seconds


def needs_fetch(row: Row, fresh: Freshness | None, started: float, limit: float | None, now: float) -> bool:
    """Whether a request that began at ``started`` must fetch ``row`` (see the module docstring for the rule)."""
    if limit is None:
        return False
    if fresh is not None and fresh.marked_stale:
        return True
    if row.last_fetched is None:
        return True
    if row.last_fetched >= started:
        return False
    return now - row.last_fetched >= limit


def is_fresh(row: Row, started: float, fetch_ttl: float) -> bool:
    """Whether ``row`` needs no fetch for a request that began at ``started`` under a fixed ``fetch_ttl``."""
    return not needs_fetch(row, None, started, fetch_ttl, time.time())


def refresh(
    context: Context,
    consequences: Consequences,
    hold: SharedHold,
    request: Request,
    progress: gitops.ProgressCallback | None,
    background: Background | None = None,
) -> tuple[Fetched | None, bool]:
    """Fetch the held mirror unless it is fresh enough for ``request``; returns (the fetch made, stale).

    A fetch made is recorded (:meth:`Consequences.fetched`); the caller settles it once it has released the hold.
    Under ``refresh="background"`` (and with ``background`` given), a due copy at most ``max_stale`` past its age
    limit is handed out at once and the fetch is left to ``background``; the call then returns (None, False).

    Raises:
        FetchError: the fetch failed and ``on_fetch_error="raise"`` (or the request is strict).
        LockTimeoutError: another worker's fetch took longer than the time left.
    """
    settings = context.settings
    index = context.index
    parsed = hold.url
    row, fresh = index.get_with_freshness(hold.key)
    if row is None:
        row = adopt(context, hold)
        fresh = index.freshness(hold.key)
    limit = age_limit(settings, row, fresh, request.max_age)
    now = time.time()
    if not needs_fetch(row, fresh, request.started, limit, now):
        return None, False
    if (
        background is not None
        and settings.refresh == "background"
        and request.max_age is USE_TTL
        and row.last_fetched is not None
        and (settings.max_stale is None or now - row.last_fetched - (limit or 0.0) <= settings.max_stale)
    ):
        background.submit(hold, request.started, progress)
        return None, False
    fetch_hold = context.layout.hold_fetch(hold.url, max(0.0, request.deadline - time.monotonic()))
    if fetch_hold is None:
        raise LockTimeoutError(parsed.url, settings.lock_timeout, "fetch")
    with fetch_hold:
        row = index.get(hold.key) or row
        if not needs_fetch(row, index.freshness(hold.key), request.started, limit, time.time()):
            return None, False  # coalesced with a fetch that began after the mark and finished after the request
        try:
            fetched = fetch_locked(context, consequences, fetch_hold, progress, previous_size=row.size_bytes)
        except FetchError as exc:
            context.index.count(Counter.FETCH_ERRORS)
            refused = isinstance(exc, AuthenticationError)
            if settings.on_fetch_error == "raise" or request.strict:
                raise
            if refused and settings.on_fetch_error == "warn_except_auth":
                raise
            # An authentication failure's detail begins "authentication failed": the log and the warning name it.
            context.events.stale_served(parsed.url, hold.key, exc.detail)
            warn_caller(f"serving a stale copy: {exc}")
            return None, True
    return fetched, False


def fetch_locked(
    context: Context,
    consequences: Consequences,
    fetch: FetchHold,
    progress: gitops.ProgressCallback | None,
    *,
    previous_size: int,
    background: bool = False,
) -> Fetched:
    """Fetch under the held fetch lock; a success is recorded by :meth:`Consequences.fetched`.

    The outcome is reported to :attr:`Context.events` either way (a :class:`~repocache.events.FetchEvent`).
    A ``background`` fetch runs git out of process (see :func:`~repocache.gitops.fetch_mirror`'s ``prefer_cli``).

    Returns:
        The fetch made, for its caller to settle once it has released the repository.

    Raises:
        FetchError: the fetch failed (nothing is recorded in the index).
    """
    mirror = context.layout.mirror(fetch.key)
    started = time.time()
    clock = time.perf_counter()
    # libgit2 says which refs it moved; for the git CLI, the refs are compared before and after.
    reports = gitops.fetch_reports_moves(fetch.url, context.git, prefer_cli=background)
    before = None if reports else gitops.ref_tips(mirror)
    try:
        moved = fetch_with_retry(context, fetch, progress, prefer_cli=background)
    except FetchError as exc:
        seconds = time.perf_counter() - clock
        if isinstance(exc, AuthenticationError):
            context.index.count(Counter.AUTH_ERRORS)
        context.events.fetched(fetch.url.url, fetch.key, seconds, previous_size, 0, error=exc.detail)
        raise
    if moved is None:
        moved = before is None or gitops.ref_tips(mirror) != before
    return consequences.fetched(
        fetch, started=started, moved=moved, seconds=time.perf_counter() - clock, previous_size=previous_size
    )


def fetch_with_retry(
    context: Context, fetch: FetchHold, progress: gitops.ProgressCallback | None, *, prefer_cli: bool = False
) -> bool | None:
    """Fetch; a fetch that failed quickly is tried once more. Returns whether refs moved, when git says so.

    A live upstream can refuse a fetch that raced with a push: over smart HTTP the refs are advertised in one
    request and wanted in the next, and upload-pack refuses a want whose branch was deleted in between. A dead
    upstream fails fast too (connection refused), so the retry costs little; a fetch that failed slowly (a
    timeout) is not retried, so a stalled upstream does not hold the caller twice as long, and neither is an
    :class:`~repocache.errors.AuthenticationError` (the same credentials would be refused again).
    """
    parsed = fetch.url
    mirror = context.layout.mirror(fetch.key)
    attempt_started = time.monotonic()
    try:
        return gitops.fetch_mirror(parsed, mirror, context.git, progress=progress, prefer_cli=prefer_cli)
    except FetchError as exc:
        if isinstance(exc, AuthenticationError) or time.monotonic() - attempt_started > FETCH_RETRY_WITHIN:
            raise
        context.events.fetch_retried(parsed.url, exc.detail)
        return gitops.fetch_mirror(parsed, mirror, context.git, progress=progress, prefer_cli=prefer_cli)


def adopt(context: Context, hold: SharedHold) -> Row:
    """Index a held mirror found on disk without a row (a process died between its rename and the row)."""
    parsed = hold.url
    size = gitops.disk_usage(context.layout.mirror(hold.key))
    context.index.put(hold.key, parsed.url, size, time.time(), counter=None, fetched=False)
    context.events.adopted(parsed.url)
    row = context.index.get(hold.key)
    assert row is not None
    return row


class Background:
    """The background fetches of one cache (``refresh="background"``): a small pool of threads.

    A hit hands its repository over with :meth:`submit`, which takes, without waiting, a second shared hold on the
    repository (so eviction, which only *tries* the exclusive lock, skips it until the fetch is done) and the
    repository's fetch lock (so there is one fetch in flight per repository across every process; when another
    worker holds it, nothing is queued). Both are released when the fetch ends or is cancelled. A failed fetch is
    counted (``fetch_errors``) and logged; no warning is issued, as the caller that started it has moved on.
    Every fetch runs under one :class:`~repocache.cancel.CancelToken`, which :meth:`close` cancels once its
    ``timeout`` has passed: git is killed and the fetch unwinds like a failed one, but is not counted as failed.
    """

    def __init__(self, context: Context, consequences: Consequences, *, workers: int = BACKGROUND_WORKERS) -> None:
        self._context = context
        self._consequences = consequences
        self._workers = workers
        self._lock = threading.RLock()
        self._executor: concurrent.futures.ThreadPoolExecutor | None = None
        self._pid = os.getpid()
        self._pending: dict[concurrent.futures.Future[None], tuple[SharedHold, FetchHold]] = {}
        self._in_flight: set[str] = set()  # keys of the pending fetches, read without the lock by submit
        self._token = cancel.CancelToken()
        self._lifecycle = Lifecycle("background pool")

    def submit(self, hold: SharedHold, started: float, progress: gitops.ProgressCallback | None) -> bool:
        """Queue a fetch of the held repository for a request that began at ``started``.

        Returns:
            True if a fetch was queued; False if another fetch of it is in flight or the pool is closed.
        """
        if hold.key in self._in_flight and self._pid == os.getpid():  # this process's fetch of it is under way
            return False
        layout = self._context.layout
        shared = layout.hold_shared(hold.url, 0)  # never fails while the caller's own shared hold is held
        if shared is None:
            return False
        fetch = layout.hold_fetch(hold.url, 0)
        if fetch is None:
            shared.release()
            return False
        with self._lock:
            if not self._lifecycle.is_open:
                fetch.release()
                shared.release()
                return False
            executor = self._pool()
            future = executor.submit(self._run, shared, fetch, started, progress)
            self._pending[future] = (shared, fetch)
            self._in_flight.add(hold.key)
            future.add_done_callback(self._done)
        return True

    def _pool(self) -> concurrent.futures.ThreadPoolExecutor:
        if self._executor is None or self._pid != os.getpid():
            # A forked child inherits neither the parent's threads nor its queued work.
            self._pid = os.getpid()
            self._pending = {}
            self._in_flight = set()
            self._executor = concurrent.futures.ThreadPoolExecutor(
                max_workers=self._workers, thread_name_prefix="repocache-refresh"
            )
        return self._executor

    def _done(self, future: concurrent.futures.Future[None]) -> None:
        with self._lock:
            holds = self._pending.pop(future, None)
            if holds is not None:
                self._in_flight.discard(holds[0].key)
        if holds is not None:  # released already by _run, unless the future was cancelled before it started
            for held in reversed(holds):
                held.release()

    def _run(
        self, shared: SharedHold, fetch: FetchHold, started: float, progress: gitops.ProgressCallback | None
    ) -> None:
        context = self._context
        parsed = shared.url
        fetched = None
        try:
            with cancel.scope(self._token), shared, fetch:
                fetched = self._fetch(shared, fetch, started, progress)
        except cancel.Cancelled:
            context.events.background_fetch_cancelled(parsed.url)
        except Exception:  # a background thread has no caller to raise to: say so in the log
            logger.exception("background fetch of %s failed unexpectedly", parsed.url)
        try:
            self._consequences.settle(fetched)  # holds released: republish and maintain as a foreground fetch does
        except Exception:  # pragma: no cover - settle logs its own failures; this is the thread's last guard
            logger.exception("what follows the background fetch of %s failed unexpectedly", parsed.url)

    def _fetch(
        self, shared: SharedHold, fetch: FetchHold, started: float, progress: gitops.ProgressCallback | None
    ) -> Fetched | None:
        """The fetch itself, under both holds, unless another worker's fetch made it needless."""
        context = self._context
        if not context.layout.mirror(shared.key).is_dir():
            return None
        row = context.index.get(shared.key)
        if row is None:
            return None
        fresh = context.index.freshness(shared.key)
        if not needs_fetch(row, fresh, started, 0.0, time.time()):
            return None  # another worker's fetch finished since the hit
        try:
            return fetch_locked(
                context, self._consequences, fetch, progress, previous_size=row.size_bytes, background=True
            )
        except FetchError as exc:
            context.index.count(Counter.FETCH_ERRORS)
            context.events.background_fetch_failed(shared.url.url, exc.detail)
            return None

    def join(self, timeout: float) -> bool:
        """Wait up to ``timeout`` seconds for the queued and running fetches; True when none is left."""
        with self._lock:
            pending = list(self._pending)
        _done, running = concurrent.futures.wait(pending, timeout=timeout)
        return not running

    def close(self, timeout: float) -> bool:
        """Cancel the fetches not started yet, wait up to ``timeout`` seconds for the running ones, then cancel them.

        A cancelled fetch kills its git process and releases its holds within a fraction of a second; this waits
        up to :data:`CANCEL_GRACE` more seconds for that.

        Returns:
            True if no background fetch is left running.
        """
        with self._lock:
            self._lifecycle.close()
            executor, self._executor = self._executor, None
            pending = list(self._pending)
        if executor is None:
            return True
        for future in pending:
            future.cancel()
        _done, running = concurrent.futures.wait(pending, timeout=timeout)
        if running:
            self._token.cancel()
            _done, running = concurrent.futures.wait(running, timeout=CANCEL_GRACE)
        executor.shutdown(wait=False, cancel_futures=True)
        if running:
            self._context.events.background_fetches_left(len(running), timeout + CANCEL_GRACE)
        return not running
