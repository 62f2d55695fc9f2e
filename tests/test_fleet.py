"""A fleet of hosts sharing one cold store: mirrors published after clones and fetches, one upstream clone for the
fleet, uploads that no miss waits for. Real upstreams over git://, a real directory and a real S3 endpoint."""

from __future__ import annotations

import dataclasses
import hashlib
import io
import json
import os
import subprocess
import sys
import textwrap
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, BinaryIO

import pytest

from repocache import ColdStoreError, ConfigError, RepoCache, gitops
from repocache.cold import ColdStore, FleetStore, LocalDirStore, Manifest, open_cold_store, pack_mirror
from repocache.cold.store import ArtifactWriter
from repocache.gitops.mirror import check_restored_commit_graph
from repocache.keys import normalize_url
from repocache.testing import GitDaemon, SmartHTTPServer, Upstream, UpstreamFactory
from tests._fleet import GatedStore, kill_a_lease_holder
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
        with cache.checkout(url, max_age=0) as co:  # within fetch_ttl of the artifact's fetch: only on demand
            assert co.source == "restore" and co.fetched
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
    root, store, url, go, options = sys.argv[1:6]
    with RepoCache(root, cold_store=store, cold_publish="clone", **json.loads(options)) as cache:
        print("ready", flush=True)
        while time.time() < float(go):
            time.sleep(0.001)
        started, asked = time.monotonic(), time.time()
        with cache.checkout(url) as co:
            source, fetched, filter = co.source, co.fetched, co.filter
        reply = {"source": source, "fetched": fetched, "seconds": time.monotonic() - started, "asked": asked}
        reply["filter"] = filter
        print(json.dumps(reply), flush=True)
    """
)


def _hosts(
    tmp_path: Path, store: str, url: str, env: dict[str, str], count: int, **options: Any
) -> list[dict[str, Any]]:
    """``count`` processes with a root each (``RepoCache`` keyword ``options`` beside the store and
    ``cold_publish="clone"``), missing ``url`` at the same instant; their replies."""
    go = time.time() + 3.0
    environment = dict(os.environ, PYTHONPATH=str(ROOT), **env)
    processes = [
        subprocess.Popen(
            [sys.executable, "-c", _HOST, str(tmp_path / f"host-{i}"), store, url, str(go), json.dumps(options)],
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


@pytest.mark.timeout(180)
def test_hosts_missing_the_same_partial_repository_clone_it_once_and_restore_it_partial(
    tmp_path: Path, served: UpstreamFactory, daemon: GitDaemon, shared: tuple[str, str, dict[str, str]]
) -> None:
    kind, store, env = shared
    upstream = _served(served, f"partial-stampede-{kind}", size=200_000)
    subprocess.run(["git", "config", "uploadpack.allowFilter", "true"], cwd=upstream.path, check=True)
    replies = _hosts(tmp_path, store, daemon.url_for(upstream), env, 4, filter="blob:none")
    assert sorted(reply["source"] for reply in replies) == ["clone", "restore", "restore", "restore"], replies
    assert {reply["filter"] for reply in replies} == {"blob:none"}
    cold = open_cold_store(store)
    assert cold is not None
    (manifest,) = cold.list()
    assert (manifest.filter, manifest.key.endswith("-blobless")) == ("blob:none", True)
    for host in range(4):
        (mirror,) = (tmp_path / f"host-{host}" / "repos").iterdir()
        assert list(mirror.glob("objects/pack/*.promisor")), mirror  # restored as what it is: partial


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


def test_no_miss_or_reader_waits_for_an_upload(tmp_path: Path, served: UpstreamFactory, daemon: GitDaemon) -> None:
    first = daemon.url_for(_served(served, "uploading"))
    second = daemon.url_for(_served(served, "missed-meanwhile"))
    store = GatedStore(tmp_path / "store")
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


@pytest.mark.timeout(60)
def test_a_held_clone_lease_is_renewed_while_its_holder_works(tmp_path: Path, upstreams: UpstreamFactory) -> None:
    store = LocalDirStore(tmp_path / "store")
    upstream = upstreams.create("long-clone")
    with RepoCache(tmp_path / "host", cold_store=store, cold_publish="clone", cold_lease_ttl=0.4) as cache:
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


# -- a restored copy is as fresh as its artifact ------------------------------------------------------------------


def _contacts(http: SmartHTTPServer, upstream: Upstream) -> int:
    """How many times a client contacted ``upstream`` through ``http``: every clone or fetch (protocol v0 or v2)
    begins with one ``GET .../info/refs``."""
    name = upstream.path.name
    return sum(1 for method, path in http.requests if method == "GET" and path.endswith(f"/{name}/info/refs"))


@pytest.mark.timeout(240)
@pytest.mark.parametrize("fetch_ttl", [600, 0])
def test_eight_hosts_missing_a_repository_contact_upstream_once(
    tmp_path: Path,
    served: UpstreamFactory,
    http: SmartHTTPServer,
    shared: tuple[str, str, dict[str, str]],
    fetch_ttl: float,
) -> None:
    """With ``fetch_ttl=600`` the artifact is younger than the TTL: 1 contact. With ``0`` a host that asked before
    the fleet's clone had fetched gets a copy as fresh as its request needs (as a fetch coalesced on one host is)
    and does not fetch; one that asked later (a host slow to start) fetches."""
    kind, store, env = shared
    upstream = _served(served, f"eight-hosts-{kind}-{fetch_ttl}", size=200_000)
    replies = _hosts(tmp_path, store, http.url_for(upstream), env, 8, fetch_ttl=fetch_ttl)
    assert sorted(reply["source"] for reply in replies) == ["clone"] + ["restore"] * 7, replies
    restored = [reply for reply in replies if reply["source"] == "restore"]
    if fetch_ttl:
        assert [reply["fetched"] for reply in restored] == [False] * 7, replies
        assert _contacts(http, upstream) == 1  # the fleet's one clone; no restored host fetched
        return
    cold = open_cold_store(store)
    assert cold is not None
    (manifest,) = cold.list()
    assert manifest.fetched is not None
    for reply in restored:
        if abs(reply["asked"] - manifest.fetched) > 0.05:  # not at the boundary (the request starts just after)
            assert reply["fetched"] == (reply["asked"] > manifest.fetched), (reply, manifest.fetched)
    assert _contacts(http, upstream) == 1 + sum(reply["fetched"] for reply in restored), replies


def test_with_fetch_ttl_zero_a_host_asking_after_the_upload_fetches(
    tmp_path: Path, served: UpstreamFactory, http: SmartHTTPServer
) -> None:
    upstream = _served(served, "ttl-zero-later")
    store = LocalDirStore(tmp_path / "store")
    _published(tmp_path, http, upstream, store)
    contacts = _contacts(http, upstream)
    with RepoCache(tmp_path / "later", cold_store=store, fetch_ttl=0) as cache:
        with cache.checkout(http.url_for(upstream)) as co:
            assert co.source == "restore" and co.fetched  # the artifact is older than 0 s and than the request
    assert _contacts(http, upstream) == contacts + 1


def _published(tmp_path: Path, http: SmartHTTPServer, upstream: Upstream, store: ColdStore) -> Manifest:
    with RepoCache(tmp_path / "publisher", cold_store=store, cold_publish="clone") as cache:
        cache.ensure(http.url_for(upstream))
    (manifest,) = store.list()
    return manifest


def test_the_manifest_records_when_its_mirror_was_last_fetched(
    tmp_path: Path, served: UpstreamFactory, http: SmartHTTPServer
) -> None:
    upstream = _served(served, "records-fetched")
    store = LocalDirStore(tmp_path / "store")
    before = time.time()
    manifest = _published(tmp_path, http, upstream, store)
    assert manifest.fetched is not None and before <= manifest.fetched <= manifest.created
    with RepoCache(tmp_path / "restorer", cold_store=store, fetch_ttl=600) as cache:
        with cache.checkout(http.url_for(upstream)) as co:
            assert co.source == "restore" and not co.fetched
        (entry,) = cache.entries()
        assert entry.last_fetched == manifest.fetched  # the restore records the artifact's age, not "never fetched"
        assert cache.evict(http.url_for(upstream))  # the store's artifact is current: not uploaded again
    assert [m.generation for m in store.list()] == [manifest.generation]


def test_an_artifact_older_than_fetch_ttl_is_fetched_once_after_the_restore(
    tmp_path: Path, served: UpstreamFactory, http: SmartHTTPServer
) -> None:
    upstream = _served(served, "older-than-ttl")
    url = http.url_for(upstream)
    store = LocalDirStore(tmp_path / "store")
    _published(tmp_path, http, upstream, store)
    time.sleep(1.2)
    contacts = _contacts(http, upstream)
    with RepoCache(tmp_path / "young-ttl", cold_store=store, fetch_ttl=1) as cache:
        with cache.checkout(url) as co:
            assert co.source == "restore" and co.fetched
        with cache.checkout(url) as co:
            assert co.source == "hit" and not co.fetched
    assert _contacts(http, upstream) == contacts + 1


def test_under_background_refresh_a_due_restored_copy_is_handed_out_at_once(
    tmp_path: Path, served: UpstreamFactory, http: SmartHTTPServer
) -> None:
    upstream = _served(served, "background-restore")
    url = http.url_for(upstream)
    store = LocalDirStore(tmp_path / "store")
    _published(tmp_path, http, upstream, store)
    time.sleep(1.2)
    contacts = _contacts(http, upstream)
    with RepoCache(tmp_path / "host", cold_store=store, fetch_ttl=1, refresh="background") as cache:
        with cache.checkout(url) as co:
            assert co.source == "restore" and not co.fetched  # handed out; the fetch is the background's
    assert _contacts(http, upstream) == contacts + 1  # closing waited for the background fetch


class _RewritingStore(LocalDirStore):
    """A directory store whose manifests come back with ``fetched`` rewritten, as an older or hostile writer's."""

    def __init__(self, path: Path, fetched: Callable[[Manifest], float | None]) -> None:
        super().__init__(path)
        self.fetched = fetched

    def get_manifest(self, key: str) -> Manifest | None:
        manifest = super().get_manifest(key)
        return None if manifest is None else dataclasses.replace(manifest, fetched=self.fetched(manifest))


