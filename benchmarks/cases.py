"""The benchmark cases: each measures repocache and its baseline (and git-cache-clone where it has an equivalent)
in the same run, interleaving the sides repetition by repetition so that drift of the machine cancels out.

Every case returns :class:`Result` rows; :mod:`benchmarks.report` turns them into the table.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import time
import uuid
from collections.abc import Callable, Iterator, Sequence
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path
from typing import Any

from benchmarks.datagen import Generated, link_copy
from benchmarks.measure import Measured, TreeSampler, Worker, median, run_measured, timed_run

__all__ = ["Context", "Result", "SizeData"]

MB = 1e6


@dataclass
class Result:
    """One row of the results table (all raw samples kept for the JSON file).

    ``unit`` is ``"s"`` for times and ``"B"`` for memory; ``ours``/``base``/``peer`` hold the samples of
    repocache, the baseline and git-cache-clone. ``ratio`` is median(ours) / median(base) unless the case says
    otherwise; ``met`` is None when the target is not a pass/fail one.
    """

    case: str
    size: str
    against: str
    target: str
    unit: str = "s"
    ours: list[float] = field(default_factory=list)
    base: list[float] = field(default_factory=list)
    peer: list[float] = field(default_factory=list)
    ratio: float | None = None
    met: bool | None = None
    note: str = ""
    peer_note: str = ""
    extra: dict[str, Any] = field(default_factory=dict)

    @property
    def ours_median(self) -> float | None:
        return median(self.ours) if self.ours else None

    @property
    def base_median(self) -> float | None:
        return median(self.base) if self.base else None

    @property
    def peer_median(self) -> float | None:
        return median(self.peer) if self.peer else None

    def with_ratio(self, limit: float | None = None, *, at_least: bool = False) -> Result:
        """Set ``ratio`` from the medians and ``met`` against ``limit`` (at most, or at least with ``at_least``)."""
        if self.ours and self.base:
            self.ratio = median(self.ours) / median(self.base)
            if limit is not None:
                self.met = self.ratio >= limit if at_least else self.ratio <= limit
        return self


@dataclass
class SizeData:
    """A generated upstream being served, and how many repetitions it gets."""

    generated: Generated
    label: str
    reps: int
    hits_per_rep: int
    requests: int

    @property
    def size_mb(self) -> float:
        return self.generated.size_bytes / MB


@dataclass
class Context:
    """What every case needs: the run directory, the daemon's served directory and URLs, the peer's interpreter."""

    run_dir: Path
    serve_dir: Path
    url_base: str
    peer_python: str | None
    log: Callable[[str], None]
    daemon_log: Callable[[], str]
    big_index: int = 100_000
    eviction_ks: Sequence[int] = (1, 10, 100)
    eviction_index_sizes: Sequence[int] = (10, 100_000)
    concurrency: int = 16
    fleet_hosts: int = 8
    cold_store_error: str | None = None
    peer_tree: Path | None = None  # --peer-rev: the peer is repocache from this source tree
    _counter: int = 0

    def url(self, name: str) -> str:
        """The git:// URL of the served repository ``name`` (a path below the served directory)."""
        return f"{self.url_base}/{name}"

    def scratch(self, label: str) -> Path:
        """A new empty directory in the run directory."""
        self._counter += 1
        path = self.run_dir / "scratch" / f"{self._counter:04d}-{label}"
        path.mkdir(parents=True)
        return path

    def worker(self, engine: str, root: Path, *, env: dict[str, str] | None = None, **options: Any) -> Worker:
        """A started worker (not yet ready) for ``engine`` with its cache at ``root`` (and environment ``env``)."""
        python = self.peer_python if engine == "peer" else None
        if engine == "peer" and python is None:
            raise RuntimeError("git-cache-clone is not installed")
        if engine == "peer" and self.peer_tree is not None:
            engine, python = "ours", None
            env = dict(env if env is not None else os.environ, PYTHONPATH=str(self.peer_tree))
        logs = self.run_dir / "logs"
        logs.mkdir(exist_ok=True)
        log = logs / f"{engine}-{uuid.uuid4().hex[:8]}.log"
        worker = Worker(engine, root, options=options, log=log, env=env)
        if python is not None:
            worker.python = python
        return worker.start()

    def upload_packs(self, name: str) -> int:
        """How many upload-pack requests (clones and fetches) the daemon has served for ``name`` so far."""
        return self.daemon_log().count(f"Request upload-pack for '/{name}'")


def _rotate(rep: int, sides: list[tuple[str, Callable[[], None]]]) -> None:
    """Run every side once, starting with a different one each repetition."""
    start = rep % len(sides)
    for _name, run in sides[start:] + sides[:start]:
        run()


def _rm(path: Path) -> None:
    shutil.rmtree(path, ignore_errors=True)


def _settle() -> None:
    """Flush dirty pages of earlier runs, so their writeback does not land inside the next measurement."""
    os.sync()


@contextmanager
def _ready(worker: Worker) -> Iterator[Worker]:
    try:
        worker.wait_ready()
        yield worker
    finally:
        worker.close()


def _git_clone(url: str, dest: Path) -> Measured:
    return run_measured(["git", "clone", "--mirror", "--", url, str(dest)])


def _git_fetch(mirror: Path) -> float:
    return timed_run(["git", "-C", str(mirror), "fetch", "--prune", "origin", "+refs/*:refs/*"])


def _synthetic_rows(root: Path, count: int) -> None:
    """Insert ``count`` rows for repositories that are not on disk straight into the cache's index.

    They are one byte each and used in the future (2096), so LRU eviction reaches every real repository first.
    """
    from repocache.index import Index

    root.mkdir(parents=True, exist_ok=True)
    index = Index(root / "index.sqlite")
    try:
        for i in range(count):
            index.put(f"synthetic-{i:07d}", f"git://synthetic.invalid/r/{i}", 1, 4e9 + i * 1e-3, counter=None)
        index.checkpoint()
    finally:
        index.close()


# -- hit within fetch_ttl ---------------------------------------------------------------------------------------


