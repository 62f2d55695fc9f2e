"""A mirror on disk: opening and validating it, reading its refs, size and shape, its config, and sweeping it.

Nothing here talks to upstream or runs git: these are the reads (pygit2, or plain files where that is faster) and
the small writes (the config, a restored artifact's clean-up, a killed transfer's leftovers) the rest of the cache
decides from.
"""

from __future__ import annotations

import contextlib
import hashlib
import logging
import os
import shutil
import stat
from dataclasses import dataclass
from pathlib import Path

import pygit2

from repocache.keys import RepoURL

logger = logging.getLogger("repocache")

# libgit2 refuses to open a repository whose config names an extension it was not told about; a partial clone
# made by git may carry ``extensions.partialclone``. Registering it is process-wide and only lets pygit2 open such
# a repository: it reads what is present and never fetches what is absent (see repocache.gitops.partial).
with contextlib.suppress(AttributeError, pygit2.GitError):
    if "partialclone" not in pygit2.settings.extensions:
        pygit2.settings.set_extensions([*pygit2.settings.extensions, "partialclone"])


_LEFTOVER_PACK_PREFIXES = ("tmp_pack_", "pack_git2_", "tmp_idx_", "tmp_rev_", ".tmp-")  # .tmp-: git pack-objects
_GIT_LOCK_FILES = (
    "HEAD.lock",
    "config.lock",
    "packed-refs.lock",
    "shallow.lock",
    "index.lock",
    "FETCH_HEAD.lock",
    "objects/info/commit-graph.lock",
    "objects/pack/multi-pack-index.lock",
)


# -- repository helpers -------------------------------------------------------------------------------------


def open_repository(path: Path) -> pygit2.Repository:
    """Open the mirror at ``path`` with pygit2."""
    return pygit2.Repository(str(path), pygit2.enums.RepositoryOpenFlag.NO_SEARCH)


def validate_mirror(path: Path) -> str | None:
    """Why the directory is not a usable mirror, or None when it is.

    ``pygit2.Repository`` opens a half-cloned repository without complaint, and a repository whose objects were
    borrowed through alternates that are gone looks whole until something reads an object. So the check is that
    every ref's objects are present, cheaply: each ref's tip (annotated tags peeled to what they name) and, for a
    commit, its root tree. A symbolic ref naming a missing ref (HEAD of a mirror whose upstream's default branch
    does not exist) is accepted, as git accepts it, as long as at least one ref names an object: a mirror with
    no such ref, or with any ref whose tip or root tree is missing, is refused. This is not ``git fsck``: history
    below the tips and the entries of the root trees are not read. In a partial mirror (a promisor remote, see
    :mod:`repocache.partial`) only the tips themselves must be present: its filter leaves out trees or blobs on
    purpose, and git fetches them on demand.
    """
    try:
        repo = open_repository(path)
    except (pygit2.GitError, KeyError, ValueError) as exc:
        return f"cannot be opened as a repository ({exc})"
    try:
        if not repo.is_bare:
            return "is not a bare repository"
        names = repo.references.iterator()
        if next(iter(names), None) is None:
            return "has no refs (unfinished clone or empty upstream)"
        missing = _missing_objects(repo)
        if missing is not None:
            return f"is corrupt ({missing})"
        if repo.head_is_unborn:
            head = repo.references.get("HEAD")
            target = head.target if head is not None else None
            if isinstance(target, str) and repo.references.get(target) is None and target.startswith("refs/"):
                logger.debug("mirror %s: HEAD names the missing ref %s (as upstream does)", path, target)
            return None
        repo.head.peel()
        return None
    except (pygit2.GitError, KeyError, ValueError) as exc:
        return f"is corrupt ({exc})"
    finally:
        repo.free()


_PEEL_LIMIT = 32  # tags of tags: git itself gives up peeling well before a chain this long


def _missing_objects(repo: pygit2.Repository) -> str | None:
    """What is missing: the tip (peeled through annotated tags) or root tree of a ref, or any ref naming an object;
    None when every ref is whole.

    Cost: a lookup in the pack indexes per object, and reading the tag and commit objects the tips name (a few
    hundred bytes each, decompressed); trees and blobs are only looked up. Shared tips are checked once.
    """
    odb = repo.odb
    usable = 0
    checked: set[pygit2.Oid] = set()
    partial = _is_partial(repo)
    for reference in repo.listall_reference_objects():
        target = reference.target
        if isinstance(target, str):
            continue  # symbolic: its target is a ref of its own, checked as such (or missing, as HEAD may be)
        if partial:
            if not odb.exists(target):
                return f"the object {target} that {reference.name} names is missing"
            usable += 1
            continue
        problem = _missing_below(repo, odb, reference.name, target, checked)
        if problem is not None:
            return problem
        usable += 1
    if usable == 0:
        return "no ref names an object, only symbolic refs to missing refs"
    return None


