"""The git server (``repocache serve``): real git clients clone and fetch through it, from real upstreams."""

from __future__ import annotations

import concurrent.futures
import gzip
import os
import re
import signal
import socket
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from repocache import RepoCache
from repocache.events import Event, ServeEvent
from repocache.serve import Refused, ServeOptions, Upstreams
from repocache.testing import GitDaemon, SmartHTTPServer, Upstream, UpstreamFactory
from tests._serve import (
    ThreadServer,
    ThrottlingProxy,
    base_of,
    clone,
    clones_at_once,
    health,
    is_auth_check,
    ls_remote,
    request,
    serve_process,
    wait_until,
)
from tests.helpers import assert_consistent, git, refs


@pytest.fixture
def upstream(factory: UpstreamFactory) -> Upstream:
    """``org/repo``: commits on ``main``, a branch ``feature``, an annotated tag ``v1`` and a light tag ``v0``."""
    repo = factory.create("org/repo")
    repo.commits(6, size=20_000)
    repo.tag("v0")
    repo.branch("feature")
    repo.commits(2, branch="feature", size=5_000)
    repo.tag("v1", annotated=True)
    return repo


_UPLOAD = "application/x-git-upload-pack-request"


def upstream_contacts(server: SmartHTTPServer) -> int:
    """How many clones and fetches reached ``server`` (each begins with one ``info/refs``; a protocol v2 clone
    then makes two ``git-upload-pack`` requests); the server's checks of its clients' credentials are not
    counted (:func:`auth_checks`)."""
    return sum(
        1
        for request in server.received
        if request.method == "GET" and request.path.endswith("/info/refs") and not is_auth_check(request)
    )


def pushed(upstream: Upstream) -> str:
    """A new commit on upstream's ``main``; its id."""
    return upstream.commits(1, size=1_000)[-1]


# -- smart HTTP as git speaks it --------------------------------------------------------------------------------


@pytest.mark.timeout(120)
@pytest.mark.parametrize("version", [0, 2])
def test_clone_through_the_server_gets_every_ref_and_tag(
    tmp_path: Path, upstream: Upstream, upstream_http: SmartHTTPServer, env: dict[str, str], version: int
) -> None:
    with serve_process(tmp_path / "cache", base_of(upstream_http)) as server:
        done = clone(server.url("org/repo.git"), tmp_path / "clone", "--mirror", version=version, env=env)
        assert done.returncode == 0, done.stderr + server.log
    assert refs(tmp_path / "clone") == upstream.refs()
    git("fsck", "--strict", cwd=tmp_path / "clone")
    with RepoCache(tmp_path / "cache") as cache:
        assert_consistent(cache)


@pytest.mark.timeout(120)
def test_git_protocol_header_reaches_upload_pack(
    tmp_path: Path, upstream: Upstream, upstream_http: SmartHTTPServer, env: dict[str, str]
) -> None:
    """Protocol v2's capability advertisement has no ``# service`` line; v0's ref advertisement has one."""
    with serve_process(tmp_path / "cache", base_of(upstream_http)) as server:
        path = "/up.test/org/repo.git/info/refs?service=git-upload-pack"
        status, headers, v2 = request(server.port, "GET", path, headers={"Git-Protocol": "version=2"})
        assert status == 200 and headers["content-type"] == "application/x-git-upload-pack-advertisement"
        assert v2.startswith(b"000eversion 2\n") and b"fetch" in v2
        status, headers, v0 = request(server.port, "GET", path)
        assert status == 200 and headers["cache-control"].startswith("no-cache")
        assert v0.startswith(b"001e# service=git-upload-pack\n0000")
        assert upstream.resolve("main").encode() in v0


@pytest.mark.timeout(180)
@pytest.mark.parametrize(
    "args",
    [("--depth", "1"), ("--filter=blob:none",), ("--single-branch", "--branch", "feature"), ("--bare",)],
    ids=["depth", "filter", "single-branch", "bare"],
)
@pytest.mark.parametrize("version", [0, 2])
def test_shallow_filtered_and_single_branch_clones(
    tmp_path: Path,
    upstream: Upstream,
    upstream_http: SmartHTTPServer,
    env: dict[str, str],
    args: tuple[str, ...],
    version: int,
) -> None:
    dest = tmp_path / "clone"
    with serve_process(tmp_path / "cache", base_of(upstream_http)) as server:
        done = clone(server.url("org/repo.git"), dest, *args, version=version, env=env)
        assert done.returncode == 0, done.stderr + server.log
    if args[0] == "--depth":
        assert git("rev-list", "--count", "HEAD", cwd=dest).strip() == "1"
        assert (dest / ".git" / "shallow").exists()
    elif args[0].startswith("--filter"):
        assert git("config", "remote.origin.partialclonefilter", cwd=dest).strip() == "blob:none"
        assert git("rev-parse", "HEAD", cwd=dest).strip() == upstream.resolve("main")
    elif args[0] == "--single-branch":
        assert git("rev-parse", "HEAD", cwd=dest).strip() == upstream.resolve("feature")
        assert git("branch", "-r", cwd=dest).split() == ["origin/feature"]
    else:
        assert git("rev-parse", "v1^{commit}", cwd=dest).strip() == upstream.resolve("v1^{commit}")


@pytest.mark.timeout(120)
def test_a_clone_without_dot_git_is_the_same_mirror(
    tmp_path: Path, upstream: Upstream, upstream_http: SmartHTTPServer, env: dict[str, str]
) -> None:
    with serve_process(tmp_path / "cache", base_of(upstream_http), global_args=("--fetch-ttl", "60")) as server:
        for name in ("a", "b"):
            path = "org/repo.git" if name == "a" else "org/repo"
            done = clone(server.url(path), tmp_path / name, env=env)
            assert done.returncode == 0, done.stderr + server.log
    assert upstream_contacts(upstream_http) == 1
    with RepoCache(tmp_path / "cache") as cache:
        assert len(cache.entries()) == 1


@pytest.mark.timeout(120)
def test_git_daemon_upstream(tmp_path: Path, upstream: Upstream, factory: UpstreamFactory, env: dict[str, str]) -> None:
    with GitDaemon(factory.base_dir) as daemon:
        base = daemon.url_for(upstream).rsplit("/org/", 1)[0] + "/"
        with serve_process(tmp_path / "cache", base, "--trust-clients") as server:
            done = clone(server.url("org/repo.git"), tmp_path / "clone", "--mirror", env=env)
            assert done.returncode == 0, done.stderr + server.log
    assert refs(tmp_path / "clone") == upstream.refs()


@pytest.mark.timeout(120)
@pytest.mark.parametrize("version", [0, 2])
def test_push_is_refused_with_a_message_naming_upstream(
    tmp_path: Path, upstream: Upstream, upstream_http: SmartHTTPServer, env: dict[str, str], version: int
) -> None:
    before = upstream.refs()
    with serve_process(tmp_path / "cache", base_of(upstream_http)) as server:
        done = clone(server.url("org/repo.git"), tmp_path / "clone", env=env)
        assert done.returncode == 0, done.stderr
        git(
            "-c",
            "user.name=t",
            "-c",
            "user.email=t@t",
            "commit",
            "--allow-empty",
            "-m",
            "x",
            cwd=tmp_path / "clone",
            env=env,
        )
        pushing = subprocess_git(
            tmp_path / "clone", env, "-c", f"protocol.version={version}", "push", "origin", "HEAD:main"
        )
        assert pushing.returncode != 0
        assert "read-only cache" in pushing.stderr and "push to the upstream" in pushing.stderr
        assert base_of(upstream_http) + "org/repo.git" in pushing.stderr
        status, _, _ = request(server.port, "POST", "/up.test/org/repo.git/git-receive-pack", b"0000")
        assert status == 403
    assert upstream.refs() == before