def hit_within_ttl(ctx: Context, data: SizeData, name: str, index_roots: dict[int, Path]) -> list[Result]:
    """Overhead of ``with cache.checkout(url): pass`` on a hit with a long fetch_ttl, at two index sizes.

    ``index_roots`` maps an index size to a cache root holding that many synthetic rows (built once per run);
    the repository is cloned into each root first. git-cache-clone's nearest call is ``add()`` of a cached
    repository, which answers "already exists" without contacting upstream.
    """
    url = ctx.url(name)
    results: list[Result] = []
    peer_samples: list[float] = []
    peer_root = ctx.scratch(f"{data.label}-peer-hit") if ctx.peer_python else None
    with ExitStack() as stack:
        peer = None
        if peer_root is not None:
            peer = stack.enter_context(_ready(ctx.worker("peer", peer_root)))
            peer.call("clone", url=url)
        for entries, root in sorted(index_roots.items()):
            ours = stack.enter_context(_ready(ctx.worker("ours", root)))
            ours.call("clone", url=url)
            samples: list[float] = []
            hooked_samples: list[float] = []
            floor_samples: list[float] = []
            floor = stack.enter_context(_ready(ctx.worker("floor", root)))
            sides: list[tuple[str, Callable[[], None]]] = [
                ("ours", partial(_hits, ours, url, data, samples)),
                ("floor", partial(_hits, floor, url, data, floor_samples)),
            ]
            if entries == min(index_roots):
                # The same root, opened by a process whose cache has the Prometheus event hook installed.
                hooked = stack.enter_context(_ready(ctx.worker("ours", root, event_hook="metrics")))
                sides.append(("hooked", partial(_hits, hooked, url, data, hooked_samples)))
                if peer is not None:
                    sides.append(("peer", partial(_hits, peer, url, data, peer_samples)))
            for rep in range(data.reps):
                _rotate(rep, sides)
            ours.call("evict", urls=[url])
            ours.close()
            floor.close()
            floor_row = Result(
                case=f"hit within fetch_ttl against its floor, {entries:,} index entries",
                size=data.label,
                against="floor: flock(LOCK_SH) + SELECT + UPDATE last_used + stat, same root",
                target="at most 2x",
                ours=list(samples),
                base=floor_samples,
                note=_tails(samples, floor_samples),
                extra={"index_entries": entries},
            )
            results.append(floor_row.with_ratio(2.0))
            if hooked_samples:
                hooked_row = Result(
                    case="hit within fetch_ttl with the Prometheus event hook installed",
                    size=data.label,
                    against="the same hit without a hook",
                    target="under 0.2 ms",
                    ours=hooked_samples,
                    base=list(samples),
                )
                hooked_row.with_ratio()
                hooked_row.met = median(hooked_samples) < 2e-4
                results.append(hooked_row)
            result = Result(
                case=f"hit within fetch_ttl (no network), {entries:,} index entries",
                size=data.label,
                against="-",
                target="under 1 ms",
                ours=samples,
                extra={"index_entries": entries},
            )
            result.met = median(samples) < 1e-3
            if entries == min(index_roots):
                result.peer = list(peer_samples)
                result.peer_note = "add() of a cached repo" if peer_samples else ""
            results.append(result)
    if peer_root is not None:
        _rm(peer_root)
    return results


def _tails(ours: list[float], floor: list[float]) -> str:
    """p99 and max of both sides, in microseconds."""

    def tail(samples: list[float]) -> str:
        ordered = sorted(samples)
        return f"p99 {ordered[int(len(ordered) * 0.99) - 1] * 1e6:.0f} µs, max {ordered[-1] * 1e6:.0f} µs"

    return f"ours {tail(ours)}; floor {tail(floor)}" if ours and floor else ""


def _hits(worker: Worker, url: str, data: SizeData, into: list[float]) -> None:
    into.extend(worker.call("hit", url=url, n=data.hits_per_rep)["samples"])


# -- hit with fetch ----------------------------------------------------------------------------------------------


def hit_with_fetch(ctx: Context, data: SizeData, name: str, upstream_path: Path) -> list[Result]:
    """Hits that contact upstream: nothing new, then 100 new commits per repetition, against ``git fetch``.

    All sides start from mirrors of the same upstream copy (``name``, which this case changes) and fetch the same
    new commits each repetition: the commits are made once, then every side fetches them.
    """
    from repocache.testing import Upstream

    url = ctx.url(name)
    scratch = ctx.scratch(f"{data.label}-fetch")
    mirror = scratch / "git-mirror.git"
    _git_clone(url, mirror)
    noop = Result("hit with fetch, nothing new", data.label, "`git fetch`", "at most 0.5x")
    new = Result("hit with fetch, 100 new commits", data.label, "`git fetch`", "at most 1.1x")
    with ExitStack() as stack:
        ours = stack.enter_context(_ready(ctx.worker("ours", scratch / "ours")))
        ours.call("clone", url=url)
        peer = None
        if ctx.peer_python:
            peer = stack.enter_context(_ready(ctx.worker("peer", scratch / "peer")))
            peer.call("clone", url=url)

        def sides(result: Result) -> list[tuple[str, Callable[[], None]]]:
            def run_ours() -> None:
                reply = ours.call("fetch", url=url)
                assert reply["fetched"] and reply["source"] == "hit", reply
                result.ours.append(reply["seconds"])

            listed: list[tuple[str, Callable[[], None]]] = [
                ("ours", run_ours),
                ("git", lambda: result.base.append(_git_fetch(mirror))),
            ]
            if peer is not None:
                listed.append(("peer", lambda: result.peer.append(peer.call("fetch", url=url)["seconds"])))
            return listed

        for rep in range(max(data.reps, 5)):
            _rotate(rep, sides(noop))
        upstream = Upstream(upstream_path, f"bench-{data.label}")
        for rep in range(data.reps):
            upstream.commits(100, size=data.generated.spec.new_commit_size)
            _rotate(rep, sides(new))
        tip = upstream.resolve("main")
        for label, path in (("ours", scratch / "ours"), ("git", mirror)):
            found = _tip(path, label)
            if found != tip:
                raise RuntimeError(f"{label}'s mirror has main at {found}, upstream at {tip}")
    noop.with_ratio(0.5)
    new.with_ratio(1.1)
    if noop.peer:
        noop.peer_note = new.peer_note = "refresh() (`git fetch`, no prune)"
    _rm(scratch)
    return [noop, new]


