"""Validation of RepoCache settings: each bad value raises ConfigError naming it and what would be accepted.

| setting          | default                      | accepted                                              |
| ---------------- | ---------------------------- | ----------------------------------------------------- |
| root             | $REPOCACHE_DIR, else the user cache dir | a directory path                           |
| max_bytes        | None (no limit)              | int >= 0, or "500MiB", "20GB", "1.5 GiB", "4096"      |
| min_free_bytes   | 0                            | same forms as max_bytes                               |
| fetch_ttl        | 0.0                          | finite seconds >= 0, or "auto" (the adaptive schedule) |
| fetch_ttl_min    | 60.0                         | finite seconds >= 0: the shortest "auto" interval     |
| fetch_ttl_max    | 28800.0 (8 h)                | finite seconds >= fetch_ttl_min: the longest one      |
| refresh          | "foreground"                 | "foreground" or "background" (stale-while-revalidate) |
| max_stale        | 3600.0                       | finite seconds >= 0, or None (no bound): how far past  |
|                  |                              | its TTL a hit may be and still be served at once       |
| lock_timeout     | 600.0                        | finite seconds >= 0                                   |
| on_fetch_error   | "warn"                       | "warn" or "raise"                                     |
| connect_timeout  | 30.0                         | finite seconds > 0                                    |
| idle_timeout     | 300.0                        | finite seconds > 0                                    |
| cold_min_bytes   | 0                            | same forms as max_bytes                               |
| cold_compression | "none"                       | "none" or "zstd" (``repocache.cold.COMPRESSIONS``)    |
| cold_retention   | None (keep forever)          | finite seconds >= 0                                   |
| cold_publish     | "off"                        | "off", "clone" or "always" (``PUBLISH_MODES``)        |
| cold_publish_after | 3600.0                     | finite seconds >= 0                                   |
| maintenance      | "auto"                       | "auto" (after a fetch that crossed a threshold) or "off" |
| maintenance_max_packs | None (grows with the log of the size) | int >= 1                                  |
| maintenance_max_loose_objects | 1024                | int >= 0                                              |
| maintenance_max_loose_refs | 128                    | int >= 0                                              |
| maintenance_window_memory | "128MiB"              | same forms as max_bytes; 0 for git's default (unbounded) |
| maintenance_threads | 1                         | int >= 1                                              |
| maintenance_grace | 1209600.0 (two weeks)       | finite seconds >= 0: unreachable objects younger are kept |
"""

from __future__ import annotations

import math
import os
import re
from dataclasses import dataclass
from pathlib import Path

import platformdirs

from repocache.errors import ConfigError

__all__ = [
    "MAINTENANCE_MODES",
    "PUBLISH_MODES",
    "Settings",
    "default_root",
    "parse_bytes",
    "parse_count",
    "parse_seconds",
]

PUBLISH_MODES = ("off", "clone", "always")
"""When mirrors are uploaded to the cold store besides evictions: never, after a clone, or also after fetches."""

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


_ON_FETCH_ERROR = ("warn", "raise")
_REFRESH_MODES = ("foreground", "background")
MAINTENANCE_MODES = ("auto", "off")


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


