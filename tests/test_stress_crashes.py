"""Crash injection: a worker killed at any instant loses nothing (issue 6, part 1).

A real worker process (``tests/_stress_worker.py``) is SIGKILLed at a uniformly random instant of a clone, a fetch,
a worktree's creation, a cold upload or restore, a maintenance run or a loop of evictions (plus targeted kills inside
the short windows that matter most: publishing a clone, an eviction's rename). After every kill the cache is checked
as a later caller would find it: what is published under ``repos/`` is a whole repository (``git fsck`` passes), no
lock is left held, a fresh checkout gets upstream's refs, ``verify(repair=True)`` repairs whatever ``verify()``
finds, and the index agrees with the disk.

The default run does a few kills (well under a minute on 2 cores); ``python -m pytest -m slow
tests/test_stress_crashes.py -s`` runs the full proof and prints the figures recorded in RELIABILITY.md. Set
``REPOCACHE_STRESS_SEED`` to replay a run and ``REPOCACHE_STRESS_REPORT`` to a file to get the figures as JSON.
"""

from __future__ import annotations

import collections
import hashlib
import os
import random
import shutil
import signal
import sqlite3
import subprocess
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import psutil
import pytest

from repocache import RepoCache
from repocache.cold import LocalDirStore
from repocache.gitops import sweep_mirror, validate_mirror
from repocache.index import RECENCY_GRANULARITY
from repocache.locks import acquire
from repocache.testing import GitDaemon, SmartHTTPServer, Upstream, UpstreamFactory
from tests._stress_worker import fsck
from tests.helpers import (
    all_objects,
    assert_consistent,
    key_of,
    listing,
    mirror_refs,
    report_figures,
    stress_seed,
    stress_worker,
)


def _events(path: Path) -> list[tuple[float, str]]:
    if not path.exists():
        return []
    found = []
    for line in path.read_text().splitlines():
        stamp, _, name = line.partition(" ")
        found.append((float(stamp), name))
    return found


def _wait_event(path: Path, wanted: Callable[[str], bool], process: subprocess.Popen[str], timeout: float) -> float:
    """Wait until an event ``wanted`` accepts is logged and return its time; fail if the worker dies first."""
    deadline = time.monotonic() + timeout
    while True:
        for stamp, name in _events(path):
            if wanted(name):
                return stamp
        if process.poll() is not None:
            out, err = process.communicate()
            raise AssertionError(f"the worker exited with {process.returncode} before the event: {out}\n{err}")
        if time.monotonic() > deadline:
            raise AssertionError(f"no wanted event in {timeout}s; events: {_events(path)}")
        time.sleep(0.002)


def _kill(process: subprocess.Popen[str]) -> bool:
    """SIGKILL the worker and reap it; False if it had already exited (that is a failure of the operation)."""
    alive = process.poll() is None
    process.send_signal(signal.SIGKILL)
    out, err = process.communicate(timeout=30)
    if not alive:
        raise AssertionError(f"the worker exited with {process.returncode} before it was killed: {out}\n{err}")
    return alive


def _wait_no_process_in(root: Path, timeout: float = 15.0) -> None:
    """No process (a git the worker started) still works in ``root`` after the worker's death."""
    needle = str(root)
    deadline = time.monotonic() + timeout
    while True:
        lingering = []
        for process in psutil.process_iter(["pid", "cmdline", "cwd"]):
            if process.info["pid"] == os.getpid():
                continue
            cmdline = " ".join(process.info["cmdline"] or [])
            cwd = process.info["cwd"] or ""
            if needle in cmdline or cwd.startswith(needle):
                lingering.append(f"{process.info['pid']}: {cmdline} (in {cwd})")
        if not lingering:
            return
        if time.monotonic() > deadline:
            raise AssertionError(f"processes outlived the killed worker in {root}: {lingering}")
        time.sleep(0.02)


def _held_locks(root: Path) -> list[str]:
    """Lock files under ``root/locks`` that someone still holds (nobody should, once the worker is dead)."""
    held = []
    for path in sorted((root / "locks").glob("*")):
        handle = acquire(path, shared=False, timeout=0)
        if handle is None:
            held.append(path.name)
        else:
            handle.release()
    return held


