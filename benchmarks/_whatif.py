"""Proposed library fixes, applied at run time by monkeypatching, so their effect can be measured before anyone
edits the library. Used by ``benchmarks.profiles`` in-process and by ``_worker.py`` when the environment variable
``REPOCACHE_BENCH_WHATIF`` names them (comma-separated). Nothing here is used by ``python -m benchmarks``.

* ``spawn``: start git through ``setpriv --pdeathsig KILL`` instead of a Python ``preexec_fn`` (which makes every
  spawn fork the whole interpreter and import ctypes in the child).
* ``poll``: poll a contended lock every 2 ms at most, instead of backing off to 50 ms.
* ``tarbuf``: let tarfile copy members in 256 KiB pieces (``copybufsize``) instead of 16 KiB ones.
* ``nocount``: skip the separate write transaction that counts a miss before the exclusive lock is taken (an
  experiment: it shows what that transaction costs when many processes miss at once; the proposed fix counts the
  miss inside the transaction that records the clone or the hit instead).

This module imports only the standard library at module level (``_worker.py`` runs it under any interpreter).
"""

from __future__ import annotations

import shutil
import subprocess
import types
from typing import Any

__all__ = ["NAMES", "apply"]

NAMES = ("spawn", "poll", "tarbuf", "nocount")


def _spawn() -> None:
    from repocache import gitops

    setpriv = shutil.which("setpriv")
    if setpriv is None:
        raise RuntimeError("setpriv (util-linux) is not installed")

    class Popen(subprocess.Popen):  # type: ignore[type-arg]
        def __init__(self, args: Any, *rest: Any, preexec_fn: Any = None, **kwargs: Any) -> None:
            if preexec_fn is not None:
                args = [setpriv, "--pdeathsig", "KILL", "--", *args]
            super().__init__(args, *rest, **kwargs)

    shim = types.SimpleNamespace(**{name: getattr(subprocess, name) for name in dir(subprocess)})
    shim.Popen = Popen
    gitops.subprocess = shim  # type: ignore[attr-defined]


def _poll() -> None:
    from repocache import locks

    locks._POLL_MAX = 0.002


def _tarbuf() -> None:
    import tarfile

    from repocache.cold import artifact

    chunk = getattr(artifact, "_CHUNK", 256 * 1024)
    original = tarfile.open

    def open_with_copybufsize(*args: Any, **kwargs: Any) -> Any:
        kwargs.setdefault("copybufsize", chunk)
        return original(*args, **kwargs)

    shim = types.SimpleNamespace(**{name: getattr(tarfile, name) for name in dir(tarfile)})
    shim.open = open_with_copybufsize
    artifact.tarfile = shim  # type: ignore[attr-defined]


def _nocount() -> None:
    from repocache.index import Index

    original = Index.count

    def count(self: Index, name: str, amount: int = 1) -> None:
        if name != "misses":
            original(self, name, amount)

    Index.count = count  # type: ignore[method-assign]


def apply(names: str | list[str]) -> list[str]:
    """Apply the named patches (a list or a comma-separated string); returns the names applied."""
    wanted = [name.strip() for name in (names.split(",") if isinstance(names, str) else names) if name.strip()]
    for name in wanted:
        if name not in NAMES:
            raise ValueError(f"unknown what-if {name!r}; known: {', '.join(NAMES)}")
        {"spawn": _spawn, "poll": _poll, "tarbuf": _tarbuf, "nocount": _nocount}[name]()
    return wanted
