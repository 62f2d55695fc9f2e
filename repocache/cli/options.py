"""The global options, their argument types, and where a cache's settings come from (options, else environment).

``cache_options`` is the one place that maps the parsed options and the ``REPOCACHE_*`` environment variables to
``RepoCache`` settings; ``ENVIRONMENT`` names the variable read for each option (the docs table is built from it).
"""

from __future__ import annotations

import argparse
from typing import TYPE_CHECKING, Any

from repocache.cli.spec import Argument, argument
from repocache.errors import ConfigError

if TYPE_CHECKING:
    from repocache.cache import RepoCache
    from repocache.cli.output import Context
    from repocache.refresh import MaxAge


# -- argument types -----------------------------------------------------------------------------------------------


def directory(value: str) -> str:
    """A directory argument: any non-blank string."""
    if not value.strip():
        raise argparse.ArgumentTypeError("must not be empty")
    return value


def size(value: str) -> str:
    """A size argument (``"20GB"``), checked here and parsed by the cache."""
    from repocache.settings import parse_bytes

    try:
        parse_bytes("--max-bytes", value, allow_none=False)
    except ConfigError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from exc
    return value


def seconds(value: str) -> float:
    """A duration argument: finite seconds >= 0."""
    try:
        number = float(value)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{value!r} is not a number of seconds") from None
    if not number >= 0 or number == float("inf"):
        raise argparse.ArgumentTypeError(f"{value!r} is out of range; expected finite seconds >= 0")
    return number


def ttl(value: str) -> float | str:
    """A ``--fetch-ttl`` argument: finite seconds >= 0, or ``auto`` (each repository's own interval)."""
    if value.strip().lower() == "auto":
        return "auto"
    try:
        return seconds(value)
    except argparse.ArgumentTypeError:
        raise argparse.ArgumentTypeError(f"{value!r} is not accepted; expected finite seconds >= 0 or auto") from None


def max_age(value: str) -> float | str:
    """A ``--max-age`` argument: finite seconds >= 0 (0: fetch now), or ``any`` (serve the cached copy, any age)."""
    if value.strip().lower() == "any":
        return "any"
    try:
        return seconds(value)
    except argparse.ArgumentTypeError:
        raise argparse.ArgumentTypeError(f"{value!r} is not accepted; expected finite seconds >= 0 or any") from None


def filter_choice(value: str) -> str:
    """A ``--filter`` argument: ``blob:none``, ``tree:0``, or ``none`` (also ``full``) for a full mirror."""
    from repocache.keys import FILTERS

    chosen = value.strip()
    if chosen.lower() in ("none", "full"):
        return "none"
    if chosen in FILTERS:
        return chosen
    raise argparse.ArgumentTypeError(f"{value!r} is not accepted; expected blob:none, tree:0 or none (a full mirror)")


def call_filter(args: argparse.Namespace) -> Any:
    """The ``filter=`` of the command's call: ``--filter`` (``none``: None, a full mirror), else what the pins or
    the cache configure (:data:`repocache.partial.USE_CONFIGURED`)."""
    from repocache.partial import USE_CONFIGURED

    value = getattr(args, "filter", None)
    if value is None:
        return USE_CONFIGURED
    return None if value == "none" else value


# -- the global options -------------------------------------------------------------------------------------------

