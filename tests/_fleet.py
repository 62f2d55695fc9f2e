"""What the fleet tests share: a process that takes a repository's clone lease and is killed holding it, stores
whose uploads wait for a gate, and a count of the calls that reach a store."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
import threading
import time
from pathlib import Path
from typing import Any

from repocache.cold import FleetStore, FsspecStore, LocalDirStore, Manifest
from repocache.cold.store import ArtifactWriter
from tests.helpers import key_of

ROOT = Path(__file__).resolve().parents[1]

_DYING_HOLDER = textwrap.dedent(
    """
    import sys, time
    from repocache import RepoCache
    from repocache.keys import normalize_url
    root, store, url, ttl = sys.argv[1:5]
    cache = RepoCache(root, cold_store=store, cold_publish="clone", cold_lease_ttl=float(ttl))
    manifest, claim = cache._cold.claim(normalize_url(url))
    assert manifest is None and claim is not None
    print("holding", flush=True)
    time.sleep(3600)  # "cloning" until killed
    """
)


def kill_a_lease_holder(root: Path, spec: str, url: str, peer: FleetStore, env: dict[str, str] | None = None) -> float:
    """Start a process that takes the clone lease of ``url`` on the store ``spec`` with a 2 s lease, check that it
    keeps the lease past one lease time (only its renewals can: ``peer``, the same store, cannot take it), SIGKILL
    it, and return when it was killed (``time.monotonic()``)."""
    holder = subprocess.Popen(
        [sys.executable, "-c", _DYING_HOLDER, str(root), spec, url, "2.0"],
        env=dict(os.environ, PYTHONPATH=str(ROOT), **(env or {})),
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert holder.stdout is not None and holder.stdout.readline().strip() == "holding"
        time.sleep(2.5)  # beyond one lease time: only its renewals kept it
        assert peer.try_lease(key_of(url), "a-peer", 60) is None
        holder.kill()
        return time.monotonic()
    finally:
        holder.kill()
        holder.wait(10)
        if holder.stdout is not None:
            holder.stdout.close()


class _Gated:
    """Uploads that wait for ``gate``: an upload that takes as long as the test needs. ``uploading`` is set when
    one starts; ``committed`` is when the upload let through committed (``time.monotonic()``)."""

    gate: threading.Event
    uploading: threading.Event
    committed: float | None

    def _gated(self) -> None:
        self.gate = threading.Event()
        self.uploading = threading.Event()
        self.committed = None

    def put_stream(self, key: str, write: ArtifactWriter, **options: Any) -> Manifest | None:
        self.uploading.set()
        assert self.gate.wait(60)
        stored: Manifest | None = super().put_stream(key, write, **options)  # type: ignore[misc]
        self.committed = time.monotonic()
        return stored


class GatedStore(_Gated, LocalDirStore):
    """A directory store whose uploads wait for a gate (see :class:`_Gated`)."""

    def __init__(self, path: Path) -> None:
        super().__init__(path)
        self._gated()


class GatedFsspecStore(_Gated, FsspecStore):
    """An fsspec store (S3 on moto) whose uploads wait for a gate, as :class:`GatedStore` does."""

    def __init__(self, url: str, **options: Any) -> None:
        super().__init__(url, **options)
        self._gated()


STORE_CALLS = (
    "_entries",
    "_all_entries",
    "_read",
    "_open",
    "_size",
    "_upload",
    "_publish",
    "_remove",
    "try_lease",
    "current_lease",
    "renew_lease",
    "release_lease",
)
"""The calls of a built-in store that reach it (each one request or more)."""


def count_store_calls(store: object) -> list[tuple[float, str]]:
    """Record every call of ``store`` that reaches the store (monotonic time, name) in the list returned."""
    calls: list[tuple[float, str]] = []
    for name in STORE_CALLS:
        original = getattr(store, name, None)
        if original is None:
            continue

        def counted(*args: Any, _original: Any = original, _name: str = name, **kwargs: Any) -> Any:
            calls.append((time.monotonic(), _name))
            return _original(*args, **kwargs)

        setattr(store, name, counted)
    return calls


def assert_current_lease_follows(store: LocalDirStore | FsspecStore, key: str) -> None:
    """Check what a built-in store's ``current_lease`` tells a host watching the lease of ``key`` (not taken yet):
    nothing before it is taken; its holder and expiry once taken; the known lease itself while unchanged; the
    renewed one after a renewal; an expired one (or none) after its release, which another host may then take."""
    assert store.current_lease(key) is None  # never taken
    held = store.try_lease(key, "host-a", 30)
    assert held is not None
    seen = store.current_lease(key)
    assert seen is not None and (seen.key, seen.holder, seen.expires) == (key, "host-a", held.expires), seen
    assert store.current_lease(key, known=seen) is seen  # unchanged
    renewed = store.renew_lease(held, 60)
    assert renewed is not None
    after = store.current_lease(key, known=seen)
    assert after is not None and after is not seen and after.token != seen.token, after
    assert (after.holder, after.expires) == ("host-a", renewed.expires)
    assert store.try_lease(key, "host-b", 30) is None  # what it read is still the truth
    store.release_lease(renewed)
    released = store.current_lease(key, known=after)
    assert released is None or (released.expires < time.time() and released is not after), released
    assert store.try_lease(key, "host-b", 30) is not None
