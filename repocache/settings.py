"""The settings of a RepoCache, each declared once: its default, its validation and its sentence of documentation.

Everyday settings are plain keywords of :class:`~repocache.RepoCache` (``max_bytes``, ``fetch_ttl``, ...); rarely
used ones are grouped into small frozen objects, the way ``httpx.Timeout`` groups its own: :class:`Freshness`,
:class:`ColdOptions`, :class:`Maintenance` and :class:`Transport`. Each field is declared with :func:`option`
(default, parser, accepted forms, documentation, environment variable), and one loop (``_validate``) parses them
all. :data:`OPTIONS` lists every setting, which is what the settings tables of the README and the docs are
generated from (``python -m repocache.settings`` rewrites them; a test fails when they drift), what the CLI reads
its environment defaults from (:func:`environment_defaults`) and what :class:`CacheOptions` (the keywords of
``RepoCache``, ``AsyncRepoCache`` and the pytest plugin's factory) is checked against.

Each grouped setting also keeps its flat keyword (``maintenance_max_packs=4`` is ``maintenance=Maintenance(
max_packs=4)``), so code written against the flat names keeps working. Each bad value raises ConfigError naming it
(by its flat name) and what would be accepted.
"""

from __future__ import annotations

import dataclasses
import math
import os
import re
import sys
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar, Generic, TypedDict, TypeVar, cast, overload

import platformdirs

from repocache.errors import ConfigError

if TYPE_CHECKING:
    from repocache.cold import ColdStoreSpec
    from repocache.events import EventHook

__all__ = [
    "MAINTENANCE_MODES",
    "OPTIONS",
    "PUBLISH_MODES",
    "CacheOptions",
    "ColdOptions",
    "Freshness",
    "Maintenance",
    "Option",
    "ReadBack",
    "Settings",
    "Transport",
    "default_root",
    "environment_defaults",
    "option",
    "parse_bytes",
    "parse_count",
    "parse_seconds",
    "render_tables",
    "settings_table",
]

T = TypeVar("T")

PUBLISH_MODES = ("off", "clone", "always")
"""When mirrors are uploaded to the cold store besides evictions: never, after a clone, or also after fetches."""
MAINTENANCE_MODES = ("auto", "off")
"""Whether a fetch that left a mirror over a threshold is followed by its maintenance."""
REFRESH_MODES = ("foreground", "background")
ON_FETCH_ERROR = ("warn", "raise", "warn_except_auth")

_SIZE = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*([KMGTP]?i?B?)?\s*$", re.IGNORECASE)
_FACTORS = {
    "": 1,
    "b": 1,
    "k": 1000,
    "kb": 1000,
    "kib": 1024,
    "ki": 1024,
    "m": 1000**2,
    "mb": 1000**2,
    "mib": 1024**2,
    "mi": 1024**2,
    "g": 1000**3,
    "gb": 1000**3,
    "gib": 1024**3,
    "gi": 1024**3,
    "t": 1000**4,
    "tb": 1000**4,
    "tib": 1024**4,
    "ti": 1024**4,
    "p": 1000**5,
    "pb": 1000**5,
    "pib": 1024**5,
    "pi": 1024**5,
}
_SIZE_FORMS = 'a non-negative int or a string such as "500MiB", "20GB", "1.5GiB"'


