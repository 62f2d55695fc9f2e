"""Real upstream git repositories for tests, built with pygit2 alone (no ``git`` executable needed).

An :class:`UpstreamFactory` makes repositories under one directory; each :class:`Upstream` then changes its
repository the way a real upstream changes: new commits, branches, tags, merges, deleted refs, force-pushes and
a moved ``HEAD``. Commits use a fixed author and committer and a clock that advances one minute per commit, so the
same sequence of calls always produces the same object ids.

pygit2 is imported inside the methods that need it, so importing this module stays cheap.
"""

from __future__ import annotations

import os
import random
import threading
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import pygit2

__all__ = ["Upstream", "UpstreamFactory"]

#: The author and committer of every commit and tag the test upstreams make.
AUTHOR_NAME = "Repocache Test"
AUTHOR_EMAIL = "test@repocache.invalid"
#: The time of the first commit (2023-11-14 22:13:20 UTC); each later commit is one minute newer.
EPOCH = 1_700_000_000

FileContent = str | bytes
"""What a file in a test repository holds: text (written as UTF-8) or bytes."""


@dataclass(frozen=True)
class _Gitlink:
    """A submodule entry in a tree: the commit the superproject records."""

    commit: str


_Change = bytes | _Gitlink | None


def _to_bytes(content: FileContent) -> bytes:
    return content.encode("utf-8") if isinstance(content, str) else content


def _check_path(path: str) -> str:
    """Return ``path`` if it is a relative POSIX path that stays inside the repository."""
    pure = PurePosixPath(path)
    if not path or pure.is_absolute() or any(part in ("", ".", "..", ".git") for part in path.split("/")):
        raise ValueError(f"not a valid file path inside a repository: {path!r}")
    return path


def _check_name(name: str) -> str:
    """Return ``name`` if it can name a repository below the factory's base directory."""
    if not name or name.startswith("/") or any(part in ("", ".", "..") for part in name.split("/")):
        raise ValueError(f"not a valid repository name: {name!r}")
    return name


