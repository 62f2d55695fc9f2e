"""The command's exit codes, and the one mapping from an exception to its code and its one-line message."""

from __future__ import annotations

from repocache.errors import (
    BudgetError,
    ConfigError,
    GitError,
    InvalidRefError,
    InvalidURLError,
    LockTimeoutError,
    MissingObjectError,
    RefNotFoundError,
    RepoCacheError,
    WebhookError,
)
from repocache.termination import EXIT_TERMINATED, Terminated

EXIT_OK = 0
EXIT_NOT_DONE = 1
EXIT_USAGE = 2
EXIT_GIT = 3
EXIT_BUDGET = 4
EXIT_LOCK_TIMEOUT = 5
EXIT_ERROR = 6
EXIT_INTERRUPTED = 130
EXIT_PIPE = 141


def exit_code_for(error: BaseException) -> int:
    """The documented exit code for an exception raised while running a command.

    Args:
        error: the exception.

    Returns:
        2 for invalid input, 3 for git failures, 4 for budget, 5 for lock timeouts, 130 for an interrupt,
        143 for SIGTERM, 141 for a closed standard output, 6 for anything else.
    """
    if isinstance(error, Terminated):
        return EXIT_TERMINATED
    if isinstance(error, KeyboardInterrupt):
        return EXIT_INTERRUPTED
    if isinstance(error, BrokenPipeError):
        return EXIT_PIPE
    if isinstance(error, (InvalidURLError, ConfigError, InvalidRefError, RefNotFoundError, WebhookError)):
        return EXIT_USAGE
    if isinstance(error, (GitError, MissingObjectError)):
        return EXIT_GIT
    if isinstance(error, BudgetError):
        return EXIT_BUDGET
    if isinstance(error, LockTimeoutError):
        return EXIT_LOCK_TIMEOUT
    return EXIT_ERROR


def describe(error: BaseException) -> str:
    """The message printed after ``repocache: error:`` for an exception."""
    if isinstance(error, (RepoCacheError, OSError)):
        return str(error) or type(error).__name__
    return f"unexpected {type(error).__name__}: {error} (run with -v for the traceback)"
