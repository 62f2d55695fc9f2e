"""Hostile and malformed input, stalled upstreams and full disks: a clear error or correct behaviour, nothing lost."""

from __future__ import annotations

import contextlib
import logging
import os
import re
import shutil
import subprocess
import sys
import time
import warnings
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from repocache import (
    BudgetError,
    CloneError,
    ConfigError,
    InvalidURLError,
    RepoCache,
    RepoCacheError,
)
from repocache.testing import GitDaemon, HangingServer, UpstreamFactory
from tests.helpers import assert_consistent, mirror_refs

pytestmark = pytest.mark.timeout(120)

HOSTILE_URLS = [
    "ext::sh -c touch% {canary}",
    "ext::sh -c 'touch {canary}'",
    "fd::0",
    "fd::3,4",
    "-uhelp",
    "--upload-pack=touch {canary}",
    "--config=core.sshCommand=touch {canary}",
    "-c protocol.ext.allow=always",
    "ssh://-oProxyCommand=touch%20{canary}/x",
    "ssh://host/x\n--upload-pack=touch {canary}",
    "https://h/a\x00.git",
    "https://h/a\rb",
    "https://h/a\u202eb",
    "https://h/a\u200bb",
    "https://h/../../../{canary}",
    "https://h/a/%2e%2e/%2e%2e/b",
    "git://h/./x",
    "https:///nohost",
    "https://",
    "http://[::1/x",
    "https://h:0x50/x",
    "https://h:-1/x",
    "https://h:70000/x",
    "mailto:a@b.c",
    "javascript:alert(1)",
    "data:text/plain,hello",
    "ftp://h/x",
    "gopher://h/x",
    "svn://h/x",
    "file://remote-host/etc",
    "https://h/x?upload-pack=touch",
    "https://h/x#frag",
    "",
    " ",
    "\t",
    "https://exa mple.com/x",
    "https://ex_ample..com/x",
    "https://h/",
]


@pytest.fixture
def canary(tmp_path: Path) -> Path:
    """A file that must never come to exist: injected commands would create it."""
    return tmp_path / "pwned"


@pytest.mark.parametrize("template", HOSTILE_URLS)
def test_hostile_urls_are_refused_without_side_effects(
    cache_root: Path, tmp_path: Path, canary: Path, template: str, caplog: pytest.LogCaptureFixture
) -> None:
    url = template.format(canary=canary)
    before = sorted(p.name for p in tmp_path.iterdir())
    caplog.set_level(logging.DEBUG, "repocache")
    with RepoCache(cache_root) as cache:
        with pytest.raises((InvalidURLError, CloneError)) as caught:
            cache.ensure(url)
        assert str(caught.value)
        assert cache.entries() == []
        assert list((cache_root / "repos").iterdir()) == []
        assert list((cache_root / "staging").iterdir()) == []
    assert not canary.exists()
    assert sorted(p.name for p in tmp_path.iterdir() if p != cache_root) == before  # nothing outside the root


