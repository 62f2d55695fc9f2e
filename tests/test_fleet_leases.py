"""Clone leases on GCS and Azure stores, and the check that a store enforces conditional writes before its first
lease. Real emulators on 127.0.0.1: fake-gcs-server (enforces ``ifGenerationMatch``), Azurite (enforces
``If-None-Match``/``If-Match``), gcp-storage-emulator (ignores ``ifGenerationMatch``), and moto S3 behind a double
that drops the conditions."""

from __future__ import annotations

import json
import logging
import os
import subprocess
import sys
import textwrap
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from repocache import ColdStoreError, RepoCache
from repocache.cold import FsspecStore, Lease
from repocache.cold.conditional import S3ConditionalWrites
from repocache.cold.enforcement import check_enforcement, forget_enforcement
from repocache.testing import GitDaemon, UpstreamFactory
from repocache.testing.emulators import Emulated
from tests._emulators import azurite, fake_gcs, ignoring_gcs, store_url  # noqa: F401
from tests._fleet import assert_current_lease_follows, kill_a_lease_holder
from tests.helpers import key_of, served_upstream

ROOT = Path(__file__).resolve().parents[1]
_NOT_ENFORCED = "does not enforce conditional writes"


@pytest.fixture(autouse=True)
def _fresh_enforcement() -> Iterator[None]:
    """Each test sees its stores checked anew (the outcome is otherwise kept for the process)."""
    forget_enforcement()
    yield
    forget_enforcement()


@pytest.fixture(params=["gcs", "azure"])
def enforcing(request: pytest.FixtureRequest) -> tuple[str, Emulated]:
    """(protocol, emulator) of a store that enforces its conditions: fake-gcs-server or Azurite."""
    if request.param == "gcs":
        return "gs", request.getfixturevalue("fake_gcs")
    return "az", request.getfixturevalue("azurite")


def _prefix(request: pytest.FixtureRequest) -> str:
    return str(request.node.name).replace("[", "-").replace("]", "")


def _store(enforcing: tuple[str, Emulated], prefix: str) -> FsspecStore:
    protocol, emulated = enforcing
    return FsspecStore(store_url(emulated, protocol, prefix), **emulated.storage_options)


@pytest.mark.timeout(60)
def test_the_emulators_enforce_conditions_as_recorded(
    fake_gcs: Emulated,  # noqa: F811
    azurite: Emulated,  # noqa: F811
    ignoring_gcs: Emulated,  # noqa: F811
) -> None:
    def problem(protocol: str, emulated: Emulated) -> str | None:
        store = FsspecStore(store_url(emulated, protocol, "probe"), **emulated.storage_options)
        assert store._writes is not None
        return check_enforcement(store._writes, f"{store._root}/.leases/.probe-t.json", store._fs.rm_file)

    assert problem("gs", fake_gcs) is None
    assert problem("az", azurite) is None
    assert "second create-only write" in str(problem("gs", ignoring_gcs))


@pytest.mark.timeout(60)
def test_a_lease_on_gcs_or_azure_has_one_holder_until_released_or_expired(
    enforcing: tuple[str, Emulated], request: pytest.FixtureRequest
) -> None:
    store = _store(enforcing, _prefix(request))
    assert store.supports_leases
    first = store.try_lease("k", "host-a", 30)
    assert first is not None
    assert store.try_lease("k", "host-b", 30) is None
    renewed = store.renew_lease(first, 30)
    assert renewed is not None and renewed.token != first.token
    assert store.renew_lease(first, 30) is None  # a stale version cannot renew
    store.release_lease(first)  # stale: leaves the renewed lease alone
    assert store.try_lease("k", "host-b", 30) is None
    store.release_lease(renewed)
    second = store.try_lease("k", "host-b", 1.0)
    assert second is not None
    assert store.try_lease("k", "host-a", 30) is None
    time.sleep(1.2)
    third = store.try_lease("k", "host-a", 30)  # expired: taken over
    assert third is not None
    assert store.renew_lease(second, 30) is None  # its holder learns it was lost
    assert store._fs.find(f"{store._root}/.leases") == [f"{store._root}/.leases/k.json"]  # no probe left


@pytest.mark.timeout(60)
def test_a_watched_lease_on_gcs_or_azure_reads_as_taken_unchanged_renewed_and_released(
    enforcing: tuple[str, Emulated], request: pytest.FixtureRequest
) -> None:
    assert_current_lease_follows(_store(enforcing, _prefix(request)), "watched")