def test_an_older_manifest_without_fetched_is_restored_as_never_fetched(
    tmp_path: Path, served: UpstreamFactory, http: SmartHTTPServer
) -> None:
    upstream = _served(served, "no-fetched-field")
    url = http.url_for(upstream)
    _published(tmp_path, http, upstream, LocalDirStore(tmp_path / "store"))
    contacts = _contacts(http, upstream)
    store = _RewritingStore(tmp_path / "store", lambda manifest: None)
    with RepoCache(tmp_path / "host", cold_store=store, fetch_ttl=600) as cache:
        with cache.checkout(url) as co:
            assert co.source == "restore" and co.fetched  # today's rule: due at once
    assert _contacts(http, upstream) == contacts + 1


def test_a_manifest_claiming_a_fetch_after_its_upload_is_trusted_only_up_to_the_upload(
    tmp_path: Path, served: UpstreamFactory, http: SmartHTTPServer
) -> None:
    upstream = _served(served, "fetched-in-the-future")
    url = http.url_for(upstream)
    manifest = _published(tmp_path, http, upstream, LocalDirStore(tmp_path / "store"))
    time.sleep(1.2)
    store = _RewritingStore(tmp_path / "store", lambda manifest: manifest.created + 10**9)
    with RepoCache(tmp_path / "host", cold_store=store, fetch_ttl=1) as cache:
        with cache.checkout(url) as co:
            assert co.source == "restore" and co.fetched  # as old as its upload, not "fetched" in 2058
    assert manifest.created + 10**9 < 1e11


