"""Run the benchmarks: ``python -m benchmarks`` (or ``python benchmarks/run.py``); ``--help`` lists the options.

Generates (or reuses) the upstreams, serves them with ``git daemon`` on 127.0.0.1, runs every case for every size,
prints the markdown table of medians and ratios, and writes it with the raw samples (JSON) to the output directory
and the latency plot to ``benchmarks/latency.png``.
"""

from __future__ import annotations

import argparse
import contextlib
import hashlib
import json
import os
import shutil
import subprocess
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import replace
from functools import partial
from pathlib import Path

if __package__ in (None, ""):  # run as a script: make the repository root importable
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from benchmarks import cases, datagen, freshness, report
from benchmarks.cases import Context, Result, SizeData

BENCH_DIR = Path(__file__).resolve().parent
WORK_DIR = BENCH_DIR / ".work"
PEER_VENV = WORK_DIR / "peer-venv"
PEER_PACKAGE = "git-cache-clone"
CASES = (
    "hit",
    "fetch",
    "miss",
    "concurrent",
    "baseline",
    "cold",
    "fleet",
    "worktree",
    "eviction",
    "freshness",
    "maintenance",
)

# Repetitions, hits per repetition and requests of the no-cache case, by size class.
_REPS = {"tiny": 1, "small": 7, "medium": 5, "large": 3}
_HITS = {"tiny": 20, "small": 200, "medium": 200, "large": 200}
_REQUESTS = {"tiny": 3, "small": 10, "medium": 10, "large": 3}


def _parse(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="python -m benchmarks",
        description="repocache against plain git (and git-cache-clone), side by side, with targets.",
        epilog="Profiles of a miss, a stampede and a restore: python -m benchmarks.profiles --help.",
    )
    parser.add_argument(
        "--sizes",
        metavar="LIST",
        default="small,medium",
        help="comma-separated size classes: small (~1 MB), medium (~50 MB), large (~500 MB) (default: small,medium)",
    )
    parser.add_argument(
        "--smoke",
        action="store_true",
        help="tiny repositories, one repetition, smaller synthetic index: a quick check that everything runs",
    )
    parser.add_argument(
        "--cases",
        metavar="LIST",
        default=",".join(CASES),
        help=f"comma-separated subset of {','.join(CASES)} (default: all)",
    )
    parser.add_argument(
        "--reps", metavar="N", type=int, default=None, help="repetitions for every size (default: by size)"
    )
    parser.add_argument(
        "--index-entries",
        metavar="N",
        type=int,
        default=None,
        help="synthetic rows of the big index (default: 100000; 10000 with --smoke)",
    )
    peer = parser.add_mutually_exclusive_group()
    peer.add_argument(
        "--peer",
        dest="peer",
        action="store_true",
        default=None,
        help="measure git-cache-clone too (the default, except with --smoke)",
    )
    peer.add_argument("--no-peer", dest="peer", action="store_false", help="do not measure git-cache-clone")
    peer.add_argument(
        "--peer-rev",
        metavar="REV",
        default=None,
        help="put repocache at an earlier git revision of this repository in the peer column instead of "
        "git-cache-clone (a regression check: both sides measured side by side in one run)",
    )
    parser.add_argument(
        "--plot",
        metavar="PNG",
        type=Path,
        default=None,
        help="where to draw the latency plot (default: benchmarks/latency.png; none with --smoke)",
    )
    parser.add_argument(
        "--output",
        metavar="DIR",
        type=Path,
        default=None,
        help="directory for results.md and results.json (default: a new one under benchmarks/.work/results/)",
    )
    parser.add_argument(
        "--maintenance-fetches",
        metavar="N",
        type=int,
        default=None,
        help="fetch-on-hits of the maintenance case (default: 1000; 20 with --smoke)",
    )
    parser.add_argument("--keep", action="store_true", help="keep the run's scratch directory")
    args = parser.parse_args(argv)
    args.sizes = [size.strip() for size in args.sizes.split(",") if size.strip()]
    unknown = [size for size in args.sizes if size not in ("small", "medium", "large")]
    if unknown or not args.sizes:
        parser.error(f"unknown size {unknown}; choose from small, medium, large")
    args.cases = [case.strip() for case in args.cases.split(",") if case.strip()]
    if any(case not in CASES for case in args.cases):
        parser.error(f"unknown case in {args.cases}; choose from {', '.join(CASES)}")
    if args.peer is None:
        args.peer = not args.smoke
    if args.maintenance_fetches is None:
        args.maintenance_fetches = 20 if args.smoke else 1000
    if args.index_entries is None:
        args.index_entries = 10_000 if args.smoke else 100_000
    return args


