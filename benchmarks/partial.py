"""``python -m benchmarks.partial UPSTREAM``: full against partial mirrors of one upstream, side by side in one run.

For each filter (None, ``blob:none``, ``tree:0``) and each repetition (the order rotates), a fresh cache fills the
mirror over ``git://`` from a ``git daemon`` on 127.0.0.1 (a bare copy of ``UPSTREAM`` with
``uploadpack.allowFilter``), then pygit2 walks every commit of every ref (author, message, parents). Medians are
printed as a markdown table with the ratios to the full mirror.

``python -m benchmarks.partial --replay``: an LRU replay under a fixed budget. ``--repos`` synthetic upstreams
(made with ``git fast-import``: text files, each commit touching a few) are served by one daemon; a seeded
Zipf-like access pattern of ``--accesses`` calls (``cache.ensure``) is replayed against a cache whose budget holds
``--budget-full`` full mirrors, once per filter. It reports the repositories resident at the end and the clones
the replay cost.
"""

from __future__ import annotations

import argparse
import random
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


def synthetic(path: Path, *, commits: int, files: int, seed: int) -> None:
    """A bare repository at ``path``: ``commits`` commits on ``main``, each rewriting 5 of ``files`` text files."""
    rng = random.Random(seed)
    names = [f"src/m{n % 40}/f{n}.txt" for n in range(files)]
    chunks: list[bytes] = []
    for number in range(commits):
        message = f"change {number}\n".encode()
        chunks.append(b"commit refs/heads/main\ncommitter A <a@b> %d +0000\n" % (1_700_000_000 + number * 60))
        chunks.append(b"data %d\n%s" % (len(message), message))
        for name in names if number == 0 else rng.sample(names, 5):
            data = ("\n".join(f"line {rng.random()}" for _ in range(60)) + "\n").encode()
            chunks.append(f"M 100644 inline {name}\n".encode() + b"data %d\n%s\n" % (len(data), data))
        chunks.append(b"\n")
    subprocess.run(["git", "init", "-q", "--bare", str(path)], check=True)
    subprocess.run(["git", "-C", str(path), "fast-import", "--quiet"], input=b"".join(chunks), check=True)
    subprocess.run(["git", "-C", str(path), "symbolic-ref", "HEAD", "refs/heads/main"], check=True)
    subprocess.run(["git", "-C", str(path), "config", "uploadpack.allowFilter", "true"], check=True)
    subprocess.run(["git", "-C", str(path), "repack", "-a", "-d", "-q"], check=True)


def replay(args: argparse.Namespace) -> int:
    """The LRU replay: resident repositories and clones, full against each filter, under one budget."""
    with tempfile.TemporaryDirectory(prefix="repocache-partial-replay-") as scratch:
        base = Path(scratch)
        served = base / "served"
        served.mkdir()
        for number in range(args.repos):
            synthetic(served / f"r{number}.git", commits=args.commits, files=args.files, seed=number)
        rng = random.Random(7)
        weights = [1 / (rank + 1) for rank in range(args.repos)]
        pattern = rng.choices(range(args.repos), weights=weights, k=args.accesses)
        rows = []
        with GitDaemon(served) as daemon:
            urls = [daemon.url_for(served / f"r{number}.git") for number in range(args.repos)]
            with RepoCache(base / "probe") as probe:
                full_size = probe.ensure(urls[0]).size_bytes
            budget = full_size * args.budget_full
            for wanted in FILTERS:
                root = base / f"replay-{wanted}".replace(":", "-")
                started = time.perf_counter()
                with RepoCache(root, max_bytes=budget, filter=wanted) as cache:
                    for index in pattern:
                        cache.ensure(urls[index])
                    stats = cache.stats()
                    rows.append((wanted, len(cache.entries()), stats.misses, time.perf_counter() - started))
                shutil.rmtree(root)
    print(
        f"{args.repos} repositories of {args.commits} commits, {args.accesses} accesses (Zipf-like, seed 7), "
        f"budget {budget / 1e6:.1f} MB ({args.budget_full} full mirrors)"
    )
    print("| mirror | resident at the end | vs full | clones | vs full | replay time |")
    print("| --- | --- | --- | --- | --- | --- |")
    full_resident, full_clones = rows[0][1], rows[0][2]
    for wanted, resident, clones, seconds in rows:
        print(
            f"| {wanted or 'full'} | {resident} | {resident / full_resident:.2f}x | {clones} | "
            f"{clones / full_clones:.2f}x | {seconds:.1f} s |"
        )
    return 0


def _objects(path: Path) -> int:
    out = subprocess.run(
        ["git", "-C", str(path), "count-objects", "-v"], capture_output=True, text=True, check=True
    ).stdout
    counts = dict(line.split(": ", 1) for line in out.splitlines())
    return int(counts["count"]) + int(counts["in-pack"])


def main(argv: list[str] | None = None) -> int:
    """Run the comparison and print the table."""
    parser = argparse.ArgumentParser(prog="python -m benchmarks.partial", description=__doc__)
    parser.add_argument(
        "upstream", type=Path, nargs="?", help="a git repository to copy and serve (it is not modified)"
    )
    parser.add_argument("--reps", type=int, default=3, help="repetitions per filter (default 3)")
    parser.add_argument("--replay", action="store_true", help="run the LRU replay instead")
    parser.add_argument("--repos", type=int, default=24, help="replay: upstreams (default 24)")
    parser.add_argument("--commits", type=int, default=600, help="replay: commits per upstream (default 600)")
    parser.add_argument("--files", type=int, default=400, help="replay: files per upstream (default 400)")
    parser.add_argument("--accesses", type=int, default=300, help="replay: calls replayed (default 300)")
    parser.add_argument("--budget-full", type=int, default=4, help="replay: full mirrors the budget holds")
    args = parser.parse_args(argv)
    if args.replay:
        return replay(args)
    if args.upstream is None:
        parser.error("UPSTREAM is needed unless --replay is given")
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