def test_manifest_fetched_is_validated_and_bounded() -> None:
    base = dict(
        url="https://example.com/a/b",
        key="example.com-a-b",
        sha256="0" * 64,
        size_bytes=1,
        mirror_bytes=1,
        ref_count=1,
        head="refs/heads/main",
        created=1000.0,
    )
    assert Manifest(**base).fetched is None  # type: ignore[arg-type]
    older = Manifest(**base, fetched=900)  # type: ignore[arg-type]
    assert older.fetched == 900.0 and older.fetched_at(now=2000.0) == 900.0
    assert Manifest(**base, fetched=1500.0).fetched_at(now=2000.0) == 1000.0  # type: ignore[arg-type]
    assert Manifest(**base, fetched=900.0).fetched_at(now=800.0) == 800.0  # type: ignore[arg-type]
    assert Manifest.from_json(older.to_json()) == older
    legacy = json.loads(older.to_json())
    del legacy["fetched"]
    assert Manifest.from_json(json.dumps(legacy)).fetched is None
    for bad in (float("nan"), float("inf"), -1, 1e12, "900", True):
        with pytest.raises(ValueError, match="fetched"):
            Manifest(**base, fetched=bad)  # type: ignore[arg-type]


# -- the lease time is a setting -------------------------------------------------------------------------------------


