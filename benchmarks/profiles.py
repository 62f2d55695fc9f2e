"""Profiles behind the targets the benchmark misses, and the measured effect of the proposed library fixes.

``python -m benchmarks.profiles {miss,swarm,restore} [--size S] [--reps N]``

* ``miss``: where a repocache clone spends its time beyond ``git clone --mirror`` (cProfile), the cost of
  starting git with the library's ``preexec_fn``, and the miss with the ``spawn`` fix applied.
* ``swarm``: when each of 16 processes asking for one missing repository gets it, with the library's lock polling
  and with the ``poll`` fix (and ``poll,spawn``).
* ``restore``: where a restore from the cold store spends its time (cProfile), and the restore with the ``tarbuf``
  fix.

The fixes are applied by monkeypatching (see ``benchmarks/_whatif.py``); the library's files are not changed.
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
from collections.abc import Iterator, Sequence
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


def _worker(engine: str, root: Path, whatif: str = "", **options: object) -> Worker:
    env_before = os.environ.get("REPOCACHE_BENCH_WHATIF")
    os.environ["REPOCACHE_BENCH_WHATIF"] = whatif
    try:
        worker = Worker(engine, root, options=dict(options)).start()
    finally:
        if env_before is None:
            os.environ.pop("REPOCACHE_BENCH_WHATIF", None)
        else:
            os.environ["REPOCACHE_BENCH_WHATIF"] = env_before
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
        results: dict[str, list[float]] = {"git clone --mirror": [], "repocache": [], "repocache + spawn fix": []}
        for rep in range(reps):
            for label in results:
                root = run / f"{rep}-{label.replace(' ', '_')}"
                os.sync()
                if label.startswith("git"):
                    results[label].append(timed_run(["git", "clone", "--mirror", "--", url, str(root)]))
                else:
                    worker = _worker("ours", root, "spawn" if "spawn" in label else "")
                    results[label].append(worker.call("clone", url=url)["seconds"])
                    worker.close()
                shutil.rmtree(root, ignore_errors=True)
        print(f"miss of the {size} upstream, medians of {reps}:")
        base = median(results["git clone --mirror"])
        for label, values in results.items():
            print(f"  {label:28} {_ms(values):>10}  {median(values) / base:.2f}x")
        # The cost of starting git the way gitops does it, in a process with repocache loaded.
        spawn: dict[str, list[float]] = {"preexec_fn (library)": [], "setpriv --pdeathsig": [], "no death signal": []}
        setpriv = shutil.which("setpriv")
        for _ in range(30):
            for label in spawn:
                command = ["git", "--version"]
                kwargs: dict[str, object] = {}
                if label.startswith("preexec"):
                    kwargs["preexec_fn"] = gitops._die_with_parent
                elif label.startswith("setpriv") and setpriv:
                    command = [setpriv, "--pdeathsig", "KILL", "--", *command]
                started = time.perf_counter()
                process = subprocess.Popen(
                    command, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, start_new_session=True, **kwargs
                )  # type: ignore[call-overload]
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
        variants = ["", "poll", "poll,spawn", "poll,spawn,nocount"]
        walls: dict[str, list[float]] = {variant or "library as is": [] for variant in variants}
        git: list[float] = []
        for rep in range(reps):
            root = run / f"git-{rep}"
            os.sync()
            git.append(timed_run(["git", "clone", "--mirror", "--", url, str(root)]))
            shutil.rmtree(root, ignore_errors=True)
            for variant in variants:
                root = run / f"swarm-{rep}-{variant}"
                workers = [_worker("ours", root, variant) for _ in range(processes)]
                os.sync()
                started = time.monotonic()
                for worker in workers:
                    worker.send("clone", url=url)
                replies = [worker.reply() for worker in workers]
                for worker in workers:
                    worker.close()
                finished = sorted((reply["end"] - started, reply["source"]) for reply in replies)
                walls[variant or "library as is"].append(finished[-1][0])
                if rep == 0:
                    shown = " ".join(f"{seconds * 1e3:.0f}{source[0]}" for seconds, source in finished)
                    print(f"  [{variant or 'library as is'}] finish times, ms (c = cloned, h = hit): {shown}")
                shutil.rmtree(root, ignore_errors=True)
        print(f"{processes} processes, one missing {size} repository, medians of {reps}:")
        print(f"  {'one git clone --mirror':28} {_ms(git):>10}")
        for label, values in walls.items():
            print(f"  {label:28} {_ms(values):>10}  {median(values) / median(git):.2f}x")


def profile_restore(size: str, reps: int) -> None:
    from repocache import RepoCache

    with _served(size) as (url, run):
        restores: dict[str, list[float]] = {"library as is": [], "tarbuf": []}
        clones: list[float] = []
        for rep in range(reps):
            for variant in restores:
                root = run / f"{rep}-{variant}"
                store = root / "store"
                store.mkdir(parents=True)
                whatif = "" if variant == "library as is" else variant
                worker = _worker("ours", root / "cache", whatif, cold_store=store.as_uri())
                os.sync()
                clones.append(worker.call("clone", url=url)["seconds"])
                worker.call("evict", urls=[url])
                os.sync()
                reply = worker.call("clone", url=url)
                worker.close()
                if reply["source"] != "restore":
                    raise SystemExit(f"not a restore: {reply}")
                restores[variant].append(reply["seconds"])
                shutil.rmtree(root, ignore_errors=True)
        print(f"restore of the {size} upstream from a file:// cold store, medians of {reps}:")
        print(f"  {'clone (miss)':28} {_ms(clones):>10}")
        for label, values in restores.items():
            print(f"  {label:28} {_ms(values):>10}  {median(clones) / median(values):.1f}x faster than the clone")
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
        print(f"cProfile of {reps} restores (library as is, in-process), by own time:")
        print(_top(profile))


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.profiles", description=__doc__.splitlines()[0])
    parser.add_argument("what", choices=("miss", "swarm", "restore"))
    parser.add_argument("--size", default=None, help="tiny, small, medium or large (default: small; restore: medium)")
    parser.add_argument("--reps", type=int, default=7)
    args = parser.parse_args(argv)
    size = args.size or ("medium" if args.what == "restore" else "small")
    {"miss": profile_miss, "swarm": profile_swarm, "restore": profile_restore}[args.what](size, args.reps)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
