"""The git server keeps partial mirrors (``--mirror-filter``): it serves from them the requests with the same or a
stricter filter, any other from a full mirror, and fetches from upstream what a client's lazy fetch wants.

Real git clients through ``repocache serve`` on 127.0.0.1, from a smart HTTP upstream that allows filters.
"""

from __future__ import annotations

import random
import re
import subprocess
from pathlib import Path

import pytest

from repocache import ConfigError, RepoCache
from repocache.cli.serve import mirror_filters
from repocache.serve import GitServer, ServeOptions
from repocache.serve.filters import UploadRequest, parse_upload_request, serving_filter
from repocache.serve.pktline import FLUSH, pkt_line
from repocache.testing import SmartHTTPServer, Upstream, UpstreamFactory
from tests._serve import ThreadServer, base_of, clone, request, serve_process
from tests.helpers import all_objects, assert_consistent, git, key_of

OID = "0123456789abcdef0123456789abcdef01234567"
DELIM = b"0001"


@pytest.fixture
def upstream(factory: UpstreamFactory) -> Upstream:
    """``org/repo``: 6 commits each rewriting a 30 kB file, 10 text files, filters allowed."""
    repo = factory.create("org/repo", files={f"dir/f{n}.txt": f"text {n}\n" * 100 for n in range(10)})
    for number in range(6):
        repo.commit({"big.bin": random.Random(number).randbytes(30_000), f"n{number}": f"{number}\n"})
    repo.tag("v1", annotated=True)
    git("config", "uploadpack.allowFilter", "true", cwd=repo.path)
    return repo


def served_from(log: str, service: str = "git-upload-pack") -> set[str]:
    """The mirror keys the server's log says answered ``service`` requests."""
    return set(re.findall(rf"git server: {re.escape(service)} \S+ served 200 \([^)]*; mirror (\S+)\)", log))


def client_git(
    cwd: Path, env: dict[str, str], *args: str, version: int = 2, timeout: float = 120
) -> subprocess.CompletedProcess[str]:
    """``git -c protocol.version=V ARGS`` in a client (not checked: the caller asserts)."""
    return subprocess.run(
        ["git", "-c", f"protocol.version={version}", *args],
        cwd=cwd,
        env=env,
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
    )


def mirror_keys(root: Path) -> set[str]:
    """The keys of the mirrors the cache at ``root`` holds (index and disk agreeing)."""
    with RepoCache(root) as cache:
        assert_consistent(cache)
        return {entry.key for entry in cache.entries()}


# -- real clients --------------------------------------------------------------------------------------------------


@pytest.mark.timeout(180)
@pytest.mark.parametrize("version", [0, 2])
def test_a_blobless_clone_is_served_from_the_blobless_mirror_and_its_lazy_fetches_work(
    tmp_path: Path, upstream: Upstream, upstream_http: SmartHTTPServer, env: dict[str, str], version: int
) -> None:
    dest = tmp_path / "clone"
    key = key_of(base_of(upstream_http) + "org/repo.git")
    with serve_process(tmp_path / "cache", base_of(upstream_http), "--mirror-filter", "blob:none") as server:
        done = clone(server.url("org/repo.git"), dest, "--filter=blob:none", "--no-checkout", version=version, env=env)
        assert done.returncode == 0, done.stderr + server.log
        git("config", "protocol.version", str(version), cwd=dest)  # the lazy fetches speak the same version
        assert served_from(server.log) == {key + "-blobless"}
        # nothing is fetched from upstream for the clone: the mirror has no blob, the client none yet
        mirror = tmp_path / "cache" / "repos" / (key + "-blobless")
        assert git("config", "remote.origin.partialclonefilter", cwd=mirror).strip() == "blob:none"
        old_blob = git("rev-parse", "HEAD~4:big.bin", cwd=upstream.path).strip()
        assert old_blob not in all_objects(mirror)
        # the checkout and `git log -p` fetch the blobs lazily through the server, which fetches them from upstream
        checkout = client_git(dest, env, "checkout", "-q", "main", version=version)
        assert checkout.returncode == 0, checkout.stderr + server.log
        assert (dest / "dir" / "f3.txt").read_text() == "text 3\n" * 100
        history = client_git(dest, env, "log", "-p", "--format=%H", "--", "n1", version=version)
        assert history.returncode == 0, history.stderr + server.log
        assert "+1" in history.stdout
        whole = client_git(dest, env, "log", "-p", "--binary", version=version)
        assert whole.returncode == 0, whole.stderr + server.log
        assert served_from(server.log) == {key + "-blobless"}
    assert git("rev-parse", "HEAD", cwd=dest).strip() == upstream.resolve("main")
    assert old_blob in all_objects(mirror)  # the lazy fetch went through the cache's mirror
    assert mirror_keys(tmp_path / "cache") == {key + "-blobless"}  # no full mirror was ever made


