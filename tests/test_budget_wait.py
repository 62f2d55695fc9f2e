"""Worker pools under a tight budget: a miss short of room held by other workers waits for them instead of failing.

Each test pins one rule of the wait: callers holding nothing wait (threads, processes and asyncio tasks alike), a
caller holding repositories never waits (so two workers cannot wait for each other), a repository that cannot fit
even with nothing held fails at once, and a wait that outlasts ``lock_timeout`` names what was held.
"""

from __future__ import annotations

import asyncio
import json
import logging
import pickle
import threading
import time
from pathlib import Path
from typing import Any

import pytest

from repocache import AsyncRepoCache, BudgetError, Progress, RepoCache, normalize_url
from repocache.cold import FsspecStore, LocalDirStore
from repocache.events import BudgetWaitEvent, Event
from repocache.testing import Upstream, UpstreamFactory
from tests._fleet import count_store_calls
from tests.helpers import Worker, assert_consistent, learn_sizes, wait_for_file

pytestmark = pytest.mark.timeout(180)


@pytest.fixture
def four(upstreams: UpstreamFactory) -> list[Upstream]:
    """Four upstreams of roughly 300 KB each."""
    made = []
    for name in ("alpha", "beta", "gamma", "delta"):
        upstream = upstreams.create(name)
        upstream.commits(3, size=100_000)
        made.append(upstream)
    return made


def _holder(root: Path, url: str, tmp_path: Path, name: str, **options: object) -> Worker:
    worker = Worker(
        {
            "root": str(root),
            "url": url,
            "action": "hold",
            "ready": str(tmp_path / f"{name}.ready"),
            "release": str(tmp_path / f"{name}.release"),
            "options": options,
        }
    )
    wait_for_file(tmp_path / f"{name}.ready", worker=worker)
    return worker


