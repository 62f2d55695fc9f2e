"""A host waiting for another host's clone (the fleet's clone lease held by a live host): how many store requests
it makes, how soon it restores what the holder committed, how soon it takes a released or expired lease over.

Real parts: a git daemon on 127.0.0.1, real directory stores, and a ``moto_server`` of this module's own whose
request log counts what reached S3; the calls that reach a store are counted by wrapping its primitives.
"""

from __future__ import annotations

import threading
import time
import uuid
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from repocache import RepoCache
from repocache.cold import FleetStore, FsspecStore, LocalDirStore
from repocache.keys import normalize_url
from repocache.testing import GitDaemon, UpstreamFactory
from repocache.testing.s3 import Endpoint
from tests._fleet import GatedFsspecStore, GatedStore, count_store_calls
from tests._s3 import logged_moto
from tests.helpers import served_upstream

# The rounds of a claim wait as docs/cold-storage.md states them: the first after 0.05 s, each 1.5 times the last,
# at most 1 s; one store request a round while the holder's lease is unchanged.
FIRST_ROUND = 0.05
GROWTH = 1.5
LONGEST_ROUND = 1.0


def rounds_within(seconds: float) -> int:
    """How many rounds of the stated schedule end within ``seconds`` of the wait's start."""
    rounds, elapsed, pause = 0, 0.0, FIRST_ROUND
    while elapsed + pause <= seconds:
        elapsed += pause
        rounds += 1
        pause = min(pause * GROWTH, LONGEST_ROUND)
    return rounds


@dataclass
class LoggedS3:
    """A moto server whose request log the tests read."""

    endpoint: Endpoint
    log: Path

    def mark(self) -> int:
        return len(self.log.read_bytes())

    def requests(self, since: int, until: int, part: str) -> list[str]:
        """The requests logged between two marks whose line holds ``part`` (a store's random prefix)."""
        text = self.log.read_bytes()[since:until].decode(errors="replace")
        return [line for line in text.splitlines() if part in line and '"' in line]


@pytest.fixture(scope="module")
def logged_s3(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LoggedS3]:
    """A moto server of this module's own, so its log holds this module's requests only."""
    with logged_moto(tmp_path_factory, "moto-fleet-wait") as (endpoint, log):
        yield LoggedS3(endpoint, log)


@dataclass
class Fleet:
    """One shared store, seen by several hosts (each its own store object): a directory, or a prefix on moto."""

    kind: str
    directory: Path
    prefix: str
    s3: LoggedS3 | None

    def host(self) -> LocalDirStore | FsspecStore:
        if self.s3 is None:
            return LocalDirStore(self.directory)
        return FsspecStore(self._url(), endpoint_url=self.s3.endpoint.url)

    def gated_host(self) -> GatedStore | GatedFsspecStore:
        if self.s3 is None:
            return GatedStore(self.directory)
        return GatedFsspecStore(self._url(), endpoint_url=self.s3.endpoint.url)

    def _url(self) -> str:
        assert self.s3 is not None
        return f"s3://{self.s3.endpoint.bucket}/{self.prefix}"


@pytest.fixture(params=["local", "s3"])
def fleet(request: pytest.FixtureRequest, tmp_path: Path) -> Fleet:
    s3 = request.getfixturevalue("logged_s3") if request.param == "s3" else None
    return Fleet(request.param, tmp_path / "store", f"wait-{uuid.uuid4().hex}", s3)


def _source_of_checkout(cache: RepoCache, url: str) -> tuple[str, float]:
    with cache.checkout(url) as co:
        return co.source, time.monotonic()


