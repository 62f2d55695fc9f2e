"""The README's examples run as written, and what it says about the command line matches the command line."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

from repocache import cli
from repocache.testing import UpstreamFactory

ROOT = Path(__file__).resolve().parents[1]
README = (ROOT / "README.md").read_text(encoding="utf-8")


def _use_example() -> str:
    section = README.split("\n## Use\n", 1)[1]
    match = re.search(r"```python\n(.*?)```", section, re.DOTALL)
    assert match is not None, "the Use section has no python example"
    return match.group(1)


def test_the_readme_example_runs_as_written_from_a_checkout(tmp_path: Path, upstreams: UpstreamFactory) -> None:
    """Only the GitHub URLs are swapped for local upstreams (no network in tests); files it names must exist."""
    code = _use_example()
    for url in sorted(set(re.findall(r'"((?:https://|git@)github\.com[^"]+)"', code))):
        code = code.replace(f'"{url}"', repr(upstreams.create(url.rsplit("/", 1)[-1].removesuffix(".git")).url))
    assert "github.com" not in code
    env = dict(os.environ, REPOCACHE_DIR=str(tmp_path / "cache"), PYTHONPATH=str(ROOT))
    result = subprocess.run(
        [sys.executable, "-c", code], cwd=ROOT, env=env, capture_output=True, text=True, timeout=120
    )
    assert result.returncode == 0, result.stderr
    assert "Stats(" in result.stdout


def test_the_readme_lists_every_exit_code_of_the_command_line() -> None:
    documented = {int(code) for code in re.findall(r"^\s+(\d+)\s", cli.__doc__ or "", re.MULTILINE)}
    assert {0, 1, 2, 3, 4, 5, 6, 130, cli.EXIT_PIPE} <= documented
    listed = README.split("Exit codes:", 1)[1].split("`repocache --help`", 1)[0]
    assert {int(code) for code in re.findall(r"\b(\d+) [a-z]", listed)} == documented, listed