@pytest.mark.timeout(180)
@pytest.mark.parametrize("version", [0, 2])
def test_an_unfiltered_clone_with_only_a_partial_mirror_is_served_from_a_full_mirror(
    tmp_path: Path, upstream: Upstream, upstream_http: SmartHTTPServer, env: dict[str, str], version: int
) -> None:
    key = key_of(base_of(upstream_http) + "org/repo.git")
    with serve_process(tmp_path / "cache", base_of(upstream_http), "--mirror-filter", "blob:none") as server:
        first = clone(server.url("org/repo.git"), tmp_path / "partial", "--filter=blob:none", version=version, env=env)
        assert first.returncode == 0, first.stderr + server.log
        assert mirror_keys(tmp_path / "cache") == {key + "-blobless"}
        done = clone(server.url("org/repo.git"), tmp_path / "clone", "--mirror", version=version, env=env)
        assert done.returncode == 0, done.stderr + server.log
        assert key in served_from(server.log)
    git("fsck", "--strict", "--no-dangling", cwd=tmp_path / "clone")  # complete: every blob of every commit
    assert git("cat-file", "-t", "HEAD~5:big.bin", cwd=tmp_path / "clone").strip() == "blob"
    assert git("config", "--default", "", "remote.origin.promisor", cwd=tmp_path / "clone").strip() == ""
    assert mirror_keys(tmp_path / "cache") == {key, key + "-blobless"}


@pytest.mark.timeout(180)
@pytest.mark.parametrize("version", [0, 2])
def test_a_treeless_clone_is_served_by_the_blobless_mirror(
    tmp_path: Path, upstream: Upstream, upstream_http: SmartHTTPServer, env: dict[str, str], version: int
) -> None:
    dest = tmp_path / "clone"
    key = key_of(base_of(upstream_http) + "org/repo.git")
    with serve_process(tmp_path / "cache", base_of(upstream_http), "--mirror-filter", "blob:none") as server:
        done = clone(server.url("org/repo.git"), dest, "--filter=tree:0", "--no-checkout", version=version, env=env)
        assert done.returncode == 0, done.stderr + server.log
        git("config", "protocol.version", str(version), cwd=dest)
        assert git("rev-list", "--count", "HEAD", cwd=dest).strip() == "7"
        checkout = client_git(dest, env, "checkout", "-q", "main", version=version)  # lazy trees, then blobs
        assert checkout.returncode == 0, checkout.stderr + server.log
        assert served_from(server.log) == {key + "-blobless"}
    assert git("config", "remote.origin.partialclonefilter", cwd=dest).strip() == "tree:0"
    assert (dest / "n5").read_text() == "5\n"
    assert mirror_keys(tmp_path / "cache") == {key + "-blobless"}


