"""The shape of the command table: a command is a name, a summary, its arguments and its handler.

The parser (``parser.py``), ``--help`` and the reference section of ``docs/cli.md`` (``docs.py``) are all built
from these rows, so a command or an option is written once.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Mapping
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from repocache.cli.output import Context

Handler = Callable[["Context"], int]
"""A command's body: runs it and returns its exit code."""


@dataclasses.dataclass(frozen=True)
class Argument:
    """One argument of a command, as given to ``argparse.ArgumentParser.add_argument``.

    Attributes:
        flags: the option strings (``("--json", "--print-entry")``), or a positional's destination (``("url",)``).
        help: the sentence shown by ``--help`` and in the docs.
        settings: the other keywords of ``add_argument`` (``metavar``, ``nargs``, ``action``, ``type``, ...).
    """

    flags: tuple[str, ...]
    help: str
    settings: Mapping[str, Any] = dataclasses.field(default_factory=dict)

    @property
    def positional(self) -> bool:
        """Whether the argument is positional (its flag does not start with ``-``)."""
        return not self.flags[0].startswith("-")

    def synopsis(self) -> str:
        """How the argument reads in a usage line: ``URL``, ``URL...``, ``[URL]``, ``[--older-than SECONDS]``."""
        metavar = self.settings.get("metavar")
        if self.positional:
            name = str(metavar or self.flags[0])
            forms = {"+": f"{name}...", "*": f"[{name}...]", "?": f"[{name}]"}
            return forms.get(str(self.settings.get("nargs")), name)
        flag = self.flags[0] if metavar is None else f"{self.flags[0]} {metavar}"
        return f"[{flag}]"

    def label(self) -> str:
        """How the docs name the argument: ``URL``, or every flag with its metavar (``--json``, ``--print-entry``)."""
        metavar = self.settings.get("metavar")
        if self.positional:
            return f"`{metavar or self.flags[0]}`"
        suffix = "" if metavar is None else f" {metavar}"
        return ", ".join(f"`{flag}{suffix}`" for flag in self.flags)


def argument(*flags: str, help: str, **settings: Any) -> Argument:
    """An :class:`Argument` written like an ``add_argument`` call."""
    return Argument(flags=flags, help=help, settings=settings)


@dataclasses.dataclass(frozen=True)
class Command:
    """One row of the command table.

    Attributes:
        name: the word typed after ``repocache`` (or after its parent command).
        summary: one line, shown in ``--help`` and as the first sentence in the docs.
        handler: runs the command; for a command with subcommands, runs when none is given.
        arguments: its arguments, in ``--help`` order.
        subcommands: commands typed after this one (``cold ls``).
        details: Markdown added after the summary in the docs only (exit codes, links to the guide).
        subcommands_title: the heading of the subcommands in ``--help`` (default: ``"<name> commands"``).
        passthrough: everything after the first ``--`` is handed over verbatim as ``args.argv`` (``run``), later
            ``--`` included, which argparse would drop.
    """

    name: str
    summary: str
    handler: Handler
    arguments: tuple[Argument, ...] = ()
    subcommands: tuple[Command, ...] = ()
    details: str = ""
    subcommands_title: str = ""
    passthrough: bool = False

    def synopsis(self) -> str:
        """``get URL [--json]``: the name and the arguments, without the global options.

        A passthrough command's last argument is written after ``--`` (``run URL [--ref REF] -- COMMAND...``).
        """
        words = [argument.synopsis() for argument in self.arguments]
        if self.passthrough and self.arguments:
            words[-1] = f"-- {self.arguments[-1].synopsis().strip('[]')}"
        return " ".join([self.name, *words])

    def subcommand(self, name: str) -> Command:
        """The subcommand called ``name``."""
        return next(command for command in self.subcommands if command.name == name)