def _phase(events: list[tuple[float, str]]) -> str:
    """Where the kill landed, from the last steps the worker logged before it died."""
    state = "starting"
    receiving = False
    for _stamp, name in events:
        if name == "ready":
            state = "before transfer"
        elif name in ("clone:start", "fetch:start"):
            state, receiving = "transfer (connecting)", False
        elif name.startswith("progress:") and state.startswith("transfer"):
            receiving = True
            state = "transfer (receiving)"
        elif name in ("clone:end", "fetch:end"):
            state = "after transfer (publishing)"
        elif name == "worktree:start":
            state = "worktree creation"
        elif name == "worktree:end":
            state = "after worktree creation"
        elif name == "restore:start":
            state = "restore (unpacking)"
        elif name == "restore:end":
            state = "after restore (publishing)"
        elif name == "evict:start":
            state = "eviction"
        elif name == "upload:start":
            state = "eviction (cold upload)"
        elif name == "upload:end":
            state = "eviction (after the upload)"
        elif name == "evict:end":
            state = "after eviction"
        elif name.startswith("evicted:") or name.startswith("maintained:"):
            state = "after the operation"
        elif name.split(":")[0] in _MAINTENANCE_STEPS and name.endswith(":start"):
            state = f"maintenance ({name.split(':')[0]})"
        elif name.split(":")[0] in _MAINTENANCE_STEPS and name.endswith(":end"):
            state = "maintenance (between steps)"
        elif name.startswith("held") or name.startswith("hit:"):
            state = "held by the caller"
        elif name == "flush:start":
            state = "recency write"
        elif name == "flush:end":
            state = "after recency write"
        elif name == "op:end":
            state = "after the operation"
        elif name.startswith("op:"):
            state = "between operations"
    del receiving
    return state


_MAINTENANCE_STEPS = ("repack", "pack-refs", "commit-graph", "prune")

_BUCKET = {
    "maintenance (repack)": "during",
    "maintenance (pack-refs)": "during",
    "maintenance (commit-graph)": "during",
    "maintenance (prune)": "during",
    "maintenance (between steps)": "during",
    "starting": "before",
    "before transfer": "before",
    "between operations": "before",
    "transfer (connecting)": "during",
    "transfer (receiving)": "during",
    "worktree creation": "during",
    "eviction": "during",
    "eviction (cold upload)": "during",
    "eviction (after the upload)": "during",
    "restore (unpacking)": "during",
    "recency write": "during",
}


def _bucket(phase: str) -> str:
    """Before / during / after the transfer (or the worktree creation, restore or eviction of those scenarios)."""
    return _BUCKET.get(phase, "after")


# -- the lab: scenarios, trials and the checks after each kill -----------------------------------------------------


@dataclass
class Scenario:
    """One kind of operation to kill, with what it needs before each trial and after each kill."""

    name: str
    action: str  # checkout | worktree | evict_loop | hit_loop
    upstreams: list[Upstream]
    urls: list[str]
    root: Path
    options: dict[str, Any] = field(default_factory=dict)
    prepare: Callable[[Scenario, random.Random], None] | None = None
    targets: tuple[str, ...] = ()  # events after which targeted kills land
    duration: float = 0.0  # measured length of the operation (T)
    windows: dict[str, float] = field(default_factory=dict)  # measured length of what follows each target event
    fixed_windows: dict[str, float] = field(default_factory=dict)  # windows chosen instead of measured
    objects: set[str] = field(default_factory=set)  # every object in the mirror before the trial (maintenance)
    counters: dict[str, int] = field(default_factory=dict)  # the index's counters after the last trial (hits)


