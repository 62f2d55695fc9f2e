"""docs/cli.md cannot drift from the command line: its reference section is written from the command table."""

from __future__ import annotations

import argparse
from pathlib import Path

from repocache.cli import build_parser, reference_markdown
from repocache.cli.docs import main as write_docs
from repocache.cli.reference import END, START

PAGE = Path(__file__).resolve().parents[1] / "docs" / "cli.md"


def _section() -> str:
    text = PAGE.read_text(encoding="utf-8")
    return text.split(START, 1)[1].split(END, 1)[0]


def _subparsers(parser: argparse.ArgumentParser) -> dict[str, argparse.ArgumentParser]:
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            return dict(action.choices)
    return {}


def _walk(parser: argparse.ArgumentParser, path: str = "") -> list[tuple[str, argparse.ArgumentParser]]:
    found = []
    for name, sub in _subparsers(parser).items():
        found.append((f"{path}{name}", sub))
        found += _walk(sub, f"{path}{name} ")
    return found


def test_the_cli_page_holds_exactly_the_reference_written_from_the_command_table() -> None:
    assert _section() == "\n" + reference_markdown(), "docs/cli.md is out of date: run python -m repocache.cli.docs"


def test_the_docs_writer_check_passes_on_the_page_and_fails_on_a_stale_one(tmp_path: Path) -> None:
    assert write_docs(["--check", str(PAGE)]) == 0
    stale = tmp_path / "cli.md"
    stale.write_text(f"intro\n{START}\nold\n{END}\noutro\n", encoding="utf-8")
    assert write_docs(["--check", str(stale)]) == 1
    assert write_docs([str(stale)]) == 0
    assert stale.read_text(encoding="utf-8") == f"intro\n{START}\n{reference_markdown()}{END}\noutro\n"


def test_every_command_and_option_of_the_parser_is_in_the_cli_page() -> None:
    section = _section()
    parser = build_parser()
    commands = _walk(parser)
    assert {"get", "ls", "publish", "cold", "cold ls", "cold prune", "maintain"} <= {name for name, _ in commands}
    for name, sub in commands:
        if not _subparsers(sub):
            assert f"### `{name}" in section, name
        for action in sub._actions:
            for flag in action.option_strings:
                if flag not in ("-h", "--help"):
                    assert f"`{flag}" in section, f"{name} {flag}"
    for action in parser._actions:
        for flag in action.option_strings:
            if flag not in ("-h", "--help", "--version"):
                assert f"`{flag}" in section, flag
