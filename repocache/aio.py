"""AsyncRepoCache: the cache for asyncio applications, never blocking the event loop.

Every call runs the synchronous :class:`~repocache.RepoCache` in a bounded pool of worker threads; the event loop
only waits on futures. One case is taken on the loop instead: a ``checkout`` (or ``checkout_and_read``) that is a
plain hit, whose every step is a try that cannot wait (:meth:`Acquirer.try_hit
<repocache.acquire.Acquirer.try_hit>`: the repository's shared lock tried once, one SQLite read with no busy wait,
no fetch due); whenever a step would wait or work, the call goes to a worker thread as any other, holding nothing.
Leaving such a block is an unlock on the loop, or, when a fetch's consequences or the budget need work, a release
thread. Cancelling a call (``task.cancel()``, ``asyncio.timeout``, a ``TaskGroup`` failing) cancels
the work in its thread: git is killed, a clone's staging directory removed, its byte reservation dropped and every
lock released, exactly as when the call fails. The awaiting task sees ``CancelledError`` only once that is done, so
nothing of a cancelled call is still running or held when the cancellation is delivered.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import contextvars
import logging
import os
import threading
from collections.abc import AsyncIterator, Callable, Iterable, Sequence
from types import TracebackType
from typing import TYPE_CHECKING, Any, TypeVar

from repocache import cancel, uses
from repocache.acquire import Acquired, Acquirer
from repocache.cache import RepoCache
from repocache.checkout import Checkout, Worktree
from repocache.errors import ConfigError
from repocache.events import Event, EventHook
from repocache.gitops import ProgressCallback
from repocache.keys import normalize_url
from repocache.lifecycle import Lifecycle
from repocache.models import Entry, MaintenanceReport, Problem, Progress, Stats
from repocache.partial import USE_CONFIGURED, FilterArg
from repocache.refresh import USE_TTL, MaxAge
from repocache.settings import CacheOptions, Settings

if TYPE_CHECKING:
    from typing_extensions import Unpack

    from repocache.cold.manifest import Manifest

__all__ = ["AsyncRepoCache"]

T = TypeVar("T")
logger = logging.getLogger("repocache")

_RELEASE_WORKERS = 2


class AsyncRepoCache:
    """An asyncio front for :class:`~repocache.RepoCache`: the same calls, awaited, with clean cancellation.

    <!-- example: async -->
    ```python
    async with repocache.AsyncRepoCache(max_bytes="20GB", fetch_ttl=60) as cache:
        async with cache.checkout("https://github.com/pallets/click") as co:
            print(co.path, co.source)
        entry = await cache.ensure("https://github.com/pallets/flask")
    ```

    Every guarantee of :class:`~repocache.RepoCache` holds, with threads, processes and other ``AsyncRepoCache``
    objects alike: one clone for any number of concurrent misses, nothing evicted while a block holds it, the budget.

    Blocking work (git, the index, locks, the disk, the cold store) runs in a pool of at most ``max_workers``
    threads; calls beyond that wait for a free thread. A warm hit that needs no fetch and whose lock is free is
    held on the event loop without a thread (a few system calls on small files and one SQLite read that does not
    wait: about 0.1 ms of CPU where the thread hops cost 0.35-0.4 ms); a lock held exclusively, a miss, a fetch due
    or a busy index send it to a worker thread. Leaving a ``checkout`` or ``worktree`` block releases the
    hold in a separate small pool, so a block can always end even when every worker is waiting for a repository
    that a block holds.

    Cancellation takes effect at the next point where the work checks for it: within 50 ms while git runs or a
    lock is awaited, at the next transfer report of a libgit2 fetch, at the next file of a cold-store restore. A
    libgit2 fetch from an upstream that has gone completely silent notices only when its socket times out
    (``idle_timeout``).

    Progress callbacks (the ``progress`` setting and the ``progress=`` argument) are called on the event loop.
    Opening the cache (creating the root, the index) happens in the constructor, synchronously: it takes a few
    milliseconds, so open it at start-up.
    """

    def __init__(
        self,
        root: RepoCache | str | os.PathLike[str] | None = None,
        *,
        max_workers: int = 16,
        progress: ProgressCallback | None = None,
        **options: Unpack[CacheOptions],
    ) -> None:
        """Open a cache, or wrap one already open.

        Args:
            root: the cache directory (as for :class:`~repocache.RepoCache`), or a :class:`~repocache.RepoCache`
                to wrap; closing this object closes it. A wrapped cache's own ``progress`` setting is called in
                the worker threads.
            max_workers: the most blocking operations run at once (threads).
            progress: default progress callback, called on the event loop with a :class:`~repocache.Progress`.
            **options: the settings :class:`~repocache.RepoCache` takes (``max_bytes``, ``pins``, ``fetch_ttl``,
                ``cold_store``, ``maintenance=Maintenance(...)``, ...; see :mod:`repocache.settings`); none when
                ``root`` is a RepoCache.

        Raises:
            ConfigError: a setting is invalid, or settings were given with a RepoCache to wrap.
        """
        if isinstance(max_workers, bool) or not isinstance(max_workers, int) or max_workers < 1:
            raise ConfigError(f"max_workers={max_workers!r} is not accepted; expected an int of at least 1")
        if progress is not None and not callable(progress):
            raise ConfigError(f"progress={progress!r} is not callable; expected a function taking a Progress")
        if isinstance(root, RepoCache):
            if options:
                raise ConfigError(
                    f"settings {sorted(options)} cannot be given with a RepoCache to wrap; set them on the RepoCache"
                )
            self.cache = root
        else:
            self.cache = RepoCache(root, **options)
        self.max_workers = max_workers
        self.progress = progress
        self._workers = concurrent.futures.ThreadPoolExecutor(max_workers, thread_name_prefix="repocache")
        self._releasers = concurrent.futures.ThreadPoolExecutor(
            _RELEASE_WORKERS, thread_name_prefix="repocache-release"
        )
        self._lifecycle = Lifecycle("AsyncRepoCache")

    # -- lifecycle -------------------------------------------------------------------------------------------

    async def close(self) -> None:
        """Wait for the calls in flight, then close the cache; further calls raise :class:`RepoCacheError`.

        Closing twice is a no-op. A ``checkout`` or ``worktree`` block still open may be left afterwards: its
        hold is released all the same.
        """
        if not self._lifecycle.close():
            return

        def shut_down() -> None:
            self._workers.shutdown(wait=True)
            self._releasers.shutdown(wait=True)
            self.cache.close()

        await _uncancellable(asyncio.get_running_loop().run_in_executor(None, shut_down))

    async def __aenter__(self) -> AsyncRepoCache:
        return self

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        await self.close()

    def __repr__(self) -> str:
        return f"AsyncRepoCache({self.cache!r}, max_workers={self.max_workers})"

    @property
    def settings(self) -> Settings:
        """Every setting of the cache, validated; as :attr:`RepoCache.settings`."""
        return self.cache.settings

    # -- holding -------------------------------------------------------------------------------------------------

    @contextlib.asynccontextmanager
    async def checkout(
        self,
        url: str | os.PathLike[str],
        *,
        progress: ProgressCallback | None = None,
        max_age: MaxAge = USE_TTL,
        filter: FilterArg = USE_CONFIGURED,
    ) -> AsyncIterator[Checkout]:
        """Hold the repository's bare mirror for the ``async with`` block, cloning or refreshing it first.

        As :meth:`RepoCache.checkout <repocache.RepoCache.checkout>`. ``co.repo`` opens a pygit2 repository
        on the calling thread: run long walks over it in a thread (``asyncio.to_thread``). A plain hit is held
        on the event loop without a thread (see the class docstring).

        Yields:
            A :class:`~repocache.Checkout`; no process evicts the mirror until the block exits.

        Raises:
            InvalidURLError: the URL cannot be cached.
            CloneError: a miss could not be cloned.
            FetchError: the fetch failed and ``on_fetch_error="raise"``.
            BudgetError: the repository cannot fit in the budget.
            LockTimeoutError: another worker held the repository longer than ``lock_timeout``.
        """
        async with self._reader(url, _read_nothing, True, progress, max_age, filter) as (checkout, _nothing):
            yield checkout

    @contextlib.asynccontextmanager
    async def checkout_and_read(
        self,
        url: str | os.PathLike[str],
        read: Callable[[Checkout], T],
        *,
        read_on_loop: bool = False,
        progress: ProgressCallback | None = None,
        max_age: MaxAge = USE_TTL,
        filter: FilterArg = USE_CONFIGURED,
    ) -> AsyncIterator[tuple[Checkout, T]]:
        """As :meth:`checkout`, with ``read(checkout)`` called once the mirror is held, in the hold's thread.

        A hold taken in a worker thread calls ``read`` there: one thread hop where ``checkout`` followed by
        ``asyncio.to_thread(read, co)`` takes two (each costs a wake-up of a worker and a handover of the GIL,
        which a server answering many small requests feels). A plain hit, held on the event loop, calls ``read``
        in a worker thread, unless ``read_on_loop`` says that it may run on the loop.

        Args:
            url: the repository.
            read: what to read from the held mirror.
            read_on_loop: ``read`` is quick and never waits (it reads a few small files, such as the refs), so a
                hit held on the event loop calls it there: no thread at all.
            progress: as for :meth:`checkout`.
            max_age: as for :meth:`checkout`.
            filter: as for :meth:`checkout`.

        Yields:
            The :class:`~repocache.Checkout` and what ``read`` returned; no process evicts the mirror until the
            block exits.

        Raises:
            RepoCacheError: whatever :meth:`checkout` raises.
            Exception: what ``read`` raised (the hold is released first).
        """
        async with self._reader(url, read, read_on_loop, progress, max_age, filter) as held:
            yield held

    @contextlib.asynccontextmanager
    async def worktree(
        self,
        url: str | os.PathLike[str],
        ref: str = "HEAD",
        *,
        path: str | os.PathLike[str] | None = None,
        submodules: bool = False,
        progress: ProgressCallback | None = None,
        max_age: MaxAge = USE_TTL,
        filter: FilterArg = USE_CONFIGURED,
    ) -> AsyncIterator[Worktree]:
        """A temporary working tree of the repository at ``ref``, removed when the ``async with`` block exits.

        As :meth:`RepoCache.worktree <repocache.RepoCache.worktree>`.

        Yields:
            A :class:`~repocache.Worktree` with ``path`` and ``commit``.

        Raises:
            RefNotFoundError: ``ref`` does not exist in the repository (after the fetch).
            GitError: the checkout failed.
            RepoCacheError: whatever :meth:`checkout` raises (``InvalidURLError``, ``CloneError``, ``FetchError``,
                ``BudgetError``, ``LockTimeoutError``).
        """
        manager = self.cache.worktree(
            url,
            ref,
            path=path,
            submodules=submodules,
            progress=self._on_loop(progress),
            max_age=max_age,
            filter=filter,
        )
        async with self._held(manager) as worktree:
            held = uses.begin(self.cache.root, worktree.key or normalize_url(worktree.url).key, worktree.url)
            try:
                yield worktree
            finally:
                held.close()

    @contextlib.asynccontextmanager
    async def _held(self, manager: contextlib.AbstractContextManager[T]) -> AsyncIterator[T]:
        """Enter ``manager`` in a worker thread and exit it in a release thread, whatever happens in between."""

        def leave(_value: T) -> None:
            manager.__exit__(None, None, None)

        value = await self._run(manager.__enter__, abandoned=leave)
        try:
            yield value
        finally:
            # The hold is released and the budget enforced even if the task is being cancelled meanwhile.
            await _uncancellable(self._release(lambda: leave(value)))

    @contextlib.asynccontextmanager
    async def _reader(
        self,
        url: str | os.PathLike[str],
        read: Callable[[Checkout], T],
        read_on_loop: bool,
        progress: ProgressCallback | None,
        max_age: MaxAge,
        filter: FilterArg,
    ) -> AsyncIterator[tuple[Checkout, T]]:
        """Hold ``url`` as a reader and read it: a plain hit on the loop (:meth:`Acquirer.try_hit
        <repocache.acquire.Acquirer.try_hit>`), anything else in a worker thread; released on the loop when that
        is only an unlock (:meth:`Acquirer.settled_at_once <repocache.acquire.Acquirer.settled_at_once>`), else
        in a release thread."""
        self._lifecycle.check()
        acquirer, parsed, age = self.cache._reader(url, filter, max_age)
        hit = acquirer.try_hit(parsed, age)
        if hit is not None:
            acquired = hit
            use = uses.begin(self.cache.root, parsed.key, parsed.url)  # in the awaiting task's context
            try:
                checkout = hit.checkout
                value = read(checkout) if read_on_loop else await self._run(lambda: read(checkout))
            except BaseException:
                use.close()
                await self._let_go(acquirer, hit)
                raise
        else:
            callback = self._on_loop(progress) or self.cache.progress

            def enter() -> tuple[Acquired, T]:
                taken = acquirer.acquire(parsed, callback, age)
                try:
                    with contextlib.closing(uses.begin(self.cache.root, parsed.key, parsed.url)):
                        return taken, read(taken.checkout)
                except BaseException:
                    acquirer.release(taken)
                    raise

            def abandon(pair: tuple[Acquired, T]) -> None:
                acquirer.release(pair[0])

            acquired, value = await self._run(enter, abandoned=abandon)
            use = uses.begin(self.cache.root, parsed.key, parsed.url)  # in the awaiting task's context
        try:
            yield acquired.checkout, value
        finally:
            use.close()
            # The hold is released and the budget enforced even if the task is being cancelled meanwhile.
            await self._let_go(acquirer, acquired)

    async def _let_go(self, acquirer: Acquirer, acquired: Acquired) -> None:
        """Release a hold: the unlock on the loop, what may follow (a fetch's consequences, the budget) in a release
        thread, awaited to its end even through a cancellation."""
        acquirer.let_go(acquired)
        if not acquirer.settled_at_once(acquired):
            await _uncancellable(self._release(lambda: _discard(acquirer.settle(acquired))))

    # -- calls ---------------------------------------------------------------------------------------------------

    def subscribe(self, hook: EventHook) -> Callable[[], None]:
        """Call ``hook`` with every :class:`~repocache.events.Event` of this cache; as :meth:`RepoCache.subscribe`.

        Hooks run in the thread that caused the event, a worker thread or, for a hit held on the event loop (its
        :class:`~repocache.events.HitEvent`) and :meth:`report`, the loop itself, so they must be quick and never
        wait; hand what they receive to the loop with ``loop.call_soon_threadsafe`` if it must be handled there.

        Returns:
            A function that unsubscribes the hook.
        """
        return self.cache.subscribe(hook)

    def report(self, event: Event) -> None:
        """Hand ``event`` to this cache's hooks and metrics; as :meth:`RepoCache.report` (quick: not awaited)."""
        self.cache.report(event)

    async def ensure(
        self,
        url: str | os.PathLike[str],
        *,
        progress: ProgressCallback | None = None,
        max_age: MaxAge = USE_TTL,
        filter: FilterArg = USE_CONFIGURED,
    ) -> Entry:
        """Clone or refresh the repository now without holding it; as :meth:`RepoCache.ensure`.

        Returns:
            The repository's entry after the operation.
        """
        callback = self._on_loop(progress)
        return await self._run(lambda: self.cache.ensure(url, progress=callback, max_age=max_age, filter=filter))

    async def refresh(
        self,
        url: str | os.PathLike[str],
        *,
        progress: ProgressCallback | None = None,
        filter: FilterArg = USE_CONFIGURED,
    ) -> Entry:
        """Fetch the repository now, whatever its age; as :meth:`RepoCache.refresh`.

        Returns:
            The repository's entry after the fetch.
        """
        callback = self._on_loop(progress)
        return await self._run(lambda: self.cache.refresh(url, progress=callback, filter=filter))

    async def mark_stale(self, url: str | os.PathLike[str]) -> bool:
        """Mark the repository stale for its next hit in any process; as :meth:`RepoCache.mark_stale`.

        Returns:
            True if the repository is in the cache.
        """
        return await self._run(lambda: self.cache.mark_stale(url))

    async def info(self, url: str | os.PathLike[str], *, filter: FilterArg = USE_CONFIGURED) -> Entry | None:
        """The entry of the mirror that would serve the repository if it is on disk, else None; no network, no
        recency update. As :meth:`RepoCache.info`."""
        return await self._run(lambda: self.cache.info(url, filter=filter))

    async def fetch_missing(
        self,
        url: str | os.PathLike[str],
        *,
        oids: Iterable[str] = (),
        commit: str | None = None,
        paths: Sequence[str] | None = None,
        filter: FilterArg = USE_CONFIGURED,
        progress: ProgressCallback | None = None,
    ) -> int:
        """Fetch into a partial mirror what its filter left out; as :meth:`RepoCache.fetch_missing`.

        Returns:
            The number of objects asked from upstream.
        """
        callback = self._on_loop(progress)
        return await self._run(
            lambda: self.cache.fetch_missing(
                url, oids=oids, commit=commit, paths=paths, filter=filter, progress=callback
            )
        )

    async def entries(self) -> list[Entry]:
        """Every repository on disk, most recently used first."""
        return await self._run(self.cache.entries)

    async def evict(
        self, url: str | os.PathLike[str], *, force: bool = False, filter: FilterArg = USE_CONFIGURED
    ) -> bool:
        """Remove the repository from disk now; as :meth:`RepoCache.evict`.

        Returns:
            True if it was evicted; False if it was not on disk, is held, or is pinned and ``force`` is False.
        """
        return await self._run(lambda: self.cache.evict(url, force=force, filter=filter))

    async def enforce(self) -> list[Entry]:
        """Evict least recently used repositories until the budget holds; as :meth:`RepoCache.enforce`.

        Returns:
            The entries evicted, least recently used first.
        """
        return await self._run(self.cache.enforce)

    async def stats(self) -> Stats:
        """Counters shared by all processes using this root, and the bytes used."""
        return await self._run(self.cache.stats)

    async def verify(self, repair: bool = False) -> list[Problem]:
        """Compare the index with the disk; as :meth:`RepoCache.verify`.

        Returns:
            The problems found, each with ``repaired`` set when it was fixed.
        """
        return await self._run(lambda: self.cache.verify(repair))

    async def maintain(
        self, url: str | os.PathLike[str] | None = None, *, prune: bool = False, filter: FilterArg = USE_CONFIGURED
    ) -> list[MaintenanceReport]:
        """Maintain one cached repository (or every one) now; as :meth:`RepoCache.maintain`.

        Returns:
            One report per repository maintained (empty when ``url`` is not cached).
        """
        return await self._run(lambda: self.cache.maintain(url, prune=prune, filter=filter))

    async def publish(
        self,
        url: str | os.PathLike[str],
        *,
        progress: ProgressCallback | None = None,
        filter: FilterArg = USE_CONFIGURED,
    ) -> Manifest:
        """Upload the repository's mirror to the cold store now; as :meth:`RepoCache.publish`.

        Returns:
            The store's manifest of the repository.
        """
        callback = self._on_loop(progress)
        return await self._run(lambda: self.cache.publish(url, progress=callback, filter=filter))

    async def cold_entries(self) -> list[Manifest]:
        """The manifests in the cold store, newest first; as :meth:`RepoCache.cold_entries`."""
        return await self._run(self.cache.cold_entries)

    async def prune_cold(
        self, *, older_than: float | None = None, keep_bytes: int | str | None = None
    ) -> list[Manifest]:
        """Delete artifacts from the cold store; as :meth:`RepoCache.prune_cold`.

        Returns:
            The manifests deleted, oldest first.
        """
        return await self._run(lambda: self.cache.prune_cold(older_than=older_than, keep_bytes=keep_bytes))

    # -- machinery ---------------------------------------------------------------------------------------------

    def _on_loop(self, callback: ProgressCallback | None) -> ProgressCallback | None:
        """A progress callback that hands each report to the running event loop."""
        target = callback or self.progress
        if target is None:
            return None
        loop = asyncio.get_running_loop()

        def deliver(report: Progress) -> None:
            with contextlib.suppress(RuntimeError):  # the loop was closed meanwhile: nobody is listening
                loop.call_soon_threadsafe(target, report)

        return deliver

    def _submit(
        self, executor: concurrent.futures.Executor, function: Callable[[], T], *, token: cancel.CancelToken | None
    ) -> concurrent.futures.Future[T]:
        def run() -> T:
            if token is None:
                return function()
            with cancel.scope(token):
                return function()

        # In a copy of the awaiting task's context: the call sees what the task holds (repocache.uses).
        return executor.submit(contextvars.copy_context().run, run)

    def _release(self, function: Callable[[], None]) -> concurrent.futures.Future[None]:
        """Run ``function`` (leaving a block) in a release thread, or in a thread of its own after :meth:`close`."""
        try:
            return self._releasers.submit(function)
        except RuntimeError:  # closed while the block was open: the hold must still be released
            future: concurrent.futures.Future[None] = concurrent.futures.Future()

            def run() -> None:
                try:
                    function()
                except BaseException as exc:
                    future.set_exception(exc)
                else:
                    future.set_result(None)

            threading.Thread(target=run, name="repocache-release-late").start()
            return future

    async def _run(self, function: Callable[[], T], *, abandoned: Callable[[T], None] | None = None) -> T:
        """Run ``function`` in a worker thread; if the caller is cancelled, cancel it there and wait for it.

        Args:
            function: the blocking call.
            abandoned: run (in a release thread) on the result of a call that completed although the caller was
                cancelled, e.g. to release a hold nobody will use.
        """
        self._lifecycle.check()
        token = cancel.CancelToken()
        future = self._submit(self._workers, function, token=token)
        waiter = asyncio.wrap_future(future)
        try:
            return await asyncio.shield(waiter)
        except asyncio.CancelledError:
            if not future.cancel():  # already running (or done): ask it to stop, and wait until it has
                token.cancel()
                await _settle(waiter)
                if waiter.cancelled() or waiter.exception() is not None:
                    raise  # it stopped; its own cleanup (finally blocks) has run in the thread
                if abandoned is not None:
                    value = waiter.result()
                    released = asyncio.wrap_future(self._release(lambda: abandoned(value)))
                    await _settle(released)
                    if not released.cancelled() and released.exception() is not None:
                        logger.warning("releasing what a cancelled call left failed: %s", released.exception())
            raise


def _read_nothing(_checkout: Checkout) -> None:
    return None


def _discard(_value: object) -> None:
    return None


async def _settle(future: asyncio.Future[Any]) -> bool:
    """Wait until ``future`` is done, through cancellations of the caller; True if there were any."""
    cancelled = False
    while not future.done():
        try:
            await asyncio.wait([future])
        except asyncio.CancelledError:
            cancelled = True
    return cancelled


async def _uncancellable(awaitable: asyncio.Future[T] | concurrent.futures.Future[T]) -> T:
    """Await ``awaitable`` to its end even if the caller is cancelled meanwhile; then deliver the cancellation."""
    future = asyncio.wrap_future(awaitable) if isinstance(awaitable, concurrent.futures.Future) else awaitable
    if await _settle(future):
        if not future.cancelled():
            future.exception()  # retrieved, so asyncio does not report it as never retrieved
        raise asyncio.CancelledError
    return future.result()
