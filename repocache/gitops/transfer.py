"""Transfers: cloning a mirror and fetching into it, with the git CLI or libgit2.

The engine is chosen per operation by what we measured to be faster (2 cores, git 2.39, libgit2 1.9.7):

- clones use the git CLI (1.3x faster and 4x less memory than libgit2 on a 490 MB repository);
- fetches use libgit2 over git:// and http(s) (a no-op fetch: 15-19 ms against 121-166 ms for ``git fetch``),
  and the git CLI over ssh (it uses the user's ssh setup) and for local paths (libgit2's local transport is 5x
  slower than git's);
- without a ``git`` binary everything goes through libgit2.

Credentials from the URL never reach the disk: the mirror's config holds the credential-free URL; the git CLI
gets them from :func:`~repocache.gitops.run.git_environment`, and libgit2 from a credentials callback. Every
failure leaves as :class:`CloneError` or :class:`FetchError` with a scrubbed message.
"""

from __future__ import annotations

import contextlib
import logging
import os
import subprocess
from pathlib import Path
from typing import Any

import pygit2
from pygit2.ffi import C, ffi

from repocache import cancel
from repocache.errors import AuthenticationError, CloneError, ConfigError, FetchError, GitError
from repocache.gitops.mirror import ensure_mirror_config, open_repository, sweep_mirror, validate_mirror
from repocache.gitops.run import (
    PARTIAL_UPSTREAM_HINT,
    PARTIAL_UPSTREAM_MARKERS,
    GitOptions,
    ProgressCallback,
    Throttle,
    authentication_detail,
    git_environment,
    hide_staging,
    is_authentication_failure,
    run_git,
)
from repocache.keys import RepoURL, scrub

logger = logging.getLogger("repocache")

_libgit2_timeouts: tuple[float, float] | None = None


def _configure_libgit2(options: GitOptions) -> None:
    global _libgit2_timeouts
    wanted = (options.connect_timeout, options.idle_timeout)
    if _libgit2_timeouts == wanted:
        return
    with contextlib.suppress(AttributeError, ValueError, pygit2.GitError):
        pygit2.option(pygit2.enums.Option.SET_SERVER_CONNECT_TIMEOUT, int(options.connect_timeout * 1000))
        pygit2.option(pygit2.enums.Option.SET_SERVER_TIMEOUT, int(options.idle_timeout * 1000))
    _libgit2_timeouts = wanted


class _Callbacks(pygit2.RemoteCallbacks):
    def __init__(self, url: RepoURL, throttle: Throttle) -> None:
        super().__init__()
        self._url = url
        self._throttle = throttle
        self._tried_credentials = False
        self.moved = False  # whether the fetch moved, created or deleted (pruned) a ref

    def update_tips(self, refname: str, old: pygit2.Oid, new: pygit2.Oid) -> None:
        self.moved = True

    def sideband_progress(self, string: str) -> None:
        cancel.check()

    def credentials(self, url: str, username_from_url: str | None, allowed_types: Any) -> pygit2.UserPass:
        if self._url.has_credentials and not self._tried_credentials:
            self._tried_credentials = True
            return pygit2.UserPass(self._url.username or "", self._url.password or "")
        # Asked again: the credentials were refused (or there are none); libgit2 would loop on the same answer.
        raise AuthenticationError(self._url.url, authentication_detail("", self._url).removesuffix("; "))

    def transfer_progress(self, stats: object) -> None:
        cancel.check()  # raising from a callback is what aborts a libgit2 transfer (a return value does not)
        received = int(getattr(stats, "received_objects", 0))
        total = int(getattr(stats, "total_objects", 0))
        indexed = int(getattr(stats, "indexed_deltas", 0))
        total_deltas = int(getattr(stats, "total_deltas", 0))
        if total_deltas and received >= total:
            self._throttle.report("resolving", indexed, total_deltas, int(getattr(stats, "received_bytes", 0)))
        else:
            self._throttle.report("receiving", received, total, int(getattr(stats, "received_bytes", 0)))


# -- clone --------------------------------------------------------------------------------------------------


def clone_mirror(url: RepoURL, dest: Path, options: GitOptions, *, progress: ProgressCallback | None = None) -> None:
    """Clone ``url`` as a bare mirror (every ref, HEAD as upstream's) into the new directory ``dest``.

    A partial mirror (``url.filter``) is cloned by the git CLI with ``--filter`` (libgit2 1.9 cannot filter).

    Raises:
        CloneError: git failed or the result is not a usable mirror; ``dest`` may hold debris the caller removes.
        ConfigError: ``url`` has a filter and no git CLI was found (libgit2 alone cannot make a partial mirror).
    """
    throttle = Throttle(progress, url.url, "clone", options.progress_interval)
    require_cli_for_filter(url, options)
    if url.is_local and _is_partial_clone(Path(url.fetch_url)):
        # A local clone hard-links objects without checking them, so a partial upstream would yield a mirror
        # with missing objects that looks whole: refuse it, as git and libgit2 do over the network.
        raise CloneError(url.url, "the upstream is a partial clone" + PARTIAL_UPSTREAM_HINT, url.shown)
    if options.git is not None:
        partial = [] if url.filter is None else [f"--filter={url.filter}"]
        run_git(
            ["clone", "--mirror", "--progress", *partial, "--", url.transfer_url, str(dest)],
            url,
            options,
            throttle,
            CloneError,
            hide=dest,
        )
    else:
        _clone_libgit2(url, dest, options, throttle)
    problem = validate_mirror(dest)
    if problem is not None:
        raise CloneError(url.url, f"the cloned repository {problem}", url.shown)
    try:
        ensure_mirror_config(dest, url)  # libgit2 writes a config of its own; keep one form for every mirror
    except OSError as exc:
        raise CloneError(url.url, f"cannot write the mirror's config: {exc}", url.shown) from None
    throttle.done()


