"""Timing, peak memory of process trees, and the worker processes that run the libraries under test.

Peak memory method: a sampler thread reads the resident set size of every process in the measured tree (the
process and all its descendants, found through ``/proc/<pid>/task/<tid>/children``; psutil where that file is
missing) every 5 ms and keeps the largest sum. Both sides are measured the same way: for git, the ``git clone``
process and its children (``index-pack``...); for a library, its worker process (a Python interpreter with the
library imported and the cache opened) and the git children it starts.

``ru_maxrss`` (``wait4`` or ``RUSAGE_CHILDREN``) is not used: Linux keeps the high-water mark of the memory a
child had before ``exec``, which is its parent's (forked or vforked), so a ``/bin/true`` started by a 210 MB
Python process reports 210 MB, and a ``git clone`` started by the 75 MB benchmark process "peaked" at 75 MB while
its sampled peak was 25 MB.
"""

from __future__ import annotations

import contextlib
import json
import os
import statistics
import subprocess
import sys
import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any

__all__ = [
    "Measured",
    "TreeSampler",
    "Worker",
    "median",
    "run_measured",
    "timed_run",
]

_PAGE = os.sysconf("SC_PAGE_SIZE")
WORKER_SCRIPT = Path(__file__).resolve().parent / "_worker.py"


def median(values: Sequence[float]) -> float:
    """The median of ``values`` (which must not be empty)."""
    return float(statistics.median(values))


# -- peak RSS of a process tree ----------------------------------------------------------------------------------


def _children(pid: int) -> list[int]:
    found: list[int] = []
    try:
        tasks = os.listdir(f"/proc/{pid}/task")
    except OSError:
        return found
    for tid in tasks:
        try:
            with open(f"/proc/{pid}/task/{tid}/children") as handle:
                found.extend(int(child) for child in handle.read().split())
        except OSError:
            continue
    return found


def _rss(pid: int) -> int:
    try:
        with open(f"/proc/{pid}/statm") as handle:
            return int(handle.read().split()[1]) * _PAGE
    except (OSError, IndexError, ValueError):
        return 0


def _has_proc_children() -> bool:
    return os.path.exists(f"/proc/{os.getpid()}/task/{os.getpid()}/children")


def tree_rss(pid: int) -> int:
    """Resident bytes of ``pid`` and all its descendants right now."""
    if _has_proc_children():
        total = 0
        stack = [pid]
        while stack:
            current = stack.pop()
            total += _rss(current)
            stack.extend(_children(current))
        return total
    import psutil

    try:
        root = psutil.Process(pid)
        procs = [root, *root.children(recursive=True)]
    except psutil.Error:
        return 0
    total = 0
    for proc in procs:
        with contextlib.suppress(psutil.Error):
            total += int(proc.memory_info().rss)
    return total


class TreeSampler:
    """Polls the RSS of a process tree every ``interval`` seconds in a thread; ``peak`` is the largest sum seen."""

    def __init__(self, pid: int, interval: float = 0.005) -> None:
        self.pid = pid
        self.interval = interval
        self.peak = 0
        self.samples = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name=f"rss-{pid}", daemon=True)

    def start(self) -> TreeSampler:
        self._thread.start()
        return self

    def _run(self) -> None:
        while not self._stop.is_set():
            self.sample()
            self._stop.wait(self.interval)

    def sample(self) -> None:
        """Take one sample now."""
        rss = tree_rss(self.pid)
        self.samples += 1
        self.peak = max(self.peak, rss)

    def stop(self) -> int:
        """Stop sampling; returns the peak."""
        self._stop.set()
        self._thread.join()
        return self.peak


@dataclass
class Measured:
    """One run of a command: wall seconds and the sampled peak RSS of its process tree."""

    seconds: float
    peak_rss: int
    stderr: str = ""


def run_measured(command: list[str], *, cwd: Path | None = None, env: dict[str, str] | None = None) -> Measured:
    """Run ``command`` to completion, timing it and sampling its tree's memory.

    Raises:
        RuntimeError: the command failed.
    """
    started = time.perf_counter()
    process = subprocess.Popen(
        command, cwd=cwd, env=env, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE
    )
    sampler = TreeSampler(process.pid).start()
    _out, stderr = process.communicate()
    seconds = time.perf_counter() - started
    peak = sampler.stop()
    text = stderr.decode(errors="replace")
    if process.returncode != 0:
        raise RuntimeError(f"{' '.join(command)} exited with {process.returncode}: {text.strip()}")
    return Measured(seconds, peak, text)


