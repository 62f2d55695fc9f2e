"""The ``repocache`` command: fill, inspect and maintain a cache from the shell.

Usage (global options go before or after the command)::

    repocache [--root DIR] [--max-bytes SIZE] [--pins FILE] [--fetch-ttl SECONDS] [-q] [-v] COMMAND ...

    get URL [--json]          clone or refresh URL now and print its mirror's path (``cd "$(repocache get URL)"``)
    ls [--json]               the cached repositories, most recently used first
    evict URL [--force]       remove one repository from disk (``--force`` also evicts a pinned one)
    enforce                   evict least recently used repositories until the budget holds; prints their URLs
    warm [PINS.yaml]          clone or refresh every pinned URL (glob patterns are skipped)
    stats [--json]            counters shared by every process using the root, and the bytes used
    verify [--repair] [--json] compare the index with the disk; ``--repair`` fixes what it finds
    refresh URL...            fetch each repository now, whatever its age (cloning one not cached); prints its URL
    stale URL...              mark each repository stale: its next hit in any process fetches first; prints its URL
    publish URL... [--json]   clone or refresh each URL and upload its mirror to the cold store for other hosts
    cold ls [--json]          the artifacts in the cold store, newest first
    cold prune [--older-than SECONDS] [--keep-bytes SIZE]   delete old artifacts from the cold store
    maintain [URL] [--prune] [--json]  repack, pack refs and write the commit-graph of URL (default: every mirror)

Settings come from the options, else the environment: ``REPOCACHE_DIR`` (the root; else the platform's user cache
directory), ``REPOCACHE_MAX_BYTES`` (the budget, e.g. ``20GB``), ``REPOCACHE_PINS`` (a never-evict YAML file),
``REPOCACHE_COLD_STORE`` (the cold store) and ``REPOCACHE_COLD_PUBLISH`` (``off``, ``clone`` or ``always``).

When standard error is a terminal (and ``--quiet`` is not given), clones and fetches draw a one-line progress bar
on it; otherwise nothing but results goes to standard output and nothing but messages to standard error.

Exit codes (scripts can rely on them)::

    0    success
    1    the operation did not happen: not evicted (absent, pinned or in use), problems found by verify and left
         unrepaired
    2    usage error or invalid input: bad option, invalid URL, invalid setting or pin file
    3    git failed: the clone or fetch of a repository failed
    4    the repository does not fit in the byte budget
    5    timed out waiting for another worker's lock
    6    any other error (cold storage, file system, unexpected)
    130  interrupted (Ctrl-C)
    141  standard output was closed early (for example piped into ``head``)

``warm``, ``refresh`` and ``stale`` exit with the code of their first failure after trying every repository
(``stale`` of a repository that is not cached is exit code 1). Errors are printed as one line,
``repocache: error: <message>``, on standard error; ``-v`` adds the traceback.
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import json
import logging
import os
import re
import sys
import time
import traceback
import warnings
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any, TextIO

from repocache.errors import (
    BudgetError,
    ConfigError,
    GitError,
    InvalidRefError,
    InvalidURLError,
    LockTimeoutError,
    RefNotFoundError,
    RepoCacheError,
    WebhookError,
)

if TYPE_CHECKING:
    from repocache.cache import RepoCache
    from repocache.cold.base import Manifest
    from repocache.models import Entry, Problem, Progress, Stats

__all__ = [
    "EXIT_BUDGET",
    "EXIT_ERROR",
    "EXIT_GIT",
    "EXIT_INTERRUPTED",
    "EXIT_LOCK_TIMEOUT",
    "EXIT_NOT_DONE",
    "EXIT_OK",
    "EXIT_PIPE",
    "EXIT_USAGE",
    "build_parser",
    "exit_code_for",
    "main",
]

EXIT_OK = 0
EXIT_NOT_DONE = 1
EXIT_USAGE = 2
EXIT_GIT = 3
EXIT_BUDGET = 4
EXIT_LOCK_TIMEOUT = 5
EXIT_ERROR = 6
EXIT_INTERRUPTED = 130
EXIT_PIPE = 141

_EPILOG = """\
environment:
  REPOCACHE_DIR        cache root when --root is not given (else the platform's user cache directory)
  REPOCACHE_MAX_BYTES  budget when --max-bytes is not given
  REPOCACHE_PINS       never-evict YAML file when --pins is not given
  REPOCACHE_COLD_STORE cold storage URL when --cold-store is not given
  REPOCACHE_COLD_PUBLISH when to upload mirrors for other hosts when --cold-publish is not given

exit codes:
  0    success
  1    the operation did not happen (not evicted; verify found problems it did not repair)
  2    usage error or invalid input (bad option, invalid URL, setting or pin file)
  3    git failed (clone or fetch)
  4    the repository does not fit in the byte budget
  5    timed out waiting for another worker's lock
  6    any other error (cold storage, file system, unexpected)
  130  interrupted
  141  standard output closed early
"""

_GLOB_CHARS = re.compile(r"[*?\[]")  # the pin file's own rule for what is a glob (see repocache.pins)
_logger = logging.getLogger("repocache")


# -- exit codes ---------------------------------------------------------------------------------------------------


def exit_code_for(error: BaseException) -> int:
    """The documented exit code for an exception raised while running a command.

    Args:
        error: the exception.

    Returns:
        2 for invalid input, 3 for git failures, 4 for budget, 5 for lock timeouts, 130 for an interrupt,
        141 for a closed standard output, 6 for anything else.
    """
    if isinstance(error, KeyboardInterrupt):
        return EXIT_INTERRUPTED
    if isinstance(error, BrokenPipeError):
        return EXIT_PIPE
    if isinstance(error, (InvalidURLError, ConfigError, InvalidRefError, RefNotFoundError, WebhookError)):
        return EXIT_USAGE
    if isinstance(error, GitError):
        return EXIT_GIT
    if isinstance(error, BudgetError):
        return EXIT_BUDGET
    if isinstance(error, LockTimeoutError):
        return EXIT_LOCK_TIMEOUT
    return EXIT_ERROR


def _describe(error: BaseException) -> str:
    if isinstance(error, (RepoCacheError, OSError)):
        return str(error) or type(error).__name__
    return f"unexpected {type(error).__name__}: {error} (run with -v for the traceback)"


# -- formatting ---------------------------------------------------------------------------------------------------


def _human_bytes(count: int | None) -> str:
    """``1536`` -> ``"1.5 KiB"``; None -> ``"unlimited"``."""
    if count is None:
        return "unlimited"
    value = float(count)
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if value < 1024 or unit == "TiB":
            return f"{int(value)} B" if unit == "B" else f"{value:.1f} {unit}"
        value /= 1024
    raise AssertionError("unreachable")  # pragma: no cover


def _ago(timestamp: float | None, now: float) -> str:
    """A relative time for the last week (``"5m ago"``), a local ISO date and time before that."""
    if timestamp is None:
        return "never"
    seconds = now - timestamp
    if seconds < 1:
        return "just now"
    for size, unit in ((86400, "d"), (3600, "h"), (60, "m"), (1, "s")):
        if seconds >= size and seconds < 7 * 86400:
            return f"{int(seconds // size)}{unit} ago"
    return time.strftime("%Y-%m-%d %H:%M", time.localtime(timestamp))


def _yes_no(flag: bool) -> str:
    return "yes" if flag else "no"


def _entry_json(entry: Entry) -> dict[str, Any]:
    data = dataclasses.asdict(entry)
    data["path"] = str(entry.path)
    return data


def _problem_json(problem: Problem) -> dict[str, Any]:
    data = dataclasses.asdict(problem)
    data["path"] = str(problem.path)
    return data


def _table(rows: Sequence[Sequence[str]]) -> str:
    widths = [max(len(row[column]) for row in rows) for column in range(len(rows[0]))]
    lines = ["  ".join(cell.ljust(width) for cell, width in zip(row, widths, strict=True)).rstrip() for row in rows]
    return "\n".join(lines)


# -- progress -----------------------------------------------------------------------------------------------------


class _ProgressBar:
    """Draws one progress line on a terminal, rewritten in place with ``\\r``, cleared when an operation ends."""

    def __init__(self, stream: TextIO) -> None:
        self._stream = stream
        self._drawn = False

    def __call__(self, event: Progress) -> None:
        if event.phase == "done":
            self.clear()
            return
        self._stream.write("\r" + self._render(event) + "\x1b[K")
        self._stream.flush()
        self._drawn = True

    def clear(self) -> None:
        """Erase the line if one is drawn (before messages, results or exit)."""
        if self._drawn:
            self._drawn = False
            self._stream.write("\r\x1b[K")
            self._stream.flush()

    def _width(self) -> int:
        try:
            return max(20, os.get_terminal_size(self._stream.fileno()).columns - 1)
        except (OSError, ValueError, AttributeError):
            return 79

    def _render(self, event: Progress) -> str:
        width = self._width()
        status = f"{event.phase} {event.objects}"
        gauge = ""
        if event.total_objects > 0:
            fraction = min(1.0, event.objects / event.total_objects)
            status += f"/{event.total_objects} {int(fraction * 100):3d}%"
            gauge_width = 20
            filled = int(fraction * gauge_width)
            gauge = " [" + "#" * filled + "-" * (gauge_width - filled) + "]"
        if event.bytes > 0:
            status += f" {_human_bytes(event.bytes)}"
        operation, url = f"{event.operation} ", f"{event.url} "
        if len(operation) + len(url) + len(status) + len(gauge) > width:
            gauge = ""
        room = width - len(operation) - len(status)
        if len(url) > room:
            url = ("..." + url[-(room - 3) :]) if room > 10 else ""
        return (operation + url + status + gauge)[:width]


if TYPE_CHECKING:
    _StreamHandler = logging.StreamHandler[TextIO]
else:
    _StreamHandler = logging.StreamHandler


class _Handler(_StreamHandler):
    """Writes ``repocache: <level>: <message>`` lines, erasing a progress line first."""

    def __init__(self, stream: TextIO, bar: _ProgressBar | None) -> None:
        super().__init__(stream)
        self.bar = bar
        self.setFormatter(logging.Formatter("repocache: %(levelname)s: %(message)s"))

    def emit(self, record: logging.LogRecord) -> None:
        if self.bar is not None:
            self.bar.clear()
        record.levelname = record.levelname.lower()
        super().emit(record)


# -- the parser ---------------------------------------------------------------------------------------------------


def _directory(value: str) -> str:
    if not value.strip():
        raise argparse.ArgumentTypeError("must not be empty")
    return value


def _size(value: str) -> str:
    from repocache.settings import parse_bytes

    try:
        parse_bytes("--max-bytes", value, allow_none=False)
    except ConfigError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from exc
    return value


def _seconds(value: str) -> float:
    try:
        seconds = float(value)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{value!r} is not a number of seconds") from None
    if not seconds >= 0 or seconds == float("inf"):
        raise argparse.ArgumentTypeError(f"{value!r} is out of range; expected finite seconds >= 0")
    return seconds


def _add_global_options(parser: argparse.ArgumentParser, *, in_command: bool) -> None:
    """Options accepted before and after the command; after it they only override what was given before."""

    def default(value: object) -> object:
        return argparse.SUPPRESS if in_command else value

    group = parser.add_argument_group("global options")
    group.add_argument(
        "--root",
        metavar="DIR",
        type=_directory,
        default=default(None),
        help="cache directory (default: $REPOCACHE_DIR, else the platform's user cache directory)",
    )
    group.add_argument(
        "--max-bytes",
        metavar="SIZE",
        type=_size,
        default=default(None),
        help='byte budget for all mirrors, e.g. "500MiB" or "20GB" (default: $REPOCACHE_MAX_BYTES, else no limit)',
    )
    group.add_argument(
        "--pins",
        metavar="FILE",
        default=default(None),
        help="never-evict YAML file (default: $REPOCACHE_PINS, else nothing is pinned)",
    )
    group.add_argument(
        "--cold-store",
        metavar="URL",
        default=default(None),
        help="cold storage for evicted and published repositories: file:///dir, a directory, or s3://bucket/prefix "
        "(default: $REPOCACHE_COLD_STORE, else none)",
    )
    group.add_argument(
        "--cold-publish",
        metavar="MODE",
        choices=("off", "clone", "always"),
        default=default(None),
        help="upload mirrors to the cold store for other hosts: off, clone (after each clone) or always (also "
        "after fetches once the stored copy is an hour old) (default: $REPOCACHE_COLD_PUBLISH, else off)",
    )
    group.add_argument(
        "--fetch-ttl",
        metavar="SECONDS",
        type=_seconds,
        default=default(0.0),
        help="do not contact upstream for a repository fetched less than this long ago (default: 0)",
    )
    group.add_argument(
        "-q", "--quiet", action="store_true", default=default(False), help="no progress bars, notes or warnings"
    )
    group.add_argument(
        "-v",
        "--verbose",
        action="count",
        default=default(0),
        help="log what the cache does to stderr (-vv for debug); tracebacks with errors",
    )


def build_parser() -> argparse.ArgumentParser:
    """The argument parser of the ``repocache`` command."""
    from repocache import __version__

    formatter = argparse.RawDescriptionHelpFormatter
    parser = argparse.ArgumentParser(
        prog="repocache",
        description="An on-disk LRU cache of git mirrors shared safely by threads and processes.",
        epilog=_EPILOG,
        formatter_class=formatter,
    )
    parser.add_argument("--version", action="version", version=f"repocache {__version__}")
    _add_global_options(parser, in_command=False)
    commands = parser.add_subparsers(dest="command", metavar="COMMAND", title="commands")

    def command(name: str, summary: str) -> argparse.ArgumentParser:
        sub = commands.add_parser(name, help=summary, description=summary, epilog=_EPILOG, formatter_class=formatter)
        _add_global_options(sub, in_command=True)
        return sub

    get = command("get", "clone or refresh a repository now and print the path of its bare mirror")
    get.add_argument("url", metavar="URL", help="repository URL or local path (use -- before a URL starting with -)")
    get.add_argument(
        "--json", "--print-entry", dest="json", action="store_true", help="print the cache entry as JSON instead"
    )

    listing = command("ls", "list cached repositories, most recently used first")
    listing.add_argument("--json", action="store_true", help="print a JSON list of entries")

    evict = command("evict", "remove a repository from disk; exit 1 if it was not evicted")
    evict.add_argument("url", metavar="URL", help="repository URL or local path")
    evict.add_argument("--force", action="store_true", help="evict it even if it is pinned")

    command("enforce", "evict least recently used repositories until the budget holds; print their URLs")

    warm = command("warm", "clone or refresh every pinned repository (glob patterns are skipped)")
    warm.add_argument(
        "pin_file",
        metavar="PINS.yaml",
        nargs="?",
        help="pin file to warm (default: --pins / $REPOCACHE_PINS); also used as the cache's pins if none is set",
    )

    stats = command("stats", "print the counters and the bytes used")
    stats.add_argument("--json", action="store_true", help="print a JSON object")

    refresh = command("refresh", "fetch repositories now, whatever their age; print their URLs")
    refresh.add_argument("urls", metavar="URL", nargs="+", help="repository URL or local path")

    stale = command("stale", "mark repositories stale: their next hit fetches first; exit 1 if one is not cached")
    stale.add_argument("urls", metavar="URL", nargs="+", help="repository URL or local path")

    verify = command("verify", "compare the index with the disk; exit 1 if problems remain")
    verify.add_argument("--repair", action="store_true", help="fix the problems found")
    verify.add_argument("--json", action="store_true", help="print a JSON list of problems")

    publish = command("publish", "clone or refresh repositories and upload their mirrors to the cold store")
    publish.add_argument("urls", metavar="URL", nargs="+", help="repository URLs or local paths")
    publish.add_argument("--json", action="store_true", help="print a JSON list of the stored manifests")

    cold = command("cold", "inspect and prune the cold store (--cold-store or $REPOCACHE_COLD_STORE)")
    cold_commands = cold.add_subparsers(dest="cold_command", metavar="COLD_COMMAND", title="cold store commands")
    cold_ls = cold_commands.add_parser(
        "ls", help="list the artifacts in the cold store, newest first", formatter_class=formatter
    )
    _add_global_options(cold_ls, in_command=True)
    cold_ls.add_argument("--json", action="store_true", help="print a JSON list of manifests")
    cold_prune = cold_commands.add_parser(
        "prune", help="delete old artifacts from the cold store; print their URLs", formatter_class=formatter
    )
    _add_global_options(cold_prune, in_command=True)
    cold_prune.add_argument(
        "--older-than",
        metavar="SECONDS",
        type=_seconds,
        default=None,
        help="delete artifacts older than this (default: none by age)",
    )
    cold_prune.add_argument(
        "--keep-bytes",
        metavar="SIZE",
        type=_size,
        default=None,
        help='then delete the oldest while the artifacts total more than this, e.g. "50GB"',
    )
    maintain = command("maintain", "repack, pack refs and write the commit-graph of one mirror or of all of them")
    maintain.add_argument("url", metavar="URL", nargs="?", help="repository URL or local path (default: every one)")
    maintain.add_argument(
        "--prune",
        action="store_true",
        help="also drop unreachable objects older than the grace period (only mirrors nobody holds)",
    )
    maintain.add_argument("--json", action="store_true", help="print a JSON list of reports")
    return parser


# -- commands -----------------------------------------------------------------------------------------------------


@dataclasses.dataclass
class _Context:
    """What a command needs besides the cache: its arguments and where to write."""

    args: argparse.Namespace
    out: TextIO
    err: TextIO
    bar: _ProgressBar | None

    def note(self, message: str) -> None:
        """An informational line on stderr, unless ``--quiet``."""
        if not self.args.quiet:
            self.clear()
            print(f"repocache: {message}", file=self.err)

    def error(self, message: str) -> None:
        """An error line on stderr, always."""
        self.clear()
        print(f"repocache: error: {message}", file=self.err)

    def clear(self) -> None:
        """Erase the progress line, if any."""
        if self.bar is not None:
            self.bar.clear()

    def emit(self, text: str) -> None:
        """A result line on stdout."""
        self.clear()
        print(text, file=self.out)

    def emit_json(self, value: object) -> None:
        """A JSON result on stdout."""
        self.emit(json.dumps(value, indent=2))


def _open_cache(context: _Context, *, pins_fallback: str | None = None) -> RepoCache:
    from repocache.cache import RepoCache
    from repocache.settings import parse_bytes

    args = context.args
    max_bytes: int | str | None = args.max_bytes
    if max_bytes is None:
        from_env = os.environ.get("REPOCACHE_MAX_BYTES", "").strip()
        if from_env:
            max_bytes = parse_bytes("REPOCACHE_MAX_BYTES", from_env, allow_none=False)
    pins = args.pins or os.environ.get("REPOCACHE_PINS") or pins_fallback or None
    cold_store = args.cold_store or os.environ.get("REPOCACHE_COLD_STORE") or None
    cold_publish = args.cold_publish or os.environ.get("REPOCACHE_COLD_PUBLISH", "").strip() or "off"
    return RepoCache(
        args.root,
        max_bytes=max_bytes,
        pins=pins,
        fetch_ttl=args.fetch_ttl,
        cold_store=cold_store,
        progress=context.bar,
        cold_publish=cold_publish,
    )


def _refuse_missing_path(cache: RepoCache, url: str) -> None:
    """A local path that does not exist (and was never cached) is a typing error, not a failing upstream."""
    from repocache.keys import normalize_url

    parsed = normalize_url(url)
    if parsed.is_local and not os.path.exists(parsed.fetch_url) and cache.info(url) is None:
        raise InvalidURLError(
            url, f"it is read as a local path, and {parsed.fetch_url} does not exist; give a URL or an existing path"
        )


def _cmd_get(context: _Context) -> int:
    with _open_cache(context) as cache:
        _refuse_missing_path(cache, context.args.url)
        entry = cache.ensure(context.args.url)
        if not entry.path.is_dir():
            # ensure() enforces the budget after releasing its hold, so a clone larger than the budget is gone
            # again; never print a path that does not exist.
            if cache.max_bytes is not None or cache.min_free_bytes:
                raise BudgetError(entry.url, entry.size_bytes, cache.max_bytes or 0)
            raise RepoCacheError(f"{entry.url} was evicted by another process as soon as it was fetched")
    if context.args.json:
        context.emit_json(_entry_json(entry))
    else:
        context.emit(str(entry.path))
    return EXIT_OK


def _cmd_ls(context: _Context) -> int:
    with _open_cache(context) as cache:
        entries = cache.entries()
        root = cache.root
        if context.args.json and cache.has_cold_store:
            context.emit_json(_with_cold_store(entries, cache.cold_entries(), cache))
            return EXIT_OK
    if context.args.json:
        context.emit_json([_entry_json(entry) for entry in entries])
        return EXIT_OK
    if not entries:
        context.note(f"no repositories cached in {root}")
        return EXIT_OK
    now = time.time()
    rows = [("URL", "SIZE", "LAST USED", "PINNED", "COLD")]
    rows += [
        (e.url, _human_bytes(e.size_bytes), _ago(e.last_used, now), _yes_no(e.pinned), _yes_no(e.in_cold_store))
        for e in entries
    ]
    context.emit(_table(rows))
    return EXIT_OK


def _cmd_evict(context: _Context) -> int:
    from repocache.keys import normalize_url

    url = normalize_url(context.args.url).url
    force = bool(context.args.force)
    with _open_cache(context) as cache:
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


def _cmd_enforce(context: _Context) -> int:
    with _open_cache(context) as cache:
        if cache.max_bytes is None and cache.min_free_bytes == 0:
            context.note("no budget is set (--max-bytes or REPOCACHE_MAX_BYTES): nothing to enforce")
            return EXIT_OK
        evicted = cache.enforce()
        stats = cache.stats()
    for entry in evicted:
        context.emit(entry.url)
    freed = sum(entry.size_bytes for entry in evicted)
    context.note(
        f"evicted {len(evicted)} repositories ({_human_bytes(freed)}); "
        f"{_human_bytes(stats.bytes_used)} used of {_human_bytes(stats.bytes_limit)}"
    )
    return EXIT_OK


def _cmd_warm(context: _Context) -> int:
    from repocache.pins import Pins

    pin_file: str | None = context.args.pin_file
    with _open_cache(context, pins_fallback=pin_file) as cache:
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
                entry = cache.ensure(url)
            except RepoCacheError as exc:
                context.error(_describe(exc))
                failures.append(exit_code_for(exc))
                continue
            context.emit(f"warmed {entry.url} ({_human_bytes(entry.size_bytes)})")
    if failures:
        context.note(f"{len(failures)} of {len(urls)} repositories were not warmed")
        return failures[0]
    return EXIT_OK


def _stats_lines(stats: Stats, root: Path) -> list[tuple[str, str]]:
    return [
        ("root", str(root)),
        ("entries", str(stats.entries)),
        ("bytes used", f"{_human_bytes(stats.bytes_used)} ({stats.bytes_used} bytes)"),
        (
            "budget",
            "unlimited"
            if stats.bytes_limit is None
            else f"{_human_bytes(stats.bytes_limit)} ({stats.bytes_limit} bytes)",
        ),
        ("hits", str(stats.hits)),
        ("misses", str(stats.misses)),
        ("clones", str(stats.clones)),
        ("fetches", str(stats.fetches)),
        ("fetch errors", str(stats.fetch_errors)),
        ("restores", str(stats.restores)),
        ("evictions", str(stats.evictions)),
    ]


def _cmd_stats(context: _Context) -> int:
    with _open_cache(context) as cache:
        stats = cache.stats()
        root = cache.root
    if context.args.json:
        context.emit_json({**dataclasses.asdict(stats), "root": str(root)})
    else:
        lines = _stats_lines(stats, root)
        width = max(len(name) for name, _value in lines)
        context.emit("\n".join(f"{name.ljust(width)}  {value}" for name, value in lines))
    return EXIT_OK


def _cmd_verify(context: _Context) -> int:
    repair = bool(context.args.repair)
    with _open_cache(context) as cache:
        problems = cache.verify(repair=repair)
        root = cache.root
    unrepaired = [problem for problem in problems if not problem.repaired]
    if context.args.json:
        context.emit_json([_problem_json(problem) for problem in problems])
    elif problems:
        rows = [("KIND", "KEY", "STATUS", "DETAIL")]
        rows += [(p.kind, p.key, "repaired" if p.repaired else "found", p.detail) for p in problems]
        context.emit(_table(rows))
    if not problems:
        context.note(f"no problems found in {root}")
    elif unrepaired:
        hint = "" if repair else "; run `repocache verify --repair` to fix them"
        context.note(f"{len(unrepaired)} of {len(problems)} problems not repaired{hint}")
    else:
        context.note(f"repaired {len(problems)} problems")
    return EXIT_NOT_DONE if unrepaired else EXIT_OK


def _each_url(context: _Context, action: Callable[[RepoCache, str], str | None]) -> int:
    """Run ``action`` on every URL argument; returns the exit code of the first failure (0 when none failed).

    ``action`` returns the line to print, or None when the operation did not happen (it has said why).
    """
    failures: list[int] = []
    with _open_cache(context) as cache:
        for url in context.args.urls:
            try:
                line = action(cache, url)
            except RepoCacheError as exc:
                context.error(_describe(exc))
                failures.append(exit_code_for(exc))
                continue
            if line is None:
                failures.append(EXIT_NOT_DONE)
            else:
                context.emit(line)
    return failures[0] if failures else EXIT_OK


def _cmd_refresh(context: _Context) -> int:
    return _each_url(context, lambda cache, url: cache.refresh(url).url)


def _cmd_stale(context: _Context) -> int:
    from repocache.keys import normalize_url

    def mark(cache: RepoCache, url: str) -> str | None:
        normalized = normalize_url(url).url
        if cache.mark_stale(url):
            return normalized
        context.error(f"{normalized} was not marked stale: it is not in the cache")
        return None

    return _each_url(context, mark)


def _manifest_json(manifest: Manifest) -> dict[str, Any]:
    return dataclasses.asdict(manifest)


def _with_cold_store(entries: list[Entry], manifests: list[Manifest], cache: RepoCache) -> list[dict[str, Any]]:
    """``ls --json`` with a cold store: each entry with its artifact (``cold``, or null), then the repositories
    that are only in the store (``path`` null, ``size_bytes`` the mirror's size from the manifest)."""
    by_key = {manifest.key: manifest for manifest in manifests}
    listed = []
    for entry in entries:
        data = _entry_json(entry)
        manifest = by_key.pop(entry.key, None)
        data["cold"] = None if manifest is None else _manifest_json(manifest)
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
                    "cold": _manifest_json(manifest),
                }
            )
    return listed