def parse_bytes(name: str, value: object, *, allow_none: bool) -> int | None:
    """Parse a byte count such as ``20GB`` or ``500MiB`` (SI and binary units, case-insensitive).

    Raises:
        ConfigError: the value is negative, not a number, or has an unknown unit.
    """
    if value is None:
        if allow_none:
            return None
        raise ConfigError(f"{name}=None is not accepted; expected {_SIZE_FORMS}")
    if isinstance(value, bool):
        raise ConfigError(f"{name}={value!r} is not accepted; expected {_SIZE_FORMS}")
    if isinstance(value, int):
        if value < 0:
            raise ConfigError(f"{name}={value!r} is negative; expected {_SIZE_FORMS}")
        return value
    if isinstance(value, float):
        if not math.isfinite(value) or value < 0:
            raise ConfigError(f"{name}={value!r} is not accepted; expected {_SIZE_FORMS}")
        return int(value)
    if isinstance(value, str):
        match = _SIZE.match(value)
        if match:
            factor = _FACTORS.get((match.group(2) or "").lower())
            if factor is not None:
                return int(float(match.group(1)) * factor)
        raise ConfigError(f"{name}={value!r} is not a size; expected {_SIZE_FORMS}")
    raise ConfigError(f"{name}={value!r} ({type(value).__name__}) is not accepted; expected {_SIZE_FORMS}")


def parse_seconds(name: str, value: object, *, positive: bool = False) -> float:
    """Parse a finite, non-negative (or positive) number of seconds.

    Raises:
        ConfigError: the value is not a finite number in range.
    """
    wanted = "a finite number of seconds " + ("> 0" if positive else ">= 0")
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise ConfigError(f"{name}={value!r} is not accepted; expected {wanted}")
    seconds = float(value)
    if not math.isfinite(seconds) or seconds < 0 or (positive and seconds == 0):
        raise ConfigError(f"{name}={value!r} is out of range; expected {wanted}")
    return seconds


def default_root() -> Path:
    """``$REPOCACHE_DIR`` if set, else the platform's user cache directory for repocache."""
    configured = os.environ.get("REPOCACHE_DIR")
    if configured:
        return Path(configured)
    return Path(platformdirs.user_cache_dir("repocache", appauthor=False))


def parse_count(name: str, value: object, *, minimum: int = 0, allow_none: bool = False) -> int | None:
    """Parse a whole number at least ``minimum`` (None allowed with ``allow_none``).

    Raises:
        ConfigError: the value is not an int in range.
    """
    if value is None and allow_none:
        return None
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
        wanted = f"an int >= {minimum}" + (" or None" if allow_none else "")
        raise ConfigError(f"{name}={value!r} is not accepted; expected {wanted}")
    return value


# -- the parsers an option names -----------------------------------------------------------------------------------

Parser = Callable[[str, object], object]


def _size(*, none: bool = False) -> Parser:
    return lambda name, value: parse_bytes(name, value, allow_none=none)


def _seconds(*, none: bool = False, positive: bool = False) -> Parser:
    return lambda name, value: None if value is None and none else parse_seconds(name, value, positive=positive)


def _count(*, minimum: int = 0, none: bool = False) -> Parser:
    return lambda name, value: parse_count(name, value, minimum=minimum, allow_none=none)


def _choice(choices: Iterable[str]) -> Parser:
    accepted = tuple(choices)

    def parse(name: str, value: object) -> object:
        if value not in accepted:
            expected = ", ".join(repr(choice) for choice in accepted)
            raise ConfigError(f"{name}={value!r} is not accepted; expected one of {expected}")
        return value

    return parse


def _compression(name: str, value: object) -> object:
    from repocache.cold.manifest import COMPRESSIONS

    return _choice(COMPRESSIONS)(name, value)


def _ttl(name: str, value: object) -> object:
    if value == "auto":
        return value
    if isinstance(value, str):
        raise ConfigError(f"{name}={value!r} is not accepted; expected finite seconds >= 0 or 'auto'")
    return parse_seconds(name, value)


def _number_text(text: str) -> object:
    """An environment variable's text as a number when it reads as one (``"60"``), else the text (``"auto"``)."""
    try:
        return float(text)
    except ValueError:
        return text


def _filter(name: str, value: object) -> object:
    from repocache.keys import FILTERS

    if value is None or (isinstance(value, str) and value in FILTERS):
        return value
    raise ConfigError(f"{name}={value!r} is not accepted; expected None (a full mirror), 'blob:none' or 'tree:0'")