class CrashLab:
    """Runs crash trials and keeps the figures."""

    def __init__(self, tmp_path: Path, rng: random.Random) -> None:
        self.tmp_path = tmp_path
        self.rng = rng
        self.trials: list[dict[str, Any]] = []
        self.failures: list[str] = []
        self.counter = 0
        self.killed_at = 0.0  # wall-clock time of the last kill

    # -- running -----------------------------------------------------------------------------------------------

    def spec(self, scenario: Scenario, events: Path) -> dict[str, Any]:
        spec: dict[str, Any] = {
            "root": str(scenario.root),
            "events": str(events),
            "action": scenario.action,
            "options": scenario.options,
            "hold": 0.02,
        }
        if scenario.action in ("evict_loop", "hit_loop"):
            spec.update(urls=scenario.urls, seed=self.rng.randrange(1 << 30))
        else:
            spec["url"] = scenario.urls[0]
        if scenario.action == "worktree":
            spec["ref"] = self.rng.choice(["HEAD", "main", "v1"])
        if scenario.action == "maintain":
            spec["prune"] = self.rng.random() < 0.3  # the grace period keeps every object of this trial
        return spec

    def _events_file(self) -> Path:
        self.counter += 1
        return self.tmp_path / f"events-{self.counter}"

    def calibrate(self, scenario: Scenario) -> None:
        """Run the operation once undisturbed: T, and how long the window after each target event lasts."""
        if scenario.prepare is not None:
            scenario.prepare(scenario, self.rng)
        events_path = self._events_file()
        process = stress_worker("crash", self.spec(scenario, events_path))
        try:
            if scenario.action == "evict_loop":
                # The loop never ends: T covers a few dozen of its operations.
                _wait_event(events_path, lambda name: name == "op:30", process, 120)
            elif scenario.action == "hit_loop":
                # T covers several of the flusher's rounds.
                _wait_event(events_path, lambda name: name == "op:500", process, 120)
            else:
                _wait_event(events_path, lambda name: name == "op:end", process, 120)
        finally:
            _kill(process)
            self.killed_at = time.time()
        events = _events(events_path)
        ready = next(stamp for stamp, name in events if name == "ready")
        last = events[-1][0]
        scenario.duration = last - ready
        for target in scenario.targets:
            spans = [
                events[i + 1][0] - stamp for i, (stamp, name) in enumerate(events[:-1]) if name == target
            ]  # from the target event to the next step
            spans = [s for s in spans if s > 0]
            scenario.windows[target] = max(0.003, 2 * (sorted(spans)[len(spans) // 2] if spans else 0.005))
        scenario.windows.update(scenario.fixed_windows)
        self.check(scenario, events_path, mode="calibration", delay=0.0)

    def trial(self, scenario: Scenario, *, targeted: str | None = None) -> None:
        """One kill: at a uniformly random instant of [0, 1.15 T] after the cache opened, or inside a window."""
        if scenario.prepare is not None:
            scenario.prepare(scenario, self.rng)
        events_path = self._events_file()
        process = stress_worker("crash", self.spec(scenario, events_path))
        if targeted is None:
            start = _wait_event(events_path, lambda name: name == "ready", process, 60)
            delay = self.rng.uniform(0, 1.15 * scenario.duration)
        else:
            start = _wait_event(events_path, lambda name: name in (targeted, "op:end"), process, 60)
            delay = self.rng.uniform(0, scenario.windows[targeted])
        time.sleep(max(0.0, start + delay - time.monotonic()))
        _kill(process)
        self.killed_at = time.time()
        self.check(scenario, events_path, mode=f"targeted {targeted}" if targeted else "random", delay=delay)

    # -- checking ----------------------------------------------------------------------------------------------

    def check(self, scenario: Scenario, events_path: Path, *, mode: str, delay: float) -> None:
        events = _events(events_path)
        phase = _phase(events)
        record: dict[str, Any] = {
            "scenario": scenario.name,
            "mode": mode,
            "delay": round(delay, 4),
            "T": round(scenario.duration, 4),
            "phase": phase,
            "bucket": _bucket(phase),
        }
        try:
            if scenario.action == "evict_loop":
                self._check_evict_loop(scenario, record)
            elif scenario.action == "hit_loop":
                self._check_hit_loop(scenario, events, record)
            else:
                self._check_one_repo(scenario, record)
        except Exception as exc:  # collected: every trial runs, the test fails at the end with all of them
            record["failure"] = f"{type(exc).__name__}: {exc}"
            self.failures.append(f"{scenario.name} [{mode}, killed in {phase} after {delay:.3f}s]: {exc}")
            shutil.rmtree(scenario.root, ignore_errors=True)  # the next trial starts from a clean cache
        if mode != "calibration":
            self.trials.append(record)

    def _published_mirrors_are_whole(self, root: Path, expected_refs: dict[str, dict[str, str]] | None) -> int:
        """Whatever is under repos/ right after the kill is a whole repository (it could be served as it is)."""
        count = 0
        for path in sorted((root / "repos").glob("*")):
            count += 1
            problem = validate_mirror(path)
            assert problem is None, f"a published mirror {path.name} is not usable after the kill: {problem}"
            failure = fsck(path)
            assert failure is None, f"fsck failed in the published mirror {path.name} after the kill: {failure}"
            if expected_refs is not None and path.name in expected_refs:
                assert mirror_refs(path) == expected_refs[path.name], f"{path.name} has refs upstream never had"
        return count

    def _cold_store_whole(self, scenario: Scenario, record: dict[str, Any]) -> None:
        """Every manifest in the cold store describes a complete artifact with that checksum and size."""
        spec = scenario.options.get("cold_store")
        if spec is None:
            return
        directory = Path(str(spec).removeprefix("file://"))
        if not directory.is_dir():  # nothing was uploaded yet: a store directory is made by its first upload
            record["cold_artifacts"], record["cold_temp_files"] = 0, 0
            return
        store = LocalDirStore(directory)
        artifacts = 0
        for manifest in store.list():
            digest, size = hashlib.sha256(), 0
            with store.open_artifact(manifest) as artifact:
                while chunk := artifact.read(1 << 20):
                    digest.update(chunk)
                    size += len(chunk)
            assert (digest.hexdigest(), size) == (manifest.sha256, manifest.size_bytes), f"torn artifact {manifest}"
            artifacts += 1
        record["cold_artifacts"] = artifacts
        # Temporary files of a killed upload: never offered for restore, swept by the store after a day.
        record["cold_temp_files"] = sum(1 for _ in directory.rglob(".tmp-*")) if directory.is_dir() else 0

    def _debris(self, root: Path, record: dict[str, Any]) -> None:
        record["left"] = {
            name: len(listing(root / name)) for name in ("staging", "trash", "worktrees") if listing(root / name)
        }

    def _check_one_repo(self, scenario: Scenario, record: dict[str, Any]) -> None:
        root, url, upstream = scenario.root, scenario.urls[0], scenario.upstreams[0]
        _wait_no_process_in(root)
        self._debris(root, record)
        self._published_mirrors_are_whole(root, None)
        if scenario.objects:
            mirror = root / "repos" / key_of(url)
            lost = scenario.objects - all_objects(mirror)
            assert not lost, f"maintenance killed in flight lost {len(lost)} objects, e.g. {sorted(lost)[:3]}"
            record["left_in_mirror"] = len(sweep_mirror(mirror, dry_run=True))
        assert _held_locks(root) == [], f"locks still held after the worker died: {_held_locks(root)}"
        self._cold_store_whole(scenario, record)
        with RepoCache(root, lock_timeout=5, **scenario.options) as cache:
            assert listing(root / "trash") == [], "the trash was not emptied when the cache was opened"
            found = cache.verify()
            record["found"] = sorted(p.kind for p in found)
            assert not [p for p in found if p.kind == "invalid"], f"an unusable mirror was published: {found}"
            # No repair first: the next caller must get a whole, current repository whatever the kill left.
            if scenario.action == "worktree":
                ref = self.rng.choice(["HEAD", "main", "v1"])
                with cache.worktree(url, ref) as wt:
                    assert wt.commit == upstream.resolve(ref if ref != "HEAD" else None)
                    assert (wt.path / "README.md").is_file()
                    assert fsck(wt.path) is None
            with cache.checkout(url) as co:
                assert mirror_refs(co.path) == upstream.refs(), "the next checkout does not have upstream's refs"
                failure = fsck(co.path)
                assert failure is None, f"fsck failed in the mirror handed to the next caller: {failure}"
            self._repair(cache, record)
            assert listing(root / "staging") == [], listing(root / "staging")
            assert listing(root / "worktrees") == [], f"worktree debris not repaired: {listing(root / 'worktrees')}"

    def _repair(self, cache: RepoCache, record: dict[str, Any]) -> None:
        """verify(repair=True) fixes everything it finds: a second verify() finds nothing."""
        repaired = cache.verify(repair=True)
        record["repaired"] = sorted(p.kind for p in repaired)
        assert all(p.repaired for p in repaired), repaired
        assert cache.verify() == []

    def _check_evict_loop(self, scenario: Scenario, record: dict[str, Any]) -> None:
        root = scenario.root
        expected = {key_of(url): u.refs() for url, u in zip(scenario.urls, scenario.upstreams, strict=True)}
        _wait_no_process_in(root)
        self._debris(root, record)
        record["mirrors"] = self._published_mirrors_are_whole(root, expected)
        assert _held_locks(root) == [], f"locks still held after the worker died: {_held_locks(root)}"
        self._cold_store_whole(scenario, record)
        with RepoCache(root, lock_timeout=5, **scenario.options) as cache:
            assert listing(root / "trash") == [], "the trash was not emptied when the cache was opened"
            found = cache.verify()
            record["found"] = sorted(p.kind for p in found)
            assert not [p for p in found if p.kind == "invalid"], f"an unusable mirror was published: {found}"
            self._repair(cache, record)
            assert_consistent(cache)  # every repos/<key> is a valid mirror and indexed
            for entry in cache.entries():
                assert mirror_refs(entry.path) == expected[entry.key]
            cache.enforce()
            assert cache.max_bytes is not None and cache.stats().bytes_used <= cache.max_bytes
            url = self.rng.choice(scenario.urls)
            with cache.checkout(url) as co:  # no lock blocks the next caller
                assert mirror_refs(co.path) == expected[co.key]
            assert_consistent(cache)

    def _check_hit_loop(self, scenario: Scenario, events: list[tuple[float, str]], record: dict[str, Any]) -> None:
        """A kill among hits loses at most the last RECENCY_GRANULARITY of their recency and counts: the index is
        whole, every hit logged earlier than that before the kill is in ``last_used``, the counters only grew."""
        root = scenario.root
        _wait_no_process_in(root)
        assert _held_locks(root) == [], f"locks still held after the worker died: {_held_locks(root)}"
        integrity, last_used, hits = _index_figures(root)
        assert integrity == "ok", f"the index is damaged: {integrity}"
        # Hits the flusher had at least one full round (plus scheduling slack on a loaded machine) to write.
        settled = self.killed_at - RECENCY_GRANULARITY - _FLUSH_SLACK
        latest: dict[str, float] = {}
        logged = 0
        for _stamp, name in events:
            if name.startswith("hit:"):
                key, _, stamp = name[len("hit:") :].rpartition(":")
                logged += 1
                if float(stamp) <= settled:
                    latest[key] = max(latest.get(key, 0.0), float(stamp))
        for key, handed_out in latest.items():
            assert last_used.get(key, 0.0) >= handed_out, (
                f"a hit on {key} {self.killed_at - handed_out:.2f}s before the kill is not in the index's recency"
            )
        record["hits_logged"] = logged
        before = scenario.counters.get("hits", 0)
        assert before <= hits <= before + logged, f"hits went from {before} to {hits} with {logged} hits made"
        with RepoCache(root, lock_timeout=5, **scenario.options) as cache:
            found = cache.verify()
            record["found"] = sorted(p.kind for p in found)
            assert found == [], f"hits killed left problems: {found}"
            assert_consistent(cache)
            with cache.checkout(self.rng.choice(scenario.urls)) as co:
                assert co.source == "hit"
        scenario.counters["hits"] = _index_figures(root)[2]  # with this check's own hit, written at close

    # -- figures -------------------------------------------------------------------------------------------------

    def summary(self, seed: int, elapsed: float) -> dict[str, Any]:
        by_scenario: dict[str, collections.Counter[str]] = collections.defaultdict(collections.Counter)
        buckets: collections.Counter[str] = collections.Counter()
        modes: collections.Counter[str] = collections.Counter()
        found: collections.Counter[str] = collections.Counter()
        repaired: collections.Counter[str] = collections.Counter()
        debris: collections.Counter[str] = collections.Counter()
        for trial in self.trials:
            by_scenario[trial["scenario"]][trial["phase"]] += 1
            buckets[f"{trial['mode'].split()[0]}: {trial['bucket']}"] += 1
            modes[trial["mode"]] += 1
            found.update(trial.get("found", []))
            repaired.update(trial.get("repaired", []))
            debris.update({name: count for name, count in trial.get("left", {}).items()})
        return {
            "seed": seed,
            "seconds": round(elapsed, 1),
            "trials": len(self.trials),
            "trials_by_mode": dict(modes),
            "kills_by_bucket": dict(sorted(buckets.items())),
            "kills_by_scenario_and_phase": {name: dict(sorted(c.items())) for name, c in sorted(by_scenario.items())},
            "verify_found_before_repair": dict(found),
            "verify_repair_fixed": dict(repaired),
            "debris_left_by_kills": dict(debris),
            "trials_with_debris": sum(1 for t in self.trials if t.get("left")),
            "cold_temp_files_left": sum(t.get("cold_temp_files", 0) for t in self.trials),
            "cold_artifacts_checked": sum(t.get("cold_artifacts", 0) for t in self.trials),
            "failures": len(self.failures),
        }


_FLUSH_SLACK = 1.5  # seconds a loaded machine may delay the flusher's round beyond RECENCY_GRANULARITY


def _index_figures(root: Path) -> tuple[str, dict[str, float], int]:
    """The index read as it is on disk, without the library: its integrity, ``last_used`` by key, the hit count."""
    db = sqlite3.connect(f"file:{root / 'index.sqlite'}?mode=ro", uri=True)
    try:
        integrity = str(db.execute("PRAGMA integrity_check").fetchone()[0])
        last_used = {str(key): float(used) for key, used in db.execute("SELECT key, last_used FROM entries")}
        row = db.execute("SELECT value FROM counters WHERE name = 'hits'").fetchone()
        return integrity, last_used, int(row[0]) if row else 0
    finally:
        db.close()


def _big_tree(upstream: Upstream, files: int) -> None:
    upstream.commit({f"src/{i:04d}/module.py": f"# file {i}\n" + "x = 1\n" * 40 for i in range(files)})


_SIZES = {"small": (8, 2_000), "medium": (30, 30_000), "large": (100, 60_000)}


def _scenarios(
    base: Path, served: UpstreamFactory, daemon: GitDaemon, http: SmartHTTPServer, names: list[str]
) -> list[Scenario]:
    """The operations to kill (those in ``names``): clones of several sizes over three transports, fetches,
    worktrees, single evictions with a cold upload, restores from the cold store, and loops of evictions."""

    def url_of(upstream: Upstream, transport: str) -> str:
        if transport == "git":
            return daemon.url_for(upstream)
        if transport == "http":
            return http.url_for(upstream)
        return upstream.url

    def absent(scenario: Scenario, rng: random.Random) -> None:
        """Before a clone trial: the repository is not cached (sometimes the whole cache is new)."""
        if rng.random() < 0.2:
            shutil.rmtree(scenario.root, ignore_errors=True)
        else:
            with RepoCache(scenario.root, **scenario.options) as cache:
                cache.evict(scenario.urls[0], force=True)
        if rng.random() < 0.3:
            scenario.upstreams[0].commit({"moved.txt": str(rng.random())})

    def behind(scenario: Scenario, rng: random.Random) -> None:
        """Before a fetch trial: the mirror is cached and upstream has moved on (new, rewritten, deleted refs)."""
        upstream = scenario.upstreams[0]
        with RepoCache(scenario.root, **scenario.options) as cache:
            cache.ensure(scenario.urls[0])
        upstream.commits(rng.randint(3, 25), size=rng.choice([2_000, 20_000]))
        if rng.random() < 0.3:
            upstream.force_push()
        if rng.random() < 0.3:
            upstream.tag(f"t{rng.randrange(1000)}", annotated=rng.random() < 0.5)
        if rng.random() < 0.3:
            upstream.branch("topic")
        elif "refs/heads/topic" in upstream.refs():
            upstream.delete_ref("refs/heads/topic")

    def worktree_state(scenario: Scenario, rng: random.Random) -> None:
        """Before a worktree trial: a hit (maybe behind upstream) or a miss."""
        upstream = scenario.upstreams[0]
        if rng.random() < 0.5:
            upstream.commit({f"src/{rng.randrange(300):04d}/module.py": str(rng.random())})
            upstream.tag("v1", at="main")
        with RepoCache(scenario.root, **scenario.options) as cache:
            if rng.random() < 0.4:
                cache.evict(scenario.urls[0], force=True)
            else:
                cache.ensure(scenario.urls[0])

    def cached(scenario: Scenario, rng: random.Random) -> None:
        """Before a cold upload trial: the repository is cached (and upstream may have moved since the last upload)."""
        if rng.random() < 0.5:
            scenario.upstreams[0].commits(rng.randint(1, 5), size=20_000)
        with RepoCache(scenario.root, **scenario.options) as cache:
            cache.ensure(scenario.urls[0])

    def in_cold_store(scenario: Scenario, rng: random.Random) -> None:
        """Before a restore trial: the repository is only in the cold store, maybe behind upstream."""
        with RepoCache(scenario.root, **scenario.options) as cache:
            if cache.info(scenario.urls[0]) is not None or rng.random() < 0.3:
                cache.ensure(scenario.urls[0])
                cache.evict(scenario.urls[0], force=True)  # uploads it
        if rng.random() < 0.5:
            scenario.upstreams[0].commits(rng.randint(1, 5), size=20_000)

    def many_packs(scenario: Scenario, rng: random.Random) -> None:
        """Before a maintenance trial: the mirror has a pack per fetch, loose refs, maybe unreachable objects."""
        upstream = scenario.upstreams[0]
        with RepoCache(scenario.root, **scenario.options) as cache:
            cache.ensure(scenario.urls[0])
            for number in range(rng.randint(4, 10)):
                upstream.commits(rng.randint(1, 3), size=rng.choice([500, 5_000]))
                if rng.random() < 0.2:
                    upstream.force_push()
                if rng.random() < 0.3:
                    upstream.commit({"side.txt": str(number)}, branch=f"side-{number % 3}")
                cache.ensure(scenario.urls[0])
            entry = cache.info(scenario.urls[0])
            assert entry is not None
            scenario.objects = all_objects(entry.path)

    scenarios: list[Scenario] = []
    for name in names:
        root = base / name.replace("/", "-").replace(" ", "-")
        cold = {"cold_store": f"file://{root}-cold"}
        kind, _, rest = name.partition("/")
        if kind == "clone":
            transport, size = rest.split("/")
            upstream = served.create(f"crash-clone-{transport}-{size}")
            upstream.commits(_SIZES[size][0], size=_SIZES[size][1])
            options: dict[str, Any] = {"max_bytes": "1GiB"} if transport != "file" else {}
            scenarios.append(
                Scenario(name, "checkout", [upstream], [url_of(upstream, rest.split("/")[0])], root, options, absent)
            )
            scenarios[-1].targets = ("clone:end",)
        elif kind == "fetch":
            upstream = served.create(f"crash-fetch-{rest}")
            upstream.commits(10, size=10_000)
            scenarios.append(Scenario(name, "checkout", [upstream], [url_of(upstream, rest)], root, {}, behind))
            scenarios[-1].targets = ("fetch:end",)
        elif kind == "worktree":
            upstream = served.create("crash-worktree")
            _big_tree(upstream, 300)
            upstream.tag("v1")
            scenarios.append(
                Scenario(
                    name,
                    "worktree",
                    [upstream],
                    [daemon.url_for(upstream)],
                    root,
                    {},
                    worktree_state,
                    targets=("worktree:start", "worktree:end"),
                    fixed_windows={"worktree:start": 0.006},  # before `git init` has made the directory
                )
            )
        elif kind == "cold":
            upstream = served.create(f"crash-cold-{rest}")
            upstream.commits(*_SIZES["medium"][:1], size=_SIZES["medium"][1])
            if rest == "upload":
                scenarios.append(Scenario(name, "evict", [upstream], [daemon.url_for(upstream)], root, cold, cached))
                scenarios[-1].targets = ("upload:start", "upload:end")
            else:
                scenarios.append(
                    Scenario(name, "checkout", [upstream], [daemon.url_for(upstream)], root, cold, in_cold_store)
                )
                scenarios[-1].targets = ("restore:start", "restore:end")
        elif kind == "maintenance":
            upstream = served.create("crash-maintenance")
            upstream.commits(30, size=5_000)
            scenarios.append(
                Scenario(
                    name,
                    "maintain",
                    [upstream],
                    [daemon.url_for(upstream)],
                    root,
                    {"maintenance": "off"},
                    many_packs,
                    targets=("repack:start", "commit-graph:start"),
                )
            )
        elif kind == "hits":
            hit_upstreams = []
            for number in range(4):
                hit_upstream = served.create(f"crash-hits-{number}")
                hit_upstream.commits(2, size=2_000)
                hit_upstreams.append(hit_upstream)
            hit_urls = [daemon.url_for(u) for u in hit_upstreams]
            with RepoCache(root, fetch_ttl=3600) as cache:
                for url in hit_urls:
                    cache.ensure(url)
            scenarios.append(
                Scenario(
                    name,
                    "hit_loop",
                    hit_upstreams,
                    hit_urls,
                    root,
                    {"fetch_ttl": 3600},
                    None,
                    targets=("flush:start",),
                    fixed_windows={"flush:start": 0.004},  # one transaction of a few rows
                )
            )
        elif kind == "eviction loop":
            loop_upstreams = []
            for number in range(6):
                loop_upstream = served.create(f"crash-evict-{number}")
                loop_upstream.commits(3 + number, size=8_000 * (1 + number % 3))
                loop_upstreams.append(loop_upstream)
            loop_urls = [daemon.url_for(u) for u in loop_upstreams]
            with RepoCache(base / "measure") as cache:
                sizes_on_disk = sorted(cache.ensure(url).size_bytes for url in loop_urls)
            shutil.rmtree(base / "measure")
            # Room for the pinned repository and the largest other one, not for much more: it evicts all the time.
            budget = sizes_on_disk[-1] + sizes_on_disk[1] + 16384
            options = {"max_bytes": budget, "fetch_ttl": 3600, "pins": [loop_urls[0]]}
            scenarios.append(
                Scenario(
                    name,
                    "evict_loop",
                    loop_upstreams,
                    loop_urls,
                    root,
                    {**options, **cold} if rest == "cold" else options,
                    None,
                    targets=("evict:start",),
                )
            )
        else:
            raise ValueError(name)
    return scenarios


def _crash_campaign(
    tmp_path: Path,
    served: UpstreamFactory,
    daemon: GitDaemon,
    http: SmartHTTPServer,
    *,
    random_trials: dict[str, int],
    targeted_trials: dict[str, int],
) -> tuple[CrashLab, dict[str, Any]]:
    seed = stress_seed()
    rng = random.Random(seed)
    started = time.monotonic()
    lab = CrashLab(tmp_path, rng)
    scenarios = _scenarios(tmp_path / "roots", served, daemon, http, list(random_trials))
    plan: list[tuple[Scenario, str | None]] = []
    for scenario in scenarios:
        lab.calibrate(scenario)
        plan += [(scenario, None)] * random_trials[scenario.name]
        for target in scenario.targets:
            plan += [(scenario, target)] * targeted_trials.get(target, 0)
    rng.shuffle(plan)
    for planned, targeted in plan:
        lab.trial(planned, targeted=targeted)
    summary = lab.summary(seed, time.monotonic() - started)
    summary["T_seconds"] = {s.name: round(s.duration, 3) for s in scenarios}
    return lab, summary


@pytest.mark.timeout(120)
def test_workers_killed_at_random_instants_lose_nothing(
    tmp_path: Path, served: UpstreamFactory, daemon: GitDaemon, http: SmartHTTPServer
) -> None:
    """A handful of kills: one in each kind of operation, two in a loop of evictions."""
    lab, summary = _crash_campaign(
        tmp_path,
        served,
        daemon,
        http,
        random_trials={
            "clone/git/small": 1,
            "clone/http/small": 1,
            "fetch/git": 1,
            "fetch/file": 1,
            "worktree/git": 1,
            "cold/upload": 1,
            "cold/restore": 1,
            "eviction loop/cold": 2,
            "maintenance": 2,
            "hits": 2,
        },
        targeted_trials={"flush:start": 1},
    )
    report_figures("crash injection (default run)", summary)
    assert lab.failures == [], "\n".join(lab.failures)
    assert summary["trials"] == 14


_SLOW_RANDOM = {
    "clone/git/small": 18,
    "clone/git/medium": 18,
    "clone/git/large": 18,
    "clone/http/medium": 18,
    "clone/file/medium": 18,
    "fetch/git": 16,
    "fetch/file": 16,
    "fetch/http": 16,
    "worktree/git": 30,
    "cold/upload": 25,
    "cold/restore": 25,
    "eviction loop": 30,
    "eviction loop/cold": 30,
    "maintenance": 30,
    "hits": 30,
}
_SLOW_TARGETED = {
    "clone:end": 4,
    "fetch:end": 4,
    "worktree:start": 8,
    "worktree:end": 6,
    "upload:start": 6,
    "upload:end": 6,
    "restore:start": 6,
    "restore:end": 6,
    "evict:start": 10,
    "repack:start": 8,
    "commit-graph:start": 6,
    "flush:start": 12,
}


@pytest.mark.slow
@pytest.mark.timeout(3600)
def test_hundreds_of_random_kills_lose_nothing(
    tmp_path: Path, served: UpstreamFactory, daemon: GitDaemon, http: SmartHTTPServer
) -> None:
    """The full proof: 300 kills at uniformly random instants and about 100 inside the narrow windows."""
    lab, summary = _crash_campaign(
        tmp_path, served, daemon, http, random_trials=_SLOW_RANDOM, targeted_trials=_SLOW_TARGETED
    )
    report_figures("crash injection (slow run)", summary)
    assert lab.failures == [], "\n".join(lab.failures)
    assert summary["trials_by_mode"]["random"] >= 200