def test_ext_transport_stays_refused_even_if_git_would_allow_it(
    cache_root: Path, canary: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("GIT_ALLOW_PROTOCOL", "ext:file:git:http:https")
    monkeypatch.setenv("GIT_CONFIG_COUNT", "1")
    monkeypatch.setenv("GIT_CONFIG_KEY_0", "protocol.ext.allow")
    monkeypatch.setenv("GIT_CONFIG_VALUE_0", "always")
    with RepoCache(cache_root) as cache, pytest.raises(InvalidURLError):
        cache.ensure(f"ext::sh -c touch% {canary}")
    assert not canary.exists()


@pytest.mark.parametrize(
    "url",
    [
        "https://h/ünïcødé/ŕëpø",
        "https://例子.测试/repo",
        "https://h/" + "a/" * 200 + "x",
        "https://h/a%20b/c",
        "git@h:~user/repo.git",
        "ssh://git@h:2222/a/b",
        "https://h/-leading-dash-in-path",
    ],
)
def test_exotic_but_valid_urls_get_a_safe_key_and_a_clear_clone_error(cache_root: Path, url: str) -> None:
    with RepoCache(cache_root, connect_timeout=2, idle_timeout=2) as cache:
        with pytest.raises(CloneError) as caught:  # these hosts do not exist: resolution fails fast, offline
            cache.ensure(url)
        assert "clone of" in str(caught.value)
        assert list((cache_root / "repos").iterdir()) == []
        assert all("/" not in p.name for p in (cache_root / "locks").iterdir())


def test_local_reads_can_be_forbidden_in_every_spelling(cache_root: Path, upstreams: UpstreamFactory) -> None:
    upstream = upstreams.create("private-local")
    with RepoCache(cache_root, allow_local=False) as cache:
        for url in (upstream.url, f"file://{upstream.path}", str(upstream.path) + "/", "./relative"):
            with pytest.raises(InvalidURLError, match="allow_local"):
                cache.ensure(url)


def test_credentials_never_reach_logs_or_errors_of_a_failed_clone(
    cache_root: Path, daemon: GitDaemon, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG, "repocache")
    secret = "hunter2-very-secret"
    with RepoCache(cache_root, connect_timeout=2, idle_timeout=2) as cache:
        for url in (f"http://bob:{secret}@127.0.0.1:{daemon.port}/nothing", f"https://bob:{secret}@127.0.0.1:1/x"):
            with pytest.raises(CloneError) as caught:
                cache.ensure(url)
            assert secret not in str(caught.value) and secret not in repr(caught.value.args)
    assert secret not in caplog.text
    for path in cache_root.rglob("*"):
        if path.is_file():
            assert secret.encode() not in path.read_bytes()


# -- upstreams that are not what they claim -----------------------------------------------------------------------


def test_empty_upstream_is_a_clear_clone_error(cache: RepoCache, tmp_path: Path) -> None:
    subprocess.run(["git", "init", "-q", "--bare", str(tmp_path / "empty.git")], check=True)
    with pytest.raises(CloneError, match="no refs"):
        cache.ensure(str(tmp_path / "empty.git"))
    assert list((cache.root / "repos").iterdir()) == []


@pytest.mark.parametrize("transport", ["local", "git"])
def test_partial_clone_upstream_with_missing_objects_says_so(
    cache: RepoCache, served: UpstreamFactory, served_dir: Path, daemon: GitDaemon, transport: str
) -> None:
    full = served.create("full", files={"big.bin": os.urandom(10_000)})
    subprocess.run(["git", "-C", str(full.path), "config", "uploadpack.allowFilter", "true"], check=True)
    partial = served_dir / f"partial-{transport}.git"
    subprocess.run(
        ["git", "clone", "-q", "--bare", "--filter=blob:none", f"file://{full.path}", str(partial)], check=True
    )
    shutil.rmtree(full.path)  # the promisor is gone: the missing blobs can never be fetched
    url = str(partial) if transport == "local" else daemon.url_for(partial)
    with pytest.raises(CloneError) as caught:
        cache.ensure(url)
    assert "partial clone" in str(caught.value)
    assert list((cache.root / "repos").iterdir()) == []


def _refused_and_nothing_published(cache: RepoCache, url: str, message: str) -> None:
    with pytest.raises(CloneError, match=message):
        cache.ensure(url)
    assert list((cache.root / "repos").iterdir()) == []
    assert list((cache.root / "staging").iterdir()) == []
    assert cache.info(url) is None and cache.entries() == []
    assert_consistent(cache)


@pytest.mark.parametrize("engine", ["git", "libgit2"])
def test_an_upstream_whose_head_branch_names_a_missing_object_is_refused(
    cache_root: Path, upstreams: UpstreamFactory, monkeypatch: pytest.MonkeyPatch, engine: str
) -> None:
    """git clones such a local upstream without complaint (it copies refs and objects as they are): only the
    library's validation of the result stands between it and a mirror whose HEAD leads nowhere."""
    if engine == "libgit2":
        monkeypatch.setenv("REPOCACHE_GIT", "")
    upstream = upstreams.create("head-to-nowhere")
    upstream.branch("side")
    missing = "0123456789abcdef0123456789abcdef01234567"
    (upstream.path / "refs" / "heads" / "main").write_text(missing + "\n")
    with contextlib.suppress(FileNotFoundError):
        (upstream.path / "packed-refs").unlink()
    message = "cloned repository is corrupt" if engine == "git" else missing
    with RepoCache(cache_root) as cache:
        _refused_and_nothing_published(cache, upstream.url, message)


def _drop_refs(mirror: Path) -> None:
    shutil.rmtree(mirror / "refs")
    (mirror / "refs").mkdir()
    with contextlib.suppress(FileNotFoundError):
        (mirror / "packed-refs").unlink()


def _drop_objects(mirror: Path) -> None:
    for child in (mirror / "objects").iterdir():
        if child.name not in ("info", "pack"):
            shutil.rmtree(child)
    for pack in (mirror / "objects" / "pack").iterdir():
        pack.unlink()


@pytest.mark.parametrize("engine", ["git", "libgit2"])
@pytest.mark.parametrize(
    ("damage", "message"),
    [(_drop_refs, "cloned repository has no refs"), (_drop_objects, "cloned repository is corrupt")],
    ids=["refs-lost", "objects-lost"],
)
def test_a_clone_result_that_is_not_a_whole_mirror_is_never_published(
    cache_root: Path,
    upstreams: UpstreamFactory,
    monkeypatch: pytest.MonkeyPatch,
    engine: str,
    damage: Callable[[Path], None],
    message: str,
) -> None:
    """Each engine's real clone lands in staging, then loses its refs or its objects (as a partial transfer or a
    broken disk would leave it) before it is validated: the clone fails and nothing is published or indexed."""
    from repocache.gitops import run, transfer

    upstream = upstreams.create("damaged")
    upstream.commits(3, size=5_000)
    upstream.branch("side")
    real_clone, real_run = transfer._clone_libgit2, run.run_git

    def clone_then_damage(url: object, dest: Path, *args: Any) -> None:
        real_clone(url, dest, *args)  # type: ignore[arg-type]
        damage(dest)

    def run_then_damage(args: list[str], *rest: Any, **kwargs: Any) -> None:
        real_run(args, *rest, **kwargs)
        if args[0] == "clone":
            damage(Path(args[-1]))

    if engine == "libgit2":
        monkeypatch.setenv("REPOCACHE_GIT", "")
        monkeypatch.setattr(transfer, "_clone_libgit2", clone_then_damage)
    else:
        monkeypatch.setattr(transfer, "run_git", run_then_damage)
    with RepoCache(cache_root) as cache:
        _refused_and_nothing_published(cache, upstream.url, message)
        monkeypatch.setattr(transfer, "_clone_libgit2", real_clone)
        monkeypatch.setattr(transfer, "run_git", real_run)
        with cache.checkout(upstream.url) as co:  # the next clone, whole, is published
            assert co.source == "clone" and mirror_refs(co.path) == upstream.refs()
        assert_consistent(cache)


def test_upstream_head_naming_a_missing_branch_still_mirrors(cache: RepoCache, upstreams: UpstreamFactory) -> None:
    upstream = upstreams.create("dangling-head")
    upstream.branch("other")
    (upstream.path / "HEAD").write_text("ref: refs/heads/nowhere\n")
    with cache.checkout(upstream.url) as co:
        assert mirror_refs(co.path) == upstream.refs()


# -- bad pins and settings ------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("never_evict: [", "not valid YAML"),
        ("- just\n- a list\n", "expected a mapping"),
        ("something_else: []\n", "no pin list found"),
        ("never_evict: https://h/a\n", "must be a YAML list"),
        ("never_evict:\n  - 42\n", "is not a URL or glob"),
        ("never_evict:\n  - ''\n", "is not a URL or glob"),
        ("never_evict:\n  - {a: b}\n", "is not a URL or glob"),
        ("never_evict:\n  - ext::sh -c x\n", "not a valid repository URL"),
        ('never_evict:\n  - "https://h/a\\tb"\n', "not a valid repository URL"),
        ("config:\n  cache: nope\n", "no pin list found"),
        ("\xff\xfe", "cannot read"),
    ],
)
def test_bad_pin_files_raise_config_errors(cache_root: Path, tmp_path: Path, text: str, message: str) -> None:
    pin_file = tmp_path / "pins.yaml"
    pin_file.write_bytes(text.encode("latin-1") if text.startswith("\xff") else text.encode())
    with pytest.raises(ConfigError, match=message):
        RepoCache(cache_root, pins=pin_file)


