"""The git server remembers upload-pack's small answers: a warm clone starts upload-pack for its pack only, and a
remembered answer is never older than the mirror (its refs, its config, git's own config files)."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from repocache import RepoCache
from repocache.events import Event, ServeEvent
from repocache.testing import SmartHTTPServer, Upstream, UpstreamFactory
from tests._serve import ThreadServer, base_of, clone, clones_at_once, health, ls_remote, request, wait_until
from tests.helpers import git


@pytest.fixture
def upstream(factory: UpstreamFactory) -> Upstream:
    """``org/repo``: commits on ``main``, a branch ``feature`` and an annotated tag ``v1``."""
    repo = factory.create("org/repo")
    repo.commits(4, size=10_000)
    repo.branch("feature")
    repo.commits(1, branch="feature", size=1_000)
    repo.tag("v1", annotated=True)
    return repo


class UploadPacks:
    """A ``git`` wrapper the server is pointed at (``REPOCACHE_GIT``) that logs every upload-pack it starts."""

    def __init__(self, directory: Path) -> None:
        real = shutil.which("git")
        assert real is not None
        self.log = directory / "upload-packs.log"
        self.log.write_text("")
        self.wrapper = directory / "git"
        self.wrapper.write_text(
            "#!/bin/sh\n"
            f'case " $* " in *" upload-pack "*) printf "%s\\n" "$*" >> "{self.log}";; esac\n'
            f'exec "{real}" "$@"\n'
        )
        self.wrapper.chmod(0o755)

    def started(self) -> list[str]:
        """The command lines of the upload-packs started so far (then forgotten)."""
        lines = self.log.read_text().splitlines()
        self.log.write_text("")
        return lines


@pytest.fixture
def upload_packs(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> UploadPacks:
    """Every upload-pack the in-process server starts, counted."""
    counter = UploadPacks(tmp_path)
    monkeypatch.setenv("REPOCACHE_GIT", str(counter.wrapper))
    return counter


def capabilities(port: int) -> bytes:
    """The protocol v2 capability advertisement of ``org/repo`` through the server on ``port``."""
    status, _headers, body = request(
        port, "GET", "/up.test/org/repo.git/info/refs?service=git-upload-pack", headers={"Git-Protocol": "version=2"}
    )
    assert status == 200, body
    return body


@pytest.mark.timeout(120)
@pytest.mark.parametrize("version", [0, 2], ids=["v0", "v2"])
def test_a_warm_clone_starts_upload_pack_for_its_pack_only(
    tmp_path: Path,
    upstream: Upstream,
    upstream_http: SmartHTTPServer,
    env: dict[str, str],
    upload_packs: UploadPacks,
    version: int,
) -> None:
    """The first clone's advertisement (v0: refs and capabilities; v2: capabilities, then the ref listing) is made
    by upload-pack and remembered; a second clone of the same mirror state gets them from memory, so the only
    upload-pack it starts is its pack's. Both clones are whole."""
    from prometheus_client import CollectorRegistry

    from repocache.metrics import instrument

    events: list[Event] = []
    registry = CollectorRegistry()
    with RepoCache(tmp_path / "cache", fetch_ttl=3600) as cache:
        cache.subscribe(events.append)
        instrument(cache, registry)
        with ThreadServer(cache, base_of(upstream_http)) as server:
            first = clone(server.url("org/repo.git"), tmp_path / "first", env=env, version=version)
            assert first.returncode == 0, first.stderr
            assert len(upload_packs.started()) == (2 if version == 0 else 3)
            events.clear()
            second = clone(server.url("org/repo.git"), tmp_path / "second", env=env, version=version)
            assert second.returncode == 0, second.stderr
            started = upload_packs.started()
            assert len(started) == 1, started
            assert "--advertise-refs" not in started[0]
            expected = 1 if version == 0 else 2  # v0: the advertisement; v2: the capabilities and the ref listing
            requests = 2 if version == 0 else 3
            wait_until(lambda: sum(isinstance(e, ServeEvent) for e in events) == requests, what="the last event")
            remembered = [e for e in events if isinstance(e, ServeEvent) and e.remembered]
            assert len(remembered) == expected
            assert health(server.port)["answers_remembered"] == expected
            assert registry.get_sample_value("repocache_serve_remembered_answers_total") == expected
    for name in ("first", "second"):
        assert git("rev-parse", "HEAD", cwd=tmp_path / name).strip() == upstream.resolve("main")
        assert git("rev-parse", "origin/feature", cwd=tmp_path / name).strip() == upstream.resolve("feature")
        git("fsck", "--strict", cwd=tmp_path / name)


