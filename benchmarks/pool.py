"""A pool of worker processes checking repositories out under a tight budget (issue 12).

``python -m benchmarks.pool [--workers 4,16] [--checkouts 12] [--hold 0.1] [--scale 1.0]``

Three upstreams of about 0.2, 13 and 49 MB (``repocache.testing`` commits of incompressible 1 MB blobs, times
``--scale``) are served by ``git daemon`` on loopback. Each of N worker processes opens the same cache root and
checks out ``--checkouts`` times one of the three at random (seeded), holding each for a random 0 to ``--hold``
seconds. Every pool runs twice with the same seeds: with ``max_bytes`` 1.15x the largest repository (the two large
ones never fit together, so misses wait for each other's holds) and with a budget large enough for all three.
Reported per run: checkouts completed, BudgetErrors, wall time (from the common start to the last worker's end),
upstream clones (the ``clones`` counter, and ``upload-pack`` requests in the daemon's log, which also counts the
fetches of hits), evictions, the seconds spent waiting for room (sum of ``BudgetWaitEvent``) and the bytes used at
the end against the budget. Default settings otherwise (``fetch_ttl=0``: every hit fetches), as a new user runs it.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import shutil
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

if __package__ in (None, ""):
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

WORK_DIR = Path(__file__).resolve().parent / ".work"
SIZES_MB = {"small": 0.2, "middle": 13.0, "large": 49.0}


def _worker(spec: dict[str, Any]) -> dict[str, Any]:
    """One worker of the pool (run in its own process)."""
    from repocache import RepoCache, RepoCacheError
    from repocache.events import BudgetWaitEvent, Event

    waits: list[float] = []

    def on_event(event: Event) -> None:
        if isinstance(event, BudgetWaitEvent):
            waits.append(event.seconds)

    rng = random.Random(spec["seed"])
    outcomes: list[str] = []
    with RepoCache(spec["root"], max_bytes=spec["max_bytes"], on_event=on_event) as cache:
        time.sleep(max(0.0, spec["start_at"] - time.time()))
        for _ in range(spec["checkouts"]):
            url = rng.choice(spec["urls"])
            try:
                with cache.checkout(url) as co:
                    outcomes.append(co.source)
                    time.sleep(rng.uniform(0, spec["hold"]))
            except RepoCacheError as exc:
                outcomes.append(f"{type(exc).__name__}: {exc}")
    return {"outcomes": outcomes, "waits": waits, "ended": time.time()}


def _make_upstreams(base: Path, scale: float) -> list[Path]:
    from repocache.testing import UpstreamFactory

    factory = UpstreamFactory(base)
    paths = []
    for name, megabytes in SIZES_MB.items():
        upstream = factory.create(name)
        # 1 MB blobs (one of 0.2 MB for the small one), each ``scale`` times smaller: the ratios stay.
        commits, blob = (round(megabytes), 1_000_000) if megabytes >= 1 else (1, round(megabytes * 1_000_000))
        upstream.commits(commits, size=max(1, round(blob * scale)))
        paths.append(upstream.path)
    return paths


def _run_pool(root: Path, urls: list[str], workers: int, checkouts: int, hold: float, max_bytes: int) -> dict[str, Any]:
    from repocache import RepoCache

    start_at = time.time() + 1.0 + 0.1 * workers
    processes = []
    for seed in range(workers):
        spec = {
            "root": str(root),
            "urls": urls,
            "seed": seed,
            "checkouts": checkouts,
            "hold": hold,
            "max_bytes": max_bytes,
            "start_at": start_at,
        }
        processes.append(
            subprocess.Popen(
                [sys.executable, "-m", "benchmarks.pool", "--worker", json.dumps(spec)],
                cwd=Path(__file__).resolve().parent.parent,
                stdout=subprocess.PIPE,
                text=True,
            )
        )
    results = []
    for process in processes:
        out, _ = process.communicate(timeout=3600)
        results.append(json.loads(out.strip().splitlines()[-1]))
    outcomes = [o for r in results for o in r["outcomes"]]
    with RepoCache(root, max_bytes=max_bytes) as cache:
        stats = cache.stats()
    return {
        "workers": workers,
        "max_bytes": max_bytes,
        "completed": sum(o in ("hit", "clone", "restore") for o in outcomes),
        "attempted": len(outcomes),
        "budget_errors": sum(o.startswith("BudgetError") for o in outcomes),
        "other_errors": sorted({o for o in outcomes if ":" in o and not o.startswith("BudgetError")}),
        "first_budget_error": next((o for o in outcomes if o.startswith("BudgetError")), None),
        "wall_seconds": max(r["ended"] for r in results) - start_at,
        "clones": stats.clones,
        "fetches": stats.fetches,
        "evictions": stats.evictions,
        "waits": sum(len(r["waits"]) for r in results),
        "wait_seconds": sum(sum(r["waits"]) for r in results),
        "bytes_used": stats.bytes_used,
    }


def main(argv: list[str] | None = None) -> int:
    """Run the pools and print a markdown table (and the raw figures as JSON)."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--workers", default="4,16", help="pool sizes, comma-separated (default 4,16)")
    parser.add_argument("--checkouts", type=int, default=12, help="checkouts per worker (default 12)")
    parser.add_argument("--hold", type=float, default=0.1, help="longest hold of a checkout, seconds (default 0.1)")
    parser.add_argument("--scale", type=float, default=1.0, help="repository sizes times this (default 1)")
    parser.add_argument("--worker", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.worker:
        print(json.dumps(_worker(json.loads(args.worker))), flush=True)
        return 0
    from repocache import RepoCache
    from repocache.testing import GitDaemon, isolated_git_env

    run = WORK_DIR / f"pool-{os.getpid()}"
    (run / "home").mkdir(parents=True)
    os.environ.update(isolated_git_env(run / "home"))
    os.environ.pop("REPOCACHE_DIR", None)
    rows = []
    try:
        paths = _make_upstreams(run / "upstreams", args.scale)
        with GitDaemon(run / "upstreams") as daemon:
            urls = [daemon.url_for(path) for path in paths]
            with RepoCache(run / "measure") as measure:
                sizes = [measure.ensure(url).size_bytes for url in urls]
            print(f"sizes: {sizes} bytes", flush=True)
            for workers in [int(w) for w in args.workers.split(",")]:
                for label, budget in (("tight", max(sizes) * 115 // 100), ("ample", sum(sizes) * 2)):
                    root = run / f"root-{workers}-{label}"
                    requests_before = daemon.log_text.count("Request upload-pack")
                    row = _run_pool(root, urls, workers, args.checkouts, args.hold, budget)
                    row["budget"] = label
                    row["upload_packs"] = daemon.log_text.count("Request upload-pack") - requests_before
                    rows.append(row)
                    print(json.dumps(row), flush=True)
                    shutil.rmtree(root, ignore_errors=True)
    finally:
        shutil.rmtree(run, ignore_errors=True)
    print()
    print(
        "| workers | budget | completed | BudgetErrors | wall | clones | upload-packs | evictions | waits (total s) |"
        " bytes used / max_bytes |"
    )
    print("| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |")
    for row in rows:
        print(
            f"| {row['workers']} | {row['budget']} ({row['max_bytes'] / 1e6:.1f} MB) | "
            f"{row['completed']}/{row['attempted']} | {row['budget_errors']} | {row['wall_seconds']:.1f} s | "
            f"{row['clones']} | {row['upload_packs']} | {row['evictions']} | "
            f"{row['waits']} ({row['wait_seconds']:.1f} s) | {row['bytes_used'] / 1e6:.1f} / "
            f"{row['max_bytes'] / 1e6:.1f} MB |"
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
