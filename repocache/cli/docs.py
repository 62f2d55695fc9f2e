"""``python -m repocache.cli.docs [PAGE] [--check]``: rewrite the command reference section of ``docs/cli.md``.

Run from the repository root. The section between ``<!-- cli-reference:start -->`` and ``<!-- cli-reference:end -->``
is replaced by ``repocache.cli.reference_markdown()``; ``--check`` writes nothing and exits 1 if the page is out of
date.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from repocache.cli.reference import updated


def main(argv: list[str] | None = None) -> int:
    """Rewrite (or with ``--check``, check) the reference section of a CLI page; returns the exit code."""
    parser = argparse.ArgumentParser(prog="python -m repocache.cli.docs", description=__doc__.splitlines()[0])
    parser.add_argument("page", nargs="?", default="docs/cli.md", help="the page (default: docs/cli.md)")
    parser.add_argument("--check", action="store_true", help="do not write; exit 1 if the page is out of date")
    args = parser.parse_args(argv)
    path = Path(args.page)
    page = path.read_text(encoding="utf-8")
    new = updated(page)
    if new == page:
        return 0
    if args.check:
        print(f"{path} is out of date: run python -m repocache.cli.docs", file=sys.stderr)
        return 1
    path.write_text(new, encoding="utf-8")
    print(f"rewrote the reference section of {path}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