def _log(message: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {message}", file=sys.stderr, flush=True)


def _isolate(home: Path) -> None:
    """Point HOME and git's configuration away from the user's for this process and everything it starts."""
    from repocache.testing import isolated_git_env

    home.mkdir(parents=True, exist_ok=True)
    os.environ.update(isolated_git_env(home))
    os.environ["XDG_CACHE_HOME"] = str(home / ".cache")
    for name in ("REPOCACHE_DIR", "REPOCACHE_GIT", "GIT_CACHE_ROOT_DIR"):
        os.environ.pop(name, None)


def _revision_tree(rev: str, dest: Path) -> Path:
    """The files of this repository at ``rev``, exported to ``dest`` (for ``--peer-rev``)."""
    dest.mkdir(parents=True)
    archive = subprocess.run(["git", "-C", str(BENCH_DIR.parent), "archive", rev], check=True, capture_output=True)
    subprocess.run(["tar", "-x", "-C", str(dest)], input=archive.stdout, check=True)
    return dest


def _peer_python(wanted: bool) -> tuple[str | None, str]:
    """The interpreter of git-cache-clone's own virtualenv (installed on first use), and its version or why not."""
    if not wanted:
        return None, "not measured (--no-peer)"
    python = PEER_VENV / "bin" / "python"
    if not python.exists():
        _log(f"installing {PEER_PACKAGE} into {PEER_VENV}")
        try:
            subprocess.run([sys.executable, "-m", "venv", str(PEER_VENV)], check=True, capture_output=True)
            subprocess.run(
                [str(python), "-m", "pip", "install", "-q", PEER_PACKAGE], check=True, capture_output=True, timeout=300
            )
        except (subprocess.CalledProcessError, subprocess.TimeoutExpired, OSError) as exc:
            shutil.rmtree(PEER_VENV, ignore_errors=True)
            detail = getattr(exc, "stderr", b"") or b""
            return None, f"did not install: {exc} {detail.decode(errors='replace')[-300:]}"
    version = subprocess.run(
        [str(python), "-c", f"import importlib.metadata as m; print(m.version({PEER_PACKAGE!r}))"],
        capture_output=True,
        text=True,
        check=False,
    )
    if version.returncode != 0:
        return None, f"installed but not importable: {version.stderr.strip()[-300:]}"
    return str(python), version.stdout.strip()


def _cold_store_error(scratch: Path) -> str | None:
    """None when ``RepoCache(cold_store="file:///dir")`` works in this checkout, else why not."""
    from repocache import RepoCache

    store = scratch / "cold-probe-store"
    store.mkdir(parents=True, exist_ok=True)
    try:
        with RepoCache(scratch / "cold-probe", cold_store=store.as_uri()):
            return None
    except Exception as exc:
        return f"{type(exc).__name__}: {exc}"
    finally:
        shutil.rmtree(scratch / "cold-probe", ignore_errors=True)
        shutil.rmtree(store, ignore_errors=True)


def _index_template(count: int) -> Path:
    """An index with ``count`` synthetic rows, cached under ``.data`` (keyed by the index schema)."""
    from repocache import index

    schema = hashlib.sha256(f"{index.SCHEMA_VERSION}:{index.MIGRATIONS}".encode()).hexdigest()[:10]
    home = datagen.DATA_DIR / f"gen-v{datagen.GENERATION}" / f"index-{schema}-{count}"
    template = home / "index.sqlite"
    if not template.exists():
        _log(f"building an index of {count:,} synthetic rows")
        shutil.rmtree(home, ignore_errors=True)
        staging = home.with_name(home.name + ".staging")
        shutil.rmtree(staging, ignore_errors=True)
        cases._synthetic_rows(staging, count)
        os.rename(staging, home)
    return template


def _index_root(template: Path, root: Path) -> Path:
    root.mkdir(parents=True)
    shutil.copy2(template, root / "index.sqlite")
    return root


def _sizes(args: argparse.Namespace) -> list[tuple[str, datagen.Spec]]:
    if args.smoke:
        return [(f"{args.sizes[0]} (smoke: tiny)", datagen.SPECS["tiny"])]
    return [(size, datagen.SPECS[size]) for size in args.sizes]


def main(argv: Sequence[str] | None = None) -> int:
    """Run the benchmarks; returns the exit status."""
    args = _parse(argv)
    started = time.monotonic()
    run_dir = WORK_DIR / f"run-{time.strftime('%Y%m%d-%H%M%S')}-{os.getpid()}"
    output = args.output or (WORK_DIR / "results" / run_dir.name.removeprefix("run-"))
    plot_path: Path | None = args.plot or (None if args.smoke else BENCH_DIR / "latency.png")
    _isolate(run_dir / "home")
    from repocache.testing import GitDaemon

    peer_tree: Path | None = None
    peer_python: str | None
    if args.peer_rev:
        peer_tree = _revision_tree(args.peer_rev, run_dir / "peer-rev")
        peer_python, peer_version = sys.executable, f"repocache at {args.peer_rev}"
    else:
        peer_python, peer_version = _peer_python(args.peer)
    if peer_python is None:
        _log(f"git-cache-clone: {peer_version}")
    env = dict(os.environ)
    serve_dir = run_dir / "serve"
    serve_dir.mkdir(parents=True)
    sizes: list[SizeData] = []
    for label, spec in _sizes(args):
        generated = datagen.generate(spec, env)
        reps = args.reps or _REPS[spec.name]
        label = spec.name if args.smoke else label
        sizes.append(SizeData(generated, label, reps, _HITS[spec.name], _REQUESTS[spec.name]))
        _log(f"upstream {generated.describe()}")
    results: list[Result] = []
    daemon = GitDaemon(serve_dir)
    try:
        daemon.start()
        ctx = Context(
            run_dir=run_dir,
            serve_dir=serve_dir,
            url_base=f"git://{daemon.host}:{daemon.port}",
            peer_python=peer_python,
            peer_tree=peer_tree,
            log=_log,
            daemon_log=lambda: daemon.log_text,
            big_index=args.index_entries,
            eviction_index_sizes=(10, args.index_entries),
            eviction_ks=(1, 10) if args.smoke else (1, 10, 100),
            fleet_hosts=3 if args.smoke else 8,
        )
        ctx.cold_store_error = _cold_store_error(run_dir / "probe")
        if "cold" in args.cases and ctx.cold_store_error:
            _log(f"cold storage not available: {ctx.cold_store_error}")
        index_roots: dict[int, Path] = {}
        if "hit" in args.cases:
            for count in (10, args.index_entries):
                index_roots[count] = _index_root(_index_template(count), run_dir / f"index-{count}")
        for data in sizes:
            pristine = f"{data.label}.git"
            cases.link_upstream(data.generated.path, serve_dir, pristine)
            plan: list[tuple[str, Callable[[], list[Result]]]] = [
                ("hit", partial(cases.hit_within_ttl, ctx, data, pristine, index_roots)),
                ("fetch", partial(_fetch, ctx, data, serve_dir)),
                ("miss", partial(cases.miss, ctx, data, pristine)),
                ("concurrent", partial(cases.concurrent_miss, ctx, data, pristine)),
                ("baseline", partial(cases.no_cache_baseline, ctx, data, pristine)),
                ("cold", partial(cases.cold_restore, ctx, data, pristine)),
                ("fleet", partial(_fleet, ctx, data, serve_dir, pristine)),
                ("worktree", partial(cases.worktree, ctx, data, pristine)),
                ("maintenance", partial(_maintenance, ctx, data, serve_dir, args.maintenance_fetches)),
            ]
            for case, run in plan:
                if case in args.cases:
                    _log(f"{data.label}: {case}")
                    results.extend(run())
        if "eviction" in args.cases:
            smallest = sizes[0]
            name = f"{smallest.label}.git"
            _log(f"eviction ({smallest.label} repos, k={list(ctx.eviction_ks)})")
            eviction_data = replace(smallest, reps=max(3, smallest.reps) if not args.smoke else 1)
            templates = {count: _index_template(count) for count in ctx.eviction_index_sizes}
            results.extend(cases.eviction(ctx, eviction_data, name, templates))
        if "freshness" in args.cases:
            _log("freshness: push to visible, adaptive schedule (simulated), hits during background fetches")
            results.extend(freshness.freshness(ctx, smoke=args.smoke))
    finally:
        daemon.stop()
        if not args.keep:
            shutil.rmtree(run_dir, ignore_errors=True)
    machine = report.machine_info(peer_version)
    table = report.markdown(results, machine, sizes)
    elapsed = time.monotonic() - started
    print(table)
    print(f"Total time: {elapsed:.0f} s", flush=True)
    output.mkdir(parents=True, exist_ok=True)
    (output / "results.md").write_text(table)
    payload = {"machine": machine, "elapsed_seconds": elapsed, "args": sys.argv[1:], "results": report.to_json(results)}
    (output / "results.json").write_text(json.dumps(payload, indent=1))
    _log(f"results written to {output}")
    if plot_path is not None:
        why_not = report.plot(results, sizes, plot_path)
        if why_not:
            _log(f"no plot: {why_not}")
    return 0


def _fleet(ctx: Context, data: SizeData, serve_dir: Path, pristine: str) -> list[Result]:
    other = f"{data.label}-other.git"  # the same content under another URL: a second repository to miss
    cases.link_upstream(data.generated.path, serve_dir, other)
    return cases.fleet(ctx, data, pristine, other)


def _fetch(ctx: Context, data: SizeData, serve_dir: Path) -> list[Result]:
    moving = f"{data.label}-fetch.git"
    path = cases.link_upstream(data.generated.path, serve_dir, moving)
    return cases.hit_with_fetch(ctx, data, moving, path)


def _maintenance(ctx: Context, data: SizeData, serve_dir: Path, fetches: int) -> list[Result]:
    moving = f"{data.label}-maintenance.git"
    path = cases.link_upstream(data.generated.path, serve_dir, moving)
    return cases.maintenance(ctx, data, moving, path, fetches)


if __name__ == "__main__":
    with contextlib.suppress(KeyboardInterrupt):
        raise SystemExit(main())
