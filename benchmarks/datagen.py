"""Upstream repositories of controlled size, generated once and cached under ``benchmarks/.data/``.

Every repository is written by one ``git fast-import`` run fed by a generator in this module: a single line of
``commits`` commits on ``main``, each adding one file of ``blob_size`` incompressible (seeded pseudo-random, so
identical on every machine) bytes at ``d/<xx>/<n>.bin``. Each commit therefore makes five objects (commit, blob
and three trees), the trees stay small (two levels of fan-out), and the pack is as large as the blobs.
``branches`` and ``tags`` refs are spread along the history with fast-import ``reset`` commands. The result is
then packed the way a hosting server keeps repositories (``git repack -a -d`` with a reachability bitmap,
``git pack-refs --all``), so every clone of it costs the same.

fast-import writes about 250,000 objects a second here, where pygit2's ``create_blob``/``write_tree`` path makes
a few thousand: the large repository (500 MB, ~500k objects, 3,500 refs) takes a couple of minutes instead of
an hour. Generated repositories live in ``.data/gen-v<GENERATION>/<name>-<digest>/`` with a ``meta.json`` written
last; anything without one is an interrupted generation and is rebuilt. Bump ``GENERATION`` whenever the output
of the generator changes.
"""

from __future__ import annotations

import hashlib
import json
import os
import random
import shutil
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import asdict, dataclass
from pathlib import Path

__all__ = ["GENERATION", "SPECS", "Generated", "Spec", "generate", "link_copy"]

#: Version of the generator's output; part of the cache path, so changing it regenerates everything.
GENERATION = 1

DATA_DIR = Path(__file__).resolve().parent / ".data"


@dataclass(frozen=True)
class Spec:
    """The shape of one generated upstream.

    Attributes:
        name: the size class (``tiny``, ``small``, ``medium``, ``large``).
        commits: commits on ``main``.
        blob_size: bytes of incompressible data each commit adds.
        branches: extra branches, spread along the history.
        tags: lightweight tags, spread along the history.
        new_commit_size: bytes per commit of the commits added upstream by the "100 new commits" case.
    """

    name: str
    commits: int
    blob_size: int
    branches: int
    tags: int
    new_commit_size: int = 4096

    def digest(self) -> str:
        """A short hash of every field, so a changed spec never reuses an old repository."""
        text = json.dumps(asdict(self), sort_keys=True)
        return hashlib.sha256(f"{GENERATION}:{text}".encode()).hexdigest()[:10]


SPECS: dict[str, Spec] = {
    # --smoke: a few dozen kilobytes, generated in well under a second.
    "tiny": Spec("tiny", commits=20, blob_size=2048, branches=3, tags=5, new_commit_size=1024),
    # ~1 MB, ~500 objects, 30 refs.
    "small": Spec("small", commits=100, blob_size=10_000, branches=10, tags=20),
    # ~50 MB, ~25k objects, 500 refs.
    "medium": Spec("medium", commits=5_000, blob_size=10_000, branches=100, tags=400),
    # ~500 MB, ~500k objects, 3,500 refs.
    "large": Spec("large", commits=100_000, blob_size=5_000, branches=500, tags=3_000),
}


@dataclass(frozen=True)
class Generated:
    """A generated upstream on disk and what it holds."""

    spec: Spec
    path: Path
    size_bytes: int
    objects: int
    refs: int
    seconds: float

    def describe(self) -> str:
        """``small: 1.0 MB, 505 objects, 31 refs``."""
        return (
            f"{self.spec.name}: {self.size_bytes / 1e6:.1f} MB, {self.objects:,} objects, {self.refs:,} refs"
            f" (generated in {self.seconds:.1f} s)"
        )