def _flag(name: str, value: object) -> object:
    if isinstance(value, str):  # from the environment
        return value.strip().lower() not in ("", "0", "false", "no", "off")
    return bool(value)


def _as_is(name: str, value: object) -> object:
    return value


def _path(name: str, value: object) -> object:
    return None if value is None else Path(os.fspath(cast("str", value)))


# -- the declaration -----------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Option:
    """One setting as declared: what the docs table, the CLI's environment and validation read.

    Attributes:
        name: the flat keyword of :class:`~repocache.RepoCache` (``maintenance_max_packs``).
        default: the default value, as a user would write it.
        parse: ``parse(name, value)`` returns the validated value or raises ConfigError naming ``name``.
        accepted: the accepted forms, for the docs table.
        doc: one sentence of documentation.
        group: the keyword of the group object holding it (``"maintenance"``), or None for a plain keyword.
        field: its name inside the group object (``"max_packs"``); the flat name for a plain keyword.
        env: the environment variable the CLI reads it from when its option is not given, if any.
        shown: how the default is written in the docs table, when not ``repr(default)``.
        from_text: turns the variable's text into what ``parse`` takes (``"60"`` into ``60.0``), if it needs it.
    """

    name: str
    default: object
    parse: Parser
    accepted: str
    doc: str
    group: str | None = None
    field: str = ""
    env: str | None = None
    shown: str | None = None
    from_text: Callable[[str], object] | None = None

    @property
    def spelled(self) -> str:
        """How the docs table names it: ``max_bytes``, or ``Maintenance(max_packs=)`` with its flat name."""
        if self.group is None:
            return f"`{self.name}`"
        return f"`{_GROUP_CLASSES[self.group].__name__}({self.field}=)` (`{self.name}`)"

    def from_environment(self, environ: Mapping[str, str] | None = None) -> object | None:
        """The value of :attr:`env` parsed, or None when it is unset or empty.

        Raises:
            ConfigError: the variable is set to a value the option does not accept (the message names it).
        """
        if self.env is None:
            return None
        text = (os.environ if environ is None else environ).get(self.env, "").strip()
        if not text:
            return None
        return self.parse(self.env, text if self.from_text is None else self.from_text(text))


def option(
    default: T,
    parse: Parser,
    accepted: str,
    doc: str,
    *,
    flat: str | None = None,
    env: str | None = None,
    shown: str | None = None,
    from_text: Callable[[str], object] | None = None,
) -> T:
    """Declare a field of a settings class: its default, its parser and its documentation (see :class:`Option`).

    ``flat`` is its flat keyword when it is not the group's prefix followed by the field name.
    """
    spec = {"default": default, "parse": parse, "accepted": accepted, "doc": doc, "flat": flat, "env": env}
    spec["shown"] = shown
    spec["from_text"] = from_text
    return field(default=default, metadata={"option": spec})


def _declared(cls: type, group: str | None, prefix: str) -> tuple[Option, ...]:
    rows = []
    for item in dataclasses.fields(cls):
        spec = item.metadata.get("option")
        if spec is not None:
            name = spec["flat"] or prefix + item.name
            rest = {key: value for key, value in spec.items() if key != "flat"}
            rows.append(Option(name=name, group=group, field=item.name, **rest))
    return tuple(rows)


def _validate(settings: object) -> None:
    """The one loop: parse every declared field of ``settings`` in place (frozen: through ``object.__setattr__``)."""
    for row in _OPTIONS_OF[type(settings)]:
        object.__setattr__(settings, row.field, row.parse(row.name, getattr(settings, row.field)))