class Upstream:
    """One test repository that plays the part of a remote upstream.

    Every method opens the repository, changes it and closes it again, so an ``Upstream`` holds no open files and
    can be handed to another process (it pickles). Branch arguments are short names (``"main"``) or full ref
    names (``"refs/heads/main"``); a branch argument of ``None`` means the default branch the repository was
    created with. Revision arguments (``at``) accept a branch name, a tag name, a full ref name or a commit id.

    Attributes:
        path: the repository directory (the bare repository, or the working tree of a non-bare one).
        name: the name it was created under, unique within its factory (``"repo"``, ``"repo-2"``...).
        bare: whether the repository is bare.
        default_branch: the branch ``HEAD`` pointed to at creation, used when a branch argument is ``None``.
    """

    def __init__(self, path: Path, name: str, *, bare: bool = True, default_branch: str = "main") -> None:
        """Wrap an existing repository; :meth:`UpstreamFactory.create` is the usual way to get one.

        Args:
            path: the repository directory.
            name: a name for messages and URLs.
            bare: whether the repository is bare.
            default_branch: the branch used when a method's branch argument is ``None``.
        """
        self.path = Path(path)
        self.name = name
        self.bare = bare
        self.default_branch = default_branch
        self._tick = 0
        self._lock = threading.Lock()

    def __repr__(self) -> str:
        return f"Upstream(name={self.name!r}, path={str(self.path)!r})"

    def __getstate__(self) -> dict[str, object]:
        state = self.__dict__.copy()
        del state["_lock"]
        return state

    def __setstate__(self, state: dict[str, object]) -> None:
        self.__dict__.update(state)
        self._lock = threading.Lock()

    @property
    def url(self) -> str:
        """The repository as a local path string, the form ``git clone`` accepts."""
        return str(self.path)

    # -- reading -----------------------------------------------------------------------------------------------

    def refs(self) -> dict[str, str]:
        """Every reference except ``HEAD``, mapped to the object id it points to.

        Symbolic references are resolved to the id they end at. Annotated tags map to the tag object, not the
        commit, exactly as ``git ls-remote`` and ``git for-each-ref`` in a mirror report them.
        """
        with self._open() as repo:
            result: dict[str, str] = {}
            for name in repo.references:
                if name == "HEAD" or not name.startswith("refs/"):
                    continue
                result[name] = str(repo.references[name].resolve().target)
            return dict(sorted(result.items()))

    def head(self) -> str:
        """Where ``HEAD`` points: a ref name such as ``refs/heads/main``, or a commit id when it is detached."""
        with self._open() as repo:
            return str(repo.lookup_reference("HEAD").target)

    def resolve(self, rev: str | None = None) -> str:
        """Return the commit id that ``rev`` names.

        Args:
            rev: a branch, tag, full ref name or commit id; ``None`` means the default branch.

        Raises:
            KeyError: nothing by that name exists.
        """
        with self._open() as repo:
            return str(self._resolve_commit(repo, rev).id)

    def read(self, path: str, rev: str | None = None) -> bytes:
        """Return the contents of file ``path`` at ``rev`` (default: the default branch).

        Raises:
            KeyError: the file does not exist at that revision.
        """
        import pygit2

        with self._open() as repo:
            tree = self._resolve_commit(repo, rev).tree
            entry = tree[_check_path(path)]
            if not isinstance(entry, pygit2.Blob):
                raise KeyError(f"{path!r} is not a file at {rev or self.default_branch}")
            return bytes(entry.data)

    # -- writing -----------------------------------------------------------------------------------------------

    def commit(
        self,
        files: Mapping[str, FileContent | None] | None = None,
        *,
        message: str = "Update files",
        branch: str | None = None,
    ) -> str:
        """Add one commit on top of ``branch`` and return its id.

        Args:
            files: paths to write (text or bytes) or to delete (``None``); other files are kept. With no files
                the commit has its parent's tree.
            message: the commit message.
            branch: the branch to advance. A missing branch is created, starting from the commit ``HEAD``
                resolves to (or as a root commit when ``HEAD`` is unborn).

        Returns:
            The new commit's id.
        """
        changes: dict[str, _Change] = {
            _check_path(path): None if content is None else _to_bytes(content)
            for path, content in (files or {}).items()
        }
        with self._open() as repo:
            return self._commit(repo, self._branch_ref(branch), changes, message)

    def commits(self, n: int, *, branch: str | None = None, size: int = 0) -> list[str]:
        """Add ``n`` commits to ``branch`` quickly and return their ids, oldest first.

        Args:
            n: how many commits.
            branch: the branch to advance (created like :meth:`commit` does when missing).
            size: when positive, each commit adds a new file ``data/<tick>.bin`` of this many bytes of
                incompressible (pseudo-random, but deterministic) data, for making large repositories. When
                zero, each commit rewrites the small file ``counter.txt``.
        """
        if n < 0 or size < 0:
            raise ValueError("n and size must not be negative")
        ref = self._branch_ref(branch)
        ids: list[str] = []
        with self._open() as repo:
            for _ in range(n):
                tick = self._tick
                if size:
                    data = random.Random(f"{self.name}:{tick}").randbytes(size)
                    changes: dict[str, _Change] = {f"data/{tick:08d}.bin": data}
                else:
                    changes = {"counter.txt": f"{tick}\n".encode()}
                ids.append(self._commit(repo, ref, changes, f"Commit {tick}"))
        return ids

    def branch(self, name: str, at: str | None = None) -> str:
        """Point branch ``name`` at the commit ``at`` names (creating or moving it) and return that commit's id."""
        with self._open() as repo:
            target = self._resolve_commit(repo, at).id
            repo.references.create(self._branch_ref(name), target, force=True)
            return str(target)

    def tag(self, name: str, at: str | None = None, *, annotated: bool = False, message: str | None = None) -> str:
        """Create or replace tag ``name`` on the commit ``at`` names.

        Args:
            name: the tag's short name (``v1.0``).
            at: the revision to tag; ``None`` means the default branch.
            annotated: make a tag object (with the fixed tagger and the next clock tick) instead of a
                lightweight tag.
            message: the annotated tag's message (default ``"Release <name>"``).

        Returns:
            What ``refs/tags/<name>`` points to: the tag object for an annotated tag, else the commit.
        """
        import pygit2

        with self._open() as repo:
            target = self._resolve_commit(repo, at).id
            refname = f"refs/tags/{name}"
            if refname in repo.references:
                repo.references.delete(refname)
            if not annotated:
                repo.references.create(refname, target)
                return str(target)
            tag_id = repo.create_tag(
                name, target, pygit2.enums.ObjectType.COMMIT, self._signature(), message or f"Release {name}\n"
            )
            return str(tag_id)

    def delete_ref(self, refname: str) -> None:
        """Delete the reference with full name ``refname`` (``refs/heads/topic``, ``refs/tags/v1``).

        Raises:
            KeyError: no such reference.
        """
        if not refname.startswith("refs/"):
            raise ValueError(f"give the full reference name (refs/...), not {refname!r}")
        with self._open() as repo:
            repo.references.delete(refname)

    def merge(self, source_branch: str, into: str | None = None, *, message: str | None = None) -> str:
        """Merge ``source_branch`` into ``into`` with a two-parent merge commit and return its id.

        The merge's tree is ``into``'s tree with every file of ``source_branch`` laid over it (the source wins
        conflicts; files deleted on the source side are kept). This is not git's merge algorithm, only a real
        merge commit with a plausible tree.
        """
        with self._open() as repo:
            ours = self._resolve_commit(repo, into)
            theirs = self._resolve_commit(repo, source_branch)
            changes: dict[str, _Change] = dict(self._flatten(repo, theirs.tree))
            into_ref = self._branch_ref(into)
            text = message or f"Merge branch '{source_branch}' into {into or self.default_branch}\n"
            return self._commit(repo, into_ref, changes, text, parents=[ours.id, theirs.id], base=ours)

    def force_push(self, branch: str | None = None, *, to: str | None = None) -> str:
        """Rewrite ``branch`` the way ``git push --force`` does and return its new tip.

        Args:
            branch: the branch to rewrite.
            to: a revision to move the branch to. When ``None``, the tip is replaced by a new commit whose
                parent is the old tip's parent (a root commit if the tip had none), so the old tip is no longer
                reachable from the branch: a non-fast-forward update.
        """
        with self._open() as repo:
            ref = self._branch_ref(branch)
            if to is not None:
                target = self._resolve_commit(repo, to).id
                repo.references.create(ref, target, force=True)
                return str(target)
            tip = self._resolve_commit(repo, ref)
            parents = list(tip.parent_ids)[:1]
            changes: dict[str, _Change] = {"rewritten.txt": f"rewritten at tick {self._tick}\n".encode()}
            return self._commit(repo, ref, changes, "Rewrite history\n", parents=parents, base=tip)

    def set_head(self, branch: str) -> None:
        """Point ``HEAD`` at ``branch`` (which need not exist yet: an unborn ``HEAD`` is allowed)."""
        with self._open() as repo:
            repo.references.create("HEAD", self._branch_ref(branch), force=True)

    def add_submodule(
        self,
        path: str,
        url: str,
        *,
        commit: str | Upstream | None = None,
        branch: str | None = None,
        message: str | None = None,
    ) -> str:
        """Record a submodule at ``path``: a ``.gitmodules`` entry and a gitlink in the tree.

        Args:
            path: where the submodule lives in this repository.
            url: the URL written to ``.gitmodules`` (for example a ``git://`` URL from a test server).
            commit: the commit the gitlink records: a commit id, or an :class:`Upstream` whose ``HEAD`` is used.
                When ``None``, ``url`` must be a local repository path and its ``HEAD`` is used.
            branch: the branch that gets the commit.
            message: the commit message.

        Returns:
            The id of the commit that adds the submodule.
        """
        import pygit2

        _check_path(path)
        if isinstance(commit, Upstream):
            commit_id = commit.resolve("HEAD")
        elif commit is not None:
            commit_id = commit
        else:
            sub = pygit2.Repository(url)
            try:
                commit_id = str(sub.head.target)
            finally:
                sub.free()
        with self._open() as repo:
            ref = self._branch_ref(branch)
            existing = b""
            tip = self._tip_or_head(repo, ref)
            if tip is not None and ".gitmodules" in tip.tree:
                blob = tip.tree[".gitmodules"]
                existing = bytes(blob.data) if isinstance(blob, pygit2.Blob) else b""
            entry = f'[submodule "{path}"]\n\tpath = {path}\n\turl = {url}\n'.encode()
            changes: dict[str, _Change] = {".gitmodules": existing + entry, path: _Gitlink(commit_id)}
            return self._commit(repo, ref, changes, message or f"Add submodule {path}\n")

    # -- internals ---------------------------------------------------------------------------------------------

    @contextmanager
    def _open(self) -> Iterator[pygit2.Repository]:
        import pygit2

        with self._lock:
            repo = pygit2.Repository(str(self.path))
            try:
                yield repo
            finally:
                repo.free()

    def _branch_ref(self, branch: str | None) -> str:
        name = branch or self.default_branch
        return name if name.startswith("refs/") else f"refs/heads/{name}"

    def _signature(self) -> pygit2.Signature:
        import pygit2

        when = EPOCH + 60 * self._tick
        self._tick += 1
        return pygit2.Signature(AUTHOR_NAME, AUTHOR_EMAIL, when, 0)

    def _resolve_commit(self, repo: pygit2.Repository, rev: str | None) -> pygit2.Commit:
        import pygit2

        name = rev or self.default_branch
        if name == "HEAD" or name.startswith("refs/"):
            candidates = [name]
        else:
            candidates = [f"refs/heads/{name}", f"refs/tags/{name}"]
        for candidate in candidates:
            try:
                return repo.lookup_reference(candidate).resolve().peel(pygit2.Commit)
            except (KeyError, pygit2.GitError):
                continue
        try:
            return repo.revparse_single(name).peel(pygit2.Commit)
        except (KeyError, ValueError, pygit2.GitError) as exc:
            raise KeyError(f"no revision {name!r} in {self.name}") from exc

    def _flatten(self, repo: pygit2.Repository, tree: pygit2.Tree) -> Iterator[tuple[str, _Change]]:
        import pygit2

        index = pygit2.Index()
        index.read_tree(tree)
        for entry in index:
            if entry.mode == pygit2.enums.FileMode.COMMIT:
                yield entry.path, _Gitlink(str(entry.id))
            else:
                blob = repo[entry.id]
                assert isinstance(blob, pygit2.Blob)
                yield entry.path, bytes(blob.data)

    def _commit(
        self,
        repo: pygit2.Repository,
        ref: str,
        changes: Mapping[str, _Change],
        message: str,
        *,
        parents: list[pygit2.Oid] | None = None,
        base: pygit2.Commit | None = None,
    ) -> str:
        """Write a commit whose tree is ``base``'s (default: the branch tip's) with ``changes`` applied."""
        import pygit2

        if parents is None:
            base = self._tip_or_head(repo, ref)
            parents = [base.id] if base is not None else []
        index = pygit2.Index()
        if base is not None:
            index.read_tree(base.tree)
        for path, change in changes.items():
            if change is None:
                if path in index:
                    index.remove(path)
            elif isinstance(change, _Gitlink):
                index.add(pygit2.IndexEntry(path, pygit2.Oid(hex=change.commit), pygit2.enums.FileMode.COMMIT))
            else:
                blob = repo.create_blob(change)
                index.add(pygit2.IndexEntry(path, blob, pygit2.enums.FileMode.BLOB))
        tree = index.write_tree(repo)
        signature = self._signature()
        if not message.endswith("\n"):
            message += "\n"
        new = repo.create_commit(None, signature, signature, message, tree, parents)
        repo.references.create(ref, new, force=True)
        if not self.bare and self._head_ref(repo) == ref:
            repo.checkout_head(strategy=pygit2.enums.CheckoutStrategy.FORCE)  # type: ignore[no-untyped-call]
        return str(new)

    def _tip_or_head(self, repo: pygit2.Repository, ref: str) -> pygit2.Commit | None:
        """The commit a new commit on ``ref`` builds on: the branch tip, else ``HEAD``, else none (a root)."""
        import pygit2

        for name in (ref, "HEAD"):
            try:
                return repo.lookup_reference(name).resolve().peel(pygit2.Commit)
            except (KeyError, pygit2.GitError):
                continue
        return None

    @staticmethod
    def _head_ref(repo: pygit2.Repository) -> str:
        return str(repo.lookup_reference("HEAD").target)


