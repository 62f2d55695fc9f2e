"""Every Python example in the README, the docs pages and the docstrings runs as written, against local upstreams.

Each ```` ```python ```` block is run in its own interpreter, in an empty temporary directory (not the repository
root), with ``HOME``, the XDG directories and ``REPOCACHE_DIR`` inside the test's temporary directory. The only
changes made to a block are the addresses no test may reach: GitHub URLs become real repositories served over
smart HTTP on 127.0.0.1, ``s3://`` stores become local directory stores, ``/var/cache/repos`` a temporary
directory, and the ports of servers the examples start free ports on 127.0.0.1.

A block says how it runs with an HTML comment on the line before its fence (hidden in the rendered page):

* no comment: a complete program;
* ``<!-- example: MODES -->``, comma-separated: ``with-cache`` (a fragment of its page: ``repocache``,
  ``RepoCache``, ``cache``, ``url``, ``urls``, ``build`` and ``registry`` are defined first), ``async`` (the
  body of a coroutine, run by ``asyncio.run`` with ``repocache`` imported), ``serves`` (starts a server that
  runs until stopped: it passes once the server accepts connections), ``pytest`` (a test module, run by pytest
  with the plugin), ``conftest`` (a ``conftest.py``, run with the ``pytest`` block before it);
* ``<!-- not-run: REASON -->``: not run; :func:`test_blocks_not_run_say_why` lists them.
"""

from __future__ import annotations

import ast
import inspect
import os
import re
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from repocache.testing import SmartHTTPServer, UpstreamFactory

ROOT = Path(__file__).resolve().parents[1]
_FENCE = re.compile(r"^(?P<indent>[ \t]*)```python[ \t]*\n(?P<code>.*?)^(?P=indent)```[ \t]*$", re.M | re.S)
_MARKER = re.compile(r"<!--\s*(?P<kind>example|not-run):\s*(?P<value>.*?)\s*-->")
_MODES = {"with-cache", "async", "serves", "pytest", "conftest"}
_GITHUB = re.compile(r"(?:https://github\.com/|git@github\.com:)(?P<slug>[\w.-]+/[\w.-]+?)(?:\.git)?(?=[\"'/*\s]|$)")
# What a repository named in the examples must hold for them to pass (a tag they check out, a file they read).
_CONTENT: dict[str, tuple[dict[str, str], list[str]]] = {
    "pallets/click": ({"CHANGES.rst": "Version 8.1.7\n"}, ["8.1.7"]),
}


@dataclass(frozen=True)
class Block:
    """One python block: where it is, its code, how it runs (or why it does not)."""

    source: str
    line: int
    code: str
    modes: frozenset[str]
    not_run: str | None

    @property
    def name(self) -> str:
        return f"{self.source}:{self.line}"


def _blocks_in(text: str, source: str, first_line: int = 1) -> Iterator[Block]:
    for match in _FENCE.finditer(text):
        line = first_line + text.count("\n", 0, match.start())
        before = [row.strip() for row in text[: match.start()].splitlines() if row.strip()]
        marker = _MARKER.fullmatch(before[-1]) if before else None
        modes: frozenset[str] = frozenset()
        not_run = None
        if marker and marker["kind"] == "not-run":
            not_run = marker["value"]
        elif marker:
            modes = frozenset(mode.strip() for mode in marker["value"].split(","))
            assert modes <= _MODES, f"{source}:{line}: unknown example modes {sorted(modes - _MODES)}; use {_MODES}"
        indent = match["indent"]
        code = "".join(row.removeprefix(indent) for row in match["code"].splitlines(keepends=True))
        yield Block(source, line, code, modes, not_run)


def _docstring_blocks(path: Path) -> Iterator[Block]:
    tree = ast.parse(path.read_text(encoding="utf-8"))
    for node in ast.walk(tree):
        if isinstance(node, ast.Module | ast.ClassDef | ast.FunctionDef | ast.AsyncFunctionDef):
            docstring = ast.get_docstring(node, clean=False)
            if docstring and "```python" in docstring:
                line = node.body[0].lineno if node.body else 1
                yield from _blocks_in(inspect.cleandoc(docstring), str(path.relative_to(ROOT)), line)


def _all_blocks() -> list[Block]:
    pages = [ROOT / "README.md", *sorted(p for p in (ROOT / "docs").rglob("*.md") if "_ext" not in p.parts)]
    blocks = [block for page in pages for block in _blocks_in(page.read_text(encoding="utf-8"), page.name)]
    for module in sorted((ROOT / "repocache").rglob("*.py")):
        blocks.extend(_docstring_blocks(module))
    return blocks


BLOCKS = _all_blocks()
RUN = [block for block in BLOCKS if block.not_run is None and "conftest" not in block.modes]


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


