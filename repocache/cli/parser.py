"""The argument parser of ``repocache``, built from the command table and the global options."""

from __future__ import annotations

import argparse

from repocache.cli.commands import COMMANDS
from repocache.cli.options import add_global_options
from repocache.cli.spec import Command


def _environment_lines() -> str:
    from repocache.cli.options import ENVIRONMENT

    width = max(len(name) for name in ENVIRONMENT.values())
    return "".join(f"  {name.ljust(width)}  when {flag} is not given\n" for flag, name in ENVIRONMENT.items())


EPILOG = f"""\
environment:
{_environment_lines()}
exit codes:
  0    success
  1    the operation did not happen (not cached, not evicted; verify found problems it did not repair)
  2    usage error or invalid input (bad option, invalid URL, setting or pin file)
  3    git failed (clone or fetch)
  4    the repository does not fit in the byte budget
  5    timed out waiting for another worker's lock
  6    any other error (cold storage, file system, unexpected)
  130  interrupted
  143  terminated (SIGTERM)
  141  standard output closed early
"""

COMMAND_EPILOG = "global options (--root, --fetch-ttl, ...), environment, exit codes: repocache --help"
"""The last line of every command's ``--help``: where the global options are described."""

_FORMATTER = argparse.RawDescriptionHelpFormatter


def command_dest(path: tuple[str, ...]) -> str:
    """Where the parser stores the name of the subcommand given after ``path`` (``command``, ``cold_command``)."""
    return "_".join([*path, "command"])


def build_parser() -> argparse.ArgumentParser:
    """The argument parser of the ``repocache`` command."""
    from repocache import __version__

    parser = argparse.ArgumentParser(
        prog="repocache",
        description="An on-disk LRU cache of git mirrors shared safely by threads and processes.",
        epilog=EPILOG,
        formatter_class=_FORMATTER,
    )
    parser.add_argument("--version", action="version", version=f"repocache {__version__}")
    add_global_options(parser, in_command=False)
    _add_commands(parser, COMMANDS, (), title="commands", metavar="COMMAND")
    return parser


def _add_commands(
    parser: argparse.ArgumentParser, commands: tuple[Command, ...], path: tuple[str, ...], *, title: str, metavar: str
) -> None:
    subparsers = parser.add_subparsers(dest=command_dest(path), metavar=metavar, title=title)
    for command in commands:
        # A command's help shows its own arguments; the global options are accepted after it too (scripts put
        # them there) but described once, by ``repocache --help``.
        sub = subparsers.add_parser(
            command.name,
            help=command.summary,
            description=command.summary,
            epilog=COMMAND_EPILOG,
            formatter_class=_FORMATTER,
        )
        add_global_options(sub, in_command=True)
        for argument in command.arguments:
            sub.add_argument(*argument.flags, help=argument.help, **argument.settings)
        if command.subcommands:
            _add_commands(
                sub,
                command.subcommands,
                (*path, command.name),
                title=command.subcommands_title or f"{command.name} commands",
                metavar=f"{command.name.upper()}_COMMAND",
            )
