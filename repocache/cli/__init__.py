"""The ``repocache`` command: fill, inspect and maintain a cache from the shell.

Usage (global options go before or after the command)::

    repocache [--root DIR] [--max-bytes SIZE] [--pins FILE] [--cold-store URL] [--cold-publish MODE]
              [--fetch-ttl SECONDS|auto] [--lock-timeout SECONDS] [--on-fetch-error MODE] [-q] [-v] COMMAND ...

The commands and their arguments are one table, ``repocache.cli.commands.COMMANDS``; ``repocache --help`` and
``docs/cli.md`` are built from it.

Settings come from the options, else the environment: ``REPOCACHE_DIR`` (the root; else the platform's user cache
directory), ``REPOCACHE_MAX_BYTES`` (the budget, e.g. ``20GB``), ``REPOCACHE_PINS`` (a never-evict YAML file),
``REPOCACHE_COLD_STORE`` (the cold store), ``REPOCACHE_COLD_PUBLISH`` (``off``, ``clone`` or ``always``),
``REPOCACHE_FETCH_TTL`` (seconds or ``auto``), ``REPOCACHE_LOCK_TIMEOUT`` (seconds) and ``REPOCACHE_ON_FETCH_ERROR``
(``warn`` or ``raise``). A command's ``--help`` shows its own arguments; ``repocache --help`` the global options.

When standard error is a terminal (and ``--quiet`` is not given), clones and fetches draw a one-line progress bar
on it; otherwise nothing but results goes to standard output and nothing but messages to standard error.

Exit codes (scripts can rely on them)::

    0    success
    1    the operation did not happen: not evicted (absent, pinned or in use), problems found by verify and left
         unrepaired
    2    usage error or invalid input: bad option, invalid URL, invalid setting or pin file
    3    git failed: the clone or fetch of a repository failed, or an object a partial mirror left out was read
    4    the repository does not fit in the byte budget
    5    timed out waiting for another worker's lock
    6    any other error (cold storage, file system, unexpected)
    130  interrupted (Ctrl-C)
    143  terminated (SIGTERM, as sent by ``timeout``, ``docker stop`` and systemd): git stopped, nothing left
    141  standard output was closed early (for example piped into ``head``)

``warm``, ``refresh`` and ``stale`` exit with the code of their first failure after trying every repository
(``stale``, ``maintain`` and ``evict`` of a repository that is not cached exit 1). Errors are printed as one line,
``repocache: error: <message>``, on standard error; ``-v`` adds the traceback.
"""

from repocache.cli.exits import (
    EXIT_BUDGET,
    EXIT_ERROR,
    EXIT_GIT,
    EXIT_INTERRUPTED,
    EXIT_LOCK_TIMEOUT,
    EXIT_NOT_DONE,
    EXIT_OK,
    EXIT_PIPE,
    EXIT_USAGE,
    exit_code_for,
)
from repocache.cli.output import ProgressBar
from repocache.cli.parser import build_parser
from repocache.cli.reference import reference_markdown
from repocache.cli.run import main

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
    "reference_markdown",
]

_ProgressBar = ProgressBar  # its name when the command was one module (tests draw it)
