"""The pytest plugin, exercised the way users meet it: generated test files run by ``pytester``."""

from __future__ import annotations

import json
import re
import socket
import subprocess
import sys
from importlib.metadata import entry_points
from pathlib import Path

import pytest

from repocache import RepoCache
from repocache.pytest_plugin import GitServer
from repocache.testing import GitDaemon, UpstreamFactory

pytest_plugins = ["pytester"]
pytestmark = pytest.mark.timeout(120)

_OUTER_VARIABLES = ("REPOCACHE_TEST_DIR", "PYTEST_XDIST_WORKER", "PYTEST_XDIST_WORKER_COUNT", "PYTEST_XDIST_TESTRUNUID")


@pytest.fixture(autouse=True)
def _clean_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    """Inner runs see neither a persistent directory nor xdist variables of the outer run."""
    for name in _OUTER_VARIABLES:
        monkeypatch.delenv(name, raising=False)


@pytest.fixture
def pytester(pytester: pytest.Pytester, monkeypatch: pytest.MonkeyPatch) -> pytest.Pytester:
    """pytest's ``pytester``, whose inner runs set pytest-asyncio's loop scope as our own configuration does.

    An inner run is a project that does not configure pytest-asyncio, which then warns at start-up that
    ``asyncio_default_fixture_loop_scope`` is unset (19 warnings in every run of this file); the suite turns
    warnings into errors. ``pytester`` clears ``PYTEST_ADDOPTS`` when it is set up, so it is set after.
    """
    monkeypatch.setenv("PYTEST_ADDOPTS", "-o asyncio_default_fixture_loop_scope=function")
    return pytester


@pytest.fixture
def served_url(served: UpstreamFactory, daemon: GitDaemon, request: pytest.FixtureRequest) -> str:
    """The ``git://`` URL of a repository served by the outer session's daemon: stable across inner runs."""
    upstream = served.create(f"plugin-{request.node.name}")
    upstream.commits(3)
    upstream.tag("v1", annotated=True)
    return daemon.url_for(upstream)


def read_json(path: Path) -> dict[str, object]:
    parsed: dict[str, object] = json.loads(path.read_text())
    return parsed


def stats_of(root: Path) -> tuple[int, int, int]:
    """``(clones, hits, entries)`` of the cache at ``root``, shared by every process that used it."""
    with RepoCache(root) as cache:
        stats = cache.stats()
        return stats.clones, stats.hits, stats.entries


# -- registration and import cost -------------------------------------------------------------------------------


def test_plugin_is_registered_through_the_pytest11_entry_point(pytester: pytest.Pytester) -> None:
    registered = {ep.name: ep.value for ep in entry_points(group="pytest11")}
    assert registered.get("repocache") == "repocache.pytest_plugin"
    result = pytester.runpytest("--help")
    result.stdout.fnmatch_lines(["*--repocache-dir=DIR*", "*repocache_dir (string)*"])
    result = pytester.runpytest("--fixtures")
    for name in ("git_upstreams", "git_upstream", "git_server", "repo_cache", "repo_cache_persistent"):
        result.stdout.fnmatch_lines([f"{name} *"])


