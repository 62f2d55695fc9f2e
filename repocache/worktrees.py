"""Temporary working trees of a held mirror: where one is made, how it is made, and how it is removed.

A tree borrows the mirror's objects through git alternates (:func:`repocache.gitops.make_worktree`), so nothing is
copied; it lives while its caller holds the mirror. A default tree lives under ``<root>/worktrees/`` beside a lock
file held for its whole life, so ``verify`` can tell a dead tree (its process was killed) from a live one.
"""

from __future__ import annotations

import contextlib
import os
import shutil
from collections.abc import Iterator
from pathlib import Path

from repocache import gitops, locks
from repocache.checkout import Checkout, Worktree
from repocache.errors import ConfigError, InvalidRefError, RefNotFoundError
from repocache.keys import RepoURL
from repocache.layout import Layout

__all__ = ["check_ref", "worktree_of"]


def check_ref(ref: object) -> str:
    """The ``ref`` a caller asked for, if git could take it as one.

    Raises:
        InvalidRefError: it is not a non-empty string, starts with ``-`` (an option to git) or holds a line break
            or a NUL.
    """
    if not isinstance(ref, str) or not ref or ref.startswith("-") or any(c in ref for c in "\n\r\x00"):
        raise InvalidRefError(repr(ref), "expected a branch, tag, ref name or commit id")
    return ref


@contextlib.contextmanager
def worktree_of(
    layout: Layout,
    git: gitops.GitOptions,
    checkout: Checkout,
    parsed: RepoURL,
    ref: str,
    *,
    path: str | os.PathLike[str] | None,
    submodules: bool,
) -> Iterator[Worktree]:
    """A working tree of the held ``checkout`` at ``ref`` for the ``with`` block, deleted when it exits.

    Raises:
        RefNotFoundError: ``ref`` does not exist in the mirror.
        ConfigError: ``path`` is a symbolic link, or exists and is not an empty directory.
        GitError: the checkout failed.
    """
    try:
        commit, branch = gitops.resolve_commit(checkout.path, ref)
    except KeyError:
        raise RefNotFoundError(checkout.url, ref) from None
    dest, owner = _choose_dir(layout, checkout.key, path)
    try:
        gitops.make_worktree(checkout.path, dest, commit, branch, parsed, git, submodules=submodules)
        yield Worktree(path=dest, commit=commit, ref=ref, url=checkout.url, key=checkout.key)
    finally:
        shutil.rmtree(dest, ignore_errors=True)
        if owner is not None:
            # Unlink while still holding it: whoever takes a lock at this path later finds no file, or a file with
            # no tree, and never mistakes a live worktree for a dead one.
            with contextlib.suppress(FileNotFoundError):
                owner.path.unlink()
            owner.release()


def _choose_dir(
    layout: Layout, key: str, path: str | os.PathLike[str] | None
) -> tuple[Path, locks.FileLockHandle | None]:
    """Choose the worktree directory; default ones carry a lock file so ``verify`` can tell dead from live."""
    if path is not None:
        dest = Path(path)
        if dest.is_symlink():  # the tree would be made inside its target and outlive the block
            raise ConfigError(f"path={str(dest)!r} is a symbolic link; pass the directory itself")
        if dest.exists() and (not dest.is_dir() or any(dest.iterdir())):
            raise ConfigError(f"path={str(dest)!r} exists and is not an empty directory")
        return dest, None
    layout.worktrees.mkdir(exist_ok=True)
    dest = layout.new_worktree(key)
    # Created already locked: verify must never find it unlocked and take the live worktree for a dead one.
    return dest, locks.create_locked(layout.worktree_lock(dest))