def test_missing_pin_file_is_a_config_error(cache_root: Path, tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="does not exist"):
        RepoCache(cache_root, pins=tmp_path / "absent.yaml")


def test_a_pin_file_broken_later_keeps_the_last_good_pins(
    cache_root: Path, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    pin_file = tmp_path / "pins.yaml"
    pin_file.write_text("never_evict:\n  - https://h/a\n")
    with RepoCache(cache_root, pins=pin_file) as cache:
        pin_file.write_text("never_evict: [\n")
        later = time.time() + 5
        os.utime(pin_file, (later, later))
        assert cache.pins.matches("https://h/a")
        assert "not valid YAML" in caplog.text and "keeping the previous pins" in caplog.text


def test_a_yaml_error_in_a_pin_file_names_the_file_line_and_column(cache_root: Path, tmp_path: Path) -> None:
    pin_file = tmp_path / "pins.yaml"
    pin_file.write_text("never_evict:\n  - https://h/a\n  bad: [\n")
    with pytest.raises(ConfigError) as raised:
        RepoCache(cache_root, pins=pin_file)
    message = str(raised.value)
    assert len(message.splitlines()) == 1, message
    assert str(pin_file) in message and "line 3, column 3" in message, message
    assert "<unicode string>" not in message


def test_a_live_reload_of_a_broken_pin_file_logs_one_warning_line_and_keeps_the_pins(
    cache_root: Path, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    pin_file = tmp_path / "pins.yaml"
    pin_file.write_text("never_evict:\n  - https://h/a\n")
    with RepoCache(cache_root, pins=pin_file) as cache:
        caplog.clear()
        pin_file.write_text("never_evict:\n  - https://h/b\n  oops: [\n")
        later = time.time() + 5
        os.utime(pin_file, (later, later))
        assert cache.pins.matches("https://h/a") and not cache.pins.matches("https://h/b")
        assert cache.pins.matches("https://h/a")  # the broken file is read once, not on every call
    records = [record for record in caplog.records if record.name == "repocache"]
    assert len(records) == 1, caplog.text
    (record,) = records
    assert record.levelname == "WARNING" and record.exc_info is None
    text = record.getMessage()
    assert len(text.splitlines()) == 1 and str(pin_file) in text and "line 3, column" in text, text


@pytest.mark.parametrize(
    "kwargs",
    [
        {"max_bytes": "1.5.5GB"},
        {"max_bytes": "-5MB"},
        {"max_bytes": "10 parsecs"},
        {"max_bytes": True},
        {"max_bytes": []},
        {"max_bytes": float("inf")},
        {"min_free_bytes": "lots"},
        {"fetch_ttl": float("inf")},
        {"fetch_ttl": "60"},
        {"lock_timeout": -1},
        {"connect_timeout": 0},
        {"idle_timeout": -3},
        {"on_fetch_error": "RAISE"},
    ],
)
def test_bad_sizes_and_settings(cache_root: Path, kwargs: dict[str, object]) -> None:
    name, value = next(iter(kwargs.items()))
    with pytest.raises(ConfigError, match=name):
        RepoCache(cache_root, **kwargs)  # type: ignore[arg-type]
    del value


def test_root_that_is_a_file_is_a_config_error(tmp_path: Path) -> None:
    (tmp_path / "file").write_text("x")
    with pytest.raises(ConfigError, match="not a directory"):
        RepoCache(tmp_path / "file")


# -- stalled upstreams -----------------------------------------------------------------------------------------------


@pytest.fixture
def hanging() -> Iterator[HangingServer]:
    with HangingServer() as server:
        yield server


@pytest.mark.parametrize("engine", ["git", "libgit2"])
@pytest.mark.parametrize("scheme", ["git", "http"])
def test_a_stalled_upstream_times_out_and_frees_the_lock(
    cache_root: Path, hanging: HangingServer, monkeypatch: pytest.MonkeyPatch, engine: str, scheme: str
) -> None:
    if engine == "libgit2":
        monkeypatch.setenv("REPOCACHE_GIT", "")
    url = hanging.git_url if scheme == "git" else hanging.http_url
    with RepoCache(cache_root, connect_timeout=1, idle_timeout=1.5, lock_timeout=5) as cache:
        started = time.monotonic()
        with pytest.raises(CloneError):
            cache.ensure(url)
        assert time.monotonic() - started < 6
        started = time.monotonic()
        with pytest.raises(CloneError):  # the lock was released: the second caller is not stuck behind the first
            cache.ensure(url)
        assert time.monotonic() - started < 6
        assert list((cache_root / "staging").iterdir()) == []


def test_a_fetch_from_an_upstream_that_stalls_serves_the_stale_copy(
    cache_root: Path, served: UpstreamFactory, served_dir: Path
) -> None:
    from repocache.testing import SmartHTTPServer

    upstream = served.create("stalls-later")
    with SmartHTTPServer(served_dir) as server:
        url = server.url_for(upstream)
        with RepoCache(cache_root) as cache:
            cache.ensure(url)
        server.delay = 30.0
        with RepoCache(cache_root, idle_timeout=1, connect_timeout=1) as cache:
            started = time.monotonic()
            with pytest.warns(RuntimeWarning), cache.checkout(url) as co:
                assert co.stale and mirror_refs(co.path) == upstream.refs()
            assert time.monotonic() - started < 10
        server.delay = 0


# -- full disks ------------------------------------------------------------------------------------------------------


_IN_USER_NAMESPACE = "REPOCACHE_TEST_IN_USER_NAMESPACE"


def _ran_in_a_user_namespace(request: pytest.FixtureRequest, tmp_path: Path) -> bool:
    """Without root, run this test again as root of a new user and mount namespace; True once that run passed.

    An unprivileged user may mount a tmpfs inside a user namespace of its own (as rootless containers do), and
    writes there meet a real ENOSPC: the same proof as with root. Skips, with the reason, where the kernel refuses
    unprivileged user namespaces. With root, returns False at once: the test mounts its tmpfs itself.
    """
    if os.geteuid() == 0:
        return False
    assert not os.environ.get(_IN_USER_NAMESPACE), "inside the user namespace, yet not its root"
    unshare = shutil.which("unshare")
    if unshare is None:
        pytest.skip("mounting a small tmpfs needs root, or unshare(1) for an unprivileged user namespace")
    namespace = [unshare, "--user", "--map-root-user", "--mount"]
    probe = subprocess.run([*namespace, "mount", "-t", "tmpfs", "tmpfs", str(tmp_path)], capture_output=True, text=True)
    if probe.returncode != 0:
        pytest.skip(f"mounting a small tmpfs needs root or an unprivileged user namespace: {probe.stderr.strip()}")
    pytest_args = ["-q", "-rs", f"--basetemp={tmp_path / 'namespaced'}", request.node.nodeid]
    inner = subprocess.run(
        [*namespace, "--", sys.executable, "-m", "pytest", *pytest_args],
        cwd=request.config.rootpath,
        env={**os.environ, _IN_USER_NAMESPACE: "1"},
        capture_output=True,
        text=True,
        timeout=100,
    )
    output = inner.stdout + inner.stderr
    if inner.returncode == 0 and re.search(r"\b1 passed\b", output):
        return True
    skipped = re.search(r"^SKIPPED \[\d+\] \S+ (.*)$", output, re.MULTILINE)
    if inner.returncode == 0 and skipped:
        pytest.skip(f"in a user namespace: {skipped.group(1)}")
    raise AssertionError(f"the test failed as root of a user namespace:\n{output[-6000:]}")


@contextlib.contextmanager
def _small_filesystem(path: Path, size: str) -> Iterator[Path]:
    """A tmpfs of ``size`` mounted at ``path``; the caller is root, of the machine or of its own user namespace."""
    path.mkdir()
    mounted = subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(path)], capture_output=True)
    if mounted.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here: {mounted.stderr.decode().strip()}")
    try:
        yield path
    finally:
        subprocess.run(["umount", "-l", str(path)], check=False)