class UpstreamFactory:
    """Makes :class:`Upstream` repositories under one base directory.

    Names are unique: asking twice for ``"repo"`` gives ``repo.git`` and ``repo-2.git``. Names may contain
    slashes (``"org/project"``) to make nested paths, as hosted URLs have. Safe to use from several threads and
    processes at once: a name is claimed by creating its directory.
    """

    def __init__(self, base_dir: Path) -> None:
        """Create a factory.

        Args:
            base_dir: where repositories are made; created on first use.
        """
        self.base_dir = Path(base_dir)

    def create(
        self,
        name: str = "repo",
        *,
        files: Mapping[str, FileContent] | None = None,
        bare: bool = True,
        default_branch: str = "main",
    ) -> Upstream:
        """Make a repository with one commit on ``default_branch``, so ``HEAD`` resolves.

        Args:
            name: the wanted name; a suffix ``-2``, ``-3``... is added if it is taken.
            files: files for the first commit, besides ``README.md``.
            bare: make a bare repository at ``<base_dir>/<name>.git`` (the default), or a repository with a
                checked-out working tree at ``<base_dir>/<name>``.
            default_branch: the branch ``HEAD`` points to.

        Returns:
            The new upstream.
        """
        import pygit2

        _check_name(name)
        path, final_name = self._claim(name, bare)
        pygit2.init_repository(str(path), bare=bare, initial_head=default_branch)
        upstream = Upstream(path, final_name, bare=bare, default_branch=default_branch)
        initial: dict[str, FileContent | None] = {"README.md": f"# {final_name}\n"}
        initial.update(files or {})
        upstream.commit(initial, message="Initial commit")
        return upstream

    def _claim(self, name: str, bare: bool) -> tuple[Path, str]:
        suffix = ".git" if bare else ""
        candidate = name
        number = 1
        while True:
            path = self.base_dir / f"{candidate}{suffix}"
            path.parent.mkdir(parents=True, exist_ok=True)
            try:
                os.mkdir(path)
            except FileExistsError:
                number += 1
                candidate = f"{name}-{number}"
                continue
            return path, candidate