def test_lease_ttl_is_validated(cache_root: Path) -> None:
    for bad in (0, -1, float("nan"), float("inf"), "soon", True):
        with pytest.raises(ConfigError, match="cold_lease_ttl") as raised:
            RepoCache(cache_root, cold_lease_ttl=bad)  # type: ignore[arg-type]
        assert repr(bad) in str(raised.value) and "seconds > 0" in str(raised.value)


def test_a_clone_lease_lasts_cold_lease_ttl(tmp_path: Path, upstreams: UpstreamFactory) -> None:
    store = LocalDirStore(tmp_path / "store")
    parsed = normalize_url(upstreams.create("lease-time").url)
    for ttl in (5.0, 600.0):
        with RepoCache(tmp_path / "host", cold_store=store, cold_publish="clone", cold_lease_ttl=ttl) as cache:
            assert cache.settings.cold_lease_ttl == ttl
            cold = cache._cold
            assert cold is not None
            taken = time.time()
            manifest, claim = cold.claim(parsed)
            assert manifest is None and claim is not None
            try:
                assert taken + ttl - 1 <= claim.lease.expires <= time.time() + ttl + 1
            finally:
                claim.release()


@pytest.mark.timeout(60)
def test_a_host_killed_holding_the_lease_delays_the_fleet_at_most_its_lease_ttl(
    tmp_path: Path, served: UpstreamFactory, daemon: GitDaemon
) -> None:
    url = daemon.url_for(_served(served, "killed-holder"))
    store = str(tmp_path / "store")
    killed = kill_a_lease_holder(tmp_path / "dying", store, url, LocalDirStore(Path(store)))
    with RepoCache(tmp_path / "survivor", cold_store=store, cold_publish="clone", lock_timeout=30) as cache:
        with cache.checkout(url) as co:
            assert co.source == "clone"
        waited = time.monotonic() - killed
    assert 1.0 <= waited < 2.0 + 0.5 + 5, waited  # what was left of the lease (renewed every 2/3 s), a poll, the clone


# -- artifacts carry the commit-graph ------------------------------------------------------------------------------


def _graph(mirror: Path) -> Path:
    return mirror / "objects" / "info" / "commit-graph"


