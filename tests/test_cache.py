"""Hits, misses and fetches against real upstreams: local paths, git daemon and smart HTTP on 127.0.0.1."""

from __future__ import annotations

import logging
import os
import re
import subprocess
from collections.abc import Callable
from pathlib import Path

import pygit2
import pytest

from repocache import (
    CloneError,
    ConfigError,
    FetchError,
    InvalidURLError,
    Progress,
    RepoCache,
    RepoCacheError,
)
from repocache.testing import GitDaemon, SmartHTTPServer, Upstream, UpstreamFactory
from tests.helpers import assert_consistent, mirror_refs

Transport = Callable[[Upstream], str]


@pytest.fixture(params=["local", "git", "http"])
def transport(request: pytest.FixtureRequest) -> Transport:
    """How the upstream is reached: its local path, ``git://`` or smart HTTP."""
    if request.param == "local":
        return lambda upstream: upstream.url
    server: GitDaemon | SmartHTTPServer = request.getfixturevalue("daemon" if request.param == "git" else "http")
    return lambda upstream: server.url_for(upstream)


def test_miss_clones_a_mirror_with_every_ref_and_upstreams_head(
    cache: RepoCache, served: UpstreamFactory, transport: Transport
) -> None:
    upstream = served.create("mirror", files={"a.txt": "a"})
    upstream.branch("feature")
    upstream.tag("v1", annotated=True)
    upstream.tag("v0")
    upstream.set_head("feature")
    with cache.checkout(transport(upstream)) as co:
        assert co.source == "clone" and co.fetched and not co.stale
        assert mirror_refs(co.path) == upstream.refs()
        assert co.repo.is_bare
        assert co.repo.references["HEAD"].target == "refs/heads/feature"
        assert not co.repo.references.get("refs/remotes/origin/HEAD")
    entry = cache.info(transport(upstream))
    assert entry is not None and entry.size_bytes > 0 and entry.last_fetched is not None


def test_hit_fetches_new_commits_force_pushes_and_deleted_refs(
    cache: RepoCache, served: UpstreamFactory, transport: Transport
) -> None:
    upstream = served.create("moving")
    upstream.branch("doomed")
    upstream.branch("rewritten")
    upstream.commit({"x": "1"}, branch="rewritten")
    url = transport(upstream)
    with cache.checkout(url):
        pass
    upstream.commit({"b.txt": "new"})
    old_tip = upstream.refs()["refs/heads/rewritten"]
    upstream.force_push("rewritten")
    upstream.delete_ref("refs/heads/doomed")
    upstream.tag("v2")
    assert upstream.refs()["refs/heads/rewritten"] != old_tip
    with cache.checkout(url) as co:
        assert co.source == "hit" and co.fetched and not co.stale
        assert mirror_refs(co.path) == upstream.refs()
        assert "refs/heads/doomed" not in co.repo.references


def test_a_fetch_that_adds_objects_records_the_mirrors_new_size(
    cache: RepoCache, served: UpstreamFactory, transport: Transport
) -> None:
    """The recorded size follows the fetch (git CLI for a local path, libgit2 over ``git://`` and HTTP)."""
    from repocache import gitops

    upstream = served.create("growing")
    url = transport(upstream)
    before = cache.ensure(url)
    assert before.size_bytes == gitops.disk_usage(before.path)
    upstream.commits(3, size=100_000)  # about 300 KB of incompressible content
    with cache.checkout(url) as co:
        assert co.source == "hit" and co.fetched
    after = cache.info(url)
    assert after is not None
    assert after.size_bytes > before.size_bytes + 250_000
    assert after.size_bytes == gitops.disk_usage(after.path)
    assert cache.stats().bytes_used == after.size_bytes


def test_hit_follows_a_moved_upstream_head(cache: RepoCache, served: UpstreamFactory, transport: Transport) -> None:
    upstream = served.create("headmove")
    upstream.branch("trunk")
    url = transport(upstream)
    cache.ensure(url)
    upstream.set_head("trunk")
    upstream.delete_ref("refs/heads/main")
    with cache.checkout(url) as co:
        assert co.repo.references["HEAD"].target == "refs/heads/trunk"
        assert str(co.repo.head.target) == upstream.refs()["refs/heads/trunk"]