def subprocess_git(cwd: Path, env: dict[str, str], *args: str) -> Any:
    import subprocess

    return subprocess.run(["git", *args], cwd=cwd, env=env, capture_output=True, text=True, timeout=60, check=False)


@pytest.mark.timeout(120)
@pytest.mark.parametrize("version", [0, 2])
def test_a_plain_clone_has_every_branch_and_tag(
    tmp_path: Path, upstream: Upstream, upstream_http: SmartHTTPServer, env: dict[str, str], version: int
) -> None:
    dest = tmp_path / "clone"
    with serve_process(tmp_path / "cache", base_of(upstream_http)) as server:
        done = clone(server.url("org/repo.git"), dest, version=version, env=env)
        assert done.returncode == 0, done.stderr + server.log
    assert git("tag", "--list", cwd=dest).split() == ["v0", "v1"]
    assert git("rev-parse", "v1^{commit}", cwd=dest).strip() == upstream.resolve("v1^{commit}")
    assert git("cat-file", "-t", "v1", cwd=dest).strip() == "tag"  # annotated, as upstream has it
    assert git("rev-parse", "v0", cwd=dest).strip() == upstream.resolve("v0")
    remotes = git("for-each-ref", "--format=%(refname)", "refs/remotes", cwd=dest).split()
    assert remotes == ["refs/remotes/origin/HEAD", "refs/remotes/origin/feature", "refs/remotes/origin/main"]
    assert git("rev-parse", "HEAD", cwd=dest).strip() == upstream.resolve("main")


@pytest.mark.timeout(180)
@pytest.mark.parametrize("version", [0, 2])
def test_a_fetch_sees_a_push_after_a_stale_mark_and_not_before(
    tmp_path: Path, upstream: Upstream, upstream_http: SmartHTTPServer, env: dict[str, str], version: int
) -> None:
    """Within a long TTL a fetch through the server is answered by the mirror (upstream not asked, the push not
    seen); ``cache.mark_stale`` from another process makes the next one fetch from upstream, once."""
    dest = tmp_path / "clone"
    root = tmp_path / "cache"
    with serve_process(root, base_of(upstream_http), global_args=("--fetch-ttl", "3600")) as server:
        assert clone(server.url("org/repo.git"), dest, version=version, env=env).returncode == 0
        new = pushed(upstream)
        fetch = ("-c", f"protocol.version={version}", "fetch", "origin")
        assert subprocess_git(dest, env, *fetch).returncode == 0
        assert git("rev-parse", "origin/main", cwd=dest).strip() != new
        assert upstream_contacts(upstream_http) == 1
        with RepoCache(root) as cache:
            assert cache.mark_stale(base_of(upstream_http) + "org/repo.git")
        fetched = subprocess_git(dest, env, *fetch)
        assert fetched.returncode == 0, fetched.stderr + server.log
        assert git("rev-parse", "origin/main", cwd=dest).strip() == new
        assert upstream_contacts(upstream_http) == 2
        assert subprocess_git(dest, env, *fetch).returncode == 0  # the mark is consumed: no third contact
        assert upstream_contacts(upstream_http) == 2


@pytest.mark.timeout(180)
def test_a_mirror_being_served_is_not_evicted_until_the_clone_ends(
    tmp_path: Path, factory: UpstreamFactory, env: dict[str, str]
) -> None:
    """While a slow client's pack streams, the serving process holds the mirror as a reader: ``evict`` and a
    budget squeeze from another process skip it; once the clone is done, it can be evicted."""
    big = factory.create("org/big")
    for n in range(4):
        big.commit({f"blob{n}.bin": os.urandom(1 << 20)}, message=f"blob {n}")
    root = tmp_path / "cache"
    with SmartHTTPServer(factory.base_dir) as upstream_http:
        url = base_of(upstream_http) + "org/big.git"
        with serve_process(root, base_of(upstream_http)) as server:
            assert clone(server.url("org/big.git"), tmp_path / "warm", env=env).returncode == 0
            proxy = ThrottlingProxy(server.port, rate=512 << 10)  # 4 MiB take about 8 s to reach this client
            try:
                with concurrent.futures.ThreadPoolExecutor(1) as pool:
                    slow_url = f"http://127.0.0.1:{proxy.port}/up.test/org/big.git"
                    slow = pool.submit(clone, slow_url, tmp_path / "slow", env=env)
                    wait_until(lambda: proxy.relayed > 256 << 10, what="the pack flowing")
                    with RepoCache(root, max_bytes=1) as squeezed:
                        entry = squeezed.info(url)
                        assert entry is not None
                        path = entry.path
                        assert not squeezed.evict(url, force=True)
                        assert squeezed.enforce() == []
                        assert path.is_dir()
                    assert proxy.relayed < 4 << 20, "the clone ended before the eviction was tried"
                    result = slow.result(timeout=120)
                assert result.returncode == 0, result.stderr + server.log
            finally:
                proxy.close()
            wait_until(lambda: server.health()["requests"].get("served", 0) >= 6, what="the slow clone's end")
            with RepoCache(root) as cache:
                assert cache.evict(url)
                assert not path.exists()
                assert_consistent(cache)
    assert git("rev-parse", "HEAD", cwd=tmp_path / "slow").strip() == big.resolve("main")


# -- the allow-list: never an open proxy -------------------------------------------------------------------------