@dataclass(frozen=True)
class Freshness:
    """How hits are kept fresh beyond ``fetch_ttl``: the adaptive schedule's bounds and background refresh.

    ``RepoCache(fetch_ttl=60, freshness=Freshness(refresh="background", max_stale=600))``.
    """

    prefix: ClassVar[str] = ""
    fetch_ttl_min: float = option(
        60.0, _seconds(), "finite seconds >= 0", 'the shortest interval of `fetch_ttl="auto"`'
    )
    fetch_ttl_max: float = option(
        28800.0,
        _seconds(),
        "finite seconds >= `fetch_ttl_min`",
        'the longest interval of `fetch_ttl="auto"`: the staleness bound of a dormant repository',
        shown="`28800.0` (8 h)",
    )
    refresh: str = option(
        "foreground",
        _choice(REFRESH_MODES),
        '`"foreground"` or `"background"`',
        "a due hit waits for its fetch, or (stale-while-revalidate) is handed out at once while one fetch runs in a "
        "background thread, joined by `close()`",
    )
    max_stale: float | None = option(
        3600.0,
        _seconds(none=True),
        "finite seconds >= 0, or `None` (no bound)",
        'with `refresh="background"`: seconds past its TTL beyond which a hit waits for the fetch after all',
    )

    def __post_init__(self) -> None:
        _validate(self)
        if self.fetch_ttl_max < self.fetch_ttl_min:
            raise ConfigError(f"fetch_ttl_max={self.fetch_ttl_max!r} is below fetch_ttl_min={self.fetch_ttl_min!r}")


@dataclass(frozen=True)
class ColdOptions:
    """How the cold store (``cold_store=``) is used: what is offloaded, how, for how long, and what is published.

    ``RepoCache(cold_store="s3://bucket/prefix", cold=ColdOptions(compression="zstd", publish="clone"))``.
    """

    prefix: ClassVar[str] = "cold_"
    min_bytes: int = option(
        0, _size(), "same forms as `max_bytes`", "only evicted repositories at least this large are offloaded"
    )
    compression: str = option(
        "none",
        _compression,
        '`"none"` or `"zstd"` (needs the `zstd` extra)',
        "how artifacts are compressed: a plain tar is fastest to restore",
    )
    retention: float | None = option(
        None,
        _seconds(none=True),
        "finite seconds >= 0, or `None` (keep forever)",
        "seconds an artifact is kept; older ones are pruned after uploads (at most once an hour) and by `prune_cold()`",
    )
    publish: str = option(
        "off",
        _choice(PUBLISH_MODES),
        '`"off"`, `"clone"` or `"always"`',
        "when mirrors go to the store besides evictions, for other hosts to restore: never, after each clone, or "
        "also after a fetch once the stored artifact is older than `publish_after`",
        env="REPOCACHE_COLD_PUBLISH",
    )
    publish_after: float = option(
        3600.0,
        _seconds(),
        "finite seconds >= 0",
        'with `publish="always"`: seconds after which a fetched mirror is published again',
    )
    lease_ttl: float = option(
        60.0,
        _seconds(positive=True),
        "finite seconds > 0",
        "seconds a fleet's clone lease lasts unless renewed; its holder renews it every third of that while it "
        "clones and uploads, so a host waits at most this long for a host that died holding it (it looks again as "
        "the lease expires), and never longer than `lock_timeout`",
    )

    def __post_init__(self) -> None:
        _validate(self)


