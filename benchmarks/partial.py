"""``python -m benchmarks.partial``: full against partial mirrors, side by side in one run (issue 22).

For each upstream (``--sizes``: the datagen repositories ``small``, ``medium``, ``large`` and ``source``, a
repository of a realistic shape: thousands of paths in nested directories, compressible source-like text, each
commit editing a few lines of a few files) and each repetition, every side fills a fresh mirror over ``git://``
from a ``git daemon`` on 127.0.0.1 (a hard-linked copy of the upstream with ``uploadpack.allowFilter``). The sides
are repocache (``cache.ensure(url, filter=...)`` into a fresh cache) and, with ``--git``, plain ``git clone
--mirror --filter=...`` of the same URL, for each filter (None, ``blob:none``, ``tree:0``); their order rotates
with each repetition. After each fill pygit2 walks every commit of every ref (author, message, parents). The
figures are medians; the machine's load average is read before and after each upstream.

The LRU replay (``--replay``, on by default): ``--repos`` source-shaped upstreams of mixed sizes (seeded,
log-uniform commits and paths) are served by one daemon; a seeded Zipf-like access pattern of ``--accesses``
calls (``cache.ensure``, the popularity rank shuffled against size) is replayed against a cache whose budget is
``--budget-share`` of the upstreams' total size on disk, once per filter. It reports the repositories resident at
the end and the clones the replay cost.

``python -m benchmarks.partial --upstream PATH`` measures one repository of your own instead of ``--sizes``.
Markdown tables go to stdout; every raw sample goes to ``--output`` (JSON).
"""

from __future__ import annotations

import argparse
import hashlib
import importlib.metadata
import json
import math
import os
import platform
import random
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pygit2

from benchmarks.datagen import DATA_DIR, GENERATION, SPECS, generate, link_copy
from repocache import RepoCache
from repocache.testing import GitDaemon, isolated_git_env

FILTERS: tuple[str | None, ...] = (None, "blob:none", "tree:0")

#: The realistic-shape upstream of ``--sizes source``: (commits, initial paths).
SOURCE_SHAPE = (20_000, 3_000)

_VOCABULARY = (
    "self value index count name path result item entry config options error buffer offset length token node "
    "parent child key data state event handler request response stream reader writer cache lock timeout retry "
    "return if else for while def class import from raise try except with yield None True False and or not in is"
)
_WORDS = tuple(_VOCABULARY.split())