def test_fetch_ttl_skips_upstream_until_it_expires(
    cache_root: Path, served: UpstreamFactory, daemon: GitDaemon
) -> None:
    upstream = served.create("ttl")
    url = daemon.url_for(upstream)
    with RepoCache(cache_root, fetch_ttl=3600) as cache:
        cache.ensure(url)
        before = upstream.refs()
        upstream.commit({"late": "1"})
        with cache.checkout(url) as co:
            assert co.source == "hit" and not co.fetched
            assert mirror_refs(co.path) == before
    with RepoCache(cache_root, fetch_ttl=0) as cache:
        with cache.checkout(url) as co:
            assert co.fetched and mirror_refs(co.path) == upstream.refs()
        stats = cache.stats()
        assert (stats.clones, stats.fetches, stats.hits, stats.misses) == (1, 1, 2, 1)


def test_dead_upstream_serves_the_stale_copy_with_a_warning(
    cache_root: Path, upstreams: UpstreamFactory, caplog: pytest.LogCaptureFixture
) -> None:
    upstream = upstreams.create("dies")
    with RepoCache(cache_root) as cache:
        cache.ensure(upstream.url)
        refs = upstream.refs()
        os.rename(upstream.path, str(upstream.path) + ".gone")
        with pytest.warns(RuntimeWarning, match="stale"), caplog.at_level(logging.WARNING, "repocache"):
            with cache.checkout(upstream.url) as co:
                assert co.stale and not co.fetched and co.source == "hit"
                assert mirror_refs(co.path) == refs
        assert "stale" in caplog.text
        assert cache.stats().fetch_errors == 1
    with RepoCache(cache_root, on_fetch_error="raise") as cache:
        written = re.escape(upstream.url)
        with pytest.raises(FetchError, match=f"fetch of {written} failed") as caught, cache.checkout(upstream.url):
            pass
        assert isinstance(caught.value, RepoCacheError)
        assert_consistent(cache)


def test_dead_git_daemon_upstream_is_stale_too(cache_root: Path, upstreams: UpstreamFactory) -> None:
    upstream = upstreams.create("daemon-dies")
    with GitDaemon(upstream.path.parent) as server:
        url = server.url_for(upstream)
        with RepoCache(cache_root, on_fetch_error="raise") as cache:
            cache.ensure(url)
    with RepoCache(cache_root, on_fetch_error="warn") as cache:
        with (
            pytest.warns(
                RuntimeWarning, match=r"serving a stale copy: fetch of git://127\.0\.0\.1:\d+/daemon-dies\.git failed"
            ),
            cache.checkout(url) as co,
        ):
            assert co.stale
    with RepoCache(cache_root, on_fetch_error="raise") as cache:
        with pytest.raises(FetchError), cache.checkout(url):
            pass


def test_failed_clone_raises_and_leaves_nothing(cache: RepoCache, tmp_path: Path, daemon: GitDaemon) -> None:
    with pytest.raises(CloneError) as caught, cache.checkout(str(tmp_path / "no-such-repo")):
        pass
    assert "no-such-repo" in str(caught.value)
    with pytest.raises(CloneError), cache.checkout(f"git://127.0.0.1:{daemon.port}/absent"):
        pass
    assert list((cache.root / "repos").iterdir()) == []
    assert list((cache.root / "staging").iterdir()) == []
    assert cache.stats().misses == 0 and cache.stats().clones == 0  # failed calls count neither hit nor miss


