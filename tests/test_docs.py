"""The API reference pages name every public object (the strict docs build itself runs in .ci/run)."""

from __future__ import annotations

import re
from pathlib import Path
from types import ModuleType

import pytest

import repocache
import repocache.cold
import repocache.testing

DOCS = Path(__file__).resolve().parent.parent / "docs"


def _documented(page: str) -> set[str]:
    text = (DOCS / "reference" / page).read_text(encoding="utf-8")
    return set(re.findall(r"^::: ([\w.]+)$", text, flags=re.MULTILINE))


@pytest.mark.parametrize(
    ("module", "page"),
    [(repocache, "repocache.md"), (repocache.cold, "cold.md"), (repocache.testing, "testing.md")],
)
def test_every_public_name_has_a_reference_entry(module: ModuleType, page: str) -> None:
    prefix = module.__name__
    names = {f"{prefix}.{name}" for name in module.__all__ if not name.startswith("__")}
    missing = sorted(names - _documented(page))
    assert missing == [], f"add '::: NAME' lines to docs/reference/{page} for: {missing}"
