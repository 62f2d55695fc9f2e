"""The commands on the cache's repositories: get, ls, evict, enforce, warm, stats, refresh, stale."""

from __future__ import annotations

import dataclasses
import os
import re
import time
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING

from repocache.cli.exits import EXIT_NOT_DONE, EXIT_OK, describe, exit_code_for
from repocache.cli.options import call_filter, call_max_age, open_cache
from repocache.cli.output import Context, ago, entry_json, human_bytes, manifest_json, table, yes_no
from repocache.counters import Counter
from repocache.errors import ColdStoreError, ConfigError, InvalidURLError, RepoCacheError

if TYPE_CHECKING:
    from repocache.cache import RepoCache
    from repocache.cold.manifest import Manifest
    from repocache.models import Entry, Stats

_GLOB_CHARS = re.compile(r"[*?\[]")  # the pin file's own rule for what is a glob (see repocache.pins)


def _refuse_missing_path(cache: RepoCache, url: str) -> None:
    """A local path that does not exist (and was never cached) is a typing error, not a failing upstream."""
    from repocache.keys import normalize_url

    parsed = normalize_url(url)
    if parsed.is_local and not os.path.exists(parsed.fetch_url) and cache.info(url) is None:
        raise InvalidURLError(
            url, f"it is read as a local path, and {parsed.fetch_url} does not exist; give a URL or an existing path"
        )


def get(context: Context) -> int:
    """``get URL [--json]``."""
    with open_cache(context) as cache:
        _refuse_missing_path(cache, context.args.url)
        entry = cache.ensure(
            context.args.url, max_age=call_max_age(context.args), filter=call_filter(context.args)
        )  # never returns an entry whose path is gone
    if context.args.json:
        context.emit_json(entry_json(entry))
    else:
        context.emit(str(entry.path))
    return EXIT_OK


def ls(context: Context) -> int:
    """``ls [--json]``.

    With a cold store, the COLD column (``in_cold_store``) says whether the store holds an artifact of the
    repository, whichever host put it there. A store that cannot be listed is an error, with or without
    ``--json`` (the same message and exit code); the table is still printed, its COLD column ``?``.
    """
    cold_error: ColdStoreError | None = None
    manifests: list[Manifest] | None = None
    with open_cache(context) as cache:
        entries = cache.entries()
        root = cache.root
        if cache.has_cold_store:
            try:
                manifests = cache.cold_entries()
            except ColdStoreError as exc:
                if context.args.json:
                    raise
                cold_error = exc
        if context.args.json and manifests is not None:
            context.emit_json(_with_cold_store(entries, manifests, cache))
            return EXIT_OK
    if context.args.json:
        context.emit_json([entry_json(entry) for entry in entries])
        return EXIT_OK
    if not entries and cold_error is None:
        context.note(f"no repositories cached in {root}")
        return EXIT_OK
    in_store = None if manifests is None else {manifest.key for manifest in manifests}

    def cold(entry: Entry) -> str:
        if cold_error is not None:
            return "?"
        return yes_no(entry.in_cold_store if in_store is None else entry.key in in_store)

    now = time.time()
    rows = [("URL", "SIZE", "LAST USED", "PINNED", "COLD")]
    rows += [(e.url, human_bytes(e.size_bytes), ago(e.last_used, now), yes_no(e.pinned), cold(e)) for e in entries]
    if entries:
        context.emit(table(rows))
    if cold_error is not None:
        context.error(f"{describe(cold_error)} (COLD is shown as ?)")
        return exit_code_for(cold_error)
    return EXIT_OK


def _with_cold_store(entries: list[Entry], manifests: list[Manifest], cache: RepoCache) -> list[dict[str, object]]:
    """``ls --json`` with a cold store: each entry with its artifact (``cold``, or null), then the repositories
    that are only in the store (``path`` null, ``size_bytes`` the mirror's size from the manifest)."""
    by_key = {manifest.key: manifest for manifest in manifests}
    listed: list[dict[str, object]] = []
    for entry in entries:
        data = entry_json(entry)
        manifest = by_key.pop(entry.key, None)
        data["cold"] = None if manifest is None else manifest_json(manifest)
        data["in_cold_store"] = manifest is not None  # the store's word, whichever host put the artifact there
        listed.append(data)
    for manifest in manifests:
        if manifest.key in by_key:
            listed.append(
                {
                    "url": manifest.url,
                    "key": manifest.key,
                    "path": None,
                    "size_bytes": manifest.mirror_bytes,
                    "last_used": None,
                    "last_fetched": None,
                    "pinned": cache.pins.matches(manifest.url),
                    "in_cold_store": True,
                    "cold": manifest_json(manifest),
                }
            )
    return listed


