"""The suite's own rules, as its configuration states them: a warning raised in a test fails that test."""

from __future__ import annotations

from pathlib import Path

import pytest

pytest_plugins = ["pytester"]
ROOT = Path(__file__).resolve().parents[1]


def test_a_warning_in_a_test_fails_it_under_the_projects_configuration(pytester: pytest.Pytester) -> None:
    pytester.makepyfile(
        test_warns="import warnings\n\n\ndef test_warns():\n    warnings.warn(DeprecationWarning('old API'))\n",
        test_quiet="def test_quiet():\n    pass\n",
    )
    result = pytester.runpytest(
        "-c", str(ROOT / "pyproject.toml"), "--rootdir", str(pytester.path), "test_warns.py", "test_quiet.py"
    )
    result.assert_outcomes(failed=1, passed=1)
    result.stdout.fnmatch_lines(["*DeprecationWarning: old API*"])


def test_the_project_configures_pytest_asyncio_so_it_does_not_warn(pytestconfig: pytest.Config) -> None:
    assert pytestconfig.getini("asyncio_default_fixture_loop_scope") == "function"
    assert pytestconfig.getini("filterwarnings")[0] == "error"
