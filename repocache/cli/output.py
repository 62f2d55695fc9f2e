"""What every command shares for writing: the context (results on stdout, messages on stderr), the progress bar,
the log handler, and the formatting of sizes, times, tables and JSON."""

from __future__ import annotations

import argparse
import dataclasses
import json
import logging
import os
import time
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any, TextIO

if TYPE_CHECKING:
    from repocache.cold.manifest import Manifest
    from repocache.models import Entry, Problem, Progress


# -- formatting ---------------------------------------------------------------------------------------------------


def human_bytes(count: int | None) -> str:
    """``1536`` -> ``"1.5 KiB"``; None -> ``"unlimited"``."""
    if count is None:
        return "unlimited"
    value = float(count)
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if value < 1024 or unit == "TiB":
            return f"{int(value)} B" if unit == "B" else f"{value:.1f} {unit}"
        value /= 1024
    raise AssertionError("unreachable")  # pragma: no cover


def ago(timestamp: float | None, now: float) -> str:
    """A relative time for the last week (``"5m ago"``), a local ISO date and time before that."""
    if timestamp is None:
        return "never"
    seconds = now - timestamp
    if seconds < 1:
        return "just now"
    for size, unit in ((86400, "d"), (3600, "h"), (60, "m"), (1, "s")):
        if seconds >= size and seconds < 7 * 86400:
            return f"{int(seconds // size)}{unit} ago"
    return time.strftime("%Y-%m-%d %H:%M", time.localtime(timestamp))


def yes_no(flag: bool) -> str:
    """``"yes"`` or ``"no"``."""
    return "yes" if flag else "no"


def entry_json(entry: Entry) -> dict[str, Any]:
    """An entry as a JSON object (its path as a string)."""
    data = dataclasses.asdict(entry)
    data["path"] = str(entry.path)
    return data


def problem_json(problem: Problem) -> dict[str, Any]:
    """A problem found by verify as a JSON object (its path as a string)."""
    data = dataclasses.asdict(problem)
    data["path"] = str(problem.path)
    return data


def manifest_json(manifest: Manifest) -> dict[str, Any]:
    """A cold-store manifest as a JSON object."""
    return dataclasses.asdict(manifest)


def table(rows: Sequence[Sequence[str]]) -> str:
    """Rows (the first one the header) as left-aligned columns two spaces apart, without trailing spaces."""
    widths = [max(len(row[column]) for row in rows) for column in range(len(rows[0]))]
    lines = ["  ".join(cell.ljust(width) for cell, width in zip(row, widths, strict=True)).rstrip() for row in rows]
    return "\n".join(lines)


# -- progress and messages ----------------------------------------------------------------------------------------


class ProgressBar:
    """Draws one progress line on a terminal, rewritten in place with ``\\r``, cleared when an operation ends."""

    def __init__(self, stream: TextIO) -> None:
        self._stream = stream
        self._drawn = False

    def __call__(self, event: Progress) -> None:
        if event.phase == "done":
            self.clear()
            return
        self._stream.write("\r" + self._render(event) + "\x1b[K")
        self._stream.flush()
        self._drawn = True

    def clear(self) -> None:
        """Erase the line if one is drawn (before messages, results or exit)."""
        if self._drawn:
            self._drawn = False
            self._stream.write("\r\x1b[K")
            self._stream.flush()

    def _width(self) -> int:
        try:
            return max(20, os.get_terminal_size(self._stream.fileno()).columns - 1)
        except (OSError, ValueError, AttributeError):
            return 79

    def _render(self, event: Progress) -> str:
        width = self._width()
        status = f"{event.phase} {event.objects}"
        gauge = ""
        if event.total_objects > 0:
            fraction = min(1.0, event.objects / event.total_objects)
            status += f"/{event.total_objects} {int(fraction * 100):3d}%"
            gauge_width = 20
            filled = int(fraction * gauge_width)
            gauge = " [" + "#" * filled + "-" * (gauge_width - filled) + "]"
        if event.bytes > 0:
            status += f" {human_bytes(event.bytes)}"
        operation, url = f"{event.operation} ", f"{event.url} "
        if len(operation) + len(url) + len(status) + len(gauge) > width:
            gauge = ""
        room = width - len(operation) - len(status)
        if len(url) > room:
            url = ("..." + url[-(room - 3) :]) if room > 10 else ""
        return (operation + url + status + gauge)[:width]


if TYPE_CHECKING:
    _StreamHandler = logging.StreamHandler[TextIO]
else:
    _StreamHandler = logging.StreamHandler


class LogHandler(_StreamHandler):
    """Writes ``repocache: <level>: <message>`` lines, erasing a progress line first."""

    def __init__(self, stream: TextIO, bar: ProgressBar | None) -> None:
        super().__init__(stream)
        self.bar = bar
        self.setFormatter(logging.Formatter("repocache: %(levelname)s: %(message)s"))

    def emit(self, record: logging.LogRecord) -> None:
        if self.bar is not None:
            self.bar.clear()
        record.levelname = record.levelname.lower()
        super().emit(record)


def is_terminal(stream: TextIO) -> bool:
    """Whether ``stream`` is a terminal (False for anything that cannot tell)."""
    try:
        return stream.isatty()
    except (AttributeError, ValueError):
        return False


@dataclasses.dataclass
class Context:
    """What a command needs besides the cache: its arguments and where to write."""

    args: argparse.Namespace
    out: TextIO
    err: TextIO
    bar: ProgressBar | None

    def note(self, message: str) -> None:
        """An informational line on stderr, unless ``--quiet``."""
        if not self.args.quiet:
            self.clear()
            print(f"repocache: {message}", file=self.err)

    def error(self, message: str) -> None:
        """An error line on stderr, always."""
        self.clear()
        print(f"repocache: error: {message}", file=self.err)

    def clear(self) -> None:
        """Erase the progress line, if any."""
        if self.bar is not None:
            self.bar.clear()

    def emit(self, text: str) -> None:
        """A result line on stdout."""
        self.clear()
        print(text, file=self.out)

    def emit_json(self, value: object) -> None:
        """A JSON result on stdout."""
        self.emit(json.dumps(value, indent=2))
