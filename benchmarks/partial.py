"""``python -m benchmarks.partial UPSTREAM``: full against partial mirrors of one upstream, side by side in one run.

For each filter (None, ``blob:none``, ``tree:0``) and each repetition (the order rotates), a fresh cache fills the
mirror over ``git://`` from a ``git daemon`` on 127.0.0.1 (a bare copy of ``UPSTREAM`` with
``uploadpack.allowFilter``), then pygit2 walks every commit of every ref (author, message, parents). Medians are
printed as a markdown table with the ratios to the full mirror. A first step towards the issue's benchmark: the
LRU replay under a fixed budget is not measured yet.
"""

from __future__ import annotations

import argparse
import shutil
import statistics
import subprocess
import tempfile
import time
from pathlib import Path

import pygit2

from repocache import RepoCache
from repocache.testing import GitDaemon

FILTERS: tuple[str | None, ...] = (None, "blob:none", "tree:0")


def _walk(path: Path) -> tuple[int, float]:
    """(commits walked, seconds): every commit reachable from any ref, with its author, message and parents."""
    started = time.perf_counter()
    repo = pygit2.Repository(str(path))
    try:
        seen: set[pygit2.Oid] = set()
        walker = repo.walk(None, pygit2.enums.SortMode.NONE)
        for name in repo.references:
            target = repo.references[name].resolve().target
            if isinstance(target, pygit2.Oid):
                obj = repo[target].peel(pygit2.Commit)
                walker.push(obj.id)
        for commit in walker:
            _ = (commit.author.name, commit.message, commit.parent_ids)
            seen.add(commit.id)
        return len(seen), time.perf_counter() - started
    finally:
        repo.free()


def _objects(path: Path) -> int:
    out = subprocess.run(
        ["git", "-C", str(path), "count-objects", "-v"], capture_output=True, text=True, check=True
    ).stdout
    counts = dict(line.split(": ", 1) for line in out.splitlines())
    return int(counts["count"]) + int(counts["in-pack"])


def main(argv: list[str] | None = None) -> int:
    """Run the comparison and print the table."""
    parser = argparse.ArgumentParser(prog="python -m benchmarks.partial", description=__doc__)
    parser.add_argument("upstream", type=Path, help="a git repository to copy and serve (it is not modified)")
    parser.add_argument("--reps", type=int, default=3, help="repetitions per filter (default 3)")
    args = parser.parse_args(argv)
    with tempfile.TemporaryDirectory(prefix="repocache-partial-bench-") as scratch:
        base = Path(scratch)
        served = base / "served"
        served.mkdir()
        copy = served / "upstream.git"
        subprocess.run(["git", "clone", "-q", "--mirror", str(args.upstream), str(copy)], check=True)
        subprocess.run(["git", "-C", str(copy), "config", "uploadpack.allowFilter", "true"], check=True)
        subprocess.run(["git", "-C", str(copy), "repack", "-a", "-d", "-q"], check=True)
        fills: dict[str | None, list[float]] = {f: [] for f in FILTERS}
        walks: dict[str | None, list[float]] = {f: [] for f in FILTERS}
        sizes: dict[str | None, int] = {}
        objects: dict[str | None, int] = {}
        commits: dict[str | None, int] = {}
        with GitDaemon(served) as daemon:
            url = daemon.url_for(copy)
            for rep in range(args.reps):
                order = FILTERS[rep % len(FILTERS) :] + FILTERS[: rep % len(FILTERS)]
                for wanted in order:
                    root = base / f"cache-{rep}-{wanted}".replace(":", "-")
                    with RepoCache(root) as cache:
                        started = time.perf_counter()
                        entry = cache.ensure(url, filter=wanted)
                        fills[wanted].append(time.perf_counter() - started)
                        sizes[wanted], objects[wanted] = entry.size_bytes, _objects(entry.path)
                        commits[wanted], seconds = _walk(entry.path)
                        walks[wanted].append(seconds)
                    shutil.rmtree(root)
    full_fill, full_walk = statistics.median(fills[None]), statistics.median(walks[None])
    print(f"upstream {args.upstream}, {commits[None]} commits, {args.reps} repetitions, medians")
    print("| mirror | fill | vs full | size | vs full | objects | walk | vs full |")
    print("| --- | --- | --- | --- | --- | --- | --- | --- |")
    for wanted in FILTERS:
        fill, walk = statistics.median(fills[wanted]), statistics.median(walks[wanted])
        print(
            f"| {wanted or 'full'} | {fill * 1000:.0f} ms | {fill / full_fill:.2f}x | {sizes[wanted] / 1e6:.2f} MB | "
            f"{sizes[wanted] / sizes[None]:.0%} | {objects[wanted]:,} | {walk * 1000:.1f} ms | "
            f"{walk / full_walk:.2f}x |"
        )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
