"""``python -m benchmarks.serve``: plain git clients through ``repocache serve`` against ``git http-backend``.

The issue 21 benchmarks, side by side in one run. For each size (``benchmarks.datagen`` upstreams), the upstream is
served by a ``git daemon`` on 127.0.0.1 (its log counts the upload-packs, that is the upstream clones and fetches);
``repocache serve`` runs as a real process (``python -m repocache --root ROOT --fetch-ttl 3600 serve``) with that
daemon allowed; the direct baseline is ``git http-backend`` (:class:`repocache.testing.SmartHTTPServer`) serving the
very mirror the server serves, on 127.0.0.1. Every client is a fresh ``git clone --no-checkout`` (or ``git fetch``)
process, protocol v2, timed wall clock; the sides alternate repetition by repetition; figures are medians.

Cases:

- ``warm clone``: one clone through the warm server against one from http-backend (target at most 1.1x).
- ``no-op fetch``: a fetch within ``fetch_ttl`` with nothing new (no upstream contact, at most 1.2x the direct).
- ``16 cold clones``: a fresh root and server per repetition, 16 clones at once; the upstream clones (daemon
  upload-packs) and the slowest client against one upstream ``git clone --mirror`` plus one warm clone through the
  server, measured in the same repetition (target 1 upstream clone, at most 1.5x).
- ``16 warm identical clones``: CPU of the server's process and of its reaped children (upload-pack, pack-objects),
  as the server counts them (``cpu_seconds`` of ``/-/health``: getrusage, to the microsecond), against the same for
  one clone (target at most 3x); the tree's peak RSS (psutil), sampled every 5 ms.
- ``concurrency``: the slowest of N simultaneous warm clones, N = 1, 2, 4, 8, 16, through the server and direct.

``--quick`` runs the tiny upstream with one repetition, 4 clients and levels 1 and 4 (the smoke test's mode).
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import platform
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import psutil

from benchmarks import datagen
from benchmarks.measure import TreeSampler, median, timed_run
from repocache import RepoCache
from repocache.testing import GitDaemon, SmartHTTPServer, isolated_git_env

PROJECT = Path(__file__).resolve().parent.parent
PREFIX = "bench"
NAME = "repo.git"
ONE_CLONE_RUNS = 4
"""Sequential clones whose server CPU is averaged for "one clone's" (each reading is also a health request, whose
own cost is spread over them)."""


@dataclass
class Row:
    """One line of the table."""

    case: str
    size: str
    ours: str
    baseline: str
    ratio: float | None
    target: str
    met: bool | None
    notes: str = ""
    samples: dict[str, Any] = field(default_factory=dict)


class Server:
    """``python -m repocache --root ROOT --fetch-ttl 3600 serve --listen 127.0.0.1:0 --allow bench=UPSTREAM
    --trust-clients``."""

    def __init__(self, root: Path, upstream_base: str, max_packs: int) -> None:
        command = [
            sys.executable,
            "-m",
            "repocache",
            "--root",
            str(root),
            "--fetch-ttl",
            "3600",
            "serve",
            "--listen",
            "127.0.0.1:0",
            "--allow",
            f"{PREFIX}={upstream_base}",
            "--max-packs",
            str(max_packs),
            # The upstream is git daemon, which carries no client credential: its clients must be trusted.
            "--trust-clients",
        ]
        env = dict(os.environ, PYTHONPATH=str(PROJECT))
        self.process = subprocess.Popen(command, cwd=PROJECT, stderr=subprocess.PIPE, text=True, env=env)
        assert self.process.stderr is not None
        first = self.process.stderr.readline()
        if "http://127.0.0.1:" not in first:
            rest = self.process.communicate(timeout=30)[1]
            raise RuntimeError(f"repocache serve did not start: {first}{rest}")
        self.port = int(first.split("http://127.0.0.1:")[1].split("/")[0])
        self.lines: list[str] = [first]
        self._reader = threading.Thread(target=self._drain, daemon=True)
        self._reader.start()

    def _drain(self) -> None:
        assert self.process.stderr is not None
        for line in self.process.stderr:
            self.lines.append(line)

    def url(self) -> str:
        """The clone URL of the benchmark repository through the server."""
        return f"http://127.0.0.1:{self.port}/{PREFIX}/{NAME}"

    def health(self) -> dict[str, Any]:
        """The server's ``/-/health`` answer."""
        import urllib.request

        with urllib.request.urlopen(f"http://127.0.0.1:{self.port}/-/health", timeout=30) as response:
            value: dict[str, Any] = json.loads(response.read())
            return value

    def cpu_seconds(self) -> float:
        """CPU seconds of the server's tree: itself, its reaped descendants, and the live ones."""
        own, children = self.cpu_split()
        return own + children

    def cpu_split(self) -> tuple[float, float]:
        """CPU seconds of the server's Python process, and of its git children that have ended: the server's own
        count (``cpu_seconds`` of ``/-/health``, getrusage to the microsecond, where psutil reads 10 ms ticks)."""
        cpu = self.health()["cpu_seconds"]
        return float(cpu["process"]), float(cpu["children"])

    def stop(self) -> None:
        """SIGTERM, then SIGKILL if it does not stop in time."""
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(timeout=60)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(timeout=30)
        self._reader.join(timeout=10)