@pytest.mark.parametrize("engine", ["git", "libgit2"])
def test_a_failed_clone_reports_gits_error_and_the_url_not_the_staging_path(
    cache_root: Path,
    tmp_path: Path,
    daemon: GitDaemon,
    http: SmartHTTPServer,
    engine: str,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    if engine == "libgit2":
        monkeypatch.setenv("REPOCACHE_GIT", "")
    missing = tmp_path / "no-such-repo"
    cases = {
        str(missing): f"'{missing}' does not exist",
        f"git://127.0.0.1:{daemon.port}/absent": "no such repository: /absent",
        f"http://127.0.0.1:{http.port}/absent.git": "404" if engine == "libgit2" else "not found",
    }
    with RepoCache(cache_root) as cache:
        for url, reason in cases.items():
            with pytest.raises(CloneError) as caught, cache.checkout(url):
                pass
            message = str(caught.value)
            assert message.startswith(f"clone of {url} failed: "), message  # the URL as written
            assert reason in message, message
            assert str(cache_root) not in message and "staging" not in message, message
            assert "Cloning into" not in message and "; " not in message and "\n" not in message, message
            if engine == "git":
                assert caught.value.detail.startswith("fatal: "), message


def test_an_upstream_that_is_not_a_git_repository_is_a_clone_error(cache: RepoCache, tmp_path: Path) -> None:
    (tmp_path / "plain").mkdir()
    (tmp_path / "plain" / "file.txt").write_text("not git")
    with pytest.raises(CloneError, match="plain"), cache.checkout(str(tmp_path / "plain")):
        pass


def test_credentials_in_http_urls_work_but_never_reach_disk_or_logs(
    cache_root: Path, served: UpstreamFactory, served_dir: Path, caplog: pytest.LogCaptureFixture
) -> None:
    secret = "tok-5ecr3t-value"
    upstream = served.create("private")
    with SmartHTTPServer(served_dir, auth=("alice", secret)) as server:
        plain = server.url_for(upstream)
        with_credentials = plain.replace("http://", f"http://alice:{secret}@")
        caplog.set_level(logging.DEBUG, "repocache")
        with RepoCache(cache_root, on_fetch_error="raise") as cache:
            with pytest.raises(CloneError) as denied, cache.checkout(plain):
                pass
            assert secret not in str(denied.value)
            with cache.checkout(with_credentials) as co:
                assert mirror_refs(co.path) == upstream.refs()
                assert co.url == plain.removesuffix(".git") and secret not in co.url
            upstream.commit({"more": "x"})
            with cache.checkout(with_credentials) as co:  # fetch through libgit2 with the callback
                assert co.fetched and mirror_refs(co.path) == upstream.refs()
            with pytest.raises(FetchError) as refused, cache.checkout(plain):
                pass
            assert secret not in str(refused.value)
            assert all(secret not in entry.url for entry in cache.entries())
        assert server.requests_with_authorization > 0
    for path in cache_root.rglob("*"):
        if path.is_file():
            assert secret.encode() not in path.read_bytes(), path
    assert secret not in caplog.text


def test_entries_info_evict_and_stats(cache: RepoCache, upstreams: UpstreamFactory) -> None:
    first, second = upstreams.create("first"), upstreams.create("second")
    assert cache.info(first.url) is None
    cache.ensure(first.url)
    cache.ensure(second.url)
    assert [e.url for e in cache.entries()] == [f"file://{second.path}", f"file://{first.path}"]
    info_before = cache.info(first.url)
    assert info_before is not None
    assert cache.info(first.url) == info_before  # info does not touch recency
    with cache.checkout(first.url):
        pass
    assert cache.entries()[0].url == f"file://{first.path}"
    assert cache.evict(first.url) is True
    assert cache.evict(first.url) is False
    assert cache.info(first.url) is None
    stats = cache.stats()
    assert (stats.clones, stats.evictions, stats.entries) == (2, 1, 1)
    assert stats.bytes_used == sum(e.size_bytes for e in cache.entries()) > 0


def test_progress_reports_phases_throttled(cache: RepoCache, served: UpstreamFactory, daemon: GitDaemon) -> None:
    upstream = served.create("progress")
    upstream.commits(300, size=2000)
    events: list[Progress] = []
    with cache.checkout(daemon.url_for(upstream), progress=events.append):
        pass
    phases = [e.phase for e in events]
    assert phases[-1] == "done" and "receiving" in phases
    assert all(e.operation == "clone" and e.url.startswith("git://") for e in events)
    assert len(events) < 50  # throttled: 300+ objects, a handful of reports
    upstream.commits(20, size=2000)
    fetch_events: list[Progress] = []
    with cache.checkout(daemon.url_for(upstream), progress=fetch_events.append):
        pass
    assert fetch_events and {e.operation for e in fetch_events} == {"fetch"}


def test_a_raising_progress_callback_does_not_break_the_clone(cache: RepoCache, upstreams: UpstreamFactory) -> None:
    def explode(event: Progress) -> None:
        raise RuntimeError("callback bug")

    upstream = upstreams.create("explode")
    with cache.checkout(upstream.url, progress=explode) as co:
        assert co.source == "clone"


def test_libgit2_alone_when_no_git_binary(
    cache_root: Path, served: UpstreamFactory, daemon: GitDaemon, http: SmartHTTPServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("REPOCACHE_GIT", "")
    upstream = served.create("nogit")
    upstream.branch("side")
    upstream.set_head("side")
    with RepoCache(cache_root) as cache:
        for url in (daemon.url_for(upstream), http.url_for(upstream)):
            with cache.checkout(url) as co:
                assert co.source == "clone"
                assert mirror_refs(co.path) == upstream.refs()
                assert co.repo.references["HEAD"].target == "refs/heads/side"
                assert "refs/remotes/origin/HEAD" not in co.repo.references
        upstream.commit({"n": "1"})
        with cache.checkout(daemon.url_for(upstream)) as co:
            assert co.fetched and mirror_refs(co.path) == upstream.refs()
        assert_consistent(cache)


def test_mirror_config_is_a_real_mirror(cache: RepoCache, upstreams: UpstreamFactory) -> None:
    upstream = upstreams.create("config")
    with cache.checkout(upstream.url) as co:
        config = pygit2.Config(str(co.path / "config"))
        assert config["remote.origin.fetch"] == "+refs/*:refs/*"
        assert config.get_bool("remote.origin.mirror")


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"max_bytes": "lots"}, "max_bytes='lots' is not a size"),
        ({"max_bytes": -1}, "negative"),
        ({"min_free_bytes": None}, "min_free_bytes=None"),
        ({"fetch_ttl": -1}, "fetch_ttl=-1"),
        ({"fetch_ttl": float("nan")}, "fetch_ttl=nan"),
        ({"lock_timeout": "soon"}, "lock_timeout='soon'"),
        ({"on_fetch_error": "ignore"}, "on_fetch_error='ignore'"),
        ({"pins": 42}, "pins=42"),
        ({"progress": "yes"}, "not callable"),
        ({"idle_timeout": 0}, "idle_timeout=0"),
    ],
)
def test_bad_settings_raise_config_errors_naming_the_value(
    cache_root: Path, kwargs: dict[str, object], message: str
) -> None:
    with pytest.raises(ConfigError) as caught:
        RepoCache(cache_root, **kwargs)  # type: ignore[arg-type]
    assert message in str(caught.value)
    assert isinstance(caught.value, ValueError)