@dataclass(frozen=True)
class Maintenance:
    """When and how mirrors are maintained (geometric repack, packed refs, commit-graph); see ``maintain()``.

    ``RepoCache(maintenance=Maintenance(max_packs=4, threads=2))``; ``maintenance="off"`` is short for
    ``Maintenance(mode="off")``.
    """

    prefix: ClassVar[str] = "maintenance_"
    mode: str = option(
        "auto",
        _choice(MAINTENANCE_MODES),
        '`"auto"` or `"off"`',
        "after a checkout or `ensure` that fetched, the releasing caller maintains the mirror if it crossed a "
        "threshold below; `off`: only `maintain()` does",
        flat="maintenance",
    )
    max_packs: int | None = option(
        None,
        _count(minimum=1, none=True),
        "int >= 1, or `None`",
        "packs a mirror may have before a repack; `None`: 8 to 32, growing with the log of its size (as Gitaly does)",
    )
    max_loose_objects: int = option(
        1024, _count(), "int >= 0", "loose objects (estimated as `git gc` does) before a repack"
    )
    max_loose_refs: int = option(128, _count(), "int >= 0", "loose refs before they are packed")
    window_memory: int = option(
        cast(int, "128MiB"),
        _size(),
        "same forms as `max_bytes`; `0`: git's default (unbounded)",
        "delta window memory per repack thread (`pack.windowMemory`)",
    )
    threads: int = option(1, _count(minimum=1), "int >= 1", "repack threads (`pack.threads`)")
    grace: float = option(
        14 * 86400.0,
        _seconds(),
        "finite seconds >= 0",
        "seconds an unreachable object is kept by `maintain(prune=True)`",
        shown="`1209600.0` (two weeks)",
    )

    def __post_init__(self) -> None:
        _validate(self)


@dataclass(frozen=True)
class Transport:
    """How upstreams are reached: which URLs are allowed, and when a silent upstream is abandoned."""

    prefix: ClassVar[str] = ""
    allow_local: bool = option(True, _flag, "`True` or `False`", "whether local paths and `file://` URLs may be cached")
    connect_timeout: float = option(
        30.0, _seconds(positive=True), "finite seconds > 0", "seconds to wait for a connection to upstream"
    )
    idle_timeout: float = option(
        300.0,
        _seconds(positive=True),
        "finite seconds > 0",
        "seconds a transfer may make no progress before it is abandoned",
    )

    def __post_init__(self) -> None:
        _validate(self)


class _Grouped(Generic[T]):
    """A grouped setting read by its flat name (``settings.cold_publish`` is ``settings.cold.publish``)."""

    def __set_name__(self, owner: type, name: str) -> None:
        row = _BY_NAME[name]  # a KeyError at import: the name is not declared
        assert row.group is not None
        self.group, self.field = row.group, row.field

    @overload
    def __get__(self, instance: None, owner: type) -> _Grouped[T]: ...
    @overload
    def __get__(self, instance: object, owner: type) -> T: ...
    def __get__(self, instance: object | None, owner: type) -> T | _Grouped[T]:
        if instance is None:
            return self
        return cast(T, getattr(getattr(instance, self.group), self.field))


_GROUP_CLASSES: dict[str, type[Any]] = {
    "freshness": Freshness,
    "cold": ColdOptions,
    "maintenance": Maintenance,
    "transport": Transport,
}
_OPTIONS_OF: dict[type, tuple[Option, ...]] = {
    cls: _declared(cls, group, cls.prefix) for group, cls in _GROUP_CLASSES.items()
}
_BY_NAME = {row.name: row for rows in _OPTIONS_OF.values() for row in rows}