@pytest.mark.timeout(180)
def test_a_weaker_filter_is_served_from_a_full_mirror(
    tmp_path: Path, upstream: Upstream, upstream_http: SmartHTTPServer, env: dict[str, str]
) -> None:
    """``blob:limit=N`` wants the small blobs a blob-less mirror does not have: a full mirror serves it."""
    key = key_of(base_of(upstream_http) + "org/repo.git")
    dest = tmp_path / "clone"
    with serve_process(tmp_path / "cache", base_of(upstream_http), "--mirror-filter", "blob:none") as server:
        done = clone(server.url("org/repo.git"), dest, "--filter=blob:limit=2k", "--no-checkout", env=env)
        assert done.returncode == 0, done.stderr + server.log
        # the refs (info/refs, and v2's ls-refs) come from the kept mirror, before the filter is known; the pack not
        assert served_from(server.log) == {key, key + "-blobless"}
        assert served_from(server.log, "info/refs") == {key + "-blobless"}
    small = git("rev-parse", "HEAD:n1", cwd=upstream.path).strip()
    assert git("cat-file", "-t", small, cwd=dest).strip() == "blob"  # it came with the clone
    assert mirror_keys(tmp_path / "cache") == {key, key + "-blobless"}


def test_a_treeless_mirror_is_refused_saying_why() -> None:
    """git 2.39's upload-pack dies packing a tree:0 clone from a tree-less mirror (it reads the root trees)."""
    with pytest.raises(ConfigError, match=r"mirror_filter='tree:0' is not accepted: git's upload-pack cannot"):
        ServeOptions(mirror_filter="tree:0")
    with pytest.raises(ConfigError, match=r"mirror_filters\['a.test'\]='tree:0' is not accepted"):
        ServeOptions(mirror_filters={"a.test": "tree:0"})


@pytest.mark.timeout(120)
def test_by_default_the_server_keeps_full_mirrors_whatever_the_cache_filter(
    tmp_path: Path, upstream: Upstream, upstream_http: SmartHTTPServer, env: dict[str, str]
) -> None:
    """A cache whose own ``filter`` is blob-less still serves an unfiltered clone complete."""
    key = key_of(base_of(upstream_http) + "org/repo.git")
    cache = RepoCache(tmp_path / "cache", filter="blob:none")
    with ThreadServer(cache, base_of(upstream_http)) as server:
        done = clone(server.url("org/repo.git"), tmp_path / "clone", "--mirror", env=env)
        assert done.returncode == 0, done.stderr
        assert {entry.key for entry in cache.entries()} == {key}
    cache.close()
    git("fsck", "--strict", cwd=tmp_path / "clone")


@pytest.mark.timeout(120)
def test_a_malformed_request_is_refused_by_upload_pack_from_the_kept_mirror(
    tmp_path: Path, upstream: Upstream, upstream_http: SmartHTTPServer
) -> None:
    """A body the filter reader cannot read is no fetch: it never makes a full mirror, and git says what is wrong."""
    key = key_of(base_of(upstream_http) + "org/repo.git")
    cache = RepoCache(tmp_path / "cache")
    with ThreadServer(cache, base_of(upstream_http), ServeOptions(mirror_filter="blob:none")) as server:
        path = "/up.test/org/repo.git/git-upload-pack"
        headers = {"Content-Type": "application/x-git-upload-pack-request"}
        status, _, answer = request(server.port, "POST", path, b"0009want 1\n0000", headers)
        assert status == 400, answer
        assert answer.decode().startswith("repocache: git upload-pack refused the request"), answer
        assert {entry.key for entry in cache.entries()} == {key + "-blobless"}
    cache.close()


# -- the request's filter, and the choice ---------------------------------------------------------------------------


def _reader(data: bytes) -> object:
    position = 0

    def read(count: int) -> bytes:
        nonlocal position
        chunk = data[position : position + count]
        position += len(chunk)
        return chunk

    return read


def _parse(data: bytes) -> UploadRequest:
    read = _reader(data)
    assert callable(read)
    return parse_upload_request(read)


def test_the_filter_and_wants_of_a_v2_fetch_are_read() -> None:
    body = b"".join(
        [
            pkt_line(b"command=fetch\n"),
            pkt_line(b"agent=git/2.39.5\n"),
            DELIM,
            pkt_line(b"thin-pack\n"),
            pkt_line(b"filter blob:none\n"),
            pkt_line(f"want {OID}\n".encode()),
            pkt_line(b"have " + b"1" * 40 + b"\n"),
            pkt_line(b"done\n"),
            FLUSH,
        ]
    )
    assert _parse(body) == UploadRequest(command="fetch", filter="blob:none", wants=(OID,))
    ls_refs = pkt_line(b"command=ls-refs\n") + DELIM + pkt_line(b"peel\n") + FLUSH
    assert _parse(ls_refs) == UploadRequest(command="ls-refs", filter=None, wants=())
    assert not _parse(ls_refs).fetches


