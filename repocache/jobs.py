"""Named background threads of one cache: at most one per name, each removing itself when it ends, all waited for
when the cache closes (the cold tier's uploads, the checks of restored commit-graphs)."""

from __future__ import annotations

import threading
from collections.abc import Callable

__all__ = ["Jobs"]


class Jobs:
    """Background threads by name.

    Args:
        prefix: the start of each thread's name (``repocache-publish``), followed by the job's name.
        daemon: whether the threads are daemons (the interpreter does not wait for them at exit).
    """

    def __init__(self, prefix: str, *, daemon: bool) -> None:
        self._prefix = prefix
        self._daemon = daemon
        self._threads: dict[str, threading.Thread] = {}
        self._lock = threading.Lock()

    def running(self, name: str) -> bool:
        """Whether a job of that name is running."""
        with self._lock:
            return name in self._threads

    def start(self, name: str, work: Callable[[], None]) -> bool:
        """Run ``work`` on a new thread, unless a job of that name is running (then False, and nothing runs).

        ``work`` must not raise: a background job has nobody to raise to, so it reports its own failures.
        """

        def job() -> None:
            try:
                work()
            finally:
                with self._lock:
                    self._threads.pop(name, None)

        with self._lock:
            if name in self._threads:
                return False
            thread = threading.Thread(target=job, name=f"{self._prefix}-{name[:40]}", daemon=self._daemon)
            self._threads[name] = thread  # before start: the job's own removal waits for this lock
            thread.start()
        return True

    def wait(self, name: str | None = None) -> None:
        """Wait until no job (of ``name``, or at all) is running, including jobs started meanwhile."""
        while True:
            with self._lock:
                threads = [t for n, t in self._threads.items() if name is None or n == name]
            if not threads:
                return
            for thread in threads:
                thread.join()