def _log(message: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {message}", file=sys.stderr, flush=True)


def _load() -> list[float]:
    return [round(value, 2) for value in os.getloadavg()]


# -- the realistic-shape upstream ----------------------------------------------------------------------------


def _line(rng: random.Random) -> str:
    indent = "    " * rng.randrange(4)
    words = " ".join(rng.choice(_WORDS) for _ in range(rng.randrange(2, 9)))
    return f"{indent}{words}{rng.choice(('', ':', '(', ')', ',', ' = 0', '.append(x)'))}"


def _source_stream(commits: int, files: int, seed: int) -> Iterator[bytes]:
    """The fast-import stream of a source-shaped history: ``files`` paths at first, a few lines edited per commit."""
    rng = random.Random(f"repocache-partial-source:{seed}")
    contents: dict[str, list[str]] = {}
    names: list[str] = []

    def new_path(number: int) -> str:
        return f"pkg{number % 23:02d}/mod{(number // 23) % 11:02d}/file{number}.py"

    for number in range(files):
        names.append(new_path(number))
    for name in names:
        contents[name] = [_line(rng) for _ in range(rng.randrange(20, 300))]
    authors = [f"Dev {n} <dev{n}@example.invalid>".encode() for n in range(60)]
    hot = names[: max(1, files // 10)]  # a tenth of the paths take half of the edits, as in real trees
    chunk: list[bytes] = []
    for number in range(commits):
        when = b"%d +0000" % (1_600_000_000 + number * 600)
        author = rng.choice(authors)
        summary = (
            f"{rng.choice(('fix', 'add', 'refactor', 'document', 'speed up'))} {' '.join(rng.choices(_WORDS, k=5))}"
        )
        body = "\n".join(" ".join(rng.choices(_WORDS, k=12)) for _ in range(rng.randrange(0, 8)))
        message = f"{summary}\n\n{body}\n".encode()
        chunk += [b"commit refs/heads/main\n", b"author " + author + b" " + when + b"\n"]
        chunk += [b"committer " + author + b" " + when + b"\n", b"data %d\n" % len(message), message]
        if number == 0:
            touched = names
        else:
            touched = [rng.choice(hot) if rng.random() < 0.5 else rng.choice(names) for _ in range(rng.randrange(1, 5))]
            if rng.random() < 0.05:
                names.append(new_path(len(names)))
                contents[names[-1]] = [_line(rng) for _ in range(rng.randrange(10, 80))]
                touched.append(names[-1])
        for name in dict.fromkeys(touched):
            lines = contents[name]
            if number:
                for _ in range(rng.randrange(1, 6)):
                    at = rng.randrange(len(lines) + 1)
                    action = rng.random()
                    if action < 0.4 or not lines:
                        lines.insert(at, _line(rng))
                    elif action < 0.8:
                        lines[min(at, len(lines) - 1)] = _line(rng)
                    elif len(lines) > 5:
                        del lines[min(at, len(lines) - 1)]
            data = ("\n".join(lines) + "\n").encode()
            chunk.append(f"M 100644 inline {name}\n".encode() + b"data %d\n" % len(data) + data + b"\n")
        chunk.append(b"\n")
        if number % 200 == 199:
            chunk.append(b"reset refs/tags/v%05d\nfrom refs/heads/main\n\n" % number)
        if number % 1000 == 999:
            chunk.append(b"reset refs/heads/release-%05d\nfrom refs/heads/main\n\n" % number)
        if len(chunk) > 4000:
            yield b"".join(chunk)
            chunk = []
    chunk.append(b"done\n")
    yield b"".join(chunk)


def source_upstream(commits: int, files: int, seed: int, env: dict[str, str], *, data_dir: Path = DATA_DIR) -> Path:
    """A bare source-shaped upstream, generated once into ``data_dir`` (like :func:`benchmarks.datagen.generate`).

    Args:
        commits: commits on ``main`` (the first adds every path).
        files: paths at first (about one commit in 20 adds one more).
        seed: the generator's seed.
        env: the environment git runs with.
        data_dir: where generated repositories are kept between runs.
    """
    digest = hashlib.sha256(f"{GENERATION}:source:{commits}:{files}:{seed}".encode()).hexdigest()[:10]
    home = data_dir / f"gen-v{GENERATION}" / f"source-{commits}-{files}-{seed}-{digest}"
    final = home / "upstream.git"
    if (home / "meta.json").exists():
        return final
    shutil.rmtree(home, ignore_errors=True)
    home.mkdir(parents=True)
    staging = home / "staging.git"
    started = time.perf_counter()
    subprocess.run(["git", "init", "-q", "--bare", "-b", "main", str(staging)], check=True, env=env)
    process = subprocess.Popen(["git", "fast-import", "--quiet", "--done"], cwd=staging, env=env, stdin=subprocess.PIPE)
    assert process.stdin is not None
    for piece in _source_stream(commits, files, seed):
        process.stdin.write(piece)
    process.stdin.close()
    if process.wait() != 0:
        raise RuntimeError(f"git fast-import failed for the source upstream {home.name}")
    # Packed as a hosting server keeps it, deltas recomputed (fast-import's are against one previous blob only).
    subprocess.run(
        ["git", "-C", str(staging), "repack", "-a", "-d", "-f", "-q", "--write-bitmap-index"], check=True, env=env
    )
    subprocess.run(["git", "-C", str(staging), "pack-refs", "--all"], check=True, env=env)
    os.rename(staging, final)
    info = {"commits": commits, "files": files, "seed": seed, "seconds": time.perf_counter() - started}
    info.update(size_bytes=_disk_bytes(final), objects=_objects(final))
    (home / "meta.json").write_text(json.dumps(info))
    return final


# -- measuring ------------------------------------------------------------------------------------------------


def _disk_bytes(path: Path) -> int:
    total = 0
    for directory, _dirs, files in os.walk(path):
        for name in files:
            total += os.lstat(os.path.join(directory, name)).st_blocks * 512
    return total


def _objects(path: Path) -> int:
    out = subprocess.run(
        ["git", "-C", str(path), "count-objects", "-v"], capture_output=True, text=True, check=True
    ).stdout
    counts = dict(line.split(": ", 1) for line in out.splitlines())
    return int(counts["count"]) + int(counts["in-pack"])


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


def _fill(side: str, wanted: str | None, url: str, root: Path) -> tuple[float, Path, int]:
    """(seconds, mirror path, bytes on disk) of one fill of ``url`` by ``side`` into a fresh ``root``."""
    if side == "repocache":
        with RepoCache(root) as cache:
            started = time.perf_counter()
            entry = cache.ensure(url, filter=wanted)
            seconds = time.perf_counter() - started
            return seconds, entry.path, _disk_bytes(entry.path)  # measured as the git side's is
    dest = root / "mirror.git"
    root.mkdir(parents=True)
    command = ["git", "clone", "-q", "--mirror", *([] if wanted is None else [f"--filter={wanted}"]), "--", url]
    started = time.perf_counter()
    subprocess.run([*command, str(dest)], check=True)
    seconds = time.perf_counter() - started
    return seconds, dest, _disk_bytes(dest)


def measure(label: str, upstream: Path, reps: int, sides: tuple[str, ...], base: Path) -> dict[str, Any]:
    """Every sample of every (side, filter) on one upstream, the rotation of their order, and the load."""
    served = base / f"served-{label}"
    copy = served / "upstream.git"
    link_copy(upstream, copy)
    subprocess.run(["git", "-C", str(copy), "config", "uploadpack.allowFilter", "true"], check=True)
    combos = [(side, wanted) for side in sides for wanted in FILTERS]
    samples: dict[str, dict[str, list[float | int]]] = {}
    load_before = _load()
    started = time.perf_counter()
    with GitDaemon(served) as daemon:
        url = daemon.url_for(copy)
        for rep in range(reps):
            shift = rep % len(combos)
            for side, wanted in combos[shift:] + combos[:shift]:
                root = base / f"fill-{label}-{rep}-{side}-{wanted}".replace(":", "-")
                seconds, path, size = _fill(side, wanted, url, root)
                commits, walk = _walk(path)
                row = samples.setdefault(f"{side}/{wanted or 'full'}", {})
                for key, value in (("fill_s", seconds), ("walk_s", walk), ("size_bytes", size)):
                    row.setdefault(key, []).append(value)
                row.setdefault("objects", []).append(_objects(path))
                row.setdefault("commits", []).append(commits)
                shutil.rmtree(root)
            _log(f"{label}: repetition {rep + 1}/{reps} done, load {_load()}")
    return {
        "upstream": label,
        "upstream_bytes": _disk_bytes(upstream),
        "upstream_objects": _objects(upstream),
        "reps": reps,
        "transport": "git:// from git daemon on 127.0.0.1 (uploadpack.allowFilter)",
        "load_before": load_before,
        "load_after": _load(),
        "seconds": time.perf_counter() - started,
        "samples": samples,
    }


def _median(result: dict[str, Any], key: str, name: str) -> float:
    return float(statistics.median(result["samples"][key][name]))


def table(results: list[dict[str, Any]], sides: tuple[str, ...]) -> str:
    """The markdown table of every upstream: medians and the ratios to the same side's full mirror."""
    lines = [
        "| upstream | side | mirror | fill | vs full | size on disk | vs full | objects | walk | vs full |",
        "| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |",
    ]
    for result in results:
        for side in sides:
            full = f"{side}/full"
            for wanted in FILTERS:
                key = f"{side}/{wanted or 'full'}"
                fill, walk = _median(result, key, "fill_s"), _median(result, key, "walk_s")
                size = _median(result, key, "size_bytes")
                lines.append(
                    f"| {result['upstream']} | {side} | {wanted or 'full'} | {fill:.2f} s | "
                    f"{fill / _median(result, full, 'fill_s'):.2f}x | {size / 1e6:.2f} MB | "
                    f"{size / _median(result, full, 'size_bytes'):.0%} | {int(_median(result, key, 'objects')):,} | "
                    f"{walk * 1000:.0f} ms | {walk / _median(result, full, 'walk_s'):.2f}x |"
                )
    return "\n".join(lines)


def targets(results: list[dict[str, Any]]) -> str:
    """Issue 22's targets for repocache's mirrors, met or not, upstream by upstream, with the load."""
    lines = [
        "| upstream | blob:none bytes <= 40% | blob:none fill >= 2.5x faster | tree:0 bytes <= 15% |"
        " tree:0 fill >= 10x faster | walk <= 1.1x full (worst filter) | load before / after |",
        "| --- | --- | --- | --- | --- | --- | --- |",
    ]
    for result in results:
        full = "repocache/full"
        size, fill = _median(result, full, "size_bytes"), _median(result, full, "fill_s")
        cells = []
        for wanted, share, speed in (("blob:none", 0.40, 2.5), ("tree:0", 0.15, 10.0)):
            key = f"repocache/{wanted}"
            ratio = _median(result, key, "size_bytes") / size
            faster = fill / _median(result, key, "fill_s")
            cells.append(f"{ratio:.0%} {'met' if ratio <= share else 'MISSED'}")
            cells.append(f"{faster:.1f}x {'met' if faster >= speed else 'MISSED'}")
        walk = max(_median(result, f"repocache/{w}", "walk_s") for w in FILTERS[1:]) / _median(result, full, "walk_s")
        cells.append(f"{walk:.2f}x {'met' if walk <= 1.1 else 'MISSED'}")
        load = f"{result['load_before'][0]:.2f} / {result['load_after'][0]:.2f}"
        lines.append(f"| {result['upstream']} | " + " | ".join(cells) + f" | {load} |")
    return "\n".join(lines)


# -- the LRU replay -------------------------------------------------------------------------------------------


def replay(args: argparse.Namespace, base: Path) -> dict[str, Any]:
    """The LRU replay: resident repositories and clones, full against each filter, under one fixed budget."""
    rng = random.Random(11)
    shapes = []
    for number in range(args.repos):
        commits = int(math.exp(rng.uniform(math.log(args.min_commits), math.log(args.max_commits))))
        files = int(math.exp(rng.uniform(math.log(50), math.log(1500))))
        shapes.append((commits, files, number))
    served = base / "served-replay"
    for commits, files, number in shapes:
        link_copy(source_upstream(commits, files, number, dict(os.environ)), served / f"r{number}.git")
        subprocess.run(["git", "-C", str(served / f"r{number}.git"), "config", "uploadpack.allowFilter", "true"])
    sizes = [_disk_bytes(served / f"r{number}.git") for number in range(args.repos)]
    # A fixed budget: a share of the total, but never below what the largest full mirror needs with room to spare.
    budget = max(int(sum(sizes) * args.budget_share), int(max(sizes) * 1.5))
    popularity = list(range(args.repos))
    random.Random(5).shuffle(popularity)  # rank r is repository popularity[r]: popularity is not size
    weights = [1 / (rank + 1) for rank in range(args.repos)]
    pattern = [popularity[r] for r in random.Random(7).choices(range(args.repos), weights=weights, k=args.accesses)]
    rows: list[dict[str, Any]] = []
    load_before = _load()
    with GitDaemon(served) as daemon:
        urls = [daemon.url_for(served / f"r{number}.git") for number in range(args.repos)]
        for wanted in FILTERS:
            root = base / f"replay-{wanted}".replace(":", "-")
            started = time.perf_counter()
            with RepoCache(root, max_bytes=budget, filter=wanted) as cache:
                for index in pattern:
                    cache.ensure(urls[index])
                stats = cache.stats()
                resident = len(cache.entries())
                used = sum(entry.size_bytes for entry in cache.entries())
            seconds = time.perf_counter() - started
            rows.append(
                {"filter": wanted, "resident": resident, "clones": stats.misses, "seconds": seconds, "used": used}
            )
            _log(f"replay {wanted or 'full'}: {resident} resident, {stats.misses} clones, {seconds:.1f} s")
            shutil.rmtree(root)
    return {
        "repos": [
            {"commits": c, "files": f, "seed": n, "bytes": s} for (c, f, n), s in zip(shapes, sizes, strict=True)
        ],
        "accesses": args.accesses,
        "distinct_accessed": len(set(pattern)),
        "budget_bytes": budget,
        "budget_share": args.budget_share,
        "load_before": load_before,
        "load_after": _load(),
        "rows": rows,
    }


def replay_table(result: dict[str, Any]) -> str:
    """The replay's markdown table."""
    sizes = [repo["bytes"] for repo in result["repos"]]
    lines = [
        f"{len(sizes)} source-shaped upstreams of {min(sizes) / 1e6:.1f} to {max(sizes) / 1e6:.1f} MB "
        f"({sum(sizes) / 1e6:.1f} MB in all), {result['accesses']} accesses (Zipf-like, seed 7, "
        f"{result['distinct_accessed']} distinct), budget {result['budget_bytes'] / 1e6:.1f} MB "
        f"({result['budget_share']:.0%} of the total), load {result['load_before'][0]:.2f} / "
        f"{result['load_after'][0]:.2f}",
        "",
        "| mirror | resident at the end | vs full | clones | vs full | bytes used | replay time |",
        "| --- | --- | --- | --- | --- | --- | --- |",
    ]
    first = result["rows"][0]
    for row in result["rows"]:
        lines.append(
            f"| {row['filter'] or 'full'} | {row['resident']} | {row['resident'] / first['resident']:.2f}x | "
            f"{row['clones']} | {row['clones'] / first['clones']:.2f}x | {row['used'] / 1e6:.1f} MB | "
            f"{row['seconds']:.1f} s |"
        )
    return "\n".join(lines)


# -- the command ----------------------------------------------------------------------------------------------


def _upstreams(args: argparse.Namespace, env: dict[str, str], base: Path) -> list[tuple[str, Path]]:
    if args.upstream is not None:
        own = base / "own.git"  # a packed bare copy: the repository given is never modified
        subprocess.run(["git", "clone", "-q", "--mirror", "--", str(args.upstream), str(own)], check=True, env=env)
        subprocess.run(["git", "-C", str(own), "repack", "-a", "-d", "-q", "--write-bitmap-index"], check=True, env=env)
        return [(args.upstream.resolve().name, own)]
    chosen = []
    for name in args.sizes.split(","):
        if name == "source":
            commits, files = (300, 200) if args.quick else SOURCE_SHAPE
            chosen.append((name, source_upstream(commits, files, 0, env)))
        elif name in SPECS:
            chosen.append((name, generate(SPECS[name], env).path))
        else:
            raise SystemExit(f"--sizes: {name!r} is not one of {', '.join([*SPECS, 'source'])}")
    return chosen


def main(argv: list[str] | None = None) -> int:
    """Run the comparison, print the tables and write the raw samples."""
    parser = argparse.ArgumentParser(
        prog="python -m benchmarks.partial", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--sizes", default="small,medium,large,source", help="upstreams (default: all four)")
    parser.add_argument("--upstream", type=Path, help="one git repository of your own instead (not modified)")
    parser.add_argument("--reps", type=int, default=3, help="repetitions per side and filter (default 3)")
    parser.add_argument("--reps-large", type=int, default=None, help="repetitions on large (default: --reps)")
    parser.add_argument("--no-git", dest="git", action="store_false", help="skip the plain git clone side")
    parser.add_argument("--no-replay", dest="replay", action="store_false", help="skip the LRU replay")
    parser.add_argument("--replay-only", action="store_true", help="run the LRU replay only")
    parser.add_argument("--repos", type=int, default=24, help="replay: upstreams (default 24)")
    parser.add_argument("--min-commits", type=int, default=100, help="replay: fewest commits (default 100)")
    parser.add_argument("--max-commits", type=int, default=6000, help="replay: most commits (default 6000)")
    parser.add_argument("--accesses", type=int, default=400, help="replay: calls replayed (default 400)")
    parser.add_argument("--budget-share", type=float, default=0.25, help="replay: budget / total (default 0.25)")
    parser.add_argument("--quick", action="store_true", help="tiny and a small source upstream, 1 rep (a check)")
    parser.add_argument("--output", type=Path, help="write every raw sample here (JSON)")
    args = parser.parse_args(argv)
    if args.quick:
        args.sizes, args.reps, args.repos, args.accesses = "tiny,source", 1, 4, 12
        args.min_commits, args.max_commits = 20, 60
    sides = ("repocache", "git") if args.git else ("repocache",)
    with tempfile.TemporaryDirectory(prefix="repocache-partial-bench-") as scratch:
        base = Path(scratch)
        home = base / "home"
        home.mkdir()
        os.environ.update(isolated_git_env(home))
        for name in ("REPOCACHE_DIR", "REPOCACHE_GIT"):
            os.environ.pop(name, None)
        env = dict(os.environ)
        report: dict[str, Any] = {
            "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
            "machine": {
                "cores": os.cpu_count(),
                "python": platform.python_version(),
                "git": subprocess.run(["git", "--version"], capture_output=True, text=True).stdout.strip(),
                "pygit2": importlib.metadata.version("pygit2"),
                "libgit2": pygit2.LIBGIT2_VERSION,
            },
            "fills": [],
        }
        if not args.replay_only:
            for label, upstream in _upstreams(args, env, base):
                reps = args.reps_large if label == "large" and args.reps_large else args.reps
                _log(f"{label}: {reps} repetitions, sides {', '.join(sides)}, load {_load()}")
                report["fills"].append(measure(label, upstream, reps, sides, base))
                _write(args.output, report)
            print(table(report["fills"], sides))
            print()
            print(targets(report["fills"]))
            print()
        if args.replay or args.replay_only:
            report["replay"] = replay(args, base)
            _write(args.output, report)
            print(replay_table(report["replay"]))
    return 0


def _write(path: Path | None, report: dict[str, Any]) -> None:
    if path is not None:
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(report, indent=1) + "\n")


if __name__ == "__main__":
    raise SystemExit(main())