@dataclass(frozen=True)
class Settings:
    """The validated settings of one :class:`~repocache.RepoCache` (see the table above)."""

    max_bytes: int | None
    min_free_bytes: int
    fetch_ttl: float
    lock_timeout: float
    on_fetch_error: str
    cold_min_bytes: int
    cold_compression: str
    cold_retention: float | None
    adaptive: bool = False
    fetch_ttl_min: float = 60.0
    fetch_ttl_max: float = 28800.0
    refresh: str = "foreground"
    max_stale: float | None = 3600.0
    cold_publish: str = "off"
    cold_publish_after: float = 3600.0
    maintenance: str = "auto"
    maintenance_max_packs: int | None = None
    maintenance_max_loose_objects: int = 1024
    maintenance_max_loose_refs: int = 128
    maintenance_window_memory: int = 128 * 1024**2
    maintenance_threads: int = 1
    maintenance_grace: float = 14 * 86400.0

    @classmethod
    def parse(
        cls,
        *,
        max_bytes: object,
        min_free_bytes: object,
        fetch_ttl: object,
        lock_timeout: object,
        on_fetch_error: object,
        cold_min_bytes: object,
        cold_compression: object,
        cold_retention: object,
        fetch_ttl_min: object = 60.0,
        fetch_ttl_max: object = 28800.0,
        refresh: object = "foreground",
        max_stale: object = 3600.0,
        cold_publish: object = "off",
        cold_publish_after: object = 3600.0,
        maintenance: object = "auto",
        maintenance_max_packs: object = None,
        maintenance_max_loose_objects: object = 1024,
        maintenance_max_loose_refs: object = 128,
        maintenance_window_memory: object = "128MiB",
        maintenance_threads: object = 1,
        maintenance_grace: object = 14 * 86400.0,
    ) -> Settings:
        """Validate every setting.

        Raises:
            ConfigError: a setting is invalid; the message names it and what is accepted.
        """
        from repocache.cold.manifest import COMPRESSIONS

        if on_fetch_error not in _ON_FETCH_ERROR:
            raise ConfigError(f"on_fetch_error={on_fetch_error!r} is not accepted; expected 'warn' or 'raise'")
        if cold_compression not in COMPRESSIONS:
            expected = " or ".join(repr(name) for name in COMPRESSIONS)
            raise ConfigError(f"cold_compression={cold_compression!r} is not accepted; expected {expected}")
        if refresh not in _REFRESH_MODES:
            raise ConfigError(f"refresh={refresh!r} is not accepted; expected 'foreground' or 'background'")
        shortest = parse_seconds("fetch_ttl_min", fetch_ttl_min)
        longest = parse_seconds("fetch_ttl_max", fetch_ttl_max)
        if longest < shortest:
            raise ConfigError(f"fetch_ttl_max={fetch_ttl_max!r} is below fetch_ttl_min={fetch_ttl_min!r}")
        adaptive = isinstance(fetch_ttl, str) and fetch_ttl == "auto"
        if isinstance(fetch_ttl, str) and not adaptive:
            raise ConfigError(f"fetch_ttl={fetch_ttl!r} is not accepted; expected finite seconds >= 0 or 'auto'")
        if cold_publish not in PUBLISH_MODES:
            expected = ", ".join(repr(name) for name in PUBLISH_MODES)
            raise ConfigError(f"cold_publish={cold_publish!r} is not accepted; expected one of {expected}")
        if maintenance not in MAINTENANCE_MODES:
            raise ConfigError(f"maintenance={maintenance!r} is not accepted; expected 'auto' or 'off'")
        return cls(
            max_bytes=parse_bytes("max_bytes", max_bytes, allow_none=True),
            min_free_bytes=parse_bytes("min_free_bytes", min_free_bytes, allow_none=False) or 0,
            fetch_ttl=shortest if adaptive else parse_seconds("fetch_ttl", fetch_ttl),
            lock_timeout=parse_seconds("lock_timeout", lock_timeout),
            on_fetch_error=str(on_fetch_error),
            cold_min_bytes=parse_bytes("cold_min_bytes", cold_min_bytes, allow_none=False) or 0,
            cold_compression=str(cold_compression),
            cold_retention=None if cold_retention is None else parse_seconds("cold_retention", cold_retention),
            adaptive=adaptive,
            fetch_ttl_min=shortest,
            fetch_ttl_max=longest,
            refresh=str(refresh),
            max_stale=None if max_stale is None else parse_seconds("max_stale", max_stale),
            cold_publish=str(cold_publish),
            cold_publish_after=parse_seconds("cold_publish_after", cold_publish_after),
            maintenance=str(maintenance),
            maintenance_max_packs=parse_count(
                "maintenance_max_packs", maintenance_max_packs, minimum=1, allow_none=True
            ),
            maintenance_max_loose_objects=parse_count("maintenance_max_loose_objects", maintenance_max_loose_objects)
            or 0,
            maintenance_max_loose_refs=parse_count("maintenance_max_loose_refs", maintenance_max_loose_refs) or 0,
            maintenance_window_memory=parse_bytes(
                "maintenance_window_memory", maintenance_window_memory, allow_none=False
            )
            or 0,
            maintenance_threads=parse_count("maintenance_threads", maintenance_threads, minimum=1) or 1,
            maintenance_grace=parse_seconds("maintenance_grace", maintenance_grace),
        )

    @property
    def budgeted(self) -> bool:
        """Whether there is any budget to enforce (a byte limit or a free-space floor)."""
        return self.max_bytes is not None or self.min_free_bytes > 0