GLOBAL_OPTIONS: tuple[Argument, ...] = (
    argument(
        "--root",
        metavar="DIR",
        type=directory,
        default=None,
        help="cache directory (default: $REPOCACHE_DIR, else the platform's user cache directory)",
    ),
    argument(
        "--max-bytes",
        metavar="SIZE",
        type=size,
        default=None,
        help='byte budget for all mirrors, e.g. "500MiB" or "20GB" (default: $REPOCACHE_MAX_BYTES, else no limit)',
    ),
    argument(
        "--pins",
        metavar="FILE",
        default=None,
        help="never-evict YAML file (default: $REPOCACHE_PINS, else nothing is pinned)",
    ),
    argument(
        "--cold-store",
        metavar="URL",
        default=None,
        help="cold storage for evicted and published repositories: file:///dir, a directory, or s3://bucket/prefix "
        "(default: $REPOCACHE_COLD_STORE, else none)",
    ),
    argument(
        "--cold-publish",
        metavar="MODE",
        choices=("off", "clone", "always"),
        default=None,
        help="upload mirrors to the cold store for other hosts: off, clone (after each clone) or always (also "
        "after fetches once the stored copy is an hour old) (default: $REPOCACHE_COLD_PUBLISH, else off)",
    ),
    argument(
        "--fetch-ttl",
        metavar="SECONDS",
        type=ttl,
        default=None,
        help="do not contact upstream for a repository fetched less than this long ago; auto: each repository's "
        "own interval, from how often it changes (default: $REPOCACHE_FETCH_TTL, else 0)",
    ),
    argument(
        "--lock-timeout",
        metavar="SECONDS",
        type=seconds,
        default=None,
        help="give up (exit 5) after waiting this long for another worker's clone, fetch or eviction "
        "(default: $REPOCACHE_LOCK_TIMEOUT, else 600)",
    ),
    argument(
        "--on-fetch-error",
        metavar="MODE",
        choices=("warn", "raise"),
        default=None,
        help="when a fetch fails: warn (serve the cached copy with a warning; a refused credential still exits 3) "
        "or raise (exit 3) "
        "(default: $REPOCACHE_ON_FETCH_ERROR, else warn)",
    ),
    argument("-q", "--quiet", action="store_true", default=False, help="no progress bars, notes or warnings"),
    argument(
        "-v",
        "--verbose",
        action="count",
        default=0,
        help="log what the cache does to stderr (-vv for debug); tracebacks with errors",
    ),
)
"""Options accepted before and after the command; after it they only override what was given before."""


def add_global_options(parser: argparse.ArgumentParser, *, in_command: bool) -> None:
    """Add the global options to ``parser``.

    A command's parser accepts them too, hidden from its ``--help`` (``repocache --help`` describes them), and
    leaves the ones not given to the top-level parser.
    """
    if not in_command:
        group = parser.add_argument_group("global options")
        for option in GLOBAL_OPTIONS:
            group.add_argument(*option.flags, help=option.help, **option.settings)
        return
    for option in GLOBAL_OPTIONS:
        settings = {**option.settings, "default": argparse.SUPPRESS}
        parser.add_argument(*option.flags, help=argparse.SUPPRESS, **settings)


# -- from options and environment to a cache ----------------------------------------------------------------------


def _environment() -> dict[str, str]:
    from repocache.settings import OPTIONS

    return {f"--{row.name.replace('_', '-')}": row.env for row in OPTIONS if row.env is not None}


ENVIRONMENT: dict[str, str] = {"--root": "REPOCACHE_DIR", **_environment()}
"""The environment variable used for each global option that is not given (from the settings' declaration)."""


def cache_options(args: argparse.Namespace, *, pins_fallback: str | None = None) -> dict[str, Any]:
    """The ``RepoCache`` keywords for the parsed options: each option, else its environment variable, else the default.

    The environment is read and validated by the settings' declaration
    (:func:`repocache.settings.environment_defaults`), so a variable accepts exactly what its keyword accepts and a
    bad value is a ``ConfigError`` naming the variable.

    Args:
        args: the parsed command line.
        pins_fallback: the pin file to use when neither ``--pins`` nor ``$REPOCACHE_PINS`` names one (``warm``).
    """
    from repocache.settings import environment_defaults

    options: dict[str, Any] = environment_defaults()
    given = {
        "root": args.root,
        "max_bytes": args.max_bytes,
        "pins": args.pins,
        "fetch_ttl": args.fetch_ttl,
        "lock_timeout": args.lock_timeout,
        "on_fetch_error": args.on_fetch_error,
        "cold_store": args.cold_store,
        "cold_publish": args.cold_publish,
    }
    options.update({name: value for name, value in given.items() if value is not None and value != ""})
    options.setdefault("root", None)
    if options.get("pins") is None and pins_fallback is not None:
        options["pins"] = pins_fallback
    return options


def call_max_age(args: argparse.Namespace) -> MaxAge:
    """The ``max_age=`` of the command's call: ``--max-age`` (``any``: None), else the cache's TTL applies."""
    from repocache.refresh import USE_TTL

    value = getattr(args, "max_age", None)
    if value is None:
        return USE_TTL
    return None if value == "any" else value


def open_cache(context: Context, *, pins_fallback: str | None = None) -> RepoCache:
    """The cache the command works on, reporting progress to the context's bar."""
    from repocache.cache import RepoCache

    options = cache_options(context.args, pins_fallback=pins_fallback)
    root = options.pop("root")
    if options.get("on_fetch_error", "warn") == "warn":
        # A refused credential is an error on the command line, stale copy or not: exit 3, never a silent 0.
        options["on_fetch_error"] = "warn_except_auth"
    return RepoCache(root, progress=context.bar, **options)