def _publish_with_graph(tmp_path: Path, url: str, store: ColdStore) -> bytes:
    """Clone ``url`` on a host publishing its clones (a fresh clone has no graph); the published graph's bytes."""
    with RepoCache(tmp_path / "publisher", cold_store=store, cold_publish="clone", fetch_ttl=3600) as cache:
        path = cache.ensure(url).path
    assert gitops.commit_graph_state(path) == "ok"  # written before the upload
    return _graph(path).read_bytes()


@pytest.mark.timeout(120)
def test_a_restored_host_gets_the_commit_graph_and_runs_no_maintenance(
    tmp_path: Path, served: UpstreamFactory, daemon: GitDaemon
) -> None:
    upstream = _served(served, "graph-carried")
    upstream.commits(40, size=100)
    url = daemon.url_for(upstream)
    store = LocalDirStore(tmp_path / "store")
    graph = _publish_with_graph(tmp_path, url, store)
    upstream.commit({"after-publishing": "1"})
    events: list[Any] = []
    with RepoCache(tmp_path / "restorer", cold_store=store, fetch_ttl=0, on_event=events.append) as cache:
        with cache.checkout(url) as co:
            assert co.source == "restore" and co.fetched  # a fetch: the moment automatic maintenance is checked
            assert _graph(co.path).read_bytes() == graph
            assert gitops.commit_graph_state(co.path) == "ok"
            assert (co.path / "packed-refs").is_file()
    assert [e for e in events if e.kind == "maintenance"] == []
    assert not gitops.graph_unverified(co.path) and _graph(co.path).read_bytes() == graph  # checked, and kept


def test_an_artifact_without_a_graph_gets_one_written_after_the_restore(
    tmp_path: Path, served: UpstreamFactory, daemon: GitDaemon
) -> None:
    """The case the carried graph spares: what a host did after restoring an artifact packed by an older version."""
    upstream = _served(served, "graph-not-carried")
    url = daemon.url_for(upstream)
    store = LocalDirStore(tmp_path / "store")
    with RepoCache(tmp_path / "publisher", cold_store=store, maintenance="off") as cache:
        path = cache.ensure(url).path
        cache.publish(url)  # as an older version did: no graph in the artifact
        assert gitops.commit_graph_state(path) == "missing"
    upstream.commit({"after-publishing": "1"})
    events: list[Any] = []
    with RepoCache(tmp_path / "restorer", cold_store=store, fetch_ttl=0, on_event=events.append) as cache:
        with cache.checkout(url) as co:
            assert co.source == "restore" and co.fetched
            assert gitops.commit_graph_state(co.path) == "missing"
        assert gitops.commit_graph_state(co.path) == "ok"  # written by the releasing caller, after the fetch
    assert [e.kind for e in events].count("maintenance") == 1, events


def _manifest_of(tmp_path: Path, source: Path, url: str) -> Manifest:
    """``source`` packed into ``tmp_path/artifact.tar`` as the artifact of ``url``, and its manifest."""
    buffer = io.BytesIO()
    sha256, size = pack_mirror(source, buffer)
    (tmp_path / "artifact.tar").write_bytes(buffer.getvalue())
    ref_count, head = gitops.describe_mirror(source)
    return Manifest(
        url=normalize_url(url).url,
        key=key_of(url),
        sha256=sha256,
        size_bytes=size,
        mirror_bytes=gitops.disk_usage(source),
        ref_count=ref_count,
        head=head,
        created=time.time(),
        refs_sha256=gitops.refs_digest(source),
    )


def _store_mirror_as_artifact(tmp_path: Path, source: Path, url: str) -> LocalDirStore:
    """A directory store holding ``source`` packed as the artifact of ``url``, as a peer host would upload it."""
    manifest = _manifest_of(tmp_path, source, url)
    store = LocalDirStore(tmp_path / "store")
    assert store.put(manifest.key, manifest, tmp_path / "artifact.tar")
    return store


