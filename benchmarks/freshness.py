"""Freshness benchmarks (issue 14): push-to-visible latency, upstream contacts of the adaptive schedule, and hit
latency while background fetches are in flight.

(a) and (c) run the library in this process against the run's ``git daemon`` on 127.0.0.1, with upstreams that
a separate process (or this one, between measurements) commits to. (b) is a simulation in simulated time of the
cache's own decision functions (:func:`repocache.refresh.needs_fetch` and :func:`~repocache.refresh.fetch_interval`
, the code a hit runs), with fetches taken as instantaneous: no git is involved, so weeks are simulated in
seconds.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import math
import random
import subprocess
import sys
import threading
import time
import urllib.request
from collections.abc import Callable
from dataclasses import dataclass, field
from wsgiref.simple_server import WSGIRequestHandler, make_server

from benchmarks.cases import Context, Result
from benchmarks.measure import median

__all__ = ["adaptive_contacts", "background_hit_latency", "freshness", "push_to_visible"]

_SECRET = "benchmark secret"


def _percentile(values: list[float], fraction: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, max(0, math.ceil(fraction * len(ordered)) - 1))]


def freshness(ctx: Context, *, smoke: bool) -> list[Result]:
    """All three freshness cases."""
    results = push_to_visible(ctx, smoke=smoke)
    results += adaptive_contacts(smoke=smoke)
    results += background_hit_latency(ctx, smoke=smoke)
    return results


# -- (a) push to visible -----------------------------------------------------------------------------------------


class _Quiet(WSGIRequestHandler):
    def log_message(self, format: str, *args: object) -> None:
        pass


@dataclass
class _Reader:
    """Checks a repository out in a loop and records when each new tip of ``main`` was first seen."""

    cache: object
    url: str
    seen: list[tuple[float, str]] = field(default_factory=list)
    stop: threading.Event = field(default_factory=threading.Event)

    def run(self) -> None:
        from repocache import gitops

        last = ""
        while not self.stop.is_set():
            with self.cache.checkout(self.url) as co:  # type: ignore[attr-defined]
                tip = gitops.ref_tips(co.path).get("refs/heads/main", "")
            if tip != last:
                self.seen.append((time.monotonic(), tip))
                last = tip
            time.sleep(0.005)


def push_to_visible(ctx: Context, *, smoke: bool) -> list[Result]:
    """Time from a push upstream until a checkout shows it: a webhook marking the repository stale (with a TTL of
    an hour) against TTL polling with the TTL set to the mean time between pushes, so that both sides contact
    upstream about once per push. Both repositories are pushed at the same instants (one per period, at a random
    point of it); a reader per side checks out every 5 ms throughout.
    """
    from repocache import RepoCache
    from repocache.testing import UpstreamFactory
    from repocache.webhooks import wsgi_app

    period = 0.4 if smoke else 2.0
    pushes = 3 if smoke else 20
    factory = UpstreamFactory(ctx.serve_dir)
    hooked, polled = factory.create("fresh-hooked"), factory.create("fresh-polled")
    urls = {name: ctx.url(up.path.name) for name, up in (("hook", hooked), ("poll", polled))}
    root = ctx.scratch("freshness-push")
    hook_cache = RepoCache(root / "hook", fetch_ttl=3600)
    poll_cache = RepoCache(root / "poll", fetch_ttl=period)
    server = make_server("127.0.0.1", 0, wsgi_app(hook_cache, secret=_SECRET), handler_class=_Quiet)
    serving = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
    serving.start()
    opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))
    readers = {"hook": _Reader(hook_cache, urls["hook"]), "poll": _Reader(poll_cache, urls["poll"])}
    for reader in readers.values():
        reader.cache.ensure(reader.url)  # type: ignore[attr-defined]
    threads = [threading.Thread(target=reader.run, daemon=True) for reader in readers.values()]
    for thread in threads:
        thread.start()
    rng = random.Random(14)
    pushed: dict[str, list[tuple[float, str]]] = {"hook": [], "poll": []}
    fetches_before = {"hook": hook_cache.stats().fetches, "poll": poll_cache.stats().fetches}
    started = time.monotonic()
    try:
        for k in range(pushes):
            slot = started + k * period
            time.sleep(max(0.0, slot + rng.uniform(0, period) - time.monotonic()))
            for name, upstream in (("hook", hooked), ("poll", polled)):
                tip = upstream.commit({"counter": str(k)})
                pushed[name].append((time.monotonic(), tip))
            body = json.dumps({"repository": {"clone_url": urls["hook"]}}).encode()
            signature = "sha256=" + hmac.new(_SECRET.encode(), body, hashlib.sha256).hexdigest()
            request = urllib.request.Request(
                f"http://127.0.0.1:{server.server_port}/",
                data=body,
                headers={
                    "Content-Type": "application/json",
                    "X-GitHub-Event": "push",
                    "X-Hub-Signature-256": signature,
                },
            )
            with opener.open(request, timeout=30) as response:
                response.read()
        deadline = time.monotonic() + 3 * period + 10
        while time.monotonic() < deadline and any(
            not reader.seen or reader.seen[-1][1] != pushed[name][-1][1] for name, reader in readers.items()
        ):
            time.sleep(0.01)
        elapsed = time.monotonic() - started
    finally:
        for reader in readers.values():
            reader.stop.set()
        for thread in threads:
            thread.join(30)
        server.shutdown()
        server.server_close()
    latencies: dict[str, list[float]] = {}
    for name, reader in readers.items():
        order = {tip: index for index, (_when, tip) in enumerate(pushed[name])}
        samples = []
        for index, (when, _tip) in enumerate(pushed[name]):
            visible = next((seen for seen, tip in reader.seen if order.get(tip, -1) >= index), None)
            if visible is not None:
                samples.append(visible - when)
        latencies[name] = samples
    fetches = {
        "hook": hook_cache.stats().fetches - fetches_before["hook"],
        "poll": poll_cache.stats().fetches - fetches_before["poll"],
    }
    hook_cache.close()
    poll_cache.close()
    note = (
        f"{pushes} pushes in {elapsed:.0f} s; upstream fetches: webhook {fetches['hook']}, polling "
        f"{fetches['poll']} (TTL {period:g} s = the mean time between pushes); p90 webhook "
        f"{_percentile(latencies['hook'], 0.9) * 1e3:.0f} ms, "
        f"polling {_percentile(latencies['poll'], 0.9) * 1e3:.0f} ms"
    )
    result = Result(
        case="push to visible: webhook (mark_stale) vs TTL polling at the same upstream load",
        size=f"{pushes} pushes",
        against=f"TTL polling, fetch_ttl={period:g} s",
        target="the webhook is faster, same fetches per push",
        ours=latencies["hook"],
        base=latencies["poll"],
        note=note,
        extra={"fetches": fetches, "pushes": pushes, "period": period},
    ).with_ratio()
    result.met = (
        len(latencies["hook"]) == pushes
        and median(latencies["hook"]) < median(latencies["poll"])
        and fetches["hook"] <= fetches["poll"] + 1
    )
    return [result]


# -- (b) adaptive schedule ---------------------------------------------------------------------------------------


@dataclass
class _SimRepo:
    """One simulated repository: its upstream change times and what the cache knows of it."""

    changes: list[float]
    last_fetched: float = 0.0
    last_changed: float | None = None
    seen_changes: int = 0  # how many of ``changes`` the cached copy has


def _simulate(
    repos: list[_SimRepo], checkouts: list[tuple[float, int]], decide: Callable[[_SimRepo, float], float]
) -> tuple[int, list[float]]:
    """Run ``checkouts`` (time, repository) against ``decide`` (the age limit of a repository at a time);
    returns (upstream contacts, staleness of every checkout served: the age of its oldest missing change)."""
    from repocache.index import Row
    from repocache.refresh import needs_fetch

    contacts = 0
    staleness: list[float] = []
    for now, which in checkouts:
        repo = repos[which]
        row = Row("k", "u", 0, now, repo.last_fetched, False)
        if needs_fetch(row, None, now, decide(repo, now), now):
            contacts += 1
            upstream_has = sum(1 for change in repo.changes if change <= now)
            if upstream_has > repo.seen_changes:
                repo.last_changed = now  # the fetch moved refs: recorded as the change time, as the cache does
            repo.seen_changes = upstream_has
            repo.last_fetched = now
        missing = [change for change in repo.changes[repo.seen_changes :] if change <= now]
        staleness.append(now - missing[0] if missing else 0.0)
    return contacts, staleness


def adaptive_contacts(*, smoke: bool) -> list[Result]:
    """Upstream contacts per 1,000 checkouts over a week of a mix of busy and dormant repositories: the adaptive
    schedule (``fetch_ttl="auto"``, 5 min to 8 h) against fixed TTLs, in simulated time.
    """
    from repocache.refresh import fetch_interval

    day = 86400.0
    horizon = (1 if smoke else 7) * day
    rng = random.Random(1414)
    kinds = [("busy", 10, 15 * 60.0), ("daily", 20, day), ("dormant", 70, None)]
    templates: list[tuple[str, list[float], float]] = []  # (kind, change times, newest commit before the start)
    for kind, count, mean_gap in kinds:
        for _ in range(count):
            changes: list[float] = []
            if mean_gap is not None:
                moment = rng.expovariate(1 / mean_gap)
                while moment < horizon:
                    changes.append(moment)
                    moment += rng.expovariate(1 / mean_gap)
            before = -rng.uniform(0, mean_gap) if mean_gap is not None else -rng.uniform(30, 365) * day
            templates.append((kind, changes, before))
    count = 20_000 if smoke else 200_000
    checkouts = sorted((rng.uniform(0, horizon), rng.randrange(len(templates))) for _ in range(count))
    shortest, longest = 300.0, 8 * 3600.0

    def fresh_repos() -> list[_SimRepo]:
        # Cloned just before the start; the clone seeds the change time with the newest commit's, as the cache does.
        return [_SimRepo(changes=list(changes), last_changed=before) for _kind, changes, before in templates]

    def adaptive(repo: _SimRepo, now: float) -> float:
        return fetch_interval(repo.last_fetched, repo.last_changed, minimum=shortest, maximum=longest)

    auto_contacts, auto_stale = _simulate(fresh_repos(), checkouts, adaptive)

    def fixed(ttl: float) -> tuple[int, list[float]]:
        return _simulate(fresh_repos(), checkouts, lambda _repo, _now: ttl)

    def behind(staleness: list[float]) -> float:
        return sum(1 for value in staleness if value > 0) / len(staleness)

    def matching(measure: Callable[[list[float]], float]) -> float:
        """The fixed TTL whose ``measure`` of staleness equals the adaptive schedule's (bisection in log space)."""
        wanted = measure(auto_stale)
        low, high = shortest, longest
        for _ in range(6 if smoke else 12):
            middle = math.sqrt(low * high)
            if measure(fixed(middle)[1]) > wanted:
                high = middle
            else:
                low = middle
        return math.sqrt(low * high)

    rows = [
        ("fixed TTL = fetch_ttl_max, 8 h (the same bound on a copy's age)", longest),
        ("fixed TTL = fetch_ttl_min, 5 min (busy repositories as fresh)", shortest),
        ("fixed TTL with the same p99 staleness served (bisection)", matching(lambda v: _percentile(v, 0.99))),
        ("fixed TTL with the same share of checkouts behind upstream (bisection)", matching(behind)),
    ]
    per_auto = auto_contacts * 1000 / len(checkouts)
    results: list[Result] = []
    for label, ttl in rows:
        fixed_contacts, fixed_stale = fixed(ttl)
        per_fixed = fixed_contacts * 1000 / len(checkouts)
        note = (
            f"fixed TTL {ttl:.0f} s; staleness served (age of the oldest push missing from the copy): adaptive p99 "
            f"{_percentile(auto_stale, 0.99):.0f} s, max {max(auto_stale):.0f} s, "
            f"{behind(auto_stale):.1%} of checkouts behind; fixed p99 {_percentile(fixed_stale, 0.99):.0f} s, "
            f"max {max(fixed_stale):.0f} s, "
            f"{behind(fixed_stale):.1%} behind. {len(templates)} repos (10 busy: a push every 15 min on average; 20 "
            f"daily; 70 dormant for 30-365 days), {len(checkouts):,} checkouts spread evenly over {horizon / day:g} "
            "simulated days"
        )
        result = Result(
            case="upstream contacts per 1,000 checkouts: adaptive schedule, 5 min - 8 h (simulated time)",
            size="100 repos",
            against=label,
            target="reported",
            unit="count",
            ours=[per_auto],
            base=[per_fixed],
            note=note,
            extra={"ttl": ttl, "auto_contacts": auto_contacts, "fixed_contacts": fixed_contacts},
        ).with_ratio()
        results.append(result)
    return results