def test_sizes_accept_units(cache_root: Path) -> None:
    assert RepoCache(cache_root, max_bytes="500MiB").max_bytes == 500 * 1024**2
    assert RepoCache(cache_root, max_bytes="20GB").max_bytes == 20 * 1000**3
    assert RepoCache(cache_root, max_bytes=1234).max_bytes == 1234


def test_default_root_comes_from_the_environment(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("REPOCACHE_DIR", str(tmp_path / "env-root"))
    with RepoCache() as cache:
        assert cache.root == tmp_path / "env-root"
        assert (tmp_path / "env-root" / "index.sqlite").exists()


def test_local_paths_can_be_refused(cache_root: Path, upstreams: UpstreamFactory) -> None:
    with RepoCache(cache_root, allow_local=False) as cache, pytest.raises(InvalidURLError, match="allow_local"):
        cache.ensure(upstreams.create("refused").url)


def test_closed_cache_refuses_work(cache_root: Path) -> None:
    cache = RepoCache(cache_root)
    cache.close()
    cache.close()
    with pytest.raises(RepoCacheError, match="closed"):
        cache.entries()


def test_a_fetch_never_starts_gc_behind_the_locks(
    cache: RepoCache, upstreams: UpstreamFactory, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """git's automatic gc after a fetch would run detached, outside the repository's locks (repacking under readers,
    after the size was recorded, maybe during an eviction): the cache's fetches must not start it."""
    upstream = upstreams.create("no-auto-gc")
    with cache.checkout(upstream.url) as co:
        mirror = co.path
    # In the user's git config (a mirror's own config is the cache's and is put back before every fetch).
    user_config = tmp_path / "xdg" / "git" / "config"
    user_config.parent.mkdir(parents=True)
    monkeypatch.setenv("XDG_CONFIG_HOME", str(tmp_path / "xdg"))
    for key, value in (("fetch.unpackLimit", "1"), ("gc.autoPackLimit", "1"), ("gc.autoDetach", "false")):
        subprocess.run(["git", "config", "--file", str(user_config), key, value], check=True)  # a pack per fetch
    for round_number in range(3):
        upstream.commits(3, size=500 + round_number)
        with cache.checkout(upstream.url) as co:
            assert co.fetched and mirror_refs(co.path) == upstream.refs()
    packs = sorted(p.name for p in (mirror / "objects" / "pack").glob("*.pack"))
    assert len(packs) == 3, packs  # one per fetch, as they left them: gc would have made them one
    assert not (mirror / "gc.pid").exists() and not (mirror / "gc.log").exists()
