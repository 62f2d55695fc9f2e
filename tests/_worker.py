"""A separate worker process for concurrency and crash tests: ``python -m tests._worker '<json spec>'``.

Spec keys: ``root``, ``url``, ``action`` ("checkout", "hold", "ensure", "enforce"), ``options`` (RepoCache
keyword arguments), ``ready`` (a file written once the action has started or the hold is taken), ``release`` (a
file whose appearance ends a hold), ``signal_on_progress`` (a file written at the first progress report, so the
parent can kill the worker mid-transfer), ``pause_on_progress`` (seconds the first progress report blocks the
transfer), ``resume`` (a file whose appearance ends the block of the first progress report: the transfer stalls
until the parent lets it go on), ``events`` (a file to which the start and end of every clone and fetch are
appended, as the stress worker logs them, so the parent can tell where a kill landed), ``start_at`` (epoch seconds
to wait for, so many workers start together).
The result is printed as one JSON line on stdout.
"""

from __future__ import annotations

import json
import sys
import time
import warnings
from pathlib import Path
from typing import Any

from repocache import Progress, RepoCache, RepoCacheError


def _wait_for(path: Path, timeout: float = 60.0) -> None:
    deadline = time.monotonic() + timeout
    while not path.exists():
        if time.monotonic() > deadline:
            raise TimeoutError(f"{path} never appeared")
        time.sleep(0.01)


def run(spec: dict[str, Any]) -> dict[str, Any]:
    """Carry out one spec and describe what happened."""
    signal_file = Path(spec["signal_on_progress"]) if spec.get("signal_on_progress") else None

    def progress(event: Progress) -> None:
        if signal_file is not None and not signal_file.exists():
            signal_file.write_text(event.phase)
            time.sleep(float(spec.get("pause_on_progress", 0)))
            if spec.get("resume"):
                _wait_for(Path(spec["resume"]))

    if spec.get("events"):
        from tests._stress_worker import _event_log, instrument

        instrument(_event_log(spec["events"]))
    if spec.get("start_at"):
        time.sleep(max(0.0, float(spec["start_at"]) - time.time()))
    warnings.simplefilter("ignore")
    result: dict[str, Any] = {}
    with RepoCache(spec["root"], progress=progress, **spec.get("options", {})) as cache:
        action = spec["action"]
        try:
            if action in ("checkout", "hold"):
                with cache.checkout(spec["url"]) as co:
                    result.update(source=co.source, fetched=co.fetched, stale=co.stale, path=str(co.path))
                    if action == "checkout":
                        references = co.repo.references
                        result["refs"] = {
                            n: str(references[n].resolve().target) for n in references if n.startswith("refs/")
                        }
                    if spec.get("ready"):
                        Path(spec["ready"]).write_text(json.dumps(result))
                    if action == "hold":
                        _wait_for(Path(spec["release"]))
            elif action == "ensure":
                entry = cache.ensure(spec["url"])
                result.update(path=str(entry.path), size=entry.size_bytes)
            elif action == "enforce":
                result["evicted"] = [e.url for e in cache.enforce()]
            else:
                raise ValueError(f"unknown action {action!r}")
        except RepoCacheError as exc:
            result.update(error=type(exc).__name__, message=str(exc))
    return result


if __name__ == "__main__":
    print(json.dumps(run(json.loads(sys.argv[1]))), flush=True)
