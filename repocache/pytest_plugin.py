"""pytest plugin of repocache: real upstream repositories, a git server on loopback, and caches of clones.

Registered through the ``pytest11`` entry point, so installing ``git-repocache`` makes these fixtures available
everywhere (disable with ``-p no:repocache``):

| fixture | scope | type |
| --- | --- | --- |
| ``git_upstreams`` | session | :class:`~repocache.testing.UpstreamFactory` whose directory ``git_server`` serves |
| ``git_upstream`` | function | a fresh :class:`~repocache.testing.Upstream` made by ``git_upstreams`` |
| ``git_server`` | session | :class:`GitServer`: ``git://`` and smart HTTP on 127.0.0.1, each started on first use |
| ``repo_cache`` | function | :class:`~repocache.RepoCache` in the test's ``tmp_path``, closed after the test |
| ``repo_cache_factory`` | function | :class:`RepoCacheFactory`: opens caches with settings, closed after the test |
| ``repo_cache_persistent_dir`` | session | :class:`~pathlib.Path` of the cache kept between runs |
| ``repo_cache_persistent`` | session | :class:`~repocache.RepoCache` on that directory, shared by xdist workers |

The persistent directory comes from ``--repocache-dir``, else the ini setting ``repocache_dir``, else the
environment variable ``REPOCACHE_TEST_DIR``, else ``.pytest_cache/d/repocache`` (pytest's cache directory), else a
temporary directory of the run. See ``docs/pytest-plugin.md``.

Offline mode (``--repocache-offline`` or ``REPOCACHE_OFFLINE=1``): ``repo_cache_persistent`` serves what it holds
at any age without contacting upstream, and a test asking it for a repository it does not hold is skipped, naming
the URL. The marker ``@pytest.mark.repocache_upstream(url, ..., timeout=10)`` skips a test whose upstream cannot be
reached (one bounded ``git ls-remote`` per URL and session), naming the URL and the error; offline, it skips the test
unless the persistent cache holds the repository.

Importing this module is cheap: pygit2, the cache and the servers are imported inside the fixtures that use them.
"""

from __future__ import annotations

import os
import re
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING, NoReturn

import pytest

from repocache.lifecycle import Lifecycle

if TYPE_CHECKING:
    from typing_extensions import Unpack

    from repocache.cache import RepoCache
    from repocache.gitops import ProgressCallback
    from repocache.settings import CacheOptions
    from repocache.testing import GitDaemon, SmartHTTPServer, Upstream, UpstreamFactory

# The fixtures are found by pytest through the entry point; importing them elsewhere would register them twice.
__all__ = [
    "CACHE_SUBDIR",
    "DIR_ENV",
    "DIR_INI",
    "DIR_OPTION",
    "OFFLINE_ENV",
    "OFFLINE_OPTION",
    "PROBE_TIMEOUT",
    "UPSTREAM_MARKER",
    "GitServer",
    "RepoCacheFactory",
    "is_offline",
    "persistent_dir",
]

#: The command-line option naming the persistent cache directory.
DIR_OPTION = "--repocache-dir"
#: The ini setting naming the persistent cache directory (relative paths are relative to the ini file).
DIR_INI = "repocache_dir"
#: The environment variable naming the persistent cache directory (relative paths are relative to the cwd).
DIR_ENV = "REPOCACHE_TEST_DIR"
#: The name of the persistent cache's directory inside pytest's cache directory (``.pytest_cache/d/<name>``).
CACHE_SUBDIR = "repocache"
#: The command-line option of offline mode: the persistent cache serves what it holds and never contacts upstream.
OFFLINE_OPTION = "--repocache-offline"
#: The environment variable of offline mode (``1``, ``true``, ``yes`` or ``on``).
OFFLINE_ENV = "REPOCACHE_OFFLINE"
#: The marker skipping a test whose upstream cannot be reached: ``@pytest.mark.repocache_upstream(url, ...)``.
UPSTREAM_MARKER = "repocache_upstream"
#: Seconds the marker's probe of one upstream may take, unless the marker says ``timeout=``.
PROBE_TIMEOUT = 10.0

_TRUE = ("1", "true", "yes", "on")
_PROBES = pytest.StashKey[dict[tuple[str, float], "str | None"]]()

_UNSAFE_NAME = re.compile(r"[^A-Za-z0-9_]+")