def test_importing_the_plugin_loads_neither_pygit2_nor_the_cache_nor_the_servers() -> None:
    code = (
        "import sys, repocache.pytest_plugin\n"
        "heavy = ['pygit2', 'repocache.cache', 'repocache.testing', 'http.server', 'sqlite3', 'filelock']\n"
        "print([name for name in heavy if name in sys.modules])\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True, timeout=60)
    assert out.stdout.strip() == "[]"


# -- upstreams and the server -------------------------------------------------------------------------------------


def test_git_upstream_is_a_fresh_repository_per_test_below_the_session_factory(pytester: pytest.Pytester) -> None:
    pytester.makepyfile(
        """
        import pygit2

        seen = []

        def test_first(git_upstream, git_upstreams):
            assert git_upstream.path.is_dir() and git_upstream.url == str(git_upstream.path)
            assert git_upstream.path.parent == git_upstreams.base_dir
            assert git_upstream.name == "test_first"
            assert set(git_upstream.refs()) == {"refs/heads/main"}
            seen.append(git_upstream.path)

        def test_second(git_upstream, git_upstreams):
            assert git_upstream.path not in seen
            seen.append(git_upstream.path)
            other = git_upstreams.create("other", files={"a.txt": "a"})
            assert other.path.parent == git_upstreams.base_dir
            assert other.read("a.txt") == b"a"

        def test_history_operations(git_upstream):
            first = git_upstream.commit({"src/app.py": "print(1)\\n"}, message="Add app")
            git_upstream.branch("feature")
            on_feature = git_upstream.commit({"feature.txt": "f"}, branch="feature")
            git_upstream.tag("v1", at=first, annotated=True)
            merge = git_upstream.merge("feature")
            repo = pygit2.Repository(str(git_upstream.path))
            try:
                assert [str(p) for p in repo[merge].parent_ids] == [first, on_feature]
            finally:
                repo.free()
            rewritten = git_upstream.force_push()
            assert git_upstream.resolve("main") == rewritten != merge
            git_upstream.delete_ref("refs/heads/feature")
            assert set(git_upstream.refs()) == {"refs/heads/main", "refs/tags/v1"}
        """
    )
    pytester.runpytest().assert_outcomes(passed=3)


def test_git_upstream_name_follows_a_parametrized_test_id(pytester: pytest.Pytester) -> None:
    pytester.makepyfile(
        """
        import pytest

        names = []

        @pytest.mark.parametrize("value", ["a/b c", "../..", "../.."])  # ids: "a/b c", "..-..0", "..-..1"
        def test_named(git_upstream, git_upstreams, value):
            assert git_upstream.path.parent == git_upstreams.base_dir
            assert git_upstream.name.startswith("test_named")
            names.append(git_upstream.name)

        def test_names_were_unique():
            assert names == ["test_named-a-b-c", "test_named-0", "test_named-1"]
        """
    )
    pytester.runpytest().assert_outcomes(passed=4)


def test_git_server_serves_upstreams_over_git_and_http_and_stops_with_the_session(pytester: pytest.Pytester) -> None:
    ports = pytester.path / "ports.json"
    pytester.makepyfile(
        f"""
        import json

        def test_git_only_starts_the_daemon(git_upstream, git_server, repo_cache):
            url = git_server.git_url(git_upstream)
            assert url.startswith("git://127.0.0.1:") and url.endswith("/test_git_only_starts_the_daemon.git")
            assert git_server._http is None
            with repo_cache.checkout(url) as co:
                assert co.source == "clone"
                assert str(co.repo.references["refs/heads/main"].target) == git_upstream.resolve("main")

        def test_later_commits_and_force_pushes_reach_the_cache(git_upstream, git_server, repo_cache):
            git_url, http_url = git_server.git_url(git_upstream), git_server.http_url(git_upstream)
            assert http_url.startswith("http://127.0.0.1:")
            with repo_cache.checkout(http_url) as co:
                assert co.source == "clone"
            tip = git_upstream.commit({{"new.txt": "new"}})
            git_upstream.tag("v2")
            with repo_cache.checkout(http_url) as co:
                assert (co.source, co.fetched) == ("hit", True)
                assert str(co.repo.references["refs/heads/main"].target) == tip
                assert "refs/tags/v2" in co.repo.references
            rewritten = git_upstream.force_push()
            with repo_cache.checkout(git_url) as co:
                assert co.source == "clone"  # another URL, another entry
                assert str(co.repo.references["refs/heads/main"].target) == rewritten
            with repo_cache.checkout(http_url) as co:
                assert str(co.repo.references["refs/heads/main"].target) == rewritten
            assert any(path.endswith("/git-upload-pack") for _, path in git_server.http.requests)

        def test_servers_are_shared_by_the_session(git_server, git_upstreams):
            late = git_upstreams.create("created-after-start")
            assert git_server.git_url(late).endswith("/created-after-start.git")
            with open({str(ports)!r}, "w") as out:
                json.dump([git_server.daemon.port, git_server.http.port], out)
        """
    )
    result = pytester.runpytest("-v")
    result.assert_outcomes(passed=3)
    for port in json.loads(ports.read_text()):
        with socket.socket() as sock, pytest.raises(ConnectionRefusedError):
            sock.connect(("127.0.0.1", port))


def test_git_server_refuses_paths_outside_the_served_directory(pytester: pytest.Pytester) -> None:
    pytester.makepyfile(
        """
        import pytest

        def test_outside(git_server, tmp_path):
            with pytest.raises(ValueError, match="not inside the served directory"):
                git_server.git_url(tmp_path)
        """
    )
    pytester.runpytest().assert_outcomes(passed=1)


def test_git_server_starts_each_server_on_first_use_and_refuses_urls_once_closed(tmp_path: Path) -> None:
    upstream = UpstreamFactory(tmp_path).create("lazy")
    server = GitServer(tmp_path)
    try:
        assert server.git_url(upstream) == f"git://127.0.0.1:{server.daemon.port}/lazy.git"
        assert server._http is None
        assert server.http_url(upstream) == f"http://127.0.0.1:{server.http.port}/lazy.git"
    finally:
        server.close()
    server.close()
    with pytest.raises(RuntimeError, match="closed"):
        server.git_url(upstream)


# -- repo_cache -------------------------------------------------------------------------------------------------


def test_repo_cache_is_empty_per_test_in_tmp_path_and_closed_after(pytester: pytest.Pytester) -> None:
    pytester.makepyfile(
        """
        import pytest
        from repocache import RepoCache, RepoCacheError

        held = []

        def test_first(repo_cache, tmp_path, git_upstream):
            assert isinstance(repo_cache, RepoCache)
            assert repo_cache.root == tmp_path / "repocache"
            assert repo_cache.entries() == []
            repo_cache.ensure(git_upstream.url)
            held.append(repo_cache)

        def test_second(repo_cache):
            assert repo_cache is not held[0]
            assert repo_cache.entries() == []
            with pytest.raises(RepoCacheError, match="closed"):
                held[0].stats()
        """
    )
    pytester.runpytest().assert_outcomes(passed=2)


# -- repo_cache_persistent ----------------------------------------------------------------------------------------


def _persistent_test_file(pytester: pytest.Pytester, url: str, out_dir: Path) -> None:
    """A test that checks ``url`` out of the persistent cache and writes what happened to ``out_dir``."""
    pytester.makepyfile(
        test_persistent=f"""
        import json, os

        def test_checkout(repo_cache_persistent, repo_cache_persistent_dir):
            before = repo_cache_persistent.stats().clones
            with repo_cache_persistent.checkout({url!r}) as co:
                source = co.source
            record = {{
                "root": str(repo_cache_persistent.root),
                "dir": str(repo_cache_persistent_dir),
                "source": source,
                "clones_in_this_run": repo_cache_persistent.stats().clones - before,
            }}
            name = os.environ.get("PYTEST_XDIST_WORKER", "main")
            with open(os.path.join({str(out_dir)!r}, name + ".json"), "w") as out:
                json.dump(record, out)
        """
    )


def test_persistent_cache_survives_between_runs(pytester: pytest.Pytester, served_url: str, tmp_path: Path) -> None:
    cache_dir = tmp_path / "persistent"
    out = tmp_path / "out"
    out.mkdir()
    _persistent_test_file(pytester, served_url, out)

    pytester.runpytest_subprocess(f"--repocache-dir={cache_dir}").assert_outcomes(passed=1)
    first = read_json(out / "main.json")
    assert (first["root"], first["source"], first["clones_in_this_run"]) == (str(cache_dir), "clone", 1)

    pytester.runpytest_subprocess(f"--repocache-dir={cache_dir}").assert_outcomes(passed=1)
    second = read_json(out / "main.json")
    assert (second["source"], second["clones_in_this_run"]) == ("hit", 0)
    assert stats_of(cache_dir) == (1, 1, 1)


def test_persistent_cache_defaults_to_pytests_cache_dir_and_survives_between_runs(
    pytester: pytest.Pytester, served_url: str, tmp_path: Path
) -> None:
    _persistent_test_file(pytester, served_url, tmp_path)
    pytester.runpytest().assert_outcomes(passed=1)
    pytester.runpytest().assert_outcomes(passed=1)
    record = read_json(tmp_path / "main.json")
    expected = pytester.path / ".pytest_cache" / "d" / "repocache"
    assert (record["dir"], record["root"], record["source"]) == (str(expected), str(expected), "hit")
    assert stats_of(expected)[:2] == (1, 1)


def test_persistent_cache_falls_back_to_the_runs_temporary_directory_without_the_cacheprovider(
    pytester: pytest.Pytester, served_url: str, tmp_path: Path
) -> None:
    _persistent_test_file(pytester, served_url, tmp_path)
    pytester.runpytest("-p", "no:cacheprovider").assert_outcomes(passed=1)
    record = read_json(tmp_path / "main.json")
    assert record["dir"] == str(pytester.path.parent / "basetemp" / "repocache")  # pytester's --basetemp
    assert not (pytester.path / ".pytest_cache").exists()


_PRECEDENCE = {
    # case: (option, ini, env) -> which one wins
    "option beats ini and env": (("opt", "ini", "env"), "opt"),
    "ini beats env": ((None, "ini", "env"), "ini"),
    "env alone": ((None, None, "env"), "env"),
    "option alone": (("opt", None, None), "opt"),
}


@pytest.mark.parametrize("case", list(_PRECEDENCE))
def test_persistent_dir_precedence_is_option_then_ini_then_environment(
    pytester: pytest.Pytester, monkeypatch: pytest.MonkeyPatch, case: str, tmp_path: Path
) -> None:
    (option, ini, env), winner = _PRECEDENCE[case]
    pytester.makepyfile(
        f"""
        def test_dir(repo_cache_persistent, repo_cache_persistent_dir):
            assert repo_cache_persistent.root == repo_cache_persistent_dir
            assert (repo_cache_persistent_dir / "index.sqlite").exists()
            with open({str(tmp_path / "dir.txt")!r}, "w") as out:
                out.write(str(repo_cache_persistent_dir))
        """
    )
    args = [f"--repocache-dir={tmp_path / option}"] if option else []
    if ini:
        pytester.makeini(f"[pytest]\nrepocache_dir = {tmp_path / ini}\n")
    if env:
        monkeypatch.setenv("REPOCACHE_TEST_DIR", str(tmp_path / env))
    result = pytester.runpytest(*args)
    result.assert_outcomes(passed=1)
    assert (tmp_path / "dir.txt").read_text() == str(tmp_path / winner)
    result.stdout.fnmatch_lines([f"repocache: persistent cache {tmp_path / winner} (from *)"])


def test_relative_persistent_dirs_resolve_against_the_ini_file_or_the_invocation_directory(
    pytester: pytest.Pytester, monkeypatch: pytest.MonkeyPatch
) -> None:
    pytester.makepyfile(
        """
        def test_dir(repo_cache_persistent_dir):
            print("DIR=" + str(repo_cache_persistent_dir))
        """
    )
    config_dir = pytester.mkdir("config")
    (config_dir / "pytest.ini").write_text("[pytest]\nrepocache_dir = from-ini\n")
    result = pytester.runpytest("-s", "-c", "config/pytest.ini", "--rootdir", str(pytester.path))
    result.stdout.fnmatch_lines([f"*DIR={config_dir / 'from-ini'}"])

    monkeypatch.setenv("REPOCACHE_TEST_DIR", "~/from-env")
    monkeypatch.setenv("HOME", str(pytester.path / "home"))
    result = pytester.runpytest("-s")
    result.stdout.fnmatch_lines([f"*DIR={pytester.path / 'home' / 'from-env'}"])

    result = pytester.runpytest("-s", "--repocache-dir", "from-option")
    result.stdout.fnmatch_lines([f"*DIR={pytester.path / 'from-option'}"])


def test_no_header_line_when_the_persistent_dir_is_not_configured(pytester: pytest.Pytester) -> None:
    pytester.makepyfile("def test_nothing():\n    pass\n")
    result = pytester.runpytest()
    result.assert_outcomes(passed=1)
    result.stdout.no_fnmatch_line("repocache:*")
    assert not (pytester.path / ".pytest_cache" / "d" / "repocache").exists()


# -- pytest-xdist -------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("plugins", [[], ["-p", "no:cacheprovider"]], ids=["pytest-cache-dir", "no-cacheprovider"])
def test_xdist_workers_share_the_persistent_cache_and_clone_once(
    pytester: pytest.Pytester, served_url: str, tmp_path: Path, plugins: list[str]
) -> None:
    out = tmp_path / "out"
    out.mkdir()
    ready = tmp_path / "ready"
    ready.mkdir()
    pytester.makepyfile(
        test_rendezvous=f"""
        import os, pathlib, time

        def test_wait_for_both_workers():
            # --dist each runs this on every worker; each waits for the other, so the checkouts below overlap.
            ready = pathlib.Path({str(ready)!r})
            (ready / os.environ["PYTEST_XDIST_WORKER"]).touch()
            deadline = time.monotonic() + 60
            while len(list(ready.iterdir())) < 2:
                assert time.monotonic() < deadline, "the other worker never arrived"
                time.sleep(0.01)
        """
    )
    _persistent_test_file(pytester, served_url, out)
    result = pytester.runpytest_subprocess("-n", "2", "--dist", "each", *plugins)
    result.assert_outcomes(passed=4)

    records = {path.stem: read_json(path) for path in out.iterdir()}
    assert set(records) == {"gw0", "gw1"}
    roots = {record["root"] for record in records.values()}
    assert len(roots) == 1
    root = Path(str(roots.pop()))
    assert root.name == "repocache"
    assert sorted(str(record["source"]) for record in records.values()) == ["clone", "hit"]
    clones, _, entries = stats_of(root)
    assert (clones, entries) == (1, 1)


# -- the documentation --------------------------------------------------------------------------------------------


def test_the_documented_examples_run(pytester: pytest.Pytester) -> None:
    docs = Path(__file__).resolve().parent.parent / "docs" / "pytest-plugin.md"
    blocks = re.findall(r"```python\n(.*?)```", docs.read_text(), flags=re.DOTALL)
    offline = [block for block in blocks if "github.com" not in block]  # the real-repository example needs a network
    conftests = [block for block in offline if "@pytest.fixture" in block]
    tests = [block for block in offline if block not in conftests]
    assert len(conftests) == 1 and len(tests) == 2
    pytester.makeconftest(conftests[0])
    pytester.makepyfile(
        **{f"test_example_{number}": block for number, block in enumerate(tests)},
        test_override="""
        def test_settings_of_the_overridden_fixture(repo_cache_persistent, git_upstream):
            assert repo_cache_persistent.fetch_ttl == 3600
            assert repo_cache_persistent.ensure(git_upstream.url).size_bytes > 0
        """,
    )
    pytester.runpytest("-p", "no:cacheprovider").assert_outcomes(passed=4)


# -- offline mode and the repocache_upstream marker ----------------------------------------------------------------

_OFFLINE_TESTS = """
import json, os

URL = {url!r}


def test_cached(repo_cache_persistent):
    with repo_cache_persistent.checkout(URL) as co:
        record = {{"source": co.source, "fetched": co.fetched, "stale": co.stale}}
    with open({out!r}, "w") as out:
        json.dump(record, out)


def test_not_cached(repo_cache_persistent):
    with repo_cache_persistent.checkout({missing!r}):
        raise AssertionError("offline mode cloned a repository")
"""


def test_offline_mode_serves_the_persistent_cache_without_fetching_and_skips_what_it_lacks(
    pytester: pytest.Pytester, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    served = UpstreamFactory(tmp_path / "served")
    upstream, missing = served.create("present"), served.create("absent")
    cache_dir, out = tmp_path / "persistent", tmp_path / "out.json"
    with GitDaemon(served.base_dir) as daemon:
        url, missing_url = daemon.url_for(upstream), daemon.url_for(missing)
        pytester.makepyfile(_OFFLINE_TESTS.format(url=url, missing=missing_url, out=str(out)))
        online = pytester.runpytest(f"--repocache-dir={cache_dir}", "-k", "test_cached")
        online.assert_outcomes(passed=1, deselected=1)
        assert read_json(out)["source"] == "clone"
    # The daemon is gone: online, a hit would try to fetch and serve a stale copy with a warning.
    result = pytester.runpytest(f"--repocache-dir={cache_dir}", "--repocache-offline", "-rs")
    result.assert_outcomes(passed=1, skipped=1)
    assert read_json(out) == {"source": "hit", "fetched": False, "stale": False}
    result.stdout.fnmatch_lines([f"SKIPPED *{missing_url.removesuffix('.git')}*not in the cache*offline mode*"])
    result.stdout.fnmatch_lines(["repocache: offline (from --repocache-offline)*"])
    monkeypatch.setenv("REPOCACHE_OFFLINE", "1")
    pytester.runpytest(f"--repocache-dir={cache_dir}").assert_outcomes(passed=1, skipped=1)
    assert stats_of(cache_dir)[0] == 1  # one clone: offline runs never cloned


def test_upstream_marker_skips_a_test_whose_upstream_cannot_be_reached_with_the_reason(
    pytester: pytest.Pytester, served_url: str
) -> None:
    from repocache.testing import HangingServer

    with socket.socket() as dead, HangingServer() as hanging:
        dead.bind(("127.0.0.1", 0))  # bound, never listening: connections are refused
        dead_url = f"git://127.0.0.1:{dead.getsockname()[1]}/gone.git"
        hanging_url = hanging.git_url
        pytester.makepyfile(
            f"""
            import pytest

            @pytest.mark.repocache_upstream({served_url!r})
            def test_reachable():
                pass

            @pytest.mark.repocache_upstream({served_url!r}, {dead_url!r})
            def test_refused():
                raise AssertionError("ran although its upstream is down")

            @pytest.mark.repocache_upstream({hanging_url!r}, timeout=1)
            def test_hanging():
                raise AssertionError("ran although its upstream never answers")
            """
        )
        result = pytester.runpytest("-rs")
    result.assert_outcomes(passed=1, skipped=2)
    result.stdout.fnmatch_lines(
        [
            f"SKIPPED *upstream {dead_url.removesuffix('.git')} cannot be reached: *Connection refused*",
            f"SKIPPED *upstream {hanging_url} cannot be reached: no answer within 1s*",
        ],
        consecutive=False,
    )


def test_upstream_marker_offline_skips_unless_the_persistent_cache_holds_the_repository(
    pytester: pytest.Pytester, served_url: str, tmp_path: Path
) -> None:
    cache_dir = tmp_path / "persistent"
    with RepoCache(cache_dir) as cache:
        cache.ensure(served_url)
    elsewhere = "https://example.invalid/never/contacted"
    pytester.makepyfile(
        f"""
        import pytest

        @pytest.mark.repocache_upstream({served_url!r})
        def test_cached():
            pass

        @pytest.mark.repocache_upstream({elsewhere!r})
        def test_not_cached():
            raise AssertionError("ran offline without its repository")
        """
    )
    result = pytester.runpytest(f"--repocache-dir={cache_dir}", "--repocache-offline", "-rs")
    result.assert_outcomes(passed=1, skipped=1)
    result.stdout.fnmatch_lines([f"SKIPPED *{elsewhere}: offline, and it is not in the persistent cache*"])


@pytest.mark.parametrize("engine", ["git", "libgit2"])
def test_probe_upstream_answers_none_for_a_live_upstream_and_the_cause_for_a_dead_one(
    served: UpstreamFactory, daemon: GitDaemon, engine: str
) -> None:
    from repocache.gitops import GitOptions, find_git, probe_upstream
    from repocache.keys import normalize_url

    live = daemon.url_for(served.create(f"probed-{engine}"))
    options = GitOptions(git=find_git() if engine == "git" else None)
    assert probe_upstream(normalize_url(live), options, timeout=10) is None
    absent = probe_upstream(normalize_url(daemon.url_for(served.base_dir / "absent.git")), options, timeout=10)
    assert absent is not None
    with socket.socket() as dead:
        dead.bind(("127.0.0.1", 0))
        problem = probe_upstream(normalize_url(f"git://127.0.0.1:{dead.getsockname()[1]}/x"), options, timeout=10)
    assert problem is not None and "refused" in problem.lower(), problem


def test_offline_cache_serves_a_cached_repository_and_refuses_anything_needing_upstream(
    served_url: str, tmp_path: Path
) -> None:
    from repocache.testing.offline import NotCachedOffline, OfflineRepoCache

    with RepoCache(tmp_path / "cache") as cache:
        cache.ensure(served_url)
    with OfflineRepoCache(tmp_path / "cache") as offline:
        assert offline.ensure(served_url, max_age=0).url == normalize(served_url)  # any age: no fetch
        with offline.worktree(served_url, "v1") as tree:
            assert tree.path.is_dir()
        with pytest.raises(NotCachedOffline, match="offline, and a refresh needs the upstream"):
            offline.refresh(served_url)
        with pytest.raises(NotCachedOffline, match="not in the cache"):
            offline.ensure("git://127.0.0.1:9/absent")
        assert (offline.stats().fetches, offline.stats().clones) == (0, 1)  # the root's: only the first clone


def normalize(url: str) -> str:
    from repocache.keys import normalize_url

    return normalize_url(url).url