def evict(context: Context) -> int:
    """``evict URL [--force]``."""
    from repocache.keys import normalize_url

    url = normalize_url(context.args.url).url
    force = bool(context.args.force)
    with open_cache(context) as cache:
        if cache.evict(context.args.url, force=force):
            context.emit(url)
            return EXIT_OK
        entry = cache.info(context.args.url)
    if entry is None:
        reason = "it is not in the cache"
    elif entry.pinned and not force:
        reason = "it is pinned (use --force to evict it anyway)"
    else:
        reason = "it is in use by another process or being cloned, fetched or evicted; try again later"
    context.error(f"{url} was not evicted: {reason}")
    return EXIT_NOT_DONE


def enforce(context: Context) -> int:
    """``enforce``."""
    with open_cache(context) as cache:
        if cache.max_bytes is None and cache.min_free_bytes == 0:
            context.note("no budget is set (--max-bytes or REPOCACHE_MAX_BYTES): nothing to enforce")
            return EXIT_OK
        evicted = cache.enforce()
        stats = cache.stats()
    for entry in evicted:
        context.emit(entry.url)
    freed = sum(entry.size_bytes for entry in evicted)
    context.note(
        f"evicted {len(evicted)} repositories ({human_bytes(freed)}); "
        f"{human_bytes(stats.bytes_used)} used of {human_bytes(stats.bytes_limit)}"
    )
    return EXIT_OK


def warm(context: Context) -> int:
    """``warm [PINS.yaml]``."""
    from repocache.pins import Pins

    pin_file: str | None = context.args.pin_file
    with open_cache(context, pins_fallback=pin_file) as cache:
        if pin_file is not None:
            patterns = Pins(pin_file).patterns
        elif cache.pins.path is not None:
            patterns = cache.pins.patterns
        else:
            raise ConfigError("warm needs a pin file: give PINS.yaml, --pins FILE or set REPOCACHE_PINS")
        urls = [pattern for pattern in patterns if not _GLOB_CHARS.search(pattern)]
        for pattern in patterns:
            if _GLOB_CHARS.search(pattern):
                context.note(f"skipping glob pattern {pattern!r}: warm needs concrete repository URLs")
        if not urls:
            context.note("no repository URLs to warm")
        failures: list[int] = []
        for url in urls:
            try:
                entry = cache.ensure(url, max_age=call_max_age(context.args))
            except RepoCacheError as exc:
                context.error(describe(exc))
                failures.append(exit_code_for(exc))
                continue
            context.emit(f"warmed {entry.url} ({human_bytes(entry.size_bytes)})")
    if failures:
        context.note(f"{len(failures)} of {len(urls)} repositories were not warmed")
        return failures[0]
    return EXIT_OK


def _stats_lines(stats: Stats, root: Path) -> list[tuple[str, str]]:
    return [
        ("root", str(root)),
        ("entries", str(stats.entries)),
        ("bytes used", f"{human_bytes(stats.bytes_used)} ({stats.bytes_used} bytes)"),
        (
            "budget",
            "unlimited"
            if stats.bytes_limit is None
            else f"{human_bytes(stats.bytes_limit)} ({stats.bytes_limit} bytes)",
        ),
        *((counter.value.replace("_", " "), str(getattr(stats, counter.value))) for counter in Counter),
    ]


def stats(context: Context) -> int:
    """``stats [--json]``."""
    with open_cache(context) as cache:
        counters = cache.stats()
        root = cache.root
    if context.args.json:
        context.emit_json({**dataclasses.asdict(counters), "root": str(root)})
    else:
        lines = _stats_lines(counters, root)
        width = max(len(name) for name, _value in lines)
        context.emit("\n".join(f"{name.ljust(width)}  {value}" for name, value in lines))
    return EXIT_OK


def each_url(context: Context, action: Callable[[RepoCache, str], str | None]) -> int:
    """Run ``action`` on every URL argument; returns the exit code of the first failure (0 when none failed).

    ``action`` returns the line to print, or None when the operation did not happen (it has said why).
    """
    failures: list[int] = []
    with open_cache(context) as cache:
        for url in context.args.urls:
            try:
                line = action(cache, url)
            except RepoCacheError as exc:
                context.error(describe(exc))
                failures.append(exit_code_for(exc))
                continue
            if line is None:
                failures.append(EXIT_NOT_DONE)
            else:
                context.emit(line)
    return failures[0] if failures else EXIT_OK


def refresh(context: Context) -> int:
    """``refresh URL...``."""
    return each_url(context, lambda cache, url: cache.refresh(url).url)


def stale(context: Context) -> int:
    """``stale URL...``."""
    from repocache.keys import normalize_url

    def mark(cache: RepoCache, url: str) -> str | None:
        normalized = normalize_url(url).url
        if cache.mark_stale(url):
            return normalized
        context.error(f"{normalized} was not marked stale: it is not in the cache")
        return None

    return each_url(context, mark)
