"""The byte budget: LRU eviction that skips pinned and held repositories, room made before known-size clones."""

from __future__ import annotations

import json
import os
import pickle
import time
from pathlib import Path

import pytest

from repocache import BudgetError, Progress, RepoCache, normalize_url
from repocache.testing import GitDaemon, SmartHTTPServer, Upstream, UpstreamFactory
from tests.helpers import Worker, assert_consistent, learn_sizes, wait_for_file


@pytest.fixture
def three(upstreams: UpstreamFactory) -> list[Upstream]:
    """Three upstreams of roughly 300 KB each."""
    made = []
    for name in ("alpha", "beta", "gamma"):
        upstream = upstreams.create(name)
        upstream.commits(3, size=100_000)
        made.append(upstream)
    return made


def _on_disk(cache: RepoCache) -> set[str]:
    return {e.url.rsplit("/", 1)[-1].removesuffix(".git") for e in cache.entries()}


def test_least_recently_used_repository_is_evicted_first(cache_root: Path, three: list[Upstream]) -> None:
    sizes = learn_sizes(cache_root, three)
    with RepoCache(cache_root, max_bytes=sizes[0] + sizes[1] + sizes[2] // 2) as cache:
        cache.ensure(three[0].url)
        cache.ensure(three[1].url)
        with cache.checkout(three[0].url):
            pass  # alpha is now the most recently used
        cache.ensure(three[2].url)
        assert _on_disk(cache) == {"alpha", "gamma"}
        assert cache.stats().bytes_used <= cache.max_bytes  # type: ignore[operator]
        assert_consistent(cache)


def test_pinned_least_recently_used_repo_does_not_stop_eviction_of_the_next(
    cache_root: Path, three: list[Upstream]
) -> None:
    """pizza's bug: its loop stopped at a pinned LRU repository instead of moving on to the next one."""
    sizes = learn_sizes(cache_root, three)
    with RepoCache(cache_root, max_bytes=sum(sizes) - min(sizes) // 2, pins=[three[0].url]) as cache:
        cache.ensure(three[0].url)
        cache.ensure(three[1].url)
        cache.ensure(three[2].url)
        assert _on_disk(cache) == {"alpha", "gamma"}
        assert [e.pinned for e in cache.entries()] == [False, True]
        assert cache.evict(three[0].url) is False
        assert cache.evict(three[0].url, force=True) is True


def test_eviction_skips_repo_held_by_other_process(cache_root: Path, three: list[Upstream], tmp_path: Path) -> None:
    sizes = learn_sizes(cache_root, three)
    budget = sum(sizes) - min(sizes) // 2
    with RepoCache(cache_root, max_bytes=budget) as cache:
        cache.ensure(three[0].url)
        cache.ensure(three[1].url)
    holder = Worker(
        {
            "root": str(cache_root),
            "url": three[0].url,
            "action": "hold",
            "ready": str(tmp_path / "ready"),
            "release": str(tmp_path / "release"),
            "options": {"max_bytes": budget},
        }
    )
    try:
        wait_for_file(tmp_path / "ready", worker=holder)
        with RepoCache(cache_root, max_bytes=budget) as cache:
            with cache.checkout(three[1].url):
                pass  # beta is now the most recently used: alpha, held by the other process, is the LRU victim
            assert [e.url.rsplit("/", 1)[-1] for e in cache.entries()] == ["beta.git", "alpha.git"]
            started = time.monotonic()
            cache.ensure(three[2].url)
            assert time.monotonic() - started < 10  # skipped the held repo, did not wait for it
            assert _on_disk(cache) == {"alpha", "gamma"}
        assert Path(json.loads(wait_for_file(tmp_path / "ready"))["path"]).is_dir()  # the holder's mirror stayed
    finally:
        (tmp_path / "release").write_text("")
        holder.result()


def test_room_is_made_before_a_known_size_clone_starts(
    cache_root: Path, served: UpstreamFactory, daemon: GitDaemon
) -> None:
    urls = []
    for name in ("room-a", "room-b", "room-c"):
        upstream = served.create(name)
        upstream.commits(3, size=100_000)
        urls.append(daemon.url_for(upstream))
    with RepoCache(cache_root) as cache:
        sizes = [cache.ensure(url).size_bytes for url in urls]
        assert all(cache.evict(url) for url in urls)
    budget = sizes[0] + sizes[1] + sizes[2] // 2
    seen: list[tuple[str, set[str]]] = []
    with RepoCache(cache_root, max_bytes=budget) as cache:
        cache.ensure(urls[0])
        cache.ensure(urls[1])
        first_key = cache.entries()[-1].key

        def record(event: Progress) -> None:
            seen.append((event.phase, {p.name for p in (cache_root / "repos").iterdir()}))

        cache.ensure(urls[2], progress=record)
        during = [on_disk for phase, on_disk in seen if phase != "done"]
        assert during, f"the clone reported no progress while transferring: {seen}"
        assert all(first_key not in on_disk and len(on_disk) == 1 for on_disk in during), seen
        assert cache.stats().bytes_used <= budget


def test_a_clone_that_cannot_fit_raises_before_downloading(
    cache_root: Path, served: UpstreamFactory, served_dir: Path
) -> None:
    big = served.create("big-one")
    big.commits(4, size=200_000)
    small = served.create("small-one")
    with SmartHTTPServer(served_dir) as server:
        big_url, small_url = server.url_for(big), server.url_for(small)
        with RepoCache(cache_root) as cache:
            big_size = cache.ensure(big_url).size_bytes
            assert cache.evict(big_url)
        with RepoCache(cache_root, max_bytes=big_size // 2, pins=[small_url]) as cache:
            cache.ensure(small_url)
            requests_before = len(server.requests)
            with pytest.raises(BudgetError) as caught, cache.checkout(big_url):
                pass
            assert len(server.requests) == requests_before  # nothing was downloaded
            assert caught.value.needed == big_size and "big-one" in str(caught.value)
            assert _on_disk(cache) == {"small-one"}  # nothing was evicted in vain
            assert_consistent(cache)


def test_a_repository_larger_than_the_whole_budget_is_reported_as_such(
    cache_root: Path, three: list[Upstream], tmp_path: Path
) -> None:
    size = learn_sizes(tmp_path / "measure", three)[0]
    budget = size // 2
    with RepoCache(cache_root, max_bytes=budget) as cache:
        for attempt in ("size unknown: refused after the clone", "size known: refused before downloading"):
            with pytest.raises(BudgetError) as caught:
                cache.ensure(three[0].url)
            message = str(caught.value)
            assert f"larger than max_bytes={budget}" in message, (attempt, message)
            assert "can be freed" not in message, (attempt, message)
            assert caught.value.needed >= size and caught.value.max_bytes == budget
            copy = pickle.loads(pickle.dumps(caught.value))
            assert str(copy) == message and copy.max_bytes == budget


def test_pinned_and_held_bytes_that_leave_no_room_raise_budget_error(cache_root: Path, three: list[Upstream]) -> None:
    sizes = learn_sizes(cache_root, three)
    with RepoCache(cache_root, max_bytes=sizes[0] + sizes[1] + 4096, pins=[three[0].url]) as cache:
        cache.ensure(three[0].url)
        with cache.checkout(three[1].url):
            with pytest.raises(BudgetError):
                cache.ensure(three[2].url)
            assert _on_disk(cache) == {"alpha", "beta"}


def test_excess_from_held_repos_comes_down_when_released(
    cache_root: Path, three: list[Upstream], tmp_path: Path
) -> None:
    size = max(learn_sizes(tmp_path / "measure", three))
    budget = size * 3 // 2
    with RepoCache(cache_root, max_bytes=budget) as cache:
        with cache.checkout(three[0].url), cache.checkout(three[1].url):
            assert cache.stats().bytes_used > budget  # both held: the excess is allowed
            assert _on_disk(cache) == {"alpha", "beta"}
        assert cache.stats().bytes_used <= budget
        assert len(cache.entries()) == 1


def test_unknown_size_clone_is_followed_by_eviction_to_the_budget(
    cache_root: Path, three: list[Upstream], tmp_path: Path
) -> None:
    budget = max(learn_sizes(tmp_path / "measure", three)) * 3 // 2
    with RepoCache(cache_root, max_bytes=budget) as cache:
        for upstream in three:
            cache.ensure(upstream.url)
            assert cache.stats().bytes_used <= budget
        assert _on_disk(cache) == {"gamma"}


def test_min_free_bytes_refuses_clones_when_the_disk_is_too_full(cache_root: Path, three: list[Upstream]) -> None:
    with RepoCache(cache_root, min_free_bytes="1000PB") as cache, pytest.raises(BudgetError):
        cache.ensure(three[0].url)


def test_enforce_returns_what_it_evicted(cache_root: Path, three: list[Upstream]) -> None:
    with RepoCache(cache_root) as cache:
        for upstream in three:
            cache.ensure(upstream.url)
        sizes = [e.size_bytes for e in cache.entries()]
    with RepoCache(cache_root, max_bytes=sizes[0] + 1) as cache:
        evicted = cache.enforce()
        assert [e.url.rsplit("/", 1)[-1].removesuffix(".git") for e in evicted] == ["alpha", "beta"]
        assert cache.enforce() == []
        assert cache.stats().evictions == 2


def test_pin_file_is_reloaded_when_it_changes(cache_root: Path, three: list[Upstream], tmp_path: Path) -> None:
    pin_file = tmp_path / "pins.yaml"
    pin_file.write_text(f"never_evict:\n  - {three[0].url}\n")
    with RepoCache(cache_root, pins=pin_file) as cache:
        cache.ensure(three[0].url)
        cache.ensure(three[1].url)
        assert [e.pinned for e in cache.entries()] == [False, True]
        pin_file.write_text(f"never-evict-repos:\n  - {three[1].url}\n")
        later = time.time() + 5
        os.utime(pin_file, (later, later))
        assert [e.pinned for e in cache.entries()] == [True, False]


@pytest.mark.parametrize(
    "text",
    [
        "never_evict:\n  - {url}\n",
        "never-evict-repos:\n  - {url}\n",
        "config:\n  cache:\n    neverEvict:\n      - {url}\n",
        "never_evict:\n  - file:///{parent}/*\n",
    ],
)
def test_every_pin_file_spelling_pins(cache_root: Path, three: list[Upstream], tmp_path: Path, text: str) -> None:
    pin_file = tmp_path / "pins.yaml"
    pin_file.write_text(text.format(url=three[0].url, parent=str(three[0].path.parent).lstrip("/")))
    with RepoCache(cache_root, pins=pin_file) as cache:
        assert cache.pins.matches(f"file://{three[0].path}")
        assert cache.pins.matches(f"file://{three[1].path}") == ("*" in text)


def test_a_clone_finishing_is_not_counted_twice_by_a_miss_beside_it(
    cache_root: Path, three: list[Upstream], monkeypatch: pytest.MonkeyPatch
) -> None:
    """The moment a clone is recorded, its reservation must be gone: a miss that fits beside it is not refused."""
    from repocache.index import Index

    first, second = three[0], three[1]
    sizes = learn_sizes(cache_root, [first, second])
    budget = sizes[0] + sizes[1] + sizes[0] // 2  # both fit; counting the first twice would not
    real_put = Index.put
    beside: list[int] = []
    entered: list[str] = []

    def put_then_miss_beside(index: Index, key: str, url: str, *args: object, **kwargs: object) -> None:
        real_put(index, key, url, *args, **kwargs)  # type: ignore[arg-type]
        if not entered:  # the first clone has just been recorded
            entered.append(url)
            with RepoCache(cache_root, max_bytes=budget) as other:  # another worker, in the window
                beside.append(other.ensure(second.url).size_bytes)

    with RepoCache(cache_root, max_bytes=budget) as cache:
        monkeypatch.setattr(Index, "put", put_then_miss_beside)
        cache.ensure(first.url)
        monkeypatch.undo()
        assert beside == [sizes[1]]
        assert {e.url for e in cache.entries()} == {normalize_url(first.url).url, normalize_url(second.url).url}
        assert_consistent(cache)


def test_a_miss_that_cannot_fit_beside_the_pinned_repositories_says_so_the_first_time(
    cache_root: Path, three: list[Upstream], tmp_path: Path
) -> None:
    sizes = learn_sizes(tmp_path / "measure", three)
    budget = sizes[0] + sizes[1] // 2  # the second fits in the budget, not beside the pinned first
    assert sizes[1] < budget
    with RepoCache(cache_root, max_bytes=budget, pins=[three[0].url]) as cache:
        pinned = cache.ensure(three[0].url)
        with pytest.raises(BudgetError) as caught:
            cache.ensure(three[1].url)
        error = caught.value
        assert error.reason == "pinned"
        assert error.available == budget - pinned.size_bytes, "the real room: the budget less the pinned bytes"
        assert error.needed >= sizes[1] * 9 // 10
        assert cache.info(three[1].url) is None
        assert not any((cache_root / "staging").iterdir())
        # Its size is remembered: the next miss is refused before it downloads anything.
        with pytest.raises(BudgetError) as again:
            cache.ensure(three[1].url)
        assert again.value.reason == "pinned"
        assert cache.stats().clones == 1
        assert_consistent(cache)


def test_an_entry_returned_by_ensure_is_on_disk(cache_root: Path, three: list[Upstream], tmp_path: Path) -> None:
    budget = max(learn_sizes(tmp_path / "measure", three)) * 3 // 2
    with RepoCache(cache_root, max_bytes=budget) as cache:
        for upstream in three:
            entry = cache.ensure(upstream.url)
            assert entry.path.is_dir() and cache.info(upstream.url) == entry