@dataclass(frozen=True)
class Settings:
    """Every setting of one :class:`~repocache.RepoCache`, validated; ``cache.settings`` reads them back.

    The everyday settings are its fields; the rest are in its group objects, and each of those can also be read by
    its flat name (``settings.maintenance_max_packs`` is ``settings.maintenance.max_packs``).
    """

    prefix: ClassVar[str] = ""
    max_bytes: int | None = option(
        None,
        _size(none=True),
        '`None` (no limit), an int, or `"500MiB"`, `"20GB"`, `"1.5GiB"`',
        "budget for all mirrors together",
        env="REPOCACHE_MAX_BYTES",
    )
    min_free_bytes: int = option(
        0, _size(), "same forms as `max_bytes`", "keep at least this much free on the cache's filesystem"
    )
    fetch_ttl: float | str = option(
        0.0,
        _ttl,
        'finite seconds >= 0, or `"auto"`',
        "a hit fetched less than this many seconds ago does not contact upstream; `auto`: each repository's own "
        "interval, half the time since upstream last changed, within `fetch_ttl_min` and `fetch_ttl_max`",
        env="REPOCACHE_FETCH_TTL",
        from_text=_number_text,
    )
    lock_timeout: float = option(
        600.0,
        _seconds(),
        "finite seconds >= 0",
        "bound of every wait of a call for another worker's clone, fetch or eviction, or for room it holds",
        env="REPOCACHE_LOCK_TIMEOUT",
        from_text=_number_text,
    )
    on_fetch_error: str = option(
        "warn",
        _choice(ON_FETCH_ERROR),
        '`"warn"`, `"raise"` or `"warn_except_auth"`',
        "a failed fetch serves the cached copy (`co.stale`) with a warning, or raises `FetchError`; "
        '`"warn_except_auth"` serves it unless upstream refused the credentials (`AuthenticationError` is raised)',
        env="REPOCACHE_ON_FETCH_ERROR",
    )
    filter: str | None = option(
        None,
        _filter,
        '`None`, `"blob:none"` or `"tree:0"`',
        "the partial-clone filter of new mirrors (`None`: full mirrors), unless a pin or the call names one; "
        "see docs/partial.md",
    )
    freshness: Freshness = field(default_factory=Freshness)
    cold: ColdOptions = field(default_factory=ColdOptions)
    maintenance: Maintenance = field(default_factory=Maintenance)
    transport: Transport = field(default_factory=Transport)

    fetch_ttl_min = _Grouped[float]()
    fetch_ttl_max = _Grouped[float]()
    refresh = _Grouped[str]()
    max_stale = _Grouped["float | None"]()
    cold_min_bytes = _Grouped[int]()
    cold_compression = _Grouped[str]()
    cold_retention = _Grouped["float | None"]()
    cold_publish = _Grouped[str]()
    cold_publish_after = _Grouped[float]()
    cold_lease_ttl = _Grouped[float]()
    maintenance_max_packs = _Grouped["int | None"]()
    maintenance_max_loose_objects = _Grouped[int]()
    maintenance_max_loose_refs = _Grouped[int]()
    maintenance_window_memory = _Grouped[int]()
    maintenance_threads = _Grouped[int]()
    maintenance_grace = _Grouped[float]()
    allow_local = _Grouped[bool]()
    connect_timeout = _Grouped[float]()
    idle_timeout = _Grouped[float]()

    def __post_init__(self) -> None:
        for group, cls in _GROUP_CLASSES.items():
            value = getattr(self, group)
            if not isinstance(value, cls):
                raise ConfigError(f"{group}={value!r} is not accepted; expected a {cls.__name__}")
        _validate(self)

    @classmethod
    def from_options(cls, options: Mapping[str, object]) -> Settings:
        """Validate the keywords given to ``RepoCache``: plain ones, group objects and flat names of grouped ones.

        Keywords that are not settings (``pins``, ``cold_store``, ``on_event``) are left to their owners.

        Raises:
            ConfigError: a setting is invalid, or a group object was given beside flat names of its settings.
            TypeError: a keyword is not one ``RepoCache`` accepts.
        """
        unknown = sorted(set(options) - set(CacheOptions.__annotations__))
        if unknown:
            raise TypeError(f"RepoCache() got an unexpected keyword argument {unknown[0]!r}")
        groups: dict[str, Any] = {}
        for group, group_class in _GROUP_CLASSES.items():
            given = options.get(group)
            if group == "maintenance" and not isinstance(given, Maintenance):
                given = None  # the flat mode (maintenance="off"), read below as Maintenance(mode=...)
            rows = [row for row in _OPTIONS_OF[group_class] if row.name in options and row.name != group]
            if given is None and group in options:
                rows.append(_BY_NAME[group])
            flat = {row.field: options[row.name] for row in rows}
            if given is not None:
                if flat:
                    names = ", ".join(sorted(row.name for row in rows))
                    raise ConfigError(f"{names} cannot be given beside {group}=; set them in {group_class.__name__}")
                groups[group] = given
                continue
            groups[group] = group_class(**flat)
        plain: dict[str, Any] = {row.field: options[row.name] for row in _OPTIONS_OF[cls] if row.name in options}
        return cls(**plain, **groups)

    @property
    def adaptive(self) -> bool:
        """Whether ``fetch_ttl="auto"`` (each repository's own interval)."""
        return self.fetch_ttl == "auto"

    @property
    def fetch_ttl_seconds(self) -> float:
        """``fetch_ttl`` in seconds; ``fetch_ttl_min`` under ``"auto"``."""
        return self.freshness.fetch_ttl_min if isinstance(self.fetch_ttl, str) else self.fetch_ttl

    @property
    def budgeted(self) -> bool:
        """Whether there is any budget to enforce (a byte limit or a free-space floor)."""
        return self.max_bytes is not None or self.min_free_bytes > 0


