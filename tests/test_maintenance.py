"""Maintenance of long-lived mirrors (issue 13): repacking, packed refs, a commit-graph libgit2 reads, readers never
broken, debris of killed maintenance swept, the budget told the new size."""

from __future__ import annotations

import json
import logging
import subprocess
import threading
import warnings
from pathlib import Path

import pygit2
import pytest

from repocache import ConfigError, GitError, RepoCache
from repocache.cli import main
from repocache.gitops import commit_graph_state, disk_usage, mirror_shape
from repocache.testing import GitDaemon, Upstream, UpstreamFactory
from tests.helpers import all_objects, assert_consistent


def _fetch_many(cache: RepoCache, upstream: Upstream, url: str, times: int) -> None:
    for _ in range(times):
        upstream.commits(2, size=500)
        with cache.checkout(url) as co:
            assert co.fetched


@pytest.fixture
def upstream(served: UpstreamFactory) -> Upstream:
    repo = served.create("maint")
    repo.commits(20, size=2_000)
    return repo


@pytest.mark.timeout(120)
def test_fetches_pile_up_packs_and_maintain_rolls_them_up_keeping_every_object(
    cache_root: Path, upstream: Upstream, daemon: GitDaemon
) -> None:
    url = daemon.url_for(upstream)
    with RepoCache(cache_root, maintenance="off") as cache:
        cache.ensure(url)
        _fetch_many(cache, upstream, url, 12)
        mirror = cache.info(url).path  # type: ignore[union-attr]
        assert mirror_shape(mirror).packs >= 12, "libgit2 writes one pack per fetch"
        before = all_objects(mirror)
        (report,) = cache.maintain(url)
        assert "repack" in report.tasks and "commit-graph" in report.tasks
        assert report.packs_before >= 12 and report.packs_after <= 3
        assert all_objects(mirror) == before
        assert report.peak_rss_bytes > 0
        entry = cache.info(url)
        assert entry is not None and entry.size_bytes == disk_usage(mirror) == report.size_after
        assert report.size_after < report.size_before, "the budget sees the smaller mirror"
        assert cache.maintain("git://127.0.0.1:1/not/cached") == []
        assert_consistent(cache)


@pytest.mark.timeout(120)
def test_automatic_maintenance_keeps_the_pack_count_bounded(
    cache_root: Path, upstream: Upstream, daemon: GitDaemon
) -> None:
    url = daemon.url_for(upstream)
    with RepoCache(cache_root, maintenance_max_packs=4) as cache:
        cache.ensure(url)
        mirror = cache.info(url).path  # type: ignore[union-attr]
        counts = []
        for _ in range(15):
            upstream.commits(1, size=300)
            cache.ensure(url)
            counts.append(mirror_shape(mirror).packs)
        assert max(counts) <= 4, counts
        assert commit_graph_state(mirror) == "ok"
        entry = cache.info(url)
        assert entry is not None and entry.size_bytes == disk_usage(mirror)
        assert_consistent(cache)


@pytest.mark.timeout(120)
def test_maintenance_off_leaves_mirrors_alone(cache_root: Path, upstream: Upstream, daemon: GitDaemon) -> None:
    url = daemon.url_for(upstream)
    with RepoCache(cache_root, maintenance="off", maintenance_max_packs=2) as cache:
        cache.ensure(url)
        _fetch_many(cache, upstream, url, 4)
        assert mirror_shape(cache.info(url).path).packs >= 5  # type: ignore[union-attr]


@pytest.mark.timeout(120)
def test_loose_refs_are_packed_past_their_threshold(cache_root: Path, upstream: Upstream, daemon: GitDaemon) -> None:
    url = daemon.url_for(upstream)
    for number in range(6):
        upstream.branch(f"topic-{number}")
    with RepoCache(cache_root, maintenance_max_loose_refs=3, maintenance_max_packs=100) as cache:
        cache.ensure(url)
        mirror = cache.info(url).path  # type: ignore[union-attr]
        assert mirror_shape(mirror).loose_refs == 0, "a clone has its refs packed"
        for number in range(6):
            upstream.commit({"f.txt": str(number)}, branch=f"topic-{number}")
        cache.ensure(url)  # libgit2 writes each updated ref loose; automatic maintenance packs them
        assert mirror_shape(mirror).loose_refs <= 3
        with cache.checkout(url) as co:
            assert {name for name in co.repo.references if name.startswith("refs/heads/topic-")} == {
                f"refs/heads/topic-{n}" for n in range(6)
            }


