"""The check that a store really enforces the conditions of its conditional writes, made before its first lease.

A store that ignores ``If-None-Match`` / ``If-Match`` (old MinIO versions, some emulators and S3-compatible
services) would let two hosts both "create" the same lease and both believe they won. So before a store's first
lease, each process writes a probe object next to the leases (``.leases/.probe-<random>.json``):

1. create-only: must succeed;
2. create-only again: must be refused (the object exists);
3. replace with the token of step 1: must succeed;
4. replace with the token of step 1 again, now stale: must be refused;

then deletes it. A store that accepts step 2 or 4 (or refuses 1 or 3) does not enforce the conditions: it is used
without leases (every host that misses clones independently, never two winners), with one warning per process.
The outcome is kept for the life of the process, per filesystem and root; a check that fails because the store
failed is not kept (the next lease checks again).
"""

from __future__ import annotations

import contextlib
import logging
import threading
import uuid
from collections.abc import Callable, Hashable

from repocache.cold.conditional import ConditionalWrites

__all__ = ["check_enforcement", "enforces_conditions", "forget_enforcement"]

logger = logging.getLogger("repocache.cold")

_known: dict[Hashable, bool] = {}
_locks: dict[Hashable, threading.Lock] = {}
_guard = threading.Lock()


def check_enforcement(writes: ConditionalWrites, path: str, remove: Callable[[str], None]) -> str | None:
    """Probe ``writes`` with an object at ``path`` (deleted after with ``remove``).

    Returns:
        None when the store enforces the conditions; otherwise what it did wrong, for the warning.

    Raises:
        Exception: the backend's own exception when the store failed (not a verdict).
    """
    try:
        first = writes.create(path, b'{"probe": 1}')
        if first is None:
            return "a create-only write of a new object was refused"
        if writes.create(path, b'{"probe": 2}') is not None:
            return "a second create-only write of the same object succeeded (If-None-Match or its equivalent ignored)"
        second = writes.replace(path, b'{"probe": 3}', first)
        if second is None:
            return "a conditional overwrite with the object's current version was refused"
        if second == first:
            return "a write did not change the object's version token"
        if writes.replace(path, b'{"probe": 4}', first) is not None:
            return "a conditional overwrite with a stale version succeeded (If-Match or its equivalent ignored)"
        return None
    finally:
        with contextlib.suppress(Exception):
            remove(path)


def enforces_conditions(
    identity: Hashable, where: str, writes: ConditionalWrites, probe_dir: str, remove: Callable[[str], None]
) -> bool:
    """Whether the store known as ``identity`` enforces its conditional writes; checked once per process.

    Args:
        identity: what names the store for the cache of outcomes (its filesystem and root).
        where: the store's URL, for the warning.
        writes: its conditional-write backend.
        probe_dir: the directory (prefix) the probe object is written under.
        remove: deletes an object by path.

    Returns:
        True if it enforces them; False (after one warning per process) if it does not.

    Raises:
        Exception: the backend's own exception when the store failed during the check (nothing is kept).
    """
    with _guard:
        if identity in _known:
            return _known[identity]
        lock = _locks.setdefault(identity, threading.Lock())
    with lock:  # one check per store at a time; the others wait for its outcome
        with _guard:
            if identity in _known:
                return _known[identity]
        problem = check_enforcement(writes, f"{probe_dir}/.probe-{uuid.uuid4().hex}.json", remove)
        if problem is not None:
            logger.warning(
                "cold store %s: the %s store does not enforce conditional writes (%s); it is used without leases, "
                "so every host that misses a repository clones it independently",
                where,
                writes.name,
                problem,
            )
        with _guard:
            _known[identity] = problem is None
        return problem is None


def forget_enforcement() -> None:
    """Forget every outcome, so the next lease of each store checks again (for tests)."""
    with _guard:
        _known.clear()