_OPTIONS_OF[Settings] = _declared(Settings, None, "")

_HANDLES = {
    "root": Option(
        "root",
        None,
        _path,
        "a directory path",
        "the cache directory",
        env="REPOCACHE_DIR",
        shown="`$REPOCACHE_DIR`, else the user cache dir",
    ),
    "pins": Option(
        "pins",
        None,
        _as_is,
        "a YAML file, or a list of URLs / glob patterns",
        "repositories never evicted",
        env="REPOCACHE_PINS",
    ),
    "cold_store": Option(
        "cold_store",
        None,
        _as_is,
        '`"file:///dir"`, a directory, an fsspec URL (`"s3://bucket/prefix"`) or a `ColdStore`',
        "where evicted (and published) mirrors go, for this and other hosts to restore",
        env="REPOCACHE_COLD_STORE",
    ),
    "progress": Option(
        "progress",
        None,
        _as_is,
        "a callable taking a `repocache.Progress`",
        "default progress callback for clones, fetches and restores (throttled to 10 a second)",
    ),
    "on_event": Option(
        "on_event",
        None,
        _as_is,
        "a callable taking a `repocache.events.Event`",
        "called with every event of this cache (hit, miss, clone, fetch, eviction, ...); see `subscribe()`",
    ),
}
"""Keywords that are not settings but objects their owners validate (the root, pins, the store, the callbacks)."""

_PLAIN = {row.name: row for row in _OPTIONS_OF[Settings]}
_ORDER = (
    "root",
    "max_bytes",
    "min_free_bytes",
    "pins",
    "fetch_ttl",
    "cold_store",
    "lock_timeout",
    "on_fetch_error",
    "filter",
)
OPTIONS: tuple[Option, ...] = (
    *(_HANDLES.get(name) or _PLAIN[name] for name in _ORDER),
    _HANDLES["progress"],
    _HANDLES["on_event"],
    *(row for group_class in _GROUP_CLASSES.values() for row in _OPTIONS_OF[group_class]),
)
"""Every keyword of ``RepoCache`` as declared, in the order of the docs table."""


class CacheOptions(TypedDict, total=False):
    """The keywords of :class:`~repocache.RepoCache` besides ``root`` and ``progress`` (see :data:`OPTIONS`).

    ``AsyncRepoCache`` and the pytest plugin's ``repo_cache_factory`` take the same (``**options:
    Unpack[CacheOptions]``); a test checks that these keys are exactly the declared options.
    """

    max_bytes: int | str | None
    min_free_bytes: int | str
    pins: str | os.PathLike[str] | Iterable[str | Mapping[str, object]] | None
    fetch_ttl: float | str
    cold_store: ColdStoreSpec
    lock_timeout: float
    on_fetch_error: str
    filter: str | None
    on_event: EventHook | None
    freshness: Freshness
    cold: ColdOptions
    maintenance: Maintenance | str
    transport: Transport
    # the flat names of grouped settings
    fetch_ttl_min: float
    fetch_ttl_max: float
    refresh: str
    max_stale: float | None
    cold_min_bytes: int | str
    cold_compression: str
    cold_retention: float | None
    cold_publish: str
    cold_publish_after: float
    cold_lease_ttl: float
    maintenance_max_packs: int | None
    maintenance_max_loose_objects: int
    maintenance_max_loose_refs: int
    maintenance_window_memory: int | str
    maintenance_threads: int
    maintenance_grace: float
    allow_local: bool
    connect_timeout: float
    idle_timeout: float