REFUSED_PATHS = [
    # (request target, status, words of the message)
    ("/evil.example/org/repo.git/info/refs?service=git-upload-pack", 404, "'evil.example' is not served here"),
    ("/up.test.evil.example/org/repo.git/info/refs?service=git-upload-pack", 404, "is not served here"),
    ("/evil.example/up.test/org/repo.git/info/refs?service=git-upload-pack", 404, "is not served here"),
    ("/up.test:8080/org/repo.git/info/refs?service=git-upload-pack", 404, "'up.test:8080' is not served here"),
    ("/UP.TEST.EVIL/org/repo.git/info/refs?service=git-upload-pack", 404, "is not served here"),
    ("/tmp/served/org/repo.git/info/refs?service=git-upload-pack", 404, "'tmp' is not served here"),
    ("/file:///tmp/org/repo.git/info/refs?service=git-upload-pack", 400, "no ':'"),
    ("/FILE:/tmp/org/repo.git/info/refs?service=git-upload-pack", 400, "no ':'"),
    ("/up.test/file:/etc/repo.git/info/refs?service=git-upload-pack", 400, "no ':'"),
    ("/up.test/ext::sh%20-c%20touch%20x/info/refs?service=git-upload-pack", 400, "no ':'"),
    ("/ext::sh%20-c%20touch%20x/info/refs?service=git-upload-pack", 400, "no ':'"),
    ("file:///tmp/org/repo.git/info/refs?service=git-upload-pack", 400, "must start with '/'"),
    ("http://evil.example/org/repo.git/info/refs?service=git-upload-pack", 400, "must start with '/'"),
    ("/up.test/../evil.example/repo.git/info/refs?service=git-upload-pack", 400, "'..' are not accepted"),
    ("/up.test/org/../../repo.git/info/refs?service=git-upload-pack", 400, "'..' are not accepted"),
    ("/up.test/./org/repo.git/info/refs?service=git-upload-pack", 400, "'..' are not accepted"),
    ("/up.test/%2e%2e/evil/repo.git/info/refs?service=git-upload-pack", 400, "no percent-encoding"),
    ("/up.test/%2E%2E/evil/repo.git/info/refs?service=git-upload-pack", 400, "no percent-encoding"),
    ("/up.test/org%2f..%2f..%2frepo.git/info/refs?service=git-upload-pack", 400, "no percent-encoding"),
    ("/up.test/..%5c..%5crepo.git/info/refs?service=git-upload-pack", 400, "no percent-encoding"),
    ("/up.test//org/repo.git/info/refs?service=git-upload-pack", 400, "empty segment"),
    ("//up.test/org/repo.git/info/refs?service=git-upload-pack", 400, "empty segment"),
    ("/up.test/org//repo.git/info/refs?service=git-upload-pack", 400, "empty segment"),
    ("/up.test@evil.example/org/repo.git/info/refs?service=git-upload-pack", 400, "may hold only letters"),
    ("/up.test/-uhelp/repo.git/info/refs?service=git-upload-pack", 400, "may not start with '-'"),
    ("/up.test/.git/info/refs?service=git-upload-pack", 404, "names no repository under up.test"),
    ("/up.test/info/refs?service=git-upload-pack", 404, "names no repository under up.test"),
    ("/up.test/org/repo.git/objects/info/packs", 404, "only git's smart HTTP is served"),
    ("/up.test/org/repo.git/HEAD", 404, "only git's smart HTTP is served"),
    ("/up.test/org/repo.git/info/refs", 403, "only git's smart HTTP is served"),
    ("/up.test/org/repo.git/info/refs?service=git-receive-pack", 403, "read-only cache"),
    ("/up.test/" + "a/" * 600 + "repo.git/info/refs?service=git-upload-pack", 400, "at most 1024"),
]


@pytest.mark.timeout(120)
def test_refused_paths_never_reach_upstream(
    tmp_path: Path, upstream: Upstream, upstream_http: SmartHTTPServer, env: dict[str, str]
) -> None:
    """Every row is refused with its status and a message naming what was wrong, fast, with no lock taken, no
    mirror made and no request at the upstream (which serves ``org/repo`` and would answer)."""
    with RepoCache(tmp_path / "cache") as cache:
        with ThreadServer(cache, base_of(upstream_http)) as server:
            for target, status, words in REFUSED_PATHS:
                started = time.monotonic()
                got, headers, body = request(server.port, "GET", target)
                text = body.decode("utf-8", "replace")
                assert got == status, (target, got, text)
                assert time.monotonic() - started < 2, target
                if words:
                    assert headers["content-type"].startswith("text/plain"), target
                    assert text.startswith("repocache: ") and words in text, (target, text)
            upload = "/up.test/%2e%2e/evil.git/git-upload-pack"
            got, _, body = request(server.port, "POST", upload, b"0000", {"Content-Type": _UPLOAD})
            assert got == 400 and b"percent-encoding" in body
            assert upstream_http.requests == []
            refused = clone(f"http://127.0.0.1:{server.port}/evil.example/org/repo.git", tmp_path / "c", env=env)
            assert refused.returncode != 0
            assert "remote: repocache: 'evil.example' is not served here; allowed prefixes: up.test" in refused.stderr
            assert upstream_http.requests == []
            assert cache.entries() == []
            assert not any((tmp_path / "cache" / "repos").iterdir())


@pytest.mark.timeout(120)
def test_a_client_unchanged_but_for_one_insteadof_line_reads_through_the_server(
    tmp_path: Path, upstream: Upstream, upstream_http: SmartHTTPServer, env: dict[str, str]
) -> None:
    """The client setup of docs/serve.md: the upstream URL is cloned as is; git sends it to the server."""
    root = tmp_path / "cache"
    with serve_process(root, base_of(upstream_http), global_args=("--fetch-ttl", "60")) as server:
        # The client's own global config file (never `git config --global` here: the tests' environment points
        # GIT_CONFIG_GLOBAL at /dev/null, and git would replace /dev/null with a regular file).
        config = tmp_path / "client-gitconfig"
        rewrite = f"url.http://127.0.0.1:{server.port}/up.test/.insteadOf"
        subprocess.run(["git", "config", "--file", str(config), rewrite, base_of(upstream_http)], env=env, check=True)
        env = dict(env, GIT_CONFIG_GLOBAL=str(config))
        for name in ("a", "b"):
            done = clone(base_of(upstream_http) + "org/repo.git", tmp_path / name, env=env)
            assert done.returncode == 0, done.stderr + server.log
        assert server.health()["requests"]["served"] == 6  # two clones of three requests each, through the server
    assert upstream_contacts(upstream_http) == 1  # the cache's clone; the second client was served from it
    assert git("rev-parse", "HEAD", cwd=tmp_path / "b").strip() == upstream.resolve("main")


@pytest.mark.timeout(120)
def test_a_host_name_is_matched_in_any_case_but_the_path_is_kept(
    tmp_path: Path, upstream: Upstream, upstream_http: SmartHTTPServer, env: dict[str, str]
) -> None:
    """Host names are case-insensitive (``/UP.TEST/`` is the prefix ``up.test``); the repository path is passed
    to upstream as written (``ORG/REPO`` is another repository on a case-sensitive host, refused by it: the check
    of the client's credentials answers 401, as upstream would, and nothing is cloned)."""
    with RepoCache(tmp_path / "cache") as cache:
        with ThreadServer(cache, base_of(upstream_http)) as server:
            done = clone(f"http://127.0.0.1:{server.port}/UP.TEST/org/repo.git", tmp_path / "a", env=env)
            assert done.returncode == 0, done.stderr
            other = clone(f"http://127.0.0.1:{server.port}/up.test/ORG/REPO.git", tmp_path / "b", env=env)
            assert other.returncode != 0
            assert "could not read Username" in other.stderr, other.stderr
            assert [entry.url for entry in cache.entries()] == [base_of(upstream_http) + "org/repo"]


def test_the_mapping_names_upstreams_under_their_prefix_only() -> None:
    upstreams = Upstreams(
        {
            "github.com": "https://github.com/",
            "git.example:8080": "http://git.example:8080/",
            "gitlab.example/team": "https://gitlab.example/team/",
            "daemon.example": "git://daemon.example/",
            "ssh.example": "ssh://git@ssh.example/srv/",
        }
    )
    served = {
        b"/github.com/o/r.git/info/refs": "https://github.com/o/r.git",
        b"/GitHub.com/o/r/git-upload-pack": "https://github.com/o/r",
        b"/git.example:8080/a/b.git/info/refs": "http://git.example:8080/a/b.git",
        b"/gitlab.example/team/sub/r.git/info/refs": "https://gitlab.example/team/sub/r.git",
        b"/github.com/~user/r.git/info/refs": "https://github.com/~user/r.git",  # literal over https
    }
    for path, upstream in served.items():
        assert upstreams.route(path).upstream == upstream, path
    refused = {
        b"/git.example/a/b.git/info/refs": (404, "'git.example' is not served here"),
        b"/git.example:9090/a/b.git/info/refs": (404, "'git.example:9090' is not served here"),
        b"/gitlab.example/other/r.git/info/refs": (404, "'gitlab.example' is not served here"),
        b"/daemon.example/~alice/r.git/info/refs": (400, "home directory"),
        b"/ssh.example/x/~root/r.git/info/refs": (400, "home directory"),
        b"/github.com/o/r.git/info/refs\x00": (400, "may hold only"),
        "/github.com/ö/r.git/info/refs".encode(): (400, "plain ASCII"),
    }
    for path, (status, words) in refused.items():
        with pytest.raises(Refused) as caught:
            upstreams.route(path)
        assert caught.value.status == status and words in caught.value.reason, (path, caught.value.reason)


