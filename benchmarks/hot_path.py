"""Issue 24's two in-process figures: a due background hit whose fetch is in flight, and the slowest of 10,000 hits.

Run ``python -m benchmarks.hot_path``. The fetch of the due hit is held at a gate (so it stays in flight); 3,000
hits with nothing due and 3,000 due hits are interleaved in blocks of 300 on one root, then 10,000 hits are timed
one by one. Figures are printed; run it on a quiet machine for the tail.
"""

from __future__ import annotations

import statistics
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

from repocache import RepoCache
from repocache import refresh as refresh_module
from repocache.testing import GitDaemon, UpstreamFactory


def _hits(cache: RepoCache, url: str, n: int) -> list[float]:
    out = []
    for _ in range(n):
        started = time.perf_counter()
        with cache.checkout(url):
            pass
        out.append(time.perf_counter() - started)
    return out


def main() -> None:
    tmp = Path(tempfile.mkdtemp(prefix="repocache-hot-"))
    factory = UpstreamFactory(tmp / "served")
    upstream = factory.create("hot")
    upstream.commits(20, size=1000)
    gate = threading.Event()
    original = refresh_module.fetch_locked

    def stalled(*args: Any, **kwargs: Any) -> Any:
        gate.wait(600)
        return original(*args, **kwargs)

    refresh_module.fetch_locked = stalled
    with GitDaemon(tmp / "served") as daemon:
        url = daemon.url_for(upstream)
        with (
            RepoCache(tmp / "root", fetch_ttl=3600) as fresh,
            RepoCache(tmp / "root", fetch_ttl=0, refresh="background") as due,
        ):
            fresh.ensure(url)
            upstream.commits(1)
            with due.checkout(url):  # due: its fetch goes to the pool and stays at the gate
                pass
            quiet: list[float] = []
            busy: list[float] = []
            for _ in range(10):
                quiet += _hits(fresh, url, 300)
                busy += _hits(due, url, 300)
            a, b = statistics.median(quiet), statistics.median(busy)
            print(f"nothing due {a * 1e6:.1f} µs; due with its fetch in flight {b * 1e6:.1f} µs (+{(b - a) * 1e6:.1f})")
            gate.set()
            due._background.join(60)
            many = sorted(_hits(fresh, url, 10_000))
            print(
                f"10,000 hits: median {many[5000] * 1e6:.1f} µs, p99 {many[9900] * 1e6:.1f} µs, "
                f"p99.9 {many[9990] * 1e6:.1f} µs, max {many[-1] * 1e3:.2f} ms"
            )


if __name__ == "__main__":
    main()
