"""Partial mirrors: which mirror a request gets (its filter), and fetching what a partial mirror left out.

The filter of a request comes from the call (``filter=``), else from the first never-evict pin that names one,
else from the cache's ``filter`` setting. The filter is part of a mirror's identity (:func:`repocache.keys.
with_filter`): a full and a partial mirror of one URL never mix. A request may be served by a mirror that holds
more than it asks for and is already on disk (a full one for any filter, a blob-less one for a tree-less
request), never by one that holds less. What to choose, and what each filter cannot do: ``docs/partial.md``.
"""

from __future__ import annotations

import enum
import re
from collections.abc import Iterable, Sequence
from typing import Literal

from repocache import gitops
from repocache.context import Context
from repocache.errors import ConfigError, LockTimeoutError
from repocache.keys import FILTERS, RepoURL, with_filter

__all__ = ["USE_CONFIGURED", "FilterArg", "choose", "every_mirror_of", "exact", "fetch_missing", "parse_filter"]


class _UseConfigured(enum.Enum):
    USE_CONFIGURED = "use the pins' or the cache's filter"


USE_CONFIGURED = _UseConfigured.USE_CONFIGURED
"""The default of a call's ``filter=``: the filter of the first pin naming one, else the cache's ``filter``."""

FilterArg = str | None | Literal[_UseConfigured.USE_CONFIGURED]

_HOLDS_MORE = {"blob:none": (None,), "tree:0": (None, "blob:none")}  # mirrors that may serve a request, besides its own
_OID = re.compile(r"^[0-9a-f]{40}$")


def parse_filter(value: object) -> FilterArg:
    """Validate a call's ``filter``: :data:`USE_CONFIGURED`, None (a full mirror), ``"blob:none"`` or ``"tree:0"``.

    Raises:
        ConfigError: anything else, named, with what is accepted.
    """
    if value is USE_CONFIGURED or value is None or (isinstance(value, str) and value in FILTERS):
        return value
    raise ConfigError(f"filter={value!r} is not accepted; expected None (a full mirror), 'blob:none' or 'tree:0'")


def choose(context: Context, parsed: RepoURL, filter: FilterArg, *, wait: bool = True) -> RepoURL:
    """The mirror that serves a request for ``parsed`` with ``filter``: its parsed URL, carrying the filter and key.

    ``wait=False`` (an event loop): a reload of the pin file under way in another thread is not waited for.

    Raises:
        ConfigError: the filter is invalid, or it is partial and no git CLI was found.
    """
    partial = exact(context, parsed, filter, wait=wait)
    wanted = partial.filter
    if wanted is None:
        return partial
    gitops.require_cli_for_filter(partial, context.git)
    for richer in _HOLDS_MORE[wanted]:
        candidate = with_filter(parsed, richer)
        if context.layout.mirror(candidate.key).is_dir():
            return candidate  # it holds everything the request needs, and more
    return partial


def exact(context: Context, parsed: RepoURL, filter: FilterArg, *, wait: bool = True) -> RepoURL:
    """``parsed`` as the mirror with the filter the call, a pin or the cache names, whatever else is on disk
    (``wait`` as for :func:`choose`).

    Raises:
        ConfigError: the filter is invalid.
    """
    wanted = parse_filter(filter)
    if wanted is USE_CONFIGURED:
        named, pinned = context.pins.filter_for(parsed.url, wait=wait)
        wanted = pinned if named else context.settings.filter
    return with_filter(parsed, wanted)


def every_mirror_of(parsed: RepoURL) -> list[RepoURL]:
    """The full mirror of ``parsed`` and its partial ones (what a push to its upstream makes stale)."""
    return [with_filter(parsed, None), *(with_filter(parsed, name) for name in FILTERS)]


def fetch_missing(
    context: Context,
    parsed: RepoURL,
    *,
    oids: Iterable[str] = (),
    commit: str | None = None,
    paths: Sequence[str] | None = None,
    progress: gitops.ProgressCallback | None = None,
) -> int:
    """Fetch into the held partial mirror of ``parsed`` the objects ``oids``, and what ``commit``'s tree lacks
    (under ``paths`` when given); the caller holds the repository shared. Runs under its fetch lock; the mirror's
    new size is written to the index (charged to the budget).

    Returns:
        The number of objects asked from upstream (0 for a full mirror, or when nothing was missing).

    Raises:
        ConfigError: an id in ``oids`` is not 40 hex digits.
        RefNotFoundError: ``commit`` names no commit of the mirror.
        FetchError: upstream failed.
        LockTimeoutError: another fetch held the repository longer than ``lock_timeout``.
    """
    wanted = list(oids)
    for oid in wanted:
        if not isinstance(oid, str) or not _OID.match(oid):
            raise ConfigError(f"oids: {oid!r} is not an object id (expected 40 lower-case hex digits)")
    if parsed.filter is None:
        return 0  # a full mirror holds every object
    fetch = context.layout.hold_fetch(parsed, context.settings.lock_timeout)
    if fetch is None:
        raise LockTimeoutError(parsed.url, context.settings.lock_timeout, "fetch")
    with fetch:
        mirror = context.layout.mirror(parsed.key)
        asked = 0
        absent = gitops.absent_objects(mirror, wanted)
        if absent:
            asked += gitops.fetch_objects(parsed, mirror, context.git, absent, progress=progress)
        if commit is not None:
            asked += gitops.fetch_missing_of(parsed, mirror, context.git, commit, paths, progress=progress)
        if asked:
            context.index.set_size(parsed.key, gitops.disk_usage(mirror))
    return asked
