"""A worker process killed during an eviction's upload: ``python -m tests._offload_worker '<json spec>'``.

Spec keys: ``root`` (a cache root holding ``url``), ``store`` (a directory store), ``step`` (where the upload stops
until the parent kills the process: ``"handed"``, the mirror renamed into trash before the store got a byte;
``"mid"``, part of the artifact written into the store's upload; ``"uploaded"``, the artifact and its manifest
committed, before the copy is deleted), ``ready`` (a file written once the worker stands at that step).
The worker evicts with :meth:`RepoCache.enforce` under a one-byte budget, so the eviction is the budget's.
"""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path
from typing import Any, BinaryIO

from repocache import RepoCache
from repocache.cold import LocalDirStore
from repocache.cold.manifest import Manifest
from repocache.cold.store import ArtifactWriter
from repocache.events import Event, PublishEvent


def _stand(ready: Path) -> None:
    """Say where the worker stands, then wait to be killed."""
    ready.write_text("")
    time.sleep(3600)


class _StoppingStore(LocalDirStore):
    """A directory store whose upload stops at the spec's step."""

    def __init__(self, path: Path, step: str, ready: Path) -> None:
        super().__init__(path)
        self.step = step
        self.ready = ready

    def put_stream(self, key: str, write: ArtifactWriter, **options: Any) -> Manifest | None:
        if self.step == "handed":
            _stand(self.ready)
        if self.step != "mid":
            return super().put_stream(key, write, **options)
        ready = self.ready

        class Stopping:
            """The store's upload stream, stopping the process once some bytes are in it."""

            def __init__(self, inner: BinaryIO) -> None:
                self.inner = inner
                self.written = 0

            def write(self, data: bytes) -> int:
                written = self.inner.write(data)
                self.written += len(data)
                if self.written > 4096:
                    self.inner.flush()
                    _stand(ready)
                return written

            def __getattr__(self, name: str) -> Any:
                return getattr(self.inner, name)

        def stopping(out: BinaryIO) -> Manifest:
            return write(Stopping(out))  # type: ignore[arg-type]  # a file-like stand-in

        return super().put_stream(key, stopping, **options)


def main(spec: dict[str, Any]) -> None:
    """Evict the spec's repository and stop at its step."""
    ready = Path(spec["ready"])
    store = _StoppingStore(Path(spec["store"]), spec["step"], ready)

    def on_event(event: Event) -> None:
        if spec["step"] == "uploaded" and isinstance(event, PublishEvent) and event.reason == "evict":
            _stand(ready)

    with RepoCache(spec["root"], max_bytes=1, cold_store=store, on_event=on_event) as cache:
        cache.enforce()
    print(json.dumps({"finished": True}))


if __name__ == "__main__":
    main(json.loads(sys.argv[1]))