@pytest.mark.parametrize(
    "allowed, words",
    [
        ({}, "no upstream is allowed"),
        ({"x": "file:///srv/git/"}, "expected an https, http, git or ssh URL"),
        ({"x": "/srv/git/"}, "expected an https, http, git or ssh URL"),
        ({"x": "https://user:token@h.example/"}, "without credentials"),
        ({"x": "ext::sh -c true"}, "transport helpers"),
        ({"x/..": "https://h.example/"}, "allowed prefix 'x/..' is not accepted"),
        ({"a b": "https://h.example/"}, "allowed prefix 'a b' is not accepted"),
    ],
)
def test_a_bad_allow_list_is_refused_naming_the_entry(allowed: dict[str, str], words: str) -> None:
    from repocache.errors import ConfigError

    with pytest.raises(ConfigError, match=re.escape(words)):
        Upstreams(allowed)


# -- freshness ------------------------------------------------------------------------------------------------


@pytest.mark.timeout(120)
def test_fetch_after_a_push_within_and_past_fetch_ttl(
    tmp_path: Path, upstream: Upstream, upstream_http: SmartHTTPServer, env: dict[str, str]
) -> None:
    ttl = 3.0
    dest = tmp_path / "clone"
    with serve_process(tmp_path / "cache", base_of(upstream_http), global_args=("--fetch-ttl", str(ttl))) as server:
        started = time.monotonic()
        assert clone(server.url("org/repo.git"), dest, env=env).returncode == 0
        cloned = time.monotonic()  # the mirror's clone ended before this: its TTL runs out by cloned + ttl
        contacts = len(upstream_http.requests)
        new = pushed(upstream)
        subprocess_git(dest, env, "fetch", "origin")
        if time.monotonic() - started < ttl:  # within the TTL: the mirror answers, upstream is not asked
            assert git("rev-parse", "origin/main", cwd=dest).strip() != new
            assert len(upstream_http.requests) == contacts
        time.sleep(max(0.0, ttl - (time.monotonic() - cloned)) + 0.2)
        fetched = subprocess_git(dest, env, "fetch", "origin")
        assert fetched.returncode == 0, fetched.stderr
        assert git("rev-parse", "origin/main", cwd=dest).strip() == new
        assert upstream_contacts(upstream_http) == 2


@pytest.mark.timeout(120)
def test_ref_advertisements_within_fetch_ttl_come_from_the_mirror(
    tmp_path: Path, upstream: Upstream, upstream_http: SmartHTTPServer, env: dict[str, str]
) -> None:
    with serve_process(tmp_path / "cache", base_of(upstream_http), global_args=("--fetch-ttl", "3600")) as server:
        before = ls_remote(server.url("org/repo.git"), env)
        assert before["refs/heads/main"] == upstream.resolve("main")
        assert before["refs/tags/v1"] == upstream.refs()["refs/tags/v1"]  # the annotated tag object
        pushed(upstream)
        for n in range(6):
            assert ls_remote(server.url("org/repo.git"), env, version=n % 2 * 2) == before
        assert upstream_contacts(upstream_http) == 1  # the clone; every advertisement after it from the mirror


@pytest.mark.timeout(120)
def test_a_due_repository_is_fetched_once_for_a_burst_of_requests(
    tmp_path: Path, upstream: Upstream, upstream_http: SmartHTTPServer, env: dict[str, str]
) -> None:
    """Eight ``git ls-remote`` at once after a stale mark, against an upstream that takes two seconds to answer each
    request: one fetch reaches upstream, and every request waits for it and shows the push."""
    root = tmp_path / "cache"
    with serve_process(root, base_of(upstream_http), global_args=("--fetch-ttl", "3600")) as server:
        ls_remote(server.url("org/repo.git"), env)
        new = pushed(upstream)
        upstream_http.delay = 2.0
        with RepoCache(root) as cache:
            assert cache.mark_stale(base_of(upstream_http) + "org/repo.git")
        with concurrent.futures.ThreadPoolExecutor(8) as pool:
            urls = [server.url("org/repo.git")] * 8
            answers = list(pool.map(lambda url: ls_remote(url, env, version=2), urls, timeout=90))
        assert [answer["refs/heads/main"] for answer in answers] == [new] * 8
        assert upstream_contacts(upstream_http) == 2, upstream_http.requests


@pytest.mark.timeout(120)
def test_background_refresh_answers_a_due_request_at_once(
    tmp_path: Path, upstream: Upstream, upstream_http: SmartHTTPServer, env: dict[str, str]
) -> None:
    root = tmp_path / "cache"
    with serve_process(
        root, base_of(upstream_http), "--refresh", "background", global_args=("--fetch-ttl", "3600")
    ) as server:
        old = ls_remote(server.url("org/repo.git"), env)["refs/heads/main"]
        new = pushed(upstream)
        upstream_http.delay = 4.0  # the background fetch takes at least 8 s (two requests)
        with RepoCache(root) as cache:
            assert cache.mark_stale(base_of(upstream_http) + "org/repo.git")
        started = time.monotonic()
        assert ls_remote(server.url("org/repo.git"), env)["refs/heads/main"] == old
        assert time.monotonic() - started < 3.0
        wait_until(
            lambda: ls_remote(server.url("org/repo.git"), env)["refs/heads/main"] == new,
            timeout=60,
            what="the background fetch",
        )
        assert upstream_contacts(upstream_http) == 2


@pytest.mark.timeout(120)
def test_webhook_route_marks_stale_so_the_next_fetch_sees_the_push(
    tmp_path: Path, upstream: Upstream, upstream_http: SmartHTTPServer, env: dict[str, str]
) -> None:
    import hashlib
    import hmac
    import json

    secret = tmp_path / "secret"
    secret.write_text("s3cret\n")
    dest = tmp_path / "clone"
    args = ("--webhook-secret-file", str(secret))
    with serve_process(
        tmp_path / "cache", base_of(upstream_http), *args, global_args=("--fetch-ttl", "3600")
    ) as server:
        assert clone(server.url("org/repo.git"), dest, env=env).returncode == 0
        new = pushed(upstream)
        payload = json.dumps({"repository": {"clone_url": base_of(upstream_http) + "org/repo.git"}}).encode()
        signature = "sha256=" + hmac.new(b"s3cret", payload, hashlib.sha256).hexdigest()
        headers = {"X-GitHub-Event": "push", "X-Hub-Signature-256": signature, "Content-Type": "application/json"}
        status, _, body = request(server.port, "POST", "/-/webhook", payload, headers)
        assert status == 200, body
        assert json.loads(body)["marked"]
        bad = dict(headers, **{"X-Hub-Signature-256": "sha256=" + "0" * 64})
        assert request(server.port, "POST", "/-/webhook", payload, bad)[0] == 401
        assert subprocess_git(dest, env, "fetch", "origin").returncode == 0
        assert git("rev-parse", "origin/main", cwd=dest).strip() == new


