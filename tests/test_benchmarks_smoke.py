"""The benchmark suite runs end to end on tiny repositories (the full benchmark is not part of the tests)."""

from __future__ import annotations

import json
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
        timeout=170,
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
        "3 hosts, same missing repo, shared store (local directory)",
        "fresh host's first checkout of a published repo (S3 endpoint)",
        "miss while another host uploads to the store (local directory)",
        "miss while another process of the same host uploads to the store (S3 endpoint)",
        "eviction of 10 repos (enforce)",
        "push to visible: webhook (mark_stale) vs TTL polling",
        "upstream contacts per 1,000 checkouts: adaptive schedule",
        "hit latency with refresh='background' while fetches are in flight",
        "after 20 fetch-on-hits, maintenance at its defaults: blob reads",
    ):
        assert f"| {case}" in table, f"{case!r} missing from:\n{table}"
    assert (tmp_path / "out" / "results.md").read_text() in table
    assert (tmp_path / "out" / "results.json").exists()


def test_pool_benchmark_smoke_prints_the_table() -> None:
    env = {key: value for key, value in os.environ.items() if not key.startswith(("GIT_", "REPOCACHE_"))}
    command = ["--workers", "2", "--checkouts", "3", "--hold", "0", "--scale", "0.02"]
    result = subprocess.run(
        [sys.executable, "-m", "benchmarks.pool", *command],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=110,
        check=False,
    )
    assert result.returncode == 0, result.stderr[-4000:]
    assert "| workers | budget | completed | BudgetErrors | wall | clones |" in result.stdout
    assert "| 2 | tight" in result.stdout and "| 2 | ample" in result.stdout
    assert "| 6/6 | 0 |" in result.stdout, result.stdout


def test_serve_benchmark_quick_prints_every_case(tmp_path: Path) -> None:
    env = {key: value for key, value in os.environ.items() if not key.startswith(("GIT_", "REPOCACHE_"))}
    result = subprocess.run(
        [sys.executable, "-m", "benchmarks.serve", "--quick", "--output", str(tmp_path / "out")],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert result.returncode == 0, result.stderr[-4000:]
    table = result.stdout
    assert "| case | size | repocache serve | measured against | ratio | target | met | notes |" in table
    for case in (
        "warm clone",
        "no-op fetch within fetch_ttl",
        "4 warm identical clones: server CPU",
        "4 warm identical clones: server peak RSS",
        "concurrency: 1 warm clones at once, slowest client",
        "concurrency: 4 warm clones at once, slowest client",
        "4 concurrent cold clones",
    ):
        assert f"| {case} | tiny |" in table, f"{case!r} missing from:\n{table}"
    # The within-TTL fetches never reach upstream, and the cold burst made exactly one upstream clone.
    assert "upstream upload-packs during 1 fetches: 0 |" in table, table
    assert "upstream upload-packs per repetition [1];" in table, table
    samples = json.loads((tmp_path / "out" / "results.json").read_text())
    assert {row["case"] for row in samples} >= {"warm clone", "4 concurrent cold clones"}
    # The cold burst is also measured against this machine's floor (one upstream clone + the warm burst direct).
    assert "against the floor, one upstream clone + 4 warm clones at once" in table, table
    (cold,) = [row for row in samples if row["case"] == "4 concurrent cold clones"]
    assert cold["floor_ratio"] > 0


def test_partial_benchmark_quick_prints_every_table(tmp_path: Path) -> None:
    env = {key: value for key, value in os.environ.items() if not key.startswith(("GIT_", "REPOCACHE_"))}
    result = subprocess.run(
        [sys.executable, "-m", "benchmarks.partial", "--quick", "--output", str(tmp_path / "partial.json")],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert result.returncode == 0, result.stderr[-4000:]
    table = result.stdout
    assert "| upstream | side | mirror | fill | vs full | size on disk | vs full | objects | walk | vs full |" in table
    for upstream in ("tiny", "source"):
        for side in ("repocache", "git"):
            for mirror in ("full", "blob:none", "tree:0"):
                assert f"| {upstream} | {side} | {mirror} |" in table, f"{upstream} {side} {mirror} missing:\n{table}"
    assert "| upstream | blob:none bytes <= 40% |" in table, table
    assert "| mirror | resident at the end | vs full | clones | vs full | bytes used | replay time |" in table, table
    report = json.loads((tmp_path / "partial.json").read_text())
    assert [fill["upstream"] for fill in report["fills"]] == ["tiny", "source"]
    # Every filter walked the same commits as the full mirror: the partial mirrors hold every commit.
    for fill in report["fills"]:
        walked = {tuple(row["commits"]) for row in fill["samples"].values()}
        assert len(walked) == 1, fill["samples"]
    assert [row["filter"] for row in report["replay"]["rows"]] == [None, "blob:none", "tree:0"]
    assert all(row["clones"] >= row["resident"] > 0 for row in report["replay"]["rows"]), report["replay"]


def test_partial_benchmark_help() -> None:
    result = subprocess.run(
        [sys.executable, "-m", "benchmarks.partial", "--help"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert result.returncode == 0, result.stderr
    assert "--reps-large" in result.stdout and "--budget-share" in result.stdout
