"""Worker processes for the stress tests: ``python -m tests._stress_worker MODE '<json spec>'``.

``crash`` mode carries out one operation and then waits to be killed. Every step it takes is appended, with a
``time.monotonic()`` stamp (one clock for all processes on Linux), to the file ``spec["events"]``, so the parent
that SIGKILLs it can tell in which phase the kill landed. The steps are seen by wrapping
``gitops.clone_mirror``, ``gitops.fetch_mirror``, ``gitops.make_worktree``, ``Budget.evict_locked``,
``ColdTier.offload`` (cold upload), ``ColdTier.restore``, the maintenance steps (``gitops.repack_geometric``,
``gitops.repack_all_keeping``, ``gitops.pack_refs``, ``gitops.write_commit_graph``, ``gitops.repack_pruning``) and
the index's deferred recency writes (``Index.flush``) with functions that only log and then call the original: the
library's behaviour is unchanged.

Spec keys (crash): ``root``, ``events``, ``action`` ("checkout", "worktree", "evict", "evict_loop", "hit_loop",
"maintain"), ``url`` or ``urls``, ``options`` (RepoCache keyword arguments), ``ref`` (worktree), ``hold`` (seconds
to stay inside the block), ``seed`` (evict_loop, hit_loop), ``prune`` (maintain).

``load`` mode runs ``spec["ops"]`` random operations against a cache shared with other workers and checks the
invariants as it goes; it writes a JSON report to ``spec["report"]``: every operation with its start and end time
and repository, budget samples (the index's entries read between two clock readings), and the violations seen.

Spec keys (load): ``root``, ``report``, ``worker``, ``ops``, ``seed``, ``repos`` (list of {"url", "key",
"pinned"}), ``options``, ``fsck_rate`` (share of holds checked with ``git fsck``), ``start_at`` (epoch seconds).
"""

from __future__ import annotations

import functools
import json
import os
import random
import subprocess
import sys
import time
import traceback
import warnings
from collections.abc import Callable
from pathlib import Path
from typing import Any

from repocache import BudgetError, Problem, RefNotFoundError, RepoCache, locks, normalize_url

Log = Callable[[str], None]


def _event_log(path: str) -> Log:
    fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)

    def log(name: str) -> None:
        os.write(fd, f"{time.monotonic():.6f} {name}\n".encode())

    return log


def _wrap(owner: Any, name: str, label: str, log: Log) -> None:
    original = getattr(owner, name)

    @functools.wraps(original)
    def logged(*args: Any, **kwargs: Any) -> Any:
        log(f"{label}:start")
        try:
            return original(*args, **kwargs)
        finally:
            log(f"{label}:end")

    setattr(owner, name, logged)


def instrument(log: Log) -> None:
    """Log the start and end of transfers, worktree creation, evictions and cold uploads/restores (unchanged)."""
    from repocache import budget, cold_tier, gitops, index

    _wrap(gitops, "clone_mirror", "clone", log)
    _wrap(gitops, "fetch_mirror", "fetch", log)
    _wrap(gitops, "make_worktree", "worktree", log)
    _wrap(budget.Budget, "evict_locked", "evict", log)
    _wrap(cold_tier.ColdTier, "offload", "upload", log)
    _wrap(cold_tier.ColdTier, "restore", "restore", log)
    _wrap(gitops, "repack_geometric", "repack", log)
    _wrap(gitops, "repack_all_keeping", "repack", log)
    _wrap(gitops, "pack_refs", "pack-refs", log)
    _wrap(gitops, "write_commit_graph", "commit-graph", log)
    _wrap(gitops, "repack_pruning", "prune", log)
    _wrap(index.Index, "flush", "flush", log)


def fsck(path: Path) -> str | None:
    """``git fsck --connectivity-only`` in ``path``: None when it passes, else its output."""
    result = subprocess.run(
        ["git", "fsck", "--connectivity-only", "--no-dangling", "--no-progress"],
        cwd=path,
        capture_output=True,
        text=True,
        check=False,
    )
    if result.returncode == 0:
        return None
    return f"exit {result.returncode}: {(result.stdout + result.stderr).strip()[-800:]}"  # missing objects: stdout