# -- (c) hit latency with background refresh ---------------------------------------------------------------------

_PUSHER = """
import sys, time
from pathlib import Path
from repocache.testing import Upstream
upstream = Upstream(Path(sys.argv[1]), "pushed")
k = 0
while True:
    upstream.commit({"counter": str(k)})
    k += 1
    time.sleep(float(sys.argv[2]))
"""


def background_hit_latency(ctx: Context, *, smoke: bool) -> list[Result]:
    """Checkouts of a repository whose copy is always due (``fetch_ttl=0``) while another process pushes to it
    every 20 ms: with ``refresh="background"`` each hit is handed out at once while one fetch at a time runs in the
    background, against the foreground mode where each hit waits for its fetch. Interleaved in blocks.
    """
    from repocache import RepoCache
    from repocache.testing import UpstreamFactory

    upstream = UpstreamFactory(ctx.serve_dir).create("fresh-background")
    url = ctx.url(upstream.path.name)
    root = ctx.scratch("freshness-background")
    background = RepoCache(root / "bg", fetch_ttl=0, refresh="background", max_stale=None)
    foreground = RepoCache(root / "fg", fetch_ttl=0)
    quiet = RepoCache(root / "quiet", fetch_ttl=1e9)  # the reference: hits with no fetch due, under the same load
    background.ensure(url)
    foreground.ensure(url)
    quiet.ensure(url)
    key = background.info(url).key  # type: ignore[union-attr]
    layout = background._context.layout
    pusher = subprocess.Popen([sys.executable, "-c", _PUSHER, str(upstream.path), "0.02"])
    blocks = 2 if smoke else 10
    hits, slow_hits = (100, 5) if smoke else (500, 20)
    ours: list[float] = []
    base: list[float] = []
    reference: list[float] = []
    in_flight = 0
    try:
        time.sleep(0.2)
        for _block in range(blocks):
            for _ in range(hits):
                probe = layout.hold_fetch(key, 0)
                if probe is None:
                    in_flight += 1
                else:
                    probe.release()
                began = time.perf_counter()
                with background.checkout(url):
                    pass
                ours.append(time.perf_counter() - began)
                time.sleep(0.001)
                began = time.perf_counter()
                with quiet.checkout(url):
                    pass
                reference.append(time.perf_counter() - began)
                time.sleep(0.001)
            for _ in range(slow_hits):
                began = time.perf_counter()
                with foreground.checkout(url):
                    pass
                base.append(time.perf_counter() - began)
        if pusher.poll() is not None:
            raise RuntimeError(f"the pusher process died (exit status {pusher.returncode}); see its stderr above")
    finally:
        pusher.kill()
        pusher.wait()
    background.close()
    stats = RepoCache(root / "bg").stats()
    foreground.close()
    quiet.close()
    p50, p99 = _percentile(ours, 0.5), _percentile(ours, 0.99)
    result = Result(
        case="hit latency with refresh='background' while fetches are in flight",
        size=f"{len(ours)} hits",
        against="foreground refresh (each due hit waits for its fetch)",
        target="p50 and p99 under 1 ms",
        ours=ours,
        base=base,
        note=(
            f"p50 {p50 * 1e6:.0f} µs, p99 {p99 * 1e6:.0f} µs, max {max(ours) * 1e3:.1f} ms; a fetch was in flight "
            f"at {in_flight * 100 / len(ours):.0f}% of hits; {stats.fetches} background fetches, "
            f"{stats.fetch_errors} failed; foreground p50 {median(base) * 1e3:.1f} ms; reference (no fetch due, same "
            f"load, interleaved): p50 {_percentile(reference, 0.5) * 1e6:.0f} µs, p99 "
            f"{_percentile(reference, 0.99) * 1e6:.0f} µs"
        ),
        extra={
            "p50": p50,
            "p99": p99,
            "in_flight": in_flight,
            "background_fetches": stats.fetches,
            "reference": reference,
        },
    ).with_ratio()
    result.met = p50 < 1e-3 and p99 < 1e-3
    return [result]


if __name__ == "__main__":  # pragma: no cover - a quick look at (b) alone, which needs no daemon
    for row in adaptive_contacts(smoke="--smoke" in sys.argv):
        print(row.against, row.ours, row.base, row.note)