def timed_run(command: list[str], *, cwd: Path | None = None, env: dict[str, str] | None = None) -> float:
    """Wall seconds of ``command`` (output discarded).

    Raises:
        RuntimeError: the command failed.
    """
    started = time.perf_counter()
    result = subprocess.run(command, cwd=cwd, env=env, stdin=subprocess.DEVNULL, capture_output=True, check=False)
    seconds = time.perf_counter() - started
    if result.returncode != 0:
        raise RuntimeError(f"{' '.join(command)} exited with {result.returncode}: {result.stderr.decode().strip()}")
    return seconds


# -- workers -----------------------------------------------------------------------------------------------------


@dataclass
class Worker:
    """A process running ``_worker.py`` for one engine (``ours`` or ``peer``), driven with JSON lines.

    The worker imports its library and opens its cache before it says it is ready, so what is timed afterwards
    is the library call alone, as a long-running service would see it. ``env`` replaces the environment it
    inherits (None: this process's).
    """

    engine: str
    root: Path
    python: str = sys.executable
    options: dict[str, Any] = field(default_factory=dict)
    log: Path | None = None
    env: dict[str, str] | None = None
    process: subprocess.Popen[str] | None = None
    ready_info: dict[str, Any] = field(default_factory=dict)
    _log_handle: IO[bytes] | None = None

    def start(self) -> Worker:
        """Start the process (it becomes ready in the background: see :meth:`wait_ready`)."""
        stderr: IO[bytes] | int = subprocess.DEVNULL
        if self.log is not None:
            self._log_handle = open(self.log, "ab")  # noqa: SIM115 - closed in close()
            stderr = self._log_handle
        self.process = subprocess.Popen(
            [self.python, str(WORKER_SCRIPT), self.engine, str(self.root), json.dumps(self.options)],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=stderr,
            text=True,
            bufsize=1,
            env=self.env,
        )
        return self

    def wait_ready(self) -> dict[str, Any]:
        """Block until the worker has imported its library and opened the cache."""
        self.ready_info = self._read()
        if not self.ready_info.get("ready"):
            raise RuntimeError(f"{self.engine} worker did not start: {self.ready_info}")
        return self.ready_info

    @property
    def pid(self) -> int:
        assert self.process is not None
        return self.process.pid

    def send(self, op: str, **args: Any) -> None:
        """Send one command without waiting for its reply."""
        assert self.process is not None and self.process.stdin is not None
        self.process.stdin.write(json.dumps({"op": op, **args}) + "\n")
        self.process.stdin.flush()

    def _read(self) -> dict[str, Any]:
        assert self.process is not None and self.process.stdout is not None
        line = self.process.stdout.readline()
        if not line:
            code = self.process.wait()
            detail = self.log.read_text(errors="replace")[-3000:] if self.log is not None else ""
            raise RuntimeError(f"{self.engine} worker exited with {code} without answering\n{detail}")
        reply: dict[str, Any] = json.loads(line)
        if "error" in reply:
            raise RuntimeError(f"{self.engine} worker failed: {reply['error']}")
        return reply

    def reply(self) -> dict[str, Any]:
        """Wait for the reply to the last command."""
        return self._read()

    def call(self, op: str, **args: Any) -> dict[str, Any]:
        """Send a command and wait for its reply."""
        self.send(op, **args)
        return self.reply()

    def close(self) -> None:
        """Ask the worker to quit and reap it (killing it if it does not)."""
        if self.process is not None:
            with contextlib.suppress(BrokenPipeError, OSError):
                self.send("quit")
            try:
                self.process.wait(30)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
            for stream in (self.process.stdin, self.process.stdout):
                if stream is not None:
                    with contextlib.suppress(OSError):
                        stream.close()
            self.process = None
        if self._log_handle is not None:
            self._log_handle.close()
            self._log_handle = None

    def __enter__(self) -> Worker:
        if self.process is None:
            self.start()
            self.wait_ready()
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
