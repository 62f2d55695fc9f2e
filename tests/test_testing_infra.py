"""The test infrastructure itself: upstreams built with pygit2 and served by real servers to the real git CLI."""

from __future__ import annotations

import os
import pickle
import signal
import socket
import subprocess
import threading
import time
import zlib
from collections.abc import Iterator
from pathlib import Path

import psutil
import pytest

from repocache.testing import (
    GitDaemon,
    HangingServer,
    SmartHTTPServer,
    Upstream,
    UpstreamFactory,
    isolated_git_env,
)
from tests.helpers import git, refs

pytestmark = pytest.mark.timeout(60)


@pytest.fixture
def git_env(tmp_path: Path) -> dict[str, str]:
    home = tmp_path / "home"
    home.mkdir()
    return isolated_git_env(home)


@pytest.fixture
def base(tmp_path: Path) -> Path:
    return tmp_path / "upstreams"


@pytest.fixture
def factory(base: Path) -> UpstreamFactory:
    return UpstreamFactory(base)


@pytest.fixture
def daemon(base: Path) -> Iterator[GitDaemon]:
    base.mkdir(parents=True, exist_ok=True)
    with GitDaemon(base) as server:
        yield server


@pytest.fixture
def http(base: Path) -> Iterator[SmartHTTPServer]:
    with SmartHTTPServer(base) as server:
        yield server