@pytest.mark.timeout(120)
def test_commit_graph_is_one_that_libgit2_reads(cache_root: Path, upstream: Upstream, daemon: GitDaemon) -> None:
    """git 2.39 writes generation data v2 chunks by default, which libgit2 1.9 rejects whole: the graph helped only
    the git CLI. Maintenance writes (and replaces such a graph with) one both read."""
    url = daemon.url_for(upstream)
    with RepoCache(cache_root, maintenance="off") as cache:
        cache.ensure(url)
        mirror = cache.info(url).path  # type: ignore[union-attr]
        subprocess.run(["git", "commit-graph", "write", "--reachable"], cwd=mirror, check=True, capture_output=True)
        assert commit_graph_state(mirror) == "unreadable", "git's default graph has GDA2, which libgit2 rejects"
        (report,) = cache.maintain(url)
        assert "commit-graph" in report.tasks
        assert commit_graph_state(mirror) == "ok"
        subprocess.run(["git", "commit-graph", "verify"], cwd=mirror, check=True, capture_output=True)


@pytest.mark.timeout(120)
def test_readers_keep_seeing_every_object_while_maintenance_runs(
    cache_root: Path, upstream: Upstream, daemon: GitDaemon
) -> None:
    """An open pygit2 repository, a running `git log` and a worktree borrowing objects through alternates all hold
    the mirror while it is repacked (old packs deleted) and refs packed; each still reads every object."""
    url = daemon.url_for(upstream)
    with RepoCache(cache_root, maintenance="off") as cache:
        cache.ensure(url)
        _fetch_many(cache, upstream, url, 10)
        old_tip = upstream.resolve("main")
        upstream.force_push()  # the worktree's commit becomes unreachable in the mirror after the next fetch
        with cache.worktree(url, old_tip) as wt:
            with cache.checkout(url) as co:
                mirror = co.path
                everything = all_objects(mirror)
                assert old_tip in everything
                repo = co.repo
                ids = sorted(everything)
                first_half = [repo[pygit2.Oid(hex=oid)].type for oid in ids[: len(ids) // 2]]  # packs now open
                log = subprocess.Popen(
                    ["git", "log", "--all", "-p", "--format=%H"],
                    cwd=mirror,
                    stdout=subprocess.PIPE,
                    stderr=subprocess.PIPE,
                )
                assert log.stdout is not None
                head = log.stdout.read(4096)  # git log is running, with the packs listed and open
                done: list[object] = []
                thread = threading.Thread(target=lambda: done.extend(cache.maintain(url)))
                thread.start()  # it takes the fetch lock; our shared holds stay
                thread.join(60)
                assert done and "repack" in done[0].tasks, done  # type: ignore[attr-defined]
                assert mirror_shape(mirror).packs <= 3
                rest = log.stdout.read()
                _, errors = log.communicate(timeout=30)  # waits and closes both pipes
                assert log.returncode == 0, errors
                assert head and rest is not None
                second_half = [repo[pygit2.Oid(hex=oid)].type for oid in ids[len(ids) // 2 :]]
                assert len(first_half) + len(second_half) == len(everything)
                fresh = pygit2.Repository(str(mirror))
                assert all(pygit2.Oid(hex=oid) in fresh for oid in ids)
                fresh.free()
            fsck = subprocess.run(
                ["git", "fsck", "--connectivity-only", "--no-dangling"], cwd=wt.path, capture_output=True, text=True
            )
            assert fsck.returncode == 0, fsck.stdout + fsck.stderr
            assert subprocess.run(["git", "cat-file", "-e", old_tip], cwd=wt.path).returncode == 0
        assert_consistent(cache)


@pytest.mark.timeout(120)
def test_unreachable_objects_survive_maintenance_and_prune_needs_the_mirror_free(
    cache_root: Path, upstream: Upstream, daemon: GitDaemon
) -> None:
    url = daemon.url_for(upstream)
    upstream.commits(30, size=20_000)  # a large first pack: the small fetched ones are rolled up geometrically
    with RepoCache(cache_root, maintenance="off", maintenance_grace=0) as cache:
        cache.ensure(url)
        old_tip = upstream.resolve("main")
        upstream.force_push()
        _fetch_many(cache, upstream, url, 3)
        mirror = cache.info(url).path  # type: ignore[union-attr]
        assert old_tip in all_objects(mirror)
        with RepoCache(cache_root, maintenance_max_packs=2) as automatic:
            upstream.commits(1, size=100)
            automatic.ensure(url)  # a geometric roll-up of the small packs
        assert mirror_shape(mirror).packs <= 2
        assert old_tip in all_objects(mirror), "a geometric repack dropped an unreachable object"
        cache.maintain(url)  # everything into one pack, by traversal
        assert old_tip in all_objects(mirror), "an unreachable object was dropped without a grace period"
        with cache.worktree(url, "HEAD"):
            (report,) = cache.maintain(url, prune=True)
            assert "prune" not in report.tasks and report.skipped is not None and "in use" in report.skipped
            assert old_tip in all_objects(mirror)
        (report,) = cache.maintain(url, prune=True)
        assert "prune" in report.tasks
        assert old_tip not in all_objects(mirror), "grace 0: the unreachable commit is pruned once nobody reads"
        with cache.checkout(url) as co:
            assert co.repo.head.target == pygit2.Oid(hex=upstream.resolve("main"))
        assert_consistent(cache)


@pytest.mark.timeout(120)
def test_debris_of_a_killed_maintenance_is_swept_by_maintain_and_by_verify(
    cache_root: Path, upstream: Upstream, daemon: GitDaemon
) -> None:
    url = daemon.url_for(upstream)
    with RepoCache(cache_root, maintenance="off") as cache:
        cache.ensure(url)
        mirror = cache.info(url).path  # type: ignore[union-attr]
        debris = [
            mirror / "objects" / "pack" / ".tmp-4242-pack-0123abcd.pack",
            mirror / "objects" / "pack" / ".tmp-4242-pack-0123abcd.idx",
            mirror / "objects" / "info" / "commit-graph.lock",
            mirror / "packed-refs.lock",
        ]

        def litter() -> None:
            for path in debris:
                path.write_bytes(b"half")

        litter()
        problems = cache.verify()
        assert [p.kind for p in problems][:1] == ["leftover"] and not problems[0].repaired  # (and its bytes)
        assert all(path.exists() for path in debris)
        repaired = cache.verify(repair=True)
        assert [p.kind for p in repaired] == ["leftover"] and repaired[0].repaired
        assert not any(path.exists() for path in debris)
        litter()
        (report,) = cache.maintain(url)
        assert report.tasks[0] == "sweep"
        assert not any(path.exists() for path in debris)
        assert_consistent(cache)


def test_maintenance_settings_are_validated(cache_root: Path) -> None:
    with pytest.raises(ConfigError, match="maintenance='sometimes'"):
        RepoCache(cache_root, maintenance="sometimes")
    with pytest.raises(ConfigError, match="maintenance_max_packs=0"):
        RepoCache(cache_root, maintenance_max_packs=0)
    with pytest.raises(ConfigError, match="maintenance_window_memory='lots'"):
        RepoCache(cache_root, maintenance_window_memory="lots")
    with pytest.raises(ConfigError, match="maintenance_threads=0"):
        RepoCache(cache_root, maintenance_threads=0)
    with pytest.raises(ConfigError, match="maintenance_grace=-1"):
        RepoCache(cache_root, maintenance_grace=-1)


@pytest.mark.timeout(120)
def test_cli_maintain_reports_what_it_did(
    cache_root: Path, upstream: Upstream, daemon: GitDaemon, capsys: pytest.CaptureFixture[str]
) -> None:
    url = daemon.url_for(upstream)
    with RepoCache(cache_root, maintenance="off") as cache:
        cache.ensure(url)
        _fetch_many(cache, upstream, url, 5)
    assert main(["--root", str(cache_root), "maintain", url, "--json"]) == 0
    (report,) = json.loads(capsys.readouterr().out)
    assert report["url"] == url.removesuffix(".git") and "repack" in report["tasks"]
    assert report["packs_after"] < report["packs_before"]
    assert main(["--root", str(cache_root), "maintain"]) == 0
    assert url.removesuffix(".git") in capsys.readouterr().out


@pytest.mark.timeout(120)
def test_loose_objects_of_cli_fetches_are_packed(cache_root: Path, upstreams: UpstreamFactory) -> None:
    """git fetch (used for local and ssh upstreams) unpacks small fetches into loose objects."""
    upstream = upstreams.create("loose")
    url = str(upstream.path)
    with RepoCache(cache_root, maintenance="off") as cache:
        cache.ensure(url)
        mirror = cache.info(url).path  # type: ignore[union-attr]
        for _ in range(3):
            upstream.commits(2, size=100)
            cache.ensure(url)
        assert mirror_shape(mirror, exact=True).loose_objects > 0
        before = all_objects(mirror)
        (report,) = cache.maintain(url)
        assert report.loose_objects_before > 0 and report.loose_objects_after == 0
        assert all_objects(mirror) == before
        assert_consistent(cache)


@pytest.mark.timeout(120)
def test_without_a_git_binary_fetches_work_and_maintain_says_why_it_cannot(
    cache_root: Path,
    upstream: Upstream,
    daemon: GitDaemon,
    monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
) -> None:
    monkeypatch.setenv("REPOCACHE_GIT", "")  # libgit2 only: it cannot repack
    url = daemon.url_for(upstream)
    with RepoCache(cache_root, maintenance_max_packs=1) as cache:
        cache.ensure(url)
        with warnings.catch_warnings(), caplog.at_level(logging.WARNING, logger="repocache"):
            warnings.simplefilter("error")
            _fetch_many(cache, upstream, url, 3)  # over the threshold: automatic maintenance stays quiet
        assert [r.getMessage() for r in caplog.records if r.levelno >= logging.WARNING] == []
        with pytest.raises(GitError, match="needs the git command line tool"):
            cache.maintain(url)
