"""Freshness of a hit: the rule that decides whether to fetch, the fetch with its retry, and the error policy.

A hit is fetched unless it was fetched within ``fetch_ttl`` or after the request began (another caller's fetch,
finished while this one waited for the fetch lock, counts: concurrent fetches coalesce into one). Fetches run
under the repository's fetch lock while readers keep their shared holds: readers are never blocked by a fetch.
"""

from __future__ import annotations

import time

from repocache import gitops
from repocache.context import Context
from repocache.errors import FetchError, LockTimeoutError
from repocache.events import Counter, warn_caller
from repocache.index import Row
from repocache.keys import RepoURL
from repocache.layout import SharedHold

__all__ = ["adopt", "fetch_with_retry", "is_fresh", "refresh"]

FETCH_RETRY_WITHIN = 5.0  # seconds: a fetch that failed faster than this is tried once more


def is_fresh(row: Row, started: float, fetch_ttl: float) -> bool:
    """Whether ``row`` needs no fetch for a request that began at ``started`` (epoch seconds)."""
    if row.last_fetched is None:
        return False
    return row.last_fetched >= started or time.time() - row.last_fetched < fetch_ttl


def refresh(
    context: Context,
    hold: SharedHold,
    parsed: RepoURL,
    started: float,
    deadline: float,
    progress: gitops.ProgressCallback | None,
) -> tuple[bool, bool]:
    """Fetch the held mirror unless it is fresh enough; returns (fetched, stale).

    Raises:
        FetchError: the fetch failed and ``on_fetch_error="raise"``.
        LockTimeoutError: another worker's fetch took longer than the time left.
    """
    settings = context.settings
    row = context.index.get(hold.key)
    if row is None:
        row = adopt(context, hold, parsed)
    if is_fresh(row, started, settings.fetch_ttl):
        return False, False
    fetch_hold = context.layout.hold_fetch(hold.key, max(0.0, deadline - time.monotonic()))
    if fetch_hold is None:
        raise LockTimeoutError(parsed.url, settings.lock_timeout, "fetch")
    with fetch_hold:
        row = context.index.get(hold.key) or row
        if is_fresh(row, started, settings.fetch_ttl):
            return False, False  # coalesced with a fetch that finished after this request began
        fetch_started = time.perf_counter()
        try:
            fetch_with_retry(context, parsed, progress)
        except FetchError as exc:
            context.index.count(Counter.FETCH_ERRORS)
            seconds = time.perf_counter() - fetch_started
            context.events.fetched(parsed.url, hold.key, seconds, row.size_bytes, 0, error=exc.detail)
            if settings.on_fetch_error == "raise":
                raise
            context.events.stale_served(parsed.url, hold.key, exc.detail)
            warn_caller(f"serving a stale copy: {exc}")
            return False, True
        size = gitops.disk_usage(context.layout.mirror(hold.key))
        context.index.fetched(hold.key, size, time.time())
        context.events.fetched(parsed.url, hold.key, time.perf_counter() - fetch_started, size, size - row.size_bytes)
    return True, False


def fetch_with_retry(context: Context, parsed: RepoURL, progress: gitops.ProgressCallback | None) -> None:
    """Fetch; a fetch that failed quickly is tried once more.

    A live upstream can refuse a fetch that raced with a push: over smart HTTP the refs are advertised in one
    request and wanted in the next, and upload-pack refuses a want whose branch was deleted in between. A dead
    upstream fails fast too (connection refused), so the retry costs little; a fetch that failed slowly (a
    timeout) is not retried, so a stalled upstream does not hold the caller twice as long.
    """
    mirror = context.layout.mirror(parsed.key)
    attempt_started = time.monotonic()
    try:
        gitops.fetch_mirror(parsed, mirror, context.git, progress=progress)
    except FetchError as exc:
        if time.monotonic() - attempt_started > FETCH_RETRY_WITHIN:
            raise
        context.events.fetch_retried(parsed.url, exc.detail)
        gitops.fetch_mirror(parsed, mirror, context.git, progress=progress)


def adopt(context: Context, hold: SharedHold, parsed: RepoURL) -> Row:
    """Index a held mirror found on disk without a row (a process died between its rename and the row)."""
    size = gitops.disk_usage(context.layout.mirror(hold.key))
    context.index.put(hold.key, parsed.url, size, time.time(), counter=None, fetched=False)
    context.events.adopted(parsed.url)
    row = context.index.get(hold.key)
    assert row is not None
    return row