def _is_partial(repo: pygit2.Repository) -> bool:
    """Whether the mirror is a partial clone: its origin is a promisor remote (objects may be left out)."""
    try:
        return bool(repo.config.get_bool("remote.origin.promisor"))
    except (KeyError, pygit2.GitError, ValueError):
        return False


def _missing_below(
    repo: pygit2.Repository, odb: pygit2.Odb, name: str, oid: pygit2.Oid, checked: set[pygit2.Oid]
) -> str | None:
    """Whether the object a ref names, the objects its annotated tags lead to and a commit's tree are present."""
    for _ in range(_PEEL_LIMIT):
        if oid in checked:
            return None
        if not odb.exists(oid):
            return f"the object {oid} that {name} names is missing: lost, or borrowed through alternates"
        checked.add(oid)
        kind, _size = odb.read_header(oid)
        if kind not in (pygit2.enums.ObjectType.TAG, pygit2.enums.ObjectType.COMMIT):
            return None  # a tree or a blob (tags of trees exist): present, and not read
        obj = repo.get(oid)
        if obj is None:
            return f"the object {oid} that {name} names is missing"
        if isinstance(obj, pygit2.Tag):
            oid = obj.target
            continue
        if isinstance(obj, pygit2.Commit):
            tree = obj.tree_id
            if not odb.exists(tree):
                return f"the tree {tree} of the commit {oid} that {name} names is missing"
        return None
    return f"{name} names a chain of more than {_PEEL_LIMIT} tags"


def describe_mirror(path: Path) -> tuple[int, str]:
    """(number of refs, where HEAD points) of the mirror at ``path``."""
    repo = open_repository(path)
    try:
        head = repo.references.get("HEAD")
        target = head.target if head is not None else ""
        return sum(1 for _ in repo.references.iterator()), str(target)
    finally:
        repo.free()


def disk_usage(path: Path) -> int:
    """Allocated bytes of everything under ``path`` (blocks, not apparent sizes; hard links counted once)."""
    total = 0
    seen: set[tuple[int, int]] = set()
    stack = [str(path)]
    while stack:
        current = stack.pop()
        try:
            with os.scandir(current) as entries:
                for entry in entries:
                    try:
                        st = entry.stat(follow_symlinks=False)
                    except FileNotFoundError:
                        continue
                    if entry.is_dir(follow_symlinks=False):
                        stack.append(entry.path)
                    if st.st_nlink > 1:
                        if (st.st_dev, st.st_ino) in seen:
                            continue
                        seen.add((st.st_dev, st.st_ino))
                    total += st.st_blocks * 512
        except FileNotFoundError:
            continue
    return total


def refs_digest(path: Path) -> str:
    """Lower-case hex SHA-256 of the refs of the mirror at ``path`` (:func:`ref_tips`): ``<target> <name>`` lines,
    sorted by name, each ending in a newline. Two mirrors with the same refs have the same digest."""
    digest = hashlib.sha256()
    for name, target in sorted(ref_tips(path).items()):
        digest.update(f"{target} {name}\n".encode("utf-8", "surrogateescape"))
    return digest.hexdigest()


def ref_tips(path: Path) -> dict[str, str]:
    """Every ref of the mirror at ``path`` with what it points to, read from the files (no libgit2, no git).

    Loose refs override ``packed-refs``, as git reads them; peeled lines (``^``) are skipped. Comparing the result
    before and after a fetch says whether upstream changed, at the cost of reading ``packed-refs`` once (about
    1 ms for a few thousand refs).
    """
    tips: dict[str, str] = {}
    try:
        with open(path / "packed-refs", encoding="utf-8", errors="replace") as packed:
            for line in packed:
                if line.startswith(("#", "^")):
                    continue
                target, _, name = line.rstrip("\n").partition(" ")
                if name:
                    tips[name] = target
    except FileNotFoundError:
        pass
    refs = path / "refs"
    for directory, _dirs, files in os.walk(refs):
        for name in files:
            if name.endswith(".lock"):
                continue
            file = Path(directory) / name
            try:
                tips[file.relative_to(path).as_posix()] = file.read_text(encoding="utf-8", errors="replace").strip()
            except (FileNotFoundError, IsADirectoryError):
                continue
    with contextlib.suppress(FileNotFoundError):
        tips["HEAD"] = (path / "HEAD").read_text(encoding="utf-8", errors="replace").strip()
    return tips