def _lying_graph_mirror(tmp_path: Path, upstream: Upstream) -> Path:
    """A mirror of ``upstream`` whose commit-graph passes every structural check (format libgit2 reads, checksum
    recomputed) but gives one real commit a date it does not have: what a hostile writer of the store could plant."""
    source = tmp_path / "peer.git"
    subprocess.run(["git", "clone", "-q", "--mirror", str(upstream.path), str(source)], check=True)
    subprocess.run(
        ["git", "-c", "commitGraph.generationVersion=1", "commit-graph", "write", "--reachable"],
        cwd=source,
        check=True,
        capture_output=True,
    )
    graph = _graph(source)
    data = bytearray(graph.read_bytes())
    table: dict[bytes, int] = {}
    for i in range(data[6]):  # header: signature (4), version, hash version, chunk count, base graphs
        entry = 8 + 12 * i
        table[bytes(data[entry : entry + 4])] = int.from_bytes(data[entry + 4 : entry + 12], "big")
    cdat = table[b"CDAT"]
    # The first entry: tree (20 bytes), two parent positions (4 + 4), then generation and date in 8 bytes.
    data[cdat + 20 + 8 + 7] ^= 0x01  # the commit date's last bit
    data[-20:] = hashlib.sha1(bytes(data[:-20])).digest()
    graph.chmod(0o644)
    graph.write_bytes(bytes(data))
    assert check_restored_commit_graph(graph)  # nothing in its shape gives it away
    lie = subprocess.run(["git", "commit-graph", "verify"], cwd=source, capture_output=True, text=True)
    assert lie.returncode != 0 and "commit date" in lie.stderr, lie.stderr
    return source


def _git_verifies_graph(mirror: Path) -> bool:
    return subprocess.run(["git", "commit-graph", "verify"], cwd=mirror, capture_output=True).returncode == 0


@pytest.mark.timeout(120)
def test_a_commit_graph_that_lies_about_real_commits_is_dropped_after_the_restore(
    tmp_path: Path, served: UpstreamFactory, daemon: GitDaemon, caplog: pytest.LogCaptureFixture
) -> None:
    upstream = _served(served, "lying-graph")
    upstream.commits(10, size=100)
    url = daemon.url_for(upstream)
    store = _store_mirror_as_artifact(tmp_path, _lying_graph_mirror(tmp_path, upstream), url)
    with RepoCache(tmp_path / "restorer", cold_store=store, fetch_ttl=600) as cache:
        with cache.checkout(url) as co:
            assert co.source == "restore"
            assert mirror_refs(co.path) == upstream.refs()  # handed out at once; the check runs beside the reader
    # The cache has closed, so the check (a background job it waits for) is over.
    assert gitops.commit_graph_state(co.path) == "missing"
    assert not gitops.graph_unverified(co.path)
    assert "does not match the commits" in caplog.text
    with RepoCache(tmp_path / "restorer", cold_store=store) as cache:
        assert cache.maintain(url) is not None
    assert gitops.commit_graph_state(co.path) == "ok" and _git_verifies_graph(co.path)


@pytest.mark.timeout(120)
def test_a_lying_graph_left_unchecked_by_an_ended_process_is_checked_by_the_first_fetch(
    tmp_path: Path,
    served: UpstreamFactory,
    daemon: GitDaemon,
    monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
) -> None:
    upstream = _served(served, "lying-graph-unchecked")
    upstream.commits(10, size=100)
    url = daemon.url_for(upstream)
    store = _store_mirror_as_artifact(tmp_path, _lying_graph_mirror(tmp_path, upstream), url)
    from repocache.consequences import Consequences

    with monkeypatch.context() as patch:
        patch.setattr(Consequences, "_check_graph", lambda self, parsed: None)  # as if the process ended first
        with RepoCache(tmp_path / "restorer", cold_store=store, fetch_ttl=600, maintenance="off") as cache:
            path = cache.ensure(url).path
    assert gitops.graph_unverified(path) and gitops.commit_graph_state(path) == "ok"
    upstream.commit({"after-the-restore": "1"})
    with RepoCache(tmp_path / "restorer", fetch_ttl=0, maintenance="off") as cache:
        with cache.checkout(url) as co:
            assert co.fetched
    # maintenance="off" too: the check is not upkeep, it ends the trust given to the store's data.
    assert not gitops.graph_unverified(path)
    assert gitops.commit_graph_state(path) == "missing"
    assert "does not match the commits" in caplog.text


