"""The commands that look after the mirrors: verify, maintain."""

from __future__ import annotations

import dataclasses

from repocache.cli.exits import EXIT_NOT_DONE, EXIT_OK
from repocache.cli.options import open_cache
from repocache.cli.output import Context, human_bytes, problem_json, table


def verify(context: Context) -> int:
    """``verify [--repair] [--json]``."""
    repair = bool(context.args.repair)
    with open_cache(context) as cache:
        problems = cache.verify(repair=repair)
        root = cache.root
    unrepaired = [problem for problem in problems if not problem.repaired]
    if context.args.json:
        context.emit_json([problem_json(problem) for problem in problems])
    elif problems:
        rows = [("KIND", "KEY", "STATUS", "DETAIL")]
        rows += [(p.kind, p.key, "repaired" if p.repaired else "found", p.detail) for p in problems]
        context.emit(table(rows))
    if not problems:
        context.note(f"no problems found in {root}")
    elif unrepaired:
        hint = "" if repair else "; run `repocache verify --repair` to fix them"
        context.note(f"{len(unrepaired)} of {len(problems)} problems not repaired{hint}")
    else:
        context.note(f"repaired {len(problems)} problems")
    return EXIT_NOT_DONE if unrepaired else EXIT_OK


def maintain(context: Context) -> int:
    """``maintain [URL] [--prune] [--json]``; exit 1 when URL is not cached, as ``stale`` and ``evict`` do."""
    from repocache.keys import normalize_url

    url = None if context.args.url is None else normalize_url(context.args.url).url
    with open_cache(context) as cache:
        reports = cache.maintain(context.args.url, prune=bool(context.args.prune))
    if url is not None and not reports:
        if context.args.json:
            context.emit_json([])
        context.error(f"{url} was not maintained: it is not in the cache")
        return EXIT_NOT_DONE
    if context.args.json:
        context.emit_json([dataclasses.asdict(report) for report in reports])
    elif reports:
        rows = [("URL", "DONE", "PACKS", "LOOSE OBJECTS", "LOOSE REFS", "SIZE", "SECONDS", "PEAK MEMORY")]
        rows += [
            (
                r.url,
                ", ".join(r.tasks) or (f"nothing ({r.skipped})" if r.skipped else "nothing needed"),
                f"{r.packs_before} -> {r.packs_after}",
                f"{r.loose_objects_before} -> {r.loose_objects_after}",
                f"{r.loose_refs_before} -> {r.loose_refs_after}",
                f"{human_bytes(r.size_before)} -> {human_bytes(r.size_after)}",
                f"{r.seconds:.2f}",
                human_bytes(r.peak_rss_bytes),
            )
            for r in reports
        ]
        context.emit(table(rows))
    else:
        context.note("nothing to maintain")
    failed = [r for r in reports if r.skipped is not None and r.skipped.startswith("failed")]
    return EXIT_NOT_DONE if failed else EXIT_OK