class Examples:
    """Runs blocks with the addresses swapped for local ones."""

    def __init__(self, tmp_path: Path, served: UpstreamFactory, http: SmartHTTPServer) -> None:
        self.tmp_path = tmp_path
        self.served = served
        self.http = http
        self.urls: dict[str, str] = {}
        self.work = tmp_path / "work"
        self.work.mkdir()
        home = tmp_path / "home"
        self.env = dict(
            os.environ,
            HOME=str(home),
            XDG_CACHE_HOME=str(home / ".cache"),
            XDG_CONFIG_HOME=str(home / ".config"),
            REPOCACHE_DIR=str(tmp_path / "cache"),
            REPOCACHE_WEBHOOK_SECRET="example-secret",
            PYTHONPATH=str(ROOT),
        )
        self.env.pop("REPOCACHE_TEST_DIR", None)
        self.port = _free_port()

    def url(self, slug: str) -> str:
        if slug not in self.urls:
            files, tags = _CONTENT.get(slug, ({}, []))
            upstream = self.served.create(slug.replace("/", "-"), files=files)
            for tag in tags:
                upstream.tag(tag)
            self.urls[slug] = self.http.url_for(upstream)
        return self.urls[slug]

    def localize(self, code: str) -> str:
        code = _GITHUB.sub(lambda match: self.url(match["slug"]), code)
        code = code.replace("s3://my-bucket/repocache", (self.tmp_path / "store").as_uri())
        code = code.replace('"/var/cache/repos"', repr(str(self.tmp_path / "repos")))
        code = re.sub(r'"0\.0\.0\.0", 8080\b', f'"127.0.0.1", {self.port}', code)
        code = re.sub(r"\b9464\b", str(self.port), code)
        assert "github.com" not in code and "s3://" not in code, code
        return code

    def program(self, block: Block) -> str:
        code = block.code
        if "async" in block.modes:
            body = "".join(f"    {row}" if row.strip() else row for row in code.splitlines(keepends=True))
            code = f"import asyncio\n\nimport repocache\n\n\nasync def main() -> None:\n{body}\n\nasyncio.run(main())\n"
        if "with-cache" in block.modes:
            code = self._prelude() + code
        return self.localize(code)

    def _prelude(self) -> str:
        return (
            "import prometheus_client\n"
            "import repocache\n"
            "from repocache import RepoCache\n"
            "cache = RepoCache()\n"
            'url = "https://github.com/pallets/click"\n'
            'urls = [url, "https://github.com/pallets/flask"]\n'
            "registry = prometheus_client.CollectorRegistry()\n"
            "def build(path, *args):\n"
            "    assert path.is_dir(), path\n"
        )

    def run(self, block: Block) -> None:
        if "pytest" in block.modes:
            self._run_pytest(block)
            return
        script = self.work / "example.py"
        script.write_text(self.program(block), encoding="utf-8")
        command = [sys.executable, str(script)]
        if "serves" in block.modes:
            self._run_server(block, command)
            return
        result = subprocess.run(command, cwd=self.work, env=self.env, capture_output=True, text=True, timeout=120)
        assert result.returncode == 0, f"{block.name} failed:\n{script.read_text()}\n{result.stderr}"

    def _run_pytest(self, block: Block) -> None:
        (self.work / "test_example.py").write_text(self.program(block), encoding="utf-8")
        conftest = _conftest_after(block)
        if conftest is not None:
            (self.work / "conftest.py").write_text(self.program(conftest), encoding="utf-8")
        result = subprocess.run(
            [sys.executable, "-m", "pytest", "-q", "-p", "no:randomly", "-p", "no:cacheprovider", "test_example.py"],
            cwd=self.work,
            env=self.env,
            capture_output=True,
            text=True,
            timeout=120,
        )
        assert result.returncode == 0, f"{block.name} failed:\n{result.stdout}\n{result.stderr}"
        assert " passed" in result.stdout, result.stdout

    def _run_server(self, block: Block, command: list[str]) -> None:
        process = subprocess.Popen(
            command, cwd=self.work, env=self.env, stderr=subprocess.PIPE, text=True, start_new_session=True
        )
        try:
            deadline = time.monotonic() + 60
            while process.poll() is None and time.monotonic() < deadline:
                try:
                    socket.create_connection(("127.0.0.1", self.port), timeout=1).close()
                    return
                except OSError:
                    time.sleep(0.1)
            _, stderr = process.communicate(timeout=5) if process.poll() is not None else ("", "still starting")
            pytest.fail(f"{block.name} never served on 127.0.0.1:{self.port}:\n{stderr}")
        finally:
            if process.poll() is None:
                os.killpg(process.pid, signal.SIGTERM)
            process.communicate(timeout=30)


def _conftest_after(block: Block) -> Block | None:
    later = [b for b in BLOCKS if b.source == block.source and b.line > block.line]
    following = next((b for b in later if b.not_run is None and b.modes & {"pytest", "conftest"}), None)
    return following if following is not None and "conftest" in following.modes else None


@pytest.fixture
def examples(tmp_path: Path, served: UpstreamFactory, http: SmartHTTPServer) -> Examples:
    """A runner with its own home, cache directory and upstreams."""
    return Examples(tmp_path, served, http)


@pytest.mark.timeout(300)
@pytest.mark.parametrize("block", RUN, ids=[block.name for block in RUN])
def test_example_runs_as_written(block: Block, examples: Examples) -> None:
    examples.run(block)


def test_every_page_with_python_blocks_is_found() -> None:
    """A change to the fence pattern that finds nothing would make every example pass."""
    sources = {block.source for block in BLOCKS}
    assert {"README.md", "index.md", "workers.md", "freshness.md", "pytest-plugin.md"} <= sources, sources
    assert {"repocache/webhooks.py", "repocache/metrics.py", "repocache/aio.py"} <= sources, sources


def test_blocks_not_run_say_why() -> None:
    not_run = {block.name: block.not_run for block in BLOCKS if block.not_run is not None}
    assert all(not_run.values()), f"a not-run marker without a reason: {not_run}"
    assert len(not_run) <= 3, f"most examples must run; not run: {not_run}"


def test_a_conftest_block_follows_a_pytest_block() -> None:
    for block in BLOCKS:
        if "conftest" in block.modes:
            earlier = [b for b in BLOCKS if b.source == block.source and b.line < block.line and "pytest" in b.modes]
            assert earlier, f"{block.name}: a conftest block needs a pytest block before it"
            assert _conftest_after(earlier[-1]) == block