def _corrupt_last_byte(data: bytes) -> bytes:
    return data[:-1] + bytes([data[-1] ^ 0xFF])


@pytest.mark.parametrize(
    "damage",
    ["checksum", "truncated", "not-a-graph", "split-chain", "directory", "generation-v2"],
)
def test_a_bad_commit_graph_in_an_artifact_is_dropped_and_the_mirror_served(
    tmp_path: Path, served: UpstreamFactory, daemon: GitDaemon, damage: str
) -> None:
    upstream = _served(served, f"bad-graph-{damage}")
    url = daemon.url_for(upstream)
    source = tmp_path / "peer.git"
    subprocess.run(["git", "clone", "-q", "--mirror", str(upstream.path), str(source)], check=True)
    info = source / "objects" / "info"
    version = "2" if damage == "generation-v2" else "1"
    split = ["--split"] if damage == "split-chain" else []
    subprocess.run(
        ["git", "-c", f"commitGraph.generationVersion={version}", "commit-graph", "write", "--reachable", *split],
        cwd=source,
        check=True,
        capture_output=True,
    )
    graph = info / "commit-graph"
    if damage == "checksum":
        graph.chmod(0o644)
        graph.write_bytes(_corrupt_last_byte(graph.read_bytes()))
    elif damage == "truncated":
        graph.chmod(0o644)
        graph.write_bytes(graph.read_bytes()[:100])
    elif damage == "not-a-graph":
        graph.chmod(0o644)
        graph.write_bytes(b"#!/bin/sh\necho not a graph\n")
    elif damage == "directory":
        graph.unlink()
        graph.mkdir()
        (graph / "inside").write_text("x")
    store = _store_mirror_as_artifact(tmp_path, source, url)
    with RepoCache(tmp_path / "restorer", cold_store=store, fetch_ttl=600) as cache:
        with cache.checkout(url) as co:
            assert co.source == "restore"
            assert mirror_refs(co.path) == upstream.refs()
            assert list((co.path / "objects" / "info").iterdir()) == []  # dropped, chains never kept
        assert cache.verify() == []
        assert cache.maintain(url) is not None  # maintenance writes a good one when asked
        assert gitops.commit_graph_state(co.path) == "ok"


def test_a_manifest_records_the_refs_and_a_restore_that_does_not_match_them_is_refused(
    tmp_path: Path, served: UpstreamFactory, daemon: GitDaemon
) -> None:
    upstream = _served(served, "refs-recorded")
    url = daemon.url_for(upstream)
    store = LocalDirStore(tmp_path / "store")
    with RepoCache(tmp_path / "publisher", cold_store=store, fetch_ttl=3600) as cache:
        path = cache.ensure(url).path
        stored = cache.publish(url)
    assert stored is not None and stored.refs_sha256 == gitops.refs_digest(path)
    # The same artifact under a manifest whose record of the refs is another mirror's: refused, and cloned instead.
    source = tmp_path / "peer.git"
    subprocess.run(["git", "clone", "-q", "--mirror", str(upstream.path), str(source)], check=True)
    other = dataclasses.replace(_manifest_of(tmp_path, source, url), refs_sha256="0" * 64)
    lying = LocalDirStore(tmp_path / "lying-store")
    assert lying.put(other.key, other, tmp_path / "artifact.tar")
    with RepoCache(tmp_path / "restorer", cold_store=lying, fetch_ttl=3600) as cache:
        with pytest.warns(RuntimeWarning, match="other refs than its manifest records"):
            with cache.checkout(url) as co:
                assert co.source == "clone"
                assert mirror_refs(co.path) == upstream.refs()
