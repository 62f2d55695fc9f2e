"""Profiles of repocache's slow paths: a miss, a stampede on one missing repository, a restore.

``python -m benchmarks.profiles {miss,swarm,restore} [--size S] [--reps N]``

* ``miss``: a repocache miss against ``git clone --mirror`` of the same upstream, the time ``subprocess.Popen()``
  takes to start git the way ``gitops`` does (``setpriv --pdeathsig`` when it works) against a ``preexec_fn``
  (which makes every spawn fork the interpreter), and where an in-process miss spends its time (cProfile).
* ``swarm``: when each of 16 processes asking for one missing repository gets it, against one
  ``git clone --mirror``.
* ``restore``: a restore from a ``file://`` cold store against the clone it replaces, and where an in-process
  restore spends its time (cProfile).
* ``fresh``: a fresh host's first checkout (an empty cache root, nothing but the store shared) restored from a
  directory store and from S3 (``moto_server`` on 127.0.0.1), against the same host's ``RepoCache`` clone from
  the upstream over ``git://`` and against ``git clone --mirror``; everything ``checkout()`` does before it hands
  out the mirror is timed, once with ``fetch_ttl=0`` (the restore is fetched, a no-op fetch, before it is handed
  out) and once with a ``fetch_ttl`` that covers the artifact's age (a fleet's host start: no upstream contact).
  Also the time ``git commit-graph write --reachable`` takes on the restored mirror: what a restore would add
  if the artifact did not carry the graph.

Each run serves a generated upstream (``benchmarks.datagen``) with ``git daemon`` on loopback and measures the
library through the benchmark's worker processes; nothing is patched.
"""

from __future__ import annotations

import argparse
import contextlib
import cProfile
import io
import os
import pstats
import shutil
import subprocess
import sys
import time
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path

if __package__ in (None, ""):
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from benchmarks import datagen
from benchmarks.measure import Worker, median, timed_run

WORK_DIR = Path(__file__).resolve().parent / ".work"


@contextlib.contextmanager
def _served(size: str) -> Iterator[tuple[str, Path]]:
    """Serve the generated upstream ``size`` over git://; yields (url, scratch directory)."""
    run = WORK_DIR / f"profile-{os.getpid()}"
    home = run / "home"
    home.mkdir(parents=True)
    from repocache.testing import GitDaemon, isolated_git_env

    os.environ.update(isolated_git_env(home))
    for name in ("REPOCACHE_DIR", "REPOCACHE_GIT"):
        os.environ.pop(name, None)
    generated = datagen.generate(datagen.SPECS[size], dict(os.environ))
    serve = run / "serve"
    datagen.link_copy(generated.path, serve / f"{size}.git")
    try:
        with GitDaemon(serve) as daemon:
            yield daemon.url_for(serve / f"{size}.git"), run
    finally:
        shutil.rmtree(run, ignore_errors=True)


def _worker(root: Path, **options: object) -> Worker:
    """A repocache worker process with its cache at ``root``, ready for commands."""
    worker = Worker("ours", root, options=dict(options)).start()
    worker.wait_ready()
    return worker


def _top(profile: cProfile.Profile, count: int = 14) -> str:
    out = io.StringIO()
    stats = pstats.Stats(profile, stream=out)
    stats.strip_dirs().sort_stats("tottime").print_stats(count)
    return "\n".join(line for line in out.getvalue().splitlines() if line.strip())


def _ms(values: Sequence[float]) -> str:
    return f"{median(values) * 1e3:.1f} ms"


