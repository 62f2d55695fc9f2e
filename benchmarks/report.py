"""The results table (markdown), the machine description and the latency plot."""

from __future__ import annotations

import datetime
import os
import platform
import re
import subprocess
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from benchmarks.cases import Result, SizeData
from benchmarks.measure import median

__all__ = ["machine_info", "markdown", "plot"]


def _command(args: list[str]) -> str:
    try:
        return subprocess.run(args, capture_output=True, text=True, check=False).stdout.strip()
    except OSError:
        return ""


def machine_info(peer_version: str | None) -> dict[str, str]:
    """What the figures were measured on."""
    import pygit2

    model = ""
    for line in _command(["lscpu"]).splitlines():
        if line.startswith("Model name:"):
            model = line.split(":", 1)[1].strip()
    memory = ""
    try:
        with open("/proc/meminfo") as handle:
            match = re.search(r"MemTotal:\s+(\d+) kB", handle.read())
            if match:
                memory = f"{int(match.group(1)) / 1024**2:.1f} GiB"
    except OSError:
        pass
    return {
        "date": datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
        "cpu": model or platform.processor() or "unknown",
        "cores": str(os.cpu_count()),
        "memory": memory,
        "os": f"{platform.system()} {platform.release()}",
        "python": platform.python_version(),
        "git": _command(["git", "--version"]).removeprefix("git version "),
        "pygit2": str(getattr(pygit2, "__version__", "?")),
        "libgit2": str(pygit2.LIBGIT2_VERSION),
        "git-cache-clone": peer_version or "not measured",
    }


def _seconds(value: float) -> str:
    if value < 1e-3:
        return f"{value * 1e6:.0f} µs"
    if value < 1:
        return f"{value * 1e3:.3g} ms" if value < 0.1 else f"{value * 1e3:.0f} ms"
    return f"{value:.2f} s"


def _value(value: float | None, unit: str) -> str:
    if value is None:
        return "-"
    if unit == "B":
        return f"{value / 1e6:.0f} MB"
    if unit == "count":
        return f"{value:,.1f}"
    if unit == "n":
        return f"{value:,.0f}"
    return _seconds(value)


def _cell(samples: Sequence[float], unit: str) -> str:
    return _value(median(samples), unit) if samples else "-"


def markdown(results: Sequence[Result], machine: dict[str, str], sizes: Sequence[SizeData]) -> str:
    """The table of medians and ratios, with the machine and the data sets above it."""
    lines = [
        "Machine: " + ", ".join(f"{key} {value}" for key, value in machine.items()),
        "",
        "Upstreams (served by `git daemon` on 127.0.0.1, same transport for every side):",
        "",
    ]
    for data in sizes:
        generated = data.generated
        lines.append(
            f"- {data.label}: {generated.size_bytes / 1e6:.1f} MB, {generated.objects:,} objects, "
            f"{generated.refs:,} refs; {data.reps} repetitions"
        )
    columns = ["case", "size", "repocache", "measured against", "baseline", "ratio", "target", "met"]
    columns += ["git-cache-clone", "runs", "notes"]
    lines += ["", "| " + " | ".join(columns) + " |", "|" + " --- |" * len(columns)]
    for row in results:
        met = "-" if row.met is None else ("yes" if row.met else "**no**")
        ratio = "-" if row.ratio is None else f"{row.ratio:.2f}x"
        peer = _cell(row.peer, row.unit)
        if row.peer and row.peer_note:
            peer += f" ({row.peer_note})"
        elif not row.peer:
            peer = "n/a"
        ours = _cell(row.ours, row.unit)
        if not row.ours and row.note.startswith("not available"):
            ours = "not available"
        runs = str(len(row.ours)) if row.ours else "-"
        cells = [row.case, row.size, ours, row.against, _cell(row.base, row.unit), ratio, row.target, met, peer]
        cells += [runs, row.note]
        lines.append("| " + " | ".join(cell.replace("|", "\\|") for cell in cells) + " |")
    return "\n".join(lines) + "\n"


