"""The reference section of ``docs/cli.md``, written from the command table and the global options.

``python -m repocache.cli.docs`` puts it between the markers in the page; ``tests/test_cli_docs.py`` checks it is there.
"""

from __future__ import annotations

from repocache.cli.commands import COMMANDS
from repocache.cli.options import ENVIRONMENT, GLOBAL_OPTIONS
from repocache.cli.spec import Argument, Command

START = "<!-- cli-reference:start -->"
END = "<!-- cli-reference:end -->"


def _sentence(text: str) -> str:
    text = text[:1].upper() + text[1:]
    return text if text.endswith(".") else text + "."


def _cell(text: str) -> str:
    return text.replace("|", "\\|")


def _arguments_table(arguments: tuple[Argument, ...]) -> list[str]:
    lines = ["| argument | meaning |", "| --- | --- |"]
    lines += [f"| {argument.label()} | {_cell(argument.help)} |" for argument in arguments]
    return lines


def _command_section(command: Command, prefix: str) -> list[str]:
    synopsis = f"{prefix}{command.synopsis()}"
    lines = [f"### `{synopsis}`", "", _sentence(command.summary)]
    if command.details:
        lines[-1] += " " + command.details
    if command.arguments:
        lines += ["", *_arguments_table(command.arguments)]
    if command.subcommands:
        names = ", ".join(f"`{prefix}{command.name} {sub.name}`" for sub in command.subcommands)
        lines += ["", f"Its commands: {names}."]
    lines.append("")
    for sub in command.subcommands:
        lines += _command_section(sub, f"{prefix}{command.name} ")
    return lines


def _all(commands: tuple[Command, ...], prefix: str = "") -> list[tuple[str, Command]]:
    rows: list[tuple[str, Command]] = []
    for command in commands:
        if not command.subcommands:
            rows.append((prefix, command))
        rows += _all(command.subcommands, f"{prefix}{command.name} ")
    return rows


def reference_markdown() -> str:
    """The Markdown of the command reference: the commands, each with its arguments, and the global options."""
    lines = [
        "<!-- Written by `python -m repocache.cli.docs` from repocache/cli/commands.py and repocache/cli/options.py;"
        " edit those, then run it. -->",
        "",
        "## Commands",
        "",
        "| command | what it does |",
        "| --- | --- |",
    ]
    lines += [f"| `{prefix}{command.synopsis()}` | {_cell(command.summary)} |" for prefix, command in _all(COMMANDS)]
    lines.append("")
    for command in COMMANDS:
        lines += _command_section(command, "")
    lines += [
        "## Global options",
        "",
        "Global options go before or after the command. Those with an environment variable read it when they are "
        "not given.",
        "",
        "| option | environment | meaning |",
        "| --- | --- | --- |",
    ]
    for option in GLOBAL_OPTIONS:
        environment = ENVIRONMENT.get(option.flags[0])
        lines.append(
            f"| {option.label()} | {'' if environment is None else f'`{environment}`'} | {_cell(option.help)} |"
        )
    return "\n".join(lines) + "\n"


def updated(page: str) -> str:
    """``page`` with the text between the markers replaced by :func:`reference_markdown`.

    Raises:
        ValueError: when the page lacks either marker.
    """
    if START not in page or END not in page:
        raise ValueError(f"the page needs the markers {START} and {END}")
    before, rest = page.split(START, 1)
    _old, after = rest.split(END, 1)
    return f"{before}{START}\n{reference_markdown()}{END}{after}"
