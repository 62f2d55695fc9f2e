"""How one cache's parts are put together from its settings: the wiring the facade would otherwise hold.

:func:`assemble` opens the root (creating it), the index, the pins, the event hooks and the cold tier, and
connects the rooms that act on them: the budget, the consequences of each act, the background pool and the
acquire room. The facade keeps the :class:`Parts` and forwards each public verb to the room that owns it.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from repocache import gitops
from repocache.acquire import Acquirer
from repocache.budget import Budget
from repocache.cold_tier import ColdTier
from repocache.consequences import Consequences
from repocache.context import Context
from repocache.errors import ConfigError
from repocache.events import EventHook, Events
from repocache.index import Index
from repocache.layout import Layout
from repocache.lifecycle import Lifecycle
from repocache.pins import Pins, PinsSpec
from repocache.refresh import Background
from repocache.settings import Settings, default_root
from repocache.verify import mirrors_on_disk, sweep_locks

if TYPE_CHECKING:
    from repocache.cold import ColdStoreSpec

__all__ = ["Parts", "assemble"]


@dataclass(frozen=True)
class Parts:
    """The rooms of one open cache, sharing one :class:`~repocache.context.Context` and one lifecycle."""

    root: Path
    context: Context
    budget: Budget
    cold: ColdTier | None
    background: Background
    acquirer: Acquirer
    consequences: Consequences
    lifecycle: Lifecycle


def assemble(
    root: str | os.PathLike[str] | None,
    settings: Settings,
    *,
    pins: PinsSpec,
    cold_store: ColdStoreSpec,
    on_event: EventHook | None,
) -> Parts:
    """Open the cache at ``root`` (``$REPOCACHE_DIR`` or the user cache directory when None) with ``settings``.

    Raises:
        ConfigError: the root is not a directory or cannot be written; a pin file or a cold store is invalid.
    """
    path = Path(root) if root is not None else default_root()
    if path.exists() and not path.is_dir():
        raise ConfigError(f"root={str(path)!r} exists and is not a directory")
    layout = Layout(path)
    try:
        layout.create()
    except OSError as exc:
        raise ConfigError(f"root={str(path)!r} cannot be created or written: {exc}") from exc
    context = Context(
        settings=settings,
        layout=layout,
        index=Index(
            layout.index,
            lock_path=layout.locks / "index.lock",
            adopt=lambda: mirrors_on_disk(layout),
            timeout=settings.lock_timeout,
        ),
        pins=Pins(pins),
        git=_git_options(settings),
        events=_events(on_event),
    )
    cold = _cold_tier(context, cold_store)
    budget = Budget(context, cold)
    lifecycle = Lifecycle("RepoCache")
    consequences = Consequences(context, cold, lifecycle)
    background = Background(context, consequences)
    acquirer = Acquirer(context, budget, cold, consequences, background, lifecycle)
    budget.empty_trash()
    sweep_locks(context)
    return Parts(path, context, budget, cold, background, acquirer, consequences, lifecycle)


def _git_options(settings: Settings) -> gitops.GitOptions:
    transport = settings.transport
    return gitops.GitOptions(
        git=gitops.find_git(),
        allow_local=transport.allow_local,
        connect_timeout=transport.connect_timeout,
        idle_timeout=transport.idle_timeout,
    )


def _events(on_event: EventHook | None) -> Events:
    events = Events()
    if on_event is not None:
        events.subscribe(on_event)
    return events


def _cold_tier(context: Context, spec: ColdStoreSpec) -> ColdTier | None:
    if spec is None:
        return None
    from repocache.cold import open_cold_store

    store = open_cold_store(spec)
    return None if store is None else ColdTier(context, store)
