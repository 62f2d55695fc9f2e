"""Worktrees: resolving a ref in a mirror and checking a commit out into a new directory that borrows its objects."""

from __future__ import annotations

import re
from pathlib import Path

import pygit2

from repocache.errors import GitError
from repocache.gitops.mirror import open_repository
from repocache.gitops.run import GitOptions, Throttle, run_git
from repocache.keys import RepoURL, scrub

# -- worktrees ----------------------------------------------------------------------------------------------


def resolve_commit(path: Path, ref: str) -> tuple[str, str | None]:
    """Resolve ``ref`` (branch, tag, full ref name, commit id or any revision) in the mirror at ``path``.

    Returns:
        (commit id, branch name when ``ref`` names a branch, else None).

    Raises:
        KeyError: nothing in the mirror is called ``ref``, or it does not lead to a commit.
    """
    repo = open_repository(path)
    try:
        try:
            obj = repo.revparse_single(ref)
            commit = obj.peel(pygit2.Commit)
        except (KeyError, ValueError, pygit2.GitError, pygit2.InvalidSpecError) as exc:
            raise KeyError(ref) from exc
        branch = None
        for candidate in (ref, f"refs/heads/{ref}"):
            if candidate.startswith("refs/heads/") and repo.references.get(candidate) is not None:
                branch = candidate[len("refs/heads/") :]
                break
        if ref == "HEAD" and not repo.head_is_detached:
            head_target = repo.references["HEAD"].target
            if isinstance(head_target, str) and head_target.startswith("refs/heads/"):
                branch = head_target[len("refs/heads/") :]
        return str(commit.id), branch
    finally:
        repo.free()


def make_worktree(
    mirror: Path,
    dest: Path,
    commit: str,
    branch: str | None,
    url: RepoURL,
    options: GitOptions,
    *,
    submodules: bool = False,
) -> None:
    """Check ``commit`` out into the empty directory ``dest``, borrowing the mirror's objects through alternates.

    Nothing is written to the mirror: the new repository's ``objects/info/alternates`` points at it, so objects
    are read in place and never copied. ``origin`` is set to the upstream URL (credential-free). Submodules are
    left uninitialised unless ``submodules`` is True.

    Raises:
        GitError: the checkout failed; ``dest`` may hold debris the caller removes.
    """
    _init_borrowing(dest, mirror, url)
    if options.git is not None:
        # git runs once, for the checkout: a `git init` and a `git config` process cost more than the checkout
        # itself for small trees.
        throttle = Throttle(None, url.url, "worktree", options.progress_interval)
        args = ["checkout", "-q", *(["-B", branch, commit] if branch else ["--detach", commit])]
        run_git(args, url, options, throttle, GitError, cwd=dest)
        if submodules:
            run_git(
                ["submodule", "update", "--init", "--recursive", "--progress"],
                url,
                options,
                throttle,
                GitError,
                cwd=dest,
            )
        return
    try:
        repo = pygit2.Repository(str(dest))  # opened after the alternates exist, so it reads the mirror's objects
        try:
            target = repo[commit].peel(pygit2.Commit)
            _checkout_libgit2(repo, target.tree)
            if branch:
                repo.branches.local.create(branch, target, force=True)
                repo.set_head(f"refs/heads/{branch}")
            else:
                repo.set_head(target.id)
            if submodules:
                for submodule in repo.submodules:
                    submodule.init()
                repo.submodules.update(init=True)
        finally:
            repo.free()
    except (pygit2.GitError, KeyError, OSError) as exc:
        raise GitError(url.url, f"checkout of {commit} failed: {scrub(str(exc))}") from None


# A submodule `update = !command` line: git refuses it from .gitmodules (it is only honoured from .git/config);
# libgit2 cannot parse it, and any submodule lookup fails, which fails the whole checkout.
_UPDATE_COMMAND = re.compile(rb"^[ \t]*update[ \t]*=[ \t]*\"?!", re.IGNORECASE | re.MULTILINE)


def _checkout_libgit2(repo: pygit2.Repository, tree: pygit2.Tree) -> None:
    """Check ``tree`` out into the new repository's working tree and index with libgit2.

    libgit2's checkout looks up every submodule (a gitlink) it creates the directory of, and the lookup reads
    ``.gitmodules``; a ``update = !command`` entry there makes it fail, so a hostile upstream would block every
    worktree on a host without git. Such a tree is checked out with a ``.gitmodules`` that lacks those lines
    (written to the worktree's own object store, never the mirror), then the real file is put back and indexed:
    the result is the tree as committed, and no command is run or configured.
    """
    strategy = pygit2.enums.CheckoutStrategy.FORCE
    entry = tree[".gitmodules"] if ".gitmodules" in tree else None  # noqa: SIM401 - pygit2.Tree has no get()
    original = bytes(entry.data) if isinstance(entry, pygit2.Blob) else b""
    if not _UPDATE_COMMAND.search(original):
        repo.checkout_tree(tree, strategy=strategy)  # type: ignore[no-untyped-call]
        return
    assert entry is not None
    harmless = _UPDATE_COMMAND.sub(b"#", original)
    builder = repo.TreeBuilder(tree)
    builder.insert(".gitmodules", repo.create_blob(harmless), entry.filemode)
    repo.checkout_tree(repo[builder.write()], strategy=strategy)  # type: ignore[no-untyped-call]
    workdir = Path(repo.workdir)
    (workdir / ".gitmodules").write_bytes(original)
    index = repo.index
    index.read()
    index.add(".gitmodules")
    index.write()


def _init_borrowing(dest: Path, mirror: Path, url: RepoURL) -> None:
    """Make an empty repository in ``dest`` whose ``origin`` is ``url`` and whose objects are the mirror's."""
    try:
        repo = pygit2.init_repository(str(dest), bare=False)
        try:
            repo.config["remote.origin.url"] = url.fetch_url
        finally:
            repo.free()
        info = dest / ".git" / "objects" / "info"
        info.mkdir(parents=True, exist_ok=True)
        (info / "alternates").write_text(str(mirror / "objects") + "\n", encoding="utf-8")
    except (pygit2.GitError, OSError) as exc:
        raise GitError(url.url, f"cannot create a repository in {dest}: {scrub(str(exc))}") from None