def to_json(results: Sequence[Result]) -> list[dict[str, Any]]:
    """Every row with its raw samples."""
    return [
        {
            "case": row.case,
            "size": row.size,
            "against": row.against,
            "target": row.target,
            "unit": row.unit,
            "ours": row.ours,
            "base": row.base,
            "peer": row.peer,
            "ratio": row.ratio,
            "met": row.met,
            "note": row.note,
            "peer_note": row.peer_note,
            "extra": row.extra,
        }
        for row in results
    ]


_SERIES = [
    # (label, case prefix, which samples, colour, line style, marker)
    ("repocache: hit within fetch_ttl", "hit within fetch_ttl (no network), 10 ", "ours", "tab:green", "-", "o"),
    ("git-cache-clone: add() of a cached repo", "hit within fetch_ttl (no network), 10 ", "peer", "green", ":", "o"),
    ("repocache: hit, fetch (nothing new)", "hit with fetch, nothing new", "ours", "tab:blue", "-", "s"),
    ("git fetch (nothing new)", "hit with fetch, nothing new", "base", "tab:blue", "--", "s"),
    ("git-cache-clone: refresh() (nothing new)", "hit with fetch, nothing new", "peer", "tab:blue", ":", "s"),
    ("repocache: hit, fetch (100 new commits)", "hit with fetch, 100 new commits", "ours", "tab:purple", "-", "^"),
    ("git fetch (100 new commits)", "hit with fetch, 100 new commits", "base", "tab:purple", "--", "^"),
    ("repocache: miss (clone)", "miss (clone): time", "ours", "tab:red", "-", "D"),
    ("git clone --mirror", "miss (clone): time", "base", "tab:red", "--", "D"),
    ("git-cache-clone: add() (clone)", "miss (clone): time", "peer", "tab:red", ":", "D"),
    ("repocache: restore from cold storage", "restore from cold storage", "ours", "tab:orange", "-", "v"),
    ("repocache: restore from S3", "restore from cold storage (S3", "ours", "darkorange", "-", "<"),
]


def _in_series(case: str, prefix: str) -> bool:
    """Whether ``case`` belongs to the series of ``prefix``: the longest series prefix it starts with wins."""
    if not case.startswith(prefix):
        return False
    return not any(len(other) > len(prefix) and case.startswith(other) for _l, other, *_rest in _SERIES)


def plot(results: Sequence[Result], sizes: Sequence[SizeData], path: Path) -> str | None:
    """Draw hit and miss latency against repository size to ``path``; returns why not when it cannot."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return "matplotlib is not installed (pip install matplotlib)"
    size_of = {data.label: data.size_mb for data in sizes}
    figure, axes = plt.subplots(figsize=(12, 6.5))
    drawn = 0
    for label, prefix, side, color, linestyle, marker in _SERIES:
        points = []
        for row in results:
            if _in_series(row.case, prefix) and row.size in size_of:
                samples = getattr(row, side)
                if samples:
                    points.append((size_of[row.size], median(samples)))
        if not points:
            continue
        points.sort()
        xs, ys = zip(*points, strict=True)
        axes.plot(xs, ys, linestyle=linestyle, marker=marker, label=label, color=color, markersize=6)
        drawn += 1
    if not drawn:
        plt.close(figure)
        return "no hit/miss results to plot"
    axes.set_xscale("log")
    axes.set_yscale("log")
    axes.set_xlabel("repository size on disk (MB)")
    axes.set_ylabel("latency, median (s)")
    axes.set_title(
        "Hit and miss latency by repository size (medians; git:// on 127.0.0.1)\n"
        "solid: repocache, dashed: plain git, dotted: git-cache-clone"
    )
    axes.grid(True, which="both", alpha=0.3)
    axes.legend(fontsize=8, loc="upper left", bbox_to_anchor=(1.01, 1.0))
    figure.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    figure.savefig(path, dpi=110)
    plt.close(figure)
    print(f"plot written to {path}", file=sys.stderr)
    return None