@contextlib.contextmanager
def serving(root: Path, upstream_base: str, max_packs: int) -> Iterator[Server]:
    """A :class:`Server` for the block."""
    server = Server(root, upstream_base, max_packs)
    try:
        yield server
    finally:
        server.stop()


class Bench:
    """The state of one size's run: directories, environment, counters of clone destinations."""

    def __init__(self, base: Path) -> None:
        self.base = base
        self.env = isolated_git_env(base / "home")
        self.count = 0

    def dest(self) -> Path:
        """A fresh clone destination."""
        self.count += 1
        return self.base / "clones" / f"c{self.count}"

    def clone(self, url: str) -> float:
        """Seconds of one ``git clone --no-checkout URL`` (the clone is removed after)."""
        dest = self.dest()
        seconds = timed_run(
            ["git", "-c", "protocol.version=2", "clone", "-q", "--no-checkout", url, str(dest)], env=self.env
        )
        shutil.rmtree(dest)
        return seconds

    def burst(self, url: str, clients: int) -> list[float]:
        """``clients`` clones of ``url`` started at once; each one's seconds from the common start."""
        dests = [self.dest() for _ in range(clients)]
        started = time.perf_counter()
        processes = [
            subprocess.Popen(
                ["git", "-c", "protocol.version=2", "clone", "-q", "--no-checkout", url, str(dest)],
                env=self.env,
                stdin=subprocess.DEVNULL,
                stdout=subprocess.DEVNULL,
                stderr=subprocess.PIPE,
            )
            for dest in dests
        ]
        seconds: list[float] = [0.0] * clients
        errors: list[str] = []

        def wait(index: int) -> None:
            _out, err = processes[index].communicate(timeout=1800)
            seconds[index] = time.perf_counter() - started
            if processes[index].returncode != 0:
                errors.append(err.decode(errors="replace").strip())

        threads = [threading.Thread(target=wait, args=(index,)) for index in range(clients)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
        for dest in dests:
            shutil.rmtree(dest, ignore_errors=True)
        if errors:
            raise RuntimeError(f"{len(errors)} of {clients} clones of {url} failed: {errors[0]}")
        return seconds


def _fmt(seconds: float) -> str:
    if seconds < 1:
        return f"{seconds * 1000:.1f} ms" if seconds < 0.1 else f"{seconds * 1000:.0f} ms"
    return f"{seconds:.2f} s"


def _upload_packs(daemon: GitDaemon) -> int:
    return daemon.log_text.count("Request upload-pack")


def run_size(label: str, spec: datagen.Spec, args: argparse.Namespace) -> list[Row]:
    """Every case on one upstream."""
    rows: list[Row] = []
    reps = args.reps
    clients = args.clients
    with tempfile.TemporaryDirectory(prefix="repocache-serve-bench-") as scratch:
        base = Path(scratch)
        bench = Bench(base)
        generated = datagen.generate(spec, bench.env)
        served = base / "served"
        datagen.link_copy(generated.path, served / NAME)
        print(f"{label}: {generated.describe()}", file=sys.stderr, flush=True)
        with GitDaemon(served) as daemon:
            upstream_base = f"git://127.0.0.1:{daemon.port}/"
            upstream_url = daemon.url_for(served / NAME)

            # -- warm server: (a), (b), (d), (e) ------------------------------------------------------------
            root = base / "warm-root"
            with serving(root, upstream_base, args.max_packs) as server:
                url = server.url()
                bench.clone(url)  # the cold clone that fills the mirror
                with RepoCache(root) as cache:
                    (entry,) = cache.entries()
                    mirror = Path(entry.path)
                with SmartHTTPServer(mirror.parent) as direct:
                    direct_url = direct.url_for(mirror)
                    bench.clone(direct_url)  # both sides once before the clock: page cache, sockets

                    # (a) warm clone
                    ours_a: list[float] = []
                    git_a: list[float] = []
                    for rep in range(reps):
                        for side in ("ours", "git") if rep % 2 == 0 else ("git", "ours"):
                            (ours_a if side == "ours" else git_a).append(
                                bench.clone(url if side == "ours" else direct_url)
                            )
                    ratio = median(ours_a) / median(git_a)
                    rows.append(
                        Row(
                            "warm clone",
                            label,
                            _fmt(median(ours_a)),
                            f"{_fmt(median(git_a))} (`git http-backend`, same mirror)",
                            ratio,
                            "at most 1.1x",
                            ratio <= 1.1,
                            f"max {_fmt(max(ours_a))} vs {_fmt(max(git_a))}",
                            {"ours": ours_a, "git": git_a},
                        )
                    )
                    print(f"  warm clone {ratio:.2f}x", file=sys.stderr, flush=True)

                    # (b) no-op fetch
                    ours_clone, git_clone = bench.dest(), bench.dest()
                    for source, dest in ((url, ours_clone), (direct_url, git_clone)):
                        subprocess.run(
                            ["git", "clone", "-q", "--no-checkout", source, str(dest)], env=bench.env, check=True
                        )
                    before = _upload_packs(daemon)
                    ours_b: list[float] = []
                    git_b: list[float] = []
                    fetch_reps = max(reps, 5) if not args.quick else 1
                    for rep in range(fetch_reps):
                        for side in ("ours", "git") if rep % 2 == 0 else ("git", "ours"):
                            dest = ours_clone if side == "ours" else git_clone
                            seconds = timed_run(
                                ["git", "-c", "protocol.version=2", "-C", str(dest), "fetch", "-q", "origin"],
                                env=bench.env,
                            )
                            (ours_b if side == "ours" else git_b).append(seconds)
                    contacts = _upload_packs(daemon) - before
                    ratio = median(ours_b) / median(git_b)
                    rows.append(
                        Row(
                            "no-op fetch within fetch_ttl",
                            label,
                            _fmt(median(ours_b)),
                            f"{_fmt(median(git_b))} (`git fetch` from `git http-backend`)",
                            ratio,
                            "no upstream contact, at most 1.2x",
                            contacts == 0 and ratio <= 1.2,
                            f"upstream upload-packs during {fetch_reps} fetches: {contacts}",
                            {"ours": ours_b, "git": git_b, "upstream_contacts": contacts},
                        )
                    )
                    print(f"  no-op fetch {ratio:.2f}x, {contacts} upstream contacts", file=sys.stderr, flush=True)

                    # (d) 16 warm identical clones: CPU and memory of the server's tree
                    one_cpu: list[float] = []
                    burst_cpu: list[float] = []
                    burst_own: list[float] = []
                    one_own: list[float] = []
                    peaks: list[int] = []
                    shares: list[int] = []
                    idle_rss = psutil.Process(server.process.pid).memory_info().rss
                    for _rep in range(reps):
                        own_start, children_start = server.cpu_split()
                        for _ in range(ONE_CLONE_RUNS):
                            bench.clone(url)
                        time.sleep(0.2)  # the server reaps its upload-pack
                        own_end, children_end = server.cpu_split()
                        one_cpu.append((own_end + children_end - own_start - children_start) / ONE_CLONE_RUNS)
                        one_own.append((own_end - own_start) / ONE_CLONE_RUNS)
                        shared_before = int(server.health()["pack_shares"])
                        own_start, children_start = server.cpu_split()
                        sampler = TreeSampler(server.process.pid).start()
                        bench.burst(url, clients)
                        time.sleep(0.2)
                        peaks.append(sampler.stop())
                        own_end, children_end = server.cpu_split()
                        burst_cpu.append(own_end + children_end - own_start - children_start)
                        burst_own.append(own_end - own_start)
                        shares.append(int(server.health()["pack_shares"]) - shared_before)
                    ratio = median(burst_cpu) / median(one_cpu)
                    rows.append(
                        Row(
                            f"{clients} warm identical clones: server CPU",
                            label,
                            f"{median(burst_cpu):.2f} s CPU",
                            f"{median(one_cpu):.3f} s CPU (one clone through the server, mean of "
                            f"{ONE_CLONE_RUNS}; Python {median(one_own):.3f} s)",
                            ratio,
                            "at most 3x",
                            ratio <= 3,
                            f"of which the server's Python process {median(burst_own):.2f} s, its git children "
                            f"{median(burst_cpu) - median(burst_own):.2f} s; "
                            f"pack shares per burst {shares}; server tree peak RSS {median(peaks) / 1e6:.0f} MB "
                            f"(idle server {idle_rss / 1e6:.0f} MB)",
                            {
                                "one": one_cpu,
                                "burst": burst_cpu,
                                "burst_python": burst_own,
                                "peak_rss": peaks,
                                "shares": shares,
                            },
                        )
                    )
                    rows.append(
                        Row(
                            f"{clients} warm identical clones: server peak RSS",
                            label,
                            f"{median(peaks) / 1e6:.0f} MB",
                            f"{idle_rss / 1e6:.0f} MB (the idle server)",
                            median(peaks) / idle_rss,
                            "bounded (stated)",
                            None,
                            "the server process and its upload-pack / pack-objects children, sampled every 5 ms",
                        )
                    )
                    print(f"  {clients} warm clones CPU {ratio:.2f}x", file=sys.stderr, flush=True)

                    # (e) clone time as concurrency grows
                    levels = [n for n in args.levels if n <= clients]
                    slowest: dict[str, dict[int, list[float]]] = {"ours": {}, "git": {}}
                    for rep in range(reps):
                        for level in levels:
                            for side in ("ours", "git") if rep % 2 == 0 else ("git", "ours"):
                                times = bench.burst(url if side == "ours" else direct_url, level)
                                slowest[side].setdefault(level, []).append(max(times))
                    for level in levels:
                        ours_e, git_e = median(slowest["ours"][level]), median(slowest["git"][level])
                        rows.append(
                            Row(
                                f"concurrency: {level} warm clones at once, slowest client",
                                label,
                                _fmt(ours_e),
                                f"{_fmt(git_e)} (`git http-backend`)",
                                ours_e / git_e,
                                "reported (git-cache-http-server: 1 clone 45 s, 6: 160 s, 9: 220 s)",
                                None,
                                f"{ours_e / median(slowest['ours'][1]):.2f}x the single clone through the server; "
                                f"direct {git_e / median(slowest['git'][1]):.2f}x",
                                {"ours": slowest["ours"][level], "git": slowest["git"][level]},
                            )
                        )
                    print("  concurrency done", file=sys.stderr, flush=True)
                    warm_clone = median(ours_a)
                    direct_burst = median(slowest["git"][clients]) if clients in slowest["git"] else None

            # (c) 16 cold clones, a fresh root and server per repetition
            cold_slowest: list[float] = []
            cold_clones: list[int] = []
            upstream_one: list[float] = []
            for rep in range(reps):
                mirror_dest = base / f"direct-mirror-{rep}"
                if rep % 2 == 1:
                    upstream_one.append(
                        timed_run(["git", "clone", "-q", "--mirror", upstream_url, str(mirror_dest)], env=bench.env)
                    )
                cold_root = base / f"cold-root-{rep}"
                with serving(cold_root, upstream_base, args.max_packs) as server:
                    before = _upload_packs(daemon)
                    cold_slowest.append(max(bench.burst(server.url(), clients)))
                    cold_clones.append(_upload_packs(daemon) - before)
                shutil.rmtree(cold_root)
                if rep % 2 == 0:
                    upstream_one.append(
                        timed_run(["git", "clone", "-q", "--mirror", upstream_url, str(mirror_dest)], env=bench.env)
                    )
                shutil.rmtree(mirror_dest)
            reference = median(upstream_one) + warm_clone
            ratio = median(cold_slowest) / reference
            # The floor on this machine: one upstream clone, then the clients' own work, 16 warm clones at once
            # straight from http-backend (the clients share the cores with the server).
            floor = median(upstream_one) + direct_burst if direct_burst is not None else None
            rows.append(
                Row(
                    f"{clients} concurrent cold clones",
                    label,
                    f"{_fmt(median(cold_slowest))} (slowest client)",
                    f"{_fmt(reference)} (one `git clone --mirror` from upstream {_fmt(median(upstream_one))} "
                    f"+ one warm clone through the server {_fmt(warm_clone)})",
                    ratio,
                    "1 upstream clone, at most 1.5x",
                    all(count == 1 for count in cold_clones) and ratio <= 1.5,
                    f"upstream upload-packs per repetition {cold_clones}"
                    + (
                        f"; against the floor, one upstream clone + {clients} warm clones at once straight from "
                        f"`git http-backend` ({_fmt(median(upstream_one))} + {_fmt(direct_burst)}): "
                        f"{median(cold_slowest) / floor:.2f}x"
                        if direct_burst is not None and floor is not None
                        else ""
                    ),
                    {
                        "slowest": cold_slowest,
                        "upstream_clone": upstream_one,
                        "upstream_contacts": cold_clones,
                        "direct_burst": direct_burst,
                        "floor_ratio": median(cold_slowest) / floor if floor is not None else None,
                    },
                )
            )
            print(f"  cold burst {ratio:.2f}x, upstream clones {cold_clones}", file=sys.stderr, flush=True)
    return rows


def machine() -> str:
    """The machine line: cores, memory, OS, Python, git, load."""
    git = subprocess.run(["git", "--version"], capture_output=True, text=True, check=True).stdout.split()[-1]
    load = ", ".join(f"{value:.2f}" for value in os.getloadavg())
    return (
        f"date {time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}, cores {os.cpu_count()}, "
        f"memory {psutil.virtual_memory().total / 2**30:.1f} GiB, os {platform.system()} {platform.release()}, "
        f"python {platform.python_version()}, git {git}, load average {load}"
    )


def table(rows: list[Row]) -> str:
    """The markdown table of ``rows``."""
    lines = [
        "| case | size | repocache serve | measured against | ratio | target | met | notes |",
        "| --- | --- | --- | --- | --- | --- | --- | --- |",
    ]
    for row in rows:
        ratio = "-" if row.ratio is None else f"{row.ratio:.2f}x"
        met = "-" if row.met is None else ("yes" if row.met else "**no**")
        lines.append(
            f"| {row.case} | {row.size} | {row.ours} | {row.baseline} | {ratio} | {row.target} | {met} | {row.notes} |"
        )
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    """Run every case on every size; print the machine line and the table (and write them with the samples)."""
    parser = argparse.ArgumentParser(prog="python -m benchmarks.serve", description=__doc__.split("\n\n")[0])
    parser.add_argument("--sizes", default="small,medium,large", help="comma-separated sizes (default: all three)")
    parser.add_argument("--reps", type=int, default=5, help="repetitions per case (default 5)")
    parser.add_argument("--clients", type=int, default=16, help="clients of the bursts (default 16)")
    parser.add_argument(
        "--levels",
        default="1,2,4,8,16",
        help="concurrency levels of the concurrency case (default 1,2,4,8,16; 1 is always measured)",
    )
    parser.add_argument("--max-packs", type=int, default=4, help="the server's --max-packs (default 4)")
    parser.add_argument(
        "--quick", action="store_true", help="tiny upstream, 1 repetition, 4 clients, levels 1,4 (smoke test)"
    )
    parser.add_argument("--output", type=Path, help="write results.md and results.json here")
    args = parser.parse_args(argv)
    if args.quick:
        args.reps, args.clients, args.levels = 1, 4, "1,4"
        sizes = [("tiny", datagen.SPECS["tiny"])]
    else:
        names = [name.strip() for name in args.sizes.split(",") if name.strip()]
        unknown = [name for name in names if name not in datagen.SPECS]
        if unknown:
            parser.error(f"unknown size {unknown[0]!r}; choose from {', '.join(datagen.SPECS)}")
        sizes = [(name, datagen.SPECS[name]) for name in names]
    try:
        args.levels = sorted({1, *(int(level) for level in args.levels.split(","))})  # 1: what levels compare with
    except ValueError:
        parser.error(f"--levels takes comma-separated client counts such as 1,4,16, not {args.levels!r}")
    if args.reps < 1 or args.clients < 1 or args.levels[0] < 1:
        parser.error(
            f"--reps, --clients and --levels must be at least 1 (got {args.reps}, {args.clients}, {args.levels})"
        )
    started = machine()
    rows: list[Row] = []
    for label, spec in sizes:
        rows.extend(run_size(label, spec, args))
    text = f"Machine at the start: {started}\n\nAt the end: {machine()}\n\n{table(rows)}\n"
    print(text)
    if args.output is not None:
        args.output.mkdir(parents=True, exist_ok=True)
        (args.output / "results.md").write_text(text)
        samples = [{"case": row.case, "size": row.size, **row.samples} for row in rows]
        (args.output / "results.json").write_text(json.dumps(samples, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
