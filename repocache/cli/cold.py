"""The commands on the cold store: publish, cold ls, cold prune."""

from __future__ import annotations

import time
from typing import TYPE_CHECKING

from repocache.cli.exits import EXIT_OK
from repocache.cli.options import open_cache
from repocache.cli.output import Context, ago, human_bytes, manifest_json, table
from repocache.errors import ConfigError

if TYPE_CHECKING:
    from repocache.cache import RepoCache


def _require_cold_store(cache: RepoCache) -> None:
    if not cache.has_cold_store:
        raise ConfigError("this command needs a cold store: give --cold-store URL or set REPOCACHE_COLD_STORE")


def publish(context: Context) -> int:
    """``publish URL... [--json]``."""
    manifests = []
    with open_cache(context) as cache:
        _require_cold_store(cache)
        for url in context.args.urls:
            manifest = cache.publish(url)
            manifests.append(manifest)
            if not context.args.json:
                context.emit(
                    f"published {manifest.url} ({human_bytes(manifest.size_bytes)}, {manifest.ref_count} refs)"
                )
    if context.args.json:
        context.emit_json([manifest_json(manifest) for manifest in manifests])
    return EXIT_OK


def cold(context: Context) -> int:
    """``cold`` without a subcommand: a usage error."""
    raise ConfigError("cold needs a command: ls or prune (see repocache cold --help)")


def cold_ls(context: Context) -> int:
    """``cold ls [--json]``."""
    with open_cache(context) as cache:
        _require_cold_store(cache)
        manifests = cache.cold_entries()
    if context.args.json:
        context.emit_json([manifest_json(manifest) for manifest in manifests])
        return EXIT_OK
    if not manifests:
        context.note("the cold store holds no artifacts")
        return EXIT_OK
    now = time.time()
    rows = [("URL", "SIZE", "MIRROR", "CREATED", "REFS", "COMPRESSION")]
    rows += [
        (
            m.url,
            human_bytes(m.size_bytes),
            human_bytes(m.mirror_bytes),
            ago(m.created, now),
            str(m.ref_count),
            m.compression,
        )
        for m in manifests
    ]
    context.emit(table(rows))
    return EXIT_OK


def cold_prune(context: Context) -> int:
    """``cold prune [--older-than SECONDS] [--keep-bytes SIZE]``."""
    with open_cache(context) as cache:
        _require_cold_store(cache)
        manifests = cache.prune_cold(older_than=context.args.older_than, keep_bytes=context.args.keep_bytes)
    for manifest in manifests:
        context.emit(manifest.url)
    freed = sum(manifest.size_bytes for manifest in manifests)
    context.note(f"pruned {len(manifests)} artifacts ({human_bytes(freed)})")
    return EXIT_OK