def newest_commit_time(path: Path) -> float | None:
    """The committer time of the commit HEAD points to in the mirror at ``path``; None when it has none."""
    try:
        repo = open_repository(path)
    except pygit2.GitError:
        return None
    try:
        commit = repo.head.peel(pygit2.Commit)
        return float(commit.commit_time)
    except (pygit2.GitError, KeyError, ValueError, AttributeError):
        return None
    finally:
        repo.free()


def sweep_mirror(path: Path, *, dry_run: bool = False) -> list[Path]:
    """Delete what a killed git or libgit2 leaves inside a mirror: temporary packs and stale ``*.lock`` files.

    The caller must hold the repository's fetch lock (or its exclusive lock), so no transfer or maintenance of
    ours is running in the mirror. With ``dry_run``, only list them.
    """
    removed: list[Path] = []
    pack_dir = path / "objects" / "pack"
    with contextlib.suppress(FileNotFoundError), os.scandir(pack_dir) as entries:
        for entry in entries:
            if entry.name.startswith(_LEFTOVER_PACK_PREFIXES):
                removed.append(Path(entry.path))
    objects = path / "objects"
    with contextlib.suppress(FileNotFoundError), os.scandir(objects) as entries:
        for entry in entries:
            if entry.name.startswith(("tmp_obj_", "incoming-")):
                removed.append(Path(entry.path))
    for name in _GIT_LOCK_FILES:
        candidate = path / name
        if candidate.exists():
            removed.append(candidate)
    refs = path / "refs"
    for directory, _dirs, files in os.walk(refs):
        removed.extend(Path(directory, name) for name in files if name.endswith(".lock"))
    with contextlib.suppress(FileNotFoundError), os.scandir(objects / "info") as entries:
        for entry in entries:
            if entry.name.startswith("tmp_graph_") or entry.name.endswith(".lock"):
                removed.append(Path(entry.path))  # a commit-graph write killed before its rename
    removed = sorted(set(removed))
    if dry_run:
        return removed
    for item in removed:
        if item.is_dir() and not item.is_symlink():
            shutil.rmtree(item, ignore_errors=True)
        else:
            with contextlib.suppress(FileNotFoundError):
                item.unlink()
    if removed:
        logger.info("swept %d leftovers of an interrupted transfer in %s", len(removed), path)
    return removed


# -- what a mirror may contain ------------------------------------------------------------------------------

# A restored mirror keeps only these entries: the data git needs to serve refs and objects. Everything else can
# change what git does (config, hooks/, info/grafts, info/attributes, commondir, shallow, worktrees/, remotes/,
# branches/, ...) and comes from a cold store that other hosts can write to, so it is dropped.
_MIRROR_DATA = frozenset({"HEAD", "objects", "refs", "packed-refs"})


def mirror_config(url: RepoURL) -> str:
    """The whole ``config`` of a mirror of ``url``, as ``git clone --mirror`` writes it (credential-free URL).

    Nothing else belongs there: no URL rewriting, no commands, no hooks path, no alternates, no extensions. A
    partial mirror (``url.filter``) keeps what ``git clone --filter`` writes and every later fetch needs:
    ``repositoryformatversion = 1``, ``remote.origin.promisor`` and ``remote.origin.partialclonefilter`` (without
    them a fetch would bring every object the filter left out, and git could not fetch a missing one).
    """
    value = url.transfer_url.replace("\\", "\\\\").replace('"', '\\"')
    if value != value.strip() or any(c in value for c in ";#"):
        value = f'"{value}"'  # quoted as git quotes it: otherwise ';' and '#' would start a comment
    version, partial = "0", ""
    if url.filter is not None:
        version, partial = "1", f"\tpromisor = true\n\tpartialclonefilter = {url.filter}\n"
    return (
        f"[core]\n\trepositoryformatversion = {version}\n\tfilemode = true\n\tbare = true\n"
        f'[remote "origin"]\n\turl = {value}\n\tfetch = +refs/*:refs/*\n\tmirror = true\n{partial}'
    )


def ensure_mirror_config(path: Path, url: RepoURL) -> bool:
    """Make the mirror's ``config`` exactly :func:`mirror_config`, atomically; True when it had to be rewritten.

    Fetches call this first, so they never honour URL rewriting (``url.*.insteadOf``), commands
    (``core.sshCommand``, ``core.fsmonitor``, ...) or a hooks path from a config the cache did not write. The
    caller holds the repository's fetch lock (or owns the directory).
    """
    wanted = mirror_config(url)
    config = path / "config"
    try:
        with open(config, encoding="utf-8", errors="replace") as current:
            if current.read(len(wanted) + 1) == wanted:
                return False
    except FileNotFoundError:
        pass
    temporary = path / "config.lock"
    with open(temporary, "w", encoding="utf-8") as out:
        out.write(wanted)
    os.replace(temporary, config)
    return True


