"""AsyncRepoCache on a real event loop: the sync guarantees kept, the loop never blocked, cancellation clean."""

from __future__ import annotations

import asyncio
import subprocess
import sys
import threading
import time
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import psutil
import pytest
import pytest_asyncio

from repocache import AsyncRepoCache, Checkout, ConfigError, Progress, RepoCache, RepoCacheError, normalize_url
from repocache.index import Index
from repocache.testing import GitDaemon, SmartHTTPServer, UpstreamFactory
from tests.helpers import assert_consistent, key_of, upload_packs

pytestmark = [pytest.mark.asyncio, pytest.mark.timeout(120)]


@pytest.fixture
def slow_http(served_dir: Path) -> Iterator[SmartHTTPServer]:
    """Smart HTTP that waits a minute before answering each request (set ``delay`` to 0 to make it fast)."""
    with SmartHTTPServer(served_dir, delay=60.0) as server:
        yield server


@pytest_asyncio.fixture
async def acache(cache_root: Path) -> AsyncIterator[AsyncRepoCache]:
    """An AsyncRepoCache in a fresh directory; after the test, the index must agree with the disk."""
    async with AsyncRepoCache(cache_root) as cache:
        yield cache
        assert_consistent(cache.cache)


def _git_processes(*markers: str) -> list[psutil.Process]:
    """Our descendant processes whose command line mentions one of ``markers`` (a cache root, a server port)."""
    found = []
    for process in psutil.Process().children(recursive=True):
        try:
            command = " ".join(process.cmdline())
        except (psutil.NoSuchProcess, psutil.ZombieProcess, psutil.AccessDenied):
            continue
        if any(marker in command for marker in markers):
            found.append(process)
    return found


def _exclusive_lock_is_free(lock_file: Path) -> bool:
    """Whether another process can take the repository's exclusive lock right now (as eviction does)."""
    probe = (
        "import fcntl, os, sys\n"
        "fd = os.open(sys.argv[1], os.O_RDWR | os.O_CREAT)\n"
        "try:\n    fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)\nexcept BlockingIOError:\n    sys.exit(1)\n"
    )
    return subprocess.run([sys.executable, "-c", probe, str(lock_file)], check=False).returncode == 0