@pytest.mark.parametrize("transport", ["local", "git"])
def test_clone_that_fills_the_disk_fails_cleanly_and_spares_other_repos(
    request: pytest.FixtureRequest, tmp_path: Path, served: UpstreamFactory, daemon: GitDaemon, transport: str
) -> None:
    if _ran_in_a_user_namespace(request, tmp_path):
        return
    small = served.create("fits")
    huge = served.create("overflows")
    huge.commits(8, size=400_000)
    with _small_filesystem(tmp_path / "fs", "1500k") as mount:
        url_of = (lambda u: u.url) if transport == "local" else daemon.url_for
        with RepoCache(mount / "cache") as cache:
            cache.ensure(url_of(small))
            with pytest.raises((CloneError, BudgetError, OSError)) as caught:
                cache.ensure(url_of(huge))
            assert isinstance(caught.value, RepoCacheError), caught.value
            assert "space" in str(caught.value).lower() or "write" in str(caught.value).lower()
            assert list((mount / "cache" / "staging").iterdir()) == []
            with cache.checkout(url_of(small)) as co:
                assert mirror_refs(co.path) == small.refs()
            assert_consistent(cache)


def test_restore_that_fills_the_disk_fails_cleanly_and_keeps_the_cold_copy(
    request: pytest.FixtureRequest, tmp_path: Path, served: UpstreamFactory, daemon: GitDaemon
) -> None:
    if _ran_in_a_user_namespace(request, tmp_path):
        return
    small = served.create("fits-restore")
    huge = served.create("overflows-restore")
    huge.commits(8, size=400_000)
    store = tmp_path / "cold"
    with RepoCache(tmp_path / "roomy", cold_store=store) as roomy:
        roomy.ensure(daemon.url_for(huge))
        assert roomy.evict(daemon.url_for(huge))
    (manifest,) = RepoCache(tmp_path / "roomy", cold_store=store).cold_entries()
    assert manifest.size_bytes > 1_500_000
    with _small_filesystem(tmp_path / "fs", "1500k") as mount:
        with RepoCache(mount / "cache", cold_store=store) as cache:
            cache.ensure(daemon.url_for(small))
            with warnings.catch_warnings():
                warnings.simplefilter("error")  # the artifact is fine: no "unusable artifact, cloning" warning
                with pytest.raises(CloneError, match=r"cannot restore from the cold store.*No space left"):
                    cache.ensure(daemon.url_for(huge))
            assert list((mount / "cache" / "staging").iterdir()) == []
            assert cache.info(daemon.url_for(huge)) is None
            with cache.checkout(daemon.url_for(small)) as co:
                assert mirror_refs(co.path) == small.refs()
            assert_consistent(cache)
            assert [m.sha256 for m in cache.cold_entries()] == [manifest.sha256]  # the cold copy is untouched
    with RepoCache(tmp_path / "roomy-again", cold_store=store) as again:
        with again.checkout(daemon.url_for(huge)) as co:
            assert co.source == "restore" and mirror_refs(co.path) == huge.refs()