def test_a_miss_short_of_room_held_by_another_process_waits_for_it_then_proceeds(
    cache_root: Path, four: list[Upstream], tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    alpha, beta = four[0], four[1]
    sizes = learn_sizes(cache_root, [alpha, beta])
    budget = max(sizes) * 3 // 2  # one fits, not both
    holder = _holder(cache_root, alpha.url, tmp_path, "alpha", max_bytes=budget)
    reports: list[Progress] = []
    events: list[Event] = []
    waiting = threading.Event()

    def progress(report: Progress) -> None:
        reports.append(report)
        if report.phase == "waiting for room":
            waiting.set()

    def release_once_waiting() -> None:
        waiting.wait(60)
        time.sleep(0.3)
        (tmp_path / "alpha.release").write_text("")

    releaser = threading.Thread(target=release_once_waiting)
    releaser.start()
    try:
        with (
            caplog.at_level(logging.INFO, logger="repocache"),
            RepoCache(cache_root, max_bytes=budget, on_event=events.append, lock_timeout=60) as cache,
        ):
            started = time.monotonic()
            with cache.checkout(beta.url, progress=progress) as co:
                assert co.source == "clone"
                waited = time.monotonic() - started
            assert waiting.is_set() and waited >= 0.3
            assert next(r.phase for r in reports if r.operation == "clone") == "waiting for room"
            assert "waits for room" in caplog.text and alpha.url.rsplit("/", 1)[-1] in caplog.text
            waits = [e for e in events if isinstance(e, BudgetWaitEvent)]
            assert len(waits) == 1 and waits[0].needed_bytes == sizes[1] and waits[0].seconds >= 0.3
            assert {e.url for e in cache.entries()} == {normalize_url(beta.url).url}  # alpha was evicted for it
            assert cache.stats().bytes_used <= budget
            assert_consistent(cache)
    finally:
        (tmp_path / "alpha.release").write_text("")
        releaser.join(60)
        holder.result()


def test_a_wait_for_room_that_outlasts_lock_timeout_names_the_held_repositories(
    cache_root: Path, four: list[Upstream], tmp_path: Path
) -> None:
    alpha, beta = four[0], four[1]
    sizes = learn_sizes(cache_root, [alpha, beta])
    budget = max(sizes) * 3 // 2
    holder = _holder(cache_root, alpha.url, tmp_path, "alpha", max_bytes=budget)
    try:
        with RepoCache(cache_root, max_bytes=budget, lock_timeout=1.5) as cache:
            started = time.monotonic()
            with pytest.raises(BudgetError) as caught:
                cache.ensure(beta.url)
            assert 1.4 < time.monotonic() - started < 10
        error = caught.value
        assert error.reason == "timeout" and error.waited >= 1.4
        assert error.held == ((normalize_url(alpha.url).url, sizes[0]),)
        assert "alpha" in str(error) and "lock_timeout" in str(error)
        copy = pickle.loads(pickle.dumps(error))
        assert (str(copy), copy.held, copy.reason) == (str(error), error.held, error.reason)
    finally:
        (tmp_path / "alpha.release").write_text("")
        holder.result()


def test_two_workers_each_holding_one_repository_and_missing_room_held_by_the_other_both_fail_at_once(
    cache_root: Path, four: list[Upstream], tmp_path: Path
) -> None:
    """P1 holds alpha, P2 holds beta; both then miss gamma, which fits only once the other's repository is gone.

    If holders waited for held room, each would wait for the other until lock_timeout."""
    alpha, beta, gamma = four[0], four[1], four[2]
    sizes = learn_sizes(cache_root, [alpha, beta, gamma])
    budget = sum(sizes[:2]) + min(sizes) // 2  # alpha and beta fit together; gamma beside both does not
    options = {"max_bytes": budget, "lock_timeout": 60}
    workers = [
        Worker(
            {
                "root": str(cache_root),
                "url": upstream.url,
                "action": "hold_then_checkout",
                "then": gamma.url,
                "ready": str(tmp_path / f"{name}.ready"),
                "release": str(tmp_path / "go"),
                "tried": str(tmp_path / f"{name}.tried"),
                "end": str(tmp_path / "end"),
                "options": options,
            }
        )
        for name, upstream in (("p1", alpha), ("p2", beta))
    ]
    for name, worker in zip(("p1", "p2"), workers, strict=True):
        wait_for_file(tmp_path / f"{name}.ready", worker=worker)
    (tmp_path / "go").write_text("")
    try:
        for name, worker in zip(("p1", "p2"), workers, strict=True):
            wait_for_file(tmp_path / f"{name}.tried", timeout=120, worker=worker)
    finally:
        (tmp_path / "end").write_text("")
    results: list[dict[str, Any]] = [worker.result(timeout=120) for worker in workers]
    for result, held in zip(results, (alpha, beta), strict=True):
        assert result["then"] == "BudgetError", result
        assert result["reason"] == "holding", result
        assert float(result["seconds"]) < 10, result  # not after lock_timeout
        assert [url for url, _size in result["held"]] == [normalize_url(held.url).url], result
        assert held.url.rsplit("/", 1)[-1] in str(result["message"])


def test_a_repository_that_cannot_fit_beside_the_pinned_ones_fails_at_once_while_others_hold(
    cache_root: Path, four: list[Upstream], upstreams: UpstreamFactory, tmp_path: Path
) -> None:
    alpha, gamma = four[0], four[2]
    beta = upstreams.create("tiny")  # held by another worker; it fits beside pinned alpha
    sizes = learn_sizes(cache_root, [alpha, beta, gamma])
    budget = sizes[0] + sizes[1] + sizes[2] // 2  # gamma cannot fit beside pinned alpha even with nothing held
    options = {"max_bytes": budget, "pins": [alpha.url], "lock_timeout": 60}
    with RepoCache(cache_root, **options) as cache:  # type: ignore[arg-type]
        cache.ensure(alpha.url)
    holder = _holder(cache_root, beta.url, tmp_path, "beta", **options)
    try:
        with RepoCache(cache_root, **options) as cache:  # type: ignore[arg-type]
            started = time.monotonic()
            with pytest.raises(BudgetError) as caught:
                cache.ensure(gamma.url)
            assert time.monotonic() - started < 5
        assert caught.value.reason == "pinned" and "even with nothing held" in str(caught.value)
    finally:
        (tmp_path / "beta.release").write_text("")
        holder.result()


def test_a_thread_holding_nothing_waits_and_a_thread_holding_a_repository_does_not(
    cache_root: Path, four: list[Upstream]
) -> None:
    alpha, beta, gamma = four[0], four[1], four[2]
    sizes = learn_sizes(cache_root, [alpha, beta, gamma])
    budget = max(sizes) * 3 // 2
    with RepoCache(cache_root, max_bytes=budget, lock_timeout=60) as cache:
        waiting = threading.Event()
        release = threading.Event()
        outcome: list[object] = []

        def waiter() -> None:
            def progress(report: Progress) -> None:
                if report.phase == "waiting for room":
                    waiting.set()

            try:
                outcome.append(cache.ensure(beta.url, progress=progress).size_bytes)
            except BaseException as exc:  # reported below
                outcome.append(exc)

        with cache.checkout(alpha.url):
            started = time.monotonic()
            with pytest.raises(BudgetError) as caught:  # this thread holds alpha: it must not wait for itself
                cache.ensure(gamma.url)
            assert time.monotonic() - started < 5
            assert caught.value.reason == "holding"
            assert caught.value.held == ((normalize_url(alpha.url).url, sizes[0]),)
            thread = threading.Thread(target=waiter)
            thread.start()
            assert waiting.wait(30), outcome  # another thread, holding nothing, waits for this one
            release.set()
        thread.join(60)
        assert outcome == [sizes[1]]


def test_a_checkout_left_in_another_thread_no_longer_counts_as_held_by_the_thread_that_entered_it(
    cache_root: Path, four: list[Upstream]
) -> None:
    alpha, beta, gamma = four[0], four[1], four[2]
    sizes = learn_sizes(cache_root, [alpha, beta, gamma])
    budget = max(sizes) * 3 // 2
    with RepoCache(cache_root, max_bytes=budget, lock_timeout=60) as cache:
        manager = cache.checkout(alpha.url)
        manager.__enter__()
        thread = threading.Thread(target=lambda: manager.__exit__(None, None, None))
        thread.start()
        thread.join(30)
        holder_ready = threading.Event()
        holder_release = threading.Event()

        def hold_gamma() -> None:
            with cache.checkout(gamma.url):
                holder_ready.set()
                holder_release.wait(60)

        other = threading.Thread(target=hold_gamma)
        other.start()
        assert holder_ready.wait(30)
        threading.Timer(0.5, holder_release.set).start()
        # This thread holds nothing any more: it waits for gamma's holder instead of failing as a holder.
        assert cache.ensure(beta.url).size_bytes == sizes[1]
        other.join(30)


def test_asyncio_tasks_holding_nothing_wait_and_a_task_holding_a_repository_does_not(
    cache_root: Path, four: list[Upstream]
) -> None:
    """AsyncRepoCache takes holds in one pool thread and releases them in another: what a task holds must follow
    the task, not the threads. With one worker thread, every call runs on the thread that entered the holder's
    block: bookkeeping per thread would make the waiter look like a holder (and the holder's own miss not)."""
    alpha, beta, gamma = four[0], four[1], four[2]
    sizes = learn_sizes(cache_root, [alpha, beta, gamma])
    budget = max(sizes) * 3 // 2

    async def main() -> None:
        waiting = asyncio.Event()
        loop = asyncio.get_running_loop()

        def progress(report: Progress) -> None:
            if report.phase == "waiting for room":
                waiting.set()

        async with AsyncRepoCache(cache_root, max_workers=1, max_bytes=budget, lock_timeout=30) as cache:
            for _ in range(3):  # holds taken and released in the pool threads, which are reused below
                async with cache.checkout(alpha.url):
                    pass
            release = asyncio.Event()
            held = asyncio.Event()

            async def holder() -> None:
                async with cache.checkout(alpha.url):
                    held.set()
                    started = loop.time()
                    with pytest.raises(BudgetError) as caught:  # this task holds alpha: no waiting for itself
                        await cache.ensure(gamma.url)
                    assert loop.time() - started < 5
                    assert caught.value.reason == "holding"
                    await release.wait()

            holding = asyncio.create_task(holder())
            await held.wait()
            waiter = asyncio.create_task(cache.ensure(beta.url, progress=progress))  # holds nothing: it waits
            await asyncio.wait_for(waiting.wait(), 30)
            assert not waiter.done()
            release.set()
            await holding
            assert (await asyncio.wait_for(waiter, 30)).size_bytes == sizes[1]

    asyncio.run(main())


def test_a_pool_of_processes_under_a_tight_budget_completes_every_checkout(
    cache_root: Path, upstreams: UpstreamFactory
) -> None:
    """The issue's pool, scaled down 20x (0.01, 0.65 and 2.45 MB; max_bytes 1.15x the largest): 4 processes each
    check out 12 times one of the three at random. The two large ones never fit together; every checkout must
    complete, and once the holds are released the budget holds."""
    urls = []
    for name, commits, size in (("small", 1, 10_000), ("middle", 5, 130_000), ("large", 5, 490_000)):
        upstream = upstreams.create(name)
        upstream.commits(commits, size=size)
        urls.append(upstream.url)
    with RepoCache(cache_root / "measure") as measure:
        largest = max(measure.ensure(url).size_bytes for url in urls)
    budget = largest * 115 // 100
    start_at = time.time() + 2.0
    workers = [
        Worker(
            {
                "root": str(cache_root),
                "action": "pool",
                "urls": urls,
                "count": 12,
                "seed": seed,
                "hold_seconds": 0.05,
                "start_at": start_at,
                "options": {"max_bytes": budget, "lock_timeout": 120},
            }
        )
        for seed in range(4)
    ]
    outcomes = [outcome for worker in workers for outcome in worker.result(timeout=170)["outcomes"]]  # type: ignore[attr-defined]
    assert len(outcomes) == 48
    assert [o for o in outcomes if o not in ("hit", "clone")] == []
    with RepoCache(cache_root, max_bytes=budget) as cache:
        stats = cache.stats()
        assert stats.bytes_used <= budget, json.dumps(stats.__dict__, default=str)
        assert stats.hits + stats.misses == 48
        assert_consistent(cache)


@pytest.mark.parametrize("kind", ["local", "s3"])
def test_a_wait_for_room_keeps_its_manifest_and_lease_and_asks_the_store_less_and_less(
    cache_root: Path, four: list[Upstream], tmp_path: Path, request: pytest.FixtureRequest, kind: str
) -> None:
    alpha, beta = four[0], four[1]
    sizes = learn_sizes(cache_root, [alpha, beta])
    budget = max(sizes) * 3 // 2
    store: LocalDirStore | FsspecStore
    if kind == "local":
        (tmp_path / "store").mkdir()
        store = LocalDirStore(tmp_path / "store")
    else:
        endpoint, bucket = request.getfixturevalue("s3_endpoint")
        store = FsspecStore(
            f"s3://{bucket}/{request.node.name}".replace("[", "-").replace("]", ""),
            client_kwargs={"endpoint_url": endpoint},
        )
    calls = count_store_calls(store)
    holder = _holder(cache_root, alpha.url, tmp_path, "alpha", max_bytes=budget)
    try:
        with RepoCache(cache_root, max_bytes=budget, cold_store=store, cold_publish="clone", lock_timeout=6) as cache:
            with pytest.raises(BudgetError) as caught:
                cache.ensure(beta.url)  # no artifact: it takes the fleet's clone lease, then waits for room
            ended = time.monotonic()
    finally:
        (tmp_path / "alpha.release").write_text("")
        holder.result()
    assert caught.value.reason == "timeout" and caught.value.waited >= 4.5
    names = [name for _when, name in calls]
    # One lease for the whole wait: taken in the first round, given up when the wait ended.
    assert names.count("try_lease") == 1 and names.count("release_lease") == 1, names
    # Later rounds look again after 1 s, then 2 s more (then 4, 8, ... up to 30): nothing after about 3.6 s.
    started = calls[0][0]
    late = [name for when, name in calls if started + 4.0 < when < ended and name != "release_lease"]
    assert late == [], (late, len(names))
    print(f"{kind}: {len(names)} store calls in a {caught.value.waited:.1f} s wait: {names}")
    assert len(names) <= 12, names  # each 0.25 s round used to make a lookup and a lease round trip
