"""The package is ready to publish: SPDX license, one version, project URLs, install lines that work, and an sdist
and wheel that build, pass ``twine check`` and install into a fresh virtualenv (``.ci/package``)."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path
from typing import Any

import pytest

import repocache

ROOT = Path(__file__).resolve().parents[1]

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover - the suite runs on 3.11 in CI
    tomllib = pytest.importorskip("tomli")


def _project() -> dict[str, Any]:
    project: dict[str, Any] = tomllib.loads((ROOT / "pyproject.toml").read_text(encoding="utf-8"))["project"]
    return project


def _pyproject() -> dict[str, Any]:
    data: dict[str, Any] = tomllib.loads((ROOT / "pyproject.toml").read_text(encoding="utf-8"))
    return data


def test_the_license_is_an_spdx_expression_and_its_text_ships() -> None:
    """The table form (``{text = "MIT"}``) is deprecated by setuptools and stops building after 2027-02-18."""
    project = _project()
    assert project["license"] == "MIT"
    assert project["license-files"] == ["LICENSE"]
    assert "MIT License" in (ROOT / "LICENSE").read_text(encoding="utf-8")
    requires = _pyproject()["build-system"]["requires"]
    assert any(re.fullmatch(r"setuptools>=(7[7-9]|[89]\d)(\.\d+)*", r) for r in requires), requires


def test_the_version_is_written_once_in_the_package() -> None:
    project = _project()
    assert "version" not in project and "version" in project["dynamic"]
    assert _pyproject()["tool"]["setuptools"]["dynamic"]["version"] == {"attr": "repocache.__version__"}
    assert re.fullmatch(r"\d+\.\d+\.\d+", repocache.__version__)


def test_the_project_has_urls_and_classifiers_and_the_docs_link_the_same_repository() -> None:
    project = _project()
    urls = project["urls"]
    assert {"Homepage", "Repository", "Documentation", "Changelog"} <= set(urls)
    mkdocs = (ROOT / "mkdocs.yml").read_text(encoding="utf-8")
    assert f"repo_url: {urls['Repository']}\n" in mkdocs
    classifiers = project["classifiers"]
    assert "Typing :: Typed" in classifiers
    assert not any(c.startswith("License ::") for c in classifiers), "the SPDX license replaces license classifiers"
    minor = int(project["requires-python"].removeprefix(">=3."))
    assert f"Programming Language :: Python :: 3.{minor}" in classifiers


def _install_commands() -> list[tuple[str, str]]:
    pages = [ROOT / "README.md", *sorted((ROOT / "docs").rglob("*.md"))]
    found = []
    for page in pages:
        for command in re.findall(r"pip install [^`\n#;&)]+", page.read_text(encoding="utf-8")):
            found.append((page.name, command.strip()))
    return found


def test_every_install_line_in_the_docs_installs_something_that_exists() -> None:
    """Not on PyPI: a checkout (``.``, ``'.[extra]'``, ``-e``) or the repository's git URL."""
    repository = _project()["urls"]["Repository"]
    commands = _install_commands()
    assert len(commands) >= 4, commands
    bad = []
    for page, command in commands:
        for argument in command.removeprefix("pip install ").split():
            argument = argument.strip("'\"")
            if argument in {"-q", "-e", "@", "."} or argument.startswith(".["):
                continue
            if argument.startswith("git-repocache") and f"@ git+{repository}" in command:
                continue
            if argument == f"git+{repository}":
                continue
            bad.append((page, command))
    assert bad == []


@pytest.mark.slow
@pytest.mark.timeout(900)
def test_the_sdist_and_wheel_build_pass_twine_and_the_wheel_installs_and_runs(tmp_path: Path) -> None:
    """``.ci/package`` on a copy of the tree (what git tracks and what is new), so the checkout stays clean."""
    if shutil.which("git") is None:  # pragma: no cover
        pytest.skip("needs git to list the tree")
    listed = subprocess.run(
        ["git", "ls-files", "-co", "--exclude-standard", "-z"], cwd=ROOT, capture_output=True, check=True
    ).stdout.decode()
    tree = tmp_path / "tree"
    for name in filter(None, listed.split("\0")):
        source = ROOT / name
        if source.is_file():
            (tree / name).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(source, tree / name)
    dist = tmp_path / "dist"
    home = tmp_path / "home"  # pip's cache and config stay out of the session's HOME
    env = dict(os.environ, HOME=str(home), XDG_CACHE_HOME=str(home / ".cache"), XDG_CONFIG_HOME=str(home / ".config"))
    result = subprocess.run(
        ["bash", str(tree / ".ci" / "package"), str(dist)], capture_output=True, text=True, timeout=850, env=env
    )
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    assert "the wheel installs and runs" in result.stdout
    (wheel,) = dist.glob("*.whl")
    assert wheel.name == f"git_repocache-{repocache.__version__}-py3-none-any.whl"
    with zipfile.ZipFile(wheel) as archive:
        metadata = archive.read(f"git_repocache-{repocache.__version__}.dist-info/METADATA").decode()
        names = archive.namelist()
    assert "License-Expression: MIT" in metadata
    assert f"Version: {repocache.__version__}" in metadata
    assert "Project-URL: Repository, " in metadata
    assert "repocache/py.typed" in names
    assert f"git_repocache-{repocache.__version__}.dist-info/licenses/LICENSE" in names
    assert not any(name.startswith("tests/") for name in names)