def _require_cold_store(cache: RepoCache) -> None:
    if not cache.has_cold_store:
        raise ConfigError("this command needs a cold store: give --cold-store URL or set REPOCACHE_COLD_STORE")


def _cmd_publish(context: _Context) -> int:
    manifests = []
    with _open_cache(context) as cache:
        _require_cold_store(cache)
        for url in context.args.urls:
            manifest = cache.publish(url)
            manifests.append(manifest)
            if not context.args.json:
                context.emit(
                    f"published {manifest.url} ({_human_bytes(manifest.size_bytes)}, {manifest.ref_count} refs)"
                )
    if context.args.json:
        context.emit_json([_manifest_json(manifest) for manifest in manifests])
    return EXIT_OK


def _cmd_cold(context: _Context) -> int:
    command = getattr(context.args, "cold_command", None)
    if command is None:
        raise ConfigError("cold needs a command: ls or prune (see repocache cold --help)")
    with _open_cache(context) as cache:
        _require_cold_store(cache)
        if command == "ls":
            manifests = cache.cold_entries()
        else:
            manifests = cache.prune_cold(older_than=context.args.older_than, keep_bytes=context.args.keep_bytes)
    if command == "prune":
        for manifest in manifests:
            context.emit(manifest.url)
        freed = sum(manifest.size_bytes for manifest in manifests)
        context.note(f"pruned {len(manifests)} artifacts ({_human_bytes(freed)})")
        return EXIT_OK
    if context.args.json:
        context.emit_json([_manifest_json(manifest) for manifest in manifests])
        return EXIT_OK
    if not manifests:
        context.note("the cold store holds no artifacts")
        return EXIT_OK
    now = time.time()
    rows = [("URL", "SIZE", "MIRROR", "CREATED", "REFS", "COMPRESSION")]
    rows += [
        (
            m.url,
            _human_bytes(m.size_bytes),
            _human_bytes(m.mirror_bytes),
            _ago(m.created, now),
            str(m.ref_count),
            m.compression,
        )
        for m in manifests
    ]
    context.emit(_table(rows))
    return EXIT_OK