@pytest.mark.timeout(60)
def test_threads_taking_over_one_expired_lease_have_exactly_one_winner(
    enforcing: tuple[str, Emulated], request: pytest.FixtureRequest
) -> None:
    store = _store(enforcing, _prefix(request))
    for round_ in range(3):
        key = f"race-{round_}"
        if round_:  # rounds after the first race over an expired lease (replacement), the first over creation
            assert store.try_lease(key, "gone", 0.2) is not None
            time.sleep(0.3)
        start = threading.Barrier(6)
        won: list[Lease] = []

        def take(name: str, key: str = key, start: threading.Barrier = start, won: list[Lease] = won) -> None:
            start.wait()
            lease = store.try_lease(key, name, 30)
            if lease is not None:
                won.append(lease)

        threads = [threading.Thread(target=take, args=(f"host-{i}",)) for i in range(6)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(30)
        assert len(won) == 1, won


class _IgnoringS3(S3ConditionalWrites):
    """A store double: S3 that accepts every conditional write as a plain PUT (as old MinIO did)."""

    def _put(self, path: str, data: bytes, **condition: str) -> str | None:
        return super()._put(path, data)


@pytest.mark.timeout(60)
def test_an_s3_store_that_ignores_conditions_takes_no_lease_and_warns_once(
    s3_endpoint: tuple[str, str], request: pytest.FixtureRequest, caplog: pytest.LogCaptureFixture
) -> None:
    endpoint, bucket = s3_endpoint
    store = FsspecStore(f"s3://{bucket}/{_prefix(request)}", endpoint_url=endpoint)
    honest = FsspecStore(f"s3://{bucket}/{_prefix(request)}-honest", endpoint_url=endpoint)
    store._writes = _IgnoringS3(store._fs)
    with caplog.at_level(logging.WARNING, logger="repocache.cold"):
        assert not store.supports_leases
        assert not store.supports_leases  # asked again: the outcome is kept, no second warning
        with pytest.raises(ColdStoreError, match=_NOT_ENFORCED):
            store.try_lease("k", "host-a", 30)
        assert honest.supports_leases  # moto enforces them
    warnings = [r for r in caplog.records if _NOT_ENFORCED in r.getMessage()]
    assert len(warnings) == 1, caplog.text
    assert "S3" in warnings[0].getMessage() and store.url in warnings[0].getMessage()
    assert store._fs.find(f"{store._root}/.leases") == []  # the probe was deleted


@pytest.mark.timeout(60)
def test_a_gcs_store_that_ignores_conditions_takes_no_lease_and_warns_once(
    ignoring_gcs: Emulated,  # noqa: F811
    request: pytest.FixtureRequest,
    caplog: pytest.LogCaptureFixture,
) -> None:
    store = FsspecStore(store_url(ignoring_gcs, "gs", _prefix(request)), **ignoring_gcs.storage_options)
    with caplog.at_level(logging.WARNING, logger="repocache.cold"):
        assert not store.supports_leases
        assert not FsspecStore(store.url, **ignoring_gcs.storage_options).supports_leases  # same store: kept
        with pytest.raises(ColdStoreError, match=_NOT_ENFORCED):
            store.try_lease("k", "host-a", 30)
    assert [r.getMessage() for r in caplog.records].count(caplog.records[0].getMessage()) == 1
    assert len([r for r in caplog.records if _NOT_ENFORCED in r.getMessage()]) == 1, caplog.text


_HOST = textwrap.dedent(
    """
    import json, sys, time
    from repocache import RepoCache
    root, store, url, go = sys.argv[1:5]
    with RepoCache(root, cold_store=store, cold_publish="clone", lock_timeout=60) as cache:
        while time.time() < float(go):
            time.sleep(0.001)
        with cache.checkout(url) as co:
            source = co.source
        print(json.dumps({"source": source}), flush=True)
    """
)


def _hosts(tmp_path: Path, store: str, url: str, env: dict[str, str], count: int) -> list[tuple[str, str]]:
    """``count`` processes missing ``url`` at the same instant on ``store``: (source, stderr) of each."""
    go = time.time() + 4.0
    environment = dict(os.environ, PYTHONPATH=str(ROOT), **env)
    processes = [
        subprocess.Popen(
            [sys.executable, "-c", _HOST, str(tmp_path / f"host-{i}"), store, url, str(go)],
            env=environment,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for i in range(count)
    ]
    replies = []
    for process in processes:
        out, err = process.communicate(timeout=150)
        assert process.returncode == 0, err[-3000:]
        replies.append((json.loads(out.splitlines()[-1])["source"], err))
    return replies


@pytest.mark.timeout(180)
def test_hosts_missing_a_repository_at_once_on_gcs_or_azure_clone_it_once(
    tmp_path: Path,
    served: UpstreamFactory,
    daemon: GitDaemon,
    enforcing: tuple[str, Emulated],
    request: pytest.FixtureRequest,
) -> None:
    protocol, emulated = enforcing
    url = daemon.url_for(served_upstream(served, f"lease-race-{protocol}", commits=3, size=200_000))
    replies = _hosts(tmp_path, store_url(emulated, protocol, _prefix(request)), url, emulated.env, 4)
    assert sorted(source for source, _ in replies) == ["clone", "restore", "restore", "restore"], replies


@pytest.mark.timeout(180)
def test_hosts_on_a_store_that_ignores_conditions_each_clone_and_warn_once(
    tmp_path: Path,
    served: UpstreamFactory,
    daemon: GitDaemon,
    ignoring_gcs: Emulated,  # noqa: F811
    request: pytest.FixtureRequest,
) -> None:
    url = daemon.url_for(served_upstream(served, "lease-ignored", commits=3, size=50_000))
    replies = _hosts(tmp_path, store_url(ignoring_gcs, "gs", _prefix(request)), url, ignoring_gcs.env, 3)
    # No host believes it holds a lease, so none waits for another: each clones (or restores one's upload).
    assert "clone" in {source for source, _ in replies}
    for _source, err in replies:
        assert err.count(_NOT_ENFORCED) == 1, err[-2000:]
    store = FsspecStore(store_url(ignoring_gcs, "gs", _prefix(request)), **ignoring_gcs.storage_options)
    assert store._fs.find(f"{store._root}/.leases") == []  # no host ever wrote a lease (nor left a probe)


@pytest.mark.timeout(120)
def test_a_lease_holder_killed_on_gcs_or_azure_delays_the_fleet_at_most_its_lease_ttl(
    tmp_path: Path,
    served: UpstreamFactory,
    daemon: GitDaemon,
    enforcing: tuple[str, Emulated],
    request: pytest.FixtureRequest,
) -> None:
    protocol, emulated = enforcing
    url = daemon.url_for(served_upstream(served, f"lease-killed-{protocol}", commits=3, size=50_000))
    spec = store_url(emulated, protocol, _prefix(request))
    store = FsspecStore(spec, **emulated.storage_options)
    killed = kill_a_lease_holder(tmp_path / "dying", spec, url, store, emulated.env)
    with RepoCache(tmp_path / "survivor", cold_store=store, cold_publish="clone", lock_timeout=30) as cache:
        with cache.checkout(url) as co:
            assert co.source == "clone"
        waited = time.monotonic() - killed
        cache._cold.wait()  # type: ignore[union-attr]
    assert 0.5 <= waited < 2.0 + 0.5 + 10, waited  # what was left of the lease (renewed every 2/3 s), a poll, the clone
    assert store.get_manifest(key_of(url)) is not None


class _FailingOnceS3(S3ConditionalWrites):
    """A store double: S3 whose first write fails as an unreachable store's would."""

    failed = False

    def create(self, path: str, data: bytes) -> str | None:
        if not self.failed:
            self.failed = True
            raise ConnectionError("connection refused")
        return super().create(path, data)


@pytest.mark.timeout(60)
def test_a_store_failing_during_the_check_takes_no_lease_that_time_and_is_checked_again(
    s3_endpoint: tuple[str, str], request: pytest.FixtureRequest, caplog: pytest.LogCaptureFixture
) -> None:
    endpoint, bucket = s3_endpoint
    store = FsspecStore(f"s3://{bucket}/{_prefix(request)}", endpoint_url=endpoint)
    store._writes = _FailingOnceS3(store._fs)
    with caplog.at_level(logging.WARNING, logger="repocache.cold"):
        assert not store.supports_leases
        assert "connection refused" in caplog.text and "cloning independently" in caplog.text
        assert store.supports_leases  # the failure was not kept: checked again, and it enforces
    assert _NOT_ENFORCED not in caplog.text
    assert store.try_lease("k", "host-a", 30) is not None