def environment_defaults(environ: Mapping[str, str] | None = None) -> dict[str, object]:
    """The settings the environment gives (``REPOCACHE_DIR``, ``REPOCACHE_MAX_BYTES``, ...), by flat name, parsed.

    The CLI takes each of these when its option is not given. Unset or empty variables are left out.

    Raises:
        ConfigError: a variable is set to a value its option does not accept (the message names the variable).
    """
    found = {}
    for row in OPTIONS:
        value = row.from_environment(environ)
        if value is not None:
            found[row.name] = value
    return found


# -- the docs tables -----------------------------------------------------------------------------------------------

TABLE_START = "<!-- settings-table:start (generated by `python -m repocache.settings`; edit repocache/settings.py) -->"
TABLE_END = "<!-- settings-table:end -->"
TABLE_FILES = ("README.md", "docs/index.md")
"""The files (relative to the repository root) holding a generated settings table between the markers."""


def settings_table() -> str:
    """The settings table in Markdown, generated from :data:`OPTIONS`."""
    lines = ["| setting | default | accepted | what it does |", "| --- | --- | --- | --- |"]
    for row in OPTIONS:
        default = row.shown or f"`{row.default!r}`"
        doc = row.doc[0].upper() + row.doc[1:]
        if row.env is not None:
            doc += f" (the CLI reads `${row.env}`)"
        lines.append(f"| {row.spelled} | {default} | {row.accepted} | {doc} |".replace("`'", '`"').replace("'`", '"`'))
    return "\n".join(lines)


def render_tables(text: str) -> str:
    """``text`` with the table between the markers replaced by :func:`settings_table`.

    Raises:
        ValueError: the markers are missing.
    """
    start = text.index(TABLE_START) + len(TABLE_START)
    end = text.index(TABLE_END, start)
    return text[:start] + "\n" + settings_table() + "\n" + text[end:]


def _main(argv: list[str]) -> int:
    """Rewrite the settings tables of :data:`TABLE_FILES` under the given root (default: the working directory)."""
    root = Path(argv[0]) if argv else Path.cwd()
    for name in TABLE_FILES:
        path = root / name
        text = path.read_text(encoding="utf-8")
        rendered = render_tables(text)
        if rendered != text:
            path.write_text(rendered, encoding="utf-8")
            print(f"rewrote the settings table of {path}")
    return 0


if __name__ == "__main__":
    raise SystemExit(_main(sys.argv[1:]))


class ReadBack(Generic[T]):
    """A read-only attribute of an object with a ``settings`` attribute: ``cache.max_bytes`` is
    ``cache.settings.max_bytes`` (the facades' read-back properties, each one line)."""

    def __init__(self, doc: str) -> None:
        self.__doc__ = doc
        self._name = ""

    def __set_name__(self, owner: type, name: str) -> None:
        self._name = name

    @overload
    def __get__(self, obj: None, owner: type) -> ReadBack[T]: ...
    @overload
    def __get__(self, obj: object, owner: type) -> T: ...
    def __get__(self, obj: object | None, owner: type) -> ReadBack[T] | T:
        if obj is None:
            return self
        value: T = getattr(obj.settings, self._name)  # type: ignore[attr-defined]
        return value