def pytest_addoption(parser: pytest.Parser) -> None:
    """Register ``--repocache-dir`` and the ini setting ``repocache_dir``."""
    group = parser.getgroup("repocache", "repocache: cached git clones")
    group.addoption(
        DIR_OPTION,
        dest="repocache_dir",
        metavar="DIR",
        default=None,
        help=(
            "directory of the repo_cache_persistent fixture, kept between runs and shared by xdist workers "
            f"(default: ini {DIR_INI}, else ${DIR_ENV}, else .pytest_cache/d/{CACHE_SUBDIR})"
        ),
    )
    group.addoption(
        OFFLINE_OPTION,
        dest="repocache_offline",
        action="store_true",
        default=False,
        help=(
            "repo_cache_persistent serves what it holds at any age without contacting upstream; a test needing a "
            f"repository it does not hold is skipped (also ${OFFLINE_ENV}=1)"
        ),
    )
    parser.addini(
        DIR_INI,
        type="string",
        default="",
        help=f"directory of the repo_cache_persistent fixture, relative to the ini file (overridden by {DIR_OPTION})",
    )


def pytest_configure(config: pytest.Config) -> None:
    """Register the ``repocache_upstream`` marker."""
    config.addinivalue_line(
        "markers",
        f"{UPSTREAM_MARKER}(url, ..., timeout={PROBE_TIMEOUT:g}): skip the test when an upstream cannot be reached "
        "(offline: when the persistent cache does not hold it)",
    )


def pytest_report_header(config: pytest.Config) -> list[str] | None:
    """Say where the persistent cache lives when it was configured explicitly, and offline mode (nothing is created)."""
    lines = []
    configured = _configured_dir(config)
    if configured is not None:
        path, source = configured
        lines.append(f"repocache: persistent cache {path} (from {source})")
    if is_offline(config):
        source = OFFLINE_OPTION if config.getoption("repocache_offline", default=False) else f"${OFFLINE_ENV}"
        lines.append(f"repocache: offline (from {source}): upstreams are not contacted")
    return lines or None


def is_offline(config: pytest.Config) -> bool:
    """Whether offline mode is on: ``--repocache-offline``, or ``REPOCACHE_OFFLINE`` set to 1, true, yes or on."""
    if config.getoption("repocache_offline", default=False):
        return True
    return os.environ.get(OFFLINE_ENV, "").strip().lower() in _TRUE


def _configured_dir(config: pytest.Config) -> tuple[Path, str] | None:
    """The persistent directory named by the option, the ini file or the environment, and which one named it."""
    option = config.getoption("repocache_dir", default=None)
    if option:
        return _absolute(str(option), config.invocation_params.dir), DIR_OPTION
    ini = str(config.getini(DIR_INI) or "")
    if ini:
        base = config.inipath.parent if config.inipath is not None else config.rootpath
        return _absolute(ini, base), f"ini {DIR_INI}"
    env = os.environ.get(DIR_ENV, "")
    if env:
        return _absolute(env, config.invocation_params.dir), f"${DIR_ENV}"
    return None


def _absolute(value: str, base: Path) -> Path:
    path = Path(os.path.expanduser(value))
    return path if path.is_absolute() else base / path