@pytest.mark.timeout(120)
def test_upstream_down_serves_the_cached_copy_and_refuses_an_uncached_one(
    tmp_path: Path, factory: UpstreamFactory, upstream: Upstream, env: dict[str, str]
) -> None:
    other = factory.create("org/other")
    http = SmartHTTPServer(factory.base_dir)
    http.start()
    base = base_of(http)
    try:
        with serve_process(tmp_path / "cache", base) as server:
            assert clone(server.url("org/repo.git"), tmp_path / "warm", env=env).returncode == 0
            http.stop()  # upstream is down from here on; its port refuses connections
            served = clone(server.url("org/repo.git"), tmp_path / "stale", env=env)
            assert served.returncode == 0, served.stderr + server.log
            assert git("rev-parse", "HEAD", cwd=tmp_path / "stale").strip() == upstream.resolve("main")
            refused = clone(server.url("org/other.git"), tmp_path / "cold", env=env)
            assert refused.returncode != 0
            # Fail closed: with upstream down the client's access cannot be checked, so nothing uncached is cloned.
            assert "remote: repocache: the cache cannot check credentials" in refused.stderr, refused.stderr
            assert "502" in refused.stderr
            health = server.health()
            assert health["requests"]["stale"] >= 1 and health["requests"]["upstream"] == 1
            assert "serving a stale copy" in server.log
        with RepoCache(tmp_path / "cache") as cache:
            assert cache.stats().fetch_errors >= 1  # the failed fetch is counted in the root, for every process
            assert [entry.url for entry in cache.entries()] == [base + "org/repo"]
    finally:
        http.stop()
    del other


# -- one clone, one pack ------------------------------------------------------------------------------------------


@pytest.mark.timeout(180)
def test_eight_concurrent_cold_clones_make_one_upstream_clone(
    tmp_path: Path, upstream: Upstream, upstream_http: SmartHTTPServer, env: dict[str, str]
) -> None:
    upstream.commits(10, size=200_000)
    with serve_process(tmp_path / "cache", base_of(upstream_http), global_args=("--fetch-ttl", "60")) as server:
        clones_at_once(server.url("org/repo.git"), tmp_path, 8, env=env)
        assert upstream_contacts(upstream_http) == 1
    head = upstream.resolve("main")
    assert {git("rev-parse", "HEAD", cwd=tmp_path / f"c{n}").strip() for n in range(8)} == {head}


@pytest.mark.timeout(180)
def test_cold_clones_from_two_servers_and_the_library_make_one_upstream_clone(
    tmp_path: Path, upstream: Upstream, upstream_http: SmartHTTPServer, env: dict[str, str]
) -> None:
    """Two ``repocache serve`` processes on one root and a library user of that root, all cold at once against an
    upstream slow to answer: one clone reaches upstream, every client gets the repository."""
    root = tmp_path / "cache"
    upstream_http.delay = 0.5
    url = base_of(upstream_http) + "org/repo.git"
    ttl = ("--fetch-ttl", "60")
    with (
        serve_process(root, base_of(upstream_http), global_args=ttl) as one,
        serve_process(root, base_of(upstream_http), global_args=ttl) as two,
    ):
        with concurrent.futures.ThreadPoolExecutor(7) as pool, RepoCache(root, fetch_ttl=60) as cache:
            clones = [
                pool.submit(clone, server.url("org/repo.git"), tmp_path / f"c{n}", env=env, version=n % 2 * 2)
                for n, server in enumerate([one, two] * 3)
            ]
            library = pool.submit(cache.ensure, url)
            results = [future.result(timeout=150) for future in clones]
            assert library.result(timeout=150).url == base_of(upstream_http) + "org/repo"
        assert [r.returncode for r in results] == [0] * 6, [r.stderr for r in results] + [one.log, two.log]
    assert upstream_contacts(upstream_http) == 1, upstream_http.requests
    head = upstream.resolve("main")
    assert {git("rev-parse", "HEAD", cwd=tmp_path / f"c{n}").strip() for n in range(6)} == {head}


def slow_upload_pack(monkeypatch: pytest.MonkeyPatch, seconds: float) -> None:
    """Every upload-pack the in-process server starts first sleeps ``seconds`` (so requests overlap)."""
    from repocache.gitops.upload_pack import upload_pack_command as real

    def slowed(*args: Any, **kwargs: Any) -> tuple[list[str], dict[str, str]]:
        argv, environment = real(*args, **kwargs)
        return ["sh", "-c", f'sleep {seconds}; exec "$@"', "sh", *argv], environment

    monkeypatch.setattr("repocache.serve.app.upload_pack_command", slowed)


@pytest.mark.timeout(180)
@pytest.mark.parametrize("version", [0, 2])
def test_identical_concurrent_clones_share_one_pack_generation(
    tmp_path: Path,
    upstream: Upstream,
    upstream_http: SmartHTTPServer,
    env: dict[str, str],
    monkeypatch: pytest.MonkeyPatch,
    version: int,
) -> None:
    """Eight identical clones of a warm mirror, whose upload-pack takes a while: the pack is made once or a few
    times, not eight; every clone is whole."""
    upstream.commits(4, size=100_000)
    with RepoCache(tmp_path / "cache", fetch_ttl=60) as cache:
        with ThreadServer(cache, base_of(upstream_http)) as server:
            assert clone(server.url("org/repo.git"), tmp_path / "warm", env=env, version=version).returncode == 0
            slow_upload_pack(monkeypatch, 2.5)
            shared_before = server.app.generations.shared
            clones_at_once(server.url("org/repo.git"), tmp_path, 8, env=env, version=version)
            shared = server.app.generations.shared - shared_before
            assert shared >= 4, shared  # of the 8 pack answers (and v2's 8 ref listings), most joined another's
            assert health(server.port)["pack_shares"] == server.app.generations.shared
    head = upstream.resolve("main")
    for n in range(8):
        assert git("rev-parse", "HEAD", cwd=tmp_path / f"c{n}").strip() == head
        git("fsck", "--strict", cwd=tmp_path / f"c{n}")


@pytest.mark.timeout(120)
def test_a_clone_joins_a_finished_pack_while_another_client_still_reads_it(
    tmp_path: Path, big_upstream: Upstream, upstream_http: SmartHTTPServer, env: dict[str, str]
) -> None:
    """upload-pack has ended, a slow client is still reading the spooled pack: an identical request arriving now
    reads the same spool instead of starting upload-pack again; both clones are whole."""
    with RepoCache(tmp_path / "cache", fetch_ttl=60) as cache:
        with ThreadServer(cache, base_of(upstream_http)) as server:
            assert clone(server.url("org/big.git"), tmp_path / "warm", env=env).returncode == 0
            proxy = ThrottlingProxy(server.port, rate=1 << 20)
            try:
                with concurrent.futures.ThreadPoolExecutor(1) as pool:
                    url = f"http://127.0.0.1:{proxy.port}/up.test/org/big.git"
                    slow = pool.submit(clone, url, tmp_path / "slow", env=env)
                    wait_until(lambda: proxy.relayed > 256 << 10, what="the pack flowing")
                    generations = server.app.generations
                    wait_until(lambda: generations.active == 0, what="upload-pack ending")
                    assert not slow.done()  # still reading the spool
                    shared_before = generations.shared
                    fast = clone(server.url("org/big.git"), tmp_path / "fast", env=env)
                    assert fast.returncode == 0, fast.stderr
                    assert generations.shared == shared_before + 1  # it read the slow client's spool
                    assert slow.result(timeout=90).returncode == 0
            finally:
                proxy.close()
    head = big_upstream.resolve("main")
    for name in ("slow", "fast"):
        assert git("rev-parse", "HEAD", cwd=tmp_path / name).strip() == head
        git("fsck", "--strict", cwd=tmp_path / name)