def _tip(path: Path, label: str) -> str:
    """The commit ``main`` points to in the git mirror, or in the repocache root's only mirror."""
    import pygit2

    if label == "ours":
        (path,) = list((path / "repos").iterdir())
    repo = pygit2.Repository(str(path))
    try:
        return str(repo.references["refs/heads/main"].target)
    finally:
        repo.free()


# -- miss ---------------------------------------------------------------------------------------------------------


def miss(ctx: Context, data: SizeData, name: str) -> list[Result]:
    """A clone into an empty cache against ``git clone --mirror``: wall time and peak memory of the process tree.

    Each measurement runs in a fresh process (a fresh worker for the libraries), so peaks do not carry over.
    """
    url = ctx.url(name)
    time_row = Result("miss (clone): time", data.label, "`git clone --mirror`", "at most 1.05x")
    mem_row = Result("miss (clone): peak RSS of the process tree", data.label, "`git clone --mirror`", "at most 1.2x")
    mem_row.unit = "B"
    baselines: dict[str, list[float]] = {"ours": [], "peer": []}

    def library(engine: str, seconds: list[float], memory: list[float]) -> Callable[[], None]:
        def run() -> None:
            root = ctx.scratch(f"{data.label}-miss-{engine}")
            with _ready(ctx.worker(engine, root / "cache")) as worker:
                _settle()
                sampler = TreeSampler(worker.pid)
                sampler.sample()
                sampler.start()
                reply = worker.call("clone", url=url)
                peak = sampler.stop()
                assert reply["source"] == "clone", reply
                seconds.append(reply["seconds"])
                memory.append(peak)
                baselines[engine].append(worker.ready_info["rss"])
            _rm(root)

        return run

    def git() -> None:
        root = ctx.scratch(f"{data.label}-miss-git")
        _settle()
        measured = _git_clone(url, root / "mirror.git")
        time_row.base.append(measured.seconds)
        mem_row.base.append(measured.peak_rss)
        _rm(root)

    sides: list[tuple[str, Callable[[], None]]] = [("ours", library("ours", time_row.ours, mem_row.ours)), ("git", git)]
    if ctx.peer_python:
        sides.append(("peer", library("peer", time_row.peer, mem_row.peer)))
    for rep in range(data.reps):
        _rotate(rep, sides)
    time_row.with_ratio(1.05)
    mem_row.with_ratio(1.2)
    idle = median(baselines["ours"])
    mem_row.extra = {"ours_idle_interpreter_rss": baselines["ours"], "peer_idle_interpreter_rss": baselines["peer"]}
    mem_row.note = (
        f"ours includes its idle Python interpreter ({idle / MB:.0f} MB with repocache and pygit2 loaded); "
        f"without it: {(median(mem_row.ours) - idle) / MB:.0f} MB, "
        f"{(median(mem_row.ours) - idle) / median(mem_row.base):.2f}x"
    )
    if time_row.peer:
        time_row.peer_note = mem_row.peer_note = "add() in mirror mode"
    return [time_row, mem_row]


# -- many processes, one missing repository ------------------------------------------------------------------


def concurrent_miss(ctx: Context, data: SizeData, name: str) -> list[Result]:
    """``concurrency`` processes ask for the same missing repository at once; one ``git clone --mirror`` is the
    baseline.

    The workers import the library and open the cache first; the clock starts when the last of them is ready and
    every one is told to go, and stops when the last one has its checkout. Clones are counted twice: by
    ``stats().clones`` and by the upload-pack requests the daemon logged for the repository.
    """
    url = ctx.url(name)
    n = ctx.concurrency
    row = Result(
        f"{n} processes, same missing repo",
        data.label,
        "one `git clone --mirror`",
        "exactly 1 upstream clone, wall at most 1.2x one clone",
    )
    clone_counts: list[int] = []
    served_counts: list[int] = []
    peer_served: list[int] = []

    def swarm(engine: str, walls: list[float], served: list[int]) -> Callable[[], None]:
        def run() -> None:
            root = ctx.scratch(f"{data.label}-swarm-{engine}")
            workers = [ctx.worker(engine, root / "cache") for _ in range(n)]
            try:
                for worker in workers:
                    worker.wait_ready()
                _settle()
                before = ctx.upload_packs(name)
                started = time.monotonic()
                for worker in workers:
                    worker.send("clone", url=url)
                replies = [worker.reply() for worker in workers]
                walls.append(max(reply["end"] for reply in replies) - started)
                served.append(ctx.upload_packs(name) - before)
                if engine == "ours":
                    clone_counts.append(int(workers[0].call("stats")["clones"]))
            finally:
                for worker in workers:
                    worker.close()
            _rm(root)

        return run

    def git() -> None:
        root = ctx.scratch(f"{data.label}-swarm-git")
        _settle()
        row.base.append(_git_clone(url, root / "mirror.git").seconds)
        _rm(root)

    sides: list[tuple[str, Callable[[], None]]] = [("ours", swarm("ours", row.ours, served_counts)), ("git", git)]
    if ctx.peer_python:
        sides.append(("peer", swarm("peer", row.peer, peer_served)))
    for rep in range(data.reps):
        _rotate(rep, sides)
    row.with_ratio(1.2)
    exactly_one = all(count == 1 for count in clone_counts) and all(count == 1 for count in served_counts)
    row.met = bool(row.met) and exactly_one
    row.note = f"clones per repetition: stats() {clone_counts}, daemon upload-packs {served_counts}"
    row.extra = {"stats_clones": clone_counts, "daemon_upload_packs": served_counts, "peer_upload_packs": peer_served}
    if row.peer:
        row.peer_note = f"add() from {n} processes; daemon upload-packs {peer_served}"
    return [row]