@pytest.mark.timeout(120)
def test_a_host_waiting_for_another_hosts_clone_asks_the_store_once_a_round_and_restores_within_a_round(
    tmp_path: Path, served: UpstreamFactory, daemon: GitDaemon, fleet: Fleet
) -> None:
    url = daemon.url_for(served_upstream(served, f"waited-for-{fleet.kind}", commits=3, size=200_000))
    holder_store = fleet.gated_host()
    waiter_store = fleet.host()
    calls = count_store_calls(waiter_store)
    marks: list[int] = []
    with RepoCache(tmp_path / "holder", cold_store=holder_store, cold_publish="clone", lock_timeout=60) as holder:
        try:
            holder.ensure(url)  # cloned: its upload waits at the gate, the clone lease held (and renewed)
            assert holder_store.uploading.wait(10)
            waiting = RepoCache(tmp_path / "waiter", cold_store=waiter_store, cold_publish="clone", lock_timeout=60)
            with waiting as waiter, ThreadPoolExecutor(1) as pool:
                if fleet.s3 is not None:
                    marks.append(fleet.s3.mark())
                started = time.monotonic()
                future = pool.submit(_source_of_checkout, waiter, url)
                time.sleep(3.0)  # the rounds have grown to their longest by now (after 3.46 s: 0.05 s, x1.5, 1 s)
                if fleet.s3 is not None:
                    marks.append(fleet.s3.mark())
                grown = time.monotonic()
                time.sleep(3.0)
                if fleet.s3 is not None:
                    marks.append(fleet.s3.mark())
                opened = time.monotonic()
                holder_store.gate.set()  # the holder uploads, commits and gives the lease up
                source, done = future.result(timeout=60)
        finally:
            holder_store.gate.set()
        holder._cold.wait()  # type: ignore[union-attr]
    assert source == "restore"
    committed = holder_store.committed
    assert committed is not None

    waited = [name for when, name in calls if started <= when < opened]
    late = [name for when, name in calls if grown <= when < opened]
    # The first round: the miss's lookup, a lease attempt, a read of the holder's lease; then one look a round.
    assert len(waited) <= 3 + rounds_within(opened - started), waited
    assert len(late) <= (opened - grown) / LONGEST_ROUND + 1, late  # once grown: one request a second
    assert set(waited) <= {"_entries", "try_lease", "current_lease"}, waited

    # The waiter looks for the artifact within one round of its commit (the holder gives the lease up just after).
    looked = [when for when, name in calls if when > committed and name == "_entries"]
    assert looked and looked[0] - committed <= LONGEST_ROUND + 1.0, (looked[:1], committed)  # + a loaded machine
    print(
        f"{fleet.kind}: {len(waited)} store calls in a {opened - started:.1f} s wait ({len(late)} in its last "
        f"{opened - grown:.1f} s); artifact looked up {looked[0] - committed:.2f} s after its commit, restored "
        f"{done - committed:.2f} s after it"
    )

    if fleet.s3 is not None:  # what reached S3, counted at the server
        during = fleet.s3.requests(marks[0], marks[2], fleet.prefix)
        last = fleet.s3.requests(marks[1], marks[2], fleet.prefix)
        print(f"s3 requests: {len(during)} in the wait, {len(last)} in its last {opened - grown:.1f} s")
        # The first round's requests (the lookup: s3fs lists a missing key's directory and its parent; the lease
        # attempt's HEAD and GET; the lease read's HEAD and GET), then one HEAD of the lease object a round.
        assert len(during) <= 6 + rounds_within(opened - started), during
        assert len(last) <= (opened - grown) / LONGEST_ROUND + 1, last
        assert all('"HEAD ' in line for line in last), last


@pytest.mark.timeout(60)
@pytest.mark.parametrize("ending", ["released", "expired"])
def test_a_waiting_host_takes_the_lease_over_within_a_round_of_its_release_or_expiry(
    tmp_path: Path, fleet: Fleet, ending: str
) -> None:
    parsed = normalize_url(f"https://example.invalid/org/{ending}.git")
    other = fleet.host()
    lease = other.try_lease(parsed.key, "another-host", 3.0 if ending == "expired" else 600.0)
    assert lease is not None
    ends = time.monotonic() + (lease.expires - time.time())
    released: list[float] = []

    def release() -> None:
        released.append(time.monotonic())
        other.release_lease(lease)

    timer = threading.Timer(3.0, release)
    store = fleet.host()
    calls = count_store_calls(store)
    with RepoCache(tmp_path / "waiter", cold_store=store, cold_publish="clone", lock_timeout=30) as cache:
        cold = cache._cold
        assert cold is not None
        if ending == "released":
            timer.start()
        started = time.monotonic()
        try:
            manifest, claim = cold.claim(parsed)
            took = time.monotonic()
        finally:
            timer.cancel()
            if ending == "released":
                timer.join()
        assert manifest is None and claim is not None
        claim.release()
    ended = released[0] if released else ends
    assert ended - 0.05 <= took <= ended + LONGEST_ROUND + 0.5, (took - ended, ending)
    names = [name for when, name in calls if when <= took]  # not the release below
    assert names.count("try_lease") == 2, names  # the first attempt, and the one that took it
    # The first round (a lease attempt, a read of the lease), one look a round (and one more, shortened to land on
    # the expiry), and when it ended: the lookup, the attempt that took it, the lookup made after taking it.
    assert len(names) <= 5 + rounds_within(took - started) + (ending == "expired"), names


