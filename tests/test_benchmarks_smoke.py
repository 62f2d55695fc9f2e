"""The benchmark suite runs end to end on tiny repositories (the full benchmark is not part of the tests)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def test_benchmarks_smoke_prints_the_table(tmp_path: Path) -> None:
    env = {key: value for key, value in os.environ.items() if not key.startswith(("GIT_", "REPOCACHE_"))}
    result = subprocess.run(
        [sys.executable, "-m", "benchmarks", "--smoke", "--sizes", "small", "--output", str(tmp_path / "out")],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=110,
        check=False,
    )
    assert result.returncode == 0, result.stderr[-4000:]
    table = result.stdout
    assert "| case | size | repocache | measured against | baseline | ratio | target | met |" in table
    for case in (
        "hit within fetch_ttl (no network)",
        "hit with fetch, nothing new",
        "hit with fetch, 100 new commits",
        "miss (clone): time",
        "miss (clone): peak RSS of the process tree",
        "16 processes, same missing repo",
        "no-cache baseline",
        "restore from cold storage",
        "restore from cold storage (S3 endpoint on loopback)",
        "worktree: create and remove",
        "eviction of 10 repos (enforce)",
        "after 20 fetch-on-hits, maintenance at its defaults: blob reads",
    ):
        assert f"| {case}" in table, f"{case!r} missing from:\n{table}"
    assert (tmp_path / "out" / "results.md").read_text() in table
    assert (tmp_path / "out" / "results.json").exists()