#: Written beside a commit-graph that came from an artifact, until ``git commit-graph verify`` has compared every
#: entry with the commit it describes (:func:`verify_commit_graph`). Never packed into an artifact, and dropped
#: from one, so only this host's own restore writes it.
GRAPH_UNVERIFIED = "commit-graph.unverified"


def sanitize_restored_mirror(path: Path, url: RepoURL, *, keep_commit_graph: bool = True) -> None:
    """Turn an unpacked cold-store artifact into data only: the mirror's refs and objects, and a fresh config.

    Keeps ``HEAD``, ``refs/``, ``packed-refs`` and ``objects/``; of ``objects/info/`` (where alternates and
    http-alternates would borrow objects from elsewhere) only a ``commit-graph`` file that passes
    :func:`check_restored_commit_graph` (and only with ``keep_commit_graph``), marked unverified
    (:data:`GRAPH_UNVERIFIED`) until :func:`verify_commit_graph` has checked it against the commits. Drops
    everything else (``config``, ``hooks/``, ``info/``, ``commondir``, ``shallow``, ``worktrees/``, ``remotes/``,
    split graph chains, ...), then writes the config a clone of ``url`` has. Links were already refused by the
    unpacking.
    """
    with os.scandir(path) as entries:
        doomed = [Path(entry.path) for entry in entries if entry.name not in _MIRROR_DATA]
    info = path / "objects" / "info"
    kept_graph = False
    if info.is_dir() and not info.is_symlink():
        with os.scandir(info) as entries:
            doomed += [Path(entry.path) for entry in entries if entry.name != "commit-graph"]
        graph = info / "commit-graph"
        if graph.exists() or graph.is_symlink():
            if keep_commit_graph and check_restored_commit_graph(graph):
                kept_graph = True
            else:
                doomed.append(graph)
    else:
        doomed.append(info)
    for item in doomed:
        if item.is_dir() and not item.is_symlink():
            shutil.rmtree(item)
        else:
            with contextlib.suppress(FileNotFoundError):
                item.unlink()
    (path / "objects" / "info").mkdir(parents=True, exist_ok=True)
    (path / "refs").mkdir(exist_ok=True)
    if kept_graph:
        (info / GRAPH_UNVERIFIED).write_bytes(b"")
    ensure_mirror_config(path, url)


_GRAPH_HASH_BYTES = {1: 20, 2: 32}  # the trailing checksum of a commit-graph: SHA-1 or SHA-256, by hash version
_GRAPH_MAX_BYTES = 1 << 30


def check_restored_commit_graph(graph: Path) -> bool:
    """Whether a commit-graph unpacked from an artifact may stay: data that git and libgit2 read as it is.

    It must be a regular file (not a link) no larger than 1 GiB, one standalone graph (no base graphs) in a format
    libgit2 reads (see :func:`commit_graph_state`), whose trailing checksum matches its bytes (a graph corrupted
    on the host that packed it). A graph that fails is dropped: maintenance writes a new one when it is due, and a
    mirror without a graph is only slower to walk.
    """
    try:
        st = os.lstat(graph)
        if not stat.S_ISREG(st.st_mode) or st.st_size > _GRAPH_MAX_BYTES or st.st_size < 8:
            return False
        if commit_graph_state(graph.parent.parent.parent) != "ok":
            return False
        with open(graph, "rb") as handle:
            header = handle.read(8)
            width = _GRAPH_HASH_BYTES.get(header[5])
            if width is None or header[7] != 0 or st.st_size < 8 + width:
                return False
            digest = hashlib.sha1() if width == 20 else hashlib.sha256()
            digest.update(header)
            left = st.st_size - 8 - width
            while left > 0:
                chunk = handle.read(min(left, 1 << 20))
                if not chunk:
                    return False
                digest.update(chunk)
                left -= len(chunk)
            return handle.read(width) == digest.digest()
    except OSError:
        return False


_LOOSE_SAMPLE = "17"  # git gc --auto's sample directory: loose objects are estimated from one of the 256
_GRAPH_CHUNKS_LIBGIT2_READS = {b"OIDF", b"OIDL", b"CDAT", b"EDGE", b"BIDX", b"BDAT"}


