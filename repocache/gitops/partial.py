"""Partial mirrors: finding what a filter left out, fetching it, and reading objects with a typed error.

libgit2 (1.9) has no partial-clone support: it reads what is present, raises ``KeyError`` for an absent blob and
``GitError`` ("Unable to read tree") for an absent tree, and never fetches on demand. So what is absent is found
here with pygit2 (which never fetches) and fetched with the git CLI, the way git's own lazy fetch does it: one
``git fetch origin <oid>...`` from the promisor remote with ``--filter=blob:none`` and no negotiation, so a wanted
tree comes with its subtrees (not their blobs) and a wanted blob comes alone. The new packs are promisor packs.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from pathlib import Path

import pygit2

from repocache.errors import FetchError, MissingObjectError, RefNotFoundError
from repocache.gitops.mirror import open_repository
from repocache.gitops.run import GitOptions, ProgressCallback, Throttle, run_git
from repocache.gitops.transfer import require_cli_for_filter
from repocache.keys import RepoURL

__all__ = ["FETCH_BATCH", "absent_objects", "fetch_missing_of", "fetch_objects", "missing_for", "read_object"]

FETCH_BATCH = 2000
"""Object ids given to one ``git fetch`` (41 bytes each on its command line, far below the argument limit)."""

_ROUNDS = 8  # trees fetched then walked again: a tree-less mirror needs one round per missing root tree


def read_object(repo: pygit2.Repository, oid: str | pygit2.Oid, url: str, filter: str | None) -> pygit2.Object:
    """The object ``oid`` of the mirror ``repo`` (of ``url``, with ``filter``), or a typed error when it is absent.

    Raises:
        MissingObjectError: the object is not in the mirror (names ``url``, ``oid`` and ``filter``).
        ValueError: ``oid`` is not a hex object id.
    """
    try:
        return repo[oid]
    except KeyError:
        raise MissingObjectError(url, str(oid), filter) from None
    except pygit2.GitError as exc:
        if "unable to read" in str(exc).lower() or "not found" in str(exc).lower():
            raise MissingObjectError(url, str(oid), filter) from None
        raise


def absent_objects(path: Path, oids: Iterable[str]) -> list[str]:
    """The ids among ``oids`` that the mirror at ``path`` does not hold (read without fetching anything)."""
    wanted = list(oids)
    if not wanted:
        return []
    repo = open_repository(path)
    try:
        return [oid for oid in dict.fromkeys(wanted) if oid not in repo]
    finally:
        repo.free()


def missing_for(
    path: Path, url: RepoURL, commit: str, paths: Sequence[str] | None = None
) -> tuple[list[str], list[str]]:
    """What the mirror at ``path`` lacks of ``commit``'s tree: (absent trees, absent blobs), in walk order.

    Only the part of the tree under ``paths`` (repository-relative, ``/``-separated) is walked when given; the
    trees leading to them count too. Absent trees cut the walk there: their content is not known until fetched.
    Submodule entries (gitlinks) are skipped.

    Raises:
        RefNotFoundError: ``commit`` names no commit of the mirror.
    """
    wanted = [p.strip("/") for p in paths] if paths is not None else None
    repo = open_repository(path)
    try:
        try:
            target = repo.revparse_single(commit).peel(pygit2.Commit)
        except (KeyError, ValueError, pygit2.GitError, pygit2.InvalidSpecError):
            raise RefNotFoundError(url.url, commit) from None
        trees: list[str] = []
        blobs: list[str] = []
        stack: list[tuple[str, str]] = [(str(target.tree_id), "")]
        while stack:
            tree_id, prefix = stack.pop()
            if tree_id not in repo:
                trees.append(tree_id)
                continue
            tree = repo[tree_id]
            assert isinstance(tree, pygit2.Tree)
            for entry in tree:
                name = f"{prefix}{entry.name}"
                if wanted is not None and not _under(name, wanted, entry.type_str == "tree"):
                    continue
                if entry.type_str == "tree":
                    stack.append((str(entry.id), name + "/"))
                elif entry.type_str == "blob" and entry.id not in repo:
                    blobs.append(str(entry.id))
        return trees, blobs
    finally:
        repo.free()


def _under(name: str, wanted: list[str], is_tree: bool) -> bool:
    """Whether the entry ``name`` is one of ``wanted``, under one, or (a tree) leads to one."""
    for item in wanted:
        if not item or name == item or name.startswith(item + "/"):
            return True
        if is_tree and item.startswith(name + "/"):
            return True
    return False


def fetch_objects(
    url: RepoURL,
    path: Path,
    options: GitOptions,
    oids: Iterable[str],
    *,
    progress: ProgressCallback | None = None,
) -> int:
    """Fetch ``oids`` (and the subtrees of wanted trees, not their blobs) into the partial mirror at ``path``.

    The caller holds the repository's fetch lock. Returns the number of object ids asked for.

    Raises:
        ConfigError: no git CLI was found.
        FetchError: upstream refused or failed (it must allow filters; protocol v2 lets any object be wanted).
    """
    require_cli_for_filter(url, options)
    wanted = list(dict.fromkeys(oids))
    throttle = Throttle(progress, url.url, "fetch", options.progress_interval)
    for start in range(0, len(wanted), FETCH_BATCH):
        run_git(
            [
                "-c",
                "fetch.negotiationAlgorithm=noop",
                "fetch",
                "--no-tags",
                "--no-write-fetch-head",
                "--recurse-submodules=no",
                "--filter=blob:none",
                "--progress",
                "origin",
                *wanted[start : start + FETCH_BATCH],
            ],
            url,
            options,
            throttle,
            FetchError,
            cwd=path,
        )
    throttle.done()
    return len(wanted)


def fetch_missing_of(
    url: RepoURL,
    path: Path,
    options: GitOptions,
    commit: str,
    paths: Sequence[str] | None = None,
    *,
    progress: ProgressCallback | None = None,
) -> int:
    """Fetch what the mirror lacks of ``commit``'s tree (under ``paths`` when given): trees first, then blobs.

    The caller holds the repository's fetch lock. Returns the number of objects asked for.

    Raises:
        RefNotFoundError: ``commit`` names no commit of the mirror.
        FetchError: the fetch failed.
    """
    asked = 0
    for _round in range(_ROUNDS):
        trees, blobs = missing_for(path, url, commit, paths)
        if trees:
            asked += fetch_objects(url, path, options, trees, progress=progress)
            continue
        if blobs:
            asked += fetch_objects(url, path, options, blobs, progress=progress)
        return asked
    raise FetchError(url.url, f"trees of {commit} were still missing after {_ROUNDS} fetches")