@pytest.mark.timeout(90)
def test_a_waiting_host_finds_an_artifact_published_without_the_lease_when_the_holder_next_renews(
    tmp_path: Path, served: UpstreamFactory, daemon: GitDaemon, fleet: Fleet
) -> None:
    url = daemon.url_for(served_upstream(served, f"published-aside-{fleet.kind}", commits=2))
    parsed = normalize_url(url)
    ttl = 1.5  # renewed every 0.5 s
    store = fleet.host()
    calls = count_store_calls(store)
    with (
        RepoCache(tmp_path / "holder", cold_store=fleet.host(), cold_publish="clone", cold_lease_ttl=ttl) as holder,
        RepoCache(tmp_path / "waiter", cold_store=store, cold_publish="clone", lock_timeout=30) as waiter,
        RepoCache(tmp_path / "publisher", cold_store=fleet.host()) as publisher,
        ThreadPoolExecutor(1) as pool,
    ):
        assert holder._cold is not None and waiter._cold is not None
        manifest, claim = holder._cold.claim(parsed)  # a live holder that never publishes (stuck in its clone)
        assert manifest is None and claim is not None
        try:
            started = time.monotonic()
            future = pool.submit(waiter._cold.claim, parsed)
            publisher.ensure(url)  # a host that held no lease (publishing off) has the repository...
            time.sleep(max(0.0, started + 3.0 - time.monotonic()))
            assert publisher.publish(url) is not None  # ... and uploads it (as an eviction would)
            published = time.monotonic()
            found, took_claim = future.result(timeout=30)
            took = time.monotonic()
        finally:
            claim.release()
    assert took_claim is None and found is not None and found.key == parsed.key
    # Seen at the holder's next renewal (every ttl/3), looked up within a round of it.
    assert took - published <= ttl / 3 + LONGEST_ROUND + 1.0, took - published
    names = [name for when, name in calls if when <= took]
    renewals = (took - started) / (ttl / 3) + 1
    assert names.count("current_lease") <= 1 + rounds_within(took - started) + 1, names
    assert names.count("_entries") <= renewals + 1, names  # a manifest lookup per renewal seen, not per round
    print(f"{fleet.kind}: found {took - published:.2f} s after the upload; {len(names)} store calls: {names}")


class _StoreOfAnOlderRelease:
    """A fleet store written before ``current_lease`` existed: every member of the :class:`FleetStore` protocol,
    handed to a real directory store, and nothing else."""

    def __init__(self, inner: LocalDirStore) -> None:
        self._inner = inner

    def __getattr__(self, name: str) -> Any:
        if name == "current_lease":
            raise AttributeError(name)
        return getattr(self._inner, name)

    @property
    def supports_leases(self) -> bool:
        return self._inner.supports_leases


@pytest.mark.timeout(120)
def test_a_fleet_store_without_current_lease_still_makes_one_clone_for_the_fleet(
    tmp_path: Path, served: UpstreamFactory, daemon: GitDaemon
) -> None:
    """``current_lease`` is optional: a waiting host whose store lacks it tries the lease and looks the artifact
    up each round instead, and still restores what the holder published rather than cloning."""
    url = daemon.url_for(served_upstream(served, "older-store", commits=3, size=200_000))
    holder_store = GatedStore(tmp_path / "store")
    waiter_store = _StoreOfAnOlderRelease(LocalDirStore(tmp_path / "store"))
    assert isinstance(waiter_store, FleetStore) and not hasattr(waiter_store, "current_lease")
    calls = count_store_calls(waiter_store._inner)
    with RepoCache(tmp_path / "holder", cold_store=holder_store, cold_publish="clone", lock_timeout=60) as holder:
        try:
            holder.ensure(url)  # cloned: its upload waits at the gate, the clone lease held
            assert holder_store.uploading.wait(10)
            waiting = RepoCache(tmp_path / "waiter", cold_store=waiter_store, cold_publish="clone", lock_timeout=60)
            with waiting as waiter, ThreadPoolExecutor(1) as pool:
                future = pool.submit(_source_of_checkout, waiter, url)
                time.sleep(2.0)
                tried = [name for _when, name in calls].count("try_lease")
                holder_store.gate.set()
                source, _done = future.result(timeout=60)
        finally:
            holder_store.gate.set()
        holder._cold.wait()  # type: ignore[union-attr]
    assert source == "restore"
    assert tried >= 3, calls  # it kept trying the lease while the holder held it
    assert "current_lease" not in [name for _when, name in calls]