def require_cli_for_filter(url: RepoURL, options: GitOptions) -> None:
    """Refuse a partial mirror of ``url`` when only libgit2 is available.

    Raises:
        ConfigError: ``url.filter`` is set and no git CLI was found.
    """
    if url.filter is not None and options.git is None:
        raise ConfigError(
            f"filter={url.filter!r} for {url.url} needs the git CLI (libgit2 cannot clone or fetch with a filter) "
            "and no git binary was found (install git or set REPOCACHE_GIT to it), or ask for filter=None"
        )


def _clone_libgit2(url: RepoURL, dest: Path, options: GitOptions, throttle: Throttle) -> None:
    _configure_libgit2(options)
    if url.is_local and not os.path.exists(url.fetch_url):
        # libgit2 says "unsupported URL protocol" for a local path that does not exist; say what git says.
        raise CloneError(url.url, f"repository '{url.fetch_url}' does not exist", url.shown)
    try:
        repo = pygit2.init_repository(str(dest), bare=True)
        try:
            repo.config["remote.origin.url"] = url.fetch_url
            repo.config["remote.origin.fetch"] = "+refs/*:refs/*"
            repo.config["remote.origin.mirror"] = True
            remote = repo.remotes["origin"]
            callbacks = _Callbacks(url, throttle)
            remote.fetch(callbacks=callbacks, prune=pygit2.enums.FetchPrune.PRUNE)
            _adopt_upstream_head(repo, remote)
            stray = repo.references.get("refs/remotes/origin/HEAD")
            if stray is not None:
                stray.delete()
            repo.references.compress()
        finally:
            repo.free()
    except (pygit2.GitError, GitError, KeyError, OSError) as exc:
        if isinstance(exc, CloneError):
            raise
        detail = scrub(str(exc.detail if isinstance(exc, GitError) else exc))
        detail = hide_staging(detail, dest)
        if any(marker in detail for marker in PARTIAL_UPSTREAM_MARKERS):
            detail += PARTIAL_UPSTREAM_HINT
        raise _transfer_error(CloneError, url, detail, exc) from None


def _transfer_error(error: type[GitError], url: RepoURL, detail: str, cause: BaseException) -> GitError:
    """The error a failed libgit2 transfer leaves as: an authentication error when credentials were refused."""
    if isinstance(cause, AuthenticationError):
        return AuthenticationError.of(error)(url.url, detail, url.shown)
    if is_authentication_failure(detail):
        return AuthenticationError.of(error)(url.url, authentication_detail(detail, url), url.shown)
    return error(url.url, detail, url.shown)


def _is_partial_clone(path: Path) -> bool:
    """True when the local repository at ``path`` is a partial clone (it has promisor packs)."""
    for objects in (path / "objects", path / ".git" / "objects"):
        with contextlib.suppress(OSError), os.scandir(objects / "pack") as entries:
            if any(entry.name.endswith(".promisor") for entry in entries):
                return True
    return False


def _adopt_upstream_head(repo: pygit2.Repository, remote: pygit2.Remote) -> bool:
    """Point HEAD where upstream's HEAD points, from the ref advertisement of the last connection; True if it moved.

    Only upstream's ``HEAD`` is read from the advertisement (git sends it first): building an object for each of
    thousands of advertised refs to find it cost 15 ms of a 45 ms no-op fetch of git.git.
    """
    target = _advertised_head(remote)
    if target is None:
        return False
    current = repo.references.get("HEAD")
    if current is not None and current.target == target:
        return False
    repo.set_head(target)
    return True


def _advertised_head(remote: pygit2.Remote) -> str | None:
    """The branch upstream's ``HEAD`` names in the last connection's advertisement, if it names one."""
    refs_ptr = ffi.new("git_remote_head ***")
    size_ptr = ffi.new("size_t *")
    if C.git_remote_ls(refs_ptr, size_ptr, remote._remote) != 0:
        return None
    for number in range(int(size_ptr[0])):
        head = refs_ptr[0][number]
        if ffi.string(head.name) == b"HEAD":
            if head.symref_target == ffi.NULL:
                return None
            return str(ffi.string(head.symref_target).decode("utf-8", "replace"))
    return None