def persistent_dir(config: pytest.Config, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Return (creating it) the directory of the cache kept between runs, as ``repo_cache_persistent`` uses it.

    The first of these wins: the ``--repocache-dir`` option (relative to the directory pytest was started in),
    the ini setting ``repocache_dir`` (relative to the ini file), the environment variable ``REPOCACHE_TEST_DIR``
    (relative to the directory pytest was started in), ``<pytest cache dir>/d/repocache`` when the cacheprovider
    plugin is active, and finally a directory under the run's base temporary directory, which does not outlive the
    run. Every xdist worker of one run gets the same directory.

    Args:
        config: the pytest configuration.
        tmp_path_factory: the session's temporary path factory, for the last fallback.
    """
    configured = _configured_dir(config)
    if configured is not None:
        path = configured[0]
    else:
        cache = getattr(config, "cache", None)  # absent under -p no:cacheprovider
        if cache is not None:
            return Path(cache.mkdir(CACHE_SUBDIR))
        base = tmp_path_factory.getbasetemp()
        # An xdist worker's base temp is <run's base temp>/popen-gwN: the parent is common to all workers.
        path = (base.parent if getattr(config, "workerinput", None) is not None else base) / CACHE_SUBDIR
    path.mkdir(parents=True, exist_ok=True)
    return path


class GitServer:
    """Serves every repository below one directory on 127.0.0.1, over ``git://`` and smart HTTP.

    The ``git daemon`` and the HTTP server each start on first use, so a session that only asks for ``git://``
    URLs never starts the HTTP server. Safe to use from several threads. Repositories created after a server
    started are served too (both serve the directory, not a list).

    Attributes:
        base_path: the served directory (the ``git_upstreams`` factory's ``base_dir``).
    """

    def __init__(self, base_path: Path) -> None:
        """Prepare the servers; nothing runs until a URL is asked for.

        Args:
            base_path: the directory whose repositories are served.
        """
        self.base_path = Path(base_path)
        self._lock = threading.Lock()
        self._daemon: GitDaemon | None = None
        self._http: SmartHTTPServer | None = None
        self._lifecycle = Lifecycle("GitServer")

    def __repr__(self) -> str:
        return f"GitServer(base_path={str(self.base_path)!r})"

    @property
    def daemon(self) -> GitDaemon:
        """The running ``git daemon`` (started now if needed)."""
        from repocache.testing import GitDaemon

        with self._lock:
            self._check_open()
            if self._daemon is None:
                daemon = GitDaemon(self.base_path)
                daemon.start()
                self._daemon = daemon
            return self._daemon

    @property
    def http(self) -> SmartHTTPServer:
        """The running smart HTTP server (started now if needed); its ``requests`` log every request."""
        from repocache.testing import SmartHTTPServer

        with self._lock:
            self._check_open()
            if self._http is None:
                http = SmartHTTPServer(self.base_path)
                http.start()
                self._http = http
            return self._http

    def git_url(self, upstream: Upstream | str | os.PathLike[str]) -> str:
        """Return the ``git://127.0.0.1:<port>/...`` URL of a repository below :attr:`base_path`.

        Args:
            upstream: an :class:`~repocache.testing.Upstream` or a repository path below :attr:`base_path`.

        Raises:
            ValueError: the repository is not below :attr:`base_path`.
        """
        return self.daemon.url_for(upstream)

    def http_url(self, upstream: Upstream | str | os.PathLike[str]) -> str:
        """Return the ``http://127.0.0.1:<port>/...`` (smart HTTP) URL of a repository below :attr:`base_path`.

        Args:
            upstream: an :class:`~repocache.testing.Upstream` or a repository path below :attr:`base_path`.

        Raises:
            ValueError: the repository is not below :attr:`base_path`.
        """
        return self.http.url_for(upstream)

    def close(self) -> None:
        """Stop whichever servers were started and wait for their processes and threads. Safe to call twice."""
        with self._lock:
            self._lifecycle.close()
            daemon, self._daemon = self._daemon, None
            http, self._http = self._http, None
        try:
            if daemon is not None:
                daemon.stop()
        finally:
            if http is not None:
                http.stop()

    def _check_open(self) -> None:
        if not self._lifecycle.is_open:
            raise RuntimeError("this GitServer is closed (its session ended)")


@pytest.fixture(scope="session")
def git_upstreams(tmp_path_factory: pytest.TempPathFactory) -> UpstreamFactory:
    """A session-wide factory of upstream repositories, all below the directory ``git_server`` serves.

    ``git_upstreams.create("name", files={...})`` makes a bare repository with one commit; the returned
    :class:`~repocache.testing.Upstream` then takes commits, branches, tags, merges and force-pushes, and has a
    ``path`` and a ``url`` (the local path; ``git_server`` gives ``git://`` and ``http://`` URLs).
    """
    from repocache.testing import UpstreamFactory

    return UpstreamFactory(tmp_path_factory.mktemp("repocache-upstreams"))


@pytest.fixture
def git_upstream(git_upstreams: UpstreamFactory, request: pytest.FixtureRequest) -> Upstream:
    """A fresh bare upstream repository for this test, named after it, with one commit on ``main``.

    It lives below ``git_upstreams.base_dir``, so ``git_server`` serves it. Ask ``git_upstreams`` for more.
    """
    name = _UNSAFE_NAME.sub("-", request.node.name).strip("-")[:80] or "repo"
    return git_upstreams.create(name)


@pytest.fixture(scope="session")
def git_server(git_upstreams: UpstreamFactory) -> Iterator[GitServer]:
    """``git://`` and smart HTTP on 127.0.0.1 serving ``git_upstreams``; each starts on first use, stops at the end."""
    server = GitServer(git_upstreams.base_dir)
    try:
        yield server
    finally:
        server.close()


@pytest.fixture
def repo_cache(tmp_path: Path) -> Iterator[RepoCache]:
    """An empty :class:`~repocache.RepoCache` at ``tmp_path / "repocache"`` with default settings, closed after."""
    from repocache.cache import RepoCache

    with RepoCache(tmp_path / "repocache") as cache:
        yield cache


class RepoCacheFactory:
    """Opens :class:`~repocache.RepoCache` objects with settings, each in its own directory, and closes them all.

    ``repo_cache_factory(max_bytes="1GiB", maintenance=Maintenance(max_packs=2))`` takes exactly the keywords of
    ``RepoCache`` (:class:`~repocache.settings.CacheOptions`); ``root`` defaults to a new directory under the
    test's ``tmp_path``.
    """

    def __init__(self, base: Path) -> None:
        """Prepare a factory whose default roots are directories below ``base``."""
        self.base = base
        self.caches: list[RepoCache] = []

    def __call__(
        self,
        root: str | os.PathLike[str] | None = None,
        *,
        progress: ProgressCallback | None = None,
        **options: Unpack[CacheOptions],
    ) -> RepoCache:
        """Open a cache at ``root`` (default: a new directory) with these settings; it is closed after the test."""
        from repocache.cache import RepoCache

        if root is None:
            root = self.base / f"repocache-{len(self.caches)}"
        cache = RepoCache(root, progress=progress, **options)
        self.caches.append(cache)
        return cache

    def close(self) -> None:
        """Close every cache this factory opened."""
        for cache in self.caches:
            cache.close()


@pytest.fixture
def repo_cache_factory(tmp_path: Path) -> Iterator[RepoCacheFactory]:
    """A :class:`RepoCacheFactory` opening caches under ``tmp_path`` with any settings; all closed after the test."""
    factory = RepoCacheFactory(tmp_path)
    try:
        yield factory
    finally:
        factory.close()


@pytest.fixture(scope="session")
def repo_cache_persistent_dir(pytestconfig: pytest.Config, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The directory of ``repo_cache_persistent`` (see :func:`persistent_dir` for where it comes from)."""
    return persistent_dir(pytestconfig, tmp_path_factory)


@pytest.fixture(scope="session")
def repocache_offline(pytestconfig: pytest.Config) -> bool:
    """Whether offline mode is on (``--repocache-offline`` or ``REPOCACHE_OFFLINE=1``); see :func:`is_offline`."""
    return is_offline(pytestconfig)


def _skip_offline(url: str, reason: str) -> NoReturn:
    pytest.skip(f"{url}: {reason} (offline mode: {OFFLINE_OPTION} or ${OFFLINE_ENV})")


@pytest.fixture(scope="session")
def repo_cache_persistent(repo_cache_persistent_dir: Path, repocache_offline: bool) -> Iterator[RepoCache]:
    """A :class:`~repocache.RepoCache` kept between runs, so each repository is cloned once per machine.

    Under pytest-xdist every worker opens the same directory; the cache is safe for many processes, so a
    repository that several workers ask for at once is still cloned once. A hit fetches from upstream (default
    ``fetch_ttl=0``); override this fixture to pass other settings.

    In offline mode it is a :class:`~repocache.testing.offline.OfflineRepoCache`: ``checkout``, ``worktree`` and
    ``ensure`` serve what it holds at any age without contacting upstream, and skip the test (naming the URL) for a
    repository it does not hold.
    """
    if repocache_offline:
        from repocache.testing.offline import OfflineRepoCache

        with OfflineRepoCache(repo_cache_persistent_dir, on_miss=_skip_offline) as offline:
            yield offline
        return
    from repocache.cache import RepoCache

    with RepoCache(repo_cache_persistent_dir) as cache:
        yield cache


@pytest.fixture(autouse=True)
def _repocache_upstream_marker(request: pytest.FixtureRequest) -> None:
    """Skip the test when an upstream named by its ``repocache_upstream`` markers cannot be reached.

    Online, each URL is probed once per session and timeout (``git ls-remote``, bounded); offline, nothing is
    contacted and the test is skipped unless ``repo_cache_persistent`` holds the repository.
    """
    markers = list(request.node.iter_markers(UPSTREAM_MARKER))
    if not markers:
        return
    from repocache.keys import normalize_url

    for marker in markers:
        timeout = float(marker.kwargs.get("timeout", PROBE_TIMEOUT))
        if not marker.args or not all(isinstance(url, str) for url in marker.args):
            raise pytest.UsageError(f"@pytest.mark.{UPSTREAM_MARKER} needs URLs as strings, got {marker.args!r}")
        for url in marker.args:
            shown = normalize_url(url).url  # credential-free; an invalid URL errors the test
            if is_offline(request.config):
                cache = request.getfixturevalue("repo_cache_persistent")
                if cache.info(url) is None:
                    _skip_offline(shown, f"offline, and it is not in the persistent cache {cache.root}")
                continue
            problem = _probe(request.config, url, timeout)
            if problem is not None:
                pytest.skip(f"upstream {shown} cannot be reached: {problem}")


def _probe(config: pytest.Config, url: str, timeout: float) -> str | None:
    """Why ``url`` does not answer (None: it does), asked once per session and timeout."""
    from repocache.gitops import GitOptions, find_git, probe_upstream
    from repocache.keys import normalize_url

    probes = config.stash.setdefault(_PROBES, {})
    if (url, timeout) not in probes:
        probes[(url, timeout)] = probe_upstream(normalize_url(url), GitOptions(git=find_git()), timeout=timeout)
    return probes[(url, timeout)]