def profile_miss(size: str, reps: int) -> None:
    from repocache import RepoCache, gitops

    with _served(size) as (url, run):
        results: dict[str, list[float]] = {"git clone --mirror": [], "repocache": []}
        for rep in range(reps):
            for label in results:
                root = run / f"{rep}-{label.replace(' ', '_')}"
                os.sync()
                if label == "repocache":
                    worker = _worker(root)
                    results[label].append(worker.call("clone", url=url)["seconds"])
                    worker.close()
                else:
                    results[label].append(timed_run(["git", "clone", "--mirror", "--", url, str(root)]))
                shutil.rmtree(root, ignore_errors=True)
        print(f"miss of the {size} upstream, medians of {reps}:")
        base = median(results["git clone --mirror"])
        for label, values in results.items():
            print(f"  {label:28} {_ms(values):>10}  {median(values) / base:.2f}x")
        # The cost of starting git, in a process with repocache loaded: the library's way against the alternatives.
        git = ["git", "--version"]
        library_command, library_preexec = gitops.run.with_death_signal(git)
        library_label = f"library ({'preexec_fn' if library_preexec else 'setpriv'})"
        ways: dict[str, tuple[list[str], Callable[[], None] | None]] = {
            library_label: (library_command, library_preexec),
            "preexec_fn": (git, gitops.run.die_with_parent),
            "no death signal": (git, None),
        }
        spawn: dict[str, list[float]] = {label: [] for label in ways}
        for _ in range(30):
            for label, (command, preexec) in ways.items():
                started = time.perf_counter()
                process = subprocess.Popen(
                    command,
                    stdout=subprocess.DEVNULL,
                    stderr=subprocess.PIPE,
                    start_new_session=True,
                    preexec_fn=preexec,
                )
                spawn[label].append(time.perf_counter() - started)
                process.communicate()
        print("time for subprocess.Popen() to return (git --version), medians of 30:")
        for label, values in spawn.items():
            print(f"  {label:28} {_ms(values):>10}")
        profile = cProfile.Profile()
        for rep in range(reps):
            cache = RepoCache(run / f"profiled-{rep}")
            profile.enable()
            with cache.checkout(url):
                pass
            profile.disable()
            cache.close()
        print(f"cProfile of {reps} repocache misses (in-process), by own time:")
        print(_top(profile))


def profile_swarm(size: str, reps: int, processes: int = 16) -> None:
    with _served(size) as (url, run):
        walls: list[float] = []
        git: list[float] = []
        first_run = ""
        for rep in range(reps):
            root = run / f"git-{rep}"
            os.sync()
            git.append(timed_run(["git", "clone", "--mirror", "--", url, str(root)]))
            shutil.rmtree(root, ignore_errors=True)
            root = run / f"swarm-{rep}"
            workers = [_worker(root) for _ in range(processes)]
            os.sync()
            started = time.monotonic()
            for worker in workers:
                worker.send("clone", url=url)
            replies = [worker.reply() for worker in workers]
            for worker in workers:
                worker.close()
            finished = sorted((reply["end"] - started, reply["source"]) for reply in replies)
            walls.append(finished[-1][0])
            if rep == 0:
                first_run = " ".join(f"{seconds * 1e3:.0f}{source[0]}" for seconds, source in finished)
            shutil.rmtree(root, ignore_errors=True)
        print(f"{processes} processes, one missing {size} repository, medians of {reps}:")
        print(f"  {'one git clone --mirror':28} {_ms(git):>10}")
        last = f"last of the {processes} processes"
        print(f"  {last:28} {_ms(walls):>10}  {median(walls) / median(git):.2f}x")
        print(f"finish times of the first run, ms (c = cloned, h = hit): {first_run}")


def profile_restore(size: str, reps: int) -> None:
    from repocache import RepoCache

    with _served(size) as (url, run):
        restores: list[float] = []
        clones: list[float] = []
        for rep in range(reps):
            root = run / f"{rep}"
            store = root / "store"
            store.mkdir(parents=True)
            worker = _worker(root / "cache", cold_store=store.as_uri())
            os.sync()
            clones.append(worker.call("clone", url=url)["seconds"])
            worker.call("evict", urls=[url])
            os.sync()
            reply = worker.call("clone", url=url)
            worker.close()
            if reply["source"] != "restore":
                raise SystemExit(f"not a restore: {reply}")
            restores.append(reply["seconds"])
            shutil.rmtree(root, ignore_errors=True)
        print(f"restore of the {size} upstream from a file:// cold store, medians of {reps}:")
        print(f"  {'clone (miss)':28} {_ms(clones):>10}")
        print(f"  {'restore':28} {_ms(restores):>10}  {median(clones) / median(restores):.1f}x faster than the clone")
        profile = cProfile.Profile()
        for rep in range(reps):
            store = run / f"profiled-store-{rep}"
            store.mkdir()
            cache = RepoCache(run / f"profiled-{rep}", cold_store=store.as_uri())
            cache.ensure(url)
            cache.evict(url)
            profile.enable()
            with cache.checkout(url):
                pass
            profile.disable()
            cache.close()
        print(f"cProfile of {reps} restores (in-process), by own time:")
        print(_top(profile))