@dataclass(frozen=True)
class MirrorShape:
    """What maintenance decides from: counted from a few directory listings and stats, never by reading objects.

    Attributes:
        packs: pack files in ``objects/pack``.
        pack_bytes: their total size.
        largest_pack_bytes: the size of the largest.
        loose_objects: loose objects, estimated from the directory ``objects/17`` (times 256) as ``git gc``
            does; exact when ``exact`` was asked for.
        loose_refs: ref files under ``refs/`` (refs not yet in ``packed-refs``).
        commit_graph: ``"missing"``, ``"unreadable"`` (a format libgit2 rejects: generation data v2 chunks, or a
            split chain it does not read) or ``"ok"``.
        graph_stale_bytes: bytes of the packs written after the commit-graph (all of them when there is none).
        graph_unverified: the commit-graph came from an artifact and has not been checked against the commits
            yet (:data:`GRAPH_UNVERIFIED`).
    """

    packs: int
    pack_bytes: int
    largest_pack_bytes: int
    loose_objects: int
    loose_refs: int
    commit_graph: str
    graph_stale_bytes: int
    graph_unverified: bool = False


def commit_graph_state(path: Path) -> str:
    """``"missing"``, ``"unreadable"`` (libgit2 would ignore it) or ``"ok"`` for the mirror at ``path``.

    libgit2 (1.9) reads only ``objects/info/commit-graph`` (not split chains) and rejects a whole file that
    has a chunk it does not know, such as the generation data v2 chunks (``GDA2``, ``GDO2``) that git writes by
    default since 2.31: such a graph is invisible to pygit2.
    """
    graph = path / "objects" / "info" / "commit-graph"
    try:
        with open(graph, "rb") as handle:
            header = handle.read(8)
            if len(header) < 8 or header[:4] != b"CGPH":
                return "unreadable"
            table = handle.read(12 * (header[6] + 1))
    except FileNotFoundError:
        chain = path / "objects" / "info" / "commit-graphs" / "commit-graph-chain"
        return "unreadable" if chain.exists() else "missing"
    except OSError:
        return "unreadable"
    chunks = {table[i : i + 4] for i in range(0, 12 * header[6], 12)}
    return "ok" if chunks <= _GRAPH_CHUNKS_LIBGIT2_READS else "unreadable"


def graph_unverified(path: Path) -> bool:
    """Whether the mirror at ``path`` has a commit-graph from an artifact not yet verified against its commits."""
    return (path / "objects" / "info" / GRAPH_UNVERIFIED).exists()


def mirror_shape(path: Path, *, exact: bool = False) -> MirrorShape:
    """Count packs, loose objects and loose refs of the mirror at ``path`` (a few directory listings).

    Raises:
        FileNotFoundError: the mirror is gone.
    """
    pack_dir = path / "objects" / "pack"
    sizes: list[int] = []
    stale = 0
    graph_state = commit_graph_state(path)
    graph_mtime = None
    if graph_state == "ok":
        with contextlib.suppress(FileNotFoundError):
            graph_mtime = (path / "objects" / "info" / "commit-graph").stat().st_mtime
    with os.scandir(pack_dir) as entries:
        for entry in entries:
            if not entry.name.endswith(".pack") or entry.name.startswith(_LEFTOVER_PACK_PREFIXES):
                continue
            try:
                st = entry.stat()
            except FileNotFoundError:
                continue
            sizes.append(st.st_size)
            if graph_mtime is None or st.st_mtime > graph_mtime:
                stale += st.st_size
    loose = 0
    objects_dir = path / "objects"
    samples = [e.name for e in listing_dirs(objects_dir) if len(e.name) == 2] if exact else [_LOOSE_SAMPLE]
    for name in samples:
        with contextlib.suppress(FileNotFoundError), os.scandir(objects_dir / name) as entries:
            loose += sum(1 for _ in entries)
    if not exact:
        loose *= 256
    loose_refs = 0
    for _directory, _dirs, files in os.walk(path / "refs"):
        loose_refs += sum(1 for name in files if not name.endswith(".lock"))
    return MirrorShape(
        packs=len(sizes),
        pack_bytes=sum(sizes),
        largest_pack_bytes=max(sizes, default=0),
        loose_objects=loose,
        loose_refs=loose_refs,
        commit_graph=graph_state,
        graph_stale_bytes=stale,
        graph_unverified=graph_state == "ok" and graph_unverified(path),
    )


def listing_dirs(directory: Path) -> list[os.DirEntry[str]]:
    """The subdirectories of ``directory`` (empty when it does not exist)."""
    try:
        with os.scandir(directory) as entries:
            return [entry for entry in entries if entry.is_dir(follow_symlinks=False)]
    except FileNotFoundError:
        return []
