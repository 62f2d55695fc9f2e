"""What the README says about the command line matches the command line (its examples run in test_docs_examples)."""

from __future__ import annotations

import re
from pathlib import Path

from repocache import cli

ROOT = Path(__file__).resolve().parents[1]
README = (ROOT / "README.md").read_text(encoding="utf-8")


def test_the_readme_lists_every_exit_code_of_the_command_line() -> None:
    documented = {int(code) for code in re.findall(r"^\s+(\d+)\s", cli.__doc__ or "", re.MULTILINE)}
    assert {0, 1, 2, 3, 4, 5, 6, 130, cli.EXIT_PIPE} <= documented
    listed = README.split("Exit codes:", 1)[1].split("`repocache --help`", 1)[0]
    assert {int(code) for code in re.findall(r"\b(\d+) [a-z]", listed)} == documented, listed