# -- no cache at all ---------------------------------------------------------------------------------------------


def no_cache_baseline(ctx: Context, data: SizeData, name: str) -> list[Result]:
    """N requests for one repository: a fresh clone per request (what the pizza service did) against a cache
    whose first request clones and whose later requests are hits that fetch (``fetch_ttl=0``).

    The samples are the total seconds for the N requests; ``ratio`` is the speedup (clone-per-request / cache).
    """
    url = ctx.url(name)
    n = data.requests
    row = Result(
        f"no-cache baseline: {n} requests, clone per request vs cache (fetch on every hit)",
        data.label,
        "-",
        "the speedup, reported",
    )
    clone_per_request: list[float] = []
    cached: list[float] = []

    def per_request() -> None:
        root = ctx.scratch(f"{data.label}-nocache")
        total = 0.0
        _settle()
        for i in range(n):
            started = time.perf_counter()
            dest = root / f"request-{i}.git"
            _git_clone(url, dest)
            _rm(dest)
            total += time.perf_counter() - started
        clone_per_request.append(total)
        _rm(root)

    def cache() -> None:
        root = ctx.scratch(f"{data.label}-cached")
        with _ready(ctx.worker("ours", root / "cache")) as worker:
            _settle()
            total = sum(worker.call("fetch", url=url)["seconds"] for _ in range(n))
        cached.append(total)
        _rm(root)

    for rep in range(max(1, data.reps // 2)):
        _rotate(rep, [("clone", per_request), ("cache", cache)])
    row.ours = cached
    row.base = clone_per_request
    row.ratio = median(clone_per_request) / median(cached)
    row.against = "a `git clone --mirror` per request (total)"
    row.note = f"speedup {row.ratio:.1f}x"
    return [row]


# -- cold storage ----------------------------------------------------------------------------------------------


def cold_restore(ctx: Context, data: SizeData, name: str) -> list[Result]:
    """A miss served from the cold store (after an eviction offloaded the mirror) against a clone, for two stores:
    a local directory (``file://``) and an S3 bucket served by ``moto_server`` on 127.0.0.1.

    Each repetition, for each store, a fresh worker with a new cache and an empty store (a new directory, or a new
    prefix in the bucket) clones the repository (the baseline: the same miss as the "miss (clone)" case),
    evicts it, which uploads it to the store, and asks for it again: ``ours`` is the time of that restore, as the
    worker reports it. The stores alternate from one repetition to the next. The S3 worker reaches the server
    through ``AWS_ENDPOINT_URL`` (and fake credentials) in its environment, as a user's process would; the server
    runs for the duration of this case.
    """
    from repocache.testing.s3 import Unavailable, moto_endpoint

    url = ctx.url(name)
    target = "at least 10x faster"
    local = Result("restore from cold storage", data.label, "miss (clone)", target)
    s3 = Result("restore from cold storage (S3 endpoint on loopback)", data.label, "miss (clone)", target)
    with ExitStack() as stack:
        sides: list[tuple[str, Callable[[int], None]]] = []  # each takes the repetition
        if ctx.cold_store_error is not None:
            local.note = f"not available: {ctx.cold_store_error}"
        else:

            def local_store(root: Path, _rep: int) -> str:
                (root / "store").mkdir()
                return (root / "store").as_uri()

            sides.append(("local", partial(_restore_once, ctx, data, url, local, local_store, None)))
        try:
            endpoint = stack.enter_context(moto_endpoint(ctx.run_dir / "logs" / f"moto-{data.label}.log"))
        except (Unavailable, RuntimeError) as exc:
            s3.note = f"not available: {exc}"
        else:

            def s3_store(_root: Path, rep: int) -> str:
                return f"s3://{endpoint.bucket}/{data.label}-{rep}"

            sides.append(("s3", partial(_restore_once, ctx, data, url, s3, s3_store, endpoint.environment())))
        for rep in range(data.reps):
            _rotate(rep, [(side, partial(run, rep)) for side, run in sides])
    for row in (local, s3):
        if row.ours:
            row.ratio = median(row.base) / median(row.ours)
            row.met = row.ratio >= 10
            row.note = f"{row.ratio:.1f}x faster than the clone"
    return [local, s3]


def _restore_once(
    ctx: Context,
    data: SizeData,
    url: str,
    row: Result,
    store: Callable[[Path, int], str],
    env: dict[str, str] | None,
    rep: int,
) -> None:
    """One clone, eviction and restore for :func:`cold_restore`, with the store ``store(root, rep)`` names."""
    if row.note:  # found not available in an earlier repetition
        return
    root = ctx.scratch(f"{data.label}-cold")
    try:
        with _ready(ctx.worker("ours", root / "cache", env=env, cold_store=store(root, rep))) as worker:
            _settle()
            cloned = worker.call("clone", url=url)
            worker.call("evict", urls=[url])
            _settle()
            restored = worker.call("clone", url=url)
    finally:
        _rm(root)
    if restored["source"] != "restore":
        row.note = f"not available: the miss after an eviction was a {restored['source']!r}, not a restore"
        row.ours.clear()
        row.base.clear()
        return
    row.base.append(cloned["seconds"])
    row.ours.append(restored["seconds"])


# -- a fleet sharing one store ---------------------------------------------------------------------------------------


@dataclass
class _FleetStore:
    """One shared store of the fleet case: a fresh location per use, and the environment its processes need."""

    kind: str
    new: Callable[[str], str]
    env: dict[str, str] | None


def fleet(ctx: Context, data: SizeData, name: str, other: str) -> list[Result]:
    """``fleet_hosts`` hosts, simulated as as many cache roots in as many processes, sharing one cold store: a local
    directory, and an S3 bucket served by ``moto_server`` on 127.0.0.1 (reached through ``AWS_ENDPOINT_URL``).

    Three measurements per store, each side by side with its baseline in the same run:

    * every host misses the same repository at the same instant, with ``cold_publish="clone"``: how many upstream
      clones (checkouts whose source is ``clone``; the daemon's upload-pack requests are reported too, and include
      the fetch each restored copy makes), and the wall time until the last host has it, against one
      ``git clone --mirror``;
    * a fresh host's first checkout of a published repository (a restore, then the fetch of the restored copy)
      against ``git clone --mirror``; with the peak RSS of the host's process tree;
    * a miss of one repository (``other``) while uploads of a different one run back to back (``publish()``), by
      another host (another root: no lock in common, so what it adds is the machine's contention alone) and by
      another process of the same host (same root, so the same locks: the miss's cache has a byte budget and makes
      room under the budget lock), against the same miss with no upload running. The share of the miss during
      which uploads were running is reported.
    """
    from repocache.testing.s3 import Unavailable, moto_endpoint

    stores: list[_FleetStore] = []
    skipped: list[Result] = []
    with ExitStack() as stack:
        if ctx.cold_store_error is None:
            base = ctx.scratch(f"{data.label}-fleet-stores")

            def local_store(tag: str) -> str:
                (base / tag).mkdir()
                return str(base / tag)

            stores.append(_FleetStore("local directory", local_store, None))
        try:
            endpoint = stack.enter_context(moto_endpoint(ctx.run_dir / "logs" / f"moto-fleet-{data.label}.log"))
        except (Unavailable, RuntimeError) as exc:
            row = Result(f"{ctx.fleet_hosts} hosts, same missing repo (S3 endpoint)", data.label, "-", "-")
            row.note = f"not available: {exc}"
            skipped.append(row)
        else:
            stores.append(
                _FleetStore(
                    "S3 endpoint", lambda tag: f"s3://{endpoint.bucket}/{data.label}-{tag}", endpoint.environment()
                )
            )
        results: list[Result] = []
        for store in stores:
            results.append(_fleet_stampede(ctx, data, name, store))
            results.append(_fleet_first_checkout(ctx, data, name, store))
            results.append(_fleet_miss_during_upload(ctx, data, name, other, store, same_host=False))
            results.append(_fleet_miss_during_upload(ctx, data, name, other, store, same_host=True))
    return results + skipped


def _fleet_stampede(ctx: Context, data: SizeData, name: str, store: _FleetStore) -> Result:
    url = ctx.url(name)
    n = ctx.fleet_hosts
    row = Result(
        f"{n} hosts, same missing repo, shared store ({store.kind})",
        data.label,
        "one `git clone --mirror`",
        "1 upstream clone",
    )
    clones: list[int] = []
    served: list[int] = []

    def ours(rep: int) -> None:
        scratch = ctx.scratch(f"{data.label}-fleet-stampede")
        location = store.new(f"stampede-{rep}-{uuid.uuid4().hex[:6]}")
        workers = [
            ctx.worker("ours", scratch / f"host-{i}", env=store.env, cold_store=location, cold_publish="clone")
            for i in range(n)
        ]
        try:
            for worker in workers:
                worker.wait_ready()
            _settle()
            before = ctx.upload_packs(name)
            started = time.monotonic()
            for worker in workers:
                worker.send("clone", url=url)
            replies = [worker.reply() for worker in workers]
            row.ours.append(max(reply["end"] for reply in replies) - started)
            clones.append(sum(1 for reply in replies if reply["source"] == "clone"))
            served.append(ctx.upload_packs(name) - before)
        finally:
            for worker in workers:
                worker.close()
        _rm(scratch)

    def git() -> None:
        root = ctx.scratch(f"{data.label}-fleet-git")
        _settle()
        row.base.append(_git_clone(url, root / "mirror.git").seconds)
        _rm(root)

    for rep in range(data.reps):
        _rotate(rep, [("ours", partial(ours, rep)), ("git", git)])
    row.with_ratio()
    row.met = all(count == 1 for count in clones)
    row.note = (
        f"upstream clones per repetition {clones} (the other hosts restored); daemon upload-packs {served} "
        f"(1 clone + a fetch per restored copy); wall {row.ratio:.2f}x one clone"
    )
    row.extra = {"hosts": n, "clones": clones, "daemon_upload_packs": served}
    return row


def _fleet_first_checkout(ctx: Context, data: SizeData, name: str, store: _FleetStore) -> Result:
    url = ctx.url(name)
    row = Result(
        f"fresh host's first checkout of a published repo ({store.kind})",
        data.label,
        "`git clone --mirror`",
        "the restore ratios (11-19x faster at 53-570 MB, local store)",
    )
    memory: list[float] = []
    git_memory: list[float] = []
    idle: list[float] = []
    location = store.new(f"published-{uuid.uuid4().hex[:6]}")
    publisher_root = ctx.scratch(f"{data.label}-fleet-publisher")
    with _ready(ctx.worker("ours", publisher_root, env=store.env, cold_store=location)) as publisher:
        publisher.call("publish", url=url)
    _rm(publisher_root)

    def ours() -> None:
        root = ctx.scratch(f"{data.label}-fleet-fresh-host")
        with _ready(ctx.worker("ours", root, env=store.env, cold_store=location)) as worker:
            _settle()
            sampler = TreeSampler(worker.pid)
            sampler.sample()
            sampler.start()
            reply = worker.call("clone", url=url)
            memory.append(sampler.stop())
            idle.append(worker.ready_info["rss"])
        if reply["source"] != "restore":
            raise RuntimeError(f"a fresh host's first checkout was a {reply['source']!r}, not a restore")
        row.ours.append(reply["seconds"])
        _rm(root)

    def git() -> None:
        root = ctx.scratch(f"{data.label}-fleet-git")
        _settle()
        measured = _git_clone(url, root / "mirror.git")
        row.base.append(measured.seconds)
        git_memory.append(measured.peak_rss)
        _rm(root)

    for rep in range(data.reps):
        _rotate(rep, [("ours", ours), ("git", git)])
    row.ratio = median(row.base) / median(row.ours)
    row.met = row.ratio >= 10
    row.note = (
        f"{row.ratio:.1f}x faster than the clone (a restore, then a fetch of the restored copy); peak RSS of the "
        f"host's process tree {median(memory) / MB:.0f} MB ({(median(memory) - median(idle)) / MB:.0f} MB above "
        f"its idle interpreter), `git clone --mirror` {median(git_memory) / MB:.0f} MB"
    )
    row.extra = {"peak_rss": memory, "idle_rss": idle, "git_peak_rss": git_memory}
    return row


def _fleet_miss_during_upload(
    ctx: Context, data: SizeData, name: str, other: str, store: _FleetStore, *, same_host: bool
) -> Result:
    uploaded, missed = ctx.url(name), ctx.url(other)
    where = "another process of the same host" if same_host else "another host"
    row = Result(
        f"miss while {where} uploads to the store ({store.kind})",
        data.label,
        "the same miss, no upload running",
        "no added latency",
    )
    overlaps: list[float] = []
    uploads: list[int] = []
    scratch = ctx.scratch(f"{data.label}-fleet-upload")
    host = scratch / "host"
    uploader_root = host if same_host else scratch / "uploading-host"
    with _ready(ctx.worker("ours", uploader_root)) as setup:
        setup.call("clone", url=uploaded)
    with _ready(ctx.worker("ours", host, max_bytes="100GB")) as misser:
        reference = misser.call("clone", url=missed)["seconds"]  # how long to keep uploading: the miss, and more
        misser.call("evict", urls=[missed])

        def with_upload(rep: int) -> None:
            location = store.new(f"upload-{int(same_host)}-{rep}-{uuid.uuid4().hex[:6]}")
            with _ready(ctx.worker("ours", uploader_root, env=store.env, cold_store=location)) as uploader:
                _settle()
                uploader.send("publish_for", url=uploaded, seconds=2 * reference + 1)
                time.sleep(0.3)  # let the first upload get going
                reply = misser.call("clone", url=missed)
                upload = uploader.reply()
            assert reply["source"] == "clone", reply
            miss_started = reply["end"] - reply["seconds"]
            overlap = max(0.0, min(upload["end"], reply["end"]) - max(upload["started"], miss_started))
            overlaps.append(overlap / reply["seconds"])
            uploads.append(upload["uploads"])
            row.ours.append(reply["seconds"])
            misser.call("evict", urls=[missed])

        def alone() -> None:
            _settle()
            reply = misser.call("clone", url=missed)
            assert reply["source"] == "clone", reply
            row.base.append(reply["seconds"])
            misser.call("evict", urls=[missed])

        for rep in range(data.reps):
            _rotate(rep, [("upload", partial(with_upload, rep)), ("alone", alone)])
    _rm(scratch)
    row.with_ratio()
    row.note = (
        f"uploads ran during {median(overlaps) * 100:.0f}% of the miss (median; {median(uploads):.0f} back-to-back "
        f"uploads of the {data.label} mirror per repetition); "
        + (
            "same root: the miss made room under the budget lock while the uploads held their repository shared"
            if same_host
            else "separate roots: no lock in common, only the machine"
        )
    )
    row.extra = {"overlap": overlaps, "uploads": uploads, "same_host": same_host}
    return row


# -- worktree ------------------------------------------------------------------------------------------------------


def worktree(ctx: Context, data: SizeData, name: str) -> list[Result]:
    """A temporary worktree of a cached repository, created and removed, against ``git worktree add`` and
    ``git worktree remove --force`` on a ``git clone --mirror`` of the same upstream, on the same disk.

    ``ours`` is the time a fresh worker reports for ``with cache.worktree(url, "HEAD"): ...``, entering and
    exiting (which deletes the tree), with the repository already in the cache and a long ``fetch_ttl`` (a hit,
    no network). The baseline is the wall time of the two git commands, each a fresh process, checking out the
    same commit (the one HEAD resolves to). The sides alternate from one repetition to the next.
    """
    url = ctx.url(name)
    row = Result(
        "worktree: create and remove",
        data.label,
        "`git worktree add` + `git worktree remove --force`",
        "at most 1.2x",
    )
    root = ctx.scratch(f"{data.label}-worktree")
    mirror = root / "mirror.git"
    _git_clone(url, mirror)
    commit = subprocess.run(
        ["git", "-C", str(mirror), "rev-parse", "--verify", "HEAD^{commit}"],
        capture_output=True,
        text=True,
        check=True,
    ).stdout.strip()
    with _ready(ctx.worker("ours", root / "cache")) as worker:
        assert worker.call("clone", url=url)["source"] == "clone"

    def ours() -> None:
        with _ready(ctx.worker("ours", root / "cache")) as worker:
            _settle()
            reply = worker.call("worktree", url=url, ref="HEAD")
        if reply["commit"] != commit:
            raise RuntimeError(f"repocache checked out {reply['commit']}, git's mirror has HEAD at {commit}")
        row.ours.append(reply["seconds"])

    def git(rep: int) -> None:
        tree = root / f"git-worktree-{rep}"
        _settle()
        seconds = timed_run(["git", "-C", str(mirror), "worktree", "add", str(tree), commit])
        seconds += timed_run(["git", "-C", str(mirror), "worktree", "remove", "--force", str(tree)])
        if tree.exists():
            raise RuntimeError(f"`git worktree remove --force` left {tree}")
        row.base.append(seconds)

    for rep in range(data.reps):
        _rotate(rep, [("ours", ours), ("git", partial(git, rep))])
    row.with_ratio(1.2)
    row.note = f"commit {commit[:12]}, checked out by both sides"
    _rm(root)
    return [row]


# -- eviction -----------------------------------------------------------------------------------------------------


def eviction(ctx: Context, data: SizeData, name: str, templates: dict[int, Path]) -> list[Result]:
    """``enforce()`` evicting k repositories (copies of ``name``) at two index sizes.

    The index also holds synthetic rows (repositories not on disk, newer than the k real ones); the budget is set
    so that exactly the k real ones must go. Linear in k: the time per repository at the largest k is within 2x of
    the time per repository at the middle k. Independent of index size: at each k, the time at the largest index
    is within 1.5x of the time at the smallest (or 2 ms, for timer noise at k=1).
    """
    from repocache import RepoCache
    from repocache.index import Index
    from repocache.keys import normalize_url

    template = ctx.scratch(f"{data.label}-evict-template") / "mirror.git"
    _git_clone(ctx.url(name), template)
    from repocache.gitops import disk_usage

    size = disk_usage(template)
    timings: dict[tuple[int, int], list[float]] = {}
    peer_timings: dict[int, list[float]] = {}
    peer_template: Path | None = None
    if ctx.peer_python:
        peer_template = ctx.scratch("peer-evict-template")
        with _ready(ctx.worker("peer", peer_template)) as peer:
            peer.call("clone", url=ctx.url(name))

    def ours_once(entries: int, k: int) -> None:
        root = ctx.scratch(f"evict-{entries}-{k}")
        shutil.copy2(templates[entries], root / "index.sqlite")
        (root / "repos").mkdir()
        index = Index(root / "index.sqlite")
        urls = [f"git://evict.invalid/r/{i:04d}" for i in range(k)]
        old = time.time() - 100_000
        for i, url in enumerate(urls):
            key = normalize_url(url).key
            shutil.copytree(template, root / "repos" / key)
            index.put(key, url, size, old + i, counter=None)
        index.close()
        with RepoCache(root, max_bytes=entries) as cache:
            started = time.perf_counter()
            evicted = cache.enforce()
            seconds = time.perf_counter() - started
            left = cache.stats().entries
        if len(evicted) != k or left != entries:
            raise RuntimeError(f"enforce() evicted {len(evicted)} of {k} repositories, {left} entries left")
        timings.setdefault((entries, k), []).append(seconds)
        _rm(root)

    def peer_once(k: int) -> None:
        assert peer_template is not None
        root = ctx.scratch(f"peer-evict-{k}")
        (pod,) = list((peer_template / "repos").iterdir())
        urls = [f"git://evict.invalid/r/{i:04d}" for i in range(k)]
        for i in range(k):
            shutil.copytree(pod, root / "repos" / f"evict.invalid_r_{i:04d}")
        with _ready(ctx.worker("peer", root)) as peer:
            peer_timings.setdefault(k, []).append(peer.call("evict", urls=urls)["seconds"])
        _rm(root)

    for rep in range(data.reps):
        for k in ctx.eviction_ks:
            sides: list[tuple[str, Callable[[], None]]] = [
                (f"ours-{entries}", partial(ours_once, entries, k)) for entries in ctx.eviction_index_sizes
            ]
            if peer_template is not None:
                sides.append(("peer", partial(peer_once, k)))
            _rotate(rep, sides)

    results: list[Result] = []
    small_index = min(ctx.eviction_index_sizes)
    ks = sorted(ctx.eviction_ks)
    for k in ks:
        for entries in ctx.eviction_index_sizes:
            row = Result(
                f"eviction of {k} repos (enforce), {entries:,} index entries",
                f"{data.label} x{k}",
                "-" if entries == small_index else f"same k at {small_index:,} entries",
                "time linear in k, independent of index size",
                ours=timings[(entries, k)],
                extra={"k": k, "index_entries": entries, "repo_bytes": size},
            )
            if entries != small_index:
                row.base = timings[(small_index, k)]
                row.with_ratio()
                assert row.ratio is not None
                slack = median(row.ours) - median(row.base)
                row.met = row.ratio <= 1.5 or slack < 0.002
            row.note = f"{median(timings[(entries, k)]) / k * 1e3:.2f} ms per repo"
            if entries == small_index and k in peer_timings:
                row.peer = peer_timings[k]
                row.peer_note = "clean() of each (no LRU, no budget)"
            results.append(row)
    if len(ks) >= 2:
        top, mid = ks[-1], ks[-2]
        for entries in ctx.eviction_index_sizes:
            per_top = median(timings[(entries, top)]) / top
            per_mid = median(timings[(entries, mid)]) / mid
            linear = per_top <= 2 * per_mid
            for row in results:
                if row.extra.get("index_entries") == entries and row.extra.get("k") == top:
                    row.note += f"; per repo {per_top / per_mid:.2f}x the k={mid} figure"
                    row.met = linear if row.met is None else (row.met and linear)
    for path in [template.parent, *([peer_template] if peer_template else [])]:
        _rm(path)
    return results


def link_upstream(source: Path, serve_dir: Path, name: str) -> Path:
    """Serve a link-copy of ``source`` as ``name``; returns its path."""
    dest = serve_dir / name
    _rm(dest)
    link_copy(source, dest)
    return dest


# -- maintenance of a long-lived mirror ---------------------------------------------------------------------------


def maintenance(ctx: Context, data: SizeData, name: str, upstream_path: Path, fetches: int) -> list[Result]:
    """A mirror after ``fetches`` fetch-on-hits of a few commits each, with maintenance at its defaults and with
    it off, against a fresh ``git clone --mirror`` of the same upstream made at the end (issue 13).

    Both caches run in this process and fetch the same new commits each round (three commits of
    ``new_commit_size`` bytes, made once). Each round times the fetch (entering the checkout) apart from what the
    release costs (leaving it: automatic maintenance when a threshold was crossed). Afterwards, on the three
    mirrors in turn (alternating the order): reading every blob of HEAD's tree with pygit2, a topological pygit2
    walk of HEAD, ``git log`` of HEAD, a no-op libgit2 fetch (the library's own fetch), the disk size and the
    pack count. Each figure of the maintained mirror should be at most 1.1x the fresh clone's.
    """
    import statistics

    import pygit2

    from repocache import RepoCache, normalize_url
    from repocache.gitops import GitOptions, disk_usage, fetch_mirror, find_git, mirror_shape
    from repocache.testing import Upstream

    url = ctx.url(name)
    scratch = ctx.scratch(f"{data.label}-maintenance")
    upstream = Upstream(upstream_path, f"bench-maint-{data.label}")
    kept = RepoCache(scratch / "maintained", fetch_ttl=0)
    decayed = RepoCache(scratch / "off", fetch_ttl=0, maintenance="off")
    fetch_seconds = {"maintained": 0.0, "off": 0.0}
    release_seconds = {"maintained": 0.0, "off": 0.0}
    most_packs = {"maintained": 0, "off": 0}
    maintenances = 0
    try:
        for cache in (kept, decayed):
            cache.ensure(url)
        paths = {"maintained": kept.info(url), "off": decayed.info(url)}
        mirrors = {side: entry.path for side, entry in paths.items() if entry is not None}
        started = time.monotonic()
        for number in range(fetches):
            upstream.commits(3, size=data.generated.spec.new_commit_size)
            for side, cache in (("maintained", kept), ("off", decayed)):
                t0 = time.perf_counter()
                with cache.checkout(url) as co:
                    t1 = time.perf_counter()
                    assert co.fetched, co
                t2 = time.perf_counter()
                fetch_seconds[side] += t1 - t0
                release_seconds[side] += t2 - t1
                packs = mirror_shape(mirrors[side]).packs
                if side == "maintained" and packs < most_packs[side] and packs < 3:
                    maintenances += 1
                most_packs[side] = max(most_packs[side], packs)
            if number % 100 == 99:
                ctx.log(f"  {number + 1} fetches, {time.monotonic() - started:.0f} s")
        fresh = scratch / "fresh.git"
        _git_clone(url, fresh)
        mirrors["fresh"] = fresh
        tip = upstream.resolve("main")
        for side, path in mirrors.items():
            found = _tip(path, "git")
            if found != tip:
                raise RuntimeError(f"the {side} mirror has main at {found}, upstream at {tip}")
        options = GitOptions(git=find_git())
        parsed = normalize_url(url)
        figures: dict[str, dict[str, list[float]]] = {side: {} for side in mirrors}

        def measure(side: str) -> None:
            path = mirrors[side]
            into = figures[side]
            repo = pygit2.Repository(str(path))
            try:
                t0 = time.perf_counter()
                stack: list[Any] = [repo.revparse_single("HEAD").peel(pygit2.Tree)]
                read = 0
                while stack:
                    for entry in stack.pop():
                        obj: Any = repo[entry.id]
                        if entry.type_str == "tree":
                            stack.append(obj)
                        else:
                            read += len(obj.data)
                into.setdefault("blob reads", []).append(time.perf_counter() - t0)
            finally:
                repo.free()
            repo = pygit2.Repository(str(path))
            try:
                t0 = time.perf_counter()
                walked = sum(1 for _ in repo.walk(repo.head.target, pygit2.enums.SortMode.TOPOLOGICAL))
                into.setdefault("pygit2 history walk", []).append(time.perf_counter() - t0)
            finally:
                repo.free()
            into.setdefault("`git log`", []).append(timed_run(["git", "-C", str(path), "log", "--format=%H %s"]))
            t0 = time.perf_counter()
            fetch_mirror(parsed, path, options)
            into.setdefault("no-op fetch", []).append(time.perf_counter() - t0)
            into.setdefault("disk size", []).append(float(disk_usage(path)))
            into.setdefault("packs", []).append(float(mirror_shape(path).packs))
            del read, walked

        sides = list(mirrors)
        for rep in range(max(3 * data.reps, 9)):  # more repetitions than other cases: each one is short
            _rotate(rep, [(side, partial(measure, side)) for side in sides])
        probe: dict[str, float] = {}
        for side in ("maintained", "off"):
            samples = []
            for _ in range(200):
                t0 = time.perf_counter()
                mirror_shape(mirrors[side])
                samples.append(time.perf_counter() - t0)
            probe[side] = statistics.median(samples)
    finally:
        kept.close()
        decayed.close()
    results: list[Result] = []
    for metric in ("blob reads", "pygit2 history walk", "`git log`", "no-op fetch", "disk size", "packs"):
        unit = "B" if metric == "disk size" else ("n" if metric == "packs" else "s")
        row = Result(
            f"after {fetches:,} fetch-on-hits, maintenance at its defaults: {metric}",
            data.label,
            "a fresh `git clone --mirror`",
            "at most 1.1x" if metric != "packs" else "bounded",
            unit=unit,
            ours=figures["maintained"][metric],
            base=figures["fresh"][metric],
        )
        off = median(figures["off"][metric])
        row.with_ratio(None if metric == "packs" else 1.1)
        if metric == "packs":
            row.met = most_packs["maintained"] <= 32
            row.note = f"most during the run: {most_packs['maintained']}; without maintenance: {off:.0f}"
        else:
            shown = f"{off / 1e6:.1f} MB" if unit == "B" else f"{off * 1e3:.1f} ms"
            row.note = f"without maintenance: {shown}, {off / median(row.base):.2f}x"
        row.extra = {"without_maintenance": figures["off"][metric]}
        results.append(row)
    cost = Result(
        f"{fetches:,} fetch-on-hits: time of automatic maintenance (on release) against the fetches",
        data.label,
        "the fetches' total",
        "reported",
        ours=[release_seconds["maintained"]],
        base=[fetch_seconds["maintained"]],
    )
    cost.ratio = release_seconds["maintained"] / fetch_seconds["maintained"]
    cost.note = (
        f"about {maintenances} maintenances; releases without maintenance took {release_seconds['off']:.2f} s, "
        f"fetches without maintenance {fetch_seconds['off']:.2f} s; the threshold check after a fetch: "
        f"{probe['maintained'] * 1e6:.0f} µs ({probe['off'] * 1e6:.0f} µs on the unmaintained mirror)"
    )
    cost.extra = {"fetch_seconds": fetch_seconds, "release_seconds": release_seconds, "probe_seconds": probe}
    results.append(cost)
    _rm(scratch)
    return results
