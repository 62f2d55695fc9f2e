"""The cold tier inside RepoCache: evicted mirrors are offloaded and come back by restore instead of a clone."""

from __future__ import annotations

import os
import re
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from repocache import ConfigError, Progress, RepoCache
from repocache.cold import FsspecStore, LocalDirStore
from repocache.testing import GitDaemon, SmartHTTPServer, Upstream, UpstreamFactory
from tests.helpers import assert_consistent, mirror_refs, served_upstream

StoreFactory = Callable[[str], Any]


@pytest.fixture(params=["local", "s3"])
def cold(request: pytest.FixtureRequest, tmp_path: Path) -> StoreFactory:
    """Makes a cold store spec per name: a real directory, or a bucket prefix on a real S3 endpoint (moto)."""
    if request.param == "local":
        return lambda name: f"file://{tmp_path / 'cold' / name}"
    endpoint, bucket = request.getfixturevalue("s3_endpoint")
    return lambda name: FsspecStore(
        f"s3://{bucket}/{request.node.name}-{name}".replace("[", "-").replace("]", ""),
        client_kwargs={"endpoint_url": endpoint},
    )


def _served(served: UpstreamFactory, name: str, size: int = 50_000) -> Upstream:
    return served_upstream(served, name, commits=4, size=size, tag=True)


def test_evicted_mirror_is_offloaded_and_restored_then_fetched(
    cache_root: Path, served: UpstreamFactory, daemon: GitDaemon, cold: StoreFactory
) -> None:
    upstream = _served(served, "roundtrip")
    url = daemon.url_for(upstream)
    with RepoCache(cache_root, cold_store=cold("shared")) as cache:
        cache.ensure(url)
        assert cache.evict(url)
        manifests = cache.cold_entries()
        assert [m.url for m in manifests] == [url.removesuffix(".git")]
        assert manifests[0].ref_count == len(upstream.refs()) and manifests[0].head == "refs/heads/main"
        upstream.commit({"after-eviction": "1"})
        events: list[Progress] = []
        with cache.checkout(url, progress=events.append) as co:
            assert co.source == "restore" and co.fetched and not co.stale
            assert mirror_refs(co.path) == upstream.refs()  # restored, then brought up to date
        assert {e.operation for e in events} >= {"restore"}
        entry = cache.info(url)
        assert entry is not None and entry.in_cold_store
        stats = cache.stats()
        assert (stats.clones, stats.restores, stats.fetches, stats.evictions) == (1, 1, 1, 1)
        assert_consistent(cache)


def test_restore_does_not_contact_upstream_for_objects(
    cache_root: Path, served: UpstreamFactory, served_dir: Path, cold: StoreFactory
) -> None:
    upstream = _served(served, "no-reclone")
    with SmartHTTPServer(served_dir) as server:
        url = server.url_for(upstream)
        with RepoCache(cache_root, cold_store=cold("quiet")) as cache:
            cache.ensure(url)
            cache.evict(url)
            before = len(server.requests)
        with RepoCache(cache_root, cold_store=cold("quiet"), fetch_ttl=3600) as cache:
            with cache.checkout(url) as co:
                assert co.source == "restore"
                assert co.fetched
            # The restored copy is as old as its artifact, so it is fetched once: the refs are advertised (one GET)
            # and, the restored objects being complete, nothing is asked for (no upload-pack POST, no clone).
            assert server.requests[before:] == [("GET", f"/{upstream.path.name}/info/refs")]