def test_the_filter_and_wants_of_a_v0_request_are_read_up_to_the_first_flush() -> None:
    body = b"".join(
        [
            pkt_line(f"want {OID} multi_ack_detailed side-band-64k filter agent=git/2.39.5\n".encode()),
            pkt_line(b"want " + b"2" * 40 + b"\n"),
            pkt_line(b"filter tree:0\n"),
            FLUSH,
            pkt_line(b"filter blob:none\n"),  # after the flush: haves, never read as arguments
            pkt_line(b"done\n"),
        ]
    )
    assert _parse(body) == UploadRequest(command=None, filter="tree:0", wants=(OID, "2" * 40))
    assert _parse(b"") == UploadRequest(command=None, filter=None, wants=())


@pytest.mark.parametrize(
    ("body", "said"),
    [
        (b"00", "ends inside a pkt-line"),
        (b"zzzz", "no pkt-line length"),
        (b"0002", "length 2"),
        (pkt_line(b"want nothing\n") + FLUSH, "names no object id"),
        (pkt_line(b"command=fetch\n") + DELIM + DELIM + FLUSH, "second delimiter"),
        (pkt_line(b"command=fetch\n") + DELIM + pkt_line(b"want " + b"a" * 40), "ends inside"),
    ],
)
def test_a_malformed_request_body_is_reported_saying_where(body: bytes, said: str) -> None:
    with pytest.raises(ValueError, match=said):
        _parse(body)


@pytest.mark.parametrize(
    ("kept", "asked", "served"),
    [
        (None, "blob:none", None),
        ("blob:none", "blob:none", "blob:none"),
        ("blob:none", "tree:0", "blob:none"),
        ("blob:none", None, None),
        ("blob:none", "blob:limit=1024", None),
        ("blob:none", "tree:1", None),
        ("blob:none", "combine:blob:none+tree:0", None),
    ],
)
def test_a_partial_mirror_serves_only_the_same_or_a_stricter_filter(
    kept: str | None, asked: str | None, served: str | None
) -> None:
    assert serving_filter(UploadRequest(command="fetch", filter=asked, wants=()), kept) == served
    assert serving_filter(UploadRequest(command=None, filter=asked, wants=()), kept) == served
    # the advertisement and ls-refs come from the kept mirror
    assert serving_filter(None, kept) == kept
    assert serving_filter(UploadRequest(command="ls-refs", filter=None, wants=()), kept) == kept


def test_bad_mirror_filters_are_refused_naming_them(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match=r"mirror_filter='blob:limit=1' is not accepted; expected None.*'blob:none'"):
        ServeOptions(mirror_filter="blob:limit=1")
    with pytest.raises(ConfigError, match=r"mirror_filters\['a.test'\]='tree:1'"):
        ServeOptions(mirror_filters={"a.test": "tree:1"})
    with (
        RepoCache(tmp_path / "cache") as cache,
        pytest.raises(ConfigError, match=r"'b.test', which the allow-list does not; allowed prefixes: a.test"),
    ):
        GitServer(cache, {"a.test": "https://a.test/"}, options=ServeOptions(mirror_filters={"B.test": "blob:none"}))


def test_the_mirror_filter_flag_takes_a_global_filter_and_filters_per_prefix() -> None:
    assert mirror_filters([]) == (None, {})
    assert mirror_filters(["blob:none", "git.example:8080=blob:none", "a.test=none"]) == (
        "blob:none",
        {"git.example:8080": "blob:none", "a.test": None},
    )
    with pytest.raises(ConfigError, match="without a prefix is given twice"):
        mirror_filters(["blob:none", "tree:0"])
    with pytest.raises(ConfigError, match=r"names 'a\.test' twice"):
        mirror_filters(["a.test=blob:none", "a.test=tree:0"])
    with pytest.raises(ConfigError, match="names no filter"):
        mirror_filters(["a.test="])