# -- crash mode ------------------------------------------------------------------------------------------------


def crash(spec: dict[str, Any]) -> None:
    """Carry out one operation, logging its steps, then wait to be killed."""
    log = _event_log(spec["events"])
    instrument(log)
    warnings.simplefilter("ignore")

    def progress(event: Any) -> None:
        log(f"progress:{event.operation}:{event.phase}")

    hold = float(spec.get("hold", 0.0))
    with RepoCache(spec["root"], progress=progress, **spec.get("options", {})) as cache:
        log("ready")
        action = spec["action"]
        if action == "checkout":
            with cache.checkout(spec["url"]) as co:
                log(f"held:{co.source}")
                assert len(list(co.repo.references)) > 0
                time.sleep(hold)
        elif action == "worktree":
            with cache.worktree(spec["url"], spec.get("ref", "HEAD")) as wt:
                log("held:worktree")
                assert (wt.path / "README.md").is_file()
                time.sleep(hold)
        elif action == "evict":
            log(f"evicted:{cache.evict(spec['url'])}")
        elif action == "maintain":
            reports = cache.maintain(spec["url"], prune=bool(spec.get("prune", False)))
            log(f"maintained:{','.join(reports[0].tasks) if reports else 'none'}")
        elif action == "evict_loop":
            rng = random.Random(spec.get("seed", 0))
            urls: list[str] = spec["urls"]
            for number in range(int(spec.get("iterations", 10**9))):
                url = rng.choice(urls)
                choice = rng.random()
                log(f"op:{number}")
                try:
                    if choice < 0.75:
                        cache.ensure(url)
                    elif choice < 0.9:
                        cache.evict(url)
                    else:
                        cache.enforce()
                except BudgetError:  # documented: the pinned repository and this one do not fit together
                    log("budget-error")
        elif action == "hit_loop":
            # Hits on cached repositories, a few milliseconds apart: their recency and counts wait in memory
            # for the flusher thread (the hot path's deferred writes), so kills land before, inside and
            # after its transactions. Each hit logs the wall-clock time it was handed out at.
            rng = random.Random(spec.get("seed", 0))
            urls = spec["urls"]
            for number in range(int(spec.get("iterations", 10**9))):
                with cache.checkout(rng.choice(urls)) as co:
                    log(f"hit:{co.key}:{time.time():.6f}")
                log(f"op:{number}")
                time.sleep(0.004)
        else:
            raise ValueError(f"unknown action {action!r}")
        log("op:end")
        time.sleep(120)  # the parent kills us; a kill that lands here is "after the operation"


# -- load mode -------------------------------------------------------------------------------------------------


