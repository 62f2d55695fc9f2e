"""The small context that the cache's parts share: passed down by the facade, so no part imports the facade."""

from __future__ import annotations

from dataclasses import dataclass

from repocache import gitops
from repocache.events import Events
from repocache.index import Index
from repocache.layout import Layout
from repocache.pins import Pins
from repocache.settings import Settings

__all__ = ["Context"]


@dataclass(frozen=True)
class Context:
    """What every part of one :class:`~repocache.RepoCache` works with.

    Attributes:
        settings: the validated settings.
        layout: paths and locks under the root.
        index: the shared LRU index.
        pins: the never-evict pins.
        git: how git is run (binary, timeouts, local paths).
        events: where outcomes are reported.
    """

    settings: Settings
    layout: Layout
    index: Index
    pins: Pins
    git: gitops.GitOptions
    events: Events