def test_a_corrupt_artifact_is_reported_and_falls_back_to_a_clone(
    cache_root: Path, served: UpstreamFactory, daemon: GitDaemon, tmp_path: Path
) -> None:
    upstream = _served(served, "corrupt")
    url = daemon.url_for(upstream)
    store_dir = tmp_path / "cold-corrupt"
    with RepoCache(cache_root, cold_store=f"file://{store_dir}") as cache:
        cache.ensure(url)
        cache.evict(url)
        artifacts = [p for p in store_dir.rglob("*.tar")]
        assert len(artifacts) == 1
        data = bytearray(artifacts[0].read_bytes())
        data[len(data) // 2] ^= 0xFF
        artifacts[0].write_bytes(bytes(data))
        with pytest.warns(RuntimeWarning, match="unusable"), cache.checkout(url) as co:
            assert co.source == "clone"
            assert mirror_refs(co.path) == upstream.refs()
        assert list((cache_root / "staging").iterdir()) == []
        assert_consistent(cache)


def test_a_truncated_artifact_falls_back_to_a_clone(
    cache_root: Path, served: UpstreamFactory, daemon: GitDaemon, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    upstream = _served(served, "truncated")
    url = daemon.url_for(upstream)
    store_dir = tmp_path / "cold-truncated"
    with RepoCache(cache_root, cold_store=store_dir) as cache:
        cache.ensure(url)
        cache.evict(url)
        (artifact,) = store_dir.rglob("*.tar")
        with open(artifact, "r+b") as handle:
            handle.truncate(artifact.stat().st_size // 3)
        with cache.checkout(url) as co:  # the store's listing shows the artifact short: the generation is skipped
            assert co.source == "clone"
        (skipped,) = [r.getMessage() for r in caplog.records if "ignoring the cold store generation" in r.getMessage()]
        assert re.search(r"holds \d+ bytes, its manifest declares \d+", skipped), skipped


def test_another_host_restores_from_the_shared_store_making_room_first(
    tmp_path: Path, served: UpstreamFactory, daemon: GitDaemon, cold: StoreFactory
) -> None:
    big = _served(served, "shared-big", size=100_000)
    small = _served(served, "shared-small", size=100_000)
    with RepoCache(tmp_path / "host-a", cold_store=cold("hosts")) as host_a:
        big_size = host_a.ensure(daemon.url_for(big)).size_bytes
        host_a.evict(daemon.url_for(big))
    with RepoCache(tmp_path / "host-b", cold_store=cold("hosts"), max_bytes=big_size * 3 // 2) as host_b:
        host_b.ensure(daemon.url_for(small))
        on_disk_during: list[set[str]] = []

        def record(event: Progress) -> None:
            on_disk_during.append({p.name for p in (tmp_path / "host-b" / "repos").iterdir()})

        with host_b.checkout(daemon.url_for(big), progress=record) as co:
            assert co.source == "restore"
        assert on_disk_during and on_disk_during[0] == set()  # the small repo went before the restore began
        assert host_b.stats().bytes_used <= big_size * 3 // 2


def test_only_repos_above_cold_min_bytes_are_offloaded(
    cache_root: Path, upstreams: UpstreamFactory, tmp_path: Path
) -> None:
    tiny = upstreams.create("tiny")
    large = upstreams.create("large")
    large.commits(3, size=200_000)
    with RepoCache(cache_root, cold_store=tmp_path / "cold-min", cold_min_bytes="300KB") as cache:
        cache.ensure(tiny.url)
        cache.ensure(large.url)
        cache.evict(tiny.url)
        cache.evict(large.url)
        assert [m.url for m in cache.cold_entries()] == [f"file://{large.path}"]


def test_zstd_artifacts_round_trip(cache_root: Path, upstreams: UpstreamFactory, tmp_path: Path) -> None:
    upstream = upstreams.create("zstd", files={"text.txt": "compressible " * 5000})
    with RepoCache(cache_root, cold_store=tmp_path / "cold-zstd", cold_compression="zstd") as cache:
        cache.ensure(upstream.url)
        cache.evict(upstream.url)
        (manifest,) = cache.cold_entries()
        assert manifest.compression == "zstd" and manifest.size_bytes < manifest.mirror_bytes
        with cache.checkout(upstream.url) as co:
            assert co.source == "restore" and mirror_refs(co.path) == upstream.refs()


def test_prune_cold_applies_retention(cache_root: Path, upstreams: UpstreamFactory, tmp_path: Path) -> None:
    first, second = upstreams.create("old"), upstreams.create("new")
    with RepoCache(cache_root, cold_store=tmp_path / "cold-prune") as cache:
        for upstream in (first, second):
            cache.ensure(upstream.url)
            cache.evict(upstream.url)
        assert len(cache.cold_entries()) == 2
        assert cache.prune_cold(older_than=3600) == []
        pruned = cache.prune_cold(keep_bytes=cache.cold_entries()[0].size_bytes)
        assert [m.url for m in pruned] == [f"file://{first.path}"]
        assert [m.url for m in cache.cold_entries()] == [f"file://{second.path}"]
        with cache.checkout(first.url) as co:
            assert co.source == "clone"


def test_cold_settings_are_validated(cache_root: Path) -> None:
    with pytest.raises(ConfigError, match="cold_compression"):
        RepoCache(cache_root, cold_store=None, cold_compression="gzip")
    with pytest.raises(ConfigError, match="cold_min_bytes"):
        RepoCache(cache_root, cold_min_bytes="big")
    with pytest.raises(ConfigError, match="cold_store"):
        RepoCache(cache_root, cold_store=42)  # type: ignore[arg-type]


def test_an_s3_url_string_works_with_the_endpoint_from_the_environment(
    cache_root: Path,
    upstreams: UpstreamFactory,
    s3_endpoint: tuple[str, str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    endpoint, bucket = s3_endpoint
    monkeypatch.setenv("AWS_ENDPOINT_URL", endpoint)
    upstream = upstreams.create("s3-string")
    with RepoCache(cache_root, cold_store=f"s3://{bucket}/from-env") as cache:
        cache.ensure(upstream.url)
        cache.evict(upstream.url)
        assert len(cache.cold_entries()) == 1
        with cache.checkout(upstream.url) as co:
            assert co.source == "restore"


def test_a_local_directory_store_object_is_accepted(
    cache_root: Path, upstreams: UpstreamFactory, tmp_path: Path
) -> None:
    upstream = upstreams.create("object-store")
    store = LocalDirStore(tmp_path / "obj")
    with RepoCache(cache_root, cold_store=store) as cache:
        cache.ensure(upstream.url)
        cache.evict(upstream.url)
        assert store.exists(cache.cold_entries()[0].key)
    assert os.listdir(cache_root / "staging") == []
