"""``repocache run URL [--ref REF] -- COMMAND [ARGS...]``: a command run in a temporary worktree of a ref.

The shell's ``with cache.worktree(url, ref) as tree:``: the worktree is made (cloning or fetching as ``get``
does), the command runs in it with its own standard streams, and the worktree is removed when it ends, whatever
the way: its exit code is passed through, a command killed by a signal gives 128 + the signal (as a shell reports
it), and Ctrl-C or SIGTERM sent to ``repocache`` is passed on to the command, which is waited for before the
worktree goes.
"""

from __future__ import annotations

import os
import signal
import subprocess
from collections.abc import Sequence
from pathlib import Path

from repocache.cli.options import call_filter, call_max_age, open_cache
from repocache.cli.output import Context
from repocache.errors import ConfigError
from repocache.termination import Terminated

WORKTREE_ENV = "REPOCACHE_WORKTREE"
"""The environment variable giving the command its worktree's path (also its working directory)."""
COMMIT_ENV = "REPOCACHE_COMMIT"
"""The environment variable giving the command the hex id of the commit checked out."""

EXIT_NOT_FOUND = 127
"""The exit code when the command cannot be found (as a shell reports it)."""
EXIT_NOT_EXECUTABLE = 126
"""The exit code when the command exists but cannot be run (as a shell reports it)."""

_GRACE_SECONDS = 10.0  # how long a command may take to stop after the signal passed on to it


def exit_status(returncode: int) -> int:
    """A child's exit status as a shell reports it: its code, or 128 + the signal that killed it."""
    return 128 - returncode if returncode < 0 else returncode


def run_in_worktree(context: Context) -> int:
    """``run URL [--ref REF] [--max-age SECONDS] -- COMMAND [ARGS...]``."""
    argv: list[str] = list(context.args.argv or ())
    if not argv:
        raise ConfigError("run needs a command: repocache run URL [--ref REF] -- COMMAND [ARGS...]")
    with (
        open_cache(context) as cache,
        cache.worktree(
            context.args.url, context.args.ref, max_age=call_max_age(context.args), filter=call_filter(context.args)
        ) as tree,
    ):
        context.clear()  # the clone's progress line, before the command writes
        environment = {**os.environ, WORKTREE_ENV: str(tree.path), COMMIT_ENV: tree.commit}
        return _run(context, argv, tree.path, environment)


def _run(context: Context, argv: Sequence[str], cwd: Path, environment: dict[str, str]) -> int:
    """Run the command to its end in ``cwd``; Ctrl-C and SIGTERM are passed on to it and it is waited for."""
    try:
        process = subprocess.Popen(list(argv), cwd=cwd, env=environment)
    except FileNotFoundError:
        context.error(f"command not found: {argv[0]!r}")
        return EXIT_NOT_FOUND
    except PermissionError as exc:
        context.error(f"cannot run {argv[0]!r}: {exc.strerror or exc}")
        return EXIT_NOT_EXECUTABLE
    try:
        return exit_status(process.wait())
    except Terminated:
        return _stop(process, signal.SIGTERM)
    except KeyboardInterrupt:
        return _stop(process, signal.SIGINT)
    finally:
        if process.poll() is None:  # a second interrupt while stopping it: no grace left
            process.kill()
            process.wait()


def _stop(process: subprocess.Popen[bytes], signum: signal.Signals) -> int:
    """Pass ``signum`` on to the command, give it time to stop, kill it after that; its exit status.

    Ctrl-C typed on the terminal has already reached the command (it is in the terminal's foreground process
    group with us): a second SIGINT would tell many programs to stop at once instead of cleaning up.
    """
    if process.poll() is None and not (signum == signal.SIGINT and _in_foreground_of_a_terminal()):
        process.send_signal(signum)
    try:
        return exit_status(process.wait(timeout=_GRACE_SECONDS))
    except subprocess.TimeoutExpired:
        process.kill()
        return exit_status(process.wait())


def _in_foreground_of_a_terminal() -> bool:
    """Whether this process belongs to the foreground process group of the terminal on its standard input."""
    try:
        return os.isatty(0) and os.tcgetpgrp(0) == os.getpgrp()
    except OSError:
        return False