def _stream(spec: Spec) -> Iterator[bytes]:
    """The fast-import stream for ``spec``, in chunks."""
    rng = random.Random(f"repocache-bench:{spec.name}:{spec.digest()}")
    epoch = 1_700_000_000
    author = b"Bench Upstream <bench@repocache.invalid>"
    branch_every = max(1, spec.commits // max(1, spec.branches))
    tag_every = max(1, spec.commits // max(1, spec.tags))
    chunk: list[bytes] = []
    pending = 0
    for n in range(1, spec.commits + 1):
        data = rng.randbytes(spec.blob_size)
        message = f"Commit {n}\n".encode()
        when = f"{epoch + 60 * n} +0000".encode()
        parts = [
            b"commit refs/heads/main\n",
            b"mark :%d\n" % n,
            b"author " + author + b" " + when + b"\n",
            b"committer " + author + b" " + when + b"\n",
            b"data %d\n" % len(message),
            message,
        ]
        if n > 1:
            parts.append(b"from :%d\n" % (n - 1))
        parts += [
            b"M 100644 inline d/%02x/%07d.bin\n" % (n % 256, n),
            b"data %d\n" % len(data),
            data,
            b"\n",
        ]
        chunk += parts
        pending += len(data) + 300
        if pending > 1 << 20:
            yield b"".join(chunk)
            chunk, pending = [], 0
    for i in range(spec.branches):
        at = min(spec.commits, 1 + i * branch_every)
        chunk.append(b"reset refs/heads/branch-%05d\nfrom :%d\n\n" % (i, at))
    for i in range(spec.tags):
        at = min(spec.commits, 1 + i * tag_every)
        chunk.append(b"reset refs/tags/v%05d\nfrom :%d\n\n" % (i, at))
    chunk.append(b"done\n")
    yield b"".join(chunk)


def _git(args: list[str], cwd: Path, env: dict[str, str]) -> str:
    result = subprocess.run(["git", *args], cwd=cwd, env=env, capture_output=True, text=True, check=False)
    if result.returncode != 0:
        raise RuntimeError(f"git {' '.join(args)} failed in {cwd}: {result.stderr.strip()}")
    return result.stdout


def _count(path: Path, env: dict[str, str]) -> tuple[int, int, int]:
    """(allocated bytes, objects, refs) of the repository at ``path``."""
    size = 0
    for directory, _dirs, files in os.walk(path):
        for name in files:
            size += os.lstat(os.path.join(directory, name)).st_blocks * 512
    counts = dict(line.split(": ", 1) for line in _git(["count-objects", "-v"], path, env).splitlines() if ": " in line)
    objects = int(counts.get("count", 0)) + int(counts.get("in-pack", 0))
    refs = len(_git(["for-each-ref", "--format=%(refname)"], path, env).splitlines())
    return size, objects, refs


def generate(spec: Spec, env: dict[str, str], *, data_dir: Path = DATA_DIR, log: bool = True) -> Generated:
    """The generated upstream of ``spec``: from the cache, or made now (a bare repository).

    Args:
        spec: what to make.
        env: the environment git runs with (isolated from the user's config).
        data_dir: where generated repositories are kept between runs.
        log: print progress to stderr.
    """
    home = data_dir / f"gen-v{GENERATION}" / f"{spec.name}-{spec.digest()}"
    meta = home / "meta.json"
    if meta.exists():
        info = json.loads(meta.read_text())
        return Generated(
            spec, home / "upstream.git", info["size_bytes"], info["objects"], info["refs"], info["seconds"]
        )
    if log:
        print(f"generating the {spec.name} upstream ({spec.commits:,} commits)...", file=sys.stderr, flush=True)
    shutil.rmtree(home, ignore_errors=True)
    home.mkdir(parents=True)
    staging = home / "staging.git"
    started = time.perf_counter()
    _git(["init", "-q", "--bare", "-b", "main", str(staging)], home, env)
    process = subprocess.Popen(
        ["git", "fast-import", "--quiet", "--done"],
        cwd=staging,
        env=env,
        stdin=subprocess.PIPE,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
    )
    assert process.stdin is not None and process.stderr is not None
    try:
        for piece in _stream(spec):
            process.stdin.write(piece)
        process.stdin.close()
    except BrokenPipeError:
        pass
    error = process.stderr.read().decode(errors="replace")
    if process.wait() != 0:
        raise RuntimeError(f"git fast-import failed for {spec.name}: {error.strip()}")
    # Pack it the way a hosting server would, so serving it costs what serving a real repository costs.
    _git(["repack", "-a", "-d", "-q", "--write-bitmap-index"], staging, env)
    _git(["pack-refs", "--all"], staging, env)
    seconds = time.perf_counter() - started
    final = home / "upstream.git"
    os.rename(staging, final)
    size, objects, refs = _count(final, env)
    meta.write_text(
        json.dumps({"spec": asdict(spec), "size_bytes": size, "objects": objects, "refs": refs, "seconds": seconds})
    )
    generated = Generated(spec, final, size, objects, refs, seconds)
    if log:
        print(f"  {generated.describe()}", file=sys.stderr, flush=True)
    return generated


def link_copy(source: Path, dest: Path) -> None:
    """Copy the repository ``source`` to ``dest``, hard-linking pack files (git never modifies them in place).

    The copy can then be changed (new commits, moved refs) without touching the cached original.
    """
    for directory, dirs, files in os.walk(source):
        rel = Path(directory).relative_to(source)
        target = dest / rel
        target.mkdir(parents=True, exist_ok=True)
        for name in files:
            src = Path(directory, name)
            if rel.parts[:2] == ("objects", "pack"):
                try:
                    os.link(src, target / name)
                    continue
                except OSError:
                    pass
            shutil.copy2(src, target / name)
        dirs.sort()