@pytest.mark.timeout(120)
def test_beyond_the_queue_a_request_gets_503_with_retry_after_before_any_byte(
    tmp_path: Path,
    upstream: Upstream,
    upstream_http: SmartHTTPServer,
    env: dict[str, str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    options = ServeOptions(max_packs=1, max_queue=1, retry_after=7)
    with RepoCache(tmp_path / "cache", fetch_ttl=60) as cache:
        with ThreadServer(cache, base_of(upstream_http), options=options) as server:
            assert clone(server.url("org/repo.git"), tmp_path / "warm", env=env).returncode == 0
            slow_upload_pack(monkeypatch, 3)
            path = "/up.test/org/repo.git/git-upload-pack"
            headers = {"Content-Type": _UPLOAD}
            with concurrent.futures.ThreadPoolExecutor(2) as pool:
                # two different requests: one takes the slot, one waits in the queue
                first = pool.submit(request, server.port, "POST", path, b"0000", headers)
                wait_until(lambda: server.app.generations.active == 1, what="the slot taken")
                second = pool.submit(request, server.port, "POST", path, b"0000" * 2, headers)
                wait_until(lambda: server.app.generations.queued == 1, what="the queue taken")
                status, answer_headers, body = request(server.port, "POST", path, b"0000" * 3, headers)
                assert status == 503 and answer_headers["retry-after"] == "7", body
                assert body.startswith(b"repocache: the cache server is busy") and b"retry in 7 s" in body
                refs_path = "/up.test/org/repo.git/info/refs?service=git-upload-pack"
                assert request(server.port, "GET", refs_path)[0] == 503
                assert first.result(timeout=60)[0] == 200 and second.result(timeout=60)[0] == 200
            assert server.app.counts["busy"] == 2
            assert server.app.generations.active == 0 and server.app.generations.queued == 0


@pytest.mark.timeout(120)
def test_events_and_counts_of_requests(
    tmp_path: Path, upstream: Upstream, upstream_http: SmartHTTPServer, env: dict[str, str]
) -> None:
    seen: list[Event] = []
    with RepoCache(tmp_path / "cache", on_event=seen.append) as cache:
        with ThreadServer(cache, base_of(upstream_http)) as server:
            assert clone(server.url("org/repo.git"), tmp_path / "clone", env=env).returncode == 0
            wait_until(lambda: server.app.counts["served"] == 3, what="the clone's three answers counted")
            assert request(server.port, "GET", "/elsewhere/x.git/info/refs")[0] == 404
            wait_until(lambda: server.app.counts["refused"] == 1, what="the refusal counted")
            assert server.app.counts["served"] == 3 and server.app.counts["refused"] == 1
        served = [e for e in seen if isinstance(e, ServeEvent)]
        assert [e.outcome for e in served] == ["served", "served", "served", "refused"]
        assert sum(e.bytes_sent for e in served if e.service == "git-upload-pack") > 100_000
        assert all(e.url == "" or "@" not in e.url for e in served)


@pytest.mark.timeout(120)
def test_prometheus_metrics_count_requests_and_bytes(
    tmp_path: Path, upstream: Upstream, upstream_http: SmartHTTPServer, env: dict[str, str]
) -> None:
    from prometheus_client import CollectorRegistry, generate_latest

    from repocache.metrics import instrument

    registry = CollectorRegistry()
    with RepoCache(tmp_path / "cache") as cache:
        instrument(cache, registry)
        with ThreadServer(cache, base_of(upstream_http)) as server:
            assert clone(server.url("org/repo.git"), tmp_path / "clone", env=env).returncode == 0
            labels = {"service": "git-upload-pack", "outcome": "served"}

            def served() -> float | None:
                return registry.get_sample_value("repocache_serve_requests_total", labels)

            wait_until(lambda: served() == 2.0, what="the last event")  # reported after its answer is sent
            text = generate_latest(registry).decode()
    assert "repocache_serve_bytes_total" in text and "repocache_serve_queue_length 0.0" in text


# -- hostile clients ------------------------------------------------------------------------------------------


def raw_exchange(port: int, data: bytes, *, pause: float = 0.0, wait: float = 10.0) -> tuple[bytes, float]:
    """Send ``data`` (a byte at a time with ``pause`` between bytes when given), then read until the server closes
    the connection or ``wait`` seconds pass; what came back, and the seconds until the close."""
    started = time.monotonic()
    with socket.create_connection(("127.0.0.1", port), timeout=wait) as sock:
        try:
            if pause:
                for byte in data:
                    sock.sendall(bytes([byte]))
                    time.sleep(pause)
            else:
                sock.sendall(data)
        except OSError:
            pass  # the server closed the connection while we were still sending
        received = b""
        try:
            while chunk := sock.recv(65536):
                received += chunk
        except (TimeoutError, ConnectionResetError):
            pass
    return received, time.monotonic() - started


@pytest.fixture
def strict_server(tmp_path: Path, upstream: Upstream, upstream_http: SmartHTTPServer) -> Iterator[ThreadServer]:
    """A warm in-process server with short bounds: 1 s for a request head, 1 s of pause in a body, 64 KiB bodies."""
    options = ServeOptions(body_timeout=1.0, max_body_bytes=64 << 10)
    with RepoCache(tmp_path / "cache", fetch_ttl=60) as cache:
        with ThreadServer(cache, base_of(upstream_http), options=options, head_timeout=1.0) as server:
            assert request(server.port, "GET", "/up.test/org/repo.git/info/refs?service=git-upload-pack")[0] == 200
            yield server


@pytest.mark.timeout(60)
def test_a_slowloris_request_head_is_cut_off_after_head_timeout(strict_server: ThreadServer) -> None:
    head = b"GET /up.test/org/repo.git/info/refs?service=git-upload-pack HTTP/1.1\r\nHost: x\r\n" + b"X: y\r\n" * 50
    received, seconds = raw_exchange(strict_server.port, head, pause=0.05, wait=20)
    assert received == b"" and seconds < 5  # closed after about 1 s, not when the trickle ends (about 27 s)
    silent, seconds = raw_exchange(strict_server.port, b"", wait=20)
    assert silent == b"" and seconds < 5  # a connection that says nothing is closed too


def keep_alive_exchanges(port: int, count: int) -> float:
    """Seconds for ``count`` ``GET /-/health`` on one keep-alive connection, each request in one segment."""
    with socket.create_connection(("127.0.0.1", port), timeout=30) as sock:
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        started = time.monotonic()
        for _ in range(count):
            sock.sendall(b"GET /-/health HTTP/1.1\r\nHost: x\r\n\r\n")
            data = b""
            while b"\r\n\r\n" not in data:
                data += sock.recv(65536)
            head, _, body = data.partition(b"\r\n\r\n")
            length = int(re.search(rb"content-length: *(\d+)", head, re.IGNORECASE)[1])  # type: ignore[index]
            while len(body) < length:
                body += sock.recv(65536)
            assert head.startswith(b"HTTP/1.1 200"), head
        return time.monotonic() - started


@pytest.mark.timeout(60)
def test_answers_on_a_keep_alive_connection_are_not_held_back_by_nagle(strict_server: ThreadServer) -> None:
    """An answer is its head and its body, written apart: with Nagle's algorithm on, the body waits for the
    client's delayed acknowledgement of the head (40 ms on Linux) on every request of a connection but its first.
    Twenty requests on one connection take far less than twenty such waits (a v2 clone makes three)."""
    seconds = keep_alive_exchanges(strict_server.port, 20)
    assert seconds < 0.5, f"20 keep-alive requests took {seconds:.2f} s"


@pytest.mark.timeout(60)
def test_an_oversized_request_head_is_refused(strict_server: ThreadServer) -> None:
    head = b"GET /-/health HTTP/1.1\r\nHost: x\r\nX-Big: " + b"a" * (64 << 10) + b"\r\n\r\n"
    received, _ = raw_exchange(strict_server.port, head)
    assert received.startswith(b"HTTP/1.1 431"), received[:200]
    assert b"the request head is" in received and b"at most 16384 are accepted" in received
    assert request(strict_server.port, "GET", "/-/health")[0] == 200  # the server is unharmed


@pytest.mark.timeout(60)
def test_request_bodies_are_bounded_in_size_and_in_pauses(strict_server: ThreadServer) -> None:
    path = "/up.test/org/repo.git/git-upload-pack"
    headers = {"Content-Type": _UPLOAD}
    status, _, body = request(strict_server.port, "POST", path, b"0" * (65 << 10), headers)
    assert status == 413 and b"at most 65536" in body
    bomb = gzip.compress(b"0" * (8 << 20))  # 8 KiB on the wire, 8 MiB inflated
    status, _, body = request(strict_server.port, "POST", path, bomb, dict(headers, **{"Content-Encoding": "gzip"}))
    assert status == 413 and b"inflated" in body
    status, _, body = request(
        strict_server.port, "POST", path, b"\x1f\x8bnot gzip", dict(headers, **{"Content-Encoding": "gzip"})
    )
    assert status == 400 and b"gzip" in body
    status, _, body = request(strict_server.port, "POST", path, b"0000", dict(headers, **{"Content-Encoding": "br"}))
    assert status == 415 and b"expected gzip or none" in body
    status, _, body = request(strict_server.port, "POST", path, b"0000", {"Content-Type": "text/plain"})
    assert status == 415 and b"application/x-git-upload-pack-request" in body
    stalled = (
        f"POST {path} HTTP/1.1\r\nHost: x\r\nContent-Type: {_UPLOAD}\r\nContent-Length: 100\r\n\r\n0032want "
    ).encode()
    received, seconds = raw_exchange(strict_server.port, stalled, wait=20)
    assert received.startswith(b"HTTP/1.1 408") and b"stalled for 1 s" in received and seconds < 5, received


@pytest.mark.timeout(60)
def test_a_body_sent_slowly_is_accepted_when_no_single_pause_is_too_long(strict_server: ThreadServer) -> None:
    # body_timeout bounds each pause between chunks, not the whole body: four chunks 0.6 s apart take 1.8 s > 1 s.
    path = "/up.test/org/repo.git/git-upload-pack"
    body = b"0014command=ls-refs\n0000"
    head = (
        f"POST {path} HTTP/1.1\r\nHost: x\r\nContent-Type: {_UPLOAD}\r\nGit-Protocol: version=2\r\n"
        f"Content-Length: {len(body)}\r\nConnection: close\r\n\r\n"
    ).encode()
    started = time.monotonic()
    with socket.create_connection(("127.0.0.1", strict_server.port), timeout=20) as sock:
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        sock.sendall(head)
        for start in range(0, len(body), 7):
            if start:
                time.sleep(0.6)
            sock.sendall(body[start : start + 7])
        received = b""
        while chunk := sock.recv(65536):
            received += chunk
    assert time.monotonic() - started > 1.5
    assert received.startswith(b"HTTP/1.1 200"), received[:300]
    assert b"refs/heads/" in received, received[:300]


@pytest.mark.timeout(60)
@pytest.mark.parametrize(
    "body, protocol",
    [
        (b"zzzz", ""),
        (b"0009want\n0000", ""),
        (b"0032want " + b"f" * 40 + b"\n00000009done\n", ""),
        (b"0032want " + b"x" * 40 + b"\n00000009done\n", ""),
        (b"0012command=bogus\n0000", "version=2"),
        (b"0011command=fetch0001000cwant 1\n0000", "version=2"),
        (b"ffff" + b"a" * 100, "version=2"),
    ],
    ids=["not-pkt-line", "short-want", "unknown-object", "bad-hex", "v2-bogus-command", "v2-bad-want", "truncated"],
)
def test_malformed_requests_get_a_clear_error_and_no_hung_worker(
    strict_server: ThreadServer, body: bytes, protocol: str
) -> None:
    path = "/up.test/org/repo.git/git-upload-pack"
    headers = {"Content-Type": _UPLOAD}
    if protocol:
        headers["Git-Protocol"] = protocol
    started = time.monotonic()
    status, _, answer = request(strict_server.port, "POST", path, body, headers)
    assert time.monotonic() - started < 10
    text = answer.decode("utf-8", "replace")
    assert "Traceback" not in text and "internal error" not in text, text
    if status == 200:  # git answers in-protocol (an ERR pkt-line) once it has begun
        assert "ERR" in text or "error" in text.lower(), text
    else:
        assert status == 400 and text.startswith("repocache: git upload-pack refused the request"), text
    wait_until(lambda: strict_server.app.generations.active == 0, timeout=10, what="the upload-pack ended")
    assert request(strict_server.port, "GET", "/-/health")[0] == 200


@pytest.mark.timeout(120)
def test_a_client_that_stops_reading_is_abandoned_after_send_timeout(
    tmp_path: Path, big_upstream: Upstream, upstream_http: SmartHTTPServer, env: dict[str, str]
) -> None:
    """A client that reads 2 KB a second of a 4 MiB pack holds no mirror forever: once a chunk of the answer
    cannot be handed over for ``send_timeout`` seconds the answer is abandoned (counted ``gone``), the hold is
    released and the mirror can be evicted."""
    options = ServeOptions(send_timeout=1.0)
    with RepoCache(tmp_path / "cache", fetch_ttl=60) as cache:
        with ThreadServer(cache, base_of(upstream_http), options=options) as server:
            assert clone(server.url("org/big.git"), tmp_path / "warm", env=env).returncode == 0
            proxy = ThrottlingProxy(server.port, rate=2000, receive_buffer=4096)
            try:
                with concurrent.futures.ThreadPoolExecutor(1) as pool:
                    url = f"http://127.0.0.1:{proxy.port}/up.test/org/big.git"
                    stalled = pool.submit(clone, url, tmp_path / "stalled", env=env, timeout=60)
                    wait_until(lambda: server.app.counts["gone"] == 1, timeout=60, what="the answer abandoned")
                    proxy.close()
                    assert stalled.result(timeout=60).returncode != 0
            finally:
                proxy.close()
            assert cache.evict(base_of(upstream_http) + "org/big.git")  # no reader holds it any more


# -- stopping ---------------------------------------------------------------------------------------------------


@pytest.fixture
def big_upstream(factory: UpstreamFactory) -> Upstream:
    """A repository whose pack is a few MiB of incompressible bytes."""
    import os as _os

    repo = factory.create("org/big")
    for n in range(4):
        repo.commit({f"blob{n}.bin": _os.urandom(1 << 20)}, message=f"blob {n}")
    return repo


def refuses_connections(port: int) -> bool:
    """Whether nothing listens on 127.0.0.1:``port`` any more."""
    try:
        socket.create_connection(("127.0.0.1", port), timeout=5).close()
    except ConnectionRefusedError:
        return True
    return False


@pytest.mark.timeout(180)
def test_sigterm_drains_an_in_flight_clone(
    tmp_path: Path, big_upstream: Upstream, upstream_http: SmartHTTPServer, env: dict[str, str]
) -> None:
    """SIGTERM: the listening socket closes at once (a new connection is refused), the clone whose pack is
    streaming completes, and the server exits 0 once it is done, well within ``--graceful-timeout``."""
    with serve_process(tmp_path / "cache", base_of(upstream_http), "--graceful-timeout", "60") as server:
        assert clone(server.url("org/big.git"), tmp_path / "warm", env=env).returncode == 0
        proxy = ThrottlingProxy(server.port, rate=512 << 10)  # 4 MiB take about 8 s to reach this client
        try:
            with concurrent.futures.ThreadPoolExecutor(1) as pool:
                url = f"http://127.0.0.1:{proxy.port}/up.test/org/big.git"
                slow = pool.submit(clone, url, tmp_path / "slow", env=env)
                wait_until(lambda: proxy.relayed > 256 << 10, what="the pack flowing")
                server.signal(signal.SIGTERM)
                signalled = time.monotonic()
                wait_until(lambda: refuses_connections(server.port), timeout=10, what="the listener closed")
                assert not slow.done(), "the clone ended before the drain was seen"
                result = slow.result(timeout=120)
            assert result.returncode == 0, result.stderr + server.log
            assert server.wait(timeout=30) == 0, server.log
            assert time.monotonic() - signalled < 45
        finally:
            proxy.close()
    assert git("rev-parse", "HEAD", cwd=tmp_path / "slow").strip() == big_upstream.resolve("main")
    assert "stopped" in server.log


@pytest.mark.timeout(180)
def test_sigterm_stops_a_stalled_client_after_the_graceful_timeout(
    tmp_path: Path, big_upstream: Upstream, upstream_http: SmartHTTPServer, env: dict[str, str]
) -> None:
    """A client too slow to finish within ``--graceful-timeout`` is cut off then, and the server exits 0."""
    root = tmp_path / "cache"
    with serve_process(root, base_of(upstream_http), "--graceful-timeout", "2") as server:
        assert clone(server.url("org/big.git"), tmp_path / "warm", env=env).returncode == 0
        proxy = ThrottlingProxy(server.port, rate=64 << 10)  # 4 MiB would take a minute
        try:
            with concurrent.futures.ThreadPoolExecutor(1) as pool:
                url = f"http://127.0.0.1:{proxy.port}/up.test/org/big.git"
                slow = pool.submit(clone, url, tmp_path / "slow", env=env)
                wait_until(lambda: proxy.relayed > 64 << 10, what="the pack flowing")
                server.signal(signal.SIGTERM)
                signalled = time.monotonic()
                assert server.wait(timeout=30) == 0, server.log
                assert time.monotonic() - signalled < 10
                proxy.close()
                assert slow.result(timeout=60).returncode != 0
        finally:
            proxy.close()
    with RepoCache(root) as cache:
        assert cache.verify() == []
        assert_consistent(cache)


@pytest.mark.timeout(60)
@pytest.mark.parametrize(("signum", "code"), [(signal.SIGTERM, 0), (signal.SIGINT, 130)], ids=["sigterm", "sigint"])
def test_an_idle_server_stops_on_a_signal_with_its_exit_code(
    tmp_path: Path, upstream_http: SmartHTTPServer, signum: int, code: int
) -> None:
    """SIGTERM is the normal stop (exit 0); Ctrl-C is an interruption (130), as for every command."""
    with serve_process(tmp_path / "cache", base_of(upstream_http)) as server:
        assert server.health()["status"] == "ok"
        server.signal(signum)
        assert server.wait(timeout=30) == code, server.log


@pytest.mark.timeout(180)
def test_sigkill_mid_pack_leaves_the_mirror_valid(
    tmp_path: Path, big_upstream: Upstream, upstream_http: SmartHTTPServer, env: dict[str, str]
) -> None:
    root = tmp_path / "cache"
    with serve_process(root, base_of(upstream_http)) as server:
        proxy = ThrottlingProxy(server.port, rate=1 << 20)
        try:
            with concurrent.futures.ThreadPoolExecutor(1) as pool:
                url = f"http://127.0.0.1:{proxy.port}/up.test/org/big.git"
                slow = pool.submit(clone, url, tmp_path / "killed", env=env)
                wait_until(lambda: proxy.relayed > 256 << 10, what="the pack flowing")
                server.signal(signal.SIGKILL)
                assert slow.result(timeout=120).returncode != 0
        finally:
            proxy.close()
        server.wait()
    with RepoCache(root) as cache:
        assert cache.verify() == []
        entry = cache.entries()[0]
        git("fsck", "--strict", cwd=entry.path)
    with serve_process(root, base_of(upstream_http)) as again:
        done = clone(again.url("org/big.git"), tmp_path / "again", env=env)
        assert done.returncode == 0, done.stderr + again.log
    assert git("rev-parse", "HEAD", cwd=tmp_path / "again").strip() == big_upstream.resolve("main")


@pytest.mark.timeout(120)
def test_health_counts_the_cpu_of_the_server_and_of_the_upload_packs_it_ran(
    tmp_path: Path, upstream: Upstream, upstream_http: SmartHTTPServer, env: dict[str, str]
) -> None:
    """``cpu_seconds`` in the health answer: the server process's own, and its ended children's (every
    upload-pack a clone made), each growing as it serves."""
    upstream.commits(3)
    with serve_process(tmp_path / "cache", base_of(upstream_http)) as server:
        assert clone(server.url("org/repo.git"), tmp_path / "first", env=env).returncode == 0
        before = server.health()["cpu_seconds"]
        for n in range(3):
            assert clone(server.url("org/repo.git"), tmp_path / f"c{n}", env=env).returncode == 0
        after = server.health()["cpu_seconds"]
    assert after["process"] > before["process"] > 0, (before, after)
    assert after["children"] > before["children"], (before, after)  # the 3 clones' upload-packs, reaped


@pytest.mark.timeout(60)
def test_serve_options_are_checked() -> None:
    from repocache.errors import ConfigError

    for bad in ({"max_packs": 0}, {"max_queue": -1}, {"body_timeout": 0}, {"webhook_secret": ""}):
        with pytest.raises(ConfigError, match=next(iter(bad))):
            ServeOptions(**bad)
