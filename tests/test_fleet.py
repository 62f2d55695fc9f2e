"""A fleet of hosts sharing one cold store: mirrors published after clones and fetches, one upstream clone for the
fleet, uploads that no miss waits for. Real upstreams over git://, a real directory and a real S3 endpoint."""

from __future__ import annotations

import io
import json
import os
import subprocess
import sys
import textwrap
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, BinaryIO

import pytest

from repocache import ColdStoreError, ConfigError, RepoCache
from repocache.cold import ColdStore, FleetStore, LocalDirStore, Manifest, open_cold_store, pack_mirror
from repocache.cold.store import ArtifactWriter
from repocache.keys import normalize_url
from repocache.testing import GitDaemon, Upstream, UpstreamFactory
from tests.helpers import (
    POISONS,
    DelegatingStore,
    assert_consistent,
    key_of,
    mirror_refs,
    poison_generation,
    served_upstream,
    stored_generations,
)
from tests.test_cold_store import make_mirror

ROOT = Path(__file__).resolve().parents[1]
StoreFactory = Callable[[], Any]


@pytest.fixture(params=["local", "s3"])
def shared(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[tuple[str, str, dict[str, str]]]:
    """(kind, cold_store spec, environment for other processes): a directory, or a bucket prefix on moto."""
    if request.param == "local":
        yield "local", str(tmp_path / "shared-store"), {}
        return
    endpoint, bucket = request.getfixturevalue("s3_endpoint")
    prefix = request.node.name.replace("[", "-").replace("]", "")
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("AWS_ENDPOINT_URL", endpoint)
        yield "s3", f"s3://{bucket}/{prefix}", {"AWS_ENDPOINT_URL": endpoint}


def _served(served: UpstreamFactory, name: str, size: int = 50_000) -> Upstream:
    return served_upstream(served, name, commits=3, size=size)


def test_a_clone_is_published_for_another_host_to_restore(
    tmp_path: Path, served: UpstreamFactory, daemon: GitDaemon, shared: tuple[str, str, dict[str, str]]
) -> None:
    _kind, store, _env = shared
    upstream = _served(served, f"published-{_kind}")
    url = daemon.url_for(upstream)
    with RepoCache(tmp_path / "host-a", cold_store=store, cold_publish="clone") as host_a:
        with host_a.checkout(url) as co:
            assert co.source == "clone"
    # closing waited for the upload
    with RepoCache(tmp_path / "host-b", cold_store=store) as host_b:
        (manifest,) = host_b.cold_entries()
        assert manifest.url == normalize_url(url).url
        with host_b.checkout(url) as co:
            assert co.source == "restore"
            assert mirror_refs(co.path) == upstream.refs()
        assert_consistent(host_b)
    assert os.listdir(tmp_path / "host-a" / "staging") == []  # no tar of the mirror was staged, no snapshot left


def test_without_publishing_a_clone_is_not_uploaded(tmp_path: Path, served: UpstreamFactory, daemon: GitDaemon) -> None:
    url = daemon.url_for(_served(served, "not-published"))
    with RepoCache(tmp_path / "host-a", cold_store=tmp_path / "store") as host_a:
        host_a.ensure(url)
        assert not (tmp_path / "store").exists()  # nothing was uploaded, so the store was never made
        with pytest.raises(ColdStoreError, match="does not exist"):  # a missing store is named, not empty
            host_a.cold_entries()


def test_always_publishes_again_after_a_fetch_once_the_artifact_is_older_than_the_bound(
    tmp_path: Path, served: UpstreamFactory, daemon: GitDaemon
) -> None:
    upstream = _served(served, "republished")
    url = daemon.url_for(upstream)
    store = tmp_path / "store"
    with RepoCache(tmp_path / "young", cold_store=store, cold_publish="always", cold_publish_after=3600) as cache:
        cache.ensure(url)
        cache._cold.wait()  # type: ignore[union-attr]
        (first,) = cache.cold_entries()
        upstream.commit({"second": "2"})
        with cache.checkout(url) as co:
            assert co.fetched
        cache._cold.wait()  # type: ignore[union-attr]
        assert [m.generation for m in cache.cold_entries()] == [first.generation]  # younger than the bound
    with RepoCache(tmp_path / "young", cold_store=store, cold_publish="always", cold_publish_after=0) as cache:
        upstream.commit({"third": "3"})
        with cache.checkout(url) as co:
            assert co.fetched
        cache._cold.wait()  # type: ignore[union-attr]
        (second,) = cache.cold_entries()
        assert second.generation != first.generation and second.created > first.created
    with RepoCache(tmp_path / "other-host", cold_store=store, fetch_ttl=3600) as other:
        with other.checkout(url) as co:
            assert co.source == "restore"
            assert mirror_refs(co.path) == upstream.refs()


def test_publish_uploads_now_and_not_again_until_the_mirror_changes(
    tmp_path: Path, served: UpstreamFactory, daemon: GitDaemon
) -> None:
    upstream = _served(served, "publish-now")
    url = daemon.url_for(upstream)
    with RepoCache(tmp_path / "host", cold_store=tmp_path / "store", fetch_ttl=3600) as cache:
        manifest = cache.publish(url)  # clones first
        assert manifest.url == normalize_url(url).url and manifest.ref_count == len(upstream.refs())
        assert cache.publish(url).generation == manifest.generation  # nothing fetched since: no upload
        assert cache.info(url).in_cold_store  # type: ignore[union-attr]
        assert cache.evict(url)  # the stored artifact is current: the eviction does not upload again
        assert [m.generation for m in cache.cold_entries()] == [manifest.generation]
        upstream.commit({"more": "1"})
        newer = cache.publish(url)  # restored and fetched, so the mirror is newer than the artifact: uploads
        assert newer.generation != manifest.generation
        assert_consistent(cache)


@pytest.mark.parametrize("kind", POISONS)
def test_a_poisoned_generation_never_stops_the_fleet_publishing(
    tmp_path: Path, served: UpstreamFactory, daemon: GitDaemon, shared: tuple[str, str, dict[str, str]], kind: str
) -> None:
    store_kind, spec, _env = shared
    upstream = _served(served, f"poisoned-{store_kind}-{kind}")
    url = daemon.url_for(upstream)
    parsed = normalize_url(url)
    make_mirror(tmp_path / "hostile.git", content=b"not the upstream")
    hostile = io.BytesIO()
    pack_mirror(tmp_path / "hostile.git", hostile)
    store = open_cold_store(spec)
    assert store is not None
    poison = poison_generation(store, parsed.key, parsed.url, kind, hostile.getvalue())
    with RepoCache(tmp_path / "host-a", cold_store=spec) as host_a:
        honest = host_a.publish(url)  # a clone: nothing usable to restore
        assert honest.generation != poison and honest.ref_count == len(upstream.refs())
        assert host_a.stats().clones == 1
    assert stored_generations(store, parsed.key) == {honest.generation}  # the commit deleted the poison
    poison_generation(store, parsed.key, parsed.url, kind, hostile.getvalue())  # written again, after the upload
    with RepoCache(tmp_path / "host-b", cold_store=spec) as host_b:
        assert [m.generation for m in host_b.cold_entries()] == [honest.generation]
        with host_b.checkout(url) as co:
            assert co.source == "restore"
            assert mirror_refs(co.path) == upstream.refs()
        assert (host_b.stats().clones, host_b.stats().restores) == (0, 1)
        assert host_b.prune_cold() == []  # no retention: only the poison goes
        assert stored_generations(store, parsed.key) == {honest.generation}
        assert_consistent(host_b)


def test_publish_without_a_cold_store_is_a_config_error(cache_root: Path, upstreams: UpstreamFactory) -> None:
    with RepoCache(cache_root) as cache, pytest.raises(ConfigError, match="cold store"):
        cache.publish(upstreams.create("nowhere").url)


def test_publish_settings_are_validated(cache_root: Path) -> None:
    with pytest.raises(ConfigError, match="cold_publish="):
        RepoCache(cache_root, cold_publish="sometimes")
    with pytest.raises(ConfigError, match="cold_publish_after"):
        RepoCache(cache_root, cold_publish_after=-1)


_HOST = textwrap.dedent(
    """
    import json, sys, time
    from repocache import RepoCache
    root, store, url, go = sys.argv[1:5]
    with RepoCache(root, cold_store=store, cold_publish="clone") as cache:
        print("ready", flush=True)
        while time.time() < float(go):
            time.sleep(0.001)
        started = time.monotonic()
        with cache.checkout(url) as co:
            source = co.source
        print(json.dumps({"source": source, "seconds": time.monotonic() - started}), flush=True)
    """
)


def _hosts(tmp_path: Path, store: str, url: str, env: dict[str, str], count: int) -> list[dict[str, Any]]:
    """``count`` processes with a root each, missing ``url`` at the same instant; their replies."""
    go = time.time() + 3.0
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
        out, err = process.communicate(timeout=120)
        assert process.returncode == 0, err[-3000:]
        replies.append(json.loads(out.splitlines()[-1]))
    return replies


def test_hosts_missing_the_same_repository_at_once_clone_it_once(
    tmp_path: Path, served: UpstreamFactory, daemon: GitDaemon, shared: tuple[str, str, dict[str, str]]
) -> None:
    kind, store, env = shared
    upstream = _served(served, f"stampede-{kind}", size=200_000)
    replies = _hosts(tmp_path, store, daemon.url_for(upstream), env, 6)
    sources = sorted(reply["source"] for reply in replies)
    assert sources == ["clone"] + ["restore"] * 5, replies


def test_a_dead_hosts_lease_is_taken_over_once_it_expires(
    tmp_path: Path, served: UpstreamFactory, daemon: GitDaemon, shared: tuple[str, str, dict[str, str]]
) -> None:
    kind, store, _env = shared
    url = daemon.url_for(_served(served, f"dead-holder-{kind}"))
    with RepoCache(tmp_path / "host", cold_store=store, cold_publish="clone") as cache:
        fleet = cache._cold.store  # type: ignore[union-attr]
        assert isinstance(fleet, FleetStore)
        dead = fleet.try_lease(key_of(url), "a-host-that-died", 1.5)
        assert dead is not None
        started = time.monotonic()
        left = dead.expires - time.time()
        with cache.checkout(url) as co:
            assert co.source == "clone"
        waited = time.monotonic() - started
        assert left - 0.1 <= waited < 30, (left, waited)
        cache._cold.wait()  # type: ignore[union-attr]
        assert len(cache.cold_entries()) == 1
        assert fleet.try_lease(key_of(url), "next-host", 60) is not None  # released after the upload


def test_a_waiting_host_clones_itself_when_lock_timeout_runs_out(
    tmp_path: Path, served: UpstreamFactory, daemon: GitDaemon
) -> None:
    url = daemon.url_for(_served(served, "stuck-holder"))
    store = LocalDirStore(tmp_path / "store")
    assert store.try_lease(key_of(url), "a-live-but-stuck-host", 3600) is not None
    with RepoCache(tmp_path / "host", cold_store=store, cold_publish="clone", lock_timeout=1.0) as cache:
        started = time.monotonic()
        with cache.checkout(url) as co:
            assert co.source == "clone"
        assert time.monotonic() - started < 20


def test_a_store_without_leases_or_streaming_still_publishes(
    tmp_path: Path, served: UpstreamFactory, daemon: GitDaemon
) -> None:
    upstream = _served(served, "plain-store")
    url = daemon.url_for(upstream)
    plain = DelegatingStore(LocalDirStore(tmp_path / "store"))
    assert isinstance(plain, ColdStore)
    with RepoCache(tmp_path / "a", cold_store=plain, cold_publish="clone") as cache:
        assert cache.ensure(url)
    with RepoCache(tmp_path / "b", cold_store=plain) as cache, cache.checkout(url) as co:
        assert co.source == "restore"


class _GatedStore(LocalDirStore):
    """A directory store whose uploads wait for a gate: an upload that takes as long as the test needs."""

    def __init__(self, path: Path) -> None:
        super().__init__(path)
        self.gate = threading.Event()
        self.uploading = threading.Event()

    def put_stream(self, key: str, write: ArtifactWriter, **options: Any) -> Manifest | None:
        self.uploading.set()
        assert self.gate.wait(60)
        return super().put_stream(key, write, **options)


def test_no_miss_or_reader_waits_for_an_upload(tmp_path: Path, served: UpstreamFactory, daemon: GitDaemon) -> None:
    first = daemon.url_for(_served(served, "uploading"))
    second = daemon.url_for(_served(served, "missed-meanwhile"))
    store = _GatedStore(tmp_path / "store")
    root = tmp_path / "host"
    with RepoCache(root, cold_store=store, cold_publish="clone", max_bytes="1GB", lock_timeout=10) as cache:
        try:
            cache.ensure(first)  # returns while its upload waits at the gate
            assert store.uploading.wait(10)
            with RepoCache(root, max_bytes="1GB", lock_timeout=10) as other_process:
                with other_process.checkout(second) as co:  # a miss, making room under the budget lock
                    assert co.source == "clone"
                with other_process.checkout(first) as co:  # a reader of the repository being uploaded
                    assert co.source == "hit" and co.fetched  # and its fetch goes on too
                assert not other_process.evict(first)  # the upload holds it: nothing deleted under it
            assert not store.gate.is_set()
        finally:
            store.gate.set()
        cache._cold.wait()  # type: ignore[union-attr]
        assert len(list(store.list())) == 1


def test_a_held_clone_lease_is_renewed_while_its_holder_works(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, upstreams: UpstreamFactory
) -> None:
    from repocache import cold_tier

    monkeypatch.setattr(cold_tier, "LEASE_TTL", 0.4)
    store = LocalDirStore(tmp_path / "store")
    upstream = upstreams.create("long-clone")
    with RepoCache(tmp_path / "host", cold_store=store, cold_publish="clone") as cache:
        cold = cache._cold
        assert cold is not None
        parsed = normalize_url(upstream.url)
        manifest, claim = cold.claim(parsed)
        assert manifest is None and claim is not None
        try:
            time.sleep(1.2)  # three lease lifetimes: a clone of a big repository
            assert store.try_lease(parsed.key, "another-host", 60) is None
        finally:
            claim.release()
        assert store.try_lease(parsed.key, "another-host", 60) is not None


def test_a_failed_clone_gives_its_lease_up_at_once(tmp_path: Path, served_dir: Path, daemon: GitDaemon) -> None:
    from repocache.errors import CloneError

    url = daemon.url_for(served_dir / "no-such-repository.git")
    store = LocalDirStore(tmp_path / "store")
    with RepoCache(tmp_path / "host", cold_store=store, cold_publish="clone") as cache:
        with pytest.raises(CloneError):
            cache.ensure(url)
    assert store.try_lease(key_of(url), "a-waiting-host", 60) is not None  # it may clone now


class _WatchingStore(LocalDirStore):
    """A directory store that looks at the cache's staging directory while an artifact streams in."""

    def __init__(self, path: Path, staging: Path) -> None:
        super().__init__(path)
        self.staging = staging
        self.seen: list[tuple[str, bool, int]] = []
        self.calls = 0

    def put_stream(self, key: str, write: ArtifactWriter, **options: Any) -> Manifest | None:
        self.calls += 1

        def watching(out: BinaryIO) -> Manifest:
            manifest = write(out)
            self.seen += [(p.name, p.is_dir(), p.stat().st_size) for p in self.staging.iterdir()]
            return manifest

        return super().put_stream(key, watching, **options)


@pytest.mark.parametrize("how", ["eviction", "publish"])
def test_uploads_stream_into_the_store_without_a_local_tar(
    tmp_path: Path, served: UpstreamFactory, daemon: GitDaemon, how: str
) -> None:
    url = daemon.url_for(_served(served, f"streamed-{how}", size=300_000))
    root = tmp_path / "host"
    store = _WatchingStore(tmp_path / "store", root / "staging")
    with RepoCache(root, cold_store=store) as cache:
        cache.ensure(url)
        if how == "eviction":
            assert cache.evict(url)
        else:
            cache.publish(url)
        (manifest,) = cache.cold_entries()
    assert manifest.size_bytes > 900_000
    assert store.calls == 1
    assert all(is_dir for _name, is_dir, _size in store.seen), store.seen  # at most a snapshot of hard links
    assert os.listdir(root / "staging") == []