def _fresh_restores(
    url: str, run: Path, store: str, reps: int, env: dict[str, str] | None, ttl: str = "zero"
) -> tuple[list[float], Path]:
    """Publish ``url`` into ``store`` from one host, then time the first checkout of ``reps`` fresh hosts
    (``ttl="zero"``: with ``fetch_ttl=0``, so the restore is fetched before it is handed out; ``"long"``: with a
    ``fetch_ttl`` that covers the artifact's age, so the host contacts upstream not at all)."""
    publisher = Worker("ours", run / "publisher", options={"cold_store": store}, env=env).start()
    publisher.wait_ready()
    publisher.call("clone", url=url)
    publisher.call("publish", url=url)
    publisher.close()
    seconds: list[float] = []
    last = run
    for rep in range(reps):
        root = run / f"fresh-{rep}"
        worker = Worker("ours", root, options={"cold_store": store}, env=env).start()
        worker.wait_ready()
        os.sync()
        reply = worker.call("clone", url=url, ttl=ttl)
        worker.close()
        if reply["source"] != "restore" or reply["fetched"] != (ttl == "zero"):
            raise SystemExit(f"not a restore from {store} (fetched only with fetch_ttl=0): {reply}")
        seconds.append(reply["seconds"])
        if last != run:
            shutil.rmtree(last, ignore_errors=True)
        last = root
    return seconds, last


def profile_fresh(size: str, reps: int) -> None:
    from repocache.testing.s3 import Unavailable, moto_endpoint

    with _served(size) as (url, run):
        clones: list[float] = []
        gits: list[float] = []
        for rep in range(reps):
            worker = _worker(run / f"clone-{rep}")
            os.sync()
            clones.append(worker.call("clone", url=url)["seconds"])
            worker.close()
            shutil.rmtree(run / f"clone-{rep}", ignore_errors=True)
            os.sync()
            gits.append(timed_run(["git", "clone", "--quiet", "--mirror", url, str(run / f"git-{rep}.git")]))
            shutil.rmtree(run / f"git-{rep}.git", ignore_errors=True)
        directory = run / "store"
        directory.mkdir()
        dir_restores, restored_root = _fresh_restores(url, run / "dir", directory.as_uri(), reps, None)
        dir_covered, _ = _fresh_restores(url, run / "dir-ttl", directory.as_uri(), reps, None, ttl="long")
        mirrors = [p.parent for p in restored_root.rglob("HEAD") if (p.parent / "objects" / "pack").is_dir()]
        graph = timed_run(["git", "-C", str(mirrors[0]), "commit-graph", "write", "--reachable"]) if mirrors else None
        s3_restores: list[float] = []
        s3_covered: list[float] = []
        try:
            with moto_endpoint(run / "moto.log") as endpoint:
                s3_restores, _ = _fresh_restores(
                    url, run / "s3", f"s3://{endpoint.bucket}/{size}", reps, endpoint.environment()
                )
                s3_covered, _ = _fresh_restores(
                    url, run / "s3-ttl", f"s3://{endpoint.bucket}/{size}", reps, endpoint.environment(), ttl="long"
                )
        except Unavailable as exc:
            print(f"S3 not measured: {exc}")
        print(f"a fresh host's first checkout of the {size} upstream, medians of {reps} (load: {os.getloadavg()}):")
        print(f"  {'RepoCache clone (git://)':32} {_ms(clones):>10}")
        print(f"  {'git clone --mirror (git://)':32} {_ms(gits):>10}")
        cases = (
            ("restore + fetch, directory store", dir_restores),
            ("restore, directory store, in TTL", dir_covered),
            ("restore + fetch, S3 (moto)", s3_restores),
            ("restore, S3 (moto), in TTL", s3_covered),
        )
        for name, values in cases:
            if values:
                print(
                    f"  {name:32} {_ms(values):>10}  {median(clones) / median(values):.1f}x faster than the "
                    f"RepoCache clone, {median(gits) / median(values):.1f}x than git clone --mirror"
                )
        if graph is not None:
            print(f"  {'commit-graph write (restored)':32} {graph * 1e3:.1f} ms (a restore without the graph adds it)")


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m benchmarks.profiles",
        description=__doc__.splitlines()[0],
        formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog="""what:
  miss     a miss against git clone --mirror; the time to start git; cProfile of misses
  swarm    16 processes missing one repository at once, against one git clone --mirror
  restore  a restore from a file:// cold store against the clone; cProfile of restores
  fresh    a fresh host's first checkout restored from a directory store and from S3, against a clone""",
    )
    parser.add_argument("what", choices=("miss", "swarm", "restore", "fresh"), help="what to profile (see below)")
    parser.add_argument(
        "--size",
        choices=tuple(datagen.SPECS),
        default=None,
        help="the generated upstream (default: small; medium for restore, large for fresh)",
    )
    parser.add_argument("--reps", metavar="N", type=int, default=7, help="repetitions (default: 7)")
    args = parser.parse_args(argv)
    size = args.size or {"restore": "medium", "fresh": "large"}.get(args.what, "small")
    profiles = {"miss": profile_miss, "swarm": profile_swarm, "restore": profile_restore, "fresh": profile_fresh}
    profiles[args.what](size, args.reps)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
