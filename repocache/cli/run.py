"""``main``: parse the command line, set up output and logging, run the command's handler, map errors to exit codes."""

from __future__ import annotations

import argparse
import contextlib
import logging
import os
import sys
import traceback
import warnings

from repocache.cli.commands import find
from repocache.cli.exits import EXIT_INTERRUPTED, EXIT_OK, EXIT_PIPE, EXIT_USAGE, describe, exit_code_for
from repocache.cli.output import Context, LogHandler, ProgressBar, is_terminal
from repocache.cli.parser import build_parser, command_dest
from repocache.cli.spec import Command
from repocache.termination import EXIT_TERMINATED, Terminated, terminate_as_interrupt

_logger = logging.getLogger("repocache")


def main(argv: list[str] | None = None) -> int:
    """Run the ``repocache`` command.

    Args:
        argv: the arguments after the program name; ``sys.argv[1:]`` when None.

    Returns:
        The exit code (see the ``repocache.cli`` docstring); usable as a console script's return value.
    """
    parser = build_parser()
    argv = sys.argv[1:] if argv is None else list(argv)
    try:
        args = parser.parse_args(argv)
    except SystemExit as exc:  # --help, --version and usage errors: argparse has already printed
        return exc.code if isinstance(exc.code, int) else (EXIT_OK if exc.code is None else EXIT_USAGE)
    if args.command is None:
        parser.print_usage(sys.stderr)
        print("repocache: error: a command is required (see repocache --help)", file=sys.stderr)
        return EXIT_USAGE

    command = _chosen(args)
    if command.passthrough and "--" in argv:
        args.argv = argv[argv.index("--") + 1 :]
    err = sys.stderr
    bar = ProgressBar(err) if not args.quiet and is_terminal(err) else None
    context = Context(args=args, out=sys.stdout, err=err, bar=bar)
    handler = LogHandler(err, bar)
    saved = (_logger.level, _logger.propagate)
    _logger.addHandler(handler)
    _logger.propagate = False
    _logger.setLevel(_log_level(args.quiet, args.verbose))
    try:
        with terminate_as_interrupt(), warnings.catch_warnings():
            # The library logs the same event as a warning record; the logger's line is the one to show.
            warnings.filterwarnings("ignore", message="serving a stale copy", category=RuntimeWarning)
            return command.handler(context)
    except BrokenPipeError:
        # Keep the interpreter from complaining again when it flushes stdout at exit.
        with contextlib.suppress(OSError, ValueError, AttributeError):
            os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return EXIT_PIPE
    except Terminated:
        context.clear()
        print("repocache: terminated (SIGTERM)", file=err)
        return EXIT_TERMINATED
    except KeyboardInterrupt:
        context.clear()
        print("repocache: interrupted", file=err)
        return EXIT_INTERRUPTED
    except Exception as exc:
        context.clear()
        if args.verbose:
            traceback.print_exc(file=err)
        context.error(describe(exc))
        return exit_code_for(exc)
    finally:
        context.clear()
        _logger.removeHandler(handler)
        _logger.setLevel(saved[0])
        _logger.propagate = saved[1]


def _chosen(args: argparse.Namespace) -> Command:
    """The command (or subcommand) the parsed arguments name."""
    names = [args.command]
    command = find(names)
    while command.subcommands:
        name = getattr(args, command_dest(tuple(names)), None)
        if name is None:
            break
        names.append(name)
        command = find(names)
    return command


def _log_level(quiet: bool, verbose: int) -> int:
    if verbose:
        return logging.INFO if verbose == 1 else logging.DEBUG
    return logging.ERROR if quiet else logging.WARNING