def _cmd_maintain(context: _Context) -> int:
    with _open_cache(context) as cache:
        reports = cache.maintain(context.args.url, prune=bool(context.args.prune))
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
                f"{_human_bytes(r.size_before)} -> {_human_bytes(r.size_after)}",
                f"{r.seconds:.2f}",
                _human_bytes(r.peak_rss_bytes),
            )
            for r in reports
        ]
        context.emit(_table(rows))
    else:
        context.note("nothing to maintain" if context.args.url is None else f"{context.args.url} is not cached")
    failed = [r for r in reports if r.skipped is not None and r.skipped.startswith("failed")]
    return EXIT_NOT_DONE if failed else EXIT_OK


_COMMANDS: dict[str, Callable[[_Context], int]] = {
    "get": _cmd_get,
    "ls": _cmd_ls,
    "evict": _cmd_evict,
    "enforce": _cmd_enforce,
    "warm": _cmd_warm,
    "stats": _cmd_stats,
    "verify": _cmd_verify,
    "refresh": _cmd_refresh,
    "stale": _cmd_stale,
    "publish": _cmd_publish,
    "cold": _cmd_cold,
    "maintain": _cmd_maintain,
}


# -- entry point --------------------------------------------------------------------------------------------------


def main(argv: list[str] | None = None) -> int:
    """Run the ``repocache`` command.

    Args:
        argv: the arguments after the program name; ``sys.argv[1:]`` when None.

    Returns:
        The exit code (see the module docstring); usable as a console script's return value.
    """
    parser = build_parser()
    try:
        args = parser.parse_args(argv)
    except SystemExit as exc:  # --help, --version and usage errors: argparse has already printed
        return exc.code if isinstance(exc.code, int) else (EXIT_OK if exc.code is None else EXIT_USAGE)
    if args.command is None:
        parser.print_usage(sys.stderr)
        print("repocache: error: a command is required (see repocache --help)", file=sys.stderr)
        return EXIT_USAGE

    err = sys.stderr
    bar = _ProgressBar(err) if not args.quiet and _is_terminal(err) else None
    context = _Context(args=args, out=sys.stdout, err=err, bar=bar)
    handler = _Handler(err, bar)
    saved = (_logger.level, _logger.propagate)
    _logger.addHandler(handler)
    _logger.propagate = False
    _logger.setLevel(_log_level(args.quiet, args.verbose))
    try:
        with warnings.catch_warnings():
            # The library logs the same event as a warning record; the logger's line is the one to show.
            warnings.filterwarnings("ignore", message="serving a stale copy", category=RuntimeWarning)
            return _COMMANDS[args.command](context)
    except BrokenPipeError:
        # Keep the interpreter from complaining again when it flushes stdout at exit.
        with contextlib.suppress(OSError, ValueError, AttributeError):
            os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return EXIT_PIPE
    except KeyboardInterrupt:
        context.clear()
        print("repocache: interrupted", file=err)
        return EXIT_INTERRUPTED
    except Exception as exc:
        context.clear()
        if args.verbose:
            traceback.print_exc(file=err)
        context.error(_describe(exc))
        return exit_code_for(exc)
    finally:
        context.clear()
        _logger.removeHandler(handler)
        _logger.setLevel(saved[0])
        _logger.propagate = saved[1]


def _log_level(quiet: bool, verbose: int) -> int:
    if verbose:
        return logging.INFO if verbose == 1 else logging.DEBUG
    return logging.ERROR if quiet else logging.WARNING


def _is_terminal(stream: TextIO) -> bool:
    try:
        return stream.isatty()
    except (AttributeError, ValueError):
        return False
