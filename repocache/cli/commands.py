"""The command table: every command of ``repocache``, in ``--help`` order.

A command is written here once; ``parser.py`` builds the argument parser and ``--help`` from these rows,
``run.py`` dispatches to their handlers, and ``docs.py`` writes the reference section of ``docs/cli.md``.
"""

from __future__ import annotations

from repocache.cli import cold, maintain, repos, serve, worktree
from repocache.cli.options import filter_choice, max_age, seconds, size
from repocache.cli.spec import Command, argument

_URLS = argument("urls", metavar="URL", nargs="+", help="repository URL or local path")
_MAX_AGE = argument(
    "--max-age",
    metavar="SECONDS",
    type=max_age,
    default=None,
    help="for this command instead of --fetch-ttl: the age a copy may have (0: fetch now; any: never fetch)",
)

_FILTER = argument(
    "--filter",
    metavar="FILTER",
    type=filter_choice,
    default=None,
    help="the mirror's filter for this command: blob:none (blob-less), tree:0 (tree-less) or none (full); "
    "default: the pins' or the cache's (see Partial mirrors)",
)

COMMANDS: tuple[Command, ...] = (
    Command(
        "get",
        "clone or refresh a repository now and print the path of its bare mirror",
        repos.get,
        (
            argument("url", metavar="URL", help="repository URL or local path (use -- before a URL starting with -)"),
            argument(
                "--json",
                "--print-entry",
                dest="json",
                action="store_true",
                help="print the cache entry as JSON instead",
            ),
            _MAX_AGE,
            _FILTER,
        ),
        details='`cd "$(repocache get URL)"` works in scripts: only the path goes to standard output.',
    ),
    Command(
        "ls",
        "list cached repositories, most recently used first",
        repos.ls,
        (argument("--json", action="store_true", help="print a JSON list of entries"),),
        details="With a cold store, `--json` gives each entry its artifact (`cold`, or null) and also lists the "
        "repositories only the store holds (`path` null).",
    ),
    Command(
        "evict",
        "remove a repository from disk; exit 1 if it was not evicted",
        repos.evict,
        (
            argument("url", metavar="URL", help="repository URL or local path"),
            argument("--force", action="store_true", help="evict it even if it is pinned"),
        ),
        details="It is not evicted when it is absent, pinned (without `--force`) or in use by another process.",
    ),
    Command(
        "enforce", "evict least recently used repositories until the budget holds; print their URLs", repos.enforce
    ),
    Command(
        "warm",
        "clone or refresh every pinned repository (glob patterns are skipped)",
        repos.warm,
        (
            argument(
                "pin_file",
                metavar="PINS.yaml",
                nargs="?",
                help="pin file to warm (default: --pins / $REPOCACHE_PINS); also used as the cache's pins if none "
                "is set",
            ),
            _MAX_AGE,
        ),
    ),
    Command(
        "stats",
        "print the counters and the bytes used",
        repos.stats,
        (argument("--json", action="store_true", help="print a JSON object"),),
        details="The counters are shared by every process using the root.",
    ),
    Command(
        "refresh",
        "fetch repositories now, whatever their age; print their URLs",
        repos.refresh,
        (_URLS,),
        details="A repository not cached is cloned. See [Freshness](freshness.md).",
    ),
    Command(
        "stale",
        "mark repositories stale: their next hit fetches first; exit 1 if one is not cached",
        repos.stale,
        (_URLS,),
        details="The mark is shared: the next hit in any process using the root fetches first. Prints each URL.",
    ),
    Command(
        "run",
        "run a command in a temporary worktree of a ref, remove the worktree, exit with the command's code",
        worktree.run_in_worktree,
        (
            argument("url", metavar="URL", help="repository URL or local path"),
            argument("--ref", metavar="REF", default="HEAD", help="branch, tag or commit to check out (default: HEAD)"),
            _MAX_AGE,
            _FILTER,
            argument(
                "argv",
                metavar="COMMAND",
                nargs="*",
                help="the command and its arguments, after -- (run in the worktree, which $REPOCACHE_WORKTREE names)",
            ),
        ),
        details="`repocache run URL --ref v1 -- make test` is `with cache.worktree(URL, 'v1')` for the shell: the "
        "command runs with the worktree as its directory and `$REPOCACHE_WORKTREE` and `$REPOCACHE_COMMIT` set, "
        "and the worktree is removed when it ends, also on Ctrl-C or SIGTERM (passed on to the command). "
        "The exit code is the command's (128 + the signal if it was killed; 127 if it is not found); "
        "repocache's own failures exit with their usual codes.",
        passthrough=True,
    ),
    Command(
        "verify",
        "compare the index with the disk; exit 1 if problems remain",
        maintain.verify,
        (
            argument("--repair", action="store_true", help="fix the problems found"),
            argument("--json", action="store_true", help="print a JSON list of problems"),
        ),
        details="See [Operations](operations.md#verify).",
    ),
    Command(
        "publish",
        "clone or refresh repositories and upload their mirrors to the cold store",
        cold.publish,
        (
            argument("urls", metavar="URL", nargs="+", help="repository URLs or local paths"),
            argument("--json", action="store_true", help="print a JSON list of the stored manifests"),
        ),
        details="Needs a cold store (`--cold-store` or `$REPOCACHE_COLD_STORE`); other hosts then restore the "
        "mirror instead of cloning it. See [Cold storage and fleets](cold-storage.md).",
    ),
    Command(
        "cold",
        "inspect and prune the cold store (--cold-store or $REPOCACHE_COLD_STORE)",
        cold.cold,
        subcommands=(
            Command(
                "ls",
                "list the artifacts in the cold store, newest first",
                cold.cold_ls,
                (argument("--json", action="store_true", help="print a JSON list of manifests"),),
            ),
            Command(
                "prune",
                "delete old artifacts from the cold store; print their URLs",
                cold.cold_prune,
                (
                    argument(
                        "--older-than",
                        metavar="SECONDS",
                        type=seconds,
                        default=None,
                        help="delete artifacts older than this (default: none by age)",
                    ),
                    argument(
                        "--keep-bytes",
                        metavar="SIZE",
                        type=size,
                        default=None,
                        help='then delete the oldest while the artifacts total more than this, e.g. "50GB"',
                    ),
                ),
                details="See [Retention](cold-storage.md#retention).",
            ),
        ),
        details="`cold` alone is a usage error (exit 2).",
        subcommands_title="cold store commands",
    ),
    Command(
        "maintain",
        "repack, pack refs and write the commit-graph of one mirror or of all of them",
        maintain.maintain,
        (
            argument("url", metavar="URL", nargs="?", help="repository URL or local path (default: every one)"),
            argument(
                "--prune",
                action="store_true",
                help="also drop unreachable objects older than the grace period (only mirrors nobody holds)",
            ),
            argument("--json", action="store_true", help="print a JSON list of reports"),
        ),
        details="Exit 1 if the repository is not cached or maintenance failed for a repository. "
        "See [Maintenance](operations.md#maintenance).",
    ),
    Command(
        "serve",
        "serve the cache to plain git clients over smart HTTP until SIGTERM or Ctrl-C",
        serve.serve,
        (
            argument(
                "--allow",
                metavar="PREFIX=URL",
                action="append",
                required=True,
                help="serve /PREFIX/<path>.git from upstream URL/<path>.git, e.g. github.com=https://github.com/ "
                "(repeatable; nothing else is served)",
            ),
            argument(
                "--listen",
                metavar="HOST:PORT",
                type=serve.listen,
                default="127.0.0.1:8080",
                help="address to listen on (default: 127.0.0.1:8080; :8080 for every address)",
            ),
            argument(
                "--max-packs",
                metavar="N",
                type=serve.count,
                default=4,
                help="pack answers generated at once (default: 4)",
            ),
            argument(
                "--max-queue",
                metavar="N",
                type=serve.count,
                default=64,
                help="pack answers waiting for a slot; beyond, 503 with Retry-After (default: 64)",
            ),
            argument(
                "--retry-after",
                metavar="SECONDS",
                type=seconds,
                default=5.0,
                help="what a 503 tells clients to wait (default: 5)",
            ),
            argument(
                "--graceful-timeout",
                metavar="SECONDS",
                type=seconds,
                default=30.0,
                help="on SIGTERM, how long requests in flight may finish (default: 30)",
            ),
            argument(
                "--head-timeout",
                metavar="SECONDS",
                type=seconds,
                default=30.0,
                help="how long a request head may take to arrive (default: 30)",
            ),
            argument(
                "--body-timeout",
                metavar="SECONDS",
                type=seconds,
                default=60.0,
                help="how long a request body may pause (default: 60)",
            ),
            argument(
                "--auto-ttl",
                action="store_true",
                help='use the adaptive schedule (fetch_ttl="auto") instead of --fetch-ttl',
            ),
            argument(
                "--refresh",
                metavar="MODE",
                choices=("foreground", "background"),
                default=None,
                help="background: a due repository is served at once while it is fetched (default: foreground)",
            ),
            argument(
                "--trust-clients",
                action="store_true",
                help="serve every client without checking its credentials against upstream (only behind a network "
                "boundary: anyone who reaches the port reads what the cache can fetch; default: check)",
            ),
            argument(
                "--trust",
                metavar="PREFIX",
                action="append",
                default=None,
                help="serve the clients of this allowed PREFIX without checking their credentials (repeatable; "
                "required for git:// and ssh upstreams, which carry no client credential)",
            ),
            argument(
                "--auth-ttl",
                metavar="SECONDS",
                type=seconds,
                default=60.0,
                help="how long upstream's yes to a client's credentials is reused, in memory (default: 60; 0: ask "
                "upstream on every request)",
            ),
            argument(
                "--auth-refused-ttl",
                metavar="SECONDS",
                type=seconds,
                default=5.0,
                help="how long upstream's refusal of a client's credentials is reused (default: 5; 0: never)",
            ),
            argument(
                "--auth-timeout",
                metavar="SECONDS",
                type=seconds,
                default=10.0,
                help="how long a check of a client's credentials may take before it is answered 502 (default: 10)",
            ),
            argument(
                "--upstream-credential-file",
                metavar="PREFIX=FILE",
                action="append",
                default=None,
                help="the cache's own clones and fetches of an http(s) PREFIX authenticate as the USER:PASSWORD in "
                "FILE (repeatable; never a client's credential; default: anonymous)",
            ),
            argument(
                "--mirror-filter",
                metavar="[PREFIX=]FILTER",
                action="append",
                default=None,
                help="keep blob-less mirrors (blob:none; none: full) for every prefix or for PREFIX; a request "
                "filtered blob:none or tree:0 is served from them, any other from a full mirror "
                "(repeatable; default: full mirrors)",
            ),
            argument(
                "--webhook-secret-file",
                metavar="FILE",
                default=None,
                help="accept push webhooks at /-/webhook with the secret in FILE (default: $REPOCACHE_WEBHOOK_SECRET, "
                "else no webhook route)",
            ),
        ),
        details="Needs the `serve` extra (`pip install '.[serve]'` from a checkout). Clients use it unchanged with "
        '`git config --global url."http://HOST:PORT/github.com/".insteadOf "https://github.com/"`. '
        "See [The git server](serve.md).",
    ),
)
"""Every command, in ``--help`` order."""


def find(names: list[str]) -> Command:
    """The command named by ``names`` (``["cold", "ls"]``), as far as they go."""
    command = next(command for command in COMMANDS if command.name == names[0])
    for name in names[1:]:
        command = command.subcommand(name)
    return command
