"""The built documentation site reads right: no reST left over, no escaped pipes, the repository linked, and no code
block needs sideways scrolling at 1280 px in a real browser (headless Chromium, when the machine has it)."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
REFERENCE_PAGES = ["repocache", "cold", "events", "webhooks", "testing"]
# Run at the load event of a copy of a page; the browser writes the result into the DOM it dumps.
_MEASURE = """<script>
window.addEventListener("load", () => {
  const clipped = [...document.querySelectorAll("pre > code")]
    .filter((code) => code.scrollWidth > code.clientWidth + 1)
    .map((code) => code.textContent.split("\\n").sort((a, b) => b.length - a.length)[0].slice(0, 80));
  document.body.setAttribute("data-clipped", JSON.stringify(clipped));
});
</script>"""


@pytest.fixture(scope="module")
def site(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The site as `mkdocs build --strict` makes it (a few seconds)."""
    target = tmp_path_factory.mktemp("site")
    result = subprocess.run(
        [sys.executable, "-m", "mkdocs", "build", "--strict", "-q", "-d", str(target)],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert result.returncode == 0, result.stderr
    return target


def _pages(site: Path) -> dict[str, str]:
    return {str(page.relative_to(site)): page.read_text(encoding="utf-8") for page in sorted(site.rglob("*.html"))}


@pytest.mark.timeout(300)
def test_no_page_shows_a_literal_double_colon_or_an_escaped_pipe(site: Path) -> None:
    """reST ``Example::`` shows as ``::`` in Markdown, and ``\\|`` inside a table's code span shows its backslash."""
    leftovers = {
        name: sorted(set(re.findall(r".{0,60}(?:::</p>|\\\|).{0,20}", text)))
        for name, text in _pages(site).items()
        if "::</p>" in text or "\\|" in text
    }
    assert leftovers == {}


@pytest.mark.timeout(300)
def test_the_examples_in_reference_pages_are_highlighted_python(site: Path) -> None:
    for page in ["webhooks", "events"]:
        html = (site / "reference" / page / "index.html").read_text(encoding="utf-8")
        assert '<span class="kn">import</span>' in html, f"reference/{page}: no highlighted python example"


@pytest.mark.timeout(300)
def test_every_page_links_the_repository_in_its_header(site: Path) -> None:
    repository = re.search(r'^Repository = "([^"]+)"$', (ROOT / "pyproject.toml").read_text(encoding="utf-8"), re.M)
    assert repository is not None, "pyproject.toml: [project.urls] has no Repository"
    missing = [name for name, text in _pages(site).items() if f'href="{repository[1]}"' not in text]
    assert "index.html" not in missing
    assert missing == [] or all(name.startswith("404") for name in missing), missing


@pytest.mark.timeout(300)
@pytest.mark.skipif(shutil.which("chromium") is None, reason="needs chromium (apt-get install chromium)")
@pytest.mark.parametrize("page", REFERENCE_PAGES)
def test_no_code_block_of_a_reference_page_scrolls_at_1280_px(site: Path, page: str, tmp_path: Path) -> None:
    original = site / "reference" / page / "index.html"
    measured = original.with_name("measured.html")
    measured.write_text(original.read_text(encoding="utf-8").replace("</body>", f"{_MEASURE}</body>"), "utf-8")
    profile = tmp_path / "profile"  # the browser's files stay out of HOME
    env = dict(os.environ, HOME=str(tmp_path), XDG_CACHE_HOME=str(tmp_path / "cache"), XDG_CONFIG_HOME=str(profile))
    result = subprocess.run(
        [
            "chromium",
            "--headless",
            "--no-sandbox",
            "--disable-gpu",
            "--window-size=1280,900",
            "--virtual-time-budget=5000",
            f"--user-data-dir={profile}",
            "--dump-dom",
            measured.as_uri(),
        ],
        capture_output=True,
        text=True,
        timeout=120,
        env=env,
    )
    match = re.search(r'data-clipped="([^"]*)"', result.stdout)
    assert match is not None, f"the page was not measured:\n{result.stderr[-2000:]}"
    assert match[1] == "[]", f"reference/{page}: code blocks scroll sideways: {match[1]}"