class LoadWorker:
    """Random operations on a shared cache with the invariants checked along the way."""

    def __init__(self, spec: dict[str, Any]) -> None:
        self.spec = spec
        self.worker = int(spec["worker"])
        self.rng = random.Random(spec["seed"])
        self.repos: list[dict[str, Any]] = spec["repos"]
        self.fsck_rate = float(spec.get("fsck_rate", 1.0))
        self.root = Path(spec["root"])
        self.ops: list[dict[str, Any]] = []
        self.samples: list[list[Any]] = []
        self.violations: list[str] = []
        self.errors: dict[str, int] = {}
        self.sources: dict[str, int] = {}
        self.fscks = 0
        self.fsck_rechecks = 0
        self.pinned_seen: set[str] = set()

    def violation(self, text: str) -> None:
        self.violations.append(f"worker {self.worker}: {text}")

    def run(self) -> dict[str, Any]:
        warnings.simplefilter("ignore")
        if self.spec.get("start_at"):
            time.sleep(max(0.0, float(self.spec["start_at"]) - time.time()))
        with RepoCache(self.root, **self.spec.get("options", {})) as cache:
            for _number in range(int(self.spec["ops"])):
                self.one(cache)
        return {
            "worker": self.worker,
            "ops": self.ops,
            "samples": self.samples,
            "violations": self.violations,
            "errors": self.errors,
            "sources": self.sources,
            "fscks": self.fscks,
            "fsck_rechecks": self.fsck_rechecks,
        }

    def one(self, cache: RepoCache) -> None:
        repo = self.rng.choice(self.repos)
        op = self.rng.choices(
            ["checkout", "worktree", "ensure", "evict", "enforce", "verify", "repair", "maintain"],
            weights=[34, 16, 22, 12, 8, 5, 3, 5],
        )[0]
        record: dict[str, Any] = {
            "op": op,
            "key": repo["key"] if op in ("checkout", "worktree", "ensure", "evict", "maintain") else None,
        }
        record["t0"] = time.monotonic()
        try:
            getattr(self, "op_" + op)(cache, repo, record)
        except (BudgetError, RefNotFoundError) as exc:  # expected under a tight budget / a deleted branch
            record["error"] = type(exc).__name__
            if isinstance(exc, BudgetError):
                record["needed"] = exc.needed
            self.errors[type(exc).__name__] = self.errors.get(type(exc).__name__, 0) + 1
        except Exception as exc:
            record["error"] = type(exc).__name__
            self.violation(f"{op} {repo['url']} raised {exc!r}\n{traceback.format_exc()}")
        record["t1"] = time.monotonic()
        self.ops.append(record)
        self.check_pins()
        self.sample(cache)

    # -- operations --------------------------------------------------------------------------------------------

    def held_checks(self, cache: RepoCache, repo: dict[str, Any], path: Path, what: str) -> None:
        """What must hold while ``path`` (the mirror) is held: it exists, it is indexed, fsck passes."""
        time.sleep(self.rng.uniform(0, 0.03))  # give other workers' evictions a chance to try it
        if not path.is_dir() or not (path / "HEAD").is_file():
            self.violation(f"{what}: the mirror {path} vanished while held")
            return
        if cache.info(repo["url"]) is None:
            self.violation(f"{what}: the held mirror of {repo['url']} is not in the index")
        if self.rng.random() < self.fsck_rate:
            self.fscks += 1
            failure = self.fsck_in_hold(cache, repo, path)
            if failure is not None:
                self.violation(f"{what}: fsck failed in the held mirror {path}: {failure}")
        if not path.is_dir():
            self.violation(f"{what}: the mirror {path} vanished while held")

    def fsck_in_hold(self, cache: RepoCache, repo: dict[str, Any], path: Path) -> str | None:
        """fsck ``path`` while other workers may fetch into the held mirror; None when the mirror is whole.

        ``git fsck --connectivity-only`` lists the objects it has first and reads the refs after. A fetch that
        writes objects and then moves refs between those two moments makes it report the new objects as missing
        although they are there: reproduced with plain git and no repocache (RELIABILITY.md). So a failure is
        checked again with fetches of this repository excluded (its fetch lock held); only a failure that
        persists is a violation.
        """
        failure = fsck(path)
        if failure is None:
            return None
        self.fsck_rechecks += 1
        fetch_lock = self.root / "locks" / f"{normalize_url(repo['url']).key}.fetch"
        handle = locks.acquire(fetch_lock, shared=False, timeout=120)
        if handle is None:
            return f"{failure} (and the fetch lock could not be taken to check again)"
        with handle:
            again = fsck(path)
        return None if again is None else f"{again} (first run: {failure})"

    def op_checkout(self, cache: RepoCache, repo: dict[str, Any], record: dict[str, Any]) -> None:
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")  # to say why, if a stale copy is served
            with cache.checkout(repo["url"]) as co:
                record["source"] = co.source
                self.sources[co.source] = self.sources.get(co.source, 0) + 1
                if co.stale:
                    why = "; ".join(str(w.message) for w in caught)
                    self.violation(f"checkout of {repo['url']} served a stale copy (the upstream is up): {why}")
                if not any(name.startswith("refs/heads/") for name in co.repo.references):
                    self.violation(f"checkout of {repo['url']} handed out a mirror without branches")
                self.held_checks(cache, repo, co.path, "checkout")

    def op_worktree(self, cache: RepoCache, repo: dict[str, Any], record: dict[str, Any]) -> None:
        ref = self.rng.choice(["HEAD", "HEAD", "main", "side"])
        with cache.worktree(repo["url"], ref) as wt:
            entry = cache.info(repo["url"])
            if entry is None:
                self.violation(f"worktree of {repo['url']}: its mirror is not in the index while held")
                return
            head = subprocess.run(
                ["git", "rev-parse", "HEAD"], cwd=wt.path, capture_output=True, text=True, check=False
            ).stdout.strip()
            if head != wt.commit:
                self.violation(f"worktree of {repo['url']}: HEAD is {head!r}, expected {wt.commit}")
            if not (wt.path / "README.md").is_file():
                self.violation(f"worktree of {repo['url']}: README.md is missing")
            self.held_checks(cache, repo, entry.path, "worktree")
            if self.rng.random() < self.fsck_rate / 2:
                self.fscks += 1
                failure = self.fsck_in_hold(cache, repo, wt.path)  # reads the mirror's objects through alternates
                if failure is not None:
                    self.violation(f"worktree of {repo['url']}: fsck failed: {failure}")

    def op_ensure(self, cache: RepoCache, repo: dict[str, Any], record: dict[str, Any]) -> None:
        entry = cache.ensure(repo["url"])
        record["size"] = entry.size_bytes

    def op_evict(self, cache: RepoCache, repo: dict[str, Any], record: dict[str, Any]) -> None:
        evicted = cache.evict(repo["url"])
        record["evicted"] = evicted
        if evicted and repo["pinned"]:
            self.violation(f"evict() removed the pinned {repo['url']}")

    def op_enforce(self, cache: RepoCache, repo: dict[str, Any], record: dict[str, Any]) -> None:
        evicted = cache.enforce()
        record["evicted"] = [e.key for e in evicted]
        pinned = {r["key"] for r in self.repos if r["pinned"]}
        if any(e.key in pinned for e in evicted):
            self.violation(f"enforce() evicted a pinned repository: {evicted}")

    def op_maintain(self, cache: RepoCache, repo: dict[str, Any], record: dict[str, Any]) -> None:
        reports = cache.maintain(repo["url"], prune=self.rng.random() < 0.3)
        record["tasks"] = list(reports[0].tasks) if reports else []
        if reports and reports[0].skipped is not None and "in use" not in reports[0].skipped:
            self.violation(f"maintain({repo['url']}) skipped: {reports[0].skipped}")

    def op_verify(self, cache: RepoCache, repo: dict[str, Any], record: dict[str, Any]) -> None:
        self.judge(cache.verify(), record, "verify()")

    def op_repair(self, cache: RepoCache, repo: dict[str, Any], record: dict[str, Any]) -> None:
        self.judge(cache.verify(repair=True), record, "verify(repair=True)")

    def judge(self, problems: list[Problem], record: dict[str, Any], call: str) -> None:
        """Nobody crashed, so verify must find nothing: a live operation's staging, trash or worktree is not debris."""
        record["problems"] = [f"{p.kind}:{p.key}" for p in problems]
        if problems:
            self.violation(f"{call} found problems in a cache nobody crashed in: {problems}")

    # -- invariants ------------------------------------------------------------------------------------------

    def check_pins(self) -> None:
        for repo in self.repos:
            if not repo["pinned"]:
                continue
            exists = (self.root / "repos" / repo["key"]).is_dir()
            if exists:
                self.pinned_seen.add(repo["key"])
            elif repo["key"] in self.pinned_seen:
                self.violation(f"the pinned {repo['url']} was removed after it had been cloned")

    def sample(self, cache: RepoCache) -> None:
        """The index's entries read between two clock readings, for the budget check done by the parent."""
        t0 = time.monotonic()
        entries = cache.entries()
        t1 = time.monotonic()
        self.samples.append([t0, t1, [[e.key, e.size_bytes, e.pinned] for e in entries]])


def load(spec: dict[str, Any]) -> None:
    """Run the random operations and write the report."""
    report = LoadWorker(spec).run()
    Path(spec["report"]).write_text(json.dumps(report))


if __name__ == "__main__":
    mode, raw = sys.argv[1], sys.argv[2]
    {"crash": crash, "load": load}[mode](json.loads(raw))