@pytest.mark.timeout(120)
def test_a_config_change_changes_the_v2_capabilities_at_once(
    tmp_path: Path,
    upstream: Upstream,
    upstream_http: SmartHTTPServer,
    env: dict[str, str],
    upload_packs: UploadPacks,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """The v2 capability advertisement is remembered only as long as what it depends on is unchanged: a change in
    the mirror's ``config`` or in git's global config file (``lsrefs.unborn``, which the server does not set on
    upload-pack's command line) is advertised by the very next request, and then remembered in its turn."""
    home = tmp_path / "server-home"
    home.mkdir()
    monkeypatch.setenv("HOME", str(home))
    with RepoCache(tmp_path / "cache", fetch_ttl=3600) as cache:
        with ThreadServer(cache, base_of(upstream_http)) as server:
            assert clone(server.url("org/repo.git"), tmp_path / "warm", env=env).returncode == 0
            (entry,) = cache.entries()
            upload_packs.started()
            assert b"ls-refs=unborn" in capabilities(server.port)
            assert b"ls-refs=unborn" in capabilities(server.port)
            assert upload_packs.started() == []  # remembered since the clone

            git("config", "lsrefs.unborn", "ignore", cwd=Path(entry.path))
            changed = capabilities(server.port)
            assert b"ls-refs\n" in changed and b"unborn" not in changed
            assert len(upload_packs.started()) == 1
            assert capabilities(server.port) == changed
            assert upload_packs.started() == []

            git("config", "--unset", "lsrefs.unborn", cwd=Path(entry.path))
            assert b"ls-refs=unborn" in capabilities(server.port)
            upload_packs.started()
            (home / ".gitconfig").write_text("[lsrefs]\n\tunborn = ignore\n")
            assert b"unborn" not in capabilities(server.port)
            assert len(upload_packs.started()) == 1
            (home / ".gitconfig").unlink()
            assert b"ls-refs=unborn" in capabilities(server.port)
            assert upload_packs.started() == []  # the state before the global file: remembered


@pytest.mark.timeout(180)
@pytest.mark.parametrize("version", [0, 2], ids=["v0", "v2"])
def test_a_push_and_a_due_fetch_are_advertised_at_once(
    tmp_path: Path,
    upstream: Upstream,
    upstream_http: SmartHTTPServer,
    env: dict[str, str],
    upload_packs: UploadPacks,
    version: int,
) -> None:
    """A remembered ref advertisement (v0) or ref listing (v2) is keyed by the mirror's ref tips: after a push to
    upstream and a stale mark, the next listing through the server shows the push; after a force-push back, the
    old tip again (the answer remembered for that state is exactly git's for it)."""
    url = base_of(upstream_http) + "org/repo.git"
    before = upstream.resolve("main")
    with RepoCache(tmp_path / "cache", fetch_ttl=3600) as cache:
        with ThreadServer(cache, base_of(upstream_http)) as server:
            through = server.url("org/repo.git")
            assert ls_remote(through, env, version)["refs/heads/main"] == before
            assert ls_remote(through, env, version)["refs/heads/main"] == before
            upload_packs.started()
            new = upstream.commits(1, size=1_000)[-1]
            assert ls_remote(through, env, version)["refs/heads/main"] == before  # within fetch_ttl: the mirror
            assert upload_packs.started() == []
            assert cache.mark_stale(url)
            listed = ls_remote(through, env, version)
            assert listed["refs/heads/main"] == new
            assert listed == ls_remote(url, env, version)
            assert len(upload_packs.started()) == 1  # the new state's listing, made by upload-pack
            upstream.force_push("main", to=before)
            assert cache.mark_stale(url)
            assert ls_remote(through, env, version)["refs/heads/main"] == before
            assert upload_packs.started() == []  # the old state's listing, remembered
            deleted = ls_remote(url, env, version)
            assert ls_remote(through, env, version) == deleted


@pytest.mark.timeout(180)
@pytest.mark.parametrize("version", [0, 2], ids=["v0", "v2"])
def test_concurrent_warm_clones_start_no_upload_pack_for_advertisements(
    tmp_path: Path,
    upstream: Upstream,
    upstream_http: SmartHTTPServer,
    env: dict[str, str],
    upload_packs: UploadPacks,
    version: int,
) -> None:
    """Eight warm clones at once: at most one upload-pack each (their packs, or fewer when shared), none for an
    advertisement or a ref listing; every clone is whole."""
    with RepoCache(tmp_path / "cache", fetch_ttl=3600) as cache:
        with ThreadServer(cache, base_of(upstream_http)) as server:
            assert clone(server.url("org/repo.git"), tmp_path / "warm", env=env, version=version).returncode == 0
            upload_packs.started()
            clones_at_once(server.url("org/repo.git"), tmp_path, 8, env=env, version=version)
            started = upload_packs.started()
            assert 1 <= len(started) <= 8, started
            assert not [line for line in started if "--advertise-refs" in line]
    for n in range(8):
        assert git("rev-parse", "HEAD", cwd=tmp_path / f"c{n}").strip() == upstream.resolve("main")