def git_status(env: dict[str, str], *args: str, cwd: Path | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(["git", *args], env=env, cwd=cwd, capture_output=True, text=True, timeout=30)


def times_out(env: dict[str, str], args: list[str], timeout: float) -> bool:
    """Run git in its own process group; True if it was still running after ``timeout`` (then kill it all)."""
    process = subprocess.Popen(
        ["git", *args],
        env=env,
        stdin=subprocess.DEVNULL,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        start_new_session=True,  # git over http runs git-remote-http as a child: kill the whole group
    )
    try:
        process.wait(timeout)
    except subprocess.TimeoutExpired:
        os.killpg(process.pid, signal.SIGKILL)
        process.wait()
        return True
    return False


def server_for(kind: str, base: Path) -> GitDaemon | SmartHTTPServer:
    base.mkdir(parents=True, exist_ok=True)
    return GitDaemon(base) if kind == "git" else SmartHTTPServer(base)


# -- upstreams ---------------------------------------------------------------------------------------------------


def test_create_makes_a_bare_repository_whose_head_resolves(factory: UpstreamFactory, git_env: dict[str, str]) -> None:
    upstream = factory.create("project", files={"src/app.py": "print('hi')\n", "data.bin": b"\x00\x01"})

    assert upstream.path == factory.base_dir / "project.git"
    assert upstream.url == str(upstream.path)
    assert git("-C", upstream.url, "rev-parse", "--is-bare-repository", env=git_env).strip() == "true"
    assert upstream.head() == "refs/heads/main"
    assert list(upstream.refs()) == ["refs/heads/main"]
    assert upstream.read("README.md") == b"# project\n"
    assert upstream.read("src/app.py") == b"print('hi')\n"
    assert upstream.read("data.bin") == b"\x00\x01"
    assert git("-C", upstream.url, "rev-parse", "HEAD", env=git_env).strip() == upstream.resolve("HEAD")


def test_create_never_reuses_a_name(factory: UpstreamFactory) -> None:
    first = factory.create()
    second = factory.create()
    nested = factory.create("org/tool", default_branch="trunk")

    assert (first.name, second.name) == ("repo", "repo-2")
    assert first.path != second.path
    assert nested.path == factory.base_dir / "org" / "tool.git"
    assert nested.head() == "refs/heads/trunk"
    with pytest.raises(ValueError):
        factory.create("../escape")


def test_same_calls_give_the_same_object_ids(tmp_path: Path) -> None:
    def build(where: Path) -> dict[str, str]:
        upstream = UpstreamFactory(where).create(files={"a.txt": "a"})
        upstream.commits(3)
        upstream.tag("v1", annotated=True)
        upstream.force_push()
        return upstream.refs()

    assert build(tmp_path / "one") == build(tmp_path / "two")


def test_commit_writes_deletes_and_starts_a_missing_branch_from_head(factory: UpstreamFactory) -> None:
    upstream = factory.create(files={"keep.txt": "keep", "drop.txt": "drop"})
    start = upstream.resolve()

    on_main = upstream.commit({"drop.txt": None, "new/deep/file.txt": "deep"}, message="Change")
    on_topic = upstream.commit({"topic.txt": "t"}, branch="topic")

    assert upstream.resolve("main") == on_main
    assert upstream.read("new/deep/file.txt") == b"deep"
    with pytest.raises(KeyError):
        upstream.read("drop.txt")
    assert upstream.read("keep.txt") == b"keep"
    # topic did not exist: it starts from HEAD (main's tip), so it has main's files too
    assert upstream.read("topic.txt", "topic") == b"t"
    assert upstream.read("new/deep/file.txt", "topic") == b"deep"
    assert upstream.refs()["refs/heads/topic"] == on_topic
    assert start not in (on_main, on_topic)


def test_branches_tags_merges_and_head(factory: UpstreamFactory, git_env: dict[str, str]) -> None:
    upstream = factory.create()
    feature_start = upstream.branch("feature")
    upstream.commit({"feature.txt": "f"}, branch="feature")
    upstream.commit({"main.txt": "m"})
    light = upstream.tag("v1")
    annotated = upstream.tag("v2", at="feature", annotated=True)

    merge = upstream.merge("feature")

    parents = git("-C", upstream.url, "rev-list", "--parents", "-n", "1", merge, env=git_env).split()
    assert parents[1:] == [upstream.resolve("v1"), upstream.resolve("feature")]
    assert upstream.read("feature.txt") == b"f" and upstream.read("main.txt") == b"m"
    assert git("-C", upstream.url, "cat-file", "-t", annotated, env=git_env).strip() == "tag"
    assert upstream.refs()["refs/tags/v2"] == annotated
    assert upstream.refs()["refs/tags/v1"] == light != feature_start

    upstream.set_head("feature")
    assert upstream.head() == "refs/heads/feature"
    upstream.delete_ref("refs/tags/v1")
    assert "refs/tags/v1" not in upstream.refs()
    with pytest.raises(KeyError):
        upstream.delete_ref("refs/tags/v1")


def test_force_push_is_a_non_fast_forward(factory: UpstreamFactory, git_env: dict[str, str]) -> None:
    upstream = factory.create()
    upstream.commits(2)
    old_tip = upstream.resolve()

    new_tip = upstream.force_push()

    assert upstream.resolve() == new_tip != old_tip
    not_ancestor = git_status(git_env, "-C", upstream.url, "merge-base", "--is-ancestor", old_tip, new_tip)
    assert not_ancestor.returncode == 1
    parent = git("-C", upstream.url, "rev-parse", f"{old_tip}^", env=git_env).strip()
    assert git("-C", upstream.url, "rev-parse", f"{new_tip}^", env=git_env).strip() == parent

    assert upstream.force_push(to=parent) == parent == upstream.resolve()


def test_commits_with_size_add_incompressible_data(factory: UpstreamFactory) -> None:
    upstream = factory.create()
    ids = upstream.commits(3, size=64 * 1024)
    small = upstream.commits(2)

    assert len(set(ids + small)) == 5
    data = upstream.read("data/00000002.bin")
    assert len(data) == 64 * 1024
    assert len(zlib.compress(data)) > 0.99 * len(data)
    assert upstream.read("counter.txt") == b"5\n"  # the initial commit was tick 0


def test_submodule_is_recorded_and_can_be_cloned(
    factory: UpstreamFactory, daemon: GitDaemon, git_env: dict[str, str], tmp_path: Path
) -> None:
    library = factory.create("library", files={"lib.txt": "lib"})
    app = factory.create("app")
    app.add_submodule("vendor/library", daemon.url_for(library), commit=library)

    assert b"path = vendor/library" in app.read(".gitmodules")
    tree = git("-C", app.url, "ls-tree", "HEAD", "vendor/library", env=git_env)
    assert tree.split()[:3] == ["160000", "commit", library.resolve()]

    checkout = tmp_path / "checkout"
    git("clone", "--recurse-submodules", daemon.url_for(app), str(checkout), env=git_env)
    assert (checkout / "vendor" / "library" / "lib.txt").read_text() == "lib"


def test_non_bare_upstream_keeps_its_working_tree_checked_out(factory: UpstreamFactory) -> None:
    upstream = factory.create("work", bare=False, files={"a.txt": "1"})
    upstream.commit({"a.txt": "2", "b.txt": "b"})

    assert upstream.path == factory.base_dir / "work"
    assert (upstream.path / ".git").is_dir()
    assert (upstream.path / "a.txt").read_text() == "2"
    assert (upstream.path / "b.txt").read_text() == "b"


def test_upstream_pickles(factory: UpstreamFactory) -> None:
    upstream = factory.create()
    copy = pickle.loads(pickle.dumps(upstream))

    assert isinstance(copy, Upstream)
    copy.commit({"x": "y"})
    assert upstream.refs() == copy.refs()


# -- servers -----------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("kind", ["git", "http"])
def test_mirror_clone_returns_the_upstream_refs_and_head(
    kind: str, factory: UpstreamFactory, base: Path, git_env: dict[str, str], tmp_path: Path
) -> None:
    upstream = factory.create(files={"a.txt": "a"})
    upstream.commit({"b.txt": "b"}, branch="dev")
    upstream.tag("v1")
    upstream.tag("v2", at="dev", annotated=True)
    upstream.set_head("dev")
    mirror = tmp_path / "mirror.git"

    with server_for(kind, base) as server:
        git("clone", "--mirror", server.url_for(upstream), str(mirror), env=git_env)

    assert refs(mirror, git_env) == upstream.refs()
    assert git("-C", str(mirror), "symbolic-ref", "HEAD", env=git_env).strip() == upstream.head() == "refs/heads/dev"


@pytest.mark.parametrize("kind", ["git", "http"])
def test_fetch_mirrors_force_push_new_and_deleted_refs(
    kind: str, factory: UpstreamFactory, base: Path, git_env: dict[str, str], tmp_path: Path
) -> None:
    upstream = factory.create()
    upstream.commits(3)
    upstream.branch("doomed")
    mirror = tmp_path / "mirror.git"

    with server_for(kind, base) as server:
        git("clone", "--mirror", server.url_for(upstream), str(mirror), env=git_env)
        upstream.force_push()
        upstream.delete_ref("refs/heads/doomed")
        upstream.tag("v1", annotated=True)
        upstream.commits(2, branch="new")
        result = git_status(git_env, "-C", str(mirror), "fetch", "--prune", "origin")

    assert result.returncode == 0, result.stderr
    assert "(forced update)" in result.stderr
    assert refs(mirror, git_env) == upstream.refs()


@pytest.mark.parametrize(
    ("post_buffer", "encoding_header", "expected"),
    [(None, "Content-Encoding", "gzip"), ("66000", "Transfer-Encoding", "chunked")],
)
def test_smart_http_serves_gzipped_and_chunked_request_bodies(
    post_buffer: str | None,
    encoding_header: str,
    expected: str,
    factory: UpstreamFactory,
    http: SmartHTTPServer,
    git_env: dict[str, str],
    tmp_path: Path,
) -> None:
    # 60 distinct wants make the fetch request over 1 KiB, which git gzips. A request that does not fit in
    # http.postBuffer is streamed with chunked transfer encoding instead; git needs the buffer to hold one
    # 65520-byte packet, so 66000 is about the smallest buffer there is and any sizeable request overflows it.
    upstream = factory.create()
    for number, commit in enumerate(upstream.commits(60)):
        upstream.branch(f"b{number}", at=commit)
    mirror = tmp_path / "mirror.git"
    options = ["-c", f"http.postBuffer={post_buffer}"] if post_buffer else []

    git(*options, "clone", "--mirror", http.url_for(upstream), str(mirror), env=git_env)

    assert refs(mirror, git_env) == upstream.refs()
    posts = [request for request in http.received if request.method == "POST"]
    assert any(request.headers.get(encoding_header) == expected for request in posts)


def test_smart_http_records_requests_and_answers_404_for_unknown_repositories(
    factory: UpstreamFactory, http: SmartHTTPServer, git_env: dict[str, str], base: Path
) -> None:
    upstream = factory.create()
    git("ls-remote", http.url_for(upstream), env=git_env)
    missing = git_status(git_env, "ls-remote", http.url_for(base / "missing.git"))

    assert missing.returncode != 0
    assert http.requests[0] == ("GET", "/repo.git/info/refs")
    assert http.received[0].query == "service=git-upload-pack"
    assert http.received[0].headers["Git-Protocol"] == "version=2"
    assert ("GET", "/missing.git/info/refs") in http.requests
    assert http.requests_with_authorization == 0
    with pytest.raises(ValueError):
        http.url_for(Path("/elsewhere/repo.git"))


def test_basic_auth_refuses_anonymous_clones_and_accepts_credentials_in_the_url(
    factory: UpstreamFactory, base: Path, git_env: dict[str, str], tmp_path: Path
) -> None:
    upstream = factory.create()
    with SmartHTTPServer(base, auth=("user", "s3cret/+")) as server:
        anonymous = git_status(git_env, "clone", "--mirror", server.url_for(upstream), str(tmp_path / "anon"))
        assert anonymous.returncode != 0
        assert server.requests_with_authorization == 0
        assert not (tmp_path / "anon").exists()

        url = server.url_for(upstream, credentials=True)
        assert url.startswith(f"http://user:s3cret%2F%2B@127.0.0.1:{server.port}/")
        git("clone", "--mirror", url, str(tmp_path / "authed"), env=git_env)
        assert server.requests_with_authorization > 0
        authorizations = {request.headers.get("Authorization") for request in server.received}
        assert authorizations == {None, "Basic ***"}

        wrong = url.replace("s3cret", "wrong")
        assert git_status(git_env, "ls-remote", wrong).returncode != 0
    assert refs(tmp_path / "authed", git_env) == upstream.refs()


@pytest.mark.parametrize("scheme", ["git", "http"])
def test_hanging_server_makes_ls_remote_hang(scheme: str, git_env: dict[str, str]) -> None:
    with HangingServer() as server:
        url = server.git_url if scheme == "git" else server.http_url
        assert url.startswith(f"{scheme}://127.0.0.1:{server.port}/")
        assert times_out(git_env, ["ls-remote", url], timeout=2.0)
        assert server.connections >= 1


def test_delay_slows_every_answer(factory: UpstreamFactory, base: Path, git_env: dict[str, str]) -> None:
    upstream = factory.create()
    with SmartHTTPServer(base, delay=0.3) as server:
        started = time.monotonic()
        git("ls-remote", server.url_for(upstream), env=git_env)
        elapsed = time.monotonic() - started
    assert elapsed >= 0.6  # two requests: info/refs and the ls-refs POST of protocol v2


@pytest.mark.parametrize("kind", ["git", "http", "hanging"])
def test_stop_releases_threads_processes_and_port(
    kind: str, factory: UpstreamFactory, base: Path, git_env: dict[str, str]
) -> None:
    upstream = factory.create()
    threads_before = set(threading.enumerate())
    children_before = {p.pid for p in psutil.Process().children(recursive=True)}  # session servers
    base.mkdir(parents=True, exist_ok=True)
    server: GitDaemon | SmartHTTPServer | HangingServer
    if kind == "hanging":
        server = HangingServer()
    elif kind == "http":
        server = SmartHTTPServer(base, delay=30.0)  # stop() must cut the delay short
    else:
        server = GitDaemon(base)

    server.start()
    port = server.port
    daemon_group = server.pid if isinstance(server, GitDaemon) else None
    # a client that is mid-request when stop() comes must not keep anything alive
    url = server.http_url if isinstance(server, HangingServer) else server.url_for(upstream)
    client = subprocess.Popen(
        ["git", "ls-remote", url],
        env=git_env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        start_new_session=True,
    )
    time.sleep(0.3)
    started = time.monotonic()
    server.stop()
    server.stop()  # idempotent

    assert time.monotonic() - started < 10
    assert not server.running
    client.wait(10)
    assert set(threading.enumerate()) == threads_before
    with pytest.raises(OSError), socket.create_connection(("127.0.0.1", port), timeout=1):
        pass
    assert {p.pid for p in psutil.Process().children(recursive=True)} <= children_before
    if daemon_group is not None:
        with pytest.raises(ProcessLookupError):
            os.killpg(daemon_group, 0)


def test_server_lifecycle_errors(base: Path) -> None:
    base.mkdir(parents=True)
    daemon = GitDaemon(base)
    with pytest.raises(RuntimeError, match="not running"):
        daemon.url_for(base / "repo.git")
    with daemon:
        with pytest.raises(RuntimeError, match="already running"):
            daemon.start()
        assert daemon.url_for(base / "a b.git") == f"git://127.0.0.1:{daemon.port}/a%20b.git"


def test_smart_http_answers_keep_alive_requests_as_fast_as_first_ones(
    factory: UpstreamFactory, http: SmartHTTPServer
) -> None:
    """The git server's benchmarks measure against this server: a request on a kept-alive connection is not held
    back by Nagle's algorithm (40 ms of delayed acknowledgement on Linux), so it costs what a connection's first
    request costs, one ``git http-backend`` run."""
    import statistics
    from http.client import HTTPConnection

    repo = factory.create("org/fast")
    repo.commits(1)
    path = "/org/fast.git/info/refs?service=git-upload-pack"

    def timed(connection: HTTPConnection) -> float:
        started = time.monotonic()
        connection.request("GET", path)
        response = connection.getresponse()
        assert response.status == 200 and response.read()
        return time.monotonic() - started

    firsts = []
    for _ in range(7):
        connection = HTTPConnection("127.0.0.1", http.port, timeout=30)
        try:
            firsts.append(timed(connection))
        finally:
            connection.close()
    connection = HTTPConnection("127.0.0.1", http.port, timeout=30)
    try:
        timed(connection)
        kept = [timed(connection) for _ in range(7)]
    finally:
        connection.close()
    assert statistics.median(kept) < 2 * statistics.median(firsts) + 0.01, (kept, firsts)