# -- fetch --------------------------------------------------------------------------------------------------


def fetch_mirror(
    url: RepoURL,
    path: Path,
    options: GitOptions,
    *,
    progress: ProgressCallback | None = None,
    prefer_cli: bool = False,
) -> bool | None:
    """Bring the mirror at ``path`` up to date with upstream: new objects, moved and force-pushed refs, pruned refs.

    Returns whether the fetch moved a ref (created, moved, deleted, or upstream's HEAD followed) when the engine
    says so (libgit2 reports each ref it updates), None when it does not (the git CLI: see
    :func:`fetch_reports_moves`).

    The caller holds the repository's fetch lock. Readers may use the mirror meanwhile: refs move atomically and
    packs are added before the refs that need them. ``prefer_cli`` runs ``git fetch`` (when git is installed)
    instead of libgit2 for every transport: slower for a no-op fetch, but out of process, so a fetch running in
    a background thread does not compete with the caller's threads for the GIL.

    A partial mirror (``url.filter``) is always fetched by the git CLI from its promisor remote ``origin``, so the
    filter is kept (``remote.origin.partialclonefilter``) and the new packs are marked as promisor packs.

    Raises:
        FetchError: upstream is unreachable or the transfer failed; the mirror still serves its previous state.
        ConfigError: ``url`` has a filter and no git CLI was found.
    """
    throttle = Throttle(progress, url.url, "fetch", options.progress_interval)
    require_cli_for_filter(url, options)
    sweep_mirror(path)
    try:
        if ensure_mirror_config(path, url):
            logger.info("rewrote the config of the mirror of %s to the one repocache writes", url.url)
    except OSError as exc:
        raise FetchError(url.url, f"cannot write the mirror's config: {exc}", url.shown) from None
    moved: bool | None = None
    if not fetch_reports_moves(url, options, prefer_cli=prefer_cli):
        run_git(
            [
                "fetch",
                "--prune",
                "--progress",
                "--no-write-fetch-head",
                "--",
                url.fetch_url if url.filter is None else "origin",
                "+refs/*:refs/*",
            ],
            url,
            options,
            throttle,
            FetchError,
            cwd=path,
        )
        _repair_head_cli(url, path, options)
    else:
        moved = _fetch_libgit2(url, path, options, throttle)
    throttle.done()
    return moved


def fetch_reports_moves(url: RepoURL, options: GitOptions, *, prefer_cli: bool = False) -> bool:
    """Whether :func:`fetch_mirror` of ``url`` will say if it moved a ref (libgit2 does; the git CLI does not)."""
    if url.filter is not None:
        return False  # partial mirrors are fetched by the git CLI
    return options.git is None or not (prefer_cli or url.scheme in ("ssh", "file"))


def _fetch_libgit2(url: RepoURL, path: Path, options: GitOptions, throttle: Throttle) -> bool:
    _configure_libgit2(options)
    try:
        repo = open_repository(path)
    except pygit2.GitError as exc:
        raise FetchError(url.url, f"the cached mirror cannot be opened ({scrub(str(exc))})", url.shown) from None
    try:
        remote = repo.remotes.create_anonymous(url.fetch_url)
        callbacks = _Callbacks(url, throttle)
        remote.fetch(refspecs=["+refs/*:refs/*"], callbacks=callbacks, prune=pygit2.enums.FetchPrune.PRUNE)
        head_moved = _adopt_upstream_head(repo, remote)
        return callbacks.moved or head_moved
    except (pygit2.GitError, GitError, KeyError, OSError) as exc:
        detail = scrub(str(exc.detail if isinstance(exc, GitError) else exc))
        raise _transfer_error(FetchError, url, detail, exc) from None
    finally:
        repo.free()


def _repair_head_cli(url: RepoURL, path: Path, options: GitOptions) -> None:
    """If HEAD's branch was deleted upstream, follow upstream's HEAD (one extra round trip, only then)."""
    head = (path / "HEAD").read_text(encoding="utf-8").strip()
    if not head.startswith("ref: "):
        return
    target = head[len("ref: ") :]
    if (path / target).exists() or _packed_ref_exists(path, target):
        return
    assert options.git is not None
    result = subprocess.run(
        [options.git, "ls-remote", "--symref", "--", url.fetch_url, "HEAD"],
        env=git_environment(options, url=url),
        capture_output=True,
        text=True,
        timeout=options.idle_timeout,
        check=False,
    )
    for line in result.stdout.splitlines():
        if line.startswith("ref: ") and line.endswith("\tHEAD"):
            new_target = line[len("ref: ") : -len("\tHEAD")]
            subprocess.run(
                [options.git, "symbolic-ref", "HEAD", new_target],
                cwd=path,
                env=git_environment(options, url=url),
                check=False,
                capture_output=True,
            )
            return


def _packed_ref_exists(path: Path, name: str) -> bool:
    try:
        with open(path / "packed-refs", encoding="utf-8") as packed:
            return any(line.rstrip("\n").endswith(" " + name) for line in packed)
    except FileNotFoundError:
        return False