async def _until(condition: object, timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    while not condition():  # type: ignore[operator]
        assert time.monotonic() < deadline, "condition not met in time"
        await asyncio.sleep(0.02)


async def test_checkout_clones_then_hits_and_releases_its_hold(
    acache: AsyncRepoCache, served: UpstreamFactory, daemon: GitDaemon
) -> None:
    upstream = served.create("aio-basic")
    url = daemon.url_for(upstream)
    async with acache.checkout(url) as co:
        assert co.source == "clone" and co.fetched
        assert co.path.is_dir()
        assert str(co.repo.head.target) == upstream.resolve("main")
        assert not _exclusive_lock_is_free(acache.cache.root / "locks" / f"{co.key}.lock")
    assert _exclusive_lock_is_free(acache.cache.root / "locks" / f"{co.key}.lock")
    async with acache.checkout(url) as again:
        assert again.source == "hit"


async def test_checkout_and_read_reads_the_held_mirror_in_the_worker_and_releases_on_error(
    acache: AsyncRepoCache, served: UpstreamFactory, daemon: GitDaemon
) -> None:
    """``read`` runs in the hold's worker thread while the mirror is held; its value comes with the checkout; a
    ``read`` that raises leaves nothing held and its error reaches the caller."""
    upstream = served.create("aio-read")
    url = daemon.url_for(upstream)
    seen: list[tuple[str, bool]] = []

    def read(checkout: Checkout) -> str:
        lock = acache.cache.root / "locks" / f"{checkout.key}.lock"
        seen.append((threading.current_thread().name, _exclusive_lock_is_free(lock)))
        return (checkout.path / "HEAD").read_text().strip()

    async with acache.checkout_and_read(url, read) as (co, head):
        assert co.source == "clone" and head == "ref: refs/heads/main"
        assert not _exclusive_lock_is_free(acache.cache.root / "locks" / f"{co.key}.lock")
    assert seen == [(seen[0][0], False)] and seen[0][0].startswith("repocache") and seen[0][0] != "MainThread"
    assert _exclusive_lock_is_free(acache.cache.root / "locks" / f"{co.key}.lock")

    def fails(checkout: Checkout) -> None:
        raise ValueError(f"cannot read {checkout.key}")

    with pytest.raises(ValueError, match="cannot read"):
        async with acache.checkout_and_read(url, fails):
            raise AssertionError("the block must not run")
    assert _exclusive_lock_is_free(acache.cache.root / "locks" / f"{co.key}.lock")
    assert_consistent(acache.cache)


async def test_the_sync_checkout_and_read_holds_while_it_reads_and_releases_on_error(
    acache: AsyncRepoCache, served: UpstreamFactory, daemon: GitDaemon
) -> None:
    """The facades offer the same verbs: ``RepoCache.checkout_and_read`` reads in the caller's thread, held (called
    from a coroutine here only because this module's tests are coroutines)."""
    cache = acache.cache
    url = daemon.url_for(served.create("sync-read"))

    def read(checkout: Checkout) -> tuple[str, bool]:
        lock = cache.root / "locks" / f"{checkout.key}.lock"
        return (checkout.path / "HEAD").read_text().strip(), _exclusive_lock_is_free(lock)

    with cache.checkout_and_read(url, read) as (co, (head, free_while_reading)):
        assert co.source == "clone" and head == "ref: refs/heads/main" and not free_while_reading
    assert _exclusive_lock_is_free(cache.root / "locks" / f"{co.key}.lock")

    def fails(checkout: Checkout) -> None:
        raise ValueError(f"cannot read {checkout.key}")

    with pytest.raises(ValueError, match="cannot read"), cache.checkout_and_read(url, fails):
        raise AssertionError("the block must not run")
    assert _exclusive_lock_is_free(cache.root / "locks" / f"{co.key}.lock")
    assert_consistent(cache)


async def test_eight_concurrent_async_misses_make_one_clone(
    acache: AsyncRepoCache, served: UpstreamFactory, served_dir: Path
) -> None:
    upstream = served.create("aio-stampede")
    upstream.commits(5, size=20_000)
    with SmartHTTPServer(served_dir, delay=0.5) as server:  # slow enough that all eight overlap
        with RepoCache(acache.cache.root.parent / "reference") as reference:
            reference.ensure(server.url_for(served.create("aio-stampede-reference")))
        one_clone = upload_packs(server)
        url = server.url_for(upstream)
        sources: list[str] = []

        async def one() -> None:
            async with acache.checkout(url) as co:
                sources.append(co.source)
                await asyncio.sleep(0.05)

        await asyncio.gather(*(one() for _ in range(8)))
        assert upload_packs(server) == 2 * one_clone  # the reference clone and one more; no waiter fetched
    assert sorted(sources) == ["clone"] + ["hit"] * 7
    stats = await acache.stats()
    assert (stats.clones, stats.fetches, stats.hits) == (1, 0, 7)


async def test_cancelling_a_checkout_during_a_clone_kills_git_and_leaves_nothing(
    acache: AsyncRepoCache, served: UpstreamFactory, slow_http: SmartHTTPServer
) -> None:
    upstream = served.create("aio-cancel-clone")
    url = slow_http.url_for(upstream)
    root = acache.cache.root
    key = key_of(url)
    ticks = 0

    async def hold() -> None:
        async with acache.checkout(url):
            raise AssertionError("the clone cannot finish: the server answers after a minute")

    task = asyncio.create_task(hold())
    await _until(lambda: _git_processes(str(root)))  # git is cloning into staging/
    for _ in range(20):  # the event loop is not blocked by the clone
        await asyncio.sleep(0.01)
        ticks += 1
    started = time.monotonic()
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert time.monotonic() - started < 5  # not the minute the clone would have taken
    assert ticks == 20
    assert _git_processes(str(root), f":{slow_http.port}/") == []
    assert list((root / "staging").iterdir()) == []
    assert list((root / "repos").iterdir()) == []
    assert _exclusive_lock_is_free(root / "locks" / f"{key}.lock")
    index = Index(root / "index.sqlite")
    assert index.reserved_bytes() == 0  # no reservation left for a clone that will not come
    index.close()

    slow_http.delay = 0.0
    async with acache.checkout(url) as co:  # the next checkout of the same repository works
        assert co.source == "clone"


async def test_a_timeout_on_ensure_cancels_the_clone(
    acache: AsyncRepoCache, served: UpstreamFactory, slow_http: SmartHTTPServer
) -> None:
    url = slow_http.url_for(served.create("aio-timeout"))
    started = time.monotonic()
    with pytest.raises(asyncio.TimeoutError):
        await asyncio.wait_for(acache.ensure(url), 0.5)
    assert time.monotonic() - started < 5
    assert _git_processes(str(acache.cache.root), f":{slow_http.port}/") == []
    assert list((acache.cache.root / "staging").iterdir()) == []


async def test_cancelling_a_libgit2_clone_aborts_the_transfer(
    cache_root: Path, served: UpstreamFactory, daemon: GitDaemon, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("REPOCACHE_GIT", "")  # libgit2 for everything: no process to kill, only a callback
    upstream = served.create("aio-cancel-libgit2")
    upstream.commits(20, size=500_000)
    async with AsyncRepoCache(cache_root) as acache:
        task: asyncio.Task[object] | None = None

        def report(progress: Progress) -> None:
            if progress.phase == "receiving" and task is not None:
                task.cancel()  # on the first report of the transfer

        task = asyncio.create_task(acache.ensure(daemon.url_for(upstream), progress=report))
        with pytest.raises(asyncio.CancelledError):
            await task
        assert list((cache_root / "staging").iterdir()) == []
        assert list((cache_root / "repos").iterdir()) == []  # it did not go on to publish the mirror
        assert (await acache.stats()).clones == 0


async def test_cancelling_a_checkout_that_waits_for_another_process_stops_waiting(
    cache_root: Path, served: UpstreamFactory, daemon: GitDaemon
) -> None:
    url = daemon.url_for(served.create("aio-cancel-wait"))
    async with AsyncRepoCache(cache_root, lock_timeout=60) as acache:
        lock_file = cache_root / "locks" / f"{key_of(url)}.lock"
        holder = subprocess.Popen(  # another worker "cloning" the repository: it holds the exclusive lock
            [
                sys.executable,
                "-c",
                "import fcntl, os, sys, time\n"
                "fd = os.open(sys.argv[1], os.O_RDWR | os.O_CREAT)\nfcntl.flock(fd, fcntl.LOCK_EX)\n"
                "print('held', flush=True)\ntime.sleep(120)\n",
                str(lock_file),
            ],
            stdout=subprocess.PIPE,
            text=True,
        )
        try:
            assert holder.stdout is not None and holder.stdout.readline() == "held\n"
            task = asyncio.create_task(acache.ensure(url))
            await asyncio.sleep(0.3)
            started = time.monotonic()
            task.cancel()
            with pytest.raises(asyncio.CancelledError):
                await task
            assert time.monotonic() - started < 5  # not the 60 s lock_timeout
        finally:
            holder.kill()
            holder.communicate()  # waits and closes the pipe
        # The worker thread is free again: with it stuck polling the lock, this would queue behind it.
        assert (await acache.ensure(url)).url == normalize_url(url).url


async def test_a_checkout_cancelled_during_an_uninterruptible_fetch_releases_its_hold_afterwards(
    cache_root: Path, served: UpstreamFactory, served_dir: Path
) -> None:
    upstream = served.create("aio-cancel-fetch")
    with SmartHTTPServer(served_dir) as server:
        url = server.url_for(upstream)
        async with AsyncRepoCache(cache_root, idle_timeout=1.5, connect_timeout=1.5) as acache:
            await acache.ensure(url)
            server.delay = 60.0  # libgit2 waits in a socket read: no callback fires until idle_timeout
            entered = asyncio.Event()

            async def hold() -> None:
                async with acache.checkout(url):
                    entered.set()  # pragma: no cover - the task is cancelled before the fetch gives up

            task = asyncio.create_task(hold())
            await asyncio.sleep(0.3)
            task.cancel()
            with pytest.warns(RuntimeWarning, match="stale"), pytest.raises(asyncio.CancelledError):
                await task  # the fetch gave up, the stale copy was served to nobody, and its hold released
            assert not entered.is_set()
            assert _exclusive_lock_is_free(cache_root / "locks" / f"{key_of(url)}.lock")
            server.delay = 0.0


async def test_leaving_a_block_does_not_wait_for_a_free_worker(
    cache_root: Path, served: UpstreamFactory, daemon: GitDaemon, slow_http: SmartHTTPServer
) -> None:
    url = daemon.url_for(served.create("aio-release"))
    slow = slow_http.url_for(served.create("aio-release-slow"))
    async with AsyncRepoCache(cache_root, max_workers=1) as acache:
        async with acache.checkout(url) as co:
            busy = asyncio.create_task(acache.ensure(slow))  # takes the only worker for a minute
            await _until(lambda: _git_processes(str(cache_root)))
        assert _exclusive_lock_is_free(cache_root / "locks" / f"{co.key}.lock")
        busy.cancel()
        with pytest.raises(asyncio.CancelledError):
            await busy


async def test_every_call_is_awaitable(
    cache_root: Path, served: UpstreamFactory, daemon: GitDaemon, tmp_path: Path
) -> None:
    upstream = served.create("aio-calls")
    url = daemon.url_for(upstream)
    other = daemon.url_for(served.create("aio-calls-other"))
    cold = tmp_path / "cold"
    async with AsyncRepoCache(cache_root, cold_store=f"file://{cold}") as acache:
        entry = await acache.ensure(url)
        assert entry.url == normalize_url(url).url and entry.size_bytes > 0
        assert await acache.info(url) == await acache.info(url)
        assert await acache.info(other) is None
        await acache.ensure(other)
        assert [e.url for e in await acache.entries()] == [normalize_url(other).url, entry.url]
        async with acache.worktree(url, "main") as wt:
            assert (wt.path / "README.md").is_file()
            assert wt.commit == upstream.resolve("main")
        assert not wt.path.exists()
        assert await acache.verify() == []
        assert await acache.enforce() == []  # no budget
        assert await acache.evict(other)
        assert [m.url for m in await acache.cold_entries()] == [normalize_url(other).url]
        assert [m.url for m in await acache.prune_cold(older_than=0)] == [normalize_url(other).url]
        stats = await acache.stats()
        assert (stats.clones, stats.evictions, stats.entries) == (2, 1, 1)
        assert_consistent(acache.cache)
    with pytest.raises(RepoCacheError, match="closed"):
        await acache.stats()


async def test_progress_reports_arrive_on_the_event_loop_thread(
    acache: AsyncRepoCache, served: UpstreamFactory, daemon: GitDaemon
) -> None:
    upstream = served.create("aio-progress")
    upstream.commits(3, size=50_000)
    threads: set[int] = set()

    def report(progress: Progress) -> None:
        threads.add(threading.get_ident())

    await acache.ensure(daemon.url_for(upstream), progress=report)
    await asyncio.sleep(0)  # reports were handed to the loop; let it run them
    assert threads == {threading.get_ident()}


async def test_wrapping_and_settings(cache_root: Path) -> None:
    with pytest.raises(ConfigError, match="max_workers=0"):
        AsyncRepoCache(cache_root, max_workers=0)
    with RepoCache(cache_root) as sync_cache:
        with pytest.raises(ConfigError, match="max_bytes"):
            AsyncRepoCache(sync_cache, max_bytes="1GB")
        async with AsyncRepoCache(sync_cache) as wrapped:
            assert wrapped.cache is sync_cache
            assert (await wrapped.stats()).entries == 0
        with pytest.raises(RepoCacheError, match="closed"):
            sync_cache.stats()


async def test_a_block_left_after_close_still_releases_its_hold(
    cache_root: Path, served: UpstreamFactory, daemon: GitDaemon
) -> None:
    url = daemon.url_for(served.create("aio-close-inside"))
    acache = AsyncRepoCache(cache_root)
    async with acache.checkout(url) as co:
        await acache.close()
    assert _exclusive_lock_is_free(cache_root / "locks" / f"{co.key}.lock")


async def test_event_hooks_see_async_calls_from_the_worker_threads(
    acache: AsyncRepoCache, served: UpstreamFactory, daemon: GitDaemon
) -> None:
    seen: list[tuple[str, int]] = []
    unsubscribe = acache.subscribe(lambda event: seen.append((type(event).__name__, threading.get_ident())))
    await acache.ensure(daemon.url_for(served.create("aio-events")))
    unsubscribe()
    assert "CloneEvent" in {name for name, _ in seen}
    assert threading.get_ident() not in {thread for _, thread in seen}
